//! Run leases: a `gpukillctl run` reservation lives while its client's stream does and
//! heartbeats come; a client that lost its stream (or a daemon restart) leaves it detached
//! until the client resumes it within the heartbeat timeout.

use std::time::Instant;

use tokio::sync::watch;

use super::grant::host_vendors;
use super::usage::GpuRef;
use super::{Grant, Requester, ReservationError, Reservations, allocate};
use crate::snapshot::Vendor;
use crate::store::{LeaseKind, ReservationRow};

impl Reservations {
    /// A run's client is alive: its reservation holds for another heartbeat timeout.
    pub fn heartbeat(&self, lease: i64) {
        if let Some(run) = self.lock().runs.get_mut(&lease) {
            run.deadline = Instant::now() + self.config.heartbeat_timeout;
        }
    }

    /// A run's client stream ended (the command exited, the client died or was stopped):
    /// its reservation ends now.
    pub async fn end_run(&self, lease: i64, why: &str) {
        let pending = {
            let mut state = self.lock();
            let Some(run) = state.runs.get(&lease) else {
                return;
            };
            let caller = run.caller.clone();
            let which = state.lease_keys(lease);
            self.end_locked(&mut state, &which, &caller, "release", why)
                .1
        };
        self.changed.notify_waiters();
        if let Some(pending) = pending
            && let Err(error) = self.log.confirm(pending).await
        {
            tracing::error!(%error, lease, "the end of a run reservation was not stored");
        }
    }

    /// A run's client lost its stream while the daemon keeps running it (it may come back
    /// through [`resume`](Self::resume) within the heartbeat timeout).
    pub fn detach(&self, lease: i64) {
        if let Some(run) = self.lock().runs.get_mut(&lease) {
            run.attached = false;
        }
    }

    /// Takes over a detached run reservation of the requester (its client reconnecting after
    /// a daemon restart).
    pub fn resume(
        &self,
        requester: &Requester,
        lease: i64,
    ) -> Result<(Grant, watch::Receiver<Option<String>>), ReservationError> {
        let snapshot = self.ring.latest();
        let mut state = self.lock();
        let rows: Vec<&ReservationRow> =
            state.held.iter().filter(|row| row.lease == lease).collect();
        let owned = rows
            .first()
            .is_some_and(|row| row.uid == requester.uid && row.kind == LeaseKind::Run);
        let gpus: Vec<GpuRef> = rows
            .iter()
            .map(|row| {
                snapshot
                    .gpus()
                    .map(|(vendor, gpu)| GpuRef::of(vendor, gpu))
                    .find(|gpu| gpu.key == row.gpu_key)
                    .unwrap_or_else(|| GpuRef {
                        key: row.gpu_key.clone(),
                        index: row.gpu_index,
                        vendor_index: row.gpu_index,
                        uuid: None,
                        vendor: Vendor::Nvidia,
                        name: None,
                    })
            })
            .collect();
        let expires_ms = rows.first().and_then(|row| row.expires_ms);
        let timeout = self.config.heartbeat_timeout;
        let run = state
            .runs
            .get_mut(&lease)
            .filter(|run| owned && !run.attached)
            .ok_or(ReservationError::NoSuchRun(lease))?;
        run.attached = true;
        run.deadline = Instant::now() + timeout;
        let ended = run.ended.subscribe();
        tracing::info!(lease, user = %requester.user, "run reservation resumed by its client");
        Ok((
            Grant {
                lease,
                environment: allocate::environment(&gpus, &host_vendors(&snapshot)),
                gpus,
                expires_ms,
            },
            ended,
        ))
    }

    /// Why a run reservation ended without its client, when it does.
    pub fn run_ended(&self, lease: i64) -> Option<watch::Receiver<Option<String>>> {
        self.lock()
            .runs
            .get(&lease)
            .map(|run| run.ended.subscribe())
    }
}
