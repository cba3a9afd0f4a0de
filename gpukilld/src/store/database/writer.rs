//! The writer thread (`gpukill-store`): the one connection that writes, and the loop that
//! carries out the requests of the [`Database`](super::Database) in order, writes the queued
//! history after each, and runs the hourly rollups.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use super::history_queue::{HistoryOptions, HistoryQueue, write_history};
use super::rollups::{import, roll_up};
use super::{Counters, lock};
use crate::store::{FileChange, ImportRecord, ImportSummary, NewEvent, Store, StoreError};

/// How often the writer looks at the history queue and the hour clock when no audit write
/// wakes it.
const HISTORY_POLL: Duration = Duration::from_millis(250);

type WriteReply = oneshot::Sender<Result<Vec<i64>, StoreError>>;

/// What the writer thread is asked to do.
pub(super) enum Request {
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

/// What the writer thread shares with the [`Database`].
pub(super) struct Writer {
    pub(super) counters: Arc<Counters>,
    pub(super) history: Arc<HistoryQueue>,
    pub(super) file_problem: Arc<Mutex<Option<String>>>,
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
pub(super) fn write_loop(
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
    use std::time::Duration;

    use super::super::Database;
    use super::super::tests::{all, batch};
    use crate::store::{FileChange, Store, StoreError};

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
}
