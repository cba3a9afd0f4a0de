//! [`StoreHandle`]: the daemon's database, or why it could not be opened. A daemon whose
//! store cannot open still lists and watches GPUs; what needs the store (killing, history,
//! the audit trail) answers with the reason instead.

use std::sync::Arc;

use super::Database;

/// The daemon's database, ready, or unavailable with the reason it could not be opened.
#[derive(Clone, Debug)]
pub struct StoreHandle(Result<Arc<Database>, String>);

impl StoreHandle {
    /// A store that could not be opened, and why (the reason is shown to callers).
    pub fn unavailable(reason: String) -> Self {
        Self(Err(reason))
    }

    /// The database, or a copy of the reason there is none (for an error).
    pub fn get(&self) -> Result<&Arc<Database>, String> {
        self.0.as_ref().map_err(Clone::clone)
    }

    /// The database, if it is open.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.0.as_ref().ok()
    }
}

impl From<Arc<Database>> for StoreHandle {
    fn from(database: Arc<Database>) -> Self {
        Self(Ok(database))
    }
}

impl From<Database> for StoreHandle {
    fn from(database: Database) -> Self {
        Self::from(Arc::new(database))
    }
}
