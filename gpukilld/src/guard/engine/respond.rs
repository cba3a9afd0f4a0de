//! Acting on the guard's decisions: each is logged, written to the audit trail and
//! announced (webhook, the user's terminals); an `Act` kills through `actions::audit::kill`
//! (no record, no kill) on its own task, and records and announces each outcome.

use std::sync::Arc;
use std::time::SystemTime;

use super::Loaded;
use crate::actions::audit;
use crate::actions::kill::{KillOptions, Outcome, Target};
use crate::actions::{event_caller, event_target};
use crate::authz::Principal;
use crate::guard::counters::GuardCounters;
use crate::guard::evaluate::{Violation, unit_name};
use crate::guard::notify::{self, Notice, NoticeProcess, Notifier};
use crate::guard::policy::Mode;
use crate::guard::tracker::Decision;
use crate::procinfo::ProcessInfo;
use crate::store::{Database, EventKind, EventTarget, NewEvent};

/// What responding to a decision needs.
pub(super) struct Responder {
    /// Decisions and kills, per rule.
    pub(super) counters: Arc<GuardCounters>,
    /// Who the guard acts as.
    pub(super) principal: Principal,
    /// The audit trail.
    pub(super) events: Arc<Database>,
    /// The webhook.
    pub(super) notifier: Notifier,
    /// The node's name, for notices.
    pub(super) host: String,
}

impl Responder {
    /// The webhook notice of `violation` with `outcome`, about `processes`.
    fn notice(
        &self,
        mode: Mode,
        violation: &Violation,
        outcome: &str,
        processes: &[&ProcessInfo],
        gpu: &[u32],
    ) -> Notice {
        Notice {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            host: self.host.clone(),
            mode: mode.as_str().to_owned(),
            rule: violation.rule.as_str().to_owned(),
            policy: violation.policy.clone(),
            outcome: outcome.to_owned(),
            description: violation.describe(),
            measured: violation.measured,
            limit: violation.limit,
            unit: unit_name(violation.unit).to_owned(),
            processes: processes
                .iter()
                .zip(gpu)
                .map(|(info, gpu_index)| NoticeProcess {
                    pid: info.pid,
                    uid: info.uid,
                    user: info.user.to_string(),
                    name: info.name.clone(),
                    gpu_index: *gpu_index,
                })
                .collect(),
        }
    }
}

/// Writes `message` on the terminals of each of `users` (on the blocking pool).
fn tell(users: Vec<(u32, String)>) {
    if users.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for (uid, message) in users {
            let told = notify::tell_user(uid, &message);
            tracing::debug!(uid, terminals = told.len(), "guard message written");
        }
    });
}

/// Logs, records and announces one decision; for `Act`, kills on the blocking pool and
/// records and announces each outcome, without holding up the next evaluation.
pub(super) async fn respond(decision: Decision, loaded: &Arc<Loaded>, responder: &Arc<Responder>) {
    let policy = &loaded.policy.policy;
    let mode = policy.mode;
    let (violation, outcome) = match &decision {
        Decision::Warn(v) => (v, "warned"),
        Decision::WouldAct(v) => (v, "would_act"),
        Decision::RateLimited(v) => (v, "rate_limited"),
        Decision::Act(v) => (v, "acting"),
    };
    responder.counters.record_decision(&decision);
    let description = violation.describe();
    tracing::warn!(
        rule = violation.rule.as_str(),
        policy = %violation.policy,
        measured = violation.measured,
        limit = violation.limit,
        mode = mode.as_str(),
        outcome,
        "guard: {description}"
    );
    let action = format!("guard {}: {}", mode.as_str(), violation.rule.as_str());
    let caller = event_caller(&responder.principal);
    let event = |target: Option<EventTarget>| NewEvent {
        time: SystemTime::now(),
        kind: EventKind::Violation,
        caller: caller.clone(),
        action: action.clone(),
        target,
        outcome: outcome.to_owned(),
        reason: description.clone(),
    };
    let mut batch: Vec<NewEvent> = violation
        .offenders
        .iter()
        .map(|offender| event(Some(event_target(&offender.info, Some(offender.gpu_index)))))
        .collect();
    if batch.is_empty() {
        // A violation with no process to act on (a GPU over its reserve from memory no
        // process accounts for): recorded without a target.
        batch.push(event(None));
    }
    if let Err(error) = responder.events.record(batch).await {
        tracing::error!(%error, "cannot record a guard violation");
    }
    let infos: Vec<&ProcessInfo> = violation
        .offenders
        .iter()
        .map(|o| o.info.as_ref())
        .collect();
    let gpus: Vec<u32> = violation.offenders.iter().map(|o| o.gpu_index).collect();
    responder.notifier.send(
        &policy.notify,
        responder.notice(mode, violation, outcome, &infos, &gpus),
    );
    if policy.notify.terminals && matches!(decision, Decision::Warn(_)) {
        let grace = humantime::format_duration(policy.grace);
        tell(
            violation
                .offenders
                .iter()
                .filter(|o| o.protected.is_none())
                .map(|o| {
                    (
                        o.info.uid,
                        format!(
                            "your process {} ({}) on GPU {} breaks the GPU policy: {description}. It will be killed in {grace} unless that changes.",
                            o.info.pid, o.info.name, o.gpu_index
                        ),
                    )
                })
                .collect(),
        );
    }
    let Decision::Act(violation) = decision else {
        return;
    };
    debug_assert!(mode != Mode::DryRun);
    let targets: Vec<Target> = violation
        .offenders
        .iter()
        .map(|offender| Target {
            info: Arc::clone(&offender.info),
            gpu_index: Some(offender.gpu_index),
        })
        .collect();
    let options = KillOptions {
        timeout: policy.kill_timeout,
        force: true,
    };
    let (loaded, responder) = (Arc::clone(loaded), Arc::clone(responder));
    tokio::spawn(async move {
        let request = audit::Request {
            principal: &responder.principal,
            action: &action,
            context: Some(&description),
            refused: EventKind::Kill,
        };
        let pids: Vec<u32> = targets.iter().map(|target| target.info.pid).collect();
        let killed = audit::kill(
            &responder.events,
            request,
            loaded.protection.clone(),
            targets,
            options,
        )
        .await;
        let decided = match killed {
            Ok(decided) => decided,
            Err(error) => {
                // No record, no kill; the store counts the events it could not write, and
                // Health reports the store's state.
                tracing::error!(
                    rule = violation.rule.as_str(),
                    ?pids,
                    error = %crate::errors::chain(&error),
                    "guard: not killing"
                );
                return;
            }
        };
        let notify = &loaded.policy.policy.notify;
        let mut messages = Vec::new();
        for decided in &decided {
            responder
                .counters
                .record_kill(violation.rule, decided.outcome);
            let info = &decided.target.info;
            let gpu = decided.target.gpu_index.unwrap_or_default();
            tracing::warn!(
                pid = info.pid,
                user = %info.user,
                outcome = decided.outcome.as_str(),
                "guard acted: {}", decided.reason
            );
            responder.notifier.send(
                notify,
                responder.notice(
                    mode,
                    &violation,
                    decided.outcome.as_str(),
                    &[info.as_ref()],
                    &[gpu],
                ),
            );
            if notify.terminals && matches!(decided.outcome, Outcome::Terminated | Outcome::Killed)
            {
                messages.push((
                    info.uid,
                    format!(
                        "your process {} ({}) on GPU {gpu} was killed by the GPU policy: {description}",
                        info.pid, info.name
                    ),
                ));
            }
        }
        tell(messages);
    });
}
