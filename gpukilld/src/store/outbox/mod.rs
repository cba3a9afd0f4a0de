//! The upload outbox: each closed hour's usage, queued in the same transaction as the hour's
//! rollup, with its content hash and the idempotency key `node_id:hour`; and every attempt
//! to send it (`send_attempts`). Bounded by `max_hours` undelivered entries: past the bound
//! the oldest are dropped, counted (`outbox_counters`) and logged. Delivered entries are
//! kept for a retention period, then pruned.
//!
//! This file holds the entries and the reads (`outbox_list`, `outbox_summary`,
//! `outbox_show`); [`queue`] builds and queues an hour's payload (the rollup's side),
//! [`delivery`] keeps the sender's books (what is due, each attempt, an admin's retry,
//! pruning what was delivered).

mod delivery;
mod queue;

use rusqlite::OptionalExtension;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

pub use delivery::{AttemptResult, DueEntry, RetryRefusal};
pub use queue::OutboxOptions;
pub(super) use queue::queue_hour;

use super::{Store, StoreError};

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

impl Store {
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
        let hour_ms = super::hour_start(hour_ms);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::GpuSampleRow;

    pub(super) const HOUR: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

    pub(super) fn sample(time_ms: i64, util: f64) -> GpuSampleRow {
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

    pub(super) fn options(max_hours: u32) -> OutboxOptions {
        OutboxOptions {
            node_id: "a".repeat(32),
            node_name: "n1".into(),
            max_hours,
        }
    }
}
