//! Drain and Undrain: an admin keeps a GPU from reserve and run, and gives it back. Thin
//! adapters: the admin gate (`authz`, a refusal recorded as a `deny` event), then
//! [`Reservations::drain`](crate::reservations::Reservations::drain) or `undrain`, which
//! keep the change and its `reservation` event in the store.

use std::sync::Arc;

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use super::kill::KillContext;
use super::reservations::{available, gpu_drain, reservation, reserved_gpu};
use crate::authz::{Caller, Principal};
use crate::reservations::ReservationsHandle;

/// The admin asking, after the admin gate: a non-admin is refused (PERMISSION_DENIED) and the
/// refusal recorded as a `deny` event of `action`.
async fn admin(
    context: &KillContext,
    caller: Caller,
    action: &str,
    what: &str,
) -> Result<Principal, RpcError> {
    let events = context.store.get().map_err(RpcError::AuditUnavailable)?;
    let principal = super::principal(caller, &context.admin_group).await?;
    super::admin_only(events, &principal, &context.admin_group, action, what).await?;
    Ok(principal)
}

/// Drain.
pub async fn drain(
    handle: &ReservationsHandle,
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::DrainRequest,
) -> Result<pb::DrainResponse, RpcError> {
    let action = format!("drain GPU {}", request.gpu_index);
    let principal = admin(context, caller, &action, "draining a GPU").await?;
    let reservations = available(handle)?;
    let drained = reservations
        .drain(
            &crate::actions::event_caller(&principal),
            request.gpu_index,
            request.reason,
        )
        .await?;
    let status = reservations.status();
    Ok(pb::DrainResponse {
        gpu: Some(reserved_gpu(&drained.gpu)),
        drain: Some(gpu_drain(&drained.drain)),
        already_drained: drained.already,
        reservation: drained
            .holder
            .as_ref()
            .map(|row| reservation(row, &status, true)),
    })
}

/// Undrain.
pub async fn undrain(
    handle: &ReservationsHandle,
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::UndrainRequest,
) -> Result<pb::UndrainResponse, RpcError> {
    let action = format!("undrain GPU {}", request.gpu_index);
    let principal = admin(context, caller, &action, "undraining a GPU").await?;
    let reservations = available(handle)?;
    let undrained = reservations
        .undrain(&crate::actions::event_caller(&principal), request.gpu_index)
        .await?;
    let gpu = match (&undrained.gpu, &undrained.drain) {
        (Some(gpu), _) => reserved_gpu(gpu),
        // A drained GPU that no longer shows: what its drain knew of it.
        (None, drain) => pb::ReservedGpu {
            index: undrained.index,
            uuid: drain
                .as_ref()
                .filter(|d| !d.gpu_key.starts_with("index:"))
                .map(|d| d.gpu_key.clone()),
            vendor: pb::Vendor::Unspecified.into(),
            name: None,
        },
    };
    Ok(pb::UndrainResponse {
        gpu: Some(gpu),
        was_drained: undrained.drain.is_some(),
        drain: undrained.drain.as_ref().map(gpu_drain),
    })
}
