//! `gpukillctl guard status|test|violations`: the GuardStatus and GuardTest RPCs, and the
//! audit trail's violation events (the Events RPC).

use std::io::Write;

use gpukill_proto::v1::guard_update_request::Change;
use gpukill_proto::v1::{GuardMode, GuardStatusRequest, GuardTestRequest};

use crate::Output;
use crate::cli::{EventType, EventsArgs, GuardCommand, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::guard;

/// Runs `gpukillctl guard ...` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    command: &GuardCommand,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match command {
        GuardCommand::Status(args) => {
            let mut client = conn::connect(target).await?;
            let response = client
                .guard_status(conn::unary(GuardStatusRequest {}))
                .await
                .map_err(|status| Error::rpc("GuardStatus", status))?
                .into_inner();
            let text = match args.output {
                OutputFormat::Table => guard::render_status(&response, out.tz),
                OutputFormat::Json => guard::status_json(&response)?,
            };
            out.write(&text)
        }
        GuardCommand::Test(args) => {
            let mut client = conn::connect(target).await?;
            let response = client
                .guard_test(conn::unary(GuardTestRequest {}))
                .await
                .map_err(|status| Error::rpc("GuardTest", status))?
                .into_inner();
            let text = match args.output {
                OutputFormat::Table => guard::render_test(&response),
                OutputFormat::Json => guard::test_json(&response)?,
            };
            out.write(&text)
        }
        GuardCommand::Enable => {
            super::guard_policy::update(target, Change::Enabled(true), out).await
        }
        GuardCommand::Disable => {
            super::guard_policy::update(target, Change::Enabled(false), out).await
        }
        GuardCommand::Mode { mode } => {
            let mode = GuardMode::from(*mode);
            super::guard_policy::update(target, Change::Mode(mode.into()), out).await
        }
        GuardCommand::Policy(command) => super::guard_policy::run(target, command, out).await,
        GuardCommand::Export => super::guard_policy::show(target, true, out).await,
        GuardCommand::Import { file } => {
            let text = super::guard_policy::read_policy(file)?;
            super::guard_policy::update(target, Change::Replace(text), out).await
        }
        GuardCommand::Violations(args) => {
            let events = EventsArgs {
                since: args.since,
                event_type: Some(EventType::Violation),
                limit: args.limit,
                output: args.output,
            };
            super::events::run(target, &events, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use tonic::Status;

    #[tokio::test]
    async fn status_and_test_print_what_the_daemon_says() {
        let served = serve(FakeDaemon {
            guard_status: Some(Ok(testutil::guard_status_response())),
            guard_test: Some(Ok(testutil::guard_test_response())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["guard", "status"]).await;
        result.expect("status");
        assert_eq!(
            text,
            guard::render_status(&testutil::guard_status_response(), TimeZone::Utc)
        );
        let (result, text, _) = run_cli(&served.socket, &["guard", "test", "-o", "json"]).await;
        result.expect("test");
        assert_eq!(
            text,
            guard::test_json(&testutil::guard_test_response()).expect("encode")
        );
    }

    #[tokio::test]
    async fn violations_are_the_violation_events() {
        let daemon = FakeDaemon {
            events: Some(Ok(testutil::events_response())),
            ..Default::default()
        };
        let requests = daemon.events_requests.clone();
        let served = serve(daemon);
        let (result, _, _) =
            run_cli(&served.socket, &["guard", "violations", "--since", "1h"]).await;
        result.expect("violations");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests[0].r#type(),
            gpukill_proto::v1::EventType::Violation
        );
        assert!(requests[0].since_unix_ms.is_some());
    }

    #[tokio::test]
    async fn test_without_a_policy_is_unsupported() {
        let served = serve(FakeDaemon {
            guard_test: Some(Err(Status::failed_precondition(
                "no guard policy is loaded from /etc/gpukill/guard.toml",
            ))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["guard", "test"]).await;
        assert_eq!(result.expect_err("no policy").exit_code(), 5);
    }
}
