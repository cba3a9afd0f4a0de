//! Reserve, Release and Reservations: thin adapters over [`crate::reservations`]. The
//! streaming Run is in [`super::run`], Drain and Undrain in [`super::drain`].

use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use crate::authz::Caller;
use crate::reservations::usage::{Assessment, GpuRef, GpuState};
use crate::reservations::{
    LeaseRequest, Requester, ReservationError, Reservations, ReservationsHandle, Status, Want,
};
use crate::store::{DrainRow, LeaseKind, ReservationRow};

/// The reservations, or `StoreUnavailable`.
pub(crate) fn available(handle: &ReservationsHandle) -> Result<&Arc<Reservations>, RpcError> {
    handle.as_ref().map_err(|error| {
        RpcError::StoreUnavailable(format!(
            "{error}; reservations are kept in it, so they are off"
        ))
    })
}

/// Who asks, from the kernel's credentials (a user database lookup, off the runtime).
/// Remote and forwarded callers have no user on this host.
pub(crate) async fn requester(caller: Caller, admin_group: &str) -> Result<Requester, RpcError> {
    if caller.remote.is_some() {
        return Err(ReservationError::NotLocal.into());
    }
    let principal = super::principal(caller, admin_group).await?;
    Ok(Requester {
        uid: principal.caller.uid,
        user: principal.user.clone(),
        admin: principal.admin,
        caller: crate::actions::event_caller(&principal),
    })
}

/// Reserve.
pub async fn reserve(
    reservations: &Reservations,
    requester: Requester,
    request: pb::ReserveRequest,
) -> Result<pb::ReserveResponse, RpcError> {
    let want = if request.gpu_indices.is_empty() {
        Want::Count(request.count.max(1))
    } else {
        Want::Gpus(request.gpu_indices)
    };
    let lease = LeaseRequest {
        want,
        kind: LeaseKind::Manual,
        duration: (request.duration_ms > 0).then(|| Duration::from_millis(request.duration_ms)),
        note: crate::reservations::clip_note(request.note),
        client_pid: requester.caller.pid,
    };
    let grant = reservations.reserve(&requester, &lease).await?;
    Ok(pb::ReserveResponse {
        reservation_id: grant.lease,
        gpus: grant.gpus.iter().map(reserved_gpu).collect(),
        expires_unix_ms: grant.expires_ms.unwrap_or_default(),
    })
}

/// Release.
pub async fn release(
    reservations: &Reservations,
    requester: Requester,
    request: pb::ReleaseRequest,
) -> Result<pb::ReleaseResponse, RpcError> {
    let ended = reservations
        .release(&requester, &request.gpu_indices)
        .await?;
    let status = reservations.status();
    Ok(pb::ReleaseResponse {
        released: ended
            .iter()
            .map(|row| reservation(row, &status, false))
            .collect(),
    })
}

/// Reservations.
pub fn status(reservations: &Reservations) -> pb::ReservationsResponse {
    let status = reservations.status();
    pb::ReservationsResponse {
        gpus: status
            .gpus
            .iter()
            .map(|assessment| gpu_reservation(assessment, &status))
            .collect(),
        queue: status
            .queue
            .iter()
            .map(|ticket| pb::WaitingRequest {
                user: ticket.user.clone(),
                uid: ticket.uid,
                count: ticket.count,
                since_unix_ms: ticket.since_ms,
                command: ticket.command.clone(),
            })
            .collect(),
        unreserved_threshold_bytes: status.threshold,
        now_unix_ms: status.now_ms,
        queue_total: u32::try_from(status.queue_total).unwrap_or(u32::MAX),
        reservations_used: status.used,
    }
}

fn gpu_reservation(assessment: &Assessment, status: &Status) -> pb::GpuReservation {
    let state = match assessment.state {
        GpuState::Available => pb::ReservationState::Available,
        GpuState::Reserved => pb::ReservationState::Reserved,
        GpuState::UnreservedUse => pb::ReservationState::UnreservedUse,
        GpuState::WrongUser => pb::ReservationState::WrongUser,
    };
    pb::GpuReservation {
        gpu: Some(reserved_gpu(&assessment.gpu)),
        state: state.into(),
        reservation: assessment
            .holder
            .as_ref()
            .map(|row| reservation(row, status, true)),
        misuse: assessment
            .misuse
            .iter()
            .map(|misuse| pb::MisusingProcess {
                pid: misuse.info.pid,
                user: misuse.info.user.to_string(),
                uid: misuse.info.uid,
                name: misuse.info.name.clone(),
                used_memory_bytes: misuse.used_memory_bytes,
            })
            .collect(),
        unfit: assessment.unfit.clone(),
        drained: assessment.drained.as_ref().map(gpu_drain),
    }
}

/// An admin's drain in the API.
pub(crate) fn gpu_drain(drain: &DrainRow) -> pb::GpuDrain {
    pb::GpuDrain {
        by: drain.user.clone(),
        uid: (drain.uid != crate::authz::NO_UID).then_some(drain.uid),
        reason: drain.reason.clone(),
        since_unix_ms: drain.since_ms,
    }
}

/// A GPU in the API.
pub(crate) fn reserved_gpu(gpu: &GpuRef) -> pb::ReservedGpu {
    pb::ReservedGpu {
        index: gpu.index,
        uuid: gpu.uuid.as_deref().map(str::to_owned),
        vendor: super::convert::vendor(gpu.vendor).into(),
        name: gpu.name.as_deref().map(str::to_owned),
    }
}

/// A reservation row in the API; `held` says whether it is held now (a run's client
/// connection is then known).
pub(crate) fn reservation(row: &ReservationRow, status: &Status, held: bool) -> pb::Reservation {
    let kind = match row.kind {
        LeaseKind::Run => pb::ReservationKind::Run,
        LeaseKind::Manual => pb::ReservationKind::Manual,
    };
    let gpu = status
        .gpus
        .iter()
        .find(|a| a.gpu.key == row.gpu_key)
        .map(|a| reserved_gpu(&a.gpu))
        .unwrap_or(pb::ReservedGpu {
            index: row.gpu_index,
            uuid: (!row.gpu_key.starts_with("index:")).then(|| row.gpu_key.clone()),
            vendor: pb::Vendor::Unspecified.into(),
            name: None,
        });
    pb::Reservation {
        id: row.lease,
        gpu: Some(gpu),
        user: row.user.clone(),
        uid: row.uid,
        kind: kind.into(),
        start_unix_ms: row.start_ms,
        expires_unix_ms: row.expires_ms,
        note: row.note.clone(),
        client_pid: row.client_pid,
        attached: held && status.attached.get(&row.lease).copied().unwrap_or(false),
    }
}
