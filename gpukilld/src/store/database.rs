//! [`Database`]: the daemon's async handle on the events table.
//!
//! Writes go to one dedicated thread (`gpukill-store`) that owns the writing connection,
//! through a bounded queue: `record` never waits for room, so a stalled disk makes the queue
//! fill and batches get refused and counted, never a stuck runtime. Reads of a file-backed
//! log open their own read-only connection on the blocking pool, so a large audit query
//! neither waits behind queued writes nor holds them up (WAL lets both run at once). An
//! in-memory database exists only inside its one connection, so an in-memory log reads
//! through the writer's connection instead (tests only).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    EventQuery, FileChange, GpuSampleRow, ImportRecord, ImportSummary, NewEvent, OutcomeUpdate,
    Retention, SessionUpdate, Store, StoreError, StoredEvent,
};

/// How many batches may wait for the writer thread.
const QUEUE_CAPACITY: usize = 1024;

/// How long `record` and `query` wait for the store.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer thread's name.
const THREAD_NAME: &str = "gpukill-store";

/// History batches that may wait for the writer (at the default 10 s interval, 10 minutes of
/// a stalled disk); beyond that the oldest is dropped and counted.
const HISTORY_CAPACITY: usize = 64;

/// How often the writer looks at the history queue and the hour clock when no audit write
/// wakes it.
const HISTORY_POLL: Duration = Duration::from_millis(250);

/// One persist interval of metrics history: the store writes it in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryBatch {
    /// One row per GPU.
    pub samples: Vec<GpuSampleRow>,
    /// One update per process session.
    pub sessions: Vec<SessionUpdate>,
}

/// How the store keeps metrics history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Time covered by one sample row (the rollup weighs rows by it).
    pub persist_interval: Duration,
    /// How long each kind of data is kept; pruned once an hour.
    pub retention: Retention,
    /// Queue each rolled-up hour for upload, when uploads are configured.
    pub outbox: Option<super::OutboxOptions>,
    /// How long delivered uploads are kept.
    pub delivered_retention: Duration,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            persist_interval: Duration::from_secs(10),
            retention: Retention::default(),
            outbox: None,
            delivered_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Rows deleted per retention transaction: small, so readers never wait long.
const PRUNE_BATCH_ROWS: usize = 1000;

/// What became of the history batches handed to the store since start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryCounters {
    /// Batches waiting to be written.
    pub queued: u64,
    /// Batches dropped because the queue was full (the oldest go first).
    pub dropped: u64,
    /// Batches written.
    pub written: u64,
    /// Write attempts that failed (the batch is kept and retried).
    pub failed: u64,
    /// Hours rolled up into gpu_hourly and user_hourly.
    pub hours_rolled_up: u64,
    /// The error of the last write attempt, when it failed: the store is degraded.
    pub last_error: Option<String>,
}

/// The history batches waiting for the writer thread, shared with it.
#[derive(Debug, Default)]
struct HistoryQueue {
    batches: Mutex<VecDeque<HistoryBatch>>,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    hours_rolled_up: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl HistoryQueue {
    fn batches(&self) -> MutexGuard<'_, VecDeque<HistoryBatch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

type WriteReply = oneshot::Sender<Result<Vec<i64>, StoreError>>;

/// What the writer thread is asked to do.
enum Request {
    /// Write a batch in one transaction and answer with its ids.
    Write {
        events: Vec<NewEvent>,
        reply: WriteReply,
        /// The record of an act about to happen: written only while its caller still waits
        /// for the answer. A caller that timed out has refused the act, and a record of it
        /// landing later would say an act was under way that never was.
        before_act: bool,
    },
    /// History is queued: write it now rather than at the next poll.
    History,
    /// Answer once everything queued before this request is written.
    Flush { reply: oneshot::Sender<()> },
    /// Run a write on the writer's connection (it answers through its own channel).
    Apply(Box<dyn FnOnce(&mut Store) + Send>),
    /// Import records of a gpukill audit.jsonl, then redo the rollups they change.
    Import {
        records: Vec<ImportRecord>,
        reply: oneshot::Sender<Result<ImportSummary, StoreError>>,
    },
    /// Stop until `release` is signalled or dropped, after saying so on `holding`: lets a
    /// test fill the queue deterministically.
    #[cfg(test)]
    Hold {
        holding: oneshot::Sender<()>,
        release: mpsc::Receiver<()>,
    },
}

/// Where queries read from.
#[derive(Clone)]
enum Reader {
    /// A fresh read-only connection to this file per query.
    File(PathBuf),
    /// The writer's own connection (in-memory databases).
    Shared(Arc<Mutex<Store>>),
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    failed: AtomicU64,
    unconfirmed: AtomicU64,
    written: AtomicU64,
}

/// What became of the events handed to an [`Database`], counted in events (not batches)
/// since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatabaseCounters {
    /// Refused because the queue was full or the writer thread was gone: never written.
    pub dropped: u64,
    /// Rejected by SQLite (or lost to a panic) on the writer thread: never written.
    pub failed: u64,
    /// Queued, but not confirmed within the timeout; the writer may still have written them
    /// (then they are also in `written`) or failed them (then also in `failed`).
    pub unconfirmed: u64,
    /// Committed to the database.
    pub written: u64,
}

/// The daemon's async handle on the events table; share it as `Arc<Database>`. Dropping it
/// closes the queue: the writer thread writes what is queued, then ends. Use
/// [`Database::close`] to wait for that.
pub struct Database {
    requests: mpsc::SyncSender<Request>,
    counters: Arc<Counters>,
    reader: Reader,
    path: Option<PathBuf>,
    timeout: Duration,
    /// Never sent on; its sender is dropped when the writer thread ends.
    stopped: oneshot::Receiver<()>,
    history: Arc<HistoryQueue>,
    /// Set by the writer while the database file it had open was deleted or replaced.
    file_problem: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating and migrating) the database at `path` and starts the writer thread.
    /// Fails fast if the file cannot be opened or migrated. Blocking: call it at startup,
    /// before serving, or from `spawn_blocking`.
    pub fn start(path: PathBuf) -> Result<Self, StoreError> {
        Self::start_with_history(path, HistoryOptions::default())
    }

    /// Like [`start`](Self::start), for a daemon that also records history every
    /// `persist_interval` (the rollup weighs rows by it). A database file that SQLite finds
    /// corrupt (or not a database at all) is moved aside to `<name>.corrupt-<unix ms>`
    /// (named in the log) and a new one is created: never silently truncated.
    pub fn start_with_history(path: PathBuf, options: HistoryOptions) -> Result<Self, StoreError> {
        let store = match Store::open(&path) {
            Ok(store) => store,
            Err(error) if is_corruption(&error) => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    store = %path.display(),
                    moved_to = %aside.display(),
                    error = %crate::errors::chain(&error),
                    "the store is corrupt: moved it aside and started a new one"
                );
                Store::open(&path)?
            }
            Err(error) => return Err(error),
        };
        Self::spawn_with(store, Some(path), QUEUE_CAPACITY, ANSWER_TIMEOUT, options)
    }

    /// Starts a log on a fresh in-memory database (for tests).
    pub fn start_in_memory() -> Result<Self, StoreError> {
        let store = Store::open_in_memory()?;
        Self::spawn(store, None, QUEUE_CAPACITY, ANSWER_TIMEOUT)
    }

    /// Starts the writer thread on `store`, with a queue of `capacity` batches and
    /// `timeout` for answers. `path` is the file `store` was opened on (read-only readers
    /// open it), `None` for an in-memory store.
    pub(crate) fn spawn(
        store: Store,
        path: Option<PathBuf>,
        capacity: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::spawn_with(store, path, capacity, timeout, HistoryOptions::default())
    }

    fn spawn_with(
        store: Store,
        path: Option<PathBuf>,
        capacity: usize,
        timeout: Duration,
        options: HistoryOptions,
    ) -> Result<Self, StoreError> {
        let store = Arc::new(Mutex::new(store));
        let reader = match &path {
            Some(path) => Reader::File(path.clone()),
            None => Reader::Shared(Arc::clone(&store)),
        };
        let counters = Arc::new(Counters::default());
        let (requests, queue) = mpsc::sync_channel(capacity);
        let (stopping, stopped) = oneshot::channel();
        let thread_counters = Arc::clone(&counters);
        let history = Arc::new(HistoryQueue::default());
        let thread_history = Arc::clone(&history);
        let thread_path = path.clone();
        let file_problem = Arc::new(Mutex::new(None));
        let writer = Writer {
            counters: thread_counters,
            history: thread_history,
            file_problem: Arc::clone(&file_problem),
        };
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                write_loop(store, thread_path, queue, &writer, options);
                drop(stopping);
            })
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            requests,
            counters,
            reader,
            path,
            timeout,
            stopped,
            history,
            file_problem,
        })
    }

    /// Why the database file cannot be written, when the one the writer had open was
    /// deleted or replaced and no database is at its path again yet: nothing is written
    /// (and so nothing is killed) meanwhile. Checked before every write and every 250 ms.
    pub fn file_problem(&self) -> Option<String> {
        self.file_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queues one persist interval of history without waiting. When too many wait (a
    /// stalled disk), the oldest is dropped and counted.
    pub fn record_history(&self, batch: HistoryBatch) {
        {
            let mut batches = self.history.batches();
            if batches.len() >= HISTORY_CAPACITY {
                batches.pop_front();
                let dropped = self.history.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(dropped, "history queue full: dropped the oldest interval");
            }
            batches.push_back(batch);
        }
        // A full audit queue only delays the nudge: the writer also polls.
        let _ = self.requests.try_send(Request::History);
    }

    /// What became of the history batches so far.
    pub fn history_counters(&self) -> HistoryCounters {
        HistoryCounters {
            queued: self.history.batches().len() as u64,
            dropped: self.history.dropped.load(Ordering::Relaxed),
            written: self.history.written.load(Ordering::Relaxed),
            failed: self.history.failed.load(Ordering::Relaxed),
            hours_rolled_up: self.history.hours_rolled_up.load(Ordering::Relaxed),
            last_error: self.history.last_error(),
        }
    }

    /// Writes `events` in one transaction and returns their ids, in order. Never waits for
    /// room in the queue: a full queue refuses the batch (`QueueFull`, counted in
    /// `dropped`). Waits for the write up to a timeout (`Timeout`, counted in
    /// `unconfirmed`; the write may still land). A failed write is returned and counted in
    /// `failed`.
    pub async fn record(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, StoreError> {
        self.record_with(events, false).await
    }

    /// Writes the record of an act before the act, as [`record`](Self::record) does, and
    /// returns the ids to [`record_outcomes`](Self::record_outcomes) once it is done. `Ok`
    /// means committed and synced to disk (see [`Store::insert_events`]); on any error the
    /// caller must not act. A batch still queued when its caller gives up (`Timeout`) is
    /// not written at all.
    pub async fn record_before_act(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, StoreError> {
        self.record_with(events, true).await
    }

    /// Replaces the placeholder outcomes of events written by
    /// [`record_before_act`](Self::record_before_act) with what happened.
    pub async fn record_outcomes(&self, updates: Vec<OutcomeUpdate>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let count = updates.len();
        let written = self.write(move |store| store.set_outcomes(&updates)).await;
        if written.is_err() {
            self.counters
                .failed
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        written
    }

    async fn record_with(
        &self,
        events: Vec<NewEvent>,
        before_act: bool,
    ) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let count = events.len();
        let reply = self.send(events, before_act)?;
        match tokio::time::timeout(self.timeout, reply).await {
            Ok(Ok(written)) => written,
            // The writer dropped the reply: it panicked on this batch, and counted it.
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                self.counters
                    .unconfirmed
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::error!(
                    events = count,
                    timeout = ?self.timeout,
                    "the store did not confirm {count} audit events in time; they may still be written"
                );
                Err(StoreError::Timeout)
            }
        }
    }

    /// Queues `events` without waiting; the receiver gets the write's result. A refused
    /// batch is counted in `dropped` and logged.
    #[cfg(test)]
    pub(crate) fn submit(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<i64>, StoreError>>, StoreError> {
        self.send(events, false)
    }

    /// Queues `events` (see [`submit`](Self::submit)).
    fn send(
        &self,
        events: Vec<NewEvent>,
        before_act: bool,
    ) -> Result<oneshot::Receiver<Result<Vec<i64>, StoreError>>, StoreError> {
        let count = events.len();
        let (reply, answer) = oneshot::channel();
        let request = Request::Write {
            events,
            reply,
            before_act,
        };
        let error = match self.requests.try_send(request) {
            Ok(()) => return Ok(answer),
            Err(mpsc::TrySendError::Full(_)) => StoreError::QueueFull { lost: count },
            Err(mpsc::TrySendError::Disconnected(_)) => StoreError::Closed,
        };
        self.counters
            .dropped
            .fetch_add(count as u64, Ordering::Relaxed);
        tracing::error!(
            lost = count,
            error = %error,
            "{count} audit events lost: {error}"
        );
        Err(error)
    }

    /// Imports records of a gpukill audit.jsonl (in time order) through the writer thread
    /// in one transaction, skipping those imported before and those older than the rollups
    /// are kept, then redoes the rollups of the closed hours it changed. Waits for it up to a
    /// timeout (`Timeout`; the import may still land, and importing again is harmless).
    pub async fn import(&self, records: Vec<ImportRecord>) -> Result<ImportSummary, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .try_send(Request::Import { records, reply })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => StoreError::QueueFull { lost: 0 },
                mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
            })?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(summary)) => summary,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Runs `write` on the writer thread's connection (after what is queued before it) and
    /// waits for its answer up to a timeout (`Timeout`: it may still run).
    pub async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let answer = self.submit_write(write)?;
        self.confirm(answer).await
    }

    /// Queues `write` for the writer thread without waiting (so writes queued under one lock
    /// run in that order); [`confirm`](Self::confirm) waits for its answer.
    pub(crate) fn submit_write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let apply: Box<dyn FnOnce(&mut Store) + Send> = Box::new(move |store| {
            let _ = reply.send(write(store));
        });
        self.requests
            .try_send(Request::Apply(apply))
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => StoreError::QueueFull { lost: 0 },
                mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
            })?;
        Ok(answer)
    }

    /// Waits for the answer of a [`submit_write`](Self::submit_write) up to a timeout
    /// (`Timeout`: it may still run).
    pub(crate) async fn confirm<T>(
        &self,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Reads the newest `query.limit` matching events, oldest first, on the blocking pool,
    /// waiting up to a timeout (`Timeout`).
    pub async fn query(&self, query: EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || match reader {
            Reader::File(path) => Store::open_read_only(&path)?.events(&query),
            Reader::Shared(store) => lock(&store).events(&query),
        });
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(events)) => events,
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: the runtime is shutting down.
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Reads the process sessions overlapping [since_ms, until_ms), newest last seen first,
    /// on the blocking pool, waiting up to a timeout (`Timeout`).
    pub async fn sessions(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<super::StoredSession>, StoreError> {
        self.read(move |store| store.sessions(since_ms, until_ms))
            .await
    }

    /// Reads the GPU samples in [since_ms, until_ms) (of one GPU, or all), oldest first, on
    /// the blocking pool, waiting up to a timeout (`Timeout`).
    pub async fn gpu_samples(
        &self,
        gpu_index: Option<u32>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<GpuSampleRow>, StoreError> {
        self.read(move |store| store.gpu_samples(gpu_index, since_ms, until_ms))
            .await
    }

    /// Runs `read` on the blocking pool against a read-only connection (or the shared one of
    /// an in-memory log), as [`query`](Self::query) does, waiting up to a timeout.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        let task = tokio::task::spawn_blocking(move || match reader {
            Reader::File(path) => read(&Store::open_read_only(&path)?),
            Reader::Shared(store) => read(&lock(&store)),
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: the runtime is shutting down.
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// What became of the events handed to this log so far.
    pub fn counters(&self) -> DatabaseCounters {
        DatabaseCounters {
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            unconfirmed: self.counters.unconfirmed.load(Ordering::Relaxed),
            written: self.counters.written.load(Ordering::Relaxed),
        }
    }

    /// The database file; `None` for an in-memory log.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Waits up to `timeout` until everything queued so far (audit batches and history) is
    /// written (`Timeout` if it is not; the writer keeps going).
    pub async fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        // A full queue drains; keep offering until the deadline.
        let mut request = Request::Flush { reply };
        loop {
            match self.requests.try_send(request) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
                Err(mpsc::TrySendError::Full(back)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::Timeout);
                    }
                    request = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Closes the queue and waits up to `timeout` for the writer thread to write what is
    /// queued and end (`Timeout` if it has not; it keeps going).
    pub async fn close(self, timeout: Duration) -> Result<(), StoreError> {
        let Self {
            requests, stopped, ..
        } = self;
        drop(requests);
        match tokio::time::timeout(timeout, stopped).await {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Makes the writer thread stop until the returned sender is dropped (or sent on), and
    /// returns once it has stopped.
    #[cfg(test)]
    pub(crate) async fn hold(&self) -> Result<mpsc::Sender<()>, StoreError> {
        let (holding, held) = oneshot::channel();
        let (release, released) = mpsc::channel();
        self.requests
            .try_send(Request::Hold {
                holding,
                release: released,
            })
            .map_err(|_| StoreError::QueueFull { lost: 0 })?;
        held.await.map_err(|_| StoreError::Closed)?;
        Ok(release)
    }
}

/// Whether SQLite said the file is corrupt or not a database.
fn is_corruption(error: &StoreError) -> bool {
    let source = match error {
        StoreError::Open { source, .. } | StoreError::Migrate { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Renames a corrupt database (and its WAL and shared-memory files) out of the way.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = super::events::unix_ms(std::time::SystemTime::now());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::CreateDir {
                    path: PathBuf::from(from),
                    source,
                });
            }
        }
    }
    Ok(aside)
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // A panic mid-write rolled its transaction back (rusqlite's Transaction rolls back on
    // drop), so the connection is still consistent.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the writer thread shares with the [`Database`].
struct Writer {
    counters: Arc<Counters>,
    history: Arc<HistoryQueue>,
    file_problem: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn set_file_problem(&self, problem: Option<String>) {
        *self
            .file_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problem;
    }
}

/// The writer thread: writes audit batches in order, history as it comes, and rolls up
/// every closed hour (at start for the hours missed while the daemon was down, then as each
/// hour closes), until every sender is gone and both queues are empty.
///
/// A file-backed store (`path`) is closed when a history write fails and opened again for
/// the next attempt, so that a broken filesystem is not held open: one that an ext4 error
/// made read-only can only be unmounted, checked and mounted again once no process has a
/// file on it open.
///
/// Before every request and every poll it checks that the files it has open are still the
/// ones at `path` ([`Store::check_files`]). When the database or its WAL was deleted or
/// replaced, it closes them (without touching the path) and writes nothing until a database
/// is at the path again, which it then opens (never creates: a deleted audit trail is not
/// silently started afresh; a restart does that, and says so).
fn write_loop(
    store: Arc<Mutex<Store>>,
    path: Option<PathBuf>,
    queue: mpsc::Receiver<Request>,
    writer: &Writer,
    options: HistoryOptions,
) {
    let (counters, history) = (&*writer.counters, &*writer.history);
    let mut store = Some(store);
    let mut gone: Option<(PathBuf, FileChange)> = None;
    let mut rolled_up_through: Option<i64> = None;
    loop {
        let next = queue.recv_timeout(HISTORY_POLL);
        let closing = matches!(next, Err(mpsc::RecvTimeoutError::Disconnected));
        let request = next.ok();
        let opened = connection(&mut store, path.as_deref()).and_then(|open| {
            let checked = lock(&open).check_files();
            match checked {
                Ok(()) => Ok(open),
                Err(error) => {
                    if let StoreError::FileGone { path, change } = &error {
                        gone = Some((path.clone(), *change));
                    }
                    store = None;
                    close_stale(open);
                    Err(error)
                }
            }
        });
        let open = match opened {
            Ok(open) => {
                if let Some((file, change)) = gone.take() {
                    tracing::warn!(
                        store = %file.display(),
                        %change,
                        "a database is at the store's path again: opened it; writes resume"
                    );
                    writer.set_file_problem(None);
                }
                open
            }
            Err(error) => {
                // While the file is gone, say that, not the reopen's "unable to open".
                let error = match &gone {
                    Some((file, change)) => StoreError::FileGone {
                        path: file.clone(),
                        change: *change,
                    },
                    None => error,
                };
                let message = crate::errors::chain(&error);
                // Retried every poll: log a change of error, not every attempt.
                if history.last_error().as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "cannot write to the store; will retry");
                }
                history.set_error(Some(message.clone()));
                if gone.is_some() {
                    writer.set_file_problem(Some(message));
                }
                if let Some(request) = request {
                    refuse(request, error, counters);
                }
                if closing {
                    break;
                }
                continue;
            }
        };
        if let Some(request) = request {
            handle(&open, request, counters, history, &options);
        }
        let written = write_history(&open, history);
        if closing {
            break;
        }
        roll_up(&open, history, &options, &mut rolled_up_through);
        if !written && path.is_some() {
            store = None;
        }
    }
}

/// Closes a connection whose files were deleted or replaced (see [`Store::close_stale`]).
fn close_stale(open: Arc<Mutex<Store>>) {
    // A file-backed store's connection has no other owner (readers open their own).
    match Arc::try_unwrap(open) {
        Ok(store) => store
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .close_stale(),
        Err(shared) => std::mem::forget(shared),
    }
}

/// The writer's connection, opened again (never created) when a failed write closed it.
fn connection(
    store: &mut Option<Arc<Mutex<Store>>>,
    path: Option<&Path>,
) -> Result<Arc<Mutex<Store>>, StoreError> {
    if let Some(open) = store {
        return Ok(Arc::clone(open));
    }
    // Only a file-backed store is ever closed.
    let path = path.ok_or(StoreError::Closed)?;
    let open = Arc::new(Mutex::new(Store::reopen(path)?));
    *store = Some(Arc::clone(&open));
    Ok(open)
}

/// Counts and logs `count` audit events that could not be written, and tells the caller.
fn write_failed(count: usize, error: StoreError, reply: WriteReply, counters: &Counters) {
    counters.failed.fetch_add(count as u64, Ordering::Relaxed);
    tracing::error!(
        lost = count,
        error = %crate::errors::chain(&error),
        "{count} audit events could not be written"
    );
    let _ = reply.send(Err(error));
}

/// Answers `request` while the store cannot be opened: an audit write (counted in
/// `failed`) or an import fails with `error`.
fn refuse(request: Request, error: StoreError, counters: &Counters) {
    match request {
        Request::Write { events, reply, .. } => write_failed(events.len(), error, reply, counters),
        Request::Import { reply, .. } => {
            tracing::error!(error = %crate::errors::chain(&error), "cannot import audit records");
            let _ = reply.send(Err(error));
        }
        // Written once the store opens again: history follows every request.
        Request::History => {}
        // Nothing can be written now: the caller learns it from the dropped reply.
        Request::Flush { .. } | Request::Apply(_) => {}
        #[cfg(test)]
        Request::Hold { holding, release } => {
            let _ = holding.send(());
            let _ = release.recv();
        }
    }
}

/// Writes the queued history batches, oldest first; false when one failed. A failed write
/// keeps its batch at the front for the next attempt (the store is degraded until one
/// succeeds).
fn write_history(store: &Mutex<Store>, history: &HistoryQueue) -> bool {
    loop {
        let Some(batch) = history.batches().pop_front() else {
            return true;
        };
        let written = catch_unwind(AssertUnwindSafe(|| {
            lock(store).write_history(&batch.samples, &batch.sessions)
        }));
        match written {
            Ok(Ok(())) => {
                history.written.fetch_add(1, Ordering::Relaxed);
                if history.last_error().is_some() {
                    tracing::info!("the store is writable again");
                }
                history.set_error(None);
            }
            Ok(Err(error)) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                let message = crate::errors::chain(&error);
                // Retried every poll while it fails: log a change of error, not every attempt.
                if history.last_error().as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "cannot write history; will retry");
                }
                history.set_error(Some(message));
                let mut batches = history.batches();
                if batches.len() < HISTORY_CAPACITY {
                    batches.push_front(batch);
                } else {
                    history.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
            Err(_) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                history.set_error(Some("the history writer panicked".to_string()));
                return false;
            }
        }
    }
}

/// Once per hour (and at start): rolls up every closed hour that has raw data but no
/// rollup, then deletes what is past its retention, in small transactions.
fn roll_up(
    store: &Mutex<Store>,
    history: &HistoryQueue,
    options: &HistoryOptions,
    rolled_up_through: &mut Option<i64>,
) {
    let now_ms = super::events::unix_ms(std::time::SystemTime::now());
    let hour = now_ms - now_ms.rem_euclid(3_600_000);
    if *rolled_up_through == Some(hour) {
        return;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut store = lock(store);
        let mut done = 0;
        for hour in store.hours_needing_rollup(now_ms)? {
            rollup_hour(&mut store, hour, options)?;
            done += 1;
        }
        let pruned = store.prune(now_ms, &options.retention, PRUNE_BATCH_ROWS)?;
        if pruned != super::PruneSummary::default() {
            tracing::info!(?pruned, "retention pass");
        }
        if options.outbox.is_some() {
            let keep = i64::try_from(options.delivered_retention.as_millis()).unwrap_or(i64::MAX);
            let delivered = store.outbox_prune_delivered(now_ms.saturating_sub(keep))?;
            if delivered > 0 {
                tracing::info!(delivered, "pruned delivered uploads");
            }
        }
        Ok::<_, StoreError>(done)
    }));
    match result {
        Ok(Ok(done)) => {
            history.hours_rolled_up.fetch_add(done, Ordering::Relaxed);
            *rolled_up_through = Some(hour);
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::errors::chain(&error), "hourly rollup failed; will retry");
        }
        Err(_) => tracing::error!("the hourly rollup panicked; will retry"),
    }
}

/// Imports `records`, then rolls up again each closed hour the import changed whose
/// rollup can still be redone: one not rolled up yet, or one whose raw samples are still
/// kept. (An hour rolled up long ago has lost its raw samples; redoing it from the imported
/// ones alone would replace it with less. There the imported samples only go to waste.)
fn import(
    store: &mut Store,
    records: &[ImportRecord],
    history: &HistoryQueue,
    options: &HistoryOptions,
) -> Result<ImportSummary, StoreError> {
    let now_ms = super::events::unix_ms(std::time::SystemTime::now());
    let age = |limit: Duration| i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    let summary = store.import_records(
        records,
        now_ms.saturating_sub(age(options.retention.rollups)),
    )?;
    let open_hour = super::history::hour_start(now_ms);
    let raw_kept_from = now_ms.saturating_sub(age(options.retention.samples));
    for &hour in summary.hours.range(..open_hour) {
        if hour >= raw_kept_from || !store.is_rolled_up(hour)? {
            rollup_hour(store, hour, options)?;
            history.hours_rolled_up.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(summary)
}

/// Rolls up one hour (queueing it for upload when uploads are on) and logs the uploads the
/// outbox's bound dropped.
fn rollup_hour(store: &mut Store, hour: i64, options: &HistoryOptions) -> Result<(), StoreError> {
    let summary = store.rollup_hour(hour, options.persist_interval, options.outbox.as_ref())?;
    if let (Some(first), Some(last)) = (
        summary.dropped_uploads.first(),
        summary.dropped_uploads.last(),
    ) {
        tracing::warn!(
            dropped = summary.dropped_uploads.len(),
            oldest_hour_ms = first.min(last),
            max_outbox_hours = options.outbox.as_ref().map(|o| o.max_hours),
            "the upload outbox is full: dropped the oldest undelivered hours"
        );
    }
    Ok(())
}

/// Carries out one request from the audit queue.
fn handle(
    store: &Mutex<Store>,
    request: Request,
    counters: &Counters,
    history: &HistoryQueue,
    options: &HistoryOptions,
) {
    {
        match request {
            Request::Write {
                events,
                reply,
                before_act,
            } => {
                let count = events.len();
                if before_act && reply.is_closed() {
                    // Its caller timed out and refused the act; counted `unconfirmed` there.
                    tracing::warn!(
                        events = count,
                        "not writing the record of an act its caller gave up on"
                    );
                    return;
                }
                match catch_unwind(AssertUnwindSafe(|| lock(store).insert_events(&events))) {
                    Ok(Ok(ids)) => {
                        counters.written.fetch_add(count as u64, Ordering::Relaxed);
                        // The caller may have timed out or gone; the rows are written anyway.
                        let _ = reply.send(Ok(ids));
                    }
                    Ok(Err(error)) => write_failed(count, error, reply, counters),
                    Err(_) => {
                        // Dropping the reply tells the caller; the thread lives on.
                        counters.failed.fetch_add(count as u64, Ordering::Relaxed);
                        tracing::error!(
                            lost = count,
                            "{count} audit events lost: the store writer panicked"
                        );
                    }
                }
            }
            // The caller only wants the history written, which follows every request.
            Request::History => {}
            Request::Flush { reply } => {
                // Everything queued before this is written; the history queue too.
                write_history(store, history);
                let _ = reply.send(());
            }
            Request::Import { records, reply } => {
                let imported = catch_unwind(AssertUnwindSafe(|| {
                    import(&mut lock(store), &records, history, options)
                }));
                match imported {
                    Ok(result) => {
                        if let Err(error) = &result {
                            tracing::error!(
                                error = %crate::errors::chain(error),
                                "cannot import audit records"
                            );
                        }
                        let _ = reply.send(result);
                    }
                    // Dropping the reply tells the caller.
                    Err(_) => tracing::error!("the audit import panicked"),
                }
            }
            Request::Apply(apply) => {
                // A panic drops the closure's reply, which tells its caller.
                if catch_unwind(AssertUnwindSafe(|| apply(&mut lock(store)))).is_err() {
                    tracing::error!("a store write panicked");
                }
            }
            #[cfg(test)]
            Request::Hold { holding, release } => {
                let _ = holding.send(());
                let _ = release.recv();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::events::tests::event;
    use super::super::{EventKind, EventQuery};
    use super::*;

    /// `count` events from `first_ms` after now on: recent, so the writer's hourly
    /// retention pass (which runs when it starts) keeps them.
    fn batch(count: u64, first_ms: u64) -> Vec<NewEvent> {
        let now = super::super::events::unix_ms(std::time::SystemTime::now()) as u64;
        (0..count)
            .map(|n| event(EventKind::Kill, now + first_ms + n, n % 2 == 0))
            .collect()
    }

    fn all() -> EventQuery {
        EventQuery {
            since_ms: None,
            kind: None,
            limit: 10_000,
        }
    }

    #[tokio::test]
    async fn file_log_records_a_batch_and_readers_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpukill/store.db");
        let log = Database::start(path.clone()).unwrap();
        assert_eq!(log.path(), Some(path.as_path()));

        let ids = log.record(batch(50, 1_000)).await.unwrap();
        assert_eq!(ids.len(), 50);
        let read = log.query(all()).await.unwrap();
        assert_eq!(read.iter().map(|e| e.id).collect::<Vec<_>>(), ids);

        // Another process's view: a read-only connection while the writer thread is alive
        // and holds its connection open.
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.events(&all()).unwrap().len(), 50);
        let more = log.record(batch(3, 5_000)).await.unwrap();
        assert_eq!(more.len(), 3);
        assert_eq!(reader.events(&all()).unwrap().len(), 53);

        assert_eq!(
            log.counters(),
            DatabaseCounters {
                written: 53,
                ..DatabaseCounters::default()
            }
        );
    }

    #[tokio::test]
    async fn in_memory_log_reads_through_the_writer_connection() {
        let log = Database::start_in_memory().unwrap();
        assert_eq!(log.path(), None);
        let ids = log.record(batch(4, 1_000)).await.unwrap();
        let newest = log
            .query(EventQuery {
                since_ms: None,
                kind: Some(EventKind::Kill),
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(newest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
        assert!(log.record(Vec::new()).await.unwrap().is_empty());
        assert_eq!(log.counters().written, 4);
    }

    #[tokio::test]
    async fn a_corrupt_database_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpukill.db");
        std::fs::write(
            &path,
            b"this is not an SQLite database, it is 64 bytes of text........",
        )
        .unwrap();
        let log = Database::start_with_history(path.clone(), HistoryOptions::default()).unwrap();
        assert_eq!(log.record(batch(2, 1_000)).await.unwrap().len(), 2);
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().to_string())
            .filter(|name| name.starts_with("gpukill.db.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        let kept = std::fs::read(dir.path().join(&moved[0])).unwrap();
        assert!(
            kept.starts_with(b"this is not an SQLite database"),
            "kept byte for byte"
        );
    }

    #[tokio::test]
    async fn full_queue_drops_the_batch_and_counts_it() {
        let store = Store::open_in_memory().unwrap();
        let log = Database::spawn(store, None, 1, ANSWER_TIMEOUT).unwrap();
        let release = log.hold().await.unwrap();
        // The writer is stopped and the queue is empty; one batch fills it.
        let queued = log.submit(batch(3, 1_000)).unwrap();

        let error = log.record(batch(5, 2_000)).await.unwrap_err();
        assert!(
            matches!(error, StoreError::QueueFull { lost: 5 }),
            "{error:?}"
        );
        assert_eq!(log.counters().dropped, 5);
        assert_eq!(log.counters().written, 0);

        drop(release);
        assert_eq!(queued.await.unwrap().unwrap().len(), 3);
        assert_eq!(
            log.counters(),
            DatabaseCounters {
                dropped: 5,
                written: 3,
                ..DatabaseCounters::default()
            }
        );
        // The dropped batch is really not there.
        assert_eq!(log.query(all()).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn unanswered_write_times_out_and_is_counted_unconfirmed() {
        let store = Store::open_in_memory().unwrap();
        let log = Database::spawn(store, None, 4, Duration::from_millis(50)).unwrap();
        let release = log.hold().await.unwrap();

        let error = log.record(batch(2, 1_000)).await.unwrap_err();
        assert!(matches!(error, StoreError::Timeout), "{error:?}");
        assert_eq!(log.counters().unconfirmed, 2);
        assert_eq!(log.counters().dropped, 0);

        drop(release);
        // Writes are in order, so once this one is confirmed the timed-out one landed.
        log.record(batch(1, 2_000)).await.unwrap();
        assert_eq!(log.query(all()).await.unwrap().len(), 3);
        assert_eq!(log.counters().written, 3);
    }

    #[tokio::test]
    async fn failed_write_is_returned_and_counted() {
        let store = Store::open_in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON events
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let log = Database::spawn(store, None, 4, ANSWER_TIMEOUT).unwrap();
        let error = log.record(batch(4, 1_000)).await.unwrap_err();
        assert!(matches!(error, StoreError::Write(_)), "{error:?}");
        assert_eq!(
            log.counters(),
            DatabaseCounters {
                failed: 4,
                ..DatabaseCounters::default()
            }
        );
    }

    #[tokio::test]
    async fn close_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let log = Database::start(path.clone()).unwrap();
        let release = log.hold().await.unwrap();
        let queued = log.submit(batch(7, 1_000)).unwrap();
        let closing = tokio::spawn(log.close(ANSWER_TIMEOUT));
        drop(release);
        closing.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap().len(), 7);
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.events(&all()).unwrap().len(), 7);
    }

    #[tokio::test]
    async fn dropping_the_log_still_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let log = Database::start(path.clone()).unwrap();
        let release = log.hold().await.unwrap();
        let queued = log.submit(batch(2, 1_000)).unwrap();
        drop(log);
        drop(release);
        assert_eq!(queued.await.unwrap().unwrap().len(), 2);
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.events(&all()).unwrap().len(), 2);
    }

    /// Polls `log.file_problem()` until it is `Some` (or `None` when `want_problem` is
    /// false); fails after 5 s.
    async fn wait_for_file_problem(log: &Database, want_problem: bool) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let problem = log.file_problem();
            if problem.is_some() == want_problem {
                return problem;
            }
            assert!(std::time::Instant::now() < deadline, "{problem:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_deleted_database_is_noticed_and_nothing_more_is_written_until_one_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpukill.db");
        let log = Database::start(path.clone()).unwrap();
        log.record(batch(2, 1_000)).await.unwrap();
        // A copy to put back later, as an admin restoring a backup would.
        let backup = dir.path().join("backup.db");
        Store::open_read_only(&path)
            .unwrap()
            .conn
            .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }

        let problem = wait_for_file_problem(&log, true).await.unwrap();
        assert!(
            problem.contains("gpukill.db was deleted while gpukilld ran"),
            "{problem}"
        );
        let error = log.record_before_act(batch(1, 2_000)).await.unwrap_err();
        assert!(
            matches!(
                &error,
                StoreError::FileGone {
                    change: FileChange::Deleted,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!path.exists(), "no new database was created at the path");

        std::fs::rename(&backup, &path).unwrap();
        wait_for_file_problem(&log, false).await;
        log.record_before_act(batch(1, 3_000)).await.unwrap();
        // The restored file has the two events from before and the one after; the refused
        // one is nowhere.
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.events(&all()).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_replaced_database_is_noticed_and_the_new_file_is_opened_leaving_it_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpukill.db");
        let log = Database::start(path.clone()).unwrap();
        log.record(batch(2, 1_000)).await.unwrap();
        // Another database, prepared elsewhere and moved over the path while the log runs.
        let other = dir.path().join("other.db");
        {
            let mut store = Store::open(&other).unwrap();
            store.insert_events(&batch(5, 5_000)).unwrap();
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::remove_file(&wal).unwrap();
        std::fs::rename(&other, &path).unwrap();

        // Writes go on, to the new file: the old connection was let go without touching it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            log.record(batch(1, 9_000)).await.ok();
            let reader = Store::open_read_only(&path).unwrap();
            let stored = reader.events(&all()).unwrap().len();
            if stored == 6 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stored} events");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(log.file_problem(), None);
        let reader = Store::open_read_only(&path).unwrap();
        let check: String = reader
            .conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[tokio::test]
    async fn the_record_of_an_act_is_not_written_once_its_caller_gave_up() {
        let store = Store::open_in_memory().unwrap();
        let log = Database::spawn(store, None, 4, Duration::from_millis(50)).unwrap();
        let release = log.hold().await.unwrap();
        let error = log.record_before_act(batch(2, 1_000)).await.unwrap_err();
        assert!(matches!(error, StoreError::Timeout), "{error:?}");
        drop(release);
        // A later write is confirmed, so the writer has passed the abandoned one.
        log.record(batch(1, 2_000)).await.unwrap();
        assert_eq!(log.query(all()).await.unwrap().len(), 1);
        assert_eq!(log.counters().written, 1);
    }

    #[tokio::test]
    async fn outcomes_replace_the_placeholder_of_a_recorded_act() {
        let log = Database::start_in_memory().unwrap();
        let mut events = batch(2, 1_000);
        events[0].outcome = "signalling".to_string();
        let ids = log.record_before_act(events).await.unwrap();
        log.record_outcomes(vec![OutcomeUpdate {
            id: ids[0],
            outcome: "terminated".to_string(),
            reason: "exited after SIGTERM".to_string(),
        }])
        .await
        .unwrap();
        let stored = log.query(all()).await.unwrap();
        assert_eq!(stored[0].outcome, "terminated");
        assert_eq!(stored[0].reason, "exited after SIGTERM");
        // The other row is untouched.
        assert_eq!(stored[1].outcome, batch(2, 1_000)[1].outcome);
        assert_eq!(stored.len(), 2);
    }

    #[tokio::test]
    async fn unopenable_file_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: not corruption (that is moved aside), but
        // a store that cannot be opened at all.
        let path = dir.path().join("store.db");
        std::fs::create_dir(&path).unwrap();
        let error = Database::start(path.clone()).unwrap_err();
        assert!(
            matches!(&error, StoreError::Open { path: named, .. } if named == &path),
            "{error:?}"
        );
    }
}
