//! `Health`: serving or degraded, and why.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gpukill_proto::v1 as pb;

use super::convert;
use crate::ring::Ring;
use crate::snapshot::VendorState;
use crate::store::EventLog;

/// Answers `Health`.
pub async fn health(
    ring: &Ring,
    events: &Result<Arc<EventLog>, String>,
    upload_settings: &super::uploads::UploadSettings,
    started: Instant,
) -> pb::HealthResponse {
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
    match events {
        Err(message) => problems.push(format!(
            "audit store unavailable, kill is disabled: {message}"
        )),
        Ok(log) => {
            let counters = log.counters();
            if counters.dropped + counters.failed > 0 {
                problems.push(format!(
                    "audit store: {} events dropped (queue full), {} failed to write",
                    counters.dropped, counters.failed
                ));
            }
            let history = log.history_counters();
            if let Some(error) = history.last_error {
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
    if let (true, Ok(log)) = (upload_settings.enabled, events) {
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
                crate::error_chain(&error)
            )),
        }
    }
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
