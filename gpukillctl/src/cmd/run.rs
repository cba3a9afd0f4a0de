//! `gpukillctl run`: the Run RPC, one stream each way for as long as the command runs.
//!
//! 1. The stream opens with RunStart. While the request waits in gpukilld's queue, each
//!    change of place is one line on standard error, `waiting for 2 GPUs: 1 request ahead`.
//!    A refusal (RESOURCE_EXHAUSTED with `--nonblock` or when `--wait` ran out, exit 7;
//!    INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION, ...) maps like every rpc
//!    error.
//! 2. Granted: `gpukillctl: running on GPU 2, 5 (reservation 17)` on standard error, then the
//!    command starts with Granted's GPU selection variables added to gpukillctl's environment
//!    ([`child`]); any other variable is dropped with a warning, and a value that is not a
//!    device list releases the reservation and starts nothing, exit 1 ([`environment`]). A
//!    command that cannot start is reported as a shell does (`gpukillctl: cannot run CMD:
//!    ...`, exit 127 or 126), after the reservation is released.
//! 3. While it runs, gpukillctl sends a heartbeat every heartbeat interval and passes signals
//!    on. When gpukilld sends Ended (the `--timeout` expired, an admin released it), the line
//!    `gpukillctl: reservation ended: REASON; stopping the command` goes to standard error,
//!    the command gets SIGTERM, and SIGKILL [`KILL_AFTER`] later. When the stream breaks
//!    (gpukilld restarted), gpukillctl opens a new one with RunResume every [`RESUME_EVERY`]
//!    for up to the heartbeat timeout; if gpukilld does not take the reservation back, one
//!    line says so (`gpukillctl: lost the reservation: ...; the command keeps running without
//!    it`) and the command runs on.
//! 4. The command exits: gpukillctl closes its side of the stream, which releases the GPUs,
//!    waits up to [`RELEASE_WAIT`] for gpukilld to close its side, and exits with the
//!    command's status (128+N for signal N), or [`TIMEOUT_EXIT`] when the reservation's
//!    timeout stopped it.

pub mod child;
pub mod environment;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use gpukill_proto::v1::{
    RunGranted, RunHeartbeat, RunRequest, RunResponse, RunResume, RunStart, run_request,
    run_response,
};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;

use crate::Output;
use crate::cli::{RunArgs, millis};
use crate::conn;
use crate::error::Error;
use crate::render::time::span;

/// How often gpukillctl tries to take its reservation back after the stream broke.
pub const RESUME_EVERY: Duration = Duration::from_secs(1);

/// How long the command has to exit after SIGTERM, once its reservation ended, before it
/// gets SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// How long gpukillctl waits, after closing its side of the stream, for gpukilld to close
/// its side (having released the GPUs).
pub const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The exit status when the reservation's timeout stopped the command, as timeout(1)'s.
pub const TIMEOUT_EXIT: i32 = 124;

/// The heartbeat interval when gpukilld gives none.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long gpukilld keeps a reservation without heartbeats when it does not say.
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// Heartbeats (and the first message) waiting to be sent; when it is full, a heartbeat is
/// already on its way and the next is not needed.
const OUTBOX: usize = 4;

/// Runs `gpukillctl run` against the daemon `target` names: succeeds when the command exits
/// with 0, and fails with [`Error::CommandExit`] carrying its status otherwise.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &RunArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let client = conn::connect(target).await?;
    let mut session = Session::open(client, start_message(args))
        .await
        .map_err(|status| Error::rpc("Run", status))?;
    let granted = session.granted(args.gpus, out).await?;
    let environment = match environment::check(&granted.environment) {
        Ok(environment) => environment,
        Err(err) => {
            session.close().await;
            return Err(err);
        }
    };
    // Before the command starts, so that no signal meant for it ends gpukillctl instead.
    let signals = child::Signals::listen().map_err(Error::RunSignals)?;
    for name in &environment.ignored {
        out.note(&environment::ignored_line(name))?;
    }
    out.note(&running_line(&granted))?;
    let command = match child::spawn(&args.command, &environment.variables) {
        Ok(command) => command,
        Err(err) => {
            session.close().await;
            let program = args.command.first().map_or("", String::as_str);
            out.note(&format!(
                "gpukillctl: cannot run {program}: {}",
                conn::io_reason(&err)
            ))?;
            return Err(Error::CommandExit {
                code: child::spawn_exit_code(&err),
            });
        }
    };
    let supervisor = Supervisor {
        target,
        heartbeat: heartbeat_timer(&granted),
        granted,
        link: Link::Up(Box::new(session)),
        command,
        signals,
        ended: None,
        kill_at: None,
    };
    match supervisor.run(out).await? {
        0 => Ok(()),
        code => Err(Error::CommandExit { code }),
    }
}

/// The first message: RunStart as the arguments ask.
fn start_message(args: &RunArgs) -> RunRequest {
    RunRequest {
        message: Some(run_request::Message::Start(RunStart {
            count: args.gpus,
            timeout_ms: millis(args.timeout),
            wait: !args.nonblock,
            wait_ms: millis(args.wait),
            command: args.command.join(" "),
        })),
    }
}

/// A heartbeat message.
fn heartbeat_message() -> RunRequest {
    RunRequest {
        message: Some(run_request::Message::Heartbeat(RunHeartbeat {})),
    }
}

/// `waiting for 2 GPUs: 1 request ahead`.
fn waiting_line(count: u32, ahead: u32) -> String {
    format!(
        "waiting for {count} {}: {ahead} {} ahead",
        if count == 1 { "GPU" } else { "GPUs" },
        if ahead == 1 { "request" } else { "requests" }
    )
}

/// `gpukillctl: running on GPU 2, 5 (reservation 17)`.
fn running_line(granted: &RunGranted) -> String {
    let indices: Vec<String> = granted
        .gpus
        .iter()
        .map(|gpu| gpu.index.to_string())
        .collect();
    format!(
        "gpukillctl: running on GPU {} (reservation {})",
        indices.join(", "),
        granted.reservation_id
    )
}

/// Whether gpukilld's reason for ending the reservation says its timeout expired.
fn timed_out(reason: &str) -> bool {
    let reason = reason.to_lowercase();
    ["expired", "timeout", "timed out"]
        .iter()
        .any(|word| reason.contains(word))
}

/// A duration in milliseconds from gpukilld, or `default` when it sent 0.
fn from_millis(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// A timer that ticks every heartbeat interval of `granted`, first one interval from now.
fn heartbeat_timer(granted: &RunGranted) -> Interval {
    let period = from_millis(granted.heartbeat_interval_ms, DEFAULT_HEARTBEAT_INTERVAL);
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Writes `line` to standard error, ignoring failure: a closed standard error must not stop
/// gpukillctl from holding the reservation while the command runs.
fn say<W: Write, E: Write>(out: &mut Output<W, E>, line: &str) {
    let _ = out.note(line);
}

/// The words of a status for messages: its message, or its code's description.
fn status_reason(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        status.message().to_owned()
    }
}

/// One Run stream: the client that carries it, the sending side of its requests and the
/// daemon's updates.
struct Session {
    /// Kept with the stream, so that its connection lives as long.
    _client: conn::Client,
    sender: mpsc::Sender<RunRequest>,
    updates: tonic::Streaming<RunResponse>,
}

impl Session {
    /// Opens a Run stream on `client` whose first message is `first`.
    async fn open(mut client: conn::Client, first: RunRequest) -> Result<Self, tonic::Status> {
        let (sender, receiver) = mpsc::channel(OUTBOX);
        // Cannot fail: the channel is empty and its receiver is right here.
        let _ = sender.try_send(first);
        let updates = client
            .run(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(Session {
            _client: client,
            sender,
            updates,
        })
    }

    /// Waits for the GPUs, saying on standard error how many requests are ahead whenever
    /// that changes.
    async fn granted<W: Write, E: Write>(
        &mut self,
        count: u32,
        out: &mut Output<W, E>,
    ) -> Result<RunGranted, Error> {
        let mut ahead = None;
        loop {
            let update = self
                .updates
                .message()
                .await
                .map_err(|status| Error::rpc("Run", status))?
                .ok_or_else(|| Error::RunNotGranted {
                    reason: "it closed the stream".to_owned(),
                })?;
            match update.update {
                Some(run_response::Update::Granted(granted)) => return Ok(granted),
                Some(run_response::Update::Ended(ended)) => {
                    return Err(Error::RunNotGranted {
                        reason: ended.reason,
                    });
                }
                Some(run_response::Update::Queued(queued)) if ahead != Some(queued.ahead) => {
                    ahead = Some(queued.ahead);
                    out.note(&waiting_line(count, queued.ahead))?;
                }
                Some(run_response::Update::Queued(_)) | None => {}
            }
        }
    }

    /// Queues a heartbeat; false when the stream is gone.
    fn heartbeat(&self) -> bool {
        match self.sender.try_send(heartbeat_message()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the stream from this side, which releases the reservation, and waits up to
    /// [`RELEASE_WAIT`] for gpukilld to end its side.
    async fn close(self) {
        let Session {
            _client,
            sender,
            mut updates,
        } = self;
        drop(sender);
        let drained = async { while let Ok(Some(_)) = updates.message().await {} };
        let _ = tokio::time::timeout(RELEASE_WAIT, drained).await;
    }
}

/// A reservation being taken back after the stream broke: the new stream and its Granted,
/// or why not.
type Resuming<'a> = Pin<Box<dyn Future<Output = Result<(Session, RunGranted), String>> + 'a>>;

/// The state of gpukillctl's hold on the reservation while the command runs.
enum Link<'a> {
    /// The stream is up.
    Up(Box<Session>),
    /// The stream broke; taking the reservation back.
    Resuming(Resuming<'a>),
    /// No reservation any more: it ended, or was lost.
    Down,
}

/// What happened to the [`Link`].
enum LinkEvent {
    /// gpukilld sent an update.
    Update(RunResponse),
    /// The stream broke, or gpukilld closed it without a word.
    Broken,
    /// The reservation was taken back on a new stream.
    Resumed(Box<Session>, RunGranted),
    /// The reservation could not be taken back, for this reason.
    Lost(String),
}

impl Link<'_> {
    /// The next thing that happens to the link; never, when it is down.
    async fn next(&mut self) -> LinkEvent {
        match self {
            Link::Up(session) => match session.updates.message().await {
                Ok(Some(update)) => LinkEvent::Update(update),
                Ok(None) | Err(_) => LinkEvent::Broken,
            },
            Link::Resuming(resuming) => match resuming.await {
                Ok((session, granted)) => LinkEvent::Resumed(Box::new(session), granted),
                Err(why) => LinkEvent::Lost(why),
            },
            Link::Down => std::future::pending().await,
        }
    }
}

/// Everything `run` watches while the command runs.
struct Supervisor<'a> {
    target: &'a conn::Target,
    /// The latest Granted (after a resume, the new one).
    granted: RunGranted,
    heartbeat: Interval,
    link: Link<'a>,
    command: Child,
    signals: child::Signals,
    /// Why gpukilld ended the reservation, once it did.
    ended: Option<String>,
    /// When the command gets SIGKILL, once it was asked to stop.
    kill_at: Option<Instant>,
}

impl Supervisor<'_> {
    /// Holds the reservation until the command exits, then releases it; the exit status
    /// gpukillctl passes on.
    async fn run<W: Write, E: Write>(mut self, out: &mut Output<W, E>) -> Result<i32, Error> {
        let status = loop {
            tokio::select! {
                status = self.command.wait() => break status.map_err(Error::RunWait)?,
                number = self.signals.recv() => {
                    if child::should_forward(number) {
                        child::send(&self.command, number);
                    }
                }
                _ = self.heartbeat.tick() => self.send_heartbeat(),
                event = self.link.next() => self.handle(event, out),
                () = tokio::time::sleep_until(self.kill_at.unwrap_or_else(Instant::now)),
                    if self.kill_at.is_some() =>
                {
                    self.kill_at = None;
                    child::send(&self.command, libc::SIGKILL);
                }
            }
        };
        if let Link::Up(session) = std::mem::replace(&mut self.link, Link::Down) {
            session.close().await;
        }
        Ok(match &self.ended {
            Some(reason) if timed_out(reason) => TIMEOUT_EXIT,
            _ => child::exit_code(status),
        })
    }

    /// A heartbeat on the stream, when it is up; a stream found gone is resumed.
    fn send_heartbeat(&mut self) {
        if let Link::Up(session) = &self.link
            && !session.heartbeat()
        {
            self.resume();
        }
    }

    /// Acts on what happened to the link.
    fn handle<W: Write, E: Write>(&mut self, event: LinkEvent, out: &mut Output<W, E>) {
        match event {
            LinkEvent::Update(RunResponse {
                update: Some(run_response::Update::Ended(ended)),
            }) => self.stop(ended.reason, out),
            LinkEvent::Update(RunResponse {
                update: Some(run_response::Update::Granted(granted)),
            }) => self.regranted(granted),
            LinkEvent::Update(_) => {}
            LinkEvent::Broken => self.resume(),
            LinkEvent::Resumed(session, granted) => {
                self.link = Link::Up(session);
                self.regranted(granted);
            }
            LinkEvent::Lost(why) => {
                self.link = Link::Down;
                say(
                    out,
                    &format!(
                        "gpukillctl: lost the reservation: {why}; the command keeps running \
                         without it"
                    ),
                );
            }
        }
    }

    /// gpukilld ended the reservation: the command is asked to stop, and killed
    /// [`KILL_AFTER`] later.
    fn stop<W: Write, E: Write>(&mut self, reason: String, out: &mut Output<W, E>) {
        say(
            out,
            &format!("gpukillctl: reservation ended: {reason}; stopping the command"),
        );
        self.link = Link::Down;
        child::send(&self.command, libc::SIGTERM);
        self.kill_at = Some(Instant::now() + KILL_AFTER);
        self.ended = Some(reason);
    }

    /// A Granted while the command runs (after a resume): its heartbeat interval from now on.
    fn regranted(&mut self, granted: RunGranted) {
        if granted.heartbeat_interval_ms != self.granted.heartbeat_interval_ms {
            self.heartbeat = heartbeat_timer(&granted);
        }
        self.granted = granted;
    }

    /// Starts taking the reservation back on a new stream, for up to the heartbeat timeout.
    fn resume(&mut self) {
        let window = from_millis(self.granted.heartbeat_timeout_ms, DEFAULT_HEARTBEAT_TIMEOUT);
        self.link = Link::Resuming(Box::pin(resume(
            self.target,
            self.granted.reservation_id,
            window,
        )));
    }
}

/// Why one attempt to take the reservation back failed.
enum Failure {
    /// gpukilld answered no: give up.
    Refused(String),
    /// gpukilld did not answer (yet): try again.
    Unanswered(String),
}

/// Takes reservation `reservation_id` back on a new stream, trying every [`RESUME_EVERY`]
/// for up to `window`.
async fn resume(
    target: &conn::Target,
    reservation_id: i64,
    window: Duration,
) -> Result<(Session, RunGranted), String> {
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let why =
            match tokio::time::timeout(left.max(RESUME_EVERY), attempt(target, reservation_id))
                .await
            {
                Ok(Ok(resumed)) => return Ok(resumed),
                Ok(Err(Failure::Refused(why))) => {
                    return Err(format!(
                        "gpukilld refused to resume reservation {reservation_id}: {why}"
                    ));
                }
                Ok(Err(Failure::Unanswered(why))) => why,
                Err(_) => "gpukilld did not answer".to_owned(),
            };
        if Instant::now() + RESUME_EVERY >= deadline {
            return Err(format!(
                "gpukilld did not take reservation {reservation_id} back within {} ({why})",
                span(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
            ));
        }
        tokio::time::sleep(RESUME_EVERY).await;
    }
}

/// One attempt to take reservation `reservation_id` back: connect, send RunResume, and wait
/// for Granted.
async fn attempt(
    target: &conn::Target,
    reservation_id: i64,
) -> Result<(Session, RunGranted), Failure> {
    let client = conn::connect(target)
        .await
        .map_err(|err| Failure::Unanswered(err.to_string()))?;
    let first = RunRequest {
        message: Some(run_request::Message::Resume(RunResume { reservation_id })),
    };
    let mut session = Session::open(client, first).await.map_err(failure)?;
    loop {
        let Some(update) = session.updates.message().await.map_err(failure)? else {
            return Err(Failure::Unanswered("gpukilld closed the stream".to_owned()));
        };
        match update.update {
            Some(run_response::Update::Granted(granted)) => return Ok((session, granted)),
            Some(run_response::Update::Ended(ended)) => return Err(Failure::Refused(ended.reason)),
            Some(run_response::Update::Queued(_)) | None => {}
        }
    }
}

/// A failed status as a [`Failure`]: the transport's codes (gpukilld is not back yet) are
/// worth another try, gpukilld's own answers are not.
fn failure(status: tonic::Status) -> Failure {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => Failure::Unanswered(status_reason(&status)),
        _ => Failure::Refused(status_reason(&status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeDaemon, RunReceived, RunScript, reserved_gpu, run_cli, serve};
    use gpukill_proto::v1::{RunEnded, RunQueued};
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use tonic::Status;

    /// Reservation 17 of GPUs 2 and 5, heartbeats every 50 ms, 3 s to come back.
    fn granted() -> RunResponse {
        RunResponse {
            update: Some(run_response::Update::Granted(RunGranted {
                reservation_id: 17,
                gpus: vec![reserved_gpu(2), reserved_gpu(5)],
                environment: HashMap::from([
                    ("CUDA_VISIBLE_DEVICES".to_owned(), "GPU-2,GPU-5".to_owned()),
                    ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
                ]),
                heartbeat_interval_ms: 50,
                heartbeat_timeout_ms: 3000,
                expires_unix_ms: None,
            })),
        }
    }

    fn queued(ahead: u32) -> RunResponse {
        RunResponse {
            update: Some(run_response::Update::Queued(RunQueued { ahead })),
        }
    }

    fn ended(reason: &str) -> RunResponse {
        RunResponse {
            update: Some(run_response::Update::Ended(RunEnded {
                reason: reason.to_owned(),
            })),
        }
    }

    /// A fake daemon whose Run calls follow `scripts`, one per call.
    fn daemon(scripts: Vec<Vec<Result<RunResponse, Status>>>) -> FakeDaemon {
        FakeDaemon {
            run: scripts
                .into_iter()
                .map(|updates| RunScript { updates })
                .collect(),
            ..Default::default()
        }
    }

    type Received = Arc<Mutex<Vec<Vec<RunReceived>>>>;

    /// A copy of what the fake received on each Run call.
    fn calls(received: &Received) -> Vec<Vec<RunReceived>> {
        received.lock().expect("lock").clone()
    }

    /// Polls `condition` every 10 ms until it holds; fails after 10 s.
    async fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn heartbeats(messages: &[RunReceived]) -> usize {
        messages
            .iter()
            .filter(|event| **event == RunReceived::Message(heartbeat_message()))
            .count()
    }

    /// A shell script that waits until `marker` exists, then runs `then`.
    fn after(marker: &Path, then: &str) -> String {
        format!(
            "while [ ! -e '{}' ]; do sleep 0.02; done; {then}",
            marker.display()
        )
    }

    /// Creates `marker` once `condition` holds on what the fake received.
    fn release_when(
        marker: &Path,
        received: &Received,
        what: &'static str,
        condition: impl Fn(&[Vec<RunReceived>]) -> bool + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let (marker, received) = (marker.to_owned(), received.clone());
        tokio::spawn(async move {
            wait_until(what, || condition(&calls(&received))).await;
            std::fs::write(&marker, "").expect("marker");
        })
    }

    #[tokio::test]
    async fn the_command_sees_the_environment_and_its_status_is_passed_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (seen, marker) = (dir.path().join("seen"), dir.path().join("go"));
        let script = format!(
            "echo \"$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER\" > '{}'; {}",
            seen.display(),
            after(&marker, "exit 3")
        );
        let fake = daemon(vec![vec![
            Ok(queued(2)),
            Ok(queued(2)),
            Ok(queued(1)),
            Ok(granted()),
        ]]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let go = release_when(&marker, &received, "two heartbeats", |calls| {
            calls.first().is_some_and(|call| heartbeats(call) >= 2)
        });
        let (result, text, notes) = run_cli(
            &served.socket,
            &["run", "--gpus", "2", "--", "/bin/sh", "-c", &script],
        )
        .await;
        go.await.expect("marker task");
        let err = result.expect_err("the command exited 3");
        assert_eq!(err.exit_code(), 3);
        assert!(err.is_quiet());
        assert_eq!(text, "");
        assert_eq!(
            notes,
            "waiting for 2 GPUs: 2 requests ahead\n\
             waiting for 2 GPUs: 1 request ahead\n\
             gpukillctl: running on GPU 2, 5 (reservation 17)\n"
        );
        assert_eq!(
            std::fs::read_to_string(&seen).expect("the command ran"),
            "GPU-2,GPU-5 PCI_BUS_ID\n"
        );
        wait_until("the end of the stream", || {
            calls(&received)[0].last() == Some(&RunReceived::End)
        })
        .await;
        let call = &calls(&received)[0];
        assert_eq!(
            call[0],
            RunReceived::Message(RunRequest {
                message: Some(run_request::Message::Start(RunStart {
                    count: 2,
                    timeout_ms: 0,
                    wait: true,
                    wait_ms: 0,
                    command: format!("/bin/sh -c {script}"),
                })),
            })
        );
        // Between the start and the end, only heartbeats.
        assert!(heartbeats(call) >= 2, "{call:?}");
        assert_eq!(heartbeats(call), call.len() - 2, "{call:?}");
    }

    /// A grant of GPUs 2 and 5 whose environment is `environment`.
    fn granted_with(environment: &[(&str, &str)]) -> RunResponse {
        let mut update = granted();
        if let Some(run_response::Update::Granted(granted)) = update.update.as_mut() {
            granted.environment = environment
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect();
        }
        update
    }

    /// `KEY=VALUE` pairs of `env -0` output.
    fn parse_env(raw: &[u8]) -> std::collections::BTreeMap<String, String> {
        raw.split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[tokio::test]
    async fn the_command_gets_only_the_gpu_variables_of_a_grant() {
        let dir = tempfile::tempdir().expect("temp dir");
        let seen = dir.path().join("env");
        // What a fake server on a writable socket path would send.
        let fake = daemon(vec![vec![Ok(granted_with(&[
            ("CUDA_VISIBLE_DEVICES", "GPU-2,GPU-5"),
            ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
            ("LD_PRELOAD", "/nonexistent/gpukill-evil.so"),
            ("PATH", "/nonexistent/gpukill-evil"),
            ("PYTHONPATH", "/nonexistent/gpukill-evil"),
        ]))]]);
        let served = serve(fake);
        let script = format!("/usr/bin/env -0 > '{}'", seen.display());
        let (result, text, notes) =
            run_cli(&served.socket, &["run", "--", "/bin/sh", "-c", &script]).await;
        result.expect("the command exited 0");
        assert_eq!(text, "");
        let warning = |name: &str| environment::ignored_line(name) + "\n";
        assert_eq!(
            notes,
            format!(
                "{}{}{}gpukillctl: running on GPU 2, 5 (reservation 17)\n",
                warning("LD_PRELOAD"),
                warning("PATH"),
                warning("PYTHONPATH")
            )
        );
        // gpukillctl's own environment plus the two GPU variables, and nothing else (apart
        // from what the shell itself sets).
        let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
        let mut child = parse_env(&std::fs::read(&seen).expect("the command ran"));
        child.retain(|name, _| !shell_own.contains(&name.as_str()));
        let mut expected: std::collections::BTreeMap<String, String> = std::env::vars()
            .filter(|(name, _)| !shell_own.contains(&name.as_str()))
            .collect();
        expected.insert("CUDA_VISIBLE_DEVICES".to_owned(), "GPU-2,GPU-5".to_owned());
        expected.insert("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned());
        assert_eq!(child, expected);
        assert!(
            !child.values().any(|value| value.contains("gpukill-evil")),
            "{child:?}"
        );
    }

    #[tokio::test]
    async fn a_grant_with_a_bad_device_list_starts_nothing_and_releases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ran = dir.path().join("ran");
        let fake = daemon(vec![vec![Ok(granted_with(&[
            ("CUDA_VISIBLE_DEVICES", "0;touch /tmp/gpukill-evil"),
            ("LD_PRELOAD", "/nonexistent/gpukill-evil.so"),
        ]))]]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let touch = format!("touch '{}'", ran.display());
        let (result, text, notes) =
            run_cli(&served.socket, &["run", "/bin/sh", "-c", &touch]).await;
        let err = result.expect_err("refused");
        assert_eq!(err.exit_code(), 1);
        assert!(
            matches!(&err, Error::BadGrant { variable, .. } if variable == "CUDA_VISIBLE_DEVICES"),
            "{err}"
        );
        assert_eq!((text.as_str(), notes.as_str()), ("", ""));
        assert!(!ran.exists());
        // The reservation was given back: gpukillctl closed its side of the stream.
        wait_until("the end of the stream", || {
            calls(&received)[0].last() == Some(&RunReceived::End)
        })
        .await;
        assert_eq!(calls(&received)[0].len(), 2, "{:?}", calls(&received));
    }

    #[tokio::test]
    async fn busy_gpus_exit_7_and_nothing_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ran = dir.path().join("ran");
        let fake = daemon(vec![vec![Err(Status::resource_exhausted(
            "GPU 0 is reserved by bob",
        ))]]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let touch = format!("touch '{}'", ran.display());
        let (result, _, notes) = run_cli(
            &served.socket,
            &[
                "run",
                "--nonblock",
                "--timeout",
                "2h",
                "/bin/sh",
                "-c",
                &touch,
            ],
        )
        .await;
        let err = result.expect_err("busy");
        assert_eq!(err.exit_code(), 7);
        assert_eq!(
            err.to_string(),
            "Run failed (ResourceExhausted): GPU 0 is reserved by bob"
        );
        assert_eq!(notes, "");
        assert!(!ran.exists());
        let RunReceived::Message(RunRequest {
            message: Some(run_request::Message::Start(start)),
        }) = calls(&received)[0][0].clone()
        else {
            panic!("expected RunStart");
        };
        assert!(!start.wait);
        assert_eq!(start.timeout_ms, 2 * 3_600_000);
        assert_eq!(start.wait_ms, 0);
    }

    #[tokio::test]
    async fn wait_sends_its_limit() {
        let fake = daemon(vec![vec![Err(Status::resource_exhausted(
            "waited 10m for 1 GPU",
        ))]]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let (result, _, _) = run_cli(&served.socket, &["run", "--wait", "10m", "/bin/true"]).await;
        assert_eq!(result.expect_err("busy").exit_code(), 7);
        let RunReceived::Message(RunRequest {
            message: Some(run_request::Message::Start(start)),
        }) = calls(&received)[0][0].clone()
        else {
            panic!("expected RunStart");
        };
        assert!(start.wait);
        assert_eq!(start.wait_ms, 600_000);
        assert_eq!(start.count, 1);
        assert_eq!(start.command, "/bin/true");
    }

    #[tokio::test]
    async fn a_command_killed_by_a_signal_exits_128_plus_its_number() {
        let served = serve(daemon(vec![vec![Ok(granted())]]));
        let (result, _, _) = run_cli(&served.socket, &["run", "/bin/sh", "-c", "kill -9 $$"]).await;
        assert_eq!(result.expect_err("killed").exit_code(), 137);
    }

    #[tokio::test]
    async fn a_command_that_exits_0_succeeds() {
        let served = serve(daemon(vec![vec![Ok(granted())]]));
        let (result, _, _) = run_cli(&served.socket, &["run", "/bin/true"]).await;
        result.expect("exit 0");
    }

    #[tokio::test]
    async fn an_expired_timeout_stops_the_command_and_exits_124() {
        let fake = daemon(vec![vec![Ok(granted()), Ok(ended("expired"))]]);
        let served = serve(fake);
        let (result, _, notes) =
            run_cli(&served.socket, &["run", "/bin/sh", "-c", "exec sleep 30"]).await;
        assert_eq!(result.expect_err("stopped").exit_code(), TIMEOUT_EXIT);
        assert!(
            notes.ends_with("gpukillctl: reservation ended: expired; stopping the command\n"),
            "{notes}"
        );
    }

    #[tokio::test]
    async fn a_release_by_an_admin_stops_the_command_with_its_own_status() {
        let fake = daemon(vec![vec![Ok(granted()), Ok(ended("released by root"))]]);
        let served = serve(fake);
        let (result, _, _) =
            run_cli(&served.socket, &["run", "/bin/sh", "-c", "exec sleep 30"]).await;
        // SIGTERM killed it: 128 + 15.
        assert_eq!(result.expect_err("stopped").exit_code(), 143);
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_releases_and_exits_127() {
        let fake = daemon(vec![vec![Ok(granted())]]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let (result, _, notes) =
            run_cli(&served.socket, &["run", "/nonexistent/gpukill-test", "-x"]).await;
        assert_eq!(result.expect_err("not found").exit_code(), 127);
        assert_eq!(
            notes,
            "gpukillctl: running on GPU 2, 5 (reservation 17)\n\
             gpukillctl: cannot run /nonexistent/gpukill-test: No such file or directory\n"
        );
        wait_until("the end of the stream", || {
            calls(&received)[0].last() == Some(&RunReceived::End)
        })
        .await;
    }

    #[tokio::test]
    async fn a_broken_stream_is_resumed_and_heartbeats_go_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("go");
        let fake = daemon(vec![
            vec![Ok(granted()), Err(Status::unavailable("gpukilld restarts"))],
            vec![Ok(granted())],
        ]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let go = release_when(&marker, &received, "heartbeats after the resume", |calls| {
            calls.get(1).is_some_and(|call| heartbeats(call) >= 2)
        });
        let (result, _, notes) = run_cli(
            &served.socket,
            &["run", "/bin/sh", "-c", &after(&marker, "exit 0")],
        )
        .await;
        go.await.expect("marker task");
        result.expect("the command exited 0");
        assert_eq!(notes, "gpukillctl: running on GPU 2, 5 (reservation 17)\n");
        let resumed = &calls(&received)[1];
        assert_eq!(
            resumed[0],
            RunReceived::Message(RunRequest {
                message: Some(run_request::Message::Resume(RunResume {
                    reservation_id: 17
                })),
            })
        );
        wait_until("the end of the resumed stream", || {
            calls(&received)[1].last() == Some(&RunReceived::End)
        })
        .await;
    }

    #[tokio::test]
    async fn a_refused_resume_is_one_warning_and_the_command_runs_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("go");
        let fake = daemon(vec![
            vec![Ok(granted()), Err(Status::unavailable("gpukilld restarts"))],
            vec![Err(Status::not_found("no reservation 17"))],
        ]);
        let received = fake.run_received.clone();
        let served = serve(fake);
        let go = release_when(&marker, &received, "the refused resume", |calls| {
            // The Resume, then the end of the stream gpukillctl dropped once refused.
            calls.get(1).is_some_and(|call| call.len() >= 2)
        });
        let (result, _, notes) = run_cli(
            &served.socket,
            &["run", "/bin/sh", "-c", &after(&marker, "exit 5")],
        )
        .await;
        go.await.expect("marker task");
        assert_eq!(result.expect_err("exit 5").exit_code(), 5);
        assert_eq!(
            notes,
            "gpukillctl: running on GPU 2, 5 (reservation 17)\n\
             gpukillctl: lost the reservation: gpukilld refused to resume reservation 17: no \
             reservation 17; the command keeps running without it\n"
        );
    }

    #[test]
    fn reasons_that_say_the_timeout_expired() {
        assert!(timed_out("expired"));
        assert!(timed_out("the --timeout of 2h expired"));
        assert!(timed_out("Timed out after 2h"));
        assert!(!timed_out("released by root"));
    }

    #[test]
    fn lines_count_gpus_and_requests() {
        assert_eq!(waiting_line(1, 0), "waiting for 1 GPU: 0 requests ahead");
        assert_eq!(waiting_line(4, 1), "waiting for 4 GPUs: 1 request ahead");
    }
}
