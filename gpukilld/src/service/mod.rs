//! Running under a service manager: systemd's notify protocol (readiness, status, reload,
//! stop, a watchdog fed only while the sampler makes progress), socket activation, and
//! logging to the journal. Everything here is a no-op outside systemd.

pub mod activation;
pub mod logging;
pub mod supervisor;
