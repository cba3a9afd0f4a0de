//! `gpukillctl list`: the List RPC once, or the Watch stream with `--watch`.
//!
//! On a terminal, `--watch` takes the screen ([`term::Screen`]): each frame fits the
//! terminal (its width, as every table does, and its height: lines that do not fit are
//! counted on one line, so the header never scrolls away), ends with `q or Ctrl-C to quit`,
//! and is drawn again when the terminal is resized. `q`, Ctrl-C, SIGTERM, SIGHUP and SIGQUIT
//! end it with exit 0 and the terminal as it was; Ctrl-Z gives the terminal back until the
//! shell continues gpukillctl.

use std::io::Write;

use gpukill_proto::v1::{
    ListRequest, ProcessView, Snapshot, SnapshotFilter, Vendor, VendorState, WatchRequest,
    WatchResponse,
};

use crate::cli::{ListArgs, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::json;
use crate::render::layout;
use crate::render::table::{self, TableOptions};
use crate::term::{self, Screen, Size};
use crate::{Output, TimeZone};

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
            process_view: process_view(args) as i32,
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
        OutputFormat::Table => table::render(&snapshot, &table_options(args, out.tz, out.width)),
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
        user: args.user.clone(),
    }
}

/// How the List answer should carry the processes: a summary per GPU when all that is shown
/// is the GPU table (its PIDS and TOP_PROC columns), the full list otherwise (the process
/// table, JSON). A daemon that does not know summaries sends the full list, which renders
/// the same table.
fn process_view(args: &ListArgs) -> ProcessView {
    let processes_shown = args.details || args.containers || args.output != OutputFormat::Table;
    if processes_shown {
        ProcessView::List
    } else {
        ProcessView::Summary
    }
}

/// The tables the arguments ask for, `width` wide (everything whole with `--wide`).
fn table_options(args: &ListArgs, tz: TimeZone, width: Option<usize>) -> TableOptions {
    TableOptions {
        details: args.details,
        containers: args.containers,
        tz,
        width: if args.wide { None } else { width },
    }
}

/// What a watch on a terminal says on its last line.
const QUIT_KEYS: &str = "q or Ctrl-C to quit";
/// The same, when standard input is not the terminal (no keys are read).
const QUIT_SIGNAL: &str = "Ctrl-C to quit";

/// Renders every snapshot of the Watch stream until `q`, Ctrl-C or (on a terminal) another
/// signal that ends it (success), or until the stream ends or fails (an error with the
/// status's exit code; [`Error::ConnectionLost`] when the daemon went away).
async fn watch<W: Write, E: Write>(
    mut stream: tonic::Streaming<WatchResponse>,
    target: &conn::Target,
    args: &ListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let full_screen = out.is_tty && args.output == OutputFormat::Table;
    // Dropped on every way out of this function: the terminal is restored.
    let mut screen = full_screen.then(|| Screen::enter(out.keys));
    let mut keys = match &screen {
        Some(screen) if screen.reads_keys() => Some(term::keys()),
        _ => None,
    };
    let hint = if keys.is_some() {
        QUIT_KEYS
    } else {
        QUIT_SIGNAL
    };
    let mut signals = Signals::new(full_screen).map_err(Error::Signal)?;
    let mut last: Option<Snapshot> = None;
    loop {
        let next = tokio::select! {
            signal = signals.next() => match signal.map_err(Error::Signal)? {
                Signal::End => return Ok(()),
                Signal::Suspend => {
                    if let Some(screen) = &mut screen {
                        screen.suspend();
                        stop_until_continued();
                        screen.resume();
                    }
                    redraw(last.as_ref(), args, hint, out)?;
                    continue;
                }
                Signal::Resize => {
                    redraw(last.as_ref(), args, hint, out)?;
                    continue;
                }
            },
            Some(key) = next_key(&mut keys) => {
                if term::is_quit(key) {
                    return Ok(());
                }
                continue;
            }
            next = stream.message() => next,
        };
        match next {
            Ok(Some(message)) => {
                let snapshot = message.snapshot.ok_or(Error::EmptyResponse {
                    rpc: "Watch",
                    missing: "a snapshot",
                })?;
                if full_screen {
                    redraw(Some(&snapshot), args, hint, out)?;
                } else {
                    write_frame(&snapshot, args, out)?;
                }
                last = Some(snapshot);
            }
            Ok(None) => return Err(Error::WatchEnded),
            Err(status) => return Err(stream_failed(status, target).await),
        }
    }
}

/// The next key typed, or never when keys are not read (or no longer come).
async fn next_key(keys: &mut Option<tokio::sync::mpsc::Receiver<u8>>) -> Option<u8> {
    match keys {
        Some(receiver) => match receiver.recv().await {
            Some(key) => Some(key),
            None => {
                *keys = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Stops this process as Ctrl-Z would have (the watch catches SIGTSTP to give the terminal
/// back first); returns once the shell continues it.
fn stop_until_continued() {
    // SAFETY: raising a signal on the calling process; SIGSTOP cannot be caught, so this
    // returns after SIGCONT.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
}

/// Draws the full-screen frame of `snapshot` (nothing before the first snapshot).
fn redraw<W: Write, E: Write>(
    snapshot: Option<&Snapshot>,
    args: &ListArgs,
    hint: &str,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let Some(snapshot) = snapshot else {
        return Ok(());
    };
    let size = term::stdout_size().unwrap_or(Size {
        columns: 80,
        rows: 24,
    });
    out.redraw(&screen_frame(snapshot, args, out.tz, size, hint))
}

/// One full-screen frame of `snapshot` for a terminal of `size`: the tables fit its width
/// (unless `--wide`) and, with the `hint` line last, its height; what does not fit is counted
/// on one line. Ends without a newline, so that a full screen does not scroll.
fn screen_frame(
    snapshot: &Snapshot,
    args: &ListArgs,
    tz: TimeZone,
    size: Size,
    hint: &str,
) -> String {
    let width = (!args.wide).then_some(size.columns);
    let mut text = table::render(snapshot, &table_options(args, tz, width));
    if let Some(width) = width {
        // Lines outside the tables (a long error message) are cut too: nothing may wrap.
        text = layout::cut_lines(&text, width);
    }
    let lines: Vec<&str> = text.lines().collect();
    // One line for the hint.
    let room = size.rows.saturating_sub(1).max(1);
    let mut frame = String::with_capacity(text.len() + 64);
    if lines.len() <= room {
        for line in &lines {
            frame.push_str(line);
            frame.push('\n');
        }
    } else {
        let shown = room - 1;
        for line in &lines[..shown] {
            frame.push_str(line);
            frame.push('\n');
        }
        let more = format!(
            "… {} more lines (a taller terminal shows them)",
            lines.len() - shown
        );
        frame.push_str(&width.map_or_else(|| more.clone(), |width| layout::cut(&more, width)));
        frame.push('\n');
    }
    frame.push_str(hint);
    frame
}

/// What ends or changes a watch besides the stream.
enum Signal {
    /// Stop watching (exit 0).
    End,
    /// Ctrl-Z: give the terminal back and stop.
    Suspend,
    /// The terminal was resized: draw again.
    Resize,
}

/// The signals a watch listens to: Ctrl-C always; on a terminal also SIGTERM, SIGHUP and
/// SIGQUIT (so the terminal is restored before gpukillctl exits), Ctrl-Z and resizes.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    screen: Option<[tokio::signal::unix::Signal; 5]>,
}

impl Signals {
    fn new(full_screen: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let screen = if full_screen {
            Some([
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::from_raw(libc::SIGTSTP))?,
                signal(SignalKind::window_change())?,
            ])
        } else {
            None
        };
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            screen,
        })
    }

    async fn next(&mut self) -> std::io::Result<Signal> {
        let Some([terminate, hangup, quit, stop, resize]) = &mut self.screen else {
            self.interrupt.recv().await;
            return Ok(Signal::End);
        };
        Ok(tokio::select! {
            _ = self.interrupt.recv() => Signal::End,
            _ = terminate.recv() => Signal::End,
            _ = hangup.recv() => Signal::End,
            _ = quit.recv() => Signal::End,
            _ = stop.recv() => Signal::Suspend,
            _ = resize.recv() => Signal::Resize,
        })
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

/// Writes one watch frame that is not full-screen: an NDJSON line, or the tables followed by
/// a blank line.
fn write_frame<W: Write, E: Write>(
    snapshot: &Snapshot,
    args: &ListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match args.output {
        OutputFormat::Json => out.write(&json::line(snapshot)?),
        OutputFormat::Table => {
            let tables = table::render(snapshot, &table_options(args, out.tz, out.width));
            out.write(&format!("{tables}\n"))
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
            width: None,
            keys: false,
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
            width: None,
        };
        assert_eq!(text, table::render(&testutil::snapshot(), &options));
        let filters = filters.lock().expect("lock").clone();
        assert_eq!(
            filters,
            [SnapshotFilter {
                vendor: Vendor::Nvidia as i32,
                process_regex: Some("^py".to_owned()),
                containers_only: true,
                user: None,
            }]
        );
    }

    #[tokio::test]
    async fn the_gpu_table_asks_for_summaries_and_shows_what_the_full_list_shows() {
        let plain = TableOptions {
            details: false,
            containers: false,
            tz: TimeZone::Utc,
            width: None,
        };
        for snapshot in [testutil::snapshot(), testutil::stale_snapshot()] {
            let expected = table::render(&snapshot, &plain);
            // From gpukilld's summaries, and from a daemon that predates them (the full list).
            for summarizes in [true, false] {
                let daemon = FakeDaemon {
                    list: Some(Ok(snapshot.clone())),
                    list_summarizes: summarizes,
                    ..Default::default()
                };
                let views = daemon.list_views.clone();
                let served = serve(daemon);
                for args in [&["list"][..], &["list", "--user", "alice"]] {
                    let (result, text, _) = run_cli(&served.socket, args).await;
                    result.expect("list succeeds");
                    assert_eq!(text, expected, "{args:?}, summaries: {summarizes}");
                }
                let views = views.lock().expect("lock").clone();
                assert_eq!(views, [ProcessView::Summary, ProcessView::Summary]);
            }
        }
        let summarized = testutil::summarized(&testutil::snapshot());
        assert!(summarized.processes.is_empty());
        assert_eq!(
            table::render(&summarized, &plain),
            table::render(&testutil::snapshot(), &plain)
        );
    }

    #[tokio::test]
    async fn process_tables_and_json_ask_for_the_full_list() {
        let daemon = FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            list_summarizes: true,
            ..Default::default()
        };
        let views = daemon.list_views.clone();
        let served = serve(daemon);
        for args in [
            &["list", "--details"][..],
            &["list", "--containers"],
            &["list", "--output", "json"],
            &["list", "--wide", "--details", "--filter", "py"],
        ] {
            let (result, text, _) = run_cli(&served.socket, args).await;
            result.expect("list succeeds");
            assert!(text.contains("4242"), "{args:?}: {text}");
        }
        let views = views.lock().expect("lock").clone();
        assert_eq!(views, [ProcessView::List; 4]);
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
            width: None,
        };
        let expected = format!(
            "{}\n{}\n",
            table::render(&testutil::snapshot(), &options),
            table::render(&testutil::stale_snapshot(), &options)
        );
        assert_eq!(text, expected);
    }

    fn watch_args(details: bool) -> ListArgs {
        ListArgs {
            details,
            watch: true,
            wide: false,
            output: OutputFormat::Table,
            vendor: crate::cli::VendorArg::All,
            filter: None,
            user: None,
            containers: false,
        }
    }

    #[test]
    fn terminal_frames_clear_the_screen_first() {
        let mut out = Output {
            is_tty: true,
            ..output()
        };
        let size = Size {
            columns: 100,
            rows: 30,
        };
        let frame = screen_frame(
            &testutil::snapshot(),
            &watch_args(false),
            TimeZone::Utc,
            size,
            QUIT_KEYS,
        );
        out.redraw(&frame).expect("frame");
        let text = String::from_utf8(out.writer).expect("UTF-8");
        assert!(text.starts_with("\x1b[H\x1b[2Jgpu-node-1  "), "{text:?}");
        assert!(text.ends_with("\nq or Ctrl-C to quit"), "{text:?}");
        // The clear-screen sequence is the only escape in the frame.
        assert_eq!(text.matches('\x1b').count(), 2, "{text:?}");
    }

    #[test]
    fn screen_frames_fit_the_terminal_and_keep_the_header() {
        let mut snapshot = testutil::stale_snapshot();
        // Forty processes: far more than 30 lines.
        let template = snapshot.processes[0].clone();
        snapshot.processes = (0..40)
            .map(|pid| gpukill_proto::v1::GpuProcess {
                pid: 10_000 + pid,
                cmdline: format!("python train.py --run {pid} {}", "--flag ".repeat(20)),
                ..template.clone()
            })
            .collect();
        let size = Size {
            columns: 100,
            rows: 30,
        };
        let frame = screen_frame(&snapshot, &watch_args(true), TimeZone::Utc, size, QUIT_KEYS);
        let lines: Vec<&str> = frame.split('\n').collect();
        assert_eq!(lines.len(), 30, "{frame}");
        assert!(lines[0].starts_with("gpu-node-1  "), "{frame}");
        assert_eq!(lines[1], "STALE: nvidia backend hung");
        assert!(lines[28].starts_with("… "), "{frame}");
        assert!(lines[28].contains("more lines"), "{frame}");
        assert_eq!(lines[29], QUIT_KEYS);
        for line in &lines {
            assert!(layout::text_width(line) <= 100, "{line:?}");
        }
        // A short snapshot leaves the screen's rest empty; --wide shows every column whole.
        let wide = ListArgs {
            wide: true,
            ..watch_args(true)
        };
        let frame = screen_frame(
            &testutil::snapshot(),
            &wide,
            TimeZone::Utc,
            size,
            QUIT_SIGNAL,
        );
        assert!(frame.contains("ECC"), "{frame}");
        assert!(frame.contains("python train.py --epochs 10"), "{frame}");
        assert!(frame.ends_with("\nCtrl-C to quit"), "{frame}");
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
