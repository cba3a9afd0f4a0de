//! `GuardPolicy` and `GuardUpdate`: reading the policy file, and changing it (admins only;
//! every change, and every refusal, goes to the audit trail as a `policy` event).

use std::sync::Arc;
use std::time::SystemTime;

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use super::kill::{KillContext, event_caller};
use crate::authz::{Caller, Principal};
use crate::guard::edit::{Change, EntryKind};
use crate::guard::engine::{Guard, UpdateError};
use crate::guard::policy::Mode;
use crate::store::{EventKind, NewEvent};

/// Answers `GuardPolicy`. Anyone may read the policy; only admins see its secrets (webhook
/// credentials and the like), everyone else sees them redacted (`authz::redact`).
pub async fn policy(
    guard: &Arc<Guard>,
    context: &Arc<KillContext>,
    caller: Caller,
) -> Result<pb::GuardPolicyResponse, RpcError> {
    let reading = Arc::clone(guard);
    let admin_group = context.admin_group.clone();
    let path = guard.path().display().to_string();
    let shown_path = path.clone();
    // The user lookup and the file read both block.
    let text = tokio::task::spawn_blocking(move || {
        let principal = Principal::resolve(caller, &admin_group);
        let text = reading
            .text()
            .map_err(|error| RpcError::GuardUpdate(error.to_string()))?;
        crate::authz::redact::shown_to(&principal, &shown_path, text)
            .map_err(|error| RpcError::NotAdmin(error.to_string()))
    })
    .await
    .map_err(|_| RpcError::Internal("reading the policy panicked"))??;
    Ok(pb::GuardPolicyResponse { path, text })
}

/// Answers `GuardUpdate`.
pub async fn update(
    guard: &Arc<Guard>,
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::GuardUpdateRequest,
) -> Result<pb::GuardUpdateResponse, RpcError> {
    let events = context.store.get().map_err(RpcError::AuditUnavailable)?;
    let change = change(request)?;
    let principal = super::principal(caller, &context.admin_group).await?;
    let record = |kind: EventKind, outcome: &str, reason: String| NewEvent {
        time: SystemTime::now(),
        kind,
        caller: event_caller(&principal),
        action: change.to_string(),
        target: None,
        outcome: outcome.to_owned(),
        reason,
    };
    super::admin_only(
        events,
        &principal,
        &context.admin_group,
        &change.to_string(),
        "changing the guard policy",
    )
    .await?;
    let updating = Arc::clone(guard);
    let applied = change.clone();
    let result = tokio::task::spawn_blocking(move || updating.update(&applied))
        .await
        .map_err(|_| RpcError::Internal("the policy update panicked"))?;
    let event = match &result {
        Ok(summary) => record(EventKind::Policy, "changed", summary.clone()),
        Err(error) => record(EventKind::Policy, "rejected", error.to_string()),
    };
    if let Err(error) = events.record(vec![event]).await {
        tracing::error!(%error, "cannot record a policy change");
    }
    match result {
        Ok(summary) => {
            tracing::info!(user = %principal.user, uid = principal.caller.uid, "{change}: {summary}");
            Ok(pb::GuardUpdateResponse { summary })
        }
        Err(error @ UpdateError::Io { .. }) => Err(RpcError::GuardUpdate(error.to_string())),
        Err(error) => Err(RpcError::InvalidPolicy(error.to_string())),
    }
}

/// The change a request asks for, checked.
fn change(request: pb::GuardUpdateRequest) -> Result<Change, RpcError> {
    use pb::guard_update_request::Change as Asked;
    let kind = |kind: &str| {
        EntryKind::parse(kind).ok_or_else(|| {
            RpcError::InvalidPolicy(format!(
                "unknown entry kind {kind:?}: use user, group or gpu"
            ))
        })
    };
    match request.change {
        None => Err(RpcError::InvalidPolicy(
            "say what to change: enabled, mode, add, remove or replace".to_owned(),
        )),
        Some(Asked::Enabled(enabled)) => Ok(Change::Enabled(enabled)),
        Some(Asked::Mode(mode)) => mode
            .parse::<Mode>()
            .map(Change::Mode)
            .map_err(RpcError::InvalidPolicy),
        Some(Asked::Add(entry)) => Ok(Change::Add {
            kind: kind(&entry.kind)?,
            fragment: entry.toml,
        }),
        Some(Asked::Remove(entry)) => Ok(Change::Remove {
            kind: kind(&entry.kind)?,
            key: entry.key,
        }),
        Some(Asked::Replace(text)) => Ok(Change::Replace(text)),
    }
}
