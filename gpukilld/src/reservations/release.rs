//! Ending reservations: a release by their holder (or an admin), and the one place that ends
//! held rows, telling a run's client and queueing the rows' end and its events.

use std::time::SystemTime;

use super::messages::{event, outcome};
use super::usage::GpuRef;
use super::{Pending, Requester, ReservationError, Reservations, State};
use crate::store::{EventCaller, LeaseKind, ReservationRow, rfc3339_ms, unix_ms};

impl Reservations {
    /// Ends reservations: with `indices` empty, every manual reservation of the requester;
    /// else the reservations on those GPUs (the requester's own; an admin's: anyone's).
    /// All or nothing: one GPU the requester may not release refuses the whole request.
    pub async fn release(
        &self,
        requester: &Requester,
        indices: &[u32],
    ) -> Result<Vec<ReservationRow>, ReservationError> {
        let snapshot = self.ring.latest();
        let (ended, pending) = {
            let mut state = self.lock();
            let chosen: Vec<(i64, String)> = if indices.is_empty() {
                state
                    .held
                    .iter()
                    .filter(|row| row.uid == requester.uid && row.kind == LeaseKind::Manual)
                    .map(|row| (row.lease, row.gpu_key.clone()))
                    .collect()
            } else {
                let gpus: Vec<GpuRef> = snapshot.gpus().map(|(v, g)| GpuRef::of(v, g)).collect();
                let mut chosen = Vec::new();
                for index in indices {
                    let key = match gpus.iter().find(|gpu| gpu.index == *index) {
                        Some(gpu) => gpu.key.clone(),
                        None => {
                            // A reserved GPU that no longer shows (lost) can still be released.
                            match state.held.iter().find(|row| row.gpu_index == *index) {
                                Some(row) => row.gpu_key.clone(),
                                None => {
                                    return Err(ReservationError::NoSuchGpu {
                                        index: *index,
                                        gpus: gpus.len(),
                                    });
                                }
                            }
                        }
                    };
                    let Some(row) = state.held.iter().find(|row| row.gpu_key == key) else {
                        continue;
                    };
                    if row.uid != requester.uid && !requester.admin {
                        return Err(ReservationError::NotHolder {
                            gpu: *index,
                            holder: row.user.clone(),
                        });
                    }
                    chosen.push((row.lease, key));
                }
                chosen
            };
            let reason = format!("released by {}", requester.user);
            self.end_locked(&mut state, &chosen, &requester.caller, "release", &reason)
        };
        if let Some(pending) = pending {
            self.changed.notify_waiters();
            if let Err(error) = self.log.confirm(pending).await {
                tracing::error!(%error, "a release was not stored; it holds until the daemon restarts");
            }
        }
        Ok(ended)
    }

    /// Ends the held rows `which` under the lock: marks the GPUs released, tells a run's
    /// client when its reservation ended without it, and queues the rows' end and one event
    /// per GPU. Returns the rows ended and the write's answer (`None` when nothing ended).
    pub(super) fn end_locked(
        &self,
        state: &mut State,
        which: &[(i64, String)],
        caller: &EventCaller,
        verb: &str,
        reason: &str,
    ) -> (Vec<ReservationRow>, Option<Pending>) {
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let (ended, kept): (Vec<ReservationRow>, Vec<ReservationRow>) =
            std::mem::take(&mut state.held)
                .into_iter()
                .partition(|row| {
                    which
                        .iter()
                        .any(|(l, k)| *l == row.lease && *k == row.gpu_key)
                });
        state.held = kept;
        if ended.is_empty() {
            return (ended, None);
        }
        let mut events = Vec::with_capacity(ended.len());
        for row in &ended {
            state
                .marks
                .last_used
                .insert((row.uid, row.gpu_key.clone()), now_ms);
            state
                .marks
                .last_released
                .insert(row.gpu_key.clone(), now_ms);
            let detail = format!(
                "{}; {}'s {} reservation since {}",
                reason,
                row.user,
                row.kind.as_str(),
                rfc3339_ms(row.start_ms)
            );
            events.push(event(
                now,
                caller,
                verb,
                row.gpu_index,
                outcome(verb),
                &detail,
            ));
            if row.kind == LeaseKind::Run
                && !state.held.iter().any(|other| other.lease == row.lease)
                && let Some(run) = state.runs.remove(&row.lease)
            {
                run.ended.send_replace(Some(reason.to_owned()));
            }
        }
        tracing::info!(
            gpus = ?ended.iter().map(|r| r.gpu_index).collect::<Vec<_>>(),
            holder = %ended[0].user,
            verb,
            reason,
            "reservation ended"
        );
        let keys: Vec<(i64, String)> = ended
            .iter()
            .map(|row| (row.lease, row.gpu_key.clone()))
            .collect();
        let reason = reason.to_owned();
        let pending = self
            .log
            .submit_write(move |store| store.end_reservations(&keys, now_ms, &reason, &events));
        match pending {
            Ok(pending) => (ended, Some(pending)),
            Err(error) => {
                tracing::error!(%error, "the end of a reservation could not be queued for the store");
                (ended, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Want;
    use super::super::tests::{request, requester, reservations};
    use super::*;

    #[tokio::test]
    async fn a_release_naming_another_users_gpu_releases_nothing_unless_admin() {
        let reservations = reservations().await;
        let (alice, bob) = (requester(1000, false), requester(2000, false));
        let gpus = |indices: &[u32]| request(LeaseKind::Manual, Want::Gpus(indices.to_vec()));
        reservations.reserve(&alice, &gpus(&[0])).await.unwrap();
        reservations.reserve(&bob, &gpus(&[1])).await.unwrap();
        let refused = reservations.release(&bob, &[1, 0]).await;
        assert!(
            matches!(refused, Err(ReservationError::NotHolder { gpu: 0, .. })),
            "{refused:?}"
        );
        let held = |r: &Reservations| {
            r.status()
                .gpus
                .iter()
                .filter(|a| a.holder.is_some())
                .count()
        };
        assert_eq!(held(&reservations), 2, "nothing was released");
        let taken = reservations.reserve(&bob, &gpus(&[0, 2])).await;
        assert!(
            matches!(taken, Err(ReservationError::Busy(ref m)) if m.contains("GPU 0 is reserved by u1000"))
        );
        assert!(matches!(
            reservations.reserve(&bob, &gpus(&[9])).await,
            Err(ReservationError::NoSuchGpu { index: 9, gpus: 4 })
        ));
        let admin = requester(0, true);
        assert_eq!(
            reservations.release(&admin, &[0, 1]).await.unwrap().len(),
            2
        );
        assert_eq!(held(&reservations), 0);
    }
}
