//! Running under a service manager: systemd's notify protocol (readiness, status, reload,
//! stop, a watchdog fed only while the sampler makes progress), socket activation,
//! logging to the journal, and the supervision of the daemon's background tasks; on
//! Windows, the Service Control Manager's states. Everything but the task supervision is a
//! no-op outside a service manager.

pub mod activation;
pub mod logging;
pub mod supervisor;
pub mod tasks;
