//! Admins' drains: a drained GPU is not handed out by reserve and run until an admin
//! undrains it. Like a Kubernetes cordon, a drain ends no reservation and kills nothing: who
//! holds the GPU keeps it, and processes on it are left alone. The caller has checked that
//! the requester is an admin (`authz`, through the rpc layer); this is the state change, kept
//! in the store with its audit event in one transaction, and undone when the store refuses.

use std::time::SystemTime;

use super::messages::event;
use super::usage::GpuRef;
use super::{Pending, ReservationError, Reservations, assessment_of};
use crate::store::{DrainRow, EventCaller, ReservationRow, rfc3339_ms, unix_ms};

/// The longest drain reason accepted, in bytes: a longer one is refused, not cut, so the
/// admin sees the whole reason that users will see.
pub const DRAIN_REASON_LIMIT: usize = 500;

/// What a drain did.
#[derive(Debug, Clone)]
pub struct Drained {
    /// The GPU.
    pub gpu: GpuRef,
    /// The drain in force: the new one, or the earlier one when it was already drained.
    pub drain: DrainRow,
    /// It was drained already; nothing changed.
    pub already: bool,
    /// The reservation held on it, which the drain leaves running.
    pub holder: Option<ReservationRow>,
}

/// What an undrain did.
#[derive(Debug, Clone)]
pub struct Undrained {
    /// The GPU asked for, by its index.
    pub index: u32,
    /// The GPU, when the latest snapshot has it (a drained GPU that fell off the bus can
    /// still be undrained).
    pub gpu: Option<GpuRef>,
    /// The drain that ended; `None`: it was not drained, nothing changed.
    pub drain: Option<DrainRow>,
}

impl Reservations {
    /// Drains GPU `index` for `reason` on behalf of `by` (an admin): from now on reserve and
    /// run do not hand it out. A GPU drained already keeps its first drain.
    pub async fn drain(
        &self,
        by: &EventCaller,
        index: u32,
        reason: String,
    ) -> Result<Drained, ReservationError> {
        if reason.len() > DRAIN_REASON_LIMIT {
            return Err(ReservationError::DrainReasonTooLong(reason.len()));
        }
        let snapshot = self.ring.latest();
        let now = SystemTime::now();
        let (drained, pending) = {
            let mut state = self.lock();
            let assessed = self.assess(&snapshot, &state);
            let assessment = assessment_of(&assessed, index)?;
            if let Some(drain) = &assessment.drained {
                return Ok(Drained {
                    gpu: assessment.gpu.clone(),
                    drain: drain.clone(),
                    already: true,
                    holder: assessment.holder.clone(),
                });
            }
            let drain = DrainRow {
                gpu_key: assessment.gpu.key.clone(),
                gpu_index: index,
                uid: by.uid,
                user: by.user.clone(),
                reason,
                since_ms: unix_ms(now),
            };
            let detail = match &assessment.holder {
                Some(holder) => format!(
                    "{}; {}'s {} reservation since {} runs on",
                    reason_or_none(&drain.reason),
                    holder.user,
                    holder.kind.as_str(),
                    rfc3339_ms(holder.start_ms)
                ),
                None => reason_or_none(&drain.reason).to_owned(),
            };
            let audit = event(now, by, "drain", index, "drained", &detail);
            let stored = drain.clone();
            let pending = self
                .log
                .submit_write(move |store| store.insert_drain(&stored, &audit))
                .map_err(ReservationError::Store)?;
            state.drains.push(drain.clone());
            let drained = Drained {
                gpu: assessment.gpu.clone(),
                drain,
                already: false,
                holder: assessment.holder.clone(),
            };
            (drained, pending)
        };
        if let Err(error) = self.log.confirm(pending).await {
            tracing::error!(gpu = index, %error, "a drain was not stored; undone");
            self.lock().drains.retain(|d| d != &drained.drain);
            return Err(ReservationError::Store(error));
        }
        tracing::info!(
            gpu = index,
            key = %drained.drain.gpu_key,
            by = %by.user,
            reason = %drained.drain.reason,
            "GPU drained"
        );
        Ok(drained)
    }

    /// Undrains GPU `index` on behalf of `by` (an admin): reserve and run hand it out again,
    /// and requests waiting in the queue are woken. A GPU that is not drained: nothing
    /// changes (`drain` is `None`).
    pub async fn undrain(
        &self,
        by: &EventCaller,
        index: u32,
    ) -> Result<Undrained, ReservationError> {
        let snapshot = self.ring.latest();
        let now = SystemTime::now();
        let gpus: Vec<GpuRef> = snapshot.gpus().map(|(v, g)| GpuRef::of(v, g)).collect();
        let gpu = gpus.iter().find(|gpu| gpu.index == index).cloned();
        let (drain, pending) = {
            let mut state = self.lock();
            // A drained GPU that no longer shows (lost) can still be undrained.
            let found = match &gpu {
                Some(gpu) => state.drains.iter().position(|d| d.gpu_key == gpu.key),
                None => state.drains.iter().position(|d| d.gpu_index == index),
            };
            let Some(position) = found else {
                if gpu.is_none() {
                    return Err(ReservationError::NoSuchGpu {
                        index,
                        gpus: gpus.len(),
                    });
                }
                return Ok(Undrained {
                    index,
                    gpu,
                    drain: None,
                });
            };
            let drain = state.drains.remove(position);
            let detail = format!(
                "drained by {} since {}: {}",
                drain.user,
                rfc3339_ms(drain.since_ms),
                reason_or_none(&drain.reason)
            );
            let audit = event(now, by, "undrain", index, "undrained", &detail);
            let key = drain.gpu_key.clone();
            let pending: Pending = match self
                .log
                .submit_write(move |store| store.remove_drain(&key, &audit))
            {
                Ok(pending) => pending,
                Err(error) => {
                    state.drains.insert(position, drain);
                    return Err(ReservationError::Store(error));
                }
            };
            (drain, pending)
        };
        if let Err(error) = self.log.confirm(pending).await {
            tracing::error!(gpu = index, %error, "an undrain was not stored; undone");
            self.lock().drains.push(drain);
            return Err(ReservationError::Store(error));
        }
        // Requests waiting for GPUs may be served now.
        self.changed.notify_waiters();
        tracing::info!(gpu = index, key = %drain.gpu_key, by = %by.user, "GPU undrained");
        Ok(Undrained {
            index,
            gpu,
            drain: Some(drain),
        })
    }
}

fn reason_or_none(reason: &str) -> &str {
    if reason.is_empty() {
        "no reason given"
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{request, requester};
    use super::super::{ReservationsConfig, Want};
    use super::*;
    use crate::guard::evaluate::tests::snapshot_at;
    use crate::ring::Ring;
    use crate::store::{Database, EventKind, EventQuery, LeaseKind};

    async fn load(log: &Arc<Database>) -> Arc<Reservations> {
        let ring = Arc::new(Ring::new(4, snapshot_at(0, &[])));
        Arc::new(
            Reservations::load(ReservationsConfig::default(), true, Arc::clone(log), ring)
                .await
                .unwrap(),
        )
    }

    fn admin() -> EventCaller {
        requester(0, true).caller
    }

    #[tokio::test]
    async fn a_drained_gpu_is_not_handed_out_until_undrained_and_survives_a_restart() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let reservations = load(&log).await;
        let alice = requester(1000, false);
        let drained = reservations
            .drain(&admin(), 2, "fan noise".to_owned())
            .await
            .unwrap();
        assert!(!drained.already);
        assert_eq!(drained.gpu.key, "index:2");
        assert_eq!((drained.drain.uid, &*drained.drain.user), (0, "u0"));
        // Asked for by index: refused, naming the drain and the way out.
        let refused = reservations
            .reserve(&alice, &request(LeaseKind::Manual, Want::Gpus(vec![2])))
            .await;
        let Err(ReservationError::Busy(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            message.contains("GPU 2 is drained by u0 since ")
                && message.contains(
                    ": fan noise (an admin undrains it with `gpukillctl undrain --gpu 2`)"
                ),
            "{message}"
        );
        // Any 3 GPUs: the other three; a fourth cannot be had.
        let three = reservations
            .reserve(&alice, &request(LeaseKind::Manual, Want::Count(3)))
            .await
            .unwrap();
        assert!(three.gpus.iter().all(|gpu| gpu.index != 2), "{three:?}");
        let all = reservations
            .reserve(&alice, &request(LeaseKind::Manual, Want::Count(1)))
            .await;
        assert!(
            matches!(&all, Err(ReservationError::Busy(m)) if m.contains("GPU 2 is drained by u0")),
            "{all:?}"
        );
        // Draining again keeps the first drain.
        let again = reservations
            .drain(&admin(), 2, "other".to_owned())
            .await
            .unwrap();
        assert!(again.already);
        assert_eq!(again.drain, drained.drain);

        // A restart keeps the drain.
        drop(reservations);
        let reservations = load(&log).await;
        let status = reservations.status();
        assert_eq!(status.gpus[2].drained.as_ref(), Some(&drained.drain));
        assert!(!status.gpus[2].is_free());

        // Undrained: handed out again; undraining twice changes nothing.
        let undrained = reservations.undrain(&admin(), 2).await.unwrap();
        assert_eq!(undrained.drain.as_ref(), Some(&drained.drain));
        let twice = reservations.undrain(&admin(), 2).await.unwrap();
        assert!(twice.drain.is_none() && twice.gpu.is_some());
        reservations.release(&alice, &[]).await.unwrap();
        let two = reservations
            .reserve(&alice, &request(LeaseKind::Manual, Want::Gpus(vec![2])))
            .await
            .unwrap();
        assert_eq!(two.gpus[0].index, 2);
        // The trail: one drain and one undrain, by the admin.
        let events = log
            .read(|store| {
                store.events(&EventQuery {
                    since_ms: None,
                    kind: Some(EventKind::Reservation),
                    limit: 100,
                })
            })
            .await
            .unwrap();
        let actions: Vec<(&str, &str, u32)> = events
            .iter()
            .filter(|e| e.action.ends_with("drain GPU 2"))
            .map(|e| (e.action.as_str(), e.outcome.as_str(), e.caller.uid))
            .collect();
        assert_eq!(
            actions,
            [
                ("drain GPU 2", "drained", 0),
                ("undrain GPU 2", "undrained", 0)
            ]
        );
    }

    #[tokio::test]
    async fn a_drain_leaves_the_reservation_on_the_gpu_and_bad_requests_change_nothing() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let reservations = load(&log).await;
        let alice = requester(1000, false);
        reservations
            .reserve(&alice, &request(LeaseKind::Manual, Want::Gpus(vec![1])))
            .await
            .unwrap();
        let drained = reservations
            .drain(&admin(), 1, String::new())
            .await
            .unwrap();
        assert_eq!(drained.holder.as_ref().map(|h| h.uid), Some(1000));
        let status = reservations.status();
        assert_eq!(status.gpus[1].holder.as_ref().map(|h| h.uid), Some(1000));
        assert!(status.gpus[1].drained.is_some());

        let missing = reservations.drain(&admin(), 7, String::new()).await;
        let Err(error) = missing else {
            panic!("{missing:?}")
        };
        assert_eq!(
            error.to_string(),
            "no GPU 7 on this node: its GPUs are 0 to 3 (gpukillctl list shows them)"
        );
        assert!(matches!(
            reservations.undrain(&admin(), 7).await,
            Err(ReservationError::NoSuchGpu { index: 7, gpus: 4 })
        ));
        let long = reservations
            .drain(&admin(), 0, "x".repeat(DRAIN_REASON_LIMIT + 1))
            .await;
        assert!(
            matches!(long, Err(ReservationError::DrainReasonTooLong(501))),
            "{long:?}"
        );
        let drains = log.read(|store| store.drains()).await.unwrap();
        assert_eq!(drains.len(), 1, "only GPU 1: {drains:?}");
        assert!(reservations.status().gpus[0].drained.is_none());
    }

    #[tokio::test]
    async fn a_count_the_kept_back_gpus_make_impossible_is_refused_even_in_the_queue() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let reservations = load(&log).await;
        for index in [1, 3] {
            reservations
                .drain(&admin(), index, "maintenance".to_owned())
                .await
                .unwrap();
        }
        let alice = requester(1000, false);
        // A queued request (a ticket) would wait for busy GPUs; not for drained ones.
        let three = request(LeaseKind::Run, Want::Count(3));
        let Err(ReservationError::Busy(message)) = reservations.grant(&alice, &three, Some(1))
        else {
            panic!("three of four GPUs with two drained was not refused");
        };
        assert!(
            message.starts_with("3 GPUs asked for: only 2 of this node's 4 GPUs are handed out now; GPU 1 is drained by u0")
                && message.contains("GPU 3 is drained by u0"),
            "{message}"
        );
        let two = request(LeaseKind::Run, Want::Count(2));
        let granted = reservations.grant(&alice, &two, Some(1)).unwrap();
        assert!(granted.is_some(), "the two GPUs left are handed out");
    }

    #[tokio::test]
    async fn an_undrain_wakes_the_requests_waiting_for_gpus() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let reservations = load(&log).await;
        for index in 0..4 {
            reservations
                .drain(&admin(), index, String::new())
                .await
                .unwrap();
        }
        let woken = reservations.changed();
        tokio::pin!(woken);
        // Not woken by an undrain that changes nothing.
        reservations.undrain(&admin(), 9).await.unwrap_err();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), woken.as_mut())
                .await
                .is_err()
        );
        reservations.undrain(&admin(), 3).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("an undrain wakes the queue");
    }
}
