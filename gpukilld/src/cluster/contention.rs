//! Contention across the cluster, from the snapshots a fan-out collected: which GPUs are
//! busy, free or held by processes that do nothing, which are unhealthy (critical or lost:
//! in none of the others, so that nobody is sent to a broken GPU), who uses the most memory
//! and compute, and what to do about it. Pure: tests give it snapshots.

use std::collections::{BTreeMap, BTreeSet};

use gpukill_proto::v1 as pb;

use crate::health::HealthState;

/// Memory or utilization at or above this share makes a GPU busy.
const BUSY_PERCENT: u64 = 90;

/// Users listed per ranking when the request does not say.
pub const DEFAULT_TOP: usize = 10;

/// GPUs named one by one in a suggestion (free GPUs in one line, unhealthy GPUs a line
/// each); the rest are counted.
const NAMED: usize = 8;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[derive(Default)]
struct UserTotals {
    memory_bytes: u64,
    sm_utilization_pct: u32,
    gpus: BTreeSet<(String, u32, i32)>,
    processes: u32,
    nodes: BTreeSet<String>,
}

fn cluster_gpu(node: &str, gpu: &pb::Gpu, users: Vec<String>) -> pb::ClusterGpu {
    pb::ClusterGpu {
        node: node.to_string(),
        index: gpu.index,
        name: gpu.name.clone(),
        utilization_pct: gpu.utilization_gpu_pct,
        memory_used_bytes: gpu.memory_used_bytes,
        memory_total_bytes: gpu.memory_total_bytes,
        users,
        health_state: health_state(gpu).into(),
        health_reason: health_reason(gpu),
    }
}

/// The health state `gpu`'s node sent (unset from a node that does not assess health).
fn health_state(gpu: &pb::Gpu) -> pb::HealthState {
    gpu.health
        .as_ref()
        .map_or(pb::HealthState::Unspecified, pb::GpuHealth::state)
}

/// Why `gpu` is warning, critical or lost: its reasons of that severity or worse,
/// `; `-joined; `None` when it is ok, unknown or has no reason.
fn health_reason(gpu: &pb::Gpu) -> Option<String> {
    let health = gpu.health.as_ref()?;
    if health.state < pb::HealthState::Warning as i32 {
        return None;
    }
    let reasons: Vec<&str> = health
        .reasons
        .iter()
        .filter(|reason| reason.severity >= health.state)
        .map(|reason| reason.text.as_str())
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn busy(gpu: &pb::Gpu) -> bool {
    let memory = match (gpu.memory_used_bytes, gpu.memory_total_bytes) {
        (Some(used), Some(total)) if total > 0 => used.saturating_mul(100) >= total * BUSY_PERCENT,
        _ => false,
    };
    memory
        || gpu
            .utilization_gpu_pct
            .is_some_and(|u| u64::from(u) >= BUSY_PERCENT)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// The contention report of `answered` (node name, snapshot), with `unreachable` ("n2:
/// why") listed as such; `top` users per ranking.
pub fn contention(
    answered: &[(String, pb::Snapshot)],
    unreachable: Vec<String>,
    top: usize,
) -> pb::ContentionResponse {
    let mut response = pb::ContentionResponse::default();
    let mut users: BTreeMap<String, UserTotals> = BTreeMap::new();
    for (node, snapshot) in answered {
        for gpu in &snapshot.gpus {
            let unfit = health_state(gpu).is_unfit();
            // A GPU that could not be read is in no list, unless its health says it is unfit
            // (a lost GPU is an error too).
            if gpu.error.is_some() && !unfit {
                continue;
            }
            let on_gpu: Vec<&pb::GpuProcess> = snapshot
                .processes
                .iter()
                .filter(|p| p.gpu_index == gpu.index && p.vendor == gpu.vendor)
                .collect();
            let names: BTreeSet<String> = on_gpu.iter().map(|p| p.user.clone()).collect();
            let names: Vec<String> = names.into_iter().collect();
            for process in &on_gpu {
                let totals = users.entry(process.user.clone()).or_default();
                totals.memory_bytes += process.used_memory_bytes.unwrap_or(0);
                totals.sm_utilization_pct += process.sm_utilization_pct.unwrap_or(0);
                totals.gpus.insert((node.clone(), gpu.index, gpu.vendor));
                totals.processes += 1;
                totals.nodes.insert(node.clone());
            }
            if unfit {
                response.unhealthy.push(cluster_gpu(node, gpu, names));
            } else if busy(gpu) {
                response.busy.push(cluster_gpu(node, gpu, names));
            } else if on_gpu.is_empty() {
                response.free.push(cluster_gpu(node, gpu, names));
            } else if gpu.utilization_gpu_pct == Some(0)
                && on_gpu
                    .iter()
                    .all(|p| p.sm_utilization_pct.unwrap_or(0) == 0)
            {
                response.idle.push(cluster_gpu(node, gpu, names));
            }
        }
    }
    let ranked = |key: &dyn Fn(&UserTotals) -> u64| -> Vec<pb::ClusterUser> {
        let mut list: Vec<(&String, &UserTotals)> =
            users.iter().filter(|(_, totals)| key(totals) > 0).collect();
        list.sort_by(|a, b| key(b.1).cmp(&key(a.1)).then_with(|| a.0.cmp(b.0)));
        list.into_iter()
            .take(top)
            .map(|(user, totals)| pb::ClusterUser {
                user: user.clone(),
                memory_bytes: totals.memory_bytes,
                sm_utilization_pct: totals.sm_utilization_pct,
                gpus: u32::try_from(totals.gpus.len()).unwrap_or(u32::MAX),
                processes: totals.processes,
                nodes: totals.nodes.iter().cloned().collect(),
            })
            .collect()
    };
    response.top_by_memory = ranked(&|totals| totals.memory_bytes);
    response.top_by_utilization = ranked(&|totals| u64::from(totals.sm_utilization_pct));
    response.suggestions = suggestions(&response, &unreachable);
    response.unreachable = unreachable;
    response
}

fn place(gpu: &pb::ClusterGpu) -> String {
    format!("{} GPU {}", gpu.node, gpu.index)
}

fn suggestions(report: &pb::ContentionResponse, unreachable: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    for gpu in &report.idle {
        let held = gpu
            .memory_used_bytes
            .map(gib)
            .unwrap_or_else(|| "memory".into());
        let users = gpu.users.join(", ");
        lines.push(format!(
            "{} holds {held} for {users} at 0% utilization: ask them to release it, or an admin can run `gpukillctl --node {} kill --gpu {}`",
            place(gpu),
            gpu.node,
            gpu.index
        ));
    }
    if !report.free.is_empty() {
        let free: Vec<String> = report
            .free
            .iter()
            .take(NAMED)
            .map(|gpu| {
                // A warning GPU is free, but whoever takes it should know.
                if gpu.health_state() == pb::HealthState::Warning {
                    format!("{} (warning)", place(gpu))
                } else {
                    place(gpu)
                }
            })
            .collect();
        let more = report.free.len().saturating_sub(free.len());
        lines.push(format!(
            "{} free GPU{}: {}{}",
            report.free.len(),
            if report.free.len() == 1 { "" } else { "s" },
            free.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    } else if !report.busy.is_empty() {
        lines.push(
            "no GPU is free: new work waits for one of the busy GPUs, or for an idle one to be released"
                .to_string(),
        );
    }
    for gpu in report.unhealthy.iter().take(NAMED) {
        let state =
            HealthState::try_from(gpu.health_state()).map_or("unhealthy", HealthState::as_str);
        let why = gpu
            .health_reason
            .as_ref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        lines.push(format!(
            "{} is {state}{why}: not counted as free; an admin checks it with `gpukillctl --node {} health`",
            place(gpu),
            gpu.node
        ));
    }
    if report.unhealthy.len() > NAMED {
        lines.push(format!(
            "{} more unhealthy GPUs: see the unhealthy list",
            report.unhealthy.len() - NAMED
        ));
    }
    if let Some(heaviest) = report.top_by_memory.first()
        && heaviest.gpus > 1
        && !report.busy.is_empty()
    {
        lines.push(format!(
            "{} holds the most GPU memory ({} on {} GPUs across {})",
            heaviest.user,
            gib(heaviest.memory_bytes),
            heaviest.gpus,
            heaviest.nodes.join(", ")
        ));
    }
    for node in unreachable {
        lines.push(format!("{node}: not counted above"));
    }
    lines
}

#[cfg(test)]
mod tests {

    use super::*;

    const GB: u64 = 1 << 30;

    fn gpu(index: u32, used: u64, util: u32) -> pb::Gpu {
        pb::Gpu {
            index,
            vendor: pb::Vendor::Nvidia as i32,
            name: Some("A100".into()),
            memory_used_bytes: Some(used),
            memory_total_bytes: Some(80 * GB),
            utilization_gpu_pct: Some(util),
            ..pb::Gpu::default()
        }
    }

    fn process(gpu_index: u32, user: &str, memory: u64, sm: Option<u32>) -> pb::GpuProcess {
        pb::GpuProcess {
            gpu_index,
            vendor: pb::Vendor::Nvidia as i32,
            pid: 100 + gpu_index,
            user: user.into(),
            used_memory_bytes: Some(memory),
            sm_utilization_pct: sm,
            ..pb::GpuProcess::default()
        }
    }

    #[test]
    fn busy_free_and_idle_gpus_and_top_users() {
        let n1 = pb::Snapshot {
            gpus: vec![gpu(0, 75 * GB, 40), gpu(1, 0, 0), gpu(2, 20 * GB, 0)],
            processes: vec![
                process(0, "alice", 75 * GB, Some(40)),
                process(2, "bob", 20 * GB, Some(0)),
            ],
            ..pb::Snapshot::default()
        };
        let n2 = pb::Snapshot {
            gpus: vec![gpu(0, 10 * GB, 95)],
            processes: vec![process(0, "alice", 10 * GB, Some(95))],
            ..pb::Snapshot::default()
        };
        let report = contention(
            &[("n1".into(), n1), ("n2".into(), n2)],
            vec!["n3: deadline exceeded after 1s".into()],
            10,
        );
        let places = |gpus: &[pb::ClusterGpu]| gpus.iter().map(place).collect::<Vec<_>>();
        assert_eq!(places(&report.busy), ["n1 GPU 0", "n2 GPU 0"]);
        assert_eq!(places(&report.free), ["n1 GPU 1"]);
        assert_eq!(places(&report.idle), ["n1 GPU 2"]);
        assert_eq!(report.idle[0].users, ["bob"]);
        let top: Vec<(&str, u64)> = report
            .top_by_memory
            .iter()
            .map(|u| (u.user.as_str(), u.memory_bytes / GB))
            .collect();
        assert_eq!(top, [("alice", 85), ("bob", 20)]);
        assert_eq!(report.top_by_memory[0].nodes, ["n1", "n2"]);
        assert_eq!(report.top_by_memory[0].gpus, 2);
        // bob's process does nothing: he is not in the utilization ranking.
        assert_eq!(report.top_by_utilization.len(), 1);
        assert_eq!(report.top_by_utilization[0].sm_utilization_pct, 135);
        let text = report.suggestions.join("\n");
        assert!(
            text.contains("n1 GPU 2 holds 20.0 GiB for bob at 0% utilization"),
            "{text}"
        );
        assert!(text.contains("1 free GPU: n1 GPU 1"), "{text}");
        assert!(
            text.contains("n3: deadline exceeded after 1s: not counted"),
            "{text}"
        );
        assert_eq!(report.unreachable, ["n3: deadline exceeded after 1s"]);
    }

    fn health(state: pb::HealthState, reasons: &[(pb::HealthState, &str)]) -> pb::GpuHealth {
        pb::GpuHealth {
            state: state.into(),
            reasons: reasons
                .iter()
                .map(|(severity, text)| pb::HealthReason {
                    severity: (*severity).into(),
                    text: (*text).into(),
                    ..pb::HealthReason::default()
                })
                .collect(),
            ..pb::GpuHealth::default()
        }
    }

    #[test]
    fn critical_and_lost_gpus_are_unhealthy_and_never_free() {
        use pb::HealthState::{Critical, Lost, Ok, Warning};
        let xid = "Xid 79 (GPU has fallen off the bus)";
        let mut critical = gpu(0, 0, 0);
        critical.health = Some(health(
            Critical,
            &[(Critical, xid), (Warning, "throttled: hw_thermal")],
        ));
        let mut throttled = gpu(1, 0, 0);
        throttled.health = Some(health(Warning, &[(Warning, "throttled: hw_thermal")]));
        // A lost GPU is an error too: still counted, as unhealthy.
        let mut lost = pb::Gpu {
            error: Some("GPU is lost".into()),
            ..gpu(2, 0, 0)
        };
        lost.health = Some(health(Lost, &[(Lost, "the GPU has fallen off the bus")]));
        // An unreadable GPU with no health verdict stays out of every list.
        let unreadable = pb::Gpu {
            error: Some("NVML timed out".into()),
            ..gpu(3, 0, 0)
        };
        let mut busy_but_critical = gpu(4, 79 * GB, 99);
        busy_but_critical.health = Some(health(Critical, &[(Critical, xid)]));
        let mut fine = gpu(5, 0, 0);
        fine.health = Some(health(Ok, &[]));
        let n2 = pb::Snapshot {
            gpus: vec![
                critical,
                throttled,
                lost,
                unreadable,
                busy_but_critical,
                fine,
            ],
            processes: vec![process(4, "carol", 79 * GB, Some(99))],
            ..pb::Snapshot::default()
        };
        let report = contention(&[("n2".into(), n2)], Vec::new(), 10);
        let places = |gpus: &[pb::ClusterGpu]| gpus.iter().map(place).collect::<Vec<_>>();
        assert_eq!(
            places(&report.unhealthy),
            ["n2 GPU 0", "n2 GPU 2", "n2 GPU 4"]
        );
        assert_eq!(places(&report.free), ["n2 GPU 1", "n2 GPU 5"]);
        assert!(
            report.busy.is_empty() && report.idle.is_empty(),
            "{report:?}"
        );
        assert_eq!(report.unhealthy[0].health_state(), Critical);
        assert_eq!(report.unhealthy[0].health_reason.as_deref(), Some(xid));
        assert_eq!(report.unhealthy[1].health_state(), Lost);
        assert_eq!(report.unhealthy[2].users, ["carol"]);
        assert_eq!(report.free[0].health_state(), Warning);
        assert_eq!(
            report.free[0].health_reason.as_deref(),
            Some("throttled: hw_thermal")
        );
        assert_eq!(report.free[1].health_state(), Ok);
        assert_eq!(report.free[1].health_reason, None);
        // carol's memory on the critical GPU still counts: she holds it.
        assert_eq!(report.top_by_memory[0].user, "carol");
        let text = report.suggestions.join("\n");
        assert!(
            text.contains("2 free GPUs: n2 GPU 1 (warning), n2 GPU 5"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "n2 GPU 0 is critical ({xid}): not counted as free; an admin checks it with \
                 `gpukillctl --node n2 health`"
            )),
            "{text}"
        );
        assert!(
            text.contains("n2 GPU 2 is lost (the GPU has fallen off the bus): not counted"),
            "{text}"
        );
    }

    #[test]
    fn many_unhealthy_gpus_are_counted_after_the_first_few() {
        let gpus = (0..11)
            .map(|index| pb::Gpu {
                health: Some(health(pb::HealthState::Lost, &[])),
                ..gpu(index, 0, 0)
            })
            .collect();
        let snapshot = pb::Snapshot {
            gpus,
            ..pb::Snapshot::default()
        };
        let report = contention(&[("n1".into(), snapshot)], Vec::new(), 10);
        assert_eq!(report.unhealthy.len(), 11);
        assert_eq!(
            report.suggestions.len(),
            NAMED + 1,
            "{:?}",
            report.suggestions
        );
        assert_eq!(
            report.suggestions[0],
            "n1 GPU 0 is lost: not counted as free; an admin checks it with `gpukillctl --node n1 health`"
        );
        assert_eq!(
            report.suggestions[NAMED],
            "3 more unhealthy GPUs: see the unhealthy list"
        );
    }

    #[test]
    fn top_limits_the_rankings() {
        let snapshot = pb::Snapshot {
            gpus: vec![gpu(0, 30 * GB, 50)],
            processes: vec![
                process(0, "a", 10 * GB, Some(10)),
                process(0, "b", 20 * GB, Some(20)),
            ],
            ..pb::Snapshot::default()
        };
        let report = contention(&[("n1".into(), snapshot)], Vec::new(), 1);
        assert_eq!(report.top_by_memory.len(), 1);
        assert_eq!(report.top_by_memory[0].user, "b");
    }
}
