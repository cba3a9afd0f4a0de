//! GPU health on the wire: the assessed state, its reasons and the readings as
//! `pb::GpuHealth`; and `HealthClear`, an admin acknowledging a GPU's critical state.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use gpukill_proto::v1 as pb;

use super::convert::unix_ms;
use super::error::RpcError;
use super::kill::{KillContext, event_caller};
use crate::actions::kill::SelectError;
use crate::authz::Caller;
use crate::health::{self, Condition, HealthState, Tracker, xid};
use crate::ring::Ring;
use crate::snapshot::Gpu;
use crate::store::{EventKind, NewEvent};

/// Answers `HealthClear`: an admin acknowledges what the GPU shows now, so only new errors
/// make it critical again (from the next snapshot on). Recorded as a `health` event; a
/// refusal as a `deny` event.
pub async fn clear(
    ring: &Ring,
    tracker: &Mutex<Tracker>,
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::HealthClearRequest,
) -> Result<pb::HealthClearResponse, RpcError> {
    let events = context.store.get().map_err(RpcError::AuditUnavailable)?;
    let principal = super::principal(caller, &context.admin_group).await?;
    let action = format!("health clear (GPU {})", request.gpu_index);
    super::admin_only(
        events,
        &principal,
        &context.admin_group,
        &action,
        "clearing a GPU's health",
    )
    .await?;
    let snapshot = ring.latest();
    let Some((vendor, gpu)) = snapshot
        .gpus()
        .find(|(_, gpu)| gpu.index == request.gpu_index)
    else {
        return Err(RpcError::Select(SelectError::NoSuchGpu {
            index: request.gpu_index,
            count: u32::try_from(snapshot.gpus().count()).unwrap_or(u32::MAX),
        }));
    };
    let key = health::key(gpu.uuid.as_ref(), vendor.name(), gpu.vendor_index);
    tracker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .acknowledge(&key);
    let acknowledged: Vec<String> = gpu
        .health
        .reasons
        .iter()
        .filter(|reason| reason.severity >= HealthState::Critical)
        .map(|reason| reason.text.clone())
        .collect();
    let event = NewEvent {
        time: SystemTime::now(),
        kind: EventKind::Health,
        caller: event_caller(&principal),
        action: format!("{action} {key}"),
        target: None,
        outcome: "cleared".to_owned(),
        reason: if acknowledged.is_empty() {
            format!("was {}", gpu.health.state)
        } else {
            format!("was {}: {}", gpu.health.state, acknowledged.join("; "))
        },
    };
    events
        .record(vec![event])
        .await
        .map_err(|error| RpcError::AuditUnavailable(error.to_string()))?;
    tracing::info!(gpu = gpu.index, %key, by = %principal.caller, "health cleared");
    Ok(pb::HealthClearResponse {
        previous: pb::HealthState::from(gpu.health.state).into(),
        acknowledged,
    })
}

impl From<HealthState> for pb::HealthState {
    fn from(state: HealthState) -> Self {
        match state {
            HealthState::Unknown => pb::HealthState::Unknown,
            HealthState::Ok => pb::HealthState::Ok,
            HealthState::Warning => pb::HealthState::Warning,
            HealthState::Critical => pb::HealthState::Critical,
            HealthState::Lost => pb::HealthState::Lost,
        }
    }
}

impl TryFrom<pb::HealthState> for HealthState {
    /// Unset: a node that does not assess health.
    type Error = ();

    fn try_from(state: pb::HealthState) -> Result<Self, ()> {
        match state {
            pb::HealthState::Unspecified => Err(()),
            pb::HealthState::Unknown => Ok(HealthState::Unknown),
            pb::HealthState::Ok => Ok(HealthState::Ok),
            pb::HealthState::Warning => Ok(HealthState::Warning),
            pb::HealthState::Critical => Ok(HealthState::Critical),
            pb::HealthState::Lost => Ok(HealthState::Lost),
        }
    }
}

impl From<Condition> for pb::HealthCondition {
    fn from(condition: Condition) -> Self {
        match condition {
            Condition::Lost => pb::HealthCondition::Lost,
            Condition::Xid => pb::HealthCondition::Xid,
            Condition::EccUncorrectable => pb::HealthCondition::EccUncorrectable,
            Condition::RemappedUncorrectable => pb::HealthCondition::RemappedUncorrectable,
            Condition::RemapFailure => pb::HealthCondition::RemapFailure,
            Condition::RasUncorrectable => pb::HealthCondition::RasUncorrectable,
            Condition::Throttle => pb::HealthCondition::Throttle,
            Condition::CorrectableErrors => pb::HealthCondition::CorrectableErrors,
            Condition::RetirementPending => pb::HealthCondition::RetirementPending,
            Condition::RemapPending => pb::HealthCondition::RemapPending,
        }
    }
}

/// A GPU's health as sent (with its GPM activity, which the snapshot keeps beside it).
pub fn gpu_health(gpu: &Gpu) -> pb::GpuHealth {
    let health = &gpu.health;
    let reading = &health.reading;
    let gpm = gpu.gpm.unwrap_or_default();
    pb::GpuHealth {
        state: pb::HealthState::from(health.state).into(),
        reasons: health
            .reasons
            .iter()
            .map(|reason| pb::HealthReason {
                severity: pb::HealthState::from(reason.severity).into(),
                condition: pb::HealthCondition::from(reason.condition).into(),
                text: reason.text.clone(),
            })
            .collect(),
        ecc_sbe_volatile: reading.ecc_sbe_volatile,
        ecc_dbe_volatile: reading.ecc_dbe_volatile,
        ecc_sbe_aggregate: reading.ecc_sbe_aggregate,
        ecc_dbe_aggregate: reading.ecc_dbe_aggregate,
        retired_sbe: reading.retired_sbe,
        retired_dbe: reading.retired_dbe,
        retired_pending: reading.retired_pending,
        remapped_correctable: reading.remapped_correctable,
        remapped_uncorrectable: reading.remapped_uncorrectable,
        remap_pending: reading.remap_pending,
        remap_failure: reading.remap_failure,
        throttle_reasons: reading.throttle.map(|throttle| throttle.0),
        throttle: reading
            .throttle
            .map(|throttle| throttle.names())
            .unwrap_or_default(),
        pstate: reading.pstate,
        pcie_replay: reading.pcie_replay,
        ras: reading
            .ras
            .iter()
            .map(|block| pb::RasCount {
                block: block.block.to_string(),
                correctable: block.correctable,
                uncorrectable: block.uncorrectable,
            })
            .collect(),
        gpm_graphics_engine_active: gpm.graphics_engine,
        gpm_sm_active: gpm.sm,
        gpm_tensor_active: gpm.tensor,
        gpm_dram_active: gpm.dram,
        recent_xids: health
            .recent_xids
            .iter()
            .map(|event| pb::XidError {
                code: event.code,
                time_unix_ms: unix_ms(event.time),
                meaning: xid::meaning(event.code).to_owned(),
            })
            .collect(),
        xid_counts: health
            .xid_counts
            .iter()
            .map(|(code, count)| pb::XidCount {
                code: *code,
                count: *count,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_and_the_daemon_agree_on_which_states_are_unfit() {
        // Coordinators and clients judge a node's GPUs by `pb::HealthState::is_unfit`;
        // reservations judge them by the domain's: the two must be the same rule.
        for state in HealthState::ALL {
            let wire = pb::HealthState::from(state);
            assert_eq!(wire.is_unfit(), state.is_unfit(), "{state}");
            assert_eq!(HealthState::try_from(wire), Ok(state));
        }
        assert_eq!(HealthState::try_from(pb::HealthState::Unspecified), Err(()));
        assert!(!pb::HealthState::Unspecified.is_unfit());
    }
}
