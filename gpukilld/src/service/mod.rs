//! Running under a service manager: systemd's notify protocol (readiness, status, reload,
//! stop, a watchdog fed only while the sampler makes progress), socket activation, and
//! logging to the journal; on Windows, the Service Control Manager's states. Everything
//! here is a no-op outside a service manager.

pub mod activation;
pub mod logging;
pub mod supervisor;
