//! Drained GPUs in the store: one row per GPU an admin drained, deleted when it is undrained.
//! The daemon's `reservations` module is the authority while it runs; these rows let a drain
//! survive a restart. Each drain and undrain is written with its audit event in one
//! transaction, so the trail and the rows cannot disagree.

use rusqlite::params;

use super::events::insert_events_in;
use super::{NewEvent, Store, StoreError};

/// A GPU an admin drained, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRow {
    /// The GPU: its UUID, or `index:N` when the vendor reports none (as reservations key it).
    pub gpu_key: String,
    /// The GPU's index when it was drained.
    pub gpu_index: u32,
    /// The admin's uid (`u32::MAX` for a remote principal, which has none).
    pub uid: u32,
    /// The admin's user name (or remote principal).
    pub user: String,
    /// Why, as the admin said; empty when not said.
    pub reason: String,
    /// Since when, ms since the Unix epoch.
    pub since_ms: i64,
}

impl Store {
    /// Records `row` (replacing an earlier drain of the same GPU) and its event in one
    /// transaction.
    pub fn insert_drain(&mut self, row: &DrainRow, event: &NewEvent) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO drains (gpu_key, gpu_index, uid, user, reason, since_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    row.gpu_key,
                    row.gpu_index,
                    row.uid,
                    row.user,
                    row.reason,
                    row.since_ms
                ])
            })
            .map_err(StoreError::Write)?;
            insert_events_in(tx, std::slice::from_ref(event), super::events::INSERT, 17)?;
            Ok(())
        })
    }

    /// Deletes the drain of the GPU `gpu_key` (nothing when there is none) and records its
    /// event, in one transaction.
    pub fn remove_drain(&mut self, gpu_key: &str, event: &NewEvent) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            tx.prepare_cached("DELETE FROM drains WHERE gpu_key = ?1")
                .and_then(|mut delete| delete.execute(params![gpu_key]))
                .map_err(StoreError::Write)?;
            insert_events_in(tx, std::slice::from_ref(event), super::events::INSERT, 17)?;
            Ok(())
        })
    }

    /// Every drained GPU, by index.
    pub fn drains(&self) -> Result<Vec<DrainRow>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT gpu_key, gpu_index, uid, user, reason, since_ms FROM drains \
                 ORDER BY gpu_index, gpu_key",
            )
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([], |row| {
                Ok(DrainRow {
                    gpu_key: row.get(0)?,
                    gpu_index: row.get(1)?,
                    uid: row.get(2)?,
                    user: row.get(3)?,
                    reason: row.get(4)?,
                    since_ms: row.get(5)?,
                })
            })
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, EventQuery};

    fn drain(key: &str, index: u32, since_ms: i64) -> DrainRow {
        DrainRow {
            gpu_key: key.to_owned(),
            gpu_index: index,
            uid: 0,
            user: "root".to_owned(),
            reason: "fan noise".to_owned(),
            since_ms,
        }
    }

    #[test]
    fn drains_are_kept_until_removed_each_with_its_event() {
        let mut store = Store::open_in_memory().unwrap();
        let event = crate::store::events::tests::event(EventKind::Reservation, 10, false);
        store.insert_drain(&drain("GPU-b", 1, 10), &event).unwrap();
        store
            .insert_drain(&drain("index:0", 0, 20), &event)
            .unwrap();
        // Draining again replaces the row, not adds one.
        store.insert_drain(&drain("GPU-b", 1, 30), &event).unwrap();
        let rows = store.drains().unwrap();
        assert_eq!(rows, [drain("index:0", 0, 20), drain("GPU-b", 1, 30)]);
        store.remove_drain("GPU-b", &event).unwrap();
        // Removing what is not there changes nothing but the trail.
        store.remove_drain("GPU-zz", &event).unwrap();
        assert_eq!(store.drains().unwrap(), [drain("index:0", 0, 20)]);
        let events = store
            .events(&EventQuery {
                since_ms: None,
                kind: Some(EventKind::Reservation),
                limit: 10,
            })
            .unwrap();
        assert_eq!(events.len(), 5);
    }
}
