//! A coordinator's node registrations in the store: which node principal registered each
//! node id, under which name. The registry (`cluster::registry`) is the authority while the
//! coordinator runs; these rows keep a registration bound to its principal across a restart.

use rusqlite::params;

use super::{Store, StoreError};

/// A node id bound to the principal that registered it, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// The node's id (32 hex digits).
    pub node_id: String,
    /// The name it registered under last.
    pub name: String,
    /// The node principal that registered it.
    pub principal: String,
}

impl Store {
    /// Every stored registration, by node id.
    pub fn node_registrations(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT node_id, name, principal FROM node_registrations ORDER BY node_id",
            )
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([], |row| {
                Ok(NodeRegistration {
                    node_id: row.get(0)?,
                    name: row.get(1)?,
                    principal: row.get(2)?,
                })
            })
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// Stores `registration` (a node id's binding and its current name), replacing the id's
    /// earlier row, at `now_ms`.
    pub fn save_node_registration(
        &mut self,
        registration: &NodeRegistration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO node_registrations (node_id, name, principal, registered_ms) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(node_id) DO UPDATE SET name = excluded.name, \
                 principal = excluded.principal, registered_ms = excluded.registered_ms",
                params![
                    registration.node_id,
                    registration.name,
                    registration.principal,
                    now_ms
                ],
            )
            .map_err(StoreError::Write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_stored_and_a_rename_replaces_the_row() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.node_registrations().unwrap().is_empty());
        let first = NodeRegistration {
            node_id: "0123456789abcdef0123456789abcdef".into(),
            name: "n1".into(),
            principal: "node-1".into(),
        };
        store.save_node_registration(&first, 1).unwrap();
        let renamed = NodeRegistration {
            name: "n1-new".into(),
            ..first.clone()
        };
        store.save_node_registration(&renamed, 2).unwrap();
        assert_eq!(store.node_registrations().unwrap(), vec![renamed]);
    }
}
