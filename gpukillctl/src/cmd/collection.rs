//! `gpukillctl collection show TIME`: the History RPC (raw samples) over TIME ± `--within`,
//! then each GPU's sample nearest to TIME, in gpu_monitor's collection format.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use gpukill_proto::v1::{GpuSample, HistoryRequest, Resolution};

use crate::Output;
use crate::cli::{CollectionCommand, CollectionFormat, CollectionShowArgs};
use crate::conn;
use crate::error::Error;
use crate::render::collection;
use crate::render::time::rfc3339_millis;

/// Runs `gpukillctl collection ...` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    command: &CollectionCommand,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let CollectionCommand::Show(args) = command;
    let at = args.time.unix_ms(SystemTime::now());
    let mut client = conn::connect(target).await?;
    let response = client
        .history(conn::unary(request(args, at)))
        .await
        .map_err(|status| Error::rpc("History", status))?
        .into_inner();
    let samples = nearest(response.samples, at);
    if samples.is_empty() {
        return Err(Error::NoSamples {
            time: rfc3339_millis(at).unwrap_or_else(|| at.to_string()),
            within: humantime::format_duration(args.within).to_string(),
        });
    }
    let text = match args.format {
        CollectionFormat::Json => collection::json(&samples)?,
        CollectionFormat::Csv => collection::csv(&samples),
    };
    out.write(&text)
}

/// Raw samples of `--gpu` (or all) from `at - within` to `at + within` (inclusive).
fn request(args: &CollectionShowArgs, at: i64) -> HistoryRequest {
    let within =
        i64::try_from(args.within.max(Duration::from_millis(1)).as_millis()).unwrap_or(i64::MAX);
    HistoryRequest {
        gpu_index: args.gpu,
        since_unix_ms: at.saturating_sub(within),
        until_unix_ms: at.saturating_add(within).saturating_add(1),
        resolution: Resolution::Raw.into(),
    }
}

/// Per GPU (in index order), the sample that starts nearest to `at`; of two equally near,
/// the earlier (whose interval holds `at`).
fn nearest(samples: Vec<GpuSample>, at: i64) -> Vec<GpuSample> {
    let mut best: BTreeMap<u32, GpuSample> = BTreeMap::new();
    for sample in samples {
        let distance = sample.time_unix_ms.abs_diff(at);
        match best.get(&sample.gpu_index) {
            Some(kept)
                if (kept.time_unix_ms.abs_diff(at), kept.time_unix_ms)
                    <= (distance, sample.time_unix_ms) => {}
            _ => {
                best.insert(sample.gpu_index, sample);
            }
        }
    }
    best.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::HistoryResponse;

    fn at(time_unix_ms: i64, gpu_index: u32) -> GpuSample {
        GpuSample {
            time_unix_ms,
            gpu_index,
            samples: 1,
            ..Default::default()
        }
    }

    #[test]
    fn the_nearest_sample_of_each_gpu() {
        let picked = nearest(
            vec![
                at(100, 1),
                at(90, 0),
                at(110, 0),
                at(104, 1),
                at(97, 1),
                at(130, 2),
            ],
            100,
        );
        let picked: Vec<(u32, i64)> = picked
            .iter()
            .map(|s| (s.gpu_index, s.time_unix_ms))
            .collect();
        assert_eq!(picked, [(0, 90), (1, 100), (2, 130)]);
    }

    #[tokio::test]
    async fn show_asks_for_raw_samples_around_the_time_and_prints_them() {
        let daemon = FakeDaemon {
            history: Some(Ok(testutil::history_response())),
            ..Default::default()
        };
        let requests = daemon.history_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &[
                "collection",
                "show",
                "2024-05-01T12:00:00Z",
                "--within",
                "1m",
                "--format",
                "csv",
            ],
        )
        .await;
        result.expect("collection show succeeds");
        let samples = testutil::history_response().samples;
        // Both samples are GPU 0's; the one at 12:00:00.000 is nearer.
        assert_eq!(text, collection::csv(&samples[1..]));
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let noon = 1_714_564_800_000;
        assert_eq!(requests[0].since_unix_ms, noon - 60_000);
        assert_eq!(requests[0].until_unix_ms, noon + 60_001);
        assert_eq!(requests[0].resolution(), Resolution::Raw);
    }

    #[tokio::test]
    async fn no_sample_near_the_time_is_an_error_naming_it() {
        let served = serve(FakeDaemon {
            history: Some(Ok(HistoryResponse::default())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(
            &served.socket,
            &["collection", "show", "2024-05-01T12:00:00Z"],
        )
        .await;
        let err = result.expect_err("nothing stored");
        assert_eq!(err.exit_code(), 1);
        assert!(
            err.to_string()
                .starts_with("no samples stored within 5m of 2024-05-01T12:00:00.000Z"),
            "{err}"
        );
        assert_eq!(text, "");
    }
}
