//! `Kill`: parse the selection, attribute the caller, choose the targets, and hand them to
//! `actions::audit::kill`, which protects, authorizes, writes every decision to the audit
//! trail before any signal, signals, and records the outcomes.

use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::kill_request::Target as Selection;
use regex::Regex;

use super::convert;
use super::error::RpcError;
use crate::actions::audit;
use crate::actions::kill::{self, Decided, KillOptions, Outcome, Selector};
use crate::actions::protect::Protection;
use crate::authz::{Caller, Principal};
use crate::ring::Ring;
use crate::store::{EventKind, StoreHandle};

/// SIGTERM's default time to work.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a caller may ask to wait.
const MAX_TIMEOUT_SECS: u32 = 3600;

/// What killing needs besides the snapshot.
pub struct KillContext {
    /// Never-signal rules.
    pub protection: Protection,
    /// The admin group's name.
    pub admin_group: String,
    /// The audit trail; without it nothing is killed.
    pub store: StoreHandle,
    /// The database file `events` writes (`Health` names it).
    pub store_path: std::path::PathBuf,
    /// The daemon's supervised background tasks (`Health` reports them).
    pub tasks: crate::service::tasks::Tasks,
}

/// A request, checked.
struct Parsed {
    selector: Selector,
    /// How the selection reads on the command line, for the audit trail.
    described: String,
    /// The selection in words, for messages to any client (`filter "py"`, `GPU 3`).
    selection: String,
    options: KillOptions,
    batch: bool,
}

fn parse(request: pb::KillRequest) -> Result<(Parsed, Option<String>), RpcError> {
    let timeout = match request.timeout_secs {
        0 => DEFAULT_TIMEOUT,
        secs if secs <= MAX_TIMEOUT_SECS => Duration::from_secs(u64::from(secs)),
        secs => return Err(RpcError::InvalidTimeout(secs)),
    };
    let mut user_name = None;
    let (selector, described, selection) = match request.target.ok_or(RpcError::NoSelector)? {
        Selection::Pid(pid) => (
            Selector::Pid(pid),
            format!("--pid {pid}"),
            format!("pid {pid}"),
        ),
        Selection::Filter(pattern) => {
            let regex = Regex::new(&pattern).map_err(|source| RpcError::InvalidRegex {
                pattern: pattern.clone(),
                source,
            })?;
            (
                Selector::Filter(regex),
                format!("--filter {pattern:?}"),
                format!("filter {pattern:?}"),
            )
        }
        Selection::GpuIndex(index) => (
            Selector::Gpu(index),
            format!("--gpu {index}"),
            format!("GPU {index}"),
        ),
        Selection::User(user) => {
            let described = format!("--user {user}");
            let selection = format!("user {user}");
            user_name = Some(user);
            // Resolved off the runtime (NSS) together with the caller.
            (Selector::User(u32::MAX), described, selection)
        }
    };
    Ok((
        Parsed {
            selector,
            described,
            selection,
            options: KillOptions {
                timeout,
                force: request.force,
            },
            batch: request.batch,
        },
        user_name,
    ))
}

/// A user name or a numeric uid, from the user database.
fn resolve_uid(user: &str) -> Result<u32, RpcError> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(found)) => Ok(found.uid.as_raw()),
        _ => Err(RpcError::UnknownUser(user.to_string())),
    }
}

/// Answers `Kill`.
pub async fn kill(
    ring: &Ring,
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::KillRequest,
) -> Result<pb::KillResponse, RpcError> {
    let events = context.store.get().map_err(RpcError::AuditUnavailable)?;
    let (mut parsed, user_name) = parse(request)?;
    let snapshot = ring.latest();
    let blocking_context = Arc::clone(context);
    // NSS lookups and /proc reads block: off the runtime.
    let (principal, parsed, targets) = tokio::task::spawn_blocking(move || {
        let principal = Principal::resolve(caller, &blocking_context.admin_group);
        if let Some(user) = user_name {
            parsed.selector = Selector::User(resolve_uid(&user)?);
        }
        let targets = kill::select(
            &snapshot,
            &parsed.selector,
            parsed.options.force,
            &parsed.selection,
        )?;
        Ok::<_, RpcError>((principal, parsed, targets))
    })
    .await
    .map_err(|_| RpcError::Internal("target selection panicked"))??;

    if targets.len() > 1 && !parsed.batch {
        let results = targets
            .into_iter()
            .map(|target| Decided {
                target,
                outcome: Outcome::Matched,
                reason: String::new(),
            })
            .collect::<Vec<_>>();
        return Ok(pb::KillResponse {
            results: results.iter().map(result).collect(),
            needs_batch: true,
        });
    }

    let options = parsed.options;
    let action = format!(
        "kill {}{}{} --timeout-secs {}",
        parsed.described,
        if parsed.batch { " --batch" } else { "" },
        if options.force { " --force" } else { "" },
        options.timeout.as_secs()
    );
    let request = audit::Request {
        principal: &principal,
        action: &action,
        context: None,
        refused: EventKind::Deny,
    };
    let decided = audit::kill(
        events,
        request,
        context.protection.clone(),
        targets,
        options,
    )
    .await?;
    for decided in &decided {
        tracing::info!(
            caller = %principal.user,
            uid = principal.caller.uid,
            pid = decided.target.info.pid,
            target_user = %decided.target.info.user,
            outcome = decided.outcome.as_str(),
            reason = %decided.reason,
            "{action}"
        );
    }
    Ok(pb::KillResponse {
        results: decided.iter().map(result).collect(),
        needs_batch: false,
    })
}

/// The API view of one kill result.
pub(super) fn result(decided: &Decided) -> pb::KillResult {
    let info = &decided.target.info;
    pb::KillResult {
        target: Some(pb::KillTarget {
            pid: info.pid,
            start_time_unix_ms: convert::unix_ms(info.start_time),
            uid: info.uid,
            user: info.user.to_string(),
            name: info.name.clone(),
            cmdline: info.cmdline.clone(),
            gpu_index: decided.target.gpu_index,
        }),
        outcome: convert::kill_outcome(decided.outcome).into(),
        reason: decided.reason.clone(),
    }
}

pub(super) use crate::actions::event_caller;
