//! The sender's books: which entry is due, each attempt and what came of it (parking an
//! entry whose attempts are used up), an admin's retry, and pruning delivered entries.

use rusqlite::OptionalExtension;

use super::{ENTRY_COLUMNS, OutboxEntry, OutboxStatus, entry};
use crate::store::{Store, StoreError, hour_start};

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
                    let hour_ms = hour_start(hour_ms);
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
    use std::time::Duration;

    use super::super::tests::{HOUR, options, sample};
    use super::*;

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
