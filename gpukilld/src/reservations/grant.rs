//! Choosing and taking GPUs: a request checked, the GPUs decided and taken under the lock,
//! the store write queued under it too, and the grant undone when the store refuses it.

use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::allocate;
use super::messages::{busy_message, describe, event, note_suffix};
use super::usage::{Assessment, GpuRef};
use super::{
    Grant, LeaseRequest, Pending, Requester, ReservationError, Reservations, RunLease, Want,
    assessment_of, clip_note,
};
use crate::snapshot::{Snapshot, Vendor};
use crate::store::{LeaseKind, NewEvent, ReservationRow, rfc3339_ms, unix_ms};

impl Reservations {
    /// Reserves GPUs now (`gpukillctl reserve`, and `run` without waiting). Refused while
    /// requests wait in the queue: first come, first served.
    pub async fn reserve(
        &self,
        requester: &Requester,
        request: &LeaseRequest,
    ) -> Result<Grant, ReservationError> {
        let (grant, pending) = self
            .grant(requester, request, None)?
            .ok_or_else(|| ReservationError::Busy("the GPUs asked for are not free".to_owned()))?;
        self.settle(grant, pending).await
    }

    /// Waits for a grant's store write; undoes the grant when it failed.
    pub(super) async fn settle(
        &self,
        grant: Grant,
        pending: Pending,
    ) -> Result<Grant, ReservationError> {
        match self.log.confirm(pending).await {
            Ok(()) => Ok(grant),
            Err(error) => {
                tracing::error!(lease = grant.lease, %error, "a reservation was not stored; undone");
                let mut state = self.lock();
                state.held.retain(|row| row.lease != grant.lease);
                state.runs.remove(&grant.lease);
                drop(state);
                self.changed.notify_waiters();
                Err(ReservationError::Store(error))
            }
        }
    }

    /// Decides and takes GPUs under the lock, and queues the store write. `Ok(None)`: a
    /// queued request must wait (not first, or its GPUs are not free); a direct request
    /// that cannot be served gets `Busy`.
    pub(super) fn grant(
        &self,
        requester: &Requester,
        request: &LeaseRequest,
        ticket: Option<u64>,
    ) -> Result<Option<(Grant, Pending)>, ReservationError> {
        let snapshot = self.ring.latest();
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let expires_ms = self.expiry(request, now_ms)?;
        let mut state = self.lock();
        let assessed = self.assess(&snapshot, &state);
        let chosen = match &request.want {
            Want::Count(count) => {
                if *count == 0 || *count as usize > assessed.len() {
                    return Err(ReservationError::BadCount {
                        asked: *count,
                        gpus: assessed.len(),
                    });
                }
                // Waiting would not help: too many GPUs are kept back (unhealthy, drained).
                let kept_back: Vec<&Assessment> =
                    assessed.iter().filter(|a| !a.is_handed_out()).collect();
                if *count as usize > assessed.len() - kept_back.len() {
                    let why: Vec<String> = kept_back.iter().map(|a| describe(a, now_ms)).collect();
                    return Err(ReservationError::Busy(format!(
                        "{count} GPUs asked for: only {} of this node's {} GPUs are handed out now; {}",
                        assessed.len() - kept_back.len(),
                        assessed.len(),
                        why.join("; ")
                    )));
                }
                let ahead = state.ahead_of(ticket);
                let free: Vec<GpuRef> = assessed
                    .iter()
                    .filter(|a| a.is_free())
                    .map(|a| a.gpu.clone())
                    .collect();
                if ahead > 0 || free.len() < *count as usize {
                    if ticket.is_some() {
                        return Ok(None);
                    }
                    return Err(ReservationError::Busy(busy_message(
                        *count, &free, &assessed, ahead, now_ms,
                    )));
                }
                let mut ordered = allocate::order(free, requester.uid, &state.marks);
                ordered.truncate(*count as usize);
                ordered.sort_by_key(|gpu| (gpu.vendor, gpu.index));
                ordered
            }
            Want::Gpus(indices) => {
                let mut chosen = Vec::new();
                let mut refusals = Vec::new();
                for index in indices {
                    let assessment = assessment_of(&assessed, *index)?;
                    if chosen.iter().any(|gpu: &GpuRef| gpu.index == *index) {
                        return Err(ReservationError::Duplicate(*index));
                    }
                    if !assessment.is_free() {
                        refusals.push(describe(assessment, now_ms));
                    }
                    chosen.push(assessment.gpu.clone());
                }
                if !state.queue.is_empty() && ticket.is_none() {
                    refusals.push(format!(
                        "{} requests wait ahead in the queue (first come, first served)",
                        state.queue.len()
                    ));
                }
                if !refusals.is_empty() {
                    return Err(ReservationError::Busy(format!(
                        "not reserved: {}",
                        refusals.join("; ")
                    )));
                }
                chosen.sort_by_key(|gpu| (gpu.vendor, gpu.index));
                chosen
            }
        };
        state.last_lease += 1;
        let lease = state.last_lease;
        let note = clip_note(request.note.clone());
        let rows: Vec<ReservationRow> = chosen
            .iter()
            .map(|gpu| ReservationRow {
                lease,
                gpu_key: gpu.key.clone(),
                gpu_index: gpu.index,
                uid: requester.uid,
                user: requester.user.clone(),
                kind: request.kind,
                start_ms: now_ms,
                expires_ms,
                note: note.clone(),
                client_pid: request.client_pid,
                end_ms: None,
                end_reason: None,
            })
            .collect();
        let reason = match (request.kind, expires_ms) {
            (LeaseKind::Manual, Some(until)) => {
                format!("manual until {}{}", rfc3339_ms(until), note_suffix(&note))
            }
            (_, Some(until)) => format!("run until {}: {note}", rfc3339_ms(until)),
            (_, None) => format!("run: {note}"),
        };
        let events: Vec<NewEvent> = rows
            .iter()
            .map(|row| {
                event(
                    now,
                    &requester.caller,
                    "reserve",
                    row.gpu_index,
                    "ok",
                    &reason,
                )
            })
            .collect();
        let stored = rows.clone();
        let pending = self
            .log
            .submit_write(move |store| store.insert_reservations(&stored, &events))
            .map_err(ReservationError::Store)?;
        state.held.extend(rows);
        if request.kind == LeaseKind::Run {
            state.runs.insert(
                lease,
                RunLease {
                    attached: true,
                    deadline: Instant::now() + self.config.heartbeat_timeout,
                    caller: requester.caller.clone(),
                    ended: watch::channel(None).0,
                },
            );
        }
        if let Some(id) = ticket {
            state.queue.retain(|t| t.id != id);
        }
        for gpu in &chosen {
            state
                .marks
                .last_used
                .insert((requester.uid, gpu.key.clone()), now_ms);
        }
        let grant = Grant {
            lease,
            environment: allocate::environment(&chosen, &host_vendors(&snapshot)),
            gpus: chosen,
            expires_ms,
        };
        Ok(Some((grant, pending)))
    }

    /// When a request's reservation ends on its own.
    fn expiry(&self, request: &LeaseRequest, now_ms: i64) -> Result<Option<i64>, ReservationError> {
        let duration = match (request.kind, request.duration) {
            (LeaseKind::Manual, None) => self.config.default_duration,
            (LeaseKind::Run, None) => return Ok(None),
            (_, Some(duration)) => duration,
        };
        if duration.is_zero() || duration > self.config.max_duration {
            return Err(ReservationError::BadDuration {
                given: humantime::format_duration(duration).to_string(),
                max: humantime::format_duration(self.config.max_duration).to_string(),
            });
        }
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Ok(Some(now_ms.saturating_add(ms)))
    }
}

pub(super) fn host_vendors(snapshot: &Snapshot) -> Vec<Vendor> {
    let mut vendors: Vec<Vendor> = snapshot.gpus().map(|(vendor, _)| vendor).collect();
    vendors.dedup();
    vendors
}
