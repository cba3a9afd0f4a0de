//! GPU reservations in the store: one row per GPU of a reservation, held while `end_ms` is
//! NULL. The daemon's `reservations` module is the authority while it runs; these rows let
//! reservations survive a restart and answer "who held which GPU when".

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::events::insert_events_in;
use super::{NewEvent, Store, StoreError};

/// How a reservation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// `gpukillctl run`: held while its client lives.
    Run,
    /// `gpukillctl reserve`: held until it expires or is released.
    Manual,
}

impl LeaseKind {
    /// The name stored in the `kind` column and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Run => "run",
            LeaseKind::Manual => "manual",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "run" => Some(LeaseKind::Run),
            "manual" => Some(LeaseKind::Manual),
            _ => None,
        }
    }
}

/// One GPU of a reservation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    /// The reservation (request) it belongs to.
    pub lease: i64,
    /// The GPU: its UUID, or `index:N` when the vendor reports none.
    pub gpu_key: String,
    /// The GPU's index when it was reserved.
    pub gpu_index: u32,
    /// The holder's uid.
    pub uid: u32,
    /// The holder's user name.
    pub user: String,
    /// run or manual.
    pub kind: LeaseKind,
    /// When it began, ms since the Unix epoch.
    pub start_ms: i64,
    /// When it ends on its own.
    pub expires_ms: Option<i64>,
    /// The note (manual) or command (run).
    pub note: String,
    /// The `gpukillctl run` process holding it.
    pub client_pid: Option<i32>,
    /// When it ended; `None` while held.
    pub end_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// What the ended reservations say about the order GPUs are handed out in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationMarks {
    /// When each user last held each GPU (uid, GPU key) -> ms.
    pub last_held: HashMap<(u32, String), i64>,
    /// When each GPU was last released -> ms.
    pub last_released: HashMap<String, i64>,
    /// The highest reservation id used so far.
    pub last_lease: i64,
}

const COLUMNS: &str = "lease, gpu_key, gpu_index, uid, user, kind, start_ms, expires_ms, note, \
    client_pid, end_ms, end_reason";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReservationRow> {
    let kind: String = row.get("kind")?;
    Ok(ReservationRow {
        lease: row.get("lease")?,
        gpu_key: row.get("gpu_key")?,
        gpu_index: row.get("gpu_index")?,
        uid: row.get("uid")?,
        user: row.get("user")?,
        // The CHECK admits only these two.
        kind: LeaseKind::parse(&kind).unwrap_or(LeaseKind::Manual),
        start_ms: row.get("start_ms")?,
        expires_ms: row.get("expires_ms")?,
        note: row.get("note")?,
        client_pid: row.get("client_pid")?,
        end_ms: row.get("end_ms")?,
        end_reason: row.get("end_reason")?,
    })
}

impl Store {
    /// Records new reservation rows and their events in one transaction.
    pub fn insert_reservations(
        &mut self,
        rows: &[ReservationRow],
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            {
                let mut insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO reservations ({COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                    ))
                    .map_err(StoreError::Write)?;
                for r in rows {
                    insert
                        .execute(params![
                            r.lease,
                            r.gpu_key,
                            r.gpu_index,
                            r.uid,
                            r.user,
                            r.kind.as_str(),
                            r.start_ms,
                            r.expires_ms,
                            r.note,
                            r.client_pid,
                            r.end_ms,
                            r.end_reason
                        ])
                        .map_err(StoreError::Write)?;
                }
            }
            insert_events_in(tx, events, super::events::INSERT, 17)?;
            Ok(())
        })
    }

    /// Ends the held rows of (lease, GPU key) at `end_ms` for `reason`, with their events,
    /// in one transaction. Rows already ended stay as they are.
    pub fn end_reservations(
        &mut self,
        ended: &[(i64, String)],
        end_ms: i64,
        reason: &str,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE reservations SET end_ms = ?1, end_reason = ?2 \
                         WHERE lease = ?3 AND gpu_key = ?4 AND end_ms IS NULL",
                    )
                    .map_err(StoreError::Write)?;
                for (lease, key) in ended {
                    update
                        .execute(params![end_ms, reason, lease, key])
                        .map_err(StoreError::Write)?;
                }
            }
            insert_events_in(tx, events, super::events::INSERT, 17)?;
            Ok(())
        })
    }

    /// The rows held now, by lease and index.
    pub fn held_reservations(&self) -> Result<Vec<ReservationRow>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM reservations WHERE end_ms IS NULL ORDER BY lease, gpu_index"
            ))
            .map_err(StoreError::Read)?;
        let rows = select.query_map([], row).map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// The rows held at some time in [since_ms, until_ms), oldest first.
    pub fn reservations_between(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<ReservationRow>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM reservations \
                 WHERE start_ms < ?2 AND (end_ms IS NULL OR end_ms > ?1) ORDER BY start_ms, id"
            ))
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map(params![since_ms, until_ms], row)
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// When each user last held each GPU, when each GPU was last released, and the last id.
    pub fn reservation_marks(&self) -> Result<ReservationMarks, StoreError> {
        let mut marks = ReservationMarks::default();
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT uid, gpu_key, MAX(end_ms) FROM reservations \
                 WHERE end_ms IS NOT NULL GROUP BY uid, gpu_key",
            )
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })
            .map_err(StoreError::Read)?;
        for held in rows {
            let (uid, key, end_ms): (u32, String, i64) = held.map_err(StoreError::Read)?;
            let released = marks.last_released.entry(key.clone()).or_insert(end_ms);
            *released = (*released).max(end_ms);
            marks.last_held.insert((uid, key), end_ms);
        }
        marks.last_lease = self
            .conn
            .query_row("SELECT MAX(lease) FROM reservations", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map_err(StoreError::Read)?
            .flatten()
            .unwrap_or(0);
        Ok(marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;
    use crate::store::EventQuery;

    fn reservation(lease: i64, key: &str, uid: u32, start_ms: i64) -> ReservationRow {
        ReservationRow {
            lease,
            gpu_key: key.to_owned(),
            gpu_index: 0,
            uid,
            user: format!("user{uid}"),
            kind: LeaseKind::Manual,
            start_ms,
            expires_ms: Some(start_ms + 1000),
            note: "note".into(),
            client_pid: None,
            end_ms: None,
            end_reason: None,
        }
    }

    #[test]
    fn rows_are_held_until_ended_and_marks_follow_the_ends() {
        let mut store = Store::open_in_memory().unwrap();
        let event = crate::store::events::tests::event(EventKind::Reservation, 10, false);
        store
            .insert_reservations(
                &[
                    reservation(1, "GPU-a", 1000, 10),
                    reservation(1, "GPU-b", 1000, 10),
                ],
                std::slice::from_ref(&event),
            )
            .unwrap();
        store
            .insert_reservations(&[reservation(2, "GPU-c", 2000, 20)], &[])
            .unwrap();
        assert_eq!(store.held_reservations().unwrap().len(), 3);
        store
            .end_reservations(&[(1, "GPU-a".into())], 50, "released", &[event])
            .unwrap();
        // Ending twice changes nothing.
        store
            .end_reservations(&[(1, "GPU-a".into())], 60, "expired", &[])
            .unwrap();
        let held = store.held_reservations().unwrap();
        assert_eq!(held.len(), 2);
        assert!(held.iter().all(|r| r.gpu_key != "GPU-a"));
        let marks = store.reservation_marks().unwrap();
        assert_eq!(marks.last_lease, 2);
        assert_eq!(marks.last_held.get(&(1000, "GPU-a".into())), Some(&50));
        assert_eq!(marks.last_released.get("GPU-a"), Some(&50));
        assert!(!marks.last_released.contains_key("GPU-b"));
        let between = store.reservations_between(0, 15).unwrap();
        assert_eq!(between.len(), 2, "the lease starting at 20 is outside");
        assert_eq!(store.reservations_between(55, 100).unwrap().len(), 2);
        let events = store
            .events(&EventQuery {
                since_ms: None,
                kind: Some(EventKind::Reservation),
                limit: 10,
            })
            .unwrap();
        assert_eq!(events.len(), 2);
    }
}
