//! `gpukillctl list`: the List RPC once, or the Watch stream with `--watch`.

use std::io::Write;

use gpukill_proto::v1::{
    ListRequest, Snapshot, SnapshotFilter, Vendor, VendorState, WatchRequest, WatchResponse,
};

use crate::Output;
use crate::cli::{ListArgs, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::json;
use crate::render::table::{self, TableOptions};

/// Runs `gpukillctl list` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &ListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let filter = filter(args);
    if args.watch {
        let stream = client
            .watch(WatchRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|status| Error::rpc("Watch", status))?
            .into_inner();
        return watch(stream, target, args, out).await;
    }
    let snapshot = client
        .list(conn::unary(ListRequest {
            filter: Some(filter),
        }))
        .await
        .map_err(|status| Error::rpc("List", status))?
        .into_inner()
        .snapshot
        .ok_or(Error::EmptyResponse {
            rpc: "List",
            missing: "a snapshot",
        })?;
    let text = match args.output {
        OutputFormat::Table => table::render(&snapshot, &table_options(args, out)),
        OutputFormat::Json => json::pretty(&snapshot)?,
    };
    out.write(&text)?;
    vendor_failures(&snapshot)
}

/// Exit code 2 when a vendor library failed as a whole, after the output was printed.
fn vendor_failures(snapshot: &Snapshot) -> Result<(), Error> {
    let failures: Vec<String> = snapshot
        .vendors
        .iter()
        .filter(|status| status.state() == VendorState::Error)
        .map(|status| {
            format!(
                "{}: {}",
                status.vendor().cli_name(),
                status.message.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::VendorFailed { failures })
    }
}

/// The filter the arguments ask for.
fn filter(args: &ListArgs) -> SnapshotFilter {
    SnapshotFilter {
        vendor: Vendor::from(args.vendor) as i32,
        process_regex: args.filter.clone(),
        containers_only: args.containers,
    }
}

fn table_options<W, E>(args: &ListArgs, out: &Output<W, E>) -> TableOptions {
    TableOptions {
        details: args.details,
        containers: args.containers,
        tz: out.tz,
    }
}

/// Renders every snapshot of the Watch stream until Ctrl-C (success) or until the stream
/// ends or fails (an error with the status's exit code; [`Error::ConnectionLost`] when the
/// daemon went away).
async fn watch<W: Write, E: Write>(
    mut stream: tonic::Streaming<WatchResponse>,
    target: &conn::Target,
    args: &ListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            signal = &mut ctrl_c => return signal.map_err(Error::Signal),
            next = stream.message() => next,
        };
        match next {
            Ok(Some(message)) => {
                let snapshot = message.snapshot.ok_or(Error::EmptyResponse {
                    rpc: "Watch",
                    missing: "a snapshot",
                })?;
                write_frame(&snapshot, args, out)?;
            }
            Ok(None) => return Err(Error::WatchEnded),
            Err(status) => return Err(stream_failed(status, target).await),
        }
    }
}

/// The error for a Watch stream that failed with `status`. A broken connection shows up as
/// UNKNOWN ("h2 protocol error: ..."), which the daemon itself never sends for a stream it
/// ends on purpose; when the daemon then refuses a new connection, it is gone, and that is
/// what the user needs to hear (exit 6), not the HTTP/2 detail.
async fn stream_failed(status: tonic::Status, target: &conn::Target) -> Error {
    if status.code() == tonic::Code::Unknown
        && let Some(lost) = conn::connection_lost(target).await
    {
        return lost;
    }
    Error::rpc("Watch", status)
}

/// Writes one watch frame: an NDJSON line, or the tables (redrawn in place on a terminal,
/// followed by a blank line otherwise).
fn write_frame<W: Write, E: Write>(
    snapshot: &Snapshot,
    args: &ListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match args.output {
        OutputFormat::Json => out.write(&json::line(snapshot)?),
        OutputFormat::Table => {
            let tables = table::render(snapshot, &table_options(args, out));
            if out.is_tty {
                out.redraw(&tables)
            } else {
                out.write(&format!("{tables}\n"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use tonic::Status;

    fn output() -> Output<Vec<u8>, Vec<u8>> {
        Output {
            writer: Vec::new(),
            notes: Vec::new(),
            is_tty: false,
            tz: TimeZone::Utc,
        }
    }

    #[tokio::test]
    async fn list_sends_the_filter_and_prints_the_snapshot() {
        let daemon = FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            ..Default::default()
        };
        let filters = daemon.filters.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &[
                "list",
                "--vendor",
                "nvidia",
                "--filter",
                "^py",
                "--containers",
            ],
        )
        .await;
        result.expect("list succeeds");
        let options = TableOptions {
            details: false,
            containers: true,
            tz: TimeZone::Utc,
        };
        assert_eq!(text, table::render(&testutil::snapshot(), &options));
        let filters = filters.lock().expect("lock").clone();
        assert_eq!(
            filters,
            [SnapshotFilter {
                vendor: Vendor::Nvidia as i32,
                process_regex: Some("^py".to_owned()),
                containers_only: true,
            }]
        );
    }

    #[tokio::test]
    async fn list_json_is_the_documented_document() {
        let served = serve(FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["list", "--output", "json"]).await;
        result.expect("list succeeds");
        assert_eq!(text, json::pretty(&testutil::snapshot()).expect("encode"));
    }

    #[tokio::test]
    async fn a_bad_regex_exits_3_with_the_daemons_message() {
        let message = "invalid process regex \"(\": regex parse error: unclosed group";
        let served = serve(FakeDaemon {
            list: Some(Err(Status::invalid_argument(message))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["list", "--filter", "("]).await;
        let err = result.expect_err("the daemon refuses");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            format!("List failed (InvalidArgument): {message}")
        );
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn watch_prints_ndjson_until_the_stream_fails() {
        let mut second = testutil::snapshot();
        second.sequence = 43;
        let daemon = FakeDaemon {
            watch: vec![
                Ok(testutil::snapshot()),
                Ok(second.clone()),
                Err(Status::unavailable("gpukilld is shutting down")),
            ],
            ..Default::default()
        };
        let filters = daemon.filters.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["list", "--watch", "-o", "json", "--vendor", "amd"],
        )
        .await;
        let err = result.expect_err("the stream fails");
        assert_eq!(err.exit_code(), 6);
        let expected = json::line(&testutil::snapshot()).expect("encode")
            + &json::line(&second).expect("encode");
        assert_eq!(text, expected);
        let filters = filters.lock().expect("lock").clone();
        assert_eq!(filters[0].vendor, Vendor::Amd as i32);
    }

    #[tokio::test]
    async fn watch_tables_are_separated_by_blank_lines_when_not_a_terminal() {
        let served = serve(FakeDaemon {
            watch: vec![Ok(testutil::snapshot()), Ok(testutil::stale_snapshot())],
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["list", "--watch"]).await;
        let err = result.expect_err("the stream ends");
        assert!(matches!(err, Error::WatchEnded), "{err}");
        assert_eq!(err.exit_code(), 1);
        let options = TableOptions {
            details: false,
            containers: false,
            tz: TimeZone::Utc,
        };
        let expected = format!(
            "{}\n{}\n",
            table::render(&testutil::snapshot(), &options),
            table::render(&testutil::stale_snapshot(), &options)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn terminal_frames_clear_the_screen_first() {
        let args = ListArgs {
            details: false,
            watch: true,
            output: OutputFormat::Table,
            vendor: crate::cli::VendorArg::All,
            filter: None,
            containers: false,
        };
        let mut out = Output {
            is_tty: true,
            ..output()
        };
        write_frame(&testutil::snapshot(), &args, &mut out).expect("frame");
        let text = String::from_utf8(out.writer).expect("UTF-8");
        assert!(text.starts_with("\x1b[H\x1b[2Jgpu-node-1  "), "{text:?}");
        assert!(!text.ends_with("\n\n"));
        // The clear-screen sequence is the only escape in the frame.
        assert_eq!(text.matches('\x1b').count(), 2, "{text:?}");
    }

    #[tokio::test]
    async fn a_daemon_that_dies_during_watch_exits_6() {
        let served = serve(FakeDaemon {
            watch: vec![Ok(testutil::snapshot())],
            watch_stays_open: true,
            ..Default::default()
        });
        let socket = served.socket.clone();
        let crash = async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(served);
        };
        let ((result, text, _), ()) =
            tokio::join!(run_cli(&socket, &["list", "--watch", "-o", "json"]), crash);
        let err = result.expect_err("the daemon is gone");
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string().contains(&socket.display().to_string()),
            "{err}"
        );
        assert_eq!(text, json::line(&testutil::snapshot()).expect("encode"));
    }

    #[tokio::test]
    async fn an_unreachable_daemon_exits_6() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("missing.sock");
        let (result, text, _) = run_cli(&socket, &["list"]).await;
        let err = result.expect_err("nothing listens");
        assert_eq!(err.exit_code(), 6);
        assert!(err.to_string().contains(&socket.display().to_string()));
        assert!(err.to_string().contains("gpukilld.service"));
        assert_eq!(text, "");
    }
}
