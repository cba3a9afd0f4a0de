//! `GuardStatus` and `GuardTest`: what the guard is enforcing and finding. Anyone may ask:
//! limits and violations on a shared node are not secret.

use crate::reservations::Reservations;
use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;

use super::convert;
use super::error::RpcError;
use crate::guard::clock;
use crate::guard::engine::{Guard, Loaded, guard_principal};
use crate::guard::evaluate::Violation;
use crate::guard::policy::Mode;
use crate::ring::Ring;

/// Answers `GuardStatus`.
pub fn status(guard: &Guard) -> pb::GuardStatusResponse {
    let status = guard.status();
    let mut response = pb::GuardStatusResponse {
        policy_path: guard.path().display().to_string(),
        load_error: status.load_error.clone(),
        violations: status
            .active
            .iter()
            .map(|v| violation(v, String::new()))
            .collect(),
        not_evaluable: status.not_evaluable.clone(),
        kills_last_minute: status.recent_kills as u32,
        evaluated_at_unix_ms: status.evaluated_at.map_or(0, convert::unix_ms),
        evaluation_us: u64::try_from(status.evaluation_time.as_micros()).unwrap_or(u64::MAX),
        ..Default::default()
    };
    if let Some(loaded) = &status.loaded {
        let policy = &loaded.policy.policy;
        response.loaded = true;
        response.enabled = policy.enabled;
        response.mode = pb::GuardMode::from(policy.mode).into();
        response.loaded_at_unix_ms = convert::unix_ms(loaded.loaded_at);
        response.grace_ms = millis(policy.grace);
        response.min_duration_ms = millis(policy.min_duration);
        response.users = policy.users.len() as u32;
        response.groups = policy.groups.len() as u32;
        response.gpus = policy.gpus.len() as u32;
        response.windows = policy.windows.len() as u32;
        response.max_kills_per_minute = policy.max_kills_per_minute;
        let now = status
            .evaluated_at
            .unwrap_or_else(std::time::SystemTime::now);
        response.active_windows = loaded
            .policy
            .active_windows(clock::local_time(now))
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    response
}

/// Answers `GuardTest`: the latest snapshot evaluated now, without acting.
pub async fn test(
    guard: &Arc<Guard>,
    ring: &Ring,
    reservations: Option<&Reservations>,
) -> Result<pb::GuardTestResponse, RpcError> {
    let snapshot = ring.latest();
    let misuse = reservations.map_or_else(Vec::new, |r| r.misuse(&snapshot));
    let tested = Arc::clone(guard);
    // Protection checks read /proc.
    let answer = tokio::task::spawn_blocking(move || {
        let (loaded, evaluation) = tested.test(&snapshot, &misuse)?;
        let violations = evaluation
            .violations
            .iter()
            .map(|v| violation(v, would(&loaded, v)))
            .collect();
        Some(pb::GuardTestResponse {
            mode: pb::GuardMode::from(loaded.policy.policy.mode).into(),
            violations,
            not_evaluable: evaluation.not_evaluable,
        })
    })
    .await
    .map_err(|_| RpcError::Internal("guard test panicked"))?;
    answer.ok_or_else(|| {
        RpcError::GuardOff(format!(
            "no guard policy is loaded from {}",
            guard.path().display()
        ))
    })
}

/// What the guard would do about `violation` now (blocking: reads /proc).
fn would(loaded: &Loaded, violation: &Violation) -> String {
    let policy = &loaded.policy.policy;
    if !policy.enabled {
        return "nothing: the guard is disabled (enabled = false)".to_owned();
    }
    if !violation.over {
        return "nothing yet: within the hysteresis band under the limit".to_owned();
    }
    let principal = guard_principal();
    let protected: Vec<String> = violation
        .offenders
        .iter()
        .filter_map(|o| {
            loaded
                .protection
                .check(&principal, &o.info)
                .map(|reason| format!("pid {} is protected: {reason}", o.info.pid))
        })
        .collect();
    if !protected.is_empty() && protected.len() == violation.offenders.len() {
        return format!("nothing: {}", protected.join("; "));
    }
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let mut text = match policy.mode {
        Mode::DryRun => format!(
            "record only (dry-run): would kill once it has lasted {}",
            human(policy.min_duration)
        ),
        Mode::Soft => format!("warn, then kill if it lasts {}", human(policy.grace)),
        Mode::Hard => format!("kill once it has lasted {}", human(policy.min_duration)),
    };
    if !protected.is_empty() {
        text.push_str(&format!(" (not {})", protected.join("; ")));
    }
    text
}

fn violation(v: &Violation, would: String) -> pb::GuardViolation {
    pb::GuardViolation {
        rule: pb::GuardRule::from(v.rule).into(),
        policy: v.policy.clone(),
        description: v.describe(),
        measured: v.measured,
        limit: v.limit,
        unit: pb::GuardUnit::from(v.unit).into(),
        over: v.over,
        offenders: v
            .offenders
            .iter()
            .map(|o| pb::KillTarget {
                pid: o.info.pid,
                start_time_unix_ms: convert::unix_ms(o.info.start_time),
                uid: o.info.uid,
                user: o.info.user.to_string(),
                name: o.info.name.clone(),
                cmdline: o.info.cmdline.clone(),
                gpu_index: Some(o.gpu_index),
            })
            .collect(),
        would,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
