//! The schema: an ordered list of migrations. `PRAGMA user_version` records how many have
//! been applied; each one runs in its own transaction together with the version bump, so a
//! database is always at exactly one version. To change the schema, append to
//! [`MIGRATIONS`]; never edit one that has shipped.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Migration `n + 1` is `MIGRATIONS[n]`.
const MIGRATIONS: &[&str] = &[
    // 1: audit events.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('kill','reset','deny')),
        caller_uid INTEGER NOT NULL,
        caller_user TEXT NOT NULL,
        caller_pid INTEGER,
        transport TEXT NOT NULL,
        action TEXT NOT NULL,
        target_pid INTEGER,
        target_start_ms INTEGER,
        target_uid INTEGER,
        target_user TEXT,
        target_name TEXT,
        target_cmdline TEXT,
        target_gpu INTEGER,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX events_by_time ON events(time_ms);
    CREATE INDEX events_by_kind_time ON events(kind, time_ms);",
    // 2: metrics history: raw GPU samples and process sessions, and their hourly rollups.
    "CREATE TABLE gpu_identities (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL, pci_bus_id TEXT NOT NULL, name TEXT NOT NULL,
        UNIQUE (uuid, pci_bus_id, name)
    );
    CREATE TABLE gpu_samples (
        time_ms INTEGER NOT NULL,
        gpu_index INTEGER NOT NULL,
        identity INTEGER REFERENCES gpu_identities (id),
        ticks INTEGER NOT NULL,
        util_mean REAL, util_max INTEGER,
        mem_util_mean REAL,
        mem_used_max INTEGER, mem_total INTEGER,
        temp_mean REAL, temp_max INTEGER,
        power_mean_mw REAL, power_max_mw INTEGER,
        fan_mean REAL, sm_clock_mean REAL, mem_clock_mean REAL,
        PRIMARY KEY (gpu_index, time_ms)
    ) WITHOUT ROWID;
    CREATE INDEX gpu_samples_by_time ON gpu_samples(time_ms);
    CREATE TABLE process_sessions (
        id INTEGER PRIMARY KEY,
        pid INTEGER NOT NULL, start_time_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
        uid INTEGER NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL, cmdline TEXT NOT NULL,
        container_id TEXT, container_runtime TEXT, pod_uid TEXT,
        peak_memory_bytes INTEGER, memory_byte_seconds REAL NOT NULL DEFAULT 0,
        gpu_seconds REAL NOT NULL DEFAULT 0, util_seconds REAL,
        UNIQUE (pid, start_time_ms, gpu_index)
    );
    CREATE INDEX process_sessions_by_last_seen ON process_sessions(last_seen_ms);
    CREATE INDEX process_sessions_by_user ON process_sessions(user, last_seen_ms);
    CREATE TABLE gpu_hourly (
        hour_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        util_mean REAL, util_min INTEGER, util_max INTEGER,
        mem_used_mean REAL, mem_used_max INTEGER,
        temp_mean REAL, temp_max INTEGER,
        power_mean_mw REAL, power_max_mw INTEGER,
        energy_wh REAL,
        PRIMARY KEY (hour_ms, gpu_index)
    ) WITHOUT ROWID;
    CREATE TABLE user_hourly (
        hour_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        user TEXT NOT NULL, uid INTEGER NOT NULL,
        gpu_seconds REAL NOT NULL, memory_gib_hours REAL NOT NULL, peak_memory_bytes INTEGER,
        processes INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, gpu_index, uid)
    ) WITHOUT ROWID;
    CREATE TABLE rolled_up_hours (hour_ms INTEGER PRIMARY KEY);",
    // 3: the tick count behind each hourly utilization mean, so that hours combine exactly;
    // and the keys of the records imported from a gpukill audit.jsonl, so none is imported
    // twice (pid -1 for a GPU record).
    "ALTER TABLE gpu_hourly ADD COLUMN util_ticks INTEGER;
    CREATE TABLE imported_records (
        time_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL, pid INTEGER NOT NULL,
        PRIMARY KEY (time_ms, gpu_index, pid)
    ) WITHOUT ROWID;",
    // 4: guard violations and policy changes in the audit trail. SQLite cannot change a
    // CHECK, so the table is copied into one that allows the new kinds (ids kept).
    "CREATE TABLE events_v4 (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('kill','reset','deny','violation','policy')),
        caller_uid INTEGER NOT NULL,
        caller_user TEXT NOT NULL,
        caller_pid INTEGER,
        transport TEXT NOT NULL,
        action TEXT NOT NULL,
        target_pid INTEGER,
        target_start_ms INTEGER,
        target_uid INTEGER,
        target_user TEXT,
        target_name TEXT,
        target_cmdline TEXT,
        target_gpu INTEGER,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    INSERT INTO events_v4 SELECT * FROM events;
    DROP TABLE events;
    ALTER TABLE events_v4 RENAME TO events;
    CREATE INDEX events_by_time ON events(time_ms);
    CREATE INDEX events_by_kind_time ON events(kind, time_ms);",
    // 5: the coordinator principal that forwarded a request (NULL for direct callers).
    "ALTER TABLE events ADD COLUMN via TEXT;",
    // 6: the upload outbox (one payload per closed hour), every attempt to send one, and
    // the count of entries dropped at the outbox's bound.
    "CREATE TABLE outbox (
        hour_ms INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        gpu_rows INTEGER NOT NULL,
        user_rows INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending','delivered','parked','rejected')),
        attempts INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        first_attempt_ms INTEGER,
        last_attempt_ms INTEGER,
        next_attempt_ms INTEGER,
        last_error TEXT,
        delivered_ms INTEGER
    );
    CREATE INDEX outbox_by_status ON outbox(status, hour_ms);
    CREATE TABLE send_attempts (
        id INTEGER PRIMARY KEY,
        hour_ms INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        http_status INTEGER,
        error TEXT,
        latency_ms INTEGER NOT NULL
    );
    CREATE INDEX send_attempts_by_hour ON send_attempts(hour_ms, id);
    CREATE TABLE outbox_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 7: GPU reservations (one row per GPU; `lease` groups the GPUs of one request; a row
    // is held while `end_ms` is NULL), and their events in the audit trail (the CHECK is
    // widened as in 4, ids kept).
    "CREATE TABLE events_v7 (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL
            CHECK (kind IN ('kill','reset','deny','violation','policy','reservation')),
        caller_uid INTEGER NOT NULL,
        caller_user TEXT NOT NULL,
        caller_pid INTEGER,
        transport TEXT NOT NULL,
        action TEXT NOT NULL,
        target_pid INTEGER,
        target_start_ms INTEGER,
        target_uid INTEGER,
        target_user TEXT,
        target_name TEXT,
        target_cmdline TEXT,
        target_gpu INTEGER,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        via TEXT
    );
    INSERT INTO events_v7 SELECT * FROM events;
    DROP TABLE events;
    ALTER TABLE events_v7 RENAME TO events;
    CREATE INDEX events_by_time ON events(time_ms);
    CREATE INDEX events_by_kind_time ON events(kind, time_ms);
    CREATE TABLE reservations (
        id INTEGER PRIMARY KEY,
        lease INTEGER NOT NULL,
        gpu_key TEXT NOT NULL,
        gpu_index INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('run','manual')),
        start_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        note TEXT NOT NULL,
        client_pid INTEGER,
        end_ms INTEGER,
        end_reason TEXT
    );
    CREATE INDEX reservations_by_end ON reservations(end_ms);",
    // 8: which node principal registered each node id with a coordinator, and under which
    // name, so that the binding outlives a coordinator restart.
    "CREATE TABLE node_registrations (
        node_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        principal TEXT NOT NULL,
        registered_ms INTEGER NOT NULL
    );",
    // 9: GPU health events (state changes, Xids, admins clearing a GPU) in the audit trail
    // (the CHECK is widened as in 4 and 7, ids kept).
    "CREATE TABLE events_v9 (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL
            CHECK (kind IN ('kill','reset','deny','violation','policy','reservation','health')),
        caller_uid INTEGER NOT NULL,
        caller_user TEXT NOT NULL,
        caller_pid INTEGER,
        transport TEXT NOT NULL,
        action TEXT NOT NULL,
        target_pid INTEGER,
        target_start_ms INTEGER,
        target_uid INTEGER,
        target_user TEXT,
        target_name TEXT,
        target_cmdline TEXT,
        target_gpu INTEGER,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        via TEXT
    );
    INSERT INTO events_v9 SELECT * FROM events;
    DROP TABLE events;
    ALTER TABLE events_v9 RENAME TO events;
    CREATE INDEX events_by_time ON events(time_ms);
    CREATE INDEX events_by_kind_time ON events(kind, time_ms);",
    // 10: GPUs an admin drained (`gpukillctl drain`): reserve and run do not hand them out
    // until they are undrained, which deletes the row. Keyed like reservations (the UUID, or
    // `index:N`); the drain and undrain events are `reservation` events.
    "CREATE TABLE drains (
        gpu_key TEXT PRIMARY KEY,
        gpu_index INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT NOT NULL,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    );",
];

/// The schema version this binary knows: the number of migrations.
pub(super) fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the migrations `conn` lacks, one transaction each.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    migrate_to(conn, path, MIGRATIONS.len())
}

/// Applies the migrations `conn` lacks up to schema version `target` (tests use it to build
/// a database as an older gpukilld left it). A database newer than [`known_version`] is
/// still refused; one between `target` and that is left as it is.
pub(super) fn migrate_to(
    conn: &mut Connection,
    path: &Path,
    target: usize,
) -> Result<(), StoreError> {
    let known = known_version();
    let migrations = &MIGRATIONS[..target.min(MIGRATIONS.len())];
    let mut migrated = false;
    loop {
        // Failing before a migration starts is failing to open (a lock held past the busy
        // timeout, a file that is not a database).
        let next = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // IMMEDIATE takes the write lock before reading the version, so two processes
        // opening the same file cannot both apply the same migration.
        // Not Store::write_tx: there is no Store yet, and a failure here is Open or Migrate.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(next)?;
        let found = user_version(&tx).map_err(next)?;
        if found > known {
            return Err(too_new(path, found));
        }
        let Ok(applied) = usize::try_from(found) else {
            // A negative user_version is not one of ours; treat it as foreign, not old.
            return Err(too_new(path, found));
        };
        let Some(sql) = migrations.get(applied) else {
            // Up to date; the empty transaction rolls back on drop.
            drop(tx);
            if migrated {
                // A migration that copies a table (4) leaves its old pages free; give them
                // back now rather than at the first retention pass. A no-op without
                // auto_vacuum = INCREMENTAL.
                conn.execute_batch("PRAGMA incremental_vacuum")
                    .map_err(|source| StoreError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
            return Ok(());
        };
        let version = found + 1;
        let failed = |source| StoreError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        migrated = true;
        tracing::info!(store = %path.display(), version, "store schema migrated");
    }
}

/// Refuses a database whose schema is newer than this binary knows (for read-only opens,
/// which do not migrate).
pub(super) fn check_not_too_new(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let found = user_version(conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if found > known_version() || found < 0 {
        return Err(too_new(path, found));
    }
    Ok(())
}

fn too_new(path: &Path, found: i64) -> StoreError {
    StoreError::TooNew {
        path: path.to_path_buf(),
        found,
        known: known_version(),
    }
}
