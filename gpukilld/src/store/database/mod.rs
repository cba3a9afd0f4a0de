//! [`Database`]: the daemon's async handle on the store.
//!
//! Writes go to one dedicated thread (`gpukill-store`, [`writer`]) that owns the writing
//! connection, through a bounded queue: `record` never waits for room, so a stalled disk makes
//! the queue fill and batches get refused and counted, never a stuck runtime. Reads of a
//! file-backed database open their own read-only connection on the blocking pool, so a large
//! audit query neither waits behind queued writes nor holds them up (WAL lets both run at
//! once). An in-memory database exists only inside its one connection, so an in-memory one
//! reads through the writer's connection instead (tests only).
//!
//! This file is the async API. The rest, by job:
//! - [`writer`]: the writer thread, its requests and its loop (reopening the store after a
//!   failed write, noticing a database file deleted or replaced under it);
//! - [`history_queue`]: the drop-oldest queue of history batches and how the writer drains it;
//! - [`rollups`]: the hourly rollups, retention and outbox pruning the writer schedules, and
//!   the rollups an import redoes;
//! - [`corrupt`]: a corrupt database file moved aside at start.

mod corrupt;
mod history_queue;
mod rollups;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use history_queue::HistoryQueue;
pub use history_queue::{HistoryBatch, HistoryCounters, HistoryOptions};
use writer::{Request, Writer, write_loop};

use super::{
    EventQuery, GpuSampleRow, ImportRecord, ImportSummary, NewEvent, OutcomeUpdate, Store,
    StoreError, StoredEvent,
};

/// How many batches may wait for the writer thread.
const QUEUE_CAPACITY: usize = 1024;

/// How long `record` and `query` wait for the store.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer thread's name.
const THREAD_NAME: &str = "gpukill-store";

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

/// The daemon's async handle on its store (audit events, history, reservations, outbox);
/// share it as `Arc<Database>`. Dropping it
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
        let store = corrupt::open_or_move_aside(&path)?;
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

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // A panic mid-write rolled its transaction back (rusqlite's Transaction rolls back on
    // drop), so the connection is still consistent.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::super::events::tests::event;
    use super::super::{EventKind, EventQuery};
    use super::*;

    /// `count` events from `first_ms` after now on: recent, so the writer's hourly
    /// retention pass (which runs when it starts) keeps them.
    pub(super) fn batch(count: u64, first_ms: u64) -> Vec<NewEvent> {
        let now = super::super::events::unix_ms(std::time::SystemTime::now()) as u64;
        (0..count)
            .map(|n| event(EventKind::Kill, now + first_ms + n, n % 2 == 0))
            .collect()
    }

    pub(super) fn all() -> EventQuery {
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
