//! GPU health: what the backends read (error counters, throttling, Xid events, lost GPUs),
//! and the state the daemon assesses from it each tick (`ok`, `warning`, `critical`, `lost`),
//! with the reasons.

pub mod reading;
pub mod state;
pub mod tracker;
pub mod xid;

pub use reading::{GpmActivity, HealthReading, RasCount, Throttle, Xid};
pub use state::{Condition, GpuHealth, HealthReason, HealthState, RECENT_XIDS};
pub use tracker::Tracker;

/// The name the tracker knows a GPU by: its UUID, or its vendor and index within the vendor
/// for a GPU without one.
pub fn key(
    uuid: Option<&std::sync::Arc<str>>,
    vendor: &str,
    vendor_index: u32,
) -> std::sync::Arc<str> {
    match uuid {
        Some(uuid) => std::sync::Arc::clone(uuid),
        None => std::sync::Arc::from(format!("{vendor}:{vendor_index}")),
    }
}
