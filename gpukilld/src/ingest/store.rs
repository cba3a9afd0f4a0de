//! The ingest side's own SQLite file (`<state_dir>/ingest.db`): every node's hours, keyed
//! by (node id, hour, GPU[, user]) so that a repeated delivery is a no-op, and a revised
//! hour (the node rolled it up again) replaces the old one.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::usage_payload::Payload;

/// Why an ingest database operation failed.
#[derive(Debug, thiserror::Error)]
#[error("ingest database {path}: {source}")]
pub struct IngestStoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS batches (
        node_id TEXT NOT NULL, hour_ms INTEGER NOT NULL,
        node_name TEXT NOT NULL, sha256 TEXT NOT NULL,
        received_ms INTEGER NOT NULL, principal TEXT NOT NULL, revisions INTEGER NOT NULL,
        PRIMARY KEY (node_id, hour_ms)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS gpu_hours (
        node_id TEXT NOT NULL, hour_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        samples INTEGER NOT NULL, util_mean_pct REAL, util_min_pct INTEGER, util_max_pct INTEGER,
        mem_used_mean_bytes REAL, mem_used_max_bytes INTEGER, temp_mean_c REAL, temp_max_c INTEGER,
        power_mean_w REAL, power_max_w REAL, energy_wh REAL,
        PRIMARY KEY (node_id, hour_ms, gpu_index)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS user_hours (
        node_id TEXT NOT NULL, hour_ms INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        uid INTEGER NOT NULL, user TEXT NOT NULL, gpu_seconds REAL NOT NULL,
        memory_gib_hours REAL NOT NULL, peak_memory_bytes INTEGER, processes INTEGER NOT NULL,
        PRIMARY KEY (node_id, hour_ms, gpu_index, uid)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS user_hours_by_hour ON user_hours(hour_ms);
    CREATE INDEX IF NOT EXISTS gpu_hours_by_hour ON gpu_hours(hour_ms);";

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// New, or a revision of an hour: stored.
    Stored {
        /// Rows written.
        rows: usize,
    },
    /// The same content again: nothing changed.
    Duplicate,
}

/// A GPU hour as GET returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuRow {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// Hour start, ms.
    pub hour_unix_ms: i64,
    /// GPU index.
    pub gpu_index: u32,
    /// Samples.
    pub samples: u64,
    /// Mean utilization.
    pub util_mean_pct: Option<f64>,
    /// Highest utilization.
    pub util_max_pct: Option<u32>,
    /// Most memory used.
    pub mem_used_max_bytes: Option<u64>,
    /// Mean power.
    pub power_mean_w: Option<f64>,
    /// Energy.
    pub energy_wh: Option<f64>,
}

/// A user's GPU hour as GET returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// Hour start, ms.
    pub hour_unix_ms: i64,
    /// GPU index.
    pub gpu_index: u32,
    /// User name.
    pub user: String,
    /// Uid on the node.
    pub uid: u32,
    /// GPU seconds.
    pub gpu_seconds: f64,
    /// Memory GiB-hours.
    pub memory_gib_hours: f64,
    /// Peak process memory.
    pub peak_memory_bytes: Option<u64>,
    /// Processes.
    pub processes: u64,
}

/// What GET asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// From this hour (ms, inclusive).
    pub since_ms: Option<i64>,
    /// Before this time (ms).
    pub until_ms: Option<i64>,
    /// Node name or id.
    pub node: Option<String>,
    /// User name (user rows only).
    pub user: Option<String>,
    /// Only these node ids (what a node principal may read); `None`: every node.
    pub nodes: Option<Vec<String>>,
}

/// The ingest database.
pub struct IngestStore {
    conn: Connection,
    path: String,
}

impl IngestStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<IngestStore, IngestStoreError> {
        let error = |source| IngestStoreError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(error)?;
        conn.execute_batch(SCHEMA).map_err(error)?;
        Ok(IngestStore {
            conn,
            path: path.display().to_string(),
        })
    }

    fn error(&self, source: rusqlite::Error) -> IngestStoreError {
        IngestStoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores `payload` (whose body hashes to `sha256`) from `principal`, in one
    /// transaction: a no-op when the hour is stored with the same hash, a replacement when
    /// the hash differs.
    pub fn receive(
        &mut self,
        payload: &Payload,
        sha256: &str,
        principal: &str,
        now_ms: i64,
    ) -> Result<Received, IngestStoreError> {
        let path = self.path.clone();
        let error = |source| IngestStoreError {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let stored: Option<(String, i64)> = tx
            .query_row(
                "SELECT sha256, revisions FROM batches WHERE node_id = ?1 AND hour_ms = ?2",
                rusqlite::params![payload.node_id, payload.hour_unix_ms],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(error)?;
        let revisions = match stored {
            Some((hash, _)) if hash == sha256 => return Ok(Received::Duplicate),
            Some((_, revisions)) => revisions + 1,
            None => 0,
        };
        let key = rusqlite::params![payload.node_id, payload.hour_unix_ms];
        tx.execute(
            "DELETE FROM gpu_hours WHERE node_id = ?1 AND hour_ms = ?2",
            key,
        )
        .map_err(error)?;
        tx.execute(
            "DELETE FROM user_hours WHERE node_id = ?1 AND hour_ms = ?2",
            key,
        )
        .map_err(error)?;
        {
            let mut gpus = tx
                .prepare_cached(
                    "INSERT INTO gpu_hours VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(error)?;
            for gpu in &payload.gpus {
                gpus.execute(rusqlite::params![
                    payload.node_id,
                    payload.hour_unix_ms,
                    gpu.gpu_index,
                    gpu.samples,
                    gpu.util_mean_pct,
                    gpu.util_min_pct,
                    gpu.util_max_pct,
                    gpu.mem_used_mean_bytes,
                    gpu.mem_used_max_bytes,
                    gpu.temp_mean_c,
                    gpu.temp_max_c,
                    gpu.power_mean_w,
                    gpu.power_max_w,
                    gpu.energy_wh,
                ])
                .map_err(error)?;
            }
            let mut users = tx
                .prepare_cached(
                    "INSERT INTO user_hours VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(error)?;
            for user in &payload.users {
                users
                    .execute(rusqlite::params![
                        payload.node_id,
                        payload.hour_unix_ms,
                        user.gpu_index,
                        user.uid,
                        user.user,
                        user.gpu_seconds,
                        user.memory_gib_hours,
                        user.peak_memory_bytes,
                        user.processes,
                    ])
                    .map_err(error)?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO batches VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                payload.node_id,
                payload.hour_unix_ms,
                payload.node_name,
                sha256,
                now_ms,
                principal,
                revisions
            ],
        )
        .map_err(error)?;
        tx.commit().map_err(error)?;
        Ok(Received::Stored {
            rows: payload.gpus.len() + payload.users.len(),
        })
    }

    /// The stored GPU and user rows that match `query`, by hour, node and GPU.
    pub fn query(&self, query: &Query) -> Result<(Vec<GpuRow>, Vec<UserRow>), IngestStoreError> {
        let since = query.since_ms.unwrap_or(i64::MIN);
        let until = query.until_ms.unwrap_or(i64::MAX);
        let node = query.node.clone();
        // One parameter for any number of ids: a JSON array, read by json_each.
        let nodes = query
            .nodes
            .as_ref()
            .map(|nodes| serde_json::to_string(nodes).unwrap_or_default());
        let mut gpus = self
            .conn
            .prepare_cached(
                "SELECT g.node_id, b.node_name, g.hour_ms, g.gpu_index, g.samples, g.util_mean_pct,
                        g.util_max_pct, g.mem_used_max_bytes, g.power_mean_w, g.energy_wh
                 FROM gpu_hours g JOIN batches b USING (node_id, hour_ms)
                 WHERE g.hour_ms >= ?1 AND g.hour_ms < ?2
                   AND (?3 IS NULL OR g.node_id = ?3 OR b.node_name = ?3)
                   AND (?4 IS NULL OR g.node_id IN (SELECT value FROM json_each(?4)))
                 ORDER BY g.hour_ms, b.node_name, g.gpu_index",
            )
            .map_err(|e| self.error(e))?;
        let gpu_rows = if query.user.is_some() {
            Vec::new()
        } else {
            gpus.query_map(rusqlite::params![since, until, node, nodes], |row| {
                Ok(GpuRow {
                    node_id: row.get(0)?,
                    node_name: row.get(1)?,
                    hour_unix_ms: row.get(2)?,
                    gpu_index: row.get(3)?,
                    samples: row.get(4)?,
                    util_mean_pct: row.get(5)?,
                    util_max_pct: row.get(6)?,
                    mem_used_max_bytes: row.get(7)?,
                    power_mean_w: row.get(8)?,
                    energy_wh: row.get(9)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.error(e))?
        };
        let mut users = self
            .conn
            .prepare_cached(
                "SELECT u.node_id, b.node_name, u.hour_ms, u.gpu_index, u.user, u.uid,
                        u.gpu_seconds, u.memory_gib_hours, u.peak_memory_bytes, u.processes
                 FROM user_hours u JOIN batches b USING (node_id, hour_ms)
                 WHERE u.hour_ms >= ?1 AND u.hour_ms < ?2
                   AND (?3 IS NULL OR u.node_id = ?3 OR b.node_name = ?3)
                   AND (?4 IS NULL OR u.user = ?4)
                   AND (?5 IS NULL OR u.node_id IN (SELECT value FROM json_each(?5)))
                 ORDER BY u.hour_ms, b.node_name, u.gpu_index, u.uid",
            )
            .map_err(|e| self.error(e))?;
        let user_rows = users
            .query_map(
                rusqlite::params![since, until, node, query.user, nodes],
                |row| {
                    Ok(UserRow {
                        node_id: row.get(0)?,
                        node_name: row.get(1)?,
                        hour_unix_ms: row.get(2)?,
                        gpu_index: row.get(3)?,
                        user: row.get(4)?,
                        uid: row.get(5)?,
                        gpu_seconds: row.get(6)?,
                        memory_gib_hours: row.get(7)?,
                        peak_memory_bytes: row.get(8)?,
                        processes: row.get(9)?,
                    })
                },
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.error(e))?;
        Ok((gpu_rows, user_rows))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::usage_payload::{SCHEMA, UserHour};

    fn payload(gpu_seconds: f64) -> Payload {
        Payload {
            schema: SCHEMA.into(),
            node_id: "a".repeat(32),
            node_name: "n1".into(),
            hour_unix_ms: 3_600_000,
            hour: "1970-01-01T01:00:00Z".into(),
            gpus: Vec::new(),
            users: vec![UserHour {
                gpu_index: 0,
                user: "alice".into(),
                uid: 1000,
                gpu_seconds,
                memory_gib_hours: 1.0,
                peak_memory_bytes: None,
                processes: 1,
            }],
        }
    }

    #[test]
    fn a_repeat_is_a_no_op_and_a_revision_replaces_the_hour() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = IngestStore::open(&dir.path().join("ingest.db")).unwrap();
        let first = payload(100.0);
        assert_eq!(
            store.receive(&first, "h1", "node", 1).unwrap(),
            Received::Stored { rows: 1 }
        );
        assert_eq!(
            store.receive(&first, "h1", "node", 2).unwrap(),
            Received::Duplicate
        );
        let revised = payload(250.0);
        assert_eq!(
            store.receive(&revised, "h2", "node", 3).unwrap(),
            Received::Stored { rows: 1 }
        );
        let (_, users) = store.query(&Query::default()).unwrap();
        assert_eq!(users.len(), 1, "replaced, not added");
        assert_eq!(users[0].gpu_seconds, 250.0);
        let (_, users) = store
            .query(&Query {
                user: Some("bob".into()),
                ..Query::default()
            })
            .unwrap();
        assert!(users.is_empty());
    }

    #[test]
    fn a_node_scope_returns_only_those_nodes_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = IngestStore::open(&dir.path().join("ingest.db")).unwrap();
        let mut other = payload(50.0);
        other.node_id = "b".repeat(32);
        store.receive(&payload(100.0), "h1", "n1", 1).unwrap();
        store.receive(&other, "h2", "n2", 1).unwrap();
        let scoped = |nodes: Vec<String>| {
            store
                .query(&Query {
                    nodes: Some(nodes),
                    ..Query::default()
                })
                .unwrap()
                .1
        };
        let users = scoped(vec!["b".repeat(32)]);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].node_id, "b".repeat(32));
        assert!(scoped(Vec::new()).is_empty());
        assert_eq!(scoped(vec!["a".repeat(32), "b".repeat(32)]).len(), 2);
        assert_eq!(store.query(&Query::default()).unwrap().1.len(), 2);
    }
}
