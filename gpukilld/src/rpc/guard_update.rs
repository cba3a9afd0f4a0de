//! `GuardPolicy` and `GuardUpdate`: reading the policy file, and changing it (admins only;
//! every change, and every refusal, goes to the audit trail as a `policy` event).

use std::sync::Arc;
use std::time::SystemTime;

use gpukill_proto::v1 as pb;

use super::convert;
use super::error::RpcError;
use super::kill::{KillContext, event_caller};
use crate::authz::{Caller, Principal};
use crate::guard::edit::Change;
use crate::guard::engine::{Guard, UpdateError};
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
    match request.change {
        None => Err(RpcError::InvalidPolicy(
            "say what to change: enabled, mode, add, remove or replace".to_owned(),
        )),
        Some(Asked::Enabled(enabled)) => Ok(Change::Enabled(enabled)),
        Some(Asked::Mode(mode)) => convert::guard_mode(mode).map(Change::Mode),
        Some(Asked::Add(entry)) => Ok(Change::Add {
            kind: convert::guard_entry_kind(entry.kind)?,
            fragment: entry.toml,
        }),
        Some(Asked::Remove(entry)) => Ok(Change::Remove {
            kind: convert::guard_entry_kind(entry.kind)?,
            key: entry.key,
        }),
        Some(Asked::Replace(text)) => Ok(Change::Replace(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::edit::EntryKind;
    use crate::guard::policy::Mode;
    use pb::guard_update_request::Change as Asked;
    use tonic::{Code, Status};

    fn asked(asked: Asked) -> Result<Change, RpcError> {
        change(pb::GuardUpdateRequest {
            change: Some(asked),
        })
    }

    #[test]
    fn modes_and_entry_kinds_are_converted() {
        let hard = asked(Asked::Mode(pb::GuardMode::Hard.into())).unwrap();
        assert_eq!(hard, Change::Mode(Mode::Hard));
        let remove = asked(Asked::Remove(pb::GuardEntryKey {
            kind: pb::GuardEntryKind::Group.into(),
            key: "ml".into(),
        }))
        .unwrap();
        assert_eq!(
            remove,
            Change::Remove {
                kind: EntryKind::Group,
                key: "ml".into()
            }
        );
    }

    #[test]
    fn an_unspecified_or_unknown_mode_or_kind_is_invalid_argument() {
        let entry = |kind: i32| {
            Asked::Add(pb::GuardEntry {
                kind,
                toml: "name = \"alice\"".into(),
            })
        };
        for (refused, named) in [
            (Asked::Mode(0), "guard mode 0"),
            (Asked::Mode(4), "guard mode 4"),
            (entry(0), "guard entry kind 0"),
            (entry(17), "guard entry kind 17"),
        ] {
            let status = Status::from(asked(refused).expect_err("refused"));
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status
                    .message()
                    .starts_with(&format!("invalid {named}: use ")),
                "{}",
                status.message()
            );
        }
    }
}
