//! `gpukillctl audit`: the Sessions RPC once; who used the GPUs in a window, as a table, JSON
//! or CSV. With `--summary`, the Summary RPC once instead, as a table or JSON; `--summary
//! --output csv` is refused before contacting the daemon (exit 3).

use std::io::Write;
use std::time::SystemTime;

use gpukill_proto::v1::{RogueLevel, RogueRequest, SessionsRequest, SummaryRequest};

use crate::Output;
use crate::cli::{AuditAction, AuditArgs, ReportFormat};
use crate::conn;
use crate::error::Error;
use crate::render::audit;

/// Runs `gpukillctl audit` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &AuditArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match &args.action {
        Some(AuditAction::Export(export)) => return super::export::run(target, export, out).await,
        Some(AuditAction::Import(import)) => return super::import::run(target, import, out).await,
        None => {}
    }
    if args.summary {
        return summary(target, args, out).await;
    }
    if args.rogue {
        return rogue(target, args, out).await;
    }
    let mut client = conn::connect(target).await?;
    let response = client
        .sessions(conn::unary(request(args, SystemTime::now())))
        .await
        .map_err(|status| Error::rpc("Sessions", status))?
        .into_inner();
    let text = match args.output {
        ReportFormat::Table => audit::render(&response, out.tz),
        ReportFormat::Json => audit::json(&response)?,
        ReportFormat::Csv => audit::csv(&response),
    };
    out.write(&text)
}

/// A usage error (exit 3) for `--output csv` with `flag`, whose report has no CSV form.
fn refuse_csv(args: &AuditArgs, flag: &str) -> Result<(), Error> {
    if args.output == ReportFormat::Csv {
        return Err(Error::Usage(format!(
            "{flag} has no CSV output; use --output table or json"
        )));
    }
    Ok(())
}

/// `gpukillctl audit --summary`: the Summary RPC over the same window.
async fn summary<W: Write, E: Write>(
    target: &conn::Target,
    args: &AuditArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    // Four tables do not make one CSV.
    refuse_csv(args, "--summary")?;
    let mut client = conn::connect(target).await?;
    let request = summary_request(args, SystemTime::now());
    let window = audit::Window {
        since_unix_ms: request.since_unix_ms,
        until_unix_ms: request.until_unix_ms,
    };
    let response = client
        .summary(conn::unary(request))
        .await
        .map_err(|status| Error::rpc("Summary", status))?
        .into_inner();
    let text = match args.output {
        ReportFormat::Json => audit::summary_json(&response, window)?,
        ReportFormat::Table | ReportFormat::Csv => audit::render_summary(&response, window, out.tz),
    };
    out.write(&text)
}

/// `gpukillctl audit --rogue`: the Rogue RPC over the same window.
async fn rogue<W: Write, E: Write>(
    target: &conn::Target,
    args: &AuditArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    refuse_csv(args, "--rogue")?;
    let window = request(args, SystemTime::now());
    let mut client = conn::connect(target).await?;
    let response = client
        .rogue(conn::unary(RogueRequest {
            since_unix_ms: window.since_unix_ms,
            until_unix_ms: window.until_unix_ms,
            min_level: RogueLevel::from(args.min_level).into(),
        }))
        .await
        .map_err(|status| Error::rpc("Rogue", status))?
        .into_inner();
    let text = match args.output {
        ReportFormat::Json => audit::rogue_json(&response)?,
        ReportFormat::Table | ReportFormat::Csv => audit::render_rogue(&response, out.tz),
    };
    out.write(&text)
}

/// The Summary request of the arguments: the window of [`request`] and `--top`.
fn summary_request(args: &AuditArgs, now: SystemTime) -> SummaryRequest {
    let window = request(args, now);
    SummaryRequest {
        since_unix_ms: window.since_unix_ms,
        until_unix_ms: window.until_unix_ms,
        top: args.top,
    }
}

/// The request the arguments ask for: the window `--since`..`--until` (default now), or the
/// last `--hours`, counted back from `now`. The daemon checks that the window is not empty.
fn request(args: &AuditArgs, now: SystemTime) -> SessionsRequest {
    let (since_unix_ms, until_unix_ms) = args.window.unix_ms(now);
    SessionsRequest {
        since_unix_ms,
        until_unix_ms,
        user: args.user.clone(),
        process_regex: args.process.clone(),
        gpu_index: args.gpu,
        limit: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, millis, run_cli, serve};
    use std::time::UNIX_EPOCH;
    use tonic::Status;

    fn daemon() -> FakeDaemon {
        FakeDaemon {
            sessions: Some(Ok(testutil::sessions_response())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn audit_sends_the_filters_and_the_last_24_hours() {
        let daemon = daemon();
        let requests = daemon.sessions_requests.clone();
        let served = serve(daemon);
        let before = millis(SystemTime::now());
        let (result, text, _) = run_cli(
            &served.socket,
            &["audit", "--user", "alice", "--process", "^py", "--gpu", "0"],
        )
        .await;
        let after = millis(SystemTime::now());
        result.expect("audit succeeds");
        assert_eq!(
            text,
            audit::render(&testutil::sessions_response(), TimeZone::Utc)
        );
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.user.as_deref(), Some("alice"));
        assert_eq!(request.process_regex.as_deref(), Some("^py"));
        assert_eq!(request.gpu_index, Some(0));
        assert_eq!(request.limit, 0);
        assert!((before..=after).contains(&request.until_unix_ms));
        assert_eq!(
            request.until_unix_ms - request.since_unix_ms,
            24 * 3_600_000
        );
    }

    #[tokio::test]
    async fn json_and_csv_print_the_answer_unfiltered() {
        let daemon = daemon();
        let requests = daemon.sessions_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["audit", "-o", "json"]).await;
        result.expect("audit succeeds");
        assert_eq!(
            text,
            audit::json(&testutil::sessions_response()).expect("encode")
        );
        let (result, text, _) = run_cli(&served.socket, &["audit", "--output", "csv"]).await;
        result.expect("audit succeeds");
        assert_eq!(text, audit::csv(&testutil::sessions_response()));
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 2);
        assert_eq!(
            (
                &requests[0].user,
                &requests[0].process_regex,
                requests[0].gpu_index
            ),
            (&None, &None, None)
        );
    }

    #[tokio::test]
    async fn an_rpc_error_maps_as_usual() {
        let served = serve(FakeDaemon {
            sessions: Some(Err(Status::invalid_argument("invalid process regex"))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["audit", "--process", "("]).await;
        let err = result.expect_err("the daemon refuses");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "Sessions failed (InvalidArgument): invalid process regex"
        );
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn summary_sends_the_window_and_top_and_renders_the_answer() {
        let daemon = FakeDaemon {
            summary: Some(Ok(testutil::summary_response())),
            ..Default::default()
        };
        let requests = daemon.summary_requests.clone();
        let sessions = daemon.sessions_requests.clone();
        let served = serve(daemon);
        let (result, text, _) =
            run_cli(&served.socket, &["audit", "--summary", "--hours", "2"]).await;
        result.expect("summary succeeds");
        let requests_so_far = requests.lock().expect("lock").clone();
        let window = audit::Window {
            since_unix_ms: requests_so_far[0].since_unix_ms,
            until_unix_ms: requests_so_far[0].until_unix_ms,
        };
        assert_eq!(
            text,
            audit::render_summary(&testutil::summary_response(), window, crate::TimeZone::Utc)
        );
        let (result, text, _) = run_cli(
            &served.socket,
            &["audit", "--summary", "--top", "3", "-o", "json"],
        )
        .await;
        result.expect("summary succeeds");
        let requests = requests.lock().expect("lock").clone();
        let window = audit::Window {
            since_unix_ms: requests[1].since_unix_ms,
            until_unix_ms: requests[1].until_unix_ms,
        };
        assert_eq!(
            text,
            audit::summary_json(&testutil::summary_response(), window).expect("encode")
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(
            requests[0].until_unix_ms - requests[0].since_unix_ms,
            2 * 3_600_000
        );
        assert_eq!(requests[0].top, 10);
        assert_eq!(requests[1].top, 3);
        assert_eq!(
            requests[1].until_unix_ms - requests[1].since_unix_ms,
            24 * 3_600_000
        );
        assert!(sessions.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn summary_refuses_csv_without_asking_the_daemon() {
        let daemon = FakeDaemon {
            summary: Some(Ok(testutil::summary_response())),
            ..Default::default()
        };
        let requests = daemon.summary_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["audit", "--summary", "-o", "csv"]).await;
        let err = result.expect_err("csv is refused");
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("no CSV output"), "{err}");
        assert_eq!(text, "");
        assert!(requests.lock().expect("lock").is_empty());
    }

    #[test]
    fn summary_conflicts_with_the_filters_and_top_requires_it() {
        use clap::Parser;
        let parse = |argv: &[&str]| {
            crate::Cli::try_parse_from([&["gpukillctl", "audit"], argv].concat()).map(|_| ())
        };
        assert!(parse(&["--summary", "--since", "2h", "--until", "1h"]).is_ok());
        for argv in [
            &["--summary", "--user", "alice"][..],
            &["--summary", "--process", "py"],
            &["--summary", "--gpu", "0"],
            &["--top", "3"],
            &["--summary", "--top", "0"],
        ] {
            let err = parse(argv).expect_err("refused");
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{argv:?}");
        }
    }

    #[tokio::test]
    async fn rogue_asks_for_the_window_and_level_and_prints_the_findings() {
        let daemon = FakeDaemon {
            rogue: Some(Ok(testutil::rogue_response())),
            ..Default::default()
        };
        let requests = daemon.rogue_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["audit", "--rogue", "--hours", "48", "--min-level", "high"],
        )
        .await;
        result.expect("rogue");
        assert_eq!(
            text,
            audit::render_rogue(&testutil::rogue_response(), TimeZone::Utc)
        );
        let request = requests.lock().expect("lock")[0];
        assert_eq!(request.min_level(), RogueLevel::High);
        assert_eq!(
            request.until_unix_ms - request.since_unix_ms,
            48 * 3_600_000
        );
        let (result, _, _) = run_cli(&served.socket, &["audit", "--rogue", "-o", "csv"]).await;
        assert_eq!(result.expect_err("no csv").exit_code(), 3);
        let (result, text, _) = run_cli(&served.socket, &["audit", "--rogue", "-o", "json"]).await;
        result.expect("json");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["findings"][0]["level"], "critical");
        assert!(json["findings"][0]["session"]["pid"].is_u64());
    }

    #[test]
    fn since_and_until_make_the_window() {
        use clap::Parser;
        let now = UNIX_EPOCH + std::time::Duration::from_millis(testutil::NOW_MS.unsigned_abs());
        let args = |argv: &[&str]| {
            let argv = [&["gpukillctl", "audit"], argv].concat();
            match crate::Cli::try_parse_from(argv).expect("valid").command {
                crate::cli::Command::Audit(args) => args,
                other => panic!("expected audit, got {other:?}"),
            }
        };
        let window = |argv: &[&str]| {
            let request = request(&args(argv), now);
            (request.since_unix_ms, request.until_unix_ms)
        };
        assert_eq!(
            window(&["--since", "2024-05-01T10:00:00Z", "--until", "30m"]),
            (1_714_557_600_000, testutil::NOW_MS - 1_800_000)
        );
        assert_eq!(
            window(&["--since", "2h"]),
            (testutil::NOW_MS - 7_200_000, testutil::NOW_MS)
        );
        assert_eq!(
            window(&["--hours", "3"]),
            (testutil::NOW_MS - 3 * 3_600_000, testutil::NOW_MS)
        );
    }
}
