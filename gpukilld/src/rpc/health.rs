//! `Health`: serving or degraded, and why; the store's state (whether kills and resets can
//! be recorded) and every supervised background task.

use std::time::{Instant, SystemTime};

use gpukill_proto::v1 as pb;

use super::convert;
use super::kill::KillContext;
use crate::ring::Ring;
use crate::service::tasks::{TaskState, TaskStatus};
use crate::snapshot::VendorState;

/// Answers `Health`.
pub async fn health(
    ring: &Ring,
    context: &KillContext,
    upload_settings: &super::uploads::UploadSettings,
    started: Instant,
) -> pb::HealthResponse {
    let events = &context.store;
    let now = SystemTime::now();
    let latest = ring.latest();
    let mut problems: Vec<String> = latest
        .vendors
        .iter()
        .filter_map(|status| match &status.state {
            VendorState::Ok => None,
            VendorState::Error(message) => Some(format!("{}: {message}", status.vendor.name())),
            VendorState::Hung { .. } => convert::vendor_status(status, now).message,
        })
        .collect();
    let store = store_health(context);
    match events.get() {
        Err(message) => problems.push(format!(
            "audit store unavailable, kill is disabled: {message}"
        )),
        Ok(log) => {
            if let Some(problem) = log.file_problem() {
                problems.push(format!(
                    "store unavailable, kill and reset are refused: {problem}"
                ));
            }
            let counters = log.counters();
            if counters.dropped + counters.failed > 0 {
                problems.push(format!(
                    "audit store: {} events dropped (queue full), {} failed to write",
                    counters.dropped, counters.failed
                ));
            }
            let history = log.history_counters();
            // A deleted store is said once, above.
            if let Some(error) = history.last_error.filter(|_| log.file_problem().is_none()) {
                problems.push(format!(
                    "store degraded: cannot write history ({} intervals waiting): {error}",
                    history.queued
                ));
            }
            if history.dropped > 0 {
                problems.push(format!(
                    "history: {} intervals dropped while the store could not keep up",
                    history.dropped
                ));
            }
        }
    }
    let mut uploads = None;
    if let (true, Some(log)) = (upload_settings.enabled, events.database()) {
        match log.read(|store| store.outbox_summary()).await {
            Ok(summary) => {
                if summary.dropped_total > 0 {
                    problems.push(format!(
                        "uploads: {} hours dropped because the outbox was full ([upload] max_outbox_hours)",
                        summary.dropped_total
                    ));
                }
                if summary.parked + summary.rejected > 0 {
                    problems.push(format!(
                        "uploads: {} hours parked and {} rejected (gpukillctl uploads list)",
                        summary.parked, summary.rejected
                    ));
                }
                uploads = Some(upload_settings.summary(summary));
            }
            Err(error) => problems.push(format!(
                "uploads: cannot read the outbox: {}",
                crate::errors::chain(&error)
            )),
        }
    }
    let tasks = context.tasks.statuses();
    problems.extend(tasks.iter().filter_map(task_problem));
    if let Some(reason) = latest.stale_reason(now)
        && !problems
            .iter()
            .any(|problem| reason.contains(problem.as_str()))
    {
        problems.push(format!("stale: {reason}"));
    }
    let (len, capacity) = ring.len_and_capacity();
    let (p50, max) = ring.tick_durations();
    let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    pb::HealthResponse {
        state: if problems.is_empty() {
            pb::ServingState::Serving
        } else {
            pb::ServingState::Degraded
        }
        .into(),
        problems,
        vendors: latest
            .vendors
            .iter()
            .map(|status| convert::vendor_status(status, now))
            .collect(),
        uploads,
        latest_sequence: latest.sequence,
        latest_age_ms: u64::try_from(
            now.duration_since(latest.data_taken_at())
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX),
        ring_len: len as u64,
        ring_capacity: capacity as u64,
        watchers: ring.watchers(),
        watch_lagged_total: ring.watch_lagged(),
        tick_duration_p50_us: micros(p50),
        tick_duration_max_us: micros(max),
        daemon_rss_bytes: tokio::task::spawn_blocking(own_rss).await.ok().flatten(),
        uptime_s: started.elapsed().as_secs(),
        store: Some(store),
        tasks: tasks.iter().map(task_health).collect(),
    }
}

/// The store's state: unavailable without a usable database (kills and resets refused),
/// degraded while writes fail (a kill or reset whose record cannot be written is refused).
fn store_health(context: &KillContext) -> pb::StoreHealth {
    let (state, message) = store_state(&context.store);
    pb::StoreHealth {
        state: state.into(),
        path: context.store_path.display().to_string(),
        message,
    }
}

/// The store's state and, unless it is ok, why (as [`store_health`] reports it; the
/// standard health service is `NOT_SERVING` unless it is ok).
pub(crate) fn store_state(store: &crate::store::StoreHandle) -> (pb::StoreState, String) {
    match store.get() {
        Err(message) => (
            pb::StoreState::Unavailable,
            format!(
                "{message}; nothing is killed or reset until gpukilld starts with a working store"
            ),
        ),
        Ok(log) => match (log.file_problem(), log.history_counters().last_error) {
            (Some(problem), _) => (pb::StoreState::Unavailable, problem),
            (None, Some(error)) => (
                pb::StoreState::Degraded,
                format!(
                    "writes fail: {error}; a kill or reset whose audit record cannot be written is refused"
                ),
            ),
            (None, None) => (pb::StoreState::Ok, String::new()),
        },
    }
}

/// A problem line for a task that is not running as it should (it panicked, or ended).
fn task_problem(task: &TaskStatus) -> Option<String> {
    let what = match task.state {
        TaskState::Restarting => "restarting",
        TaskState::Failed => "failed; gpukilld is stopping",
        TaskState::Ended => {
            return Some(format!(
                "task {} ended while gpukilld is running; what it does is no longer done",
                task.name
            ));
        }
        TaskState::Running | TaskState::Stopped => return None,
    };
    Some(format!(
        "task {} panicked ({} restarts), {what}: {}",
        task.name,
        task.restarts,
        task.last_panic.as_deref().unwrap_or_default()
    ))
}

fn task_health(task: &TaskStatus) -> pb::TaskHealth {
    pb::TaskHealth {
        name: task.name.to_string(),
        state: match task.state {
            TaskState::Running => pb::TaskState::Running,
            TaskState::Restarting => pb::TaskState::Restarting,
            TaskState::Failed => pb::TaskState::Failed,
            TaskState::Stopped | TaskState::Ended => pb::TaskState::Stopped,
        }
        .into(),
        restarts: task.restarts,
        last_panic: task.last_panic.clone(),
    }
}

/// The daemon's resident memory, from sysinfo.
fn own_rss() -> Option<u64> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = Pid::from_u32(std::process::id());
    let mut system = System::new().ok()?;
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map(|process| process.memory())
}
