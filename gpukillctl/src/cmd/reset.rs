//! `gpukillctl reset`: one Reset RPC; the daemon authorizes, kills (with `--force`), runs
//! `nvidia-smi --gpu-reset` and records each attempt.
//!
//! Refusals of the whole request are RPC errors with their usual exit codes: not an admin
//! (PERMISSION_DENIED, exit 4), reset not supported (FAILED_PRECONDITION, exit 5), processes
//! present without `--force` (ABORTED, exit 1). Otherwise the results are printed first, then
//! the command fails with [`Error::ResetFailed`] (exit 1) when a GPU was not reset.

use std::io::Write;
use std::time::Duration;

use gpukill_proto::v1::{ResetOutcome, ResetRequest, ResetResponse};

use crate::Output;
use crate::cli::{OutputFormat, ResetArgs};
use crate::conn;
use crate::error::Error;
use crate::render::reset;

/// How long the client waits for the answer: nvidia-smi can take tens of seconds per GPU, and
/// with `--force` the daemon first waits for the processes to die (up to 5 s, then SIGKILL).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `gpukillctl reset` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &ResetArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .reset(conn::unary_with_timeout(request(args), DEADLINE))
        .await
        .map_err(|status| match args.force {
            true => Error::rpc("Reset", status),
            false => Error::rpc_unforced("Reset", status),
        })?
        .into_inner();
    if response
        .results
        .iter()
        .flat_map(|result| &result.killed)
        .any(|killed| killed.target.is_none())
    {
        return Err(Error::EmptyResponse {
            rpc: "Reset",
            missing: "the target of a killed process",
        });
    }
    let text = match args.output {
        OutputFormat::Table => reset::render(&response),
        OutputFormat::Json => reset::json(&response)?,
    };
    out.write(&text)?;
    if response.results.is_empty() {
        out.note("No NVIDIA GPU matches; nothing was reset.")?;
    }
    check(&response)
}

/// The request the arguments ask for.
fn request(args: &ResetArgs) -> ResetRequest {
    ResetRequest {
        target: args.target.target(),
        force: args.force,
    }
}

/// The command's outcome once the results are printed: success when every GPU was reset,
/// otherwise [`Error::ResetFailed`].
fn check(response: &ResetResponse) -> Result<(), Error> {
    let failed = response
        .results
        .iter()
        // FAILED, or a value this client does not know: nothing says the GPU was reset.
        .filter(|result| ResetOutcome::try_from(result.outcome) != Ok(ResetOutcome::Reset))
        .count();
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::ResetFailed {
            failed,
            total: response.results.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::reset_request::Target;
    use gpukill_proto::v1::{KillResult, ResetResult};
    use tonic::Status;

    /// A response whose results have these outcomes, one GPU each.
    fn outcomes(outcomes: &[i32]) -> ResetResponse {
        ResetResponse {
            results: outcomes
                .iter()
                .zip(0..)
                .map(|(outcome, gpu_index)| ResetResult {
                    gpu_index,
                    outcome: *outcome,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn exit_code(response: &ResetResponse) -> i32 {
        check(response).err().map_or(0, |err| err.exit_code())
    }

    #[test]
    fn any_gpu_not_reset_exits_1() {
        let (reset, failed) = (ResetOutcome::Reset as i32, ResetOutcome::Failed as i32);
        assert_eq!(exit_code(&outcomes(&[reset, reset])), 0);
        assert_eq!(exit_code(&outcomes(&[])), 0);
        assert_eq!(exit_code(&outcomes(&[reset, failed])), 1);
        assert_eq!(exit_code(&outcomes(&[failed])), 1);
        assert_eq!(exit_code(&outcomes(&[ResetOutcome::Unspecified as i32])), 1);
        assert_eq!(exit_code(&outcomes(&[99])), 1);
        let err = check(&testutil::reset_response()).expect_err("GPU 1 failed");
        assert_eq!(err.to_string(), "1 of 2 GPUs failed to reset");
    }

    #[tokio::test]
    async fn reset_gpu_force_sends_the_index_and_force() {
        let response = outcomes(&[ResetOutcome::Reset as i32]);
        let daemon = FakeDaemon {
            reset: Some(Ok(response.clone())),
            ..Default::default()
        };
        let requests = daemon.reset_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) =
            run_cli(&served.socket, &["reset", "--gpu", "1", "--force"]).await;
        result.expect("the GPU was reset");
        assert_eq!(text, reset::render(&response));
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let received = &requests[0];
        assert_eq!(
            received.request,
            ResetRequest {
                target: Some(Target::GpuIndex(1)),
                force: true,
            }
        );
        let deadline = received.deadline.expect("a deadline is set");
        assert!(
            deadline > Duration::from_secs(118) && deadline <= DEADLINE,
            "{deadline:?}"
        );
    }

    #[tokio::test]
    async fn reset_all_sends_all_without_force() {
        let daemon = FakeDaemon {
            reset: Some(Ok(testutil::reset_response())),
            ..Default::default()
        };
        let requests = daemon.reset_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) =
            run_cli(&served.socket, &["reset", "--all", "-o", "json"]).await;
        let err = result.expect_err("GPU 1 failed");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.to_string(), "1 of 2 GPUs failed to reset");
        assert_eq!(
            text,
            reset::json(&testutil::reset_response()).expect("encode")
        );
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests[0].request,
            ResetRequest {
                target: Some(Target::All(true)),
                force: false,
            }
        );
    }

    #[tokio::test]
    async fn refusals_map_to_their_exit_codes() {
        let cases = [
            (
                Status::permission_denied("resetting a GPU needs an admin"),
                4,
            ),
            (
                Status::failed_precondition("GPU 0 does not support reset: MIG is enabled"),
                5,
            ),
            (
                Status::aborted(
                    "not reset: 2 process(es) still use the GPU: python (pid 7, alice) on GPU 0; \
                     stop them, or force the reset to kill them first",
                ),
                1,
            ),
            (Status::invalid_argument("no GPU 7 (this node has 2)"), 3),
        ];
        for (status, expected) in cases {
            let message = status.message().to_owned();
            let served = serve(FakeDaemon {
                reset: Some(Err(status)),
                ..Default::default()
            });
            let (result, text, _) = run_cli(&served.socket, &["reset", "--gpu", "0"]).await;
            let err = result.expect_err("the daemon refuses");
            assert_eq!(err.exit_code(), expected, "{message}");
            // gpukilld names the request's force, gpukillctl its flag.
            let hint = if message.contains("force") {
                " (add --force)"
            } else {
                ""
            };
            assert!(
                err.to_string().ends_with(&format!("{message}{hint}")),
                "{err}"
            );
            assert_eq!(text, "");
        }
        // With --force given, no hint.
        let served = serve(FakeDaemon {
            reset: Some(Err(Status::aborted("forced reset failed"))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["reset", "--gpu", "0", "--force"]).await;
        let err = result.expect_err("the daemon refuses");
        assert!(err.to_string().ends_with("forced reset failed"), "{err}");
    }

    #[tokio::test]
    async fn no_gpu_says_so() {
        let served = serve(FakeDaemon {
            reset: Some(Ok(ResetResponse::default())),
            ..Default::default()
        });
        let (result, text, notes) = run_cli(&served.socket, &["reset", "--all"]).await;
        result.expect("nothing to do is not a failure");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(notes, "No NVIDIA GPU matches; nothing was reset.\n");
    }

    #[tokio::test]
    async fn a_killed_process_without_a_target_is_a_broken_answer() {
        let mut response = testutil::reset_response();
        response.results[0].killed.push(KillResult::default());
        let served = serve(FakeDaemon {
            reset: Some(Ok(response)),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["reset", "--all", "--force"]).await;
        let err = result.expect_err("broken answer");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "gpukilld sent a Reset response without the target of a killed process"
        );
        assert_eq!(text, "");
    }
}
