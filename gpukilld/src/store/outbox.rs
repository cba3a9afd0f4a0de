//! The upload outbox: each closed hour's usage, queued in the same transaction as the hour's
//! rollup, with its content hash and the idempotency key `node_id:hour`; and every attempt
//! to send it (`send_attempts`). Bounded by `max_hours` undelivered entries: past the bound
//! the oldest are dropped, counted (`outbox_counters`) and logged. Delivered entries are
//! kept for a retention period, then pruned.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::usage_payload::{self as payload, GpuHour, Payload, UserHour};

/// What the outbox needs to build payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOptions {
    /// This node's id.
    pub node_id: String,
    /// This node's name.
    pub node_name: String,
    /// Undelivered entries kept at most; the oldest beyond are dropped.
    pub max_hours: u32,
}

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// Waiting to be sent.
    Pending,
    /// The server stored it and echoed its hash.
    Delivered,
    /// Every allowed attempt failed; kept until an admin retries it.
    Parked,
    /// The server refused it.
    Rejected,
}

impl OutboxStatus {
    /// The name in the store and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Delivered => "delivered",
            OutboxStatus::Parked => "parked",
            OutboxStatus::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Option<OutboxStatus> {
        [
            OutboxStatus::Pending,
            OutboxStatus::Delivered,
            OutboxStatus::Parked,
            OutboxStatus::Rejected,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

impl ToSql for OutboxStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for OutboxStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        OutboxStatus::parse(text).ok_or_else(|| FromSqlError::Other(text.to_string().into()))
    }
}

/// One hour in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The hour's start.
    pub hour_ms: i64,
    /// Where it is.
    pub status: OutboxStatus,
    /// Attempts since it was queued (or retried by an admin).
    pub attempts: u32,
    /// When it was queued.
    pub created_ms: i64,
    /// The first attempt.
    pub first_attempt_ms: Option<i64>,
    /// The last attempt.
    pub last_attempt_ms: Option<i64>,
    /// When a pending entry is due.
    pub next_attempt_ms: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the server confirmed it.
    pub delivered_ms: Option<i64>,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
    /// Payload size.
    pub payload_bytes: u64,
    /// GPU rows in the payload.
    pub gpu_rows: u32,
    /// User rows in the payload.
    pub user_rows: u32,
}

/// An entry due for sending, with its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DueEntry {
    /// The entry.
    pub entry: OutboxEntry,
    /// The node id it is keyed by.
    pub node_id: String,
    /// The payload, as hashed.
    pub payload: Vec<u8>,
}

/// One attempt to send an hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAttemptRow {
    /// 1 for the first attempt since the entry was queued or retried.
    pub attempt: u32,
    /// When.
    pub time_ms: i64,
    /// The HTTP status, when the server answered.
    pub http_status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: u64,
}

/// What came of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Stored by the server, hash echoed.
    Delivered {
        /// The HTTP status.
        http_status: u16,
    },
    /// Failed in a way worth retrying: at `next_attempt_ms`, unless attempts are used up.
    Failed {
        /// The HTTP status, when the server answered.
        http_status: Option<u16>,
        /// Why.
        error: String,
        /// When to try again.
        next_attempt_ms: i64,
    },
    /// The server refused it for good.
    Rejected {
        /// The HTTP status.
        http_status: u16,
        /// The server's message.
        error: String,
    },
}

/// Counts over the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxSummary {
    /// Pending entries.
    pub pending: u64,
    /// Delivered entries still kept.
    pub delivered: u64,
    /// Parked entries.
    pub parked: u64,
    /// Rejected entries.
    pub rejected: u64,
    /// Entries dropped at the bound since the store was created.
    pub dropped_total: u64,
}

const ENTRY_COLUMNS: &str = "hour_ms, status, attempts, created_ms, first_attempt_ms, \
    last_attempt_ms, next_attempt_ms, last_error, delivered_ms, sha256, length(payload), \
    gpu_rows, user_rows";

fn entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        hour_ms: row.get(0)?,
        status: row.get(1)?,
        attempts: row.get(2)?,
        created_ms: row.get(3)?,
        first_attempt_ms: row.get(4)?,
        last_attempt_ms: row.get(5)?,
        next_attempt_ms: row.get(6)?,
        last_error: row.get(7)?,
        delivered_ms: row.get(8)?,
        sha256: row.get(9)?,
        payload_bytes: row.get(10)?,
        gpu_rows: row.get(11)?,
        user_rows: row.get(12)?,
    })
}

/// The payload of the hour at `hour_ms`, from its rollup rows (read inside the rollup's
/// transaction).
fn build_payload(
    tx: &Transaction<'_>,
    hour_ms: i64,
    options: &OutboxOptions,
) -> rusqlite::Result<Payload> {
    let mut gpus = tx.prepare_cached(
        "SELECT gpu_index, samples, util_mean, util_min, util_max, mem_used_mean, mem_used_max,
                temp_mean, temp_max, power_mean_mw, power_max_mw, energy_wh
         FROM gpu_hourly WHERE hour_ms = ?1 ORDER BY gpu_index",
    )?;
    let gpus = gpus
        .query_map([hour_ms], |row| {
            Ok(GpuHour {
                gpu_index: row.get(0)?,
                samples: row.get(1)?,
                util_mean_pct: row.get(2)?,
                util_min_pct: row.get(3)?,
                util_max_pct: row.get(4)?,
                mem_used_mean_bytes: row.get(5)?,
                mem_used_max_bytes: row.get(6)?,
                temp_mean_c: row.get(7)?,
                temp_max_c: row.get(8)?,
                power_mean_w: row.get::<_, Option<f64>>(9)?.map(|mw| mw / 1000.0),
                power_max_w: row.get::<_, Option<f64>>(10)?.map(|mw| mw / 1000.0),
                energy_wh: row.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut users = tx.prepare_cached(
        "SELECT gpu_index, user, uid, gpu_seconds, memory_gib_hours, peak_memory_bytes, processes
         FROM user_hourly WHERE hour_ms = ?1 ORDER BY gpu_index, uid",
    )?;
    let users = users
        .query_map([hour_ms], |row| {
            Ok(UserHour {
                gpu_index: row.get(0)?,
                user: row.get(1)?,
                uid: row.get(2)?,
                gpu_seconds: row.get(3)?,
                memory_gib_hours: row.get(4)?,
                peak_memory_bytes: row.get(5)?,
                processes: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Payload {
        schema: payload::SCHEMA.to_string(),
        node_id: options.node_id.clone(),
        node_name: options.node_name.clone(),
        hour_unix_ms: hour_ms,
        hour: super::rfc3339_ms(hour_ms),
        gpus,
        users,
    })
}

/// Queues the hour at `hour_ms` (just rolled up in `tx`): a new entry, or, when the hour was
/// rolled up again and its payload changed, the entry pending again with the new payload
/// (the server replaces the hour). Then drops the oldest undelivered entries beyond the
/// bound. Returns the hours dropped.
pub(super) fn queue_hour(
    tx: &Transaction<'_>,
    hour_ms: i64,
    options: &OutboxOptions,
    now_ms: i64,
) -> rusqlite::Result<Vec<i64>> {
    let payload = build_payload(tx, hour_ms, options)?;
    let bytes = payload.to_json();
    let sha256 = payload::sha256_hex(&bytes);
    let existing: Option<String> = tx
        .query_row(
            "SELECT sha256 FROM outbox WHERE hour_ms = ?1",
            [hour_ms],
            |row| row.get(0),
        )
        .optional()?;
    match existing {
        Some(hash) if hash == sha256 => {}
        Some(_) => {
            tx.execute(
                "UPDATE outbox SET payload = ?2, sha256 = ?3, gpu_rows = ?4, user_rows = ?5,
                    status = 'pending', attempts = 0, next_attempt_ms = ?6, delivered_ms = NULL,
                    last_error = 'the hour was rolled up again: its new usage is sent again'
                 WHERE hour_ms = ?1",
                rusqlite::params![
                    hour_ms,
                    bytes,
                    sha256,
                    payload.gpus.len(),
                    payload.users.len(),
                    now_ms
                ],
            )?;
        }
        None => {
            tx.execute(
                "INSERT INTO outbox (hour_ms, node_id, payload, sha256, gpu_rows, user_rows,
                    status, attempts, created_ms, next_attempt_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7)",
                rusqlite::params![
                    hour_ms,
                    options.node_id,
                    bytes,
                    sha256,
                    payload.gpus.len(),
                    payload.users.len(),
                    now_ms
                ],
            )?;
        }
    }
    let mut over = tx.prepare_cached(
        "SELECT hour_ms FROM outbox WHERE status != 'delivered'
         ORDER BY hour_ms DESC LIMIT -1 OFFSET ?1",
    )?;
    let dropped = over
        .query_map([options.max_hours], |row| row.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    if !dropped.is_empty() {
        for hour in &dropped {
            tx.execute("DELETE FROM outbox WHERE hour_ms = ?1", [hour])?;
            tx.execute("DELETE FROM send_attempts WHERE hour_ms = ?1", [hour])?;
        }
        tx.execute(
            "INSERT INTO outbox_counters (name, value) VALUES ('dropped', ?1)
             ON CONFLICT (name) DO UPDATE SET value = value + ?1",
            [dropped.len() as i64],
        )?;
    }
    Ok(dropped)
}

impl Store {
    /// The oldest pending entry, with its payload, when it is due at `now_ms`; else when it
    /// will be. Hours go out in order: a newer hour waits behind an older one that is
    /// backing off (until that one is delivered, rejected or parked).
    pub fn outbox_due(&self, now_ms: i64) -> Result<(Option<DueEntry>, Option<i64>), StoreError> {
        let oldest = self
            .conn
            .query_row(
                &format!(
                    "SELECT {ENTRY_COLUMNS}, node_id, payload FROM outbox
                     WHERE status = 'pending' ORDER BY hour_ms LIMIT 1"
                ),
                [],
                |row| {
                    Ok(DueEntry {
                        entry: entry(row)?,
                        node_id: row.get(13)?,
                        payload: row.get(14)?,
                    })
                },
            )
            .optional()
            .map_err(StoreError::Read)?;
        Ok(match oldest {
            Some(due) if due.entry.next_attempt_ms.unwrap_or(0) <= now_ms => (Some(due), None),
            Some(due) => (None, due.entry.next_attempt_ms),
            None => (None, None),
        })
    }

    /// Records an attempt at the hour `hour_ms` made at `time_ms`; a failure with
    /// `max_attempts` used up parks the entry. Returns its new status (`None`: the entry is
    /// gone, dropped at the bound meanwhile).
    pub fn outbox_record(
        &mut self,
        hour_ms: i64,
        time_ms: i64,
        latency_ms: u64,
        result: &AttemptResult,
        max_attempts: u32,
    ) -> Result<Option<OutboxStatus>, StoreError> {
        self.write_tx(|tx| {
            let attempts: Option<u32> = tx
                .query_row(
                    "SELECT attempts FROM outbox WHERE hour_ms = ?1",
                    [hour_ms],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::Write)?;
            let Some(attempts) = attempts else {
                return Ok(None);
            };
            let attempt = attempts + 1;
            let (http_status, error) = match result {
                AttemptResult::Delivered { http_status } => (Some(*http_status), None),
                AttemptResult::Failed {
                    http_status, error, ..
                } => (*http_status, Some(error.clone())),
                AttemptResult::Rejected { http_status, error } => {
                    (Some(*http_status), Some(error.clone()))
                }
            };
            tx.execute(
                "INSERT INTO send_attempts (hour_ms, attempt, time_ms, http_status, error, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![hour_ms, attempt, time_ms, http_status, error, latency_ms],
            )
            .map_err(StoreError::Write)?;
            let (status, next, delivered) = match result {
                AttemptResult::Delivered { .. } => (OutboxStatus::Delivered, None, Some(time_ms)),
                AttemptResult::Rejected { .. } => (OutboxStatus::Rejected, None, None),
                AttemptResult::Failed {
                    next_attempt_ms, ..
                } if attempt < max_attempts => (OutboxStatus::Pending, Some(*next_attempt_ms), None),
                AttemptResult::Failed { .. } => (OutboxStatus::Parked, None, None),
            };
            tx.execute(
                "UPDATE outbox SET attempts = ?2, status = ?3, next_attempt_ms = ?4,
                    first_attempt_ms = coalesce(first_attempt_ms, ?5), last_attempt_ms = ?5,
                    last_error = ?6, delivered_ms = ?7
                 WHERE hour_ms = ?1",
                rusqlite::params![hour_ms, attempt, status, next, time_ms, error, delivered],
            )
            .map_err(StoreError::Write)?;
            Ok(Some(status))
        })
    }

    /// Entries (of `status`, or all), the newest `limit` hours, oldest first; and the
    /// counts over the whole outbox.
    pub fn outbox_list(
        &self,
        status: Option<OutboxStatus>,
        limit: usize,
    ) -> Result<(Vec<OutboxEntry>, OutboxSummary), StoreError> {
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM outbox WHERE ?1 IS NULL OR status = ?1
                 ORDER BY hour_ms DESC LIMIT ?2"
            ))
            .map_err(StoreError::Read)?;
        let mut entries = select
            .query_map(rusqlite::params![status, limit as i64], entry)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(StoreError::Read)?;
        entries.reverse();
        Ok((entries, self.outbox_summary()?))
    }

    /// Counts over the whole outbox.
    pub fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let mut summary = OutboxSummary::default();
        let mut counts = self
            .conn
            .prepare_cached("SELECT status, count(*) FROM outbox GROUP BY status")
            .map_err(StoreError::Read)?;
        let rows = counts
            .query_map([], |row| {
                Ok((row.get::<_, OutboxStatus>(0)?, row.get::<_, u64>(1)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(StoreError::Read)?;
        for (status, count) in rows {
            match status {
                OutboxStatus::Pending => summary.pending = count,
                OutboxStatus::Delivered => summary.delivered = count,
                OutboxStatus::Parked => summary.parked = count,
                OutboxStatus::Rejected => summary.rejected = count,
            }
        }
        summary.dropped_total = self
            .conn
            .query_row(
                "SELECT value FROM outbox_counters WHERE name = 'dropped'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::Read)?
            .unwrap_or(0);
        Ok(summary)
    }

    /// The entry of the hour containing `hour_ms`, its attempts (oldest first) and payload.
    pub fn outbox_show(&self, hour_ms: i64) -> Result<Option<ShownUpload>, StoreError> {
        let hour_ms = super::history::hour_start(hour_ms);
        let found = self
            .conn
            .query_row(
                &format!("SELECT {ENTRY_COLUMNS}, payload FROM outbox WHERE hour_ms = ?1"),
                [hour_ms],
                |row| Ok((entry(row)?, row.get::<_, Vec<u8>>(13)?)),
            )
            .optional()
            .map_err(StoreError::Read)?;
        let Some((entry, payload)) = found else {
            return Ok(None);
        };
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT attempt, time_ms, http_status, error, latency_ms FROM send_attempts
                 WHERE hour_ms = ?1 ORDER BY id",
            )
            .map_err(StoreError::Read)?;
        let attempts = select
            .query_map([hour_ms], |row| {
                Ok(SendAttemptRow {
                    attempt: row.get(0)?,
                    time_ms: row.get(1)?,
                    http_status: row.get(2)?,
                    error: row.get(3)?,
                    latency_ms: row.get(4)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(StoreError::Read)?;
        Ok(Some(ShownUpload {
            entry,
            attempts,
            payload,
        }))
    }

    /// Makes parked or rejected entries pending again, their attempts starting over: the
    /// hour containing `hour_ms`, or every parked entry. Returns the hours requeued; an hour
    /// that is not parked or rejected is an error naming its status.
    pub fn outbox_retry(
        &mut self,
        hour_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Result<Vec<i64>, RetryRefusal>, StoreError> {
        self.write_tx(|tx| {
            let hours: Vec<i64> = match hour_ms {
                Some(hour_ms) => {
                    let hour_ms = super::history::hour_start(hour_ms);
                    let status: Option<OutboxStatus> = tx
                        .query_row(
                            "SELECT status FROM outbox WHERE hour_ms = ?1",
                            [hour_ms],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(StoreError::Write)?;
                    match status {
                        None => return Ok(Err(RetryRefusal::NotFound(hour_ms))),
                        Some(OutboxStatus::Parked | OutboxStatus::Rejected) => vec![hour_ms],
                        Some(status) => return Ok(Err(RetryRefusal::NotStuck(hour_ms, status))),
                    }
                }
                None => {
                    let mut select = tx
                        .prepare(
                            "SELECT hour_ms FROM outbox WHERE status = 'parked' ORDER BY hour_ms",
                        )
                        .map_err(StoreError::Write)?;
                    select
                        .query_map([], |row| row.get(0))
                        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                        .map_err(StoreError::Write)?
                }
            };
            for hour in &hours {
                tx.execute(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_ms = ?2
                     WHERE hour_ms = ?1",
                    [*hour, now_ms],
                )
                .map_err(StoreError::Write)?;
            }
            Ok(Ok(hours))
        })
    }

    /// Deletes delivered entries (and their attempts) delivered before `before_ms`.
    pub fn outbox_prune_delivered(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        self.write_tx(|tx| {
            tx.execute(
                "DELETE FROM send_attempts WHERE hour_ms IN
                    (SELECT hour_ms FROM outbox WHERE status = 'delivered' AND delivered_ms < ?1)",
                [before_ms],
            )
            .map_err(StoreError::Write)?;
            let pruned = tx
                .execute(
                    "DELETE FROM outbox WHERE status = 'delivered' AND delivered_ms < ?1",
                    [before_ms],
                )
                .map_err(StoreError::Write)?;
            Ok(pruned)
        })
    }
}

/// One hour's entry with everything about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownUpload {
    /// The entry.
    pub entry: OutboxEntry,
    /// Every attempt, oldest first.
    pub attempts: Vec<SendAttemptRow>,
    /// The payload, as sent.
    pub payload: Vec<u8>,
}

/// Why an hour cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryRefusal {
    /// The hour has no entry.
    NotFound(i64),
    /// The hour is pending or delivered.
    NotStuck(i64, OutboxStatus),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::store::GpuSampleRow;

    const HOUR: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

    fn sample(time_ms: i64, util: f64) -> GpuSampleRow {
        GpuSampleRow {
            time_ms,
            gpu_index: 0,
            uuid: Some("GPU-0".into()),
            pci_bus_id: Some("00000000:07:00.0".into()),
            name: Some("A100".into()),
            ticks: 5,
            util_mean: Some(util),
            util_max: Some(90),
            mem_util_mean: None,
            mem_used_max: Some(1 << 30),
            mem_total: Some(80 << 30),
            temp_mean: None,
            temp_max: None,
            power_mean_mw: Some(100_000.0),
            power_max_mw: Some(120_000),
            fan_mean: None,
            sm_clock_mean: None,
            mem_clock_mean: None,
        }
    }

    fn options(max_hours: u32) -> OutboxOptions {
        OutboxOptions {
            node_id: "a".repeat(32),
            node_name: "n1".into(),
            max_hours,
        }
    }

    #[test]
    fn a_revised_hour_is_sent_again_and_an_unchanged_one_is_not() {
        let mut store = Store::open_in_memory().unwrap();
        let interval = Duration::from_secs(10);
        store.write_history(&[sample(HOUR, 10.0)], &[]).unwrap();
        store
            .rollup_hour(HOUR, interval, Some(&options(10)))
            .unwrap();
        let (due, _) = store.outbox_due(i64::MAX).unwrap();
        let due = due.expect("queued");
        let payload: Payload = serde_json::from_slice(&due.payload).unwrap();
        assert_eq!((payload.hour_unix_ms, payload.gpus.len()), (HOUR, 1));
        assert_eq!(payload::sha256_hex(&due.payload), due.entry.sha256);
        let status = store
            .outbox_record(
                HOUR,
                1,
                5,
                &AttemptResult::Delivered { http_status: 200 },
                10,
            )
            .unwrap();
        assert_eq!(status, Some(OutboxStatus::Delivered));
        // Rolled up again, same rows: still delivered.
        store
            .rollup_hour(HOUR, interval, Some(&options(10)))
            .unwrap();
        assert_eq!(store.outbox_summary().unwrap().delivered, 1);
        // New rows in the hour: its new usage is pending again, attempts start over.
        store
            .write_history(&[sample(HOUR + 10_000, 90.0)], &[])
            .unwrap();
        store
            .rollup_hour(HOUR, interval, Some(&options(10)))
            .unwrap();
        let (entries, summary) = store.outbox_list(None, 10).unwrap();
        assert_eq!((summary.pending, summary.delivered), (1, 0));
        assert_eq!(entries[0].attempts, 0);
        assert!(
            entries[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("rolled up again")
        );
    }

    #[test]
    fn failures_back_off_then_park_and_an_admin_retry_starts_over() {
        let mut store = Store::open_in_memory().unwrap();
        store.write_history(&[sample(HOUR, 10.0)], &[]).unwrap();
        store
            .rollup_hour(HOUR, Duration::from_secs(10), Some(&options(10)))
            .unwrap();
        let failed = |next| AttemptResult::Failed {
            http_status: Some(503),
            error: "HTTP 503".into(),
            next_attempt_ms: next,
        };
        assert_eq!(
            store.outbox_record(HOUR, 10, 1, &failed(500), 2).unwrap(),
            Some(OutboxStatus::Pending)
        );
        // Not due before its next attempt.
        assert_eq!(store.outbox_due(499).unwrap(), (None, Some(500)));
        assert_eq!(
            store.outbox_record(HOUR, 600, 1, &failed(900), 2).unwrap(),
            Some(OutboxStatus::Parked)
        );
        assert_eq!(store.outbox_due(i64::MAX).unwrap(), (None, None));
        assert_eq!(
            store.outbox_retry(Some(HOUR + 5), 1_000).unwrap(),
            Ok(vec![HOUR])
        );
        let shown = store.outbox_show(HOUR).unwrap().unwrap();
        assert_eq!(shown.attempts.len(), 2);
        let (entries, _) = store.outbox_list(Some(OutboxStatus::Pending), 10).unwrap();
        assert_eq!(entries[0].attempts, 0);
        assert_eq!(
            store.outbox_retry(Some(HOUR), 1_000).unwrap(),
            Err(RetryRefusal::NotStuck(HOUR, OutboxStatus::Pending))
        );
        assert_eq!(
            store.outbox_retry(Some(HOUR + 3_600_000), 1_000).unwrap(),
            Err(RetryRefusal::NotFound(HOUR + 3_600_000))
        );
    }
}
