//! `[health] on_critical = "kill-new"`: a process that starts on a GPU after the GPU turned
//! critical or lost is killed (SIGTERM, then SIGKILL after [`KILL_TIMEOUT`]) through
//! [`audit::kill`], so it is recorded before it is signalled, and protected processes are
//! spared as for any kill. The processes already on the GPU when it turned are left alone:
//! they may be finishing, and the health event tells their owners' admins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::actions::audit;
use crate::actions::kill::{KillOptions, Outcome, Target};
use crate::actions::protect::Protection;
use crate::authz::Principal;
use crate::guard::engine::guard_principal;
use crate::health;
use crate::snapshot::Snapshot;
use crate::store::{Database, EventKind};

/// How long SIGTERM has before SIGKILL.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A process, as it stays the same process across pid reuse.
type ProcessKey = (u32, u64);

/// The processes to kill on one GPU, and why.
#[derive(Debug)]
pub struct Newcomers {
    /// The GPU's index on the host.
    pub gpu_index: u32,
    /// Why, for the audit trail: the GPU's state and reasons.
    pub why: String,
    /// The processes.
    pub targets: Vec<Target>,
}

/// Follows the unfit GPUs and the processes each had when it turned.
#[derive(Debug)]
pub struct KillNew {
    protection: Protection,
    principal: Principal,
    /// Per unfit GPU (by health key), the processes seen on it since it turned unfit.
    seen: HashMap<Arc<str>, HashSet<ProcessKey>>,
}

impl KillNew {
    /// Kills with the daemon's `protection`, as the guard (the audit trail's caller).
    pub fn new(protection: Protection) -> Self {
        KillNew {
            protection,
            principal: guard_principal(),
            seen: HashMap::new(),
        }
    }

    /// The processes of `snapshot` that started on an unfit GPU after it turned unfit
    /// (each once); the first snapshot that shows a GPU unfit only learns its processes.
    pub fn newcomers(&mut self, snapshot: &Snapshot) -> Vec<Newcomers> {
        let mut found = Vec::new();
        let mut unfit = HashSet::new();
        for (vendor, gpu) in snapshot.gpus() {
            if !gpu.health.state.is_unfit() {
                continue;
            }
            let key = health::key(gpu.uuid.as_ref(), vendor.name(), gpu.vendor_index);
            unfit.insert(Arc::clone(&key));
            let first = !self.seen.contains_key(&key);
            let seen = self.seen.entry(key).or_default();
            let mut targets = Vec::new();
            for process in snapshot
                .processes()
                .filter(|p| p.slot.vendor == vendor && p.slot.gpu_index == gpu.index)
            {
                let info = &process.slot.info;
                if seen.insert((info.pid, info.start_ticks)) && !first {
                    targets.push(Target {
                        info: Arc::clone(info),
                        gpu_index: Some(gpu.index),
                    });
                }
            }
            if !targets.is_empty() {
                found.push(Newcomers {
                    gpu_index: gpu.index,
                    why: format!(
                        "GPU {} is {}: no new processes while it is ([health] on_critical = \"kill-new\")",
                        gpu.index,
                        gpu.health.unfit_summary()
                    ),
                    targets,
                });
            }
        }
        // A GPU fit again (cleared, reset) starts over if it turns unfit later.
        self.seen.retain(|key, _| unfit.contains(key));
        found
    }

    /// Kills `newcomers` in a task of its own (a kill may wait [`KILL_TIMEOUT`]), each
    /// recorded first; a kill that cannot be recorded is not done, and is logged.
    pub fn spawn_kill(&self, store: &Arc<Database>, newcomers: Vec<Newcomers>) {
        let (store, protection) = (Arc::clone(store), self.protection.clone());
        let principal = self.principal.clone();
        tokio::spawn(async move { kill(&store, protection, principal, newcomers).await });
    }
}

async fn kill(
    store: &Database,
    protection: Protection,
    principal: Principal,
    newcomers: Vec<Newcomers>,
) {
    for Newcomers {
        gpu_index,
        why,
        targets,
    } in newcomers
    {
        let action = format!("kill-new on GPU {gpu_index}");
        let request = audit::Request {
            principal: &principal,
            action: &action,
            context: Some(&why),
            refused: EventKind::Kill,
        };
        let options = KillOptions {
            timeout: KILL_TIMEOUT,
            force: true,
        };
        match audit::kill(store, request, protection.clone(), targets, options).await {
            Ok(decided) => {
                for decided in decided {
                    let info = &decided.target.info;
                    let level = matches!(decided.outcome, Outcome::Terminated | Outcome::Killed);
                    if level {
                        tracing::warn!(pid = info.pid, user = %info.user, gpu = gpu_index, outcome = decided.outcome.as_str(), "{why}");
                    } else {
                        tracing::info!(pid = info.pid, user = %info.user, gpu = gpu_index, outcome = decided.outcome.as_str(), "not killed: {}", decided.reason);
                    }
                }
            }
            Err(error) => tracing::error!(
                gpu = gpu_index,
                error = %crate::errors::chain(&error),
                "kill-new: not killing"
            ),
        }
    }
}
