//! GPU health: what the backends read (error counters, throttling, Xid events, lost GPUs),
//! and the state the daemon assesses from it each tick (`ok`, `warning`, `critical`, `lost`),
//! with the reasons.

pub mod reading;
pub mod state;
pub mod xid;

pub use reading::{GpmActivity, HealthReading, RasCount, Throttle, Xid};
pub use state::{GpuHealth, HealthReason, HealthState, RECENT_XIDS};
