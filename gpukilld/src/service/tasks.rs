//! Supervised background tasks: a [`Tasks`] registry spawns each long-running task by name,
//! catches its panic (logged with the panic message), and either starts it again after a
//! backoff or, for a task whose state cannot be rebuilt in place, stops the daemon with an
//! error and a non-zero exit so that systemd (`Restart=on-failure`) starts a fresh one.
//! `Health` lists every task with its state, restarts and last panic.
//!
//! Restarts are bounded: a task that panics [`MAX_PANICS`] times within [`PANIC_WINDOW`]
//! stops the daemon too, rather than panicking forever.
//!
//! Every task runs until the daemon stops ([`Tasks::stop`]). One that returns before is seen:
//! it is [`TaskState::Ended`] in `Health` with an error in the log, and one that owned
//! something that cannot be made again ([`OnPanic::StopDaemon`]) stops the daemon as a panic
//! would. At shutdown [`Tasks::stop`] waits for all of them and names any that did not end.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Panics within [`PANIC_WINDOW`] after which a restartable task stops the daemon.
pub const MAX_PANICS: usize = 5;

/// The window [`MAX_PANICS`] is counted in.
pub const PANIC_WINDOW: Duration = Duration::from_secs(600);

/// The first restart's delay; each panic within the window doubles it.
const BACKOFF_MIN: Duration = Duration::from_secs(1);

/// The longest delay before a restart.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The longest panic message kept (the rest is cut with `…`).
const MAX_MESSAGE: usize = 1024;

/// What to do when a task panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPanic {
    /// Start it again after a backoff: its state lives outside it (in `Arc`s), or losing it
    /// only delays something (a guard violation's duration starts again).
    Restart,
    /// Stop the daemon: it owned something that cannot be made again in place (a bound
    /// listener, the vendor threads).
    StopDaemon,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Running.
    Running,
    /// It panicked and waits for its restart.
    Restarting,
    /// It panicked and is not restarted; the daemon is stopping.
    Failed,
    /// It ended as the daemon stopped.
    Stopped,
    /// It ended while the daemon was running: what it did is no longer done.
    Ended,
}

impl TaskState {
    /// Lower-case name, as logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Restarting => "restarting",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
            TaskState::Ended => "ended",
        }
    }
}

/// One task, as `Health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// Its name (`guard`, `sampler`, ...).
    pub name: &'static str,
    /// Where it is.
    pub state: TaskState,
    /// How many times it was started again after a panic.
    pub restarts: u64,
    /// What its last panic said.
    pub last_panic: Option<String>,
}

/// Why the daemon stops on its own: a task failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {task} task {}{}: {message}; gpukilld stops so that its service manager starts it afresh",
    if *.panicked { "panicked" } else { "ended while gpukilld was running" },
    if *.restarts > 0 { format!(" {} times in {}", .restarts + 1, humantime::format_duration(PANIC_WINDOW)) } else { String::new() }
)]
pub struct TaskFailed {
    /// The task.
    pub task: &'static str,
    /// Whether it panicked (else it returned).
    pub panicked: bool,
    /// Restarts before it failed for good.
    pub restarts: u64,
    /// What its last panic said, or what it owned.
    pub message: String,
}

/// The daemon's supervised tasks. Cheap to clone: every clone is the same registry.
#[derive(Debug, Clone)]
pub struct Tasks {
    entries: Arc<Mutex<Vec<Arc<Mutex<TaskStatus>>>>>,
    failed: watch::Sender<Option<TaskFailed>>,
    /// Set when the daemon starts stopping: a task that returns before ended unexpectedly.
    stopping: Arc<AtomicBool>,
    /// How many tasks run (their supervisors included).
    running: watch::Sender<usize>,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::with_backoff(BACKOFF_MIN, BACKOFF_MAX)
    }
}

impl Tasks {
    /// An empty registry whose restarts wait from `min` doubling up to `max`.
    pub fn with_backoff(min: Duration, max: Duration) -> Self {
        Tasks {
            entries: Arc::default(),
            failed: watch::channel(None).0,
            stopping: Arc::default(),
            running: watch::channel(0).0,
            backoff_min: min,
            backoff_max: max,
        }
    }

    /// Spawns the task `make()` returns under the name `name`, and supervises it: when it
    /// panics, `on_panic` says whether `make` is called again (after a backoff) or the daemon
    /// stops. The returned handle completes when the task ends without a panic, or fails
    /// for good.
    pub fn spawn<F, Fut>(&self, name: &'static str, on_panic: OnPanic, make: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let status = Arc::new(Mutex::new(TaskStatus {
            name,
            state: TaskState::Running,
            restarts: 0,
            last_panic: None,
        }));
        lock(&self.entries).push(Arc::clone(&status));
        self.running.send_modify(|running| *running += 1);
        let tasks = self.clone();
        tokio::spawn(async move {
            tasks.supervise(name, on_panic, &status, make).await;
            tasks.running.send_modify(|running| *running -= 1);
        })
    }

    /// Runs `make()`'s task until it returns, starting it again after a panic as
    /// `on_panic` says.
    async fn supervise<F, Fut>(
        &self,
        name: &'static str,
        on_panic: OnPanic,
        status: &Mutex<TaskStatus>,
        mut make: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut panics: Vec<Instant> = Vec::new();
        loop {
            set(status, |s| s.state = TaskState::Running);
            let message = match tokio::spawn(make()).await {
                Err(error) if error.is_panic() => panic_message(error.into_panic()),
                // It returned, or was cancelled (the runtime is shutting down).
                _ => {
                    self.ended(name, on_panic, status);
                    return;
                }
            };
            let now = Instant::now();
            panics.retain(|at| now.duration_since(*at) < PANIC_WINDOW);
            panics.push(now);
            let restarts = lock(status).restarts;
            set(status, |s| s.last_panic = Some(message.clone()));
            if on_panic == OnPanic::StopDaemon || panics.len() >= MAX_PANICS {
                set(status, |s| s.state = TaskState::Failed);
                self.fail(TaskFailed {
                    task: name,
                    panicked: true,
                    restarts,
                    message,
                });
                return;
            }
            let delay = self
                .backoff_min
                .saturating_mul(1 << (panics.len() - 1).min(16))
                .min(self.backoff_max);
            tracing::error!(
                task = name,
                panic = %message,
                restart_in = %humantime::format_duration(delay),
                "the {name} task panicked; starting it again"
            );
            set(status, |s| {
                s.state = TaskState::Restarting;
                s.restarts += 1;
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// A task returned: as the daemon stops, or unexpectedly (logged, shown in `Health`,
    /// and for an [`OnPanic::StopDaemon`] task the daemon stops, as after its panic).
    fn ended(&self, name: &'static str, on_panic: OnPanic, status: &Mutex<TaskStatus>) {
        if self.stopping.load(Ordering::SeqCst) {
            set(status, |s| s.state = TaskState::Stopped);
            return;
        }
        set(status, |s| s.state = TaskState::Ended);
        match on_panic {
            OnPanic::StopDaemon => self.fail(TaskFailed {
                task: name,
                panicked: false,
                restarts: lock(status).restarts,
                message: "what it owned (a listener, the vendor threads) is gone".to_owned(),
            }),
            OnPanic::Restart => tracing::error!(
                task = name,
                "the {name} task ended while gpukilld is running; what it does is no longer done"
            ),
        }
    }

    /// Records a failure; the first one stops the daemon and is the one reported.
    fn fail(&self, failed: TaskFailed) {
        tracing::error!(task = failed.task, "{failed}");
        self.failed.send_if_modified(|first| {
            if first.is_some() {
                return false;
            }
            *first = Some(failed);
            true
        });
    }

    /// The daemon is stopping: a task that returns from now on ends as it should.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops: waits up to `timeout` for every task to return, and names those still
    /// running.
    pub async fn stop(&self, timeout: Duration) -> Vec<&'static str> {
        self.stopping();
        let mut running = self.running.subscribe();
        let _ = tokio::time::timeout(timeout, running.wait_for(|running| *running == 0)).await;
        self.statuses()
            .into_iter()
            .filter(|task| matches!(task.state, TaskState::Running | TaskState::Restarting))
            .map(|task| task.name)
            .collect()
    }

    /// Every task, in the order they were spawned.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        lock(&self.entries)
            .iter()
            .map(|entry| lock(entry).clone())
            .collect()
    }

    /// The task failure that stops the daemon, if one happened.
    pub fn failure(&self) -> Option<TaskFailed> {
        self.failed.borrow().clone()
    }

    /// Completes when a task has failed for good (never, if none does).
    pub async fn failed(&self) -> TaskFailed {
        let mut failed = self.failed.subscribe();
        loop {
            if let Some(failure) = failed.borrow_and_update().clone() {
                return failure;
            }
            if failed.changed().await.is_err() {
                // The sender lives in `self`, so it cannot be gone; never complete then.
                std::future::pending::<()>().await;
            }
        }
    }

    /// `shutdown`, or a task's failure: whichever comes first stops the daemon.
    pub fn or_failure<F>(&self, shutdown: F) -> impl Future<Output = ()> + Send + use<F>
    where
        F: Future<Output = ()> + Send,
    {
        let tasks = self.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                failure = tasks.failed() => {
                    tracing::error!(task = failure.task, "stopping: {failure}");
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a status half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set(status: &Mutex<TaskStatus>, change: impl FnOnce(&mut TaskStatus)) {
    change(&mut lock(status));
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`), cut to
/// [`MAX_MESSAGE`] bytes.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    };
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> Tasks {
        Tasks::with_backoff(Duration::from_millis(10), Duration::from_millis(40))
    }

    /// Waits until `tasks` reports `name` in `state`; returns its status.
    async fn wait_for(tasks: &Tasks, name: &str, state: TaskState) -> TaskStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = tasks.statuses().into_iter().find(|s| s.name == name);
            if let Some(status) = found.filter(|s| s.state == state) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never {state:?}: {:?}",
                tasks.statuses()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_reported() {
        let tasks = fast();
        let runs = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        let counted = Arc::clone(&runs);
        let handle = tasks.spawn("flaky", OnPanic::Restart, move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let mut stopped = stopped.clone();
            async move {
                if run == 0 {
                    panic!("first run fails: index 7 out of range");
                }
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        });
        let quiet = tasks.spawn("quiet", OnPanic::StopDaemon, std::future::pending);

        let status = wait_for(&tasks, "flaky", TaskState::Running).await;
        // Running again means the second run has started.
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = tasks
            .statuses()
            .into_iter()
            .find(|s| s.name == "flaky")
            .unwrap_or(status);
        assert_eq!(status.restarts, 1, "{status:?}");
        assert_eq!(
            status.last_panic.as_deref(),
            Some("first run fails: index 7 out of range")
        );
        assert_eq!(status.state, TaskState::Running);
        // Nothing else changed: the other task runs untouched, and nothing stops the daemon.
        let quiet_status = tasks
            .statuses()
            .into_iter()
            .find(|s| s.name == "quiet")
            .unwrap();
        assert_eq!(quiet_status.state, TaskState::Running);
        assert_eq!(quiet_status.restarts, 0);
        assert!(tasks.failure().is_none());

        tasks.stopping();
        stop.send(true).unwrap();
        handle.await.unwrap();
        let status = wait_for(&tasks, "flaky", TaskState::Stopped).await;
        assert_eq!(status.restarts, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "not started a third time");
        quiet.abort();
    }

    #[tokio::test]
    async fn a_task_that_cannot_be_restarted_stops_the_daemon_with_its_panic() {
        let tasks = fast();
        let stopping = tokio::spawn(tasks.or_failure(std::future::pending()));
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let handle = tasks.spawn("listener", OnPanic::StopDaemon, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { panic!("{}", String::from("bound socket lost")) }
        });
        handle.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .expect("the daemon's shutdown future completes on the failure")
            .unwrap();
        let failure = tasks.failure().unwrap();
        assert_eq!(failure.task, "listener");
        assert_eq!(failure.message, "bound socket lost");
        assert!(
            failure.to_string().contains("listener task panicked"),
            "{failure}"
        );
        let status = wait_for(&tasks, "listener", TaskState::Failed).await;
        assert_eq!(status.restarts, 0);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "never started again");
    }

    #[tokio::test]
    async fn a_task_that_keeps_panicking_is_restarted_a_bounded_number_of_times() {
        let tasks = fast();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let handle = tasks.spawn("broken", OnPanic::Restart, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("gives up within the backoffs")
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), MAX_PANICS as u32);
        let status = wait_for(&tasks, "broken", TaskState::Failed).await;
        assert_eq!(status.restarts, MAX_PANICS as u64 - 1);
        let failure = tasks.failure().unwrap();
        assert_eq!(failure.task, "broken");
        assert!(
            failure.to_string().contains(&format!("{MAX_PANICS} times")),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_while_the_daemon_runs_is_seen() {
        let tasks = fast();
        let stopping = tokio::spawn(tasks.or_failure(std::future::pending()));
        // A restartable task that returns is shown as ended; the daemon goes on.
        tasks
            .spawn("recorder", OnPanic::Restart, || async {})
            .await
            .unwrap();
        let status = wait_for(&tasks, "recorder", TaskState::Ended).await;
        assert_eq!(status.restarts, 0);
        assert!(tasks.failure().is_none());
        // One that owned a listener stops the daemon, as its panic would.
        tasks
            .spawn("metrics", OnPanic::StopDaemon, || async {})
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .expect("the daemon's shutdown future completes on the failure")
            .unwrap();
        let failure = tasks.failure().unwrap();
        assert_eq!(failure.task, "metrics");
        assert!(!failure.panicked);
        assert!(
            failure
                .to_string()
                .contains("metrics task ended while gpukilld was running"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn stop_waits_for_every_task_and_names_those_that_do_not_end() {
        let tasks = fast();
        let (stop, stopped) = watch::channel(false);
        tasks.spawn("guard", OnPanic::Restart, move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        });
        tasks.spawn("stuck", OnPanic::Restart, std::future::pending);
        stop.send(true).unwrap();
        let still = tasks.stop(Duration::from_millis(200)).await;
        assert_eq!(still, vec!["stuck"]);
        let guard = wait_for(&tasks, "guard", TaskState::Stopped).await;
        assert_eq!(
            guard.restarts, 0,
            "ended as it should, not as an unexpected end"
        );
        assert!(tasks.failure().is_none());
    }

    #[test]
    fn long_panic_messages_are_cut() {
        let message = panic_message(Box::new("é".repeat(MAX_MESSAGE)));
        assert!(message.ends_with('…'));
        assert!(message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert_eq!(panic_message(Box::new(42_u8)), "a panic without a message");
    }
}
