//! `gpukillctl reserve`: one Reserve RPC; gpukilld picks the GPUs (or takes those named),
//! checks they are free and records the reservation.
//!
//! GPUs that are not free make gpukilld answer RESOURCE_EXHAUSTED, saying why each is not
//! (exit 7, [`gpukill_proto::exit_code::BUSY`]); a bad GPU index or duration is
//! INVALID_ARGUMENT (exit 3); over https:// the answer is FAILED_PRECONDITION (exit 5).

use std::io::Write;
use std::time::SystemTime;

use gpukill_proto::v1::ReserveRequest;

use crate::Output;
use crate::cli::{OutputFormat, ReserveArgs, millis};
use crate::conn;
use crate::error::Error;
use crate::render::reservations;

/// Runs `gpukillctl reserve` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &ReserveArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .reserve(conn::unary(request(args)))
        .await
        .map_err(|status| Error::rpc("Reserve", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => {
            let now = crate::render::time::unix_ms(SystemTime::now());
            reservations::render_reserve(&response, now, out.tz)
        }
        OutputFormat::Json => reservations::reserve_json(&response)?,
    };
    out.write(&text)
}

/// The request the arguments ask for: `--gpu-ids` exactly, or `--gpus` (default 1) GPUs of
/// gpukilld's choice, for `--duration` (0: gpukilld's default).
fn request(args: &ReserveArgs) -> ReserveRequest {
    let count = match args.gpus {
        Some(count) => count,
        None if args.gpu_ids.is_empty() => 1,
        None => 0,
    };
    ReserveRequest {
        count,
        gpu_indices: args.gpu_ids.clone(),
        duration_ms: millis(args.duration),
        note: args.note.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use serde_json::Value;
    use tonic::Status;

    #[tokio::test]
    async fn reserve_sends_the_defaults_and_prints_a_line_per_gpu() {
        let daemon = FakeDaemon {
            reserve: Some(Ok(testutil::reserve_response())),
            ..Default::default()
        };
        let requests = daemon.reserve_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) = run_cli(&served.socket, &["reserve"]).await;
        result.expect("reserved");
        assert_eq!(notes, "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with(
                "reserved GPU 0 (GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a, NVIDIA A100-SXM4-80GB) \
                 until 2024-05-01 20:00:00 ("
            ),
            "{text}"
        );
        assert!(lines[1].starts_with("reserved GPU 3 until "), "{text}");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [ReserveRequest {
                count: 1,
                gpu_indices: vec![],
                duration_ms: 0,
                note: String::new(),
            }]
        );
    }

    #[tokio::test]
    async fn reserve_sends_ids_duration_and_note_and_prints_json() {
        let daemon = FakeDaemon {
            reserve: Some(Ok(testutil::reserve_response())),
            ..Default::default()
        };
        let requests = daemon.reserve_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &[
                "reserve",
                "--gpu-ids",
                "0,3",
                "--duration",
                "4h",
                "--note",
                "ablation",
                "-o",
                "json",
            ],
        )
        .await;
        result.expect("reserved");
        assert_eq!(
            text,
            reservations::reserve_json(&testutil::reserve_response()).expect("encode")
        );
        let json: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(json["reservation_id"], 17);
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [ReserveRequest {
                count: 0,
                gpu_indices: vec![0, 3],
                duration_ms: 4 * 3_600_000,
                note: "ablation".to_owned(),
            }]
        );
    }

    #[tokio::test]
    async fn busy_gpus_exit_7() {
        let served = serve(FakeDaemon {
            reserve: Some(Err(Status::resource_exhausted(
                "GPU 3 is reserved by bob until 2024-05-01 20:00:00",
            ))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["reserve", "--gpus", "2"]).await;
        let err = result.expect_err("busy");
        assert_eq!(err.exit_code(), 7);
        assert_eq!(
            err.to_string(),
            "Reserve failed (ResourceExhausted): GPU 3 is reserved by bob until 2024-05-01 \
             20:00:00"
        );
        assert_eq!(text, "");
    }
}
