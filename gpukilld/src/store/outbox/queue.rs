//! Queueing an hour for upload: its payload built from the rollup rows, inside the rollup's
//! transaction, and the outbox's bound kept.

use rusqlite::{OptionalExtension, Transaction};

use crate::store::rfc3339_ms;
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
        hour: rfc3339_ms(hour_ms),
        gpus,
        users,
    })
}

/// Queues the hour at `hour_ms` (just rolled up in `tx`): a new entry, or, when the hour was
/// rolled up again and its payload changed, the entry pending again with the new payload
/// (the server replaces the hour). Then drops the oldest undelivered entries beyond the
/// bound. Returns the hours dropped.
pub(in crate::store) fn queue_hour(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{HOUR, options, sample};
    use super::*;
    use crate::store::{AttemptResult, OutboxStatus, Store};

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
}
