//! What the service manager is told: systemd's notify protocol (`sd_notify(3)`) on Unix —
//! `READY=1` once the daemon serves, `STATUS=` lines, `RELOADING=1` around a reload,
//! `STOPPING=1`, and `WATCHDOG=1` only while snapshots keep coming; on Windows the Service
//! Control Manager's running and stop-pending states (gpukill-winservice; it has no
//! watchdog and no reload). Outside a service manager every message is dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::ring::Ring;
use crate::snapshot::Snapshot;

/// systemd, through `NOTIFY_SOCKET`.
#[cfg(unix)]
mod manager {
    use std::time::Duration;

    use sd_notify::NotifyState;

    /// Sends a notify message; a failure (no service manager, a full socket) is only logged.
    fn send(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            tracing::debug!(%error, "cannot notify the service manager");
        }
    }

    pub fn ready(status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading() {
        // With the monotonic time newer systemd requires.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn status(status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    pub fn alive(status: &str) {
        send(&[NotifyState::Watchdog, NotifyState::Status(status)]);
    }

    pub fn watchdog_interval() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}

/// The Windows Service Control Manager: no status text, no reload, no watchdog (its
/// recovery actions restart a service that exits, not one that hangs).
#[cfg(windows)]
mod manager {
    use std::time::Duration;

    pub fn ready(_status: &str) {
        gpukill_winservice::running();
    }

    pub fn reloading() {}

    pub fn stopping() {
        gpukill_winservice::stopping();
    }

    pub fn status(_status: &str) {}

    pub fn alive(_status: &str) {}

    pub fn watchdog_interval() -> Option<Duration> {
        None
    }
}

/// `READY=1` with the status of `snapshot`: the store is open, the socket is bound and the
/// first snapshot is taken.
pub fn ready(snapshot: &Snapshot) {
    manager::ready(&status_line(snapshot));
}

/// `RELOADING=1`, before a reload.
pub fn reloading() {
    manager::reloading();
}

/// `READY=1` again after a reload, with what came of it.
pub fn reloaded(status: &str) {
    manager::ready(status);
}

/// `STOPPING=1`.
pub fn stopping() {
    manager::stopping();
}

/// The `STATUS=` line of a snapshot: GPUs, processes, the last tick, staleness.
pub fn status_line(snapshot: &Snapshot) -> String {
    let gpus = snapshot.gpus().count();
    let processes = snapshot.processes().count();
    let tick = snapshot.tick_duration.as_secs_f64() * 1000.0;
    let mut line = format!("{gpus} GPUs, {processes} GPU processes, last tick {tick:.1} ms");
    if let Some(reason) = snapshot.stale_reason(SystemTime::now()) {
        line.push_str(&format!("; stale: {reason}"));
    }
    line
}

/// Whether the sampler is making progress: the latest snapshot is not stale (no vendor
/// call hung, data no older than two poll intervals).
fn progressing(ring: &Ring) -> bool {
    ring.latest().stale_reason(SystemTime::now()).is_none()
}

/// Until `stop`: every half `watchdog` interval, `WATCHDOG=1` if the sampler is making
/// progress (and `STATUS=` either way). A vendor call that hangs makes the snapshots stale,
/// the pings stop, and systemd restarts the daemon once `WatchdogSec` passes.
pub async fn watchdog(ring: Arc<Ring>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let period = (interval / 2).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = ticker.tick() => {}
        }
        let latest = ring.latest();
        let status = status_line(&latest);
        if progressing(&ring) {
            manager::alive(&status);
            warned = false;
        } else {
            if !warned {
                tracing::error!(
                    %status,
                    "the sampler is not making progress: no watchdog ping until it does"
                );
                warned = true;
            }
            manager::status(&status);
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    manager::watchdog_interval()
}
