//! `gpukillctl release`: one Release RPC; gpukilld ends the caller's manual reservations, or
//! those on the GPUs named (someone else's only for an admin: PERMISSION_DENIED, exit 4,
//! and nothing is released).

use std::io::Write;

use gpukill_proto::v1::ReleaseRequest;

use crate::Output;
use crate::cli::{OutputFormat, ReleaseArgs};
use crate::conn;
use crate::error::Error;
use crate::render::reservations;

/// Runs `gpukillctl release` against the daemon `target` names. Releasing nothing is not a
/// failure: the text says `no reservations released`.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &ReleaseArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let request = ReleaseRequest {
        gpu_indices: args.gpu_ids.clone(),
    };
    let mut client = conn::connect(target).await?;
    let response = client
        .release(conn::unary(request))
        .await
        .map_err(|status| Error::rpc("Release", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => reservations::render_release(&response, out.tz),
        OutputFormat::Json => reservations::release_json(&response)?,
    };
    out.write(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::ReleaseResponse;
    use tonic::Status;

    #[tokio::test]
    async fn release_sends_the_gpus_and_prints_what_ended() {
        let daemon = FakeDaemon {
            release: Some(Ok(testutil::release_response())),
            ..Default::default()
        };
        let requests = daemon.release_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) = run_cli(&served.socket, &["release", "--gpu-ids", "2,3"]).await;
        result.expect("released");
        assert_eq!(
            text,
            reservations::render_release(&testutil::release_response(), TimeZone::Utc)
        );
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [ReleaseRequest {
                gpu_indices: vec![2, 3]
            }]
        );
    }

    #[tokio::test]
    async fn releasing_nothing_says_so_and_exits_0() {
        let daemon = FakeDaemon {
            release: Some(Ok(ReleaseResponse::default())),
            ..Default::default()
        };
        let requests = daemon.release_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["release"]).await;
        result.expect("nothing to release is fine");
        assert_eq!(text, "no reservations released\n");
        assert_eq!(
            requests.lock().expect("lock").clone(),
            [ReleaseRequest::default()]
        );
        let (result, text, _) = run_cli(&served.socket, &["release", "-o", "json"]).await;
        result.expect("nothing to release is fine");
        assert_eq!(text, "{\n  \"released\": []\n}\n");
    }

    #[tokio::test]
    async fn someone_elses_reservation_exits_4() {
        let served = serve(FakeDaemon {
            release: Some(Err(Status::permission_denied(
                "GPU 2 is reserved by bob; only admins release others' reservations",
            ))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["release", "--gpu-ids", "2"]).await;
        assert_eq!(result.expect_err("refused").exit_code(), 4);
    }
}
