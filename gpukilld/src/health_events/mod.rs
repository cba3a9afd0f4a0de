//! The audit trail of GPU health: a `health` event each time a GPU's state changes and for
//! each Xid it reports, written from the snapshots in the ring (so the sampler never waits
//! on the store), each also logged and posted to the guard policy's webhook (`[notify]`). A
//! GPU first seen in a state other than ok or unknown is recorded too. With
//! `[health] on_critical = "kill-new"`, [`kill_new`] acts on the same snapshots.

pub mod kill_new;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::guard::engine::Guard;
use crate::guard::notify::{HealthNotice, NoticeXid, Notifier};
use crate::health::{self, GpuHealth, HealthState, xid};
use crate::ring::Ring;
use crate::snapshot::{Gpu, Snapshot};
use crate::store::{Database, EventCaller, EventKind, NewEvent};
use kill_new::KillNew;

/// What was last recorded of one GPU.
#[derive(Debug, Clone, Copy)]
struct Seen {
    state: HealthState,
    /// The time of the newest Xid recorded.
    newest_xid: Option<SystemTime>,
}

/// One thing to record: the audit event and the webhook's notice of it.
#[derive(Debug)]
pub struct Change {
    /// The `health` event.
    pub event: NewEvent,
    /// The same, for the webhook.
    pub notice: HealthNotice,
}

/// Compares snapshots with what it recorded before.
#[derive(Debug, Default)]
pub struct HealthEvents {
    seen: HashMap<Arc<str>, Seen>,
}

impl HealthEvents {
    /// What `snapshot` calls for: state changes and new Xids, oldest first.
    pub fn changes(&mut self, snapshot: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for (vendor, gpu) in snapshot.gpus() {
            let key = health::key(gpu.uuid.as_ref(), vendor.name(), gpu.vendor_index);
            // Only formatted when there is something to record (the usual tick has nothing).
            let label = || format!("GPU {} ({key})", gpu.index);
            let health = &gpu.health;
            let before = self.seen.get(&key).copied();
            for event in health
                .recent_xids
                .iter()
                .filter(|event| before.and_then(|seen| seen.newest_xid) < Some(event.time))
            {
                let meaning = xid::meaning(event.code);
                let reason = format!("Xid {}: {meaning}", event.code);
                let xid = NoticeXid {
                    code: event.code,
                    meaning: meaning.to_owned(),
                };
                changes.push(Change {
                    notice: notice(
                        snapshot,
                        gpu,
                        None,
                        Some(xid),
                        format!("{}: {reason}", label()),
                    ),
                    event: health_event(
                        event.time,
                        format!("xid {} on {}", event.code, label()),
                        "reported",
                        reason,
                    ),
                });
            }
            let changed = match before {
                Some(seen) => seen.state != health.state,
                None => !matches!(health.state, HealthState::Ok | HealthState::Unknown),
            };
            if changed {
                let previous = before.map(|seen| seen.state);
                let reason = describe(previous, health);
                changes.push(Change {
                    notice: notice(
                        snapshot,
                        gpu,
                        previous,
                        None,
                        format!("{} is {}, {reason}", label(), health.state),
                    ),
                    event: health_event(
                        snapshot.taken_at,
                        format!("health of {}", label()),
                        health.state.as_str(),
                        reason,
                    ),
                });
            }
            self.seen.insert(
                key,
                Seen {
                    state: health.state,
                    newest_xid: health
                        .recent_xids
                        .last()
                        .map(|event| event.time)
                        .or(before.and_then(|seen| seen.newest_xid)),
                },
            );
        }
        changes
    }
}

fn health_event(time: SystemTime, action: String, outcome: &str, reason: String) -> NewEvent {
    NewEvent {
        time,
        kind: EventKind::Health,
        caller: EventCaller::daemon(),
        action,
        target: None,
        outcome: outcome.to_owned(),
        reason,
    }
}

/// The webhook's notice about `gpu` in `snapshot`.
fn notice(
    snapshot: &Snapshot,
    gpu: &Gpu,
    previous: Option<HealthState>,
    xid: Option<NoticeXid>,
    description: String,
) -> HealthNotice {
    HealthNotice {
        time: humantime::format_rfc3339_millis(snapshot.taken_at).to_string(),
        host: snapshot.host.to_string(),
        gpu_index: gpu.index,
        uuid: gpu.uuid.as_deref().map(str::to_owned),
        state: gpu.health.state.as_str().to_owned(),
        previous: previous.map(|state| state.as_str().to_owned()),
        reasons: gpu
            .health
            .reasons
            .iter()
            .map(|reason| reason.text.clone())
            .collect(),
        xid,
        description,
    }
}

/// `was ok: Xid 79 (…); …`
fn describe(before: Option<HealthState>, health: &GpuHealth) -> String {
    let reasons: Vec<&str> = health
        .reasons
        .iter()
        .map(|reason| reason.text.as_str())
        .collect();
    let was = before.map_or_else(|| "first seen".to_owned(), |state| format!("was {state}"));
    if reasons.is_empty() {
        was
    } else {
        format!("{was}: {}", reasons.join("; "))
    }
}

/// Where health events go besides the store: the log, and the webhook of the guard policy
/// loaded now.
pub struct Announce {
    /// The guard, for its policy's `[notify]`.
    pub guard: Arc<Guard>,
    /// The webhook task.
    pub notifier: Notifier,
}

impl Announce {
    fn announce(&self, notices: Vec<HealthNotice>) {
        let config = self.guard.notify_config();
        for notice in notices {
            if matches!(notice.state.as_str(), "critical" | "lost") || notice.xid.is_some() {
                tracing::warn!(gpu = notice.gpu_index, state = %notice.state, "GPU health: {}", notice.description);
            } else {
                tracing::info!(gpu = notice.gpu_index, state = %notice.state, "GPU health: {}", notice.description);
            }
            if let Some(config) = &config {
                self.notifier.send(config, notice);
            }
        }
    }
}

/// Records health events from every new snapshot until `stop` turns true, announcing each
/// once it is recorded; with `kill_new`, kills the processes that start on unfit GPUs.
pub async fn run(
    ring: Arc<Ring>,
    store: Arc<Database>,
    announce: Arc<Announce>,
    mut kill_new: Option<KillNew>,
    mut stop: watch::Receiver<bool>,
) {
    let mut updates = ring.updates();
    let mut events = HealthEvents::default();
    let mut latest = ring.latest();
    loop {
        if let Some(kill_new) = &mut kill_new {
            let newcomers = kill_new.newcomers(&latest);
            if !newcomers.is_empty() {
                kill_new.spawn_kill(&store, newcomers);
            }
        }
        let changes = events.changes(&latest);
        if !changes.is_empty() {
            let (new, notices): (Vec<NewEvent>, Vec<HealthNotice>) = changes
                .into_iter()
                .map(|change| (change.event, change.notice))
                .unzip();
            if let Err(error) = store.record(new).await {
                tracing::error!(%error, "cannot record GPU health events");
            }
            announce.announce(notices);
        }
        latest = tokio::select! {
            update = updates.recv() => match update {
                Ok(snapshot) => snapshot,
                // Behind: the latest snapshot still shows every state and Xid.
                Err(RecvError::Lagged(_)) => ring.latest(),
                Err(RecvError::Closed) => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{Condition, HealthReason, Xid};
    use crate::snapshot::{Gpu, Vendor, VendorData};

    fn snapshot(health: GpuHealth) -> Snapshot {
        let mut snapshot = crate::ring::tests::snapshot(1);
        let gpu = Gpu {
            index: 0,
            uuid: Some(Arc::from("GPU-a")),
            health: Arc::new(health),
            ..Gpu::default()
        };
        snapshot.data = vec![(
            Vendor::Nvidia,
            Arc::new(VendorData {
                gpus: vec![gpu],
                ..VendorData::default()
            }),
        )];
        snapshot
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn state_changes_and_each_new_xid_are_recorded_once() {
        let mut events = HealthEvents::default();
        let ok = GpuHealth {
            state: HealthState::Ok,
            ..GpuHealth::default()
        };
        assert!(events.changes(&snapshot(ok.clone())).is_empty());
        let critical = GpuHealth {
            state: HealthState::Critical,
            reasons: vec![HealthReason {
                severity: HealthState::Critical,
                condition: Condition::Xid,
                text: "Xid 79 (GPU has fallen off the bus)".to_owned(),
            }],
            recent_xids: vec![
                Xid {
                    code: 13,
                    time: at(1),
                },
                Xid {
                    code: 79,
                    time: at(2),
                },
            ],
            ..GpuHealth::default()
        };
        let recorded = events.changes(&snapshot(critical.clone()));
        let summary: Vec<(&str, &str, &str)> = recorded
            .iter()
            .map(|change| &change.event)
            .map(|event| {
                (
                    event.action.as_str(),
                    event.outcome.as_str(),
                    event.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "xid 13 on GPU 0 (GPU-a)",
                    "reported",
                    "Xid 13: graphics engine exception (usually the application)"
                ),
                (
                    "xid 79 on GPU 0 (GPU-a)",
                    "reported",
                    "Xid 79: GPU has fallen off the bus"
                ),
                (
                    "health of GPU 0 (GPU-a)",
                    "critical",
                    "was ok: Xid 79 (GPU has fallen off the bus)"
                ),
            ]
        );
        assert!(
            recorded
                .iter()
                .all(|change| change.event.kind == EventKind::Health)
        );
        // The same snapshot again: nothing new.
        assert!(events.changes(&snapshot(critical)).is_empty());
        assert_eq!(events.changes(&snapshot(ok)).len(), 1);
    }

    #[test]
    fn a_gpu_first_seen_unhealthy_is_recorded() {
        let lost = GpuHealth {
            state: HealthState::Lost,
            ..GpuHealth::default()
        };
        let recorded = HealthEvents::default().changes(&snapshot(lost));
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].event.reason, "first seen");
        assert_eq!(recorded[0].event.outcome, "lost");
        assert_eq!(recorded[0].notice.state, "lost");
        assert_eq!(recorded[0].notice.previous, None);
    }
}
