//! The daemon's SQLite store: the audit events (every kill, reset and denied request, with
//! who asked and why), samples, sessions and hourly rollups, reservations and drained GPUs,
//! node registrations and the upload outbox.
//!
//! Two layers:
//! - [`Store`] is synchronous: one `rusqlite::Connection`, its pragmas and migrations, and
//!   the queries. It blocks, so async code never calls it directly.
//! - [`Database`] is the daemon's async handle. It owns the writing `Store` on a dedicated
//!   thread fed by a bounded queue, so the tokio runtime never waits on SQLite, and it counts
//!   every event it could not write ([`DatabaseCounters`]).

mod database;
mod drains;
mod events;
mod handle;
mod history;
mod import;
mod outbox;
mod registrations;
mod reservations;
mod retention;
mod schema;
mod usage;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use database::{Database, DatabaseCounters, HistoryBatch, HistoryCounters, HistoryOptions};
pub use drains::DrainRow;
pub use events::OutcomeUpdate;
pub use events::{
    EventCaller, EventKind, EventKindError, EventQuery, EventTarget, NewEvent, StoredEvent,
};
pub(crate) use events::{rfc3339_ms, unix_ms};
pub use handle::StoreHandle;
pub(crate) use history::hour_start;
pub use history::{GpuSampleRow, RollupSummary, SessionUpdate, StoredSession};
pub use import::{ImportProcess, ImportRecord, ImportSummary, SESSION_GAP_MS};
pub use outbox::{
    AttemptResult, DueEntry, OutboxEntry, OutboxOptions, OutboxStatus, OutboxSummary, RetryRefusal,
    SendAttemptRow, ShownUpload,
};
pub use registrations::NodeRegistration;
pub use reservations::{LeaseKind, ReservationMarks, ReservationRow};
pub use retention::{PruneSummary, Retention};
pub use usage::{GpuHourlyRow, GpuUsage};

/// How long a connection waits on another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes the WAL file keeps after a checkpoint (64 MiB); without a limit it stays as
/// large as the largest burst of writes.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The name errors use for an in-memory database.
const IN_MEMORY: &str = ":memory:";

/// Mode of a store directory that `Store::open` creates: the daemon's user and group only,
/// since events name other users' processes and command lines.
const DIR_MODE: u32 = 0o750;

/// Errors of the store and of the event log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or configured.
    #[error("cannot open the store {}", path.display())]
    Open {
        /// The database file (`:memory:` for an in-memory database).
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file could not be `stat`ed right after it was opened.
    #[error("cannot stat the store {}", path.display())]
    Identify {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The directory of the database could not be created.
    #[error("cannot create the store directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A schema migration failed; the database stays at the version before it.
    #[error("cannot migrate the store {} to schema version {version}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The schema version the failed migration would have reached.
        version: i64,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer gpukilld; this one does not touch it.
    #[error(
        "the store {} has schema version {found}, newer than the {known} this gpukilld knows",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this binary knows.
        known: i64,
    },
    /// A batch (of events, history or imported records) could not be written; none of it
    /// was.
    #[error("cannot write to the store")]
    Write(#[source] rusqlite::Error),
    /// Events could not be read.
    #[error("cannot read events from the store")]
    Read(#[source] rusqlite::Error),
    /// The writer's queue was full; the batch was dropped and counted.
    #[error("the store queue is full: {lost} events lost")]
    QueueFull {
        /// How many events were dropped.
        lost: usize,
    },
    /// The store did not answer in time. A write may still land.
    #[error("the store did not answer in time")]
    Timeout,
    /// The writer thread is gone.
    #[error("the store writer thread has stopped")]
    Closed,
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread")]
    Spawn(#[source] io::Error),
    /// The database file (or its WAL) the daemon has open is no longer the one at its path:
    /// deleted or replaced while gpukilld ran. Writes would go to a file no one can read, so
    /// none is made until a database is at the path again.
    #[error(
        "{} was {change} while gpukilld ran, so nothing more is written to it; put the database back at that path (gpukilld opens it within a second) or restart gpukilld (it creates a new, empty one)",
        path.display()
    )]
    FileGone {
        /// The file that changed (the database or its `-wal`).
        path: PathBuf,
        /// What happened to it.
        change: FileChange,
    },
}

/// What happened to a store file under the running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// No file is at the path any more.
    Deleted,
    /// Another file is at the path.
    Replaced,
}

impl std::fmt::Display for FileChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileChange::Deleted => "deleted",
            FileChange::Replaced => "replaced",
        })
    }
}

/// Which file a path names: (st_dev, st_ino).
type FileId = (u64, u64);

/// The files a writing connection has open, as they were when it opened them: a fresh
/// `stat` of the paths that differs means the files were deleted or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    database: FileId,
    /// `None` when the database is not in WAL mode.
    wal: Option<FileId>,
}

fn file_id(path: &Path) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// `<database>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// A synchronous handle on one SQLite connection to the store. Blocking: call it from a
/// dedicated thread or `spawn_blocking`, never from async code.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// For error messages; `:memory:` for an in-memory database.
    path: PathBuf,
    /// The files this connection writes, for a file-backed store opened for writing.
    identity: Option<Identity>,
}

impl Store {
    /// Runs `write` in one IMMEDIATE transaction (the write lock is taken when it begins, so
    /// it never fails halfway on a busy database) and commits it; an error rolls it back.
    pub(crate) fn write_tx<T>(
        &mut self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::Write)?;
        let value = write(&tx)?;
        tx.commit().map_err(StoreError::Write)?;
        Ok(value)
    }
}

impl Store {
    /// Opens (creating it and its directory if missing) the database at `path` for reading
    /// and writing, turns on WAL, and applies the migrations it lacks.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            create_dir(parent)?;
        }
        // Not SQLITE_OPEN_URI: a configured path is a path, even if it starts with "file:".
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::configure(conn, path.to_path_buf())
    }

    /// Opens the existing database at `path` again, as [`open`](Self::open) does but never
    /// creating it or its directory: the writer reopens the store after a failed write, and
    /// a missing file means that its filesystem is not mounted back yet.
    pub fn reopen(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::configure(conn, path.to_path_buf())
    }

    /// Opens a fresh, migrated in-memory database (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(IN_MEMORY),
            source,
        })?;
        Self::configure(conn, PathBuf::from(IN_MEMORY))
    }

    /// Opens an existing database read-only, for readers beside the daemon's writer (WAL lets
    /// them read while it writes). It applies no migrations, but refuses a database newer
    /// than this binary knows.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(open)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        let store = Self {
            conn,
            path: path.to_path_buf(),
            identity: None,
        };
        schema::check_not_too_new(&store.conn, &store.path)?;
        Ok(store)
    }

    /// Sets the connection's pragmas and migrates it.
    fn configure(mut conn: Connection, path: PathBuf) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // First, so that the pragmas below wait out another connection's lock.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        // Before anything writes the file: auto_vacuum only takes effect on a database with
        // no tables yet, and a store that drops old history should give the pages back
        // (`PRAGMA incremental_vacuum`) without a full VACUUM. On an older file it is a no-op.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(open)?;
        let journal_mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open)?;
        if path != Path::new(IN_MEMORY) && !journal_mode.eq_ignore_ascii_case("wal") {
            // Still usable, but readers will wait on the writer.
            tracing::warn!(
                store = %path.display(),
                journal_mode,
                "the store is not in WAL mode"
            );
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open)?;
        // Answers with the limit; pragma_update would fail on the returned row.
        let _: i64 = conn
            .pragma_update_and_check(None, "journal_size_limit", JOURNAL_SIZE_LIMIT, |row| {
                row.get(0)
            })
            .map_err(open)?;
        schema::migrate(&mut conn, &path)?;
        // Migrating read the database, which in WAL mode opened (or created) the -wal file:
        // both files exist now, and these are the ones this connection keeps open.
        let identity = if path == Path::new(IN_MEMORY) {
            None
        } else {
            let database = file_id(&path).map_err(|source| StoreError::Identify {
                path: path.clone(),
                source,
            })?;
            let wal = journal_mode
                .eq_ignore_ascii_case("wal")
                .then(|| file_id(&wal_path(&path)).ok())
                .flatten();
            Some(Identity { database, wal })
        };
        Ok(Self {
            conn,
            path,
            identity,
        })
    }

    /// Checks that the database file (and its WAL) at this store's path are still the ones
    /// this connection opened: `FileGone` when one was deleted or replaced. Two `stat`s; an
    /// in-memory store always passes.
    pub fn check_files(&self) -> Result<(), StoreError> {
        let Some(identity) = self.identity else {
            return Ok(());
        };
        let wal = wal_path(&self.path);
        let checks = [
            (self.path.clone(), Some(identity.database)),
            (wal, identity.wal),
        ];
        for (path, opened) in checks {
            let Some(opened) = opened else { continue };
            let change = match file_id(&path) {
                Ok(now) if now == opened => continue,
                Ok(_) => FileChange::Replaced,
                Err(error) if error.kind() == io::ErrorKind::NotFound => FileChange::Deleted,
                // Cannot tell (a permission or I/O error): the write itself will say.
                Err(_) => continue,
            };
            return Err(StoreError::FileGone { path, change });
        }
        Ok(())
    }

    /// Closes a connection whose files were deleted or replaced without touching what is at
    /// the path now: SQLite's close would checkpoint and then delete `<path>-wal` by name,
    /// which may be another database's WAL by now.
    pub(crate) fn close_stale(self) {
        if let Err(error) = self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        ) {
            // Then keep the connection open for good rather than risk the other file.
            tracing::error!(%error, "cannot close the replaced store safely; leaving it open");
            std::mem::forget(self);
        }
    }
}

/// Creates `dir` and its missing parents with [`DIR_MODE`]; an existing one is left as is.
pub fn create_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn user_version(store: &Store) -> i64 {
        store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    fn count_events(store: &Store) -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn fresh_file_is_migrated_and_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/gpukill/store.db");
        let store = Store::open(&path).unwrap();

        assert_eq!(user_version(&store), schema::known_version());
        assert!(schema::known_version() >= 1);
        let journal_mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(journal_mode, "wal");
        let foreign_keys: bool = store
            .conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .unwrap();
        assert!(foreign_keys);
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        // The umask may take more away, never add: no one outside the group, no group writes.
        assert_eq!(mode & 0o027, 0, "mode {mode:o}");
    }

    #[test]
    fn reopening_keeps_rows_and_reruns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let mut store = Store::open(&path).unwrap();
            store
                .insert_events(&[events::tests::event(EventKind::Kill, 1_000, true)])
                .unwrap();
        }
        // Re-running migration 1 would fail ("table events already exists"), so a second
        // open that succeeds and still sees the row has applied nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(user_version(&store), schema::known_version());
        assert_eq!(count_events(&store), 1);
    }

    #[test]
    fn newer_schema_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = Store::open(&path).unwrap();
            store.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let error = Store::open(&path).unwrap_err();
        match &error {
            StoreError::TooNew {
                path: named,
                found,
                known,
            } => {
                assert_eq!(named, &path);
                assert_eq!(*found, 99);
                assert_eq!(*known, schema::known_version());
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(matches!(
            Store::open_read_only(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn unwritable_directory_is_a_create_dir_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let error = Store::open(&file.join("sub/store.db")).unwrap_err();
        assert!(
            matches!(&error, StoreError::CreateDir { path, .. } if path == &file.join("sub")),
            "{error:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        std::fs::write(&path, b"this is not an SQLite database, not even close").unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(
            matches!(&error, StoreError::Open { path: named, .. } if named == &path),
            "{error:?}"
        );
    }

    #[test]
    fn migration_4_keeps_the_events_and_allows_violations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            schema::migrate_to(&mut conn, &path, 3).unwrap();
            let mut store = Store {
                conn,
                path: path.clone(),
                identity: None,
            };
            store
                .insert_events_before_via(&[events::tests::event(EventKind::Kill, 1_000, true)])
                .unwrap();
            let mut violation = events::tests::event(EventKind::Violation, 2_000, true);
            violation.kind = EventKind::Violation;
            assert!(
                store.insert_events_before_via(&[violation]).is_err(),
                "version 3 refuses it"
            );
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(user_version(&store), schema::known_version());
        let mut violation = events::tests::event(EventKind::Kill, 2_000, true);
        violation.kind = EventKind::Violation;
        let ids = store.insert_events(&[violation]).unwrap();
        assert_eq!(ids, [2], "ids continue after the copied rows");
        assert_eq!(count_events(&store), 2);
    }

    #[test]
    fn in_memory_store_is_migrated() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(user_version(&store), schema::known_version());
        assert_eq!(count_events(&store), 0);
    }
}
