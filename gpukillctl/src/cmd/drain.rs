//! `gpukillctl drain` and `undrain`: one Drain or Undrain RPC. gpukilld checks that the
//! caller is an admin (PERMISSION_DENIED, exit 4, and nothing changes) and that the GPU
//! exists (INVALID_ARGUMENT, exit 3).

use std::io::Write;

use gpukill_proto::v1::{DrainRequest, UndrainRequest};

use crate::Output;
use crate::cli::{DrainArgs, OutputFormat, UndrainArgs};
use crate::conn;
use crate::error::Error;
use crate::render::drain;

/// Runs `gpukillctl drain` against the daemon `target` names. A GPU drained already is not a
/// failure: the text says so.
pub async fn drain<W: Write, E: Write>(
    target: &conn::Target,
    args: &DrainArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let request = DrainRequest {
        gpu_index: args.gpu,
        reason: args.reason.clone().unwrap_or_default(),
    };
    let mut client = conn::connect(target).await?;
    let response = client
        .drain(conn::unary(request))
        .await
        .map_err(|status| Error::rpc("Drain", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => drain::render_drain(&response, out.tz),
        OutputFormat::Json => drain::drain_json(&response)?,
    };
    out.write(&text)
}

/// Runs `gpukillctl undrain` against the daemon `target` names. A GPU that was not drained
/// is not a failure: the text says so.
pub async fn undrain<W: Write, E: Write>(
    target: &conn::Target,
    args: &UndrainArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .undrain(conn::unary(UndrainRequest {
            gpu_index: args.gpu,
        }))
        .await
        .map_err(|status| Error::rpc("Undrain", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => drain::render_undrain(&response, out.tz),
        OutputFormat::Json => drain::undrain_json(&response)?,
    };
    out.write(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use tonic::Status;

    #[tokio::test]
    async fn drain_sends_the_gpu_and_reason_and_prints_what_changed() {
        let daemon = FakeDaemon {
            drain: Some(Ok(testutil::drain_response())),
            ..Default::default()
        };
        let requests = daemon.drain_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["drain", "--gpu", "2", "--reason", "fan noise"],
        )
        .await;
        result.expect("drained");
        assert_eq!(
            text,
            drain::render_drain(&testutil::drain_response(), TimeZone::Utc)
        );
        let (result, text, _) =
            run_cli(&served.socket, &["drain", "--gpu", "3", "-o", "json"]).await;
        result.expect("drained");
        assert_eq!(
            text,
            drain::drain_json(&testutil::drain_response()).expect("encode")
        );
        assert_eq!(
            requests.lock().expect("lock").clone(),
            [
                DrainRequest {
                    gpu_index: 2,
                    reason: "fan noise".to_owned()
                },
                DrainRequest {
                    gpu_index: 3,
                    reason: String::new()
                }
            ]
        );
    }

    #[tokio::test]
    async fn undrain_sends_the_gpu_and_prints_what_ended() {
        let daemon = FakeDaemon {
            undrain: Some(Ok(testutil::undrain_response())),
            ..Default::default()
        };
        let requests = daemon.undrain_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["undrain", "--gpu", "2"]).await;
        result.expect("undrained");
        assert_eq!(
            text,
            drain::render_undrain(&testutil::undrain_response(), TimeZone::Utc)
        );
        assert_eq!(
            requests.lock().expect("lock").clone(),
            [UndrainRequest { gpu_index: 2 }]
        );
    }

    #[tokio::test]
    async fn refusals_exit_with_their_codes() {
        for (status, code) in [
            (
                Status::permission_denied(
                    "draining a GPU is for admins (root or group gpukill-admin)",
                ),
                4,
            ),
            (
                Status::invalid_argument("no GPU 9 on this node: its GPUs are 0 to 3"),
                3,
            ),
            (Status::unimplemented("Drain"), 5),
        ] {
            let served = serve(FakeDaemon {
                drain: Some(Err(status.clone())),
                undrain: Some(Err(status)),
                ..Default::default()
            });
            let (result, _, _) = run_cli(&served.socket, &["drain", "--gpu", "9"]).await;
            assert_eq!(result.expect_err("refused").exit_code(), code);
            let (result, _, _) = run_cli(&served.socket, &["undrain", "--gpu", "9"]).await;
            assert_eq!(result.expect_err("refused").exit_code(), code);
        }
    }
}
