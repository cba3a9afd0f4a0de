//! Test fixtures: hand-built answers (a snapshot, a kill, a reset, an audit trail, sessions,
//! a usage summary, metrics history, the upload outbox, reservations) in [`fixtures`], an
//! in-process fake daemon (with a scripted Run stream) in [`fake_daemon`], snapshot files,
//! a test CA, and gpukillctl run in process.

pub mod fake_daemon;
pub mod fixtures;
pub mod pki;
pub mod run;
pub mod snapshots;

pub use fake_daemon::*;
pub use fixtures::*;
pub use run::*;
pub use snapshots::*;

/// Milliseconds since the Unix epoch of a time after it.
pub fn millis(time: std::time::SystemTime) -> i64 {
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    i64::try_from(ms).expect("fits")
}
