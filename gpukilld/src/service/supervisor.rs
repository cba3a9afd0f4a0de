//! systemd's notify protocol (`sd_notify(3)`): `READY=1` once the daemon serves,
//! `STATUS=` lines, `RELOADING=1` around a reload, `STOPPING=1`, and `WATCHDOG=1` only
//! while snapshots keep coming. Without `NOTIFY_SOCKET` every message is dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::ring::Ring;
use crate::snapshot::Snapshot;

/// Sends a notify message; a failure (no service manager, a full socket) is only logged.
fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify the service manager");
    }
}

/// `READY=1` with the status of `snapshot`: the store is open, the socket is bound and the
/// first snapshot is taken.
pub fn ready(snapshot: &Snapshot) {
    let status = status_line(snapshot);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `RELOADING=1` (with the monotonic time newer systemd requires), before a reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `READY=1` again after a reload, with what came of it.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
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
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            warned = false;
        } else {
            if !warned {
                tracing::error!(
                    %status,
                    "the sampler is not making progress: no watchdog ping until it does"
                );
                warned = true;
            }
            send(&[NotifyState::Status(&status)]);
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
