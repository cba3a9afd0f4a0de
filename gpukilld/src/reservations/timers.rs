//! The reservations' clock: every tick ends manual reservations whose time came and runs
//! whose client went silent, and notes who uses which GPU (for the allocation order).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::Reservations;
use super::usage::GpuRef;
use crate::snapshot::Vendor;
use crate::store::{EventCaller, unix_ms};

impl Reservations {
    /// Ends manual reservations whose time came and runs whose client went silent, and
    /// notes who uses which GPU now (for the allocation order). Called every tick.
    pub async fn tick(&self) {
        let snapshot = self.ring.latest();
        let now_ms = unix_ms(SystemTime::now());
        let instant = Instant::now();
        let daemon = EventCaller::daemon();
        let mut pending = Vec::new();
        let waiting = {
            let mut state = self.lock();
            let keys: HashMap<(Vendor, u32), String> = snapshot
                .gpus()
                .map(|(vendor, gpu)| ((vendor, gpu.index), GpuRef::of(vendor, gpu).key))
                .collect();
            for process in snapshot.processes() {
                let slot = process.slot;
                if let Some(key) = keys.get(&(slot.vendor, slot.gpu_index)) {
                    state
                        .marks
                        .last_used
                        .insert((slot.info.uid, key.clone()), now_ms);
                }
            }
            let expired: Vec<(i64, String)> = state
                .held
                .iter()
                .filter(|row| row.expires_ms.is_some_and(|at| at <= now_ms))
                .map(|row| (row.lease, row.gpu_key.clone()))
                .collect();
            if !expired.is_empty() {
                let reason = "expired at the end of its time";
                pending.push(
                    self.end_locked(&mut state, &expired, &daemon, "expire", reason)
                        .1,
                );
            }
            let lapsed: Vec<(i64, bool)> = state
                .runs
                .iter()
                .filter(|(_, run)| run.deadline <= instant)
                .map(|(lease, run)| (*lease, run.attached))
                .collect();
            for (lease, attached) in lapsed {
                let which = state.lease_keys(lease);
                let reason = if attached {
                    format!(
                        "no heartbeat from gpukillctl run for {}",
                        humantime::format_duration(self.config.heartbeat_timeout)
                    )
                } else {
                    format!(
                        "gpukillctl run did not reconnect within {} of the daemon's restart",
                        humantime::format_duration(self.config.heartbeat_timeout)
                    )
                };
                pending.push(
                    self.end_locked(&mut state, &which, &daemon, "expire", &reason)
                        .1,
                );
                state.runs.remove(&lease);
            }
            !state.queue.is_empty()
        };
        let changed = pending.iter().any(Option::is_some);
        if changed || waiting {
            self.changed.notify_waiters();
        }
        for pending in pending.into_iter().flatten() {
            if let Err(error) = self.log.confirm(pending).await {
                tracing::error!(%error, "the end of a reservation was not stored");
            }
        }
    }
}

/// Ends expired reservations and silent runs every `tick` until `stop` turns true.
pub async fn run_timers(reservations: Arc<Reservations>, mut stop: watch::Receiver<bool>) {
    let tick = reservations
        .config
        .heartbeat_interval
        .min(Duration::from_millis(500));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = interval.tick() => reservations.tick().await,
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone), holding no borrow of it.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
