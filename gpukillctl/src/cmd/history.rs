//! `gpukillctl history`: the History RPC once; one GPU's metrics over the last hours, as a
//! table, JSON or CSV.

use std::io::Write;
use std::time::{Duration, SystemTime};

use gpukill_proto::v1::HistoryRequest;

use crate::Output;
use crate::cli::{HistoryArgs, ReportFormat, TimeArg};
use crate::conn;
use crate::error::Error;
use crate::render::history;

/// Runs `gpukillctl history` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &HistoryArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .history(conn::unary(request(args, SystemTime::now())))
        .await
        .map_err(|status| Error::rpc("History", status))?
        .into_inner();
    let text = match args.output {
        ReportFormat::Table => history::render(&response, out.tz),
        ReportFormat::Json => history::json(&response)?,
        ReportFormat::Csv => history::csv(&response),
    };
    out.write(&text)
}

/// The request the arguments ask for: GPU `--gpu` over the last `--hours` before `now`.
fn request(args: &HistoryArgs, now: SystemTime) -> HistoryRequest {
    let hours = Duration::from_secs(u64::from(args.hours) * 3600);
    HistoryRequest {
        gpu_index: Some(args.gpu),
        since_unix_ms: TimeArg::Ago(hours).unix_ms(now),
        until_unix_ms: TimeArg::Ago(Duration::ZERO).unix_ms(now),
        resolution: args.resolution.to_proto().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use std::time::UNIX_EPOCH;
    use tonic::Status;

    fn daemon() -> FakeDaemon {
        FakeDaemon {
            history: Some(Ok(testutil::history_response())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn history_sends_the_gpu_and_window_and_prints_every_format() {
        let daemon = daemon();
        let requests = daemon.history_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["history", "--gpu", "1"]).await;
        result.expect("history succeeds");
        assert_eq!(
            text,
            history::render(&testutil::history_response(), TimeZone::Utc)
        );
        let (result, text, _) = run_cli(
            &served.socket,
            &["history", "--gpu", "0", "--hours", "6", "-o", "json"],
        )
        .await;
        result.expect("history succeeds");
        assert_eq!(
            text,
            history::json(&testutil::history_response()).expect("encode")
        );
        let (result, text, _) =
            run_cli(&served.socket, &["history", "--gpu", "0", "-o", "csv"]).await;
        result.expect("history succeeds");
        assert_eq!(text, history::csv(&testutil::history_response()));

        let requests = requests.lock().expect("lock").clone();
        let sent: Vec<(Option<u32>, i64)> = requests
            .iter()
            .map(|r| (r.gpu_index, r.until_unix_ms - r.since_unix_ms))
            .collect();
        assert_eq!(
            sent,
            [
                (Some(1), 3_600_000),
                (Some(0), 6 * 3_600_000),
                (Some(0), 3_600_000)
            ]
        );
    }

    #[tokio::test]
    async fn an_rpc_error_maps_as_usual() {
        let served = serve(FakeDaemon {
            history: Some(Err(Status::internal("cannot read the audit store"))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["history", "--gpu", "0"]).await;
        let err = result.expect_err("the daemon fails");
        assert_eq!(
            err.to_string(),
            "History failed (Internal): cannot read the audit store"
        );
        assert_eq!(text, "");
    }

    #[test]
    fn the_window_ends_now() {
        let now = UNIX_EPOCH + Duration::from_millis(testutil::NOW_MS.unsigned_abs());
        let args = HistoryArgs {
            gpu: 2,
            hours: 1,
            resolution: crate::cli::ResolutionArg::Hourly,
            output: ReportFormat::Table,
        };
        assert_eq!(
            request(&args, now),
            HistoryRequest {
                gpu_index: Some(2),
                since_unix_ms: testutil::NOW_MS - 3_600_000,
                until_unix_ms: testutil::NOW_MS,
                resolution: gpukill_proto::v1::Resolution::Hourly.into(),
            }
        );
    }
}
