//! The guard task: evaluates every snapshot the sampler publishes, reloading the policy
//! when the file changes or on SIGHUP, follows the violations across ticks and hands each
//! decision to `respond`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::file::stamp;
use super::respond::{Responder, respond};
use super::{Guard, Loaded, guard_principal};
use crate::authz::Principal;
use crate::guard::clock;
use crate::guard::evaluate::{self, UtilHistory, Violation};
use crate::guard::notify::Notifier;
use crate::guard::policy::{CompiledPolicy, DEFAULT_UTILIZATION_WINDOW, LocalTime};
use crate::guard::tracker::Tracker;
use crate::reservations::Reservations;
use crate::ring::Ring;
use crate::store::Database;

/// Evaluates every snapshot of `ring` until `stop` turns true, acting through `events`
/// (nothing is killed without an audit trail).
pub async fn run(
    guard: Arc<Guard>,
    ring: Arc<Ring>,
    events: Arc<Database>,
    reservations: Option<Arc<Reservations>>,
    notifier: Notifier,
    mut stop: watch::Receiver<bool>,
) {
    let mut updates = ring.updates();
    let mut tracker = Tracker::default();
    let mut history = UtilHistory::default();
    let principal = guard_principal();
    let responder = Arc::new(Responder {
        counters: guard.counters(),
        principal: principal.clone(),
        events: Arc::clone(&events),
        notifier,
        host: snapshot_host(&ring),
    });
    // Whether each offender (pid, start ticks) is protected, and why: checked once per
    // process (it reads /proc), forgotten when the process no longer offends.
    let mut protected: HashMap<(u32, u64), Option<String>> = HashMap::new();
    loop {
        let snapshot = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            update = updates.recv() => match update {
                Ok(snapshot) => snapshot,
                Err(broadcast::error::RecvError::Lagged(_)) => ring.latest(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let path = guard.path.clone();
        let now_stamp = tokio::task::spawn_blocking(move || stamp(&path))
            .await
            .ok()
            .flatten();
        let changed = now_stamp != *guard.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if changed || guard.reload.swap(false, Ordering::Relaxed) {
            let loading = Arc::clone(&guard);
            let _ = tokio::task::spawn_blocking(move || loading.load()).await;
            protected.clear();
        }
        let Some(loaded) = guard.lock().loaded.clone() else {
            continue;
        };
        let policy = &loaded.policy.policy;
        if !policy.enabled {
            let mut status = guard.lock();
            status.active.clear();
            status.not_evaluable.clear();
            continue;
        }
        let started = std::time::Instant::now();
        history.record(&snapshot, longest_window(&loaded.policy));
        let local: LocalTime = clock::local_time(snapshot.taken_at);
        let mut evaluation = evaluate::evaluate(&loaded.policy, &snapshot, &history, local);
        if let Some(reservations) = &reservations {
            let misuse = reservations.misuse(&snapshot);
            evaluation
                .violations
                .extend(evaluate::reservation_findings(&loaded.policy, &misuse));
        }
        let evaluation_time = started.elapsed();
        mark_protected(
            &mut evaluation.violations,
            &mut protected,
            &loaded,
            &principal,
        )
        .await;
        let active = evaluation.violations.clone();
        let decisions = tracker.update(policy, evaluation.violations, snapshot.taken_at);
        {
            let mut status = guard.lock();
            status.active = active;
            status.not_evaluable = evaluation.not_evaluable;
            status.recent_kills = tracker.recent_kills();
            status.evaluated_at = Some(snapshot.taken_at);
            status.evaluation_time = evaluation_time;
        }
        for decision in decisions {
            respond(decision, &loaded, &responder).await;
        }
    }
}

/// Fills in each offender's protection from `cache`, checking (on the blocking pool) those
/// not seen before.
async fn mark_protected(
    violations: &mut [Violation],
    cache: &mut HashMap<(u32, u64), Option<String>>,
    loaded: &Arc<Loaded>,
    principal: &Principal,
) {
    let offending: HashSet<(u32, u64)> = violations
        .iter()
        .flat_map(|v| v.offenders.iter().map(|o| (o.info.pid, o.info.start_ticks)))
        .collect();
    cache.retain(|key, _| offending.contains(key));
    let unknown: Vec<Arc<crate::procinfo::ProcessInfo>> = violations
        .iter()
        .flat_map(|v| v.offenders.iter())
        .filter(|o| !cache.contains_key(&(o.info.pid, o.info.start_ticks)))
        .map(|o| Arc::clone(&o.info))
        .collect();
    if !unknown.is_empty() {
        let (loaded, principal) = (Arc::clone(loaded), principal.clone());
        let checked = tokio::task::spawn_blocking(move || {
            unknown
                .into_iter()
                .map(|info| {
                    let reason = loaded.protection.check(&principal, &info);
                    ((info.pid, info.start_ticks), reason)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        cache.extend(checked);
    }
    for offender in violations.iter_mut().flat_map(|v| v.offenders.iter_mut()) {
        offender.protected = cache
            .get(&(offender.info.pid, offender.info.start_ticks))
            .cloned()
            .flatten();
    }
}

/// The node's name, as the snapshots carry it.
fn snapshot_host(ring: &Ring) -> String {
    ring.latest().host.to_string()
}

/// How far back utilization must be kept for the policy's windows.
fn longest_window(policy: &CompiledPolicy) -> Duration {
    let p = &policy.policy;
    std::iter::once(p.defaults.window())
        .chain(p.users.iter().map(|u| u.limits.window()))
        .chain(p.windows.iter().map(|w| w.limits.window()))
        .chain(p.groups.iter().filter_map(|g| g.utilization_window))
        // The rogue model's sustained-utilization signal needs its window too.
        .chain(std::iter::once(p.rogue.high_util_window))
        .max()
        .unwrap_or(DEFAULT_UTILIZATION_WINDOW)
}
