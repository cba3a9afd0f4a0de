//! Standard health checking, `grpc.health.v1.Health` (tonic-health): `SERVING` while the
//! latest snapshot is fresh and the store works, `NOT_SERVING` otherwise (a hung or silent
//! vendor, a store that is unavailable or cannot write), the same for the whole server
//! (`""`) and for each gpukill service by its full name; a service that has nothing to serve
//! here (the Cluster service on a daemon that is not a coordinator) is always
//! `NOT_SERVING`. A supervised task ([`spawn`])
//! works it out again every poll interval and tells `Watch` callers when it changes; as
//! the daemon stops, everything turns `NOT_SERVING` for good ([`Statuses::shut_down`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gpukill_proto::v1 as pb;
use tokio::sync::{Mutex, watch};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{HealthReporter, HealthService};

use crate::ring::Ring;
use crate::service::tasks::{OnPanic, Tasks};
use crate::snapshot::Snapshot;
use crate::store::StoreHandle;

/// Why the daemon is not serving at `now`, if it is not: the latest snapshot is stale, or
/// the store does not work (`store`, as the gpukill `Health` rpc reports it).
pub fn not_serving(
    latest: &Snapshot,
    now: SystemTime,
    store: (pb::StoreState, String),
) -> Option<String> {
    if let Some(reason) = latest.stale_reason(now) {
        return Some(format!("the latest snapshot is stale: {reason}"));
    }
    let (state, message) = store;
    (state != pb::StoreState::Ok).then(|| {
        format!(
            "the store is {}: {message}",
            state
                .as_str_name()
                .trim_start_matches("STORE_STATE_")
                .to_lowercase()
        )
    })
}

/// The health statuses the standard health service answers with. Cheap to clone: every
/// clone is the same set.
#[derive(Clone)]
pub struct Statuses {
    reporter: HealthReporter,
    /// The full names of the services that follow the daemon's status, besides `""`.
    services: Arc<[&'static str]>,
    /// The full names of the services that are always `NOT_SERVING` here.
    idle: Arc<[&'static str]>,
    state: Arc<Mutex<State>>,
}

/// What was last set.
#[derive(Default)]
struct State {
    current: Option<ServingStatus>,
    /// Set as the daemon stops: nothing turns `SERVING` again.
    final_: bool,
}

impl Statuses {
    /// Statuses for the whole server and for `services` (full names, such as
    /// `gpukill.v1.GpuKill`), and for `idle` services, always `NOT_SERVING`. Only the whole
    /// server is known (`SERVING`) until the first [`Statuses::set`].
    pub fn new(services: &[&'static str], idle: &[&'static str]) -> Self {
        Self {
            reporter: HealthReporter::new(),
            services: services.into(),
            idle: idle.into(),
            state: Arc::default(),
        }
    }

    /// The health service answering from these statuses.
    pub fn server(&self) -> HealthServer<impl Health + use<>> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Sets every service to `status`, unless it already is (a `Watch` caller hears of
    /// changes only) or the daemon is stopping; returns what it was before when it changed.
    pub async fn set(&self, status: ServingStatus) -> Option<Option<ServingStatus>> {
        let mut state = self.state.lock().await;
        if state.final_ {
            return None;
        }
        self.apply(&mut state, status).await
    }

    /// Sets everything `NOT_SERVING` for good: the daemon is stopping.
    pub async fn shut_down(&self) {
        let mut state = self.state.lock().await;
        self.apply(&mut state, ServingStatus::NotServing).await;
        state.final_ = true;
    }

    async fn apply(
        &self,
        state: &mut State,
        status: ServingStatus,
    ) -> Option<Option<ServingStatus>> {
        let before = state.current;
        if before == Some(status) {
            return None;
        }
        if before.is_none() {
            for name in self.idle.iter() {
                self.reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
        for name in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(name, status).await;
        }
        state.current = Some(status);
        Some(before)
    }

    /// Works the status out from the latest snapshot in `ring` and from `store`, sets it,
    /// and logs a change (with the reason, when not serving).
    pub async fn update(&self, ring: &Ring, store: &StoreHandle) {
        let reason = not_serving(
            &ring.latest(),
            SystemTime::now(),
            crate::rpc::health::store_state(store),
        );
        let status = match &reason {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        };
        match (self.set(status).await, reason) {
            (Some(_), Some(reason)) => tracing::warn!(%reason, "gRPC health: NOT_SERVING"),
            // Serving again; serving from the start goes without saying.
            (Some(Some(_)), None) => tracing::info!("gRPC health: SERVING again"),
            _ => {}
        }
    }
}

/// Keeps `statuses` current, every `interval`, until `stopped` turns true. Its state is
/// in `statuses`: a restart after a panic picks it up.
pub fn spawn(
    tasks: &Tasks,
    statuses: &Statuses,
    ring: &Arc<Ring>,
    store: &StoreHandle,
    interval: Duration,
    stopped: &watch::Receiver<bool>,
) {
    let (statuses, ring, store) = (statuses.clone(), Arc::clone(ring), store.clone());
    let stopped = stopped.clone();
    tasks.spawn("grpc-health", OnPanic::Restart, move || {
        let (statuses, ring, store) = (statuses.clone(), Arc::clone(&ring), store.clone());
        let mut stopped = stopped.clone();
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|stopped| *stopped) => return,
                    _ = ticks.tick() => {}
                }
                statuses.update(&ring, &store).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Vendor, VendorState, VendorStatus};

    fn fresh() -> Snapshot {
        Snapshot {
            host: Arc::from("node"),
            taken_at: SystemTime::now(),
            sequence: 1,
            vendors: Vec::new(),
            data: Vec::new(),
            tick_duration: Duration::from_millis(1),
            poll_interval: Duration::from_secs(1),
        }
    }

    const OK: (pb::StoreState, String) = (pb::StoreState::Ok, String::new());

    #[test]
    fn fresh_snapshots_and_a_working_store_serve() {
        assert_eq!(not_serving(&fresh(), SystemTime::now(), OK), None);
    }

    #[test]
    fn a_stale_snapshot_or_a_broken_store_does_not_serve() {
        let now = SystemTime::now();
        let mut old = fresh();
        old.taken_at = now - old.poll_interval * 3;
        let reason = not_serving(&old, now, OK).unwrap();
        assert!(
            reason.contains("stale") && reason.contains("no tick"),
            "{reason}"
        );

        let mut hung = fresh();
        hung.vendors.push(VendorStatus {
            vendor: Vendor::Nvidia,
            state: VendorState::Hung { since: now },
            driver_version: None,
            cuda_version: None,
            last_success: None,
        });
        assert!(not_serving(&hung, now, OK).unwrap().contains("nvidia"));

        let unavailable = (pb::StoreState::Unavailable, "the disk is gone".to_string());
        let reason = not_serving(&fresh(), now, unavailable).unwrap();
        assert_eq!(reason, "the store is unavailable: the disk is gone");
        let degraded = (pb::StoreState::Degraded, "writes fail".to_string());
        assert!(
            not_serving(&fresh(), now, degraded)
                .unwrap()
                .contains("degraded")
        );
    }

    #[tokio::test]
    async fn every_service_changes_together_and_stays_down_once_stopping() {
        let statuses = Statuses::new(
            &["gpukill.v1.GpuKillService"],
            &["gpukill.v1.ClusterService"],
        );
        let status = |name: &'static str| {
            let statuses = statuses.clone();
            async move {
                let statuses = statuses.reporter.clone();
                let service = HealthService::from_health_reporter(statuses);
                let request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                    service: name.to_string(),
                });
                service.check(request).await.map(|r| r.into_inner().status)
            }
        };
        statuses.set(ServingStatus::NotServing).await;
        for name in ["", "gpukill.v1.GpuKillService", "gpukill.v1.ClusterService"] {
            assert_eq!(status(name).await.unwrap(), 2, "{name:?} NOT_SERVING");
        }
        statuses.set(ServingStatus::Serving).await;
        assert_eq!(status("").await.unwrap(), 1);
        assert_eq!(status("gpukill.v1.GpuKillService").await.unwrap(), 1);
        assert_eq!(
            status("gpukill.v1.ClusterService").await.unwrap(),
            2,
            "idle here"
        );
        assert_eq!(
            status("no.such.Service").await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        statuses.shut_down().await;
        statuses.set(ServingStatus::Serving).await;
        assert_eq!(status("").await.unwrap(), 2, "stopping is final");
    }
}
