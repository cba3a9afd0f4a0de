//! `gpukillctl kill`: one Kill RPC; the daemon authorizes, signals and records each target.
//!
//! The results are always printed first. Then: when several processes matched and `--batch`
//! was not given, a note on standard error says nothing was killed (exit 0); otherwise the
//! command fails with [`Error::KillIncomplete`] when a target was refused (exit 4) or is still
//! running (exit 1).

use std::io::Write;
use std::time::Duration;

use gpukill_proto::v1::{KillOutcome, KillRequest, KillResponse};

use crate::Output;
use crate::cli::{KillArgs, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::kill;

/// How much longer than `--timeout-secs` the client waits for the answer: the daemon waits up
/// to the timeout for SIGTERM to take effect, then (with `--force`) for SIGKILL, then writes
/// the audit trail.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// Runs `gpukillctl kill` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &KillArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .kill(conn::unary_with_timeout(request(args), deadline(args)))
        .await
        .map_err(|status| match args.force {
            true => Error::rpc("Kill", status),
            false => Error::rpc_unforced("Kill", status),
        })?
        .into_inner();
    if response
        .results
        .iter()
        .any(|result| result.target.is_none())
    {
        return Err(Error::EmptyResponse {
            rpc: "Kill",
            missing: "the target of a result",
        });
    }
    let text = match args.output {
        OutputFormat::Table => kill::render(&response),
        OutputFormat::Json => kill::json(&response)?,
    };
    out.write(&text)?;
    if let Some(note) = note(&response, args.force) {
        out.note(&note)?;
    }
    check(&response)
}

/// The request the arguments ask for.
fn request(args: &KillArgs) -> KillRequest {
    KillRequest {
        target: args.target.target(),
        batch: args.batch,
        timeout_secs: args.timeout_secs,
        force: args.force,
    }
}

/// How long to wait for the answer: `--timeout-secs` plus [`DEADLINE_MARGIN`].
fn deadline(args: &KillArgs) -> Duration {
    Duration::from_secs(u64::from(args.timeout_secs)) + DEADLINE_MARGIN
}

/// What to say on standard error beside the results: when nothing was signalled, or when
/// processes outlived SIGTERM and `--force` (SIGKILL) was not given.
fn note(response: &KillResponse, force: bool) -> Option<String> {
    let still_running = response
        .results
        .iter()
        .filter(|result| result.outcome == KillOutcome::StillRunning as i32)
        .count();
    if response.needs_batch {
        let count = response.results.len();
        Some(format!(
            "{count} processes match; nothing was killed. Add --batch to kill them all."
        ))
    } else if response.results.is_empty() {
        Some("No process matches; nothing was killed.".to_owned())
    } else if still_running > 0 && !force {
        Some("Add --force to send SIGKILL to what still runs after SIGTERM.".to_owned())
    } else {
        None
    }
}

/// The command's outcome once the results are printed: success when every target is gone (or
/// the matches were only listed, awaiting `--batch`), otherwise [`Error::KillIncomplete`].
fn check(response: &KillResponse) -> Result<(), Error> {
    if response.needs_batch {
        return Ok(());
    }
    let (mut denied, mut protected, mut still_running, mut unexpected) = (0, 0, 0, 0);
    for result in &response.results {
        match KillOutcome::try_from(result.outcome) {
            Ok(KillOutcome::Terminated | KillOutcome::Killed | KillOutcome::AlreadyGone) => {}
            Ok(KillOutcome::Denied) => denied += 1,
            Ok(KillOutcome::Protected) => protected += 1,
            Ok(KillOutcome::StillRunning) => still_running += 1,
            // MATCHED without needs_batch, or a value this client does not know: nothing says
            // the process is gone.
            Ok(KillOutcome::Matched | KillOutcome::Unspecified) | Err(_) => unexpected += 1,
        }
    }
    if denied + protected + still_running + unexpected == 0 {
        Ok(())
    } else {
        Err(Error::KillIncomplete {
            total: response.results.len(),
            denied,
            protected,
            still_running,
            unexpected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use clap::Parser;
    use gpukill_proto::v1::KillResult;
    use gpukill_proto::v1::kill_request::Target;
    use tonic::Status;

    /// A response whose results have these outcomes.
    fn outcomes(outcomes: &[KillOutcome], needs_batch: bool) -> KillResponse {
        let all = testutil::kill_response().results;
        KillResponse {
            results: outcomes
                .iter()
                .zip(all.iter().cycle())
                .map(|(outcome, result)| KillResult {
                    outcome: *outcome as i32,
                    ..result.clone()
                })
                .collect(),
            needs_batch,
        }
    }

    fn exit_code(response: &KillResponse) -> i32 {
        check(response).err().map_or(0, |err| err.exit_code())
    }

    #[test]
    fn refusals_exit_4_survivors_exit_1_and_the_rest_0() {
        use KillOutcome::*;
        assert_eq!(exit_code(&outcomes(&[Terminated, Denied], false)), 4);
        assert_eq!(exit_code(&outcomes(&[Protected, Killed], false)), 4);
        assert_eq!(exit_code(&outcomes(&[StillRunning, Denied], false)), 4);
        assert_eq!(exit_code(&outcomes(&[Terminated, StillRunning], false)), 1);
        assert_eq!(
            exit_code(&outcomes(&[Terminated, Killed, AlreadyGone], false)),
            0
        );
        assert_eq!(exit_code(&outcomes(&[], false)), 0);
        assert_eq!(exit_code(&outcomes(&[Matched, Matched], true)), 0);
        // needs_batch wins even over a refusal among the matches: nothing was attempted.
        assert_eq!(exit_code(&outcomes(&[Matched, Denied], true)), 0);
        assert_eq!(exit_code(&outcomes(&[Matched], false)), 1);
        assert_eq!(exit_code(&outcomes(&[Unspecified], false)), 1);
    }

    #[test]
    fn the_error_counts_each_reason() {
        let err = check(&testutil::kill_response()).expect_err("not all killed");
        assert_eq!(
            err.to_string(),
            "4 of 7 processes were not killed: 1 denied, 1 protected, 1 still running, \
             1 with an unexpected outcome"
        );
        assert_eq!(err.exit_code(), 4);
    }

    #[test]
    fn the_deadline_covers_the_timeout_and_the_sigkill_grace() {
        let cli = Cli::try_parse_from(["gpukillctl", "kill", "--pid", "1"]).expect("valid");
        let crate::cli::Command::Kill(args) = cli.command else {
            panic!("expected kill");
        };
        assert_eq!(deadline(&args), Duration::from_secs(35));
    }

    #[tokio::test]
    async fn kill_sends_exactly_the_request_asked_for() {
        let response = outcomes(&[KillOutcome::Terminated, KillOutcome::Killed], false);
        let daemon = FakeDaemon {
            kill: Some(Ok(response.clone())),
            ..Default::default()
        };
        let requests = daemon.kill_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) = run_cli(
            &served.socket,
            &[
                "kill",
                "--filter",
                "x",
                "--batch",
                "--timeout-secs",
                "2",
                "--force",
            ],
        )
        .await;
        result.expect("everything was killed");
        assert_eq!(text, kill::render(&response));
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let received = &requests[0];
        assert_eq!(
            received.request,
            KillRequest {
                target: Some(Target::Filter("x".to_owned())),
                batch: true,
                timeout_secs: 2,
                force: true,
            }
        );
        let deadline = received.deadline.expect("a deadline is set");
        assert!(
            deadline > Duration::from_secs(30) && deadline <= Duration::from_secs(32),
            "{deadline:?}"
        );
    }

    #[tokio::test]
    async fn defaults_are_sent_for_a_pid() {
        let daemon = FakeDaemon {
            kill: Some(Ok(outcomes(&[KillOutcome::AlreadyGone], false))),
            ..Default::default()
        };
        let requests = daemon.kill_requests.clone();
        let served = serve(daemon);
        let (result, _, _) = run_cli(&served.socket, &["kill", "--pid", "4242"]).await;
        result.expect("already gone is fine");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests[0].request,
            KillRequest {
                target: Some(Target::Pid(4242)),
                batch: false,
                timeout_secs: 5,
                force: false,
            }
        );
    }

    #[tokio::test]
    async fn several_matches_without_batch_are_listed_with_a_note_and_exit_0() {
        let response = outcomes(&[KillOutcome::Matched; 3], true);
        let served = serve(FakeDaemon {
            kill: Some(Ok(response.clone())),
            ..Default::default()
        });
        let (result, text, notes) =
            run_cli(&served.socket, &["kill", "--user", "bob", "-o", "json"]).await;
        result.expect("listing is not a failure");
        assert_eq!(text, kill::json(&response).expect("encode"));
        assert_eq!(
            notes,
            "3 processes match; nothing was killed. Add --batch to kill them all.\n"
        );
    }

    #[tokio::test]
    async fn refused_targets_are_printed_then_exit_4() {
        let response = outcomes(&[KillOutcome::Terminated, KillOutcome::Denied], false);
        let served = serve(FakeDaemon {
            kill: Some(Ok(response.clone())),
            ..Default::default()
        });
        let (result, text, notes) =
            run_cli(&served.socket, &["kill", "--gpu", "0", "--batch"]).await;
        let err = result.expect_err("one was denied");
        assert_eq!(err.exit_code(), 4);
        assert_eq!(err.to_string(), "1 of 2 processes was not killed: 1 denied");
        assert_eq!(text, kill::render(&response));
        assert_eq!(notes, "");
    }

    #[tokio::test]
    async fn an_rpc_error_maps_as_usual() {
        let served = serve(FakeDaemon {
            kill: Some(Err(Status::not_found("no process 999999"))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["kill", "--pid", "999999"]).await;
        let err = result.expect_err("the daemon refuses");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(err.to_string(), "Kill failed (NotFound): no process 999999");
        assert_eq!(text, "");
        let served = serve(FakeDaemon {
            kill: Some(Err(Status::permission_denied("not an admin"))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["kill", "--user", "root"]).await;
        assert_eq!(result.expect_err("refused").exit_code(), 4);
    }

    #[tokio::test]
    async fn no_match_says_so() {
        let served = serve(FakeDaemon {
            kill: Some(Ok(KillResponse::default())),
            ..Default::default()
        });
        let (result, text, notes) = run_cli(&served.socket, &["kill", "--filter", "zz"]).await;
        result.expect("nothing to do is not a failure");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(notes, "No process matches; nothing was killed.\n");
    }

    #[tokio::test]
    async fn a_result_without_a_target_is_a_broken_answer() {
        let response = KillResponse {
            results: vec![KillResult {
                target: None,
                outcome: KillOutcome::Terminated as i32,
                reason: String::new(),
            }],
            needs_batch: false,
        };
        let served = serve(FakeDaemon {
            kill: Some(Ok(response)),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["kill", "--pid", "1"]).await;
        let err = result.expect_err("broken answer");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "gpukilld sent a Kill response without the target of a result"
        );
    }
}
