//! `Reset`: admins only; the GPUs must exist, support reset and be idle (or, with force,
//! have their processes killed first through the same checks as `Kill`). Every attempt,
//! refused or not, is audited; a reset (and each kill before it) is recorded before it
//! runs, and not run when that record cannot be written.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::reset_request::Target as Selection;

use super::error::RpcError;
use super::kill::{KillContext, event_caller, result};
use crate::actions::audit;
use crate::actions::kill::{self, KillOptions, Outcome, Selector};
use crate::actions::reset;
use crate::authz::{Caller, Principal};
use crate::health::Tracker;
use crate::ring::Ring;
use crate::snapshot::{Gpu, Vendor};
use crate::store::{Database, EventKind, NewEvent};

/// How long the processes of a GPU get after SIGTERM before SIGKILL, with force.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset GPU has to answer again (a few ticks).
const COME_BACK: Duration = Duration::from_secs(30);

/// Answers `Reset`. A GPU that comes back from its reset starts a new health record: what
/// it showed before (an Xid 79, uncorrectable errors) no longer keeps it critical.
pub async fn reset(
    ring: &Arc<Ring>,
    context: &Arc<KillContext>,
    tools: &reset::ResetTools,
    health: &Mutex<Tracker>,
    caller: Caller,
    request: pb::ResetRequest,
) -> Result<pb::ResetResponse, RpcError> {
    let events = context.store.get().map_err(RpcError::AuditUnavailable)?;
    let principal = super::principal(caller, &context.admin_group).await?;
    let (gpus, described) = select(ring, request.target)?;
    let action = format!(
        "reset {described}{}",
        if request.force { " --force" } else { "" }
    );
    let refuse = |reason: String| NewEvent {
        time: SystemTime::now(),
        kind: EventKind::Deny,
        caller: event_caller(&principal),
        action: action.clone(),
        target: None,
        outcome: "denied".to_string(),
        reason,
    };

    super::admin_only(
        events,
        &principal,
        &context.admin_group,
        &action,
        "resetting a GPU",
    )
    .await?;
    if let Some(reason) = gpus
        .iter()
        .find_map(|(vendor, gpu)| reset::unsupported_reason(*vendor, gpu))
    {
        let mut event = refuse(reason.clone());
        event.kind = EventKind::Reset;
        event.outcome = "unsupported".to_string();
        record(events, vec![event]).await;
        return Err(RpcError::ResetUnsupported(reason));
    }
    let snapshot = ring.latest();
    let busy: Vec<String> = snapshot
        .processes()
        .filter(|p| gpus.iter().any(|(_, g)| g.index == p.slot.gpu_index))
        .map(|p| {
            format!(
                "{} (pid {}, {}) on GPU {}",
                p.slot.info.name, p.slot.info.pid, p.slot.info.user, p.slot.gpu_index
            )
        })
        .collect();
    if !busy.is_empty() && !request.force {
        let reason = format!(
            "{} process(es) still use the GPU: {}; stop them, or force the reset to kill them first",
            busy.len(),
            busy.join(", ")
        );
        let mut event = refuse(reason.clone());
        event.kind = EventKind::Reset;
        event.outcome = "refused".to_string();
        record(events, vec![event]).await;
        return Err(RpcError::ResetBusy(reason));
    }

    let mut results = Vec::with_capacity(gpus.len());
    for (vendor, gpu) in gpus {
        let pci_bus_id = gpu.pci_bus_id.as_deref().unwrap_or_default().to_string();
        let (killed, kill_failure) = if request.force {
            kill_processes_on(ring, context, events, &principal, &action, gpu.index).await?
        } else {
            (Vec::new(), None)
        };
        let event = |outcome: &str, reason: String| NewEvent {
            time: SystemTime::now(),
            kind: EventKind::Reset,
            caller: event_caller(&principal),
            action: format!("{action} (GPU {} at {pci_bus_id})", gpu.index),
            target: None,
            outcome: outcome.to_string(),
            reason,
        };
        let (outcome, reason) = match kill_failure {
            Some(reason) => {
                record(events, vec![event("failed", reason.clone())]).await;
                (pb::ResetOutcome::Failed, reason)
            }
            None => {
                let intent = event(
                    audit::RESETTING,
                    format!("about to run the {} reset tool", vendor.name()),
                );
                audit::recorded(events, intent, async {
                    let started = SystemTime::now();
                    let done = match reset::reset_gpu(tools, vendor, &gpu).await {
                        Ok(printed) => {
                            reset::wait_until_back(ring, vendor, &pci_bus_id, started, COME_BACK)
                                .await
                                .map(|()| printed)
                        }
                        Err(reason) => Err(reason),
                    };
                    let (outcome, reason) = match done {
                        Ok(printed) => (pb::ResetOutcome::Reset, printed),
                        Err(reason) => (pb::ResetOutcome::Failed, reason),
                    };
                    let stored = if outcome == pb::ResetOutcome::Reset {
                        "reset"
                    } else {
                        "failed"
                    };
                    ((outcome, reason.clone()), stored.to_string(), reason)
                })
                .await
                .map_err(audit::ActError::from)?
            }
        };
        if outcome == pb::ResetOutcome::Reset {
            let key = crate::health::key(gpu.uuid.as_ref(), vendor.name(), gpu.vendor_index);
            health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .acknowledge(&key);
        }
        tracing::info!(caller = %principal.user, gpu = gpu.index, pci = %pci_bus_id, ?outcome, %reason, "{action}");
        results.push(pb::ResetResult {
            gpu_index: gpu.index,
            pci_bus_id,
            outcome: outcome.into(),
            reason,
            killed,
        });
    }
    Ok(pb::ResetResponse { results })
}

/// The GPUs a request names, from the latest snapshot: one by its host index, or with
/// `--all` every GPU of a vendor gpukill can reset (an Intel GPU beside them is left alone).
fn select(
    ring: &Ring,
    target: Option<Selection>,
) -> Result<(Vec<(Vendor, Gpu)>, String), RpcError> {
    let snapshot = ring.latest();
    let gpus = snapshot.gpus().map(|(vendor, gpu)| (vendor, gpu.clone()));
    match target.ok_or(RpcError::NoResetSelector)? {
        Selection::All(_) => Ok((
            gpus.filter(|(vendor, _)| reset::vendor_can_reset(*vendor))
                .collect(),
            "--all".to_string(),
        )),
        Selection::GpuIndex(index) => {
            let count = snapshot.gpus().count() as u32;
            let gpu = gpus
                .into_iter()
                .find(|(_, gpu)| gpu.index == index)
                .ok_or(kill::SelectError::NoSuchGpu { index, count })?;
            Ok((vec![gpu], format!("--gpu {index}")))
        }
    }
}

/// Kills the processes on one GPU (force) and reports the first one that would not die.
async fn kill_processes_on(
    ring: &Arc<Ring>,
    context: &Arc<KillContext>,
    events: &Arc<Database>,
    principal: &Principal,
    action: &str,
    index: u32,
) -> Result<(Vec<pb::KillResult>, Option<String>), RpcError> {
    let snapshot = ring.latest();
    let targets = tokio::task::spawn_blocking(move || {
        match kill::select(&snapshot, &Selector::Gpu(index), false, "") {
            Ok(targets) => Ok(targets),
            Err(kill::SelectError::NoMatch(_)) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    })
    .await
    .map_err(|_| RpcError::Internal("target selection panicked"))??;
    if targets.is_empty() {
        return Ok((Vec::new(), None));
    }
    let request = audit::Request {
        principal,
        action,
        context: None,
        refused: EventKind::Deny,
    };
    let options = KillOptions {
        timeout: KILL_TIMEOUT,
        force: true,
    };
    let decided = audit::kill(
        events,
        request,
        context.protection.clone(),
        targets,
        options,
    )
    .await?;
    let failure = decided
        .iter()
        .find(|d| {
            !matches!(
                d.outcome,
                Outcome::Terminated | Outcome::Killed | Outcome::AlreadyGone
            )
        })
        .map(|d| {
            format!(
                "not reset: {} (pid {}) on GPU {index} was not killed ({}: {})",
                d.target.info.name,
                d.target.info.pid,
                d.outcome.as_str(),
                d.reason
            )
        });
    Ok((decided.iter().map(result).collect(), failure))
}

async fn record(events: &Database, batch: Vec<NewEvent>) {
    if let Err(error) = events.record(batch).await {
        tracing::error!(%error, "cannot write the audit events of a reset");
    }
}
