//! The rules, checked against one snapshot: each user's limits (per process and summed),
//! each `[[group]]`'s, each `[[gpu]]`'s. Targets of an aggregate violation are the newest
//! processes first, as few as bring the value back to the limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::violation::{Rule, Subject, Unit, Violation};
use super::{Means, Seen};
use crate::guard::policy::{CompiledPolicy, DEFAULT_UTILIZATION_WINDOW, Limits, LocalTime};
use crate::snapshot::{Snapshot, Vendor};

/// Whether `measured` is reported against `limit`: `None` at or below the release level
/// (`hysteresis` percent under the limit), else whether it is over the limit itself.
fn exceeds(measured: f64, limit: f64, hysteresis: f64) -> Option<bool> {
    let release = limit * (1.0 - hysteresis / 100.0);
    (measured > release).then_some(measured > limit)
}

/// The table whose limits are in force for a user, for messages: the last window that
/// applies, else the user's entry, else `[defaults]`.
fn limit_source(policy: &CompiledPolicy, user: &str, uid: u32, local: LocalTime) -> String {
    let window = policy.policy.windows.iter().rev().find(|window| {
        window.contains(local)
            && (window.applies_to.is_empty() || policy.names_user(&window.applies_to, user, uid))
    });
    if let Some(window) = window {
        return format!("[[window]] {}", window.name);
    }
    match policy.user_entry(user, uid) {
        Some(entry) => format!("[[user]] {}", entry.name),
        None => "[defaults]".to_owned(),
    }
}

fn no_util(gpu_index: u32, policy: &str) -> String {
    format!(
        "GPU {gpu_index} reports no per-process utilization: the max_utilization_pct of {policy} cannot be evaluated there"
    )
}

/// The per-user rules: each user's processes (`by_uid`) against the limits in force for
/// the user at `local`.
pub(super) fn user_rules(
    policy: &CompiledPolicy,
    by_uid: &BTreeMap<u32, Vec<&Seen<'_>>>,
    snapshot: &Snapshot,
    means: &Means,
    local: LocalTime,
    out: &mut Vec<Violation>,
    not_evaluable: &mut BTreeSet<String>,
) {
    let hysteresis = policy.policy.hysteresis_pct;
    for processes in by_uid.values() {
        let info = processes[0].info();
        let limits = policy.limits_for(&info.user, info.uid, local);
        let source = limit_source(policy, &info.user, info.uid, local);
        let context = Context {
            source: &source,
            means,
            snapshot,
            hysteresis,
        };
        one_user_rules(&limits, &context, processes, out, not_evaluable);
    }
}

/// What the per-user rules share.
struct Context<'a> {
    /// The table the limits come from.
    source: &'a str,
    means: &'a Means,
    snapshot: &'a Snapshot,
    hysteresis: f64,
}

/// The per-user rules for one user's `processes`.
fn one_user_rules(
    limits: &Limits,
    context: &Context<'_>,
    processes: &[&Seen<'_>],
    out: &mut Vec<Violation>,
    not_evaluable: &mut BTreeSet<String>,
) {
    let (source, snapshot, hysteresis) = (context.source, context.snapshot, context.hysteresis);
    let now = snapshot.taken_at;
    let uid = processes[0].info().uid;
    for process in processes {
        let per_process = |rule, measured: f64, limit: f64, unit, over| Violation {
            rule,
            policy: source.to_owned(),
            subject: process.subject(),
            measured,
            limit,
            unit,
            offenders: vec![process.offender()],
            over,
            note: String::new(),
        };
        let memory_rules =
            limits.max_memory_per_process.is_some() || limits.max_memory_total.is_some();
        if memory_rules && process.process.used_memory_bytes.is_none() {
            not_evaluable.insert(format!(
                "GPU {} reports no memory for pid {}: the memory limits of {source} cannot be evaluated for it",
                process.key.gpu_index, process.key.pid
            ));
        }
        if let (Some(limit), Some(used)) = (
            limits.max_memory_per_process,
            process.process.used_memory_bytes,
        ) && let Some(over) = exceeds(used as f64, limit.0 as f64, hysteresis)
        {
            out.push(per_process(
                Rule::MemoryPerProcess,
                used as f64,
                limit.0 as f64,
                Unit::Bytes,
                over,
            ));
        }
        if let Some(limit) = limits.max_duration {
            let running = now
                .duration_since(process.info().start_time)
                .unwrap_or_default();
            // A process only gets older: no hysteresis.
            if running > limit {
                out.push(per_process(
                    Rule::Duration,
                    running.as_secs_f64(),
                    limit.as_secs_f64(),
                    Unit::Seconds,
                    true,
                ));
            }
        }
        let gpu = process.key.gpu_index;
        let not_allowed = limits
            .allowed_gpus
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&gpu))
            || limits
                .blocked_gpus
                .as_ref()
                .is_some_and(|blocked| blocked.contains(&gpu));
        if not_allowed {
            out.push(per_process(
                Rule::GpuNotAllowed,
                f64::from(gpu),
                0.0,
                Unit::Gpu,
                true,
            ));
        }
        if let Some(limit) = limits.max_utilization_pct {
            match context.means.mean(process, limits.window()) {
                Ok(Some(mean)) => {
                    if let Some(over) = exceeds(mean, limit, hysteresis) {
                        out.push(per_process(
                            Rule::Utilization,
                            mean,
                            limit,
                            Unit::Percent,
                            over,
                        ));
                    }
                }
                Ok(None) => {}
                Err(()) => {
                    not_evaluable.insert(no_util(gpu, source));
                }
            }
        }
    }
    if let Some(limit) = limits.max_memory_total {
        aggregate_memory(
            Rule::MemoryTotal,
            source,
            Subject::User(uid),
            processes,
            limit.0,
            hysteresis,
            out,
        );
    }
    if let Some(limit) = limits.max_processes {
        aggregate_count(
            Rule::Processes,
            source,
            Subject::User(uid),
            processes,
            limit,
            out,
        );
    }
}

/// The `[[group]]` rules: each group's members' processes (`by_uid`: every process, by
/// user) against the group's memory, process and utilization limits.
pub(super) fn group_rules(
    policy: &CompiledPolicy,
    by_uid: &BTreeMap<u32, Vec<&Seen<'_>>>,
    means: &Means,
    out: &mut Vec<Violation>,
    not_evaluable: &mut BTreeSet<String>,
) {
    let hysteresis = policy.policy.hysteresis_pct;
    // Each group's processes, found by user (a few lookups per user, not per process).
    let mut group_processes: Vec<Vec<&Seen<'_>>> = vec![Vec::new(); policy.policy.groups.len()];
    for processes in by_uid.values() {
        let info = processes[0].info();
        for (n, members) in group_processes.iter_mut().enumerate() {
            if policy.is_member(n, &info.user, info.uid) {
                members.extend(processes.iter().copied());
            }
        }
    }
    for (group, members) in policy.policy.groups.iter().zip(&group_processes) {
        let name = format!("[[group]] {}", group.name);
        let subject = Subject::Group(group.name.clone());
        if let Some(limit) = group.max_memory_total {
            aggregate_memory(
                Rule::GroupMemory,
                &name,
                subject.clone(),
                members,
                limit.0,
                hysteresis,
                out,
            );
        }
        if let Some(limit) = group.max_processes {
            aggregate_count(
                Rule::GroupProcesses,
                &name,
                subject.clone(),
                members,
                limit,
                out,
            );
        }
        if let Some(limit) = group.max_utilization_pct {
            let window = group
                .utilization_window
                .unwrap_or(DEFAULT_UTILIZATION_WINDOW);
            let mut total = 0.0;
            let mut evaluable = true;
            let mut each = HashMap::new();
            for process in members {
                match means.mean(process, window) {
                    Ok(mean) => {
                        total += mean.unwrap_or(0.0);
                        each.insert(process.key, mean.unwrap_or(0.0));
                    }
                    Err(()) => {
                        evaluable = false;
                        not_evaluable.insert(no_util(process.key.gpu_index, &name));
                    }
                }
            }
            if evaluable && let Some(over) = exceeds(total, limit, hysteresis) {
                // The newest, until the rest is back under the limit.
                let mut left = total;
                let mut offenders = Vec::new();
                for process in newest_first(members) {
                    if left <= limit {
                        break;
                    }
                    left -= each.get(&process.key).copied().unwrap_or(0.0);
                    offenders.push(process.offender());
                }
                out.push(Violation {
                    rule: Rule::GroupUtilization,
                    policy: name.clone(),
                    subject,
                    measured: total,
                    limit,
                    unit: Unit::Percent,
                    offenders,
                    over,
                    note: String::new(),
                });
            }
        }
    }
}

/// The `[[gpu]]` rules: who may use each GPU, its processes' memory, its reserved memory.
pub(super) fn gpu_rules(
    policy: &CompiledPolicy,
    snapshot: &Snapshot,
    seen: &[Seen<'_>],
    out: &mut Vec<Violation>,
) {
    let hysteresis = policy.policy.hysteresis_pct;
    for gpu in &policy.policy.gpus {
        let name = format!("[[gpu]] {}", gpu.index);
        let on_gpu: Vec<&Seen<'_>> = seen
            .iter()
            .filter(|p| p.key.vendor == Vendor::Nvidia && p.key.gpu_index == gpu.index)
            .collect();
        for process in &on_gpu {
            let (user, uid) = (&process.info().user, process.info().uid);
            let blocked = policy.names_user(&gpu.blocked_users, user, uid)
                || gpu
                    .allowed_users
                    .as_ref()
                    .is_some_and(|allowed| !policy.names_user(allowed, user, uid));
            if blocked {
                out.push(Violation {
                    rule: Rule::UserNotAllowed,
                    policy: name.clone(),
                    subject: process.subject(),
                    measured: f64::from(gpu.index),
                    limit: 0.0,
                    unit: Unit::Gpu,
                    offenders: vec![process.offender()],
                    over: true,
                    note: String::new(),
                });
            }
            if let (Some(limit), Some(used)) = (
                gpu.max_memory_per_process,
                process.process.used_memory_bytes,
            ) && let Some(over) = exceeds(used as f64, limit.0 as f64, hysteresis)
            {
                out.push(Violation {
                    rule: Rule::GpuMemoryPerProcess,
                    policy: name.clone(),
                    subject: process.subject(),
                    measured: used as f64,
                    limit: limit.0 as f64,
                    unit: Unit::Bytes,
                    offenders: vec![process.offender()],
                    over,
                    note: String::new(),
                });
            }
        }
        if let Some(reserved) = gpu.reserved_memory {
            let device = snapshot
                .gpus()
                .find(|(vendor, device)| *vendor == Vendor::Nvidia && device.index == gpu.index);
            if let Some((_, device)) = device
                && let (Some(used), Some(total)) =
                    (device.memory_used_bytes, device.memory_total_bytes)
            {
                let limit = total.saturating_sub(reserved.0);
                if let Some(over) = exceeds(used as f64, limit as f64, hysteresis) {
                    let mut offenders = Vec::new();
                    let mut freed = 0u64;
                    for process in newest_first(&on_gpu) {
                        if used.saturating_sub(freed) <= limit {
                            break;
                        }
                        if let Some(memory) = process.process.used_memory_bytes {
                            freed += memory;
                            offenders.push(process.offender());
                        }
                    }
                    out.push(Violation {
                        rule: Rule::ReservedMemory,
                        policy: name.clone(),
                        subject: Subject::Gpu(gpu.index),
                        measured: used as f64,
                        limit: limit as f64,
                        unit: Unit::Bytes,
                        offenders,
                        over,
                        note: String::new(),
                    });
                }
            }
        }
    }
}

/// The processes, newest first (then by pid, GPU).
fn newest_first<'a, 'b>(processes: &[&'b Seen<'a>]) -> Vec<&'b Seen<'a>> {
    let mut sorted = processes.to_vec();
    sorted.sort_by(|a, b| {
        b.info()
            .start_time
            .cmp(&a.info().start_time)
            .then(b.key.pid.cmp(&a.key.pid))
            .then(a.key.gpu_index.cmp(&b.key.gpu_index))
    });
    sorted
}

/// Total memory of `processes` above `limit`: the newest until the rest fits.
fn aggregate_memory(
    rule: Rule,
    policy: &str,
    subject: Subject,
    processes: &[&Seen<'_>],
    limit: u64,
    hysteresis: f64,
    out: &mut Vec<Violation>,
) {
    let total: u64 = processes
        .iter()
        .filter_map(|p| p.process.used_memory_bytes)
        .sum();
    let Some(over) = exceeds(total as f64, limit as f64, hysteresis) else {
        return;
    };
    let mut offenders = Vec::new();
    let mut left = total;
    for process in newest_first(processes) {
        if left <= limit {
            break;
        }
        if let Some(memory) = process.process.used_memory_bytes {
            left -= memory;
            offenders.push(process.offender());
        }
    }
    out.push(Violation {
        rule,
        policy: policy.to_owned(),
        subject,
        measured: total as f64,
        limit: limit as f64,
        unit: Unit::Bytes,
        offenders,
        over,
        note: String::new(),
    });
}

/// More distinct processes (pids) than `limit`: the newest beyond it.
fn aggregate_count(
    rule: Rule,
    policy: &str,
    subject: Subject,
    processes: &[&Seen<'_>],
    limit: u32,
    out: &mut Vec<Violation>,
) {
    let mut pids: Vec<&Seen<'_>> = Vec::new();
    for process in newest_first(processes) {
        if !pids.iter().any(|p| p.key.pid == process.key.pid) {
            pids.push(process);
        }
    }
    if pids.len() <= limit as usize {
        return;
    }
    let count = pids.len();
    // pids is newest first: the first count - limit are over.
    let offenders = pids[..count - limit as usize]
        .iter()
        .map(|p| p.offender())
        .collect();
    out.push(Violation {
        rule,
        policy: policy.to_owned(),
        subject,
        measured: count as f64,
        limit: f64::from(limit),
        unit: Unit::Count,
        offenders,
        // A count has no in-between: one process more is over.
        over: true,
        note: String::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GIB, Row, WEDNESDAY_NOON, policy, proc_info, snapshot_at};
    use super::super::{UtilHistory, evaluate};
    use super::*;
    use crate::guard::policy::Weekday;

    fn found(text: &str, rows: &[Row]) -> Vec<(Rule, String, f64, Vec<u32>)> {
        let evaluation = evaluate(
            &policy(text),
            &snapshot_at(0, rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        let mut found: Vec<_> = evaluation
            .violations
            .iter()
            .map(|v| {
                (
                    v.rule,
                    v.policy.clone(),
                    v.measured,
                    v.offenders.iter().map(|o| o.info.pid).collect::<Vec<u32>>(),
                )
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0).then(a.3.cmp(&b.3)));
        found
    }

    #[test]
    fn per_process_memory_and_duration_from_defaults_and_user_entries() {
        let text = r#"
            [defaults]
            max_memory_per_process = "30GiB"
            max_duration = "2h"
            [[user]]
            name = "alice"
            max_memory_per_process = "10GiB"
        "#;
        let rows = [
            (proc_info(10, 1000, "alice", 60), 0, Some(12), None),
            (proc_info(11, 1001, "bob", 60), 1, Some(12), None),
            (proc_info(12, 1001, "bob", 3 * 3600), 2, Some(31), None),
        ];
        assert_eq!(
            found(text, &rows),
            [
                (
                    Rule::MemoryPerProcess,
                    "[[user]] alice".into(),
                    (12 * GIB) as f64,
                    vec![10]
                ),
                (
                    Rule::MemoryPerProcess,
                    "[defaults]".into(),
                    (31 * GIB) as f64,
                    vec![12]
                ),
                (Rule::Duration, "[defaults]".into(), 3.0 * 3600.0, vec![12]),
            ]
        );
    }

    #[test]
    fn aggregates_pick_the_newest_processes_until_under_the_limit() {
        let text = r#"
            [[user]]
            name = "alice"
            max_memory_total = "40GiB"
            max_processes = 2
        "#;
        let rows = [
            (proc_info(20, 1000, "alice", 500), 0, Some(20), None),
            (proc_info(21, 1000, "alice", 300), 1, Some(15), None),
            (proc_info(22, 1000, "alice", 100), 2, Some(10), None),
            // The same process on two GPUs counts once for the process count.
            (proc_info(22, 1000, "alice", 100), 3, Some(1), None),
        ];
        assert_eq!(
            found(text, &rows),
            [
                // 46 GiB: pid 22's 10 GiB on GPU 2 brings it to 36.
                (
                    Rule::MemoryTotal,
                    "[[user]] alice".into(),
                    (46 * GIB) as f64,
                    vec![22]
                ),
                (Rule::Processes, "[[user]] alice".into(), 3.0, vec![22]),
            ]
        );
    }

    #[test]
    fn group_limits_gpu_policies_and_allowed_gpus() {
        let text = r#"
            [[user]]
            name = "dave"
            blocked_gpus = [2]
            [[group]]
            name = "students"
            unix_group = "lab"
            members = ["bob"]
            max_memory_total = "30GiB"
            [[gpu]]
            index = 1
            allowed_users = ["@students"]
            reserved_memory = "50GiB"
        "#;
        let rows = [
            (proc_info(30, 1001, "bob", 500), 0, Some(20), None),
            (proc_info(31, 1003, "erin", 100), 1, Some(20), None),
            (proc_info(32, 1000, "alice", 50), 1, Some(15), None),
            (proc_info(33, 1002, "dave", 50), 2, Some(1), None),
        ];
        assert_eq!(
            found(text, &rows),
            [
                (Rule::GpuNotAllowed, "[[user]] dave".into(), 2.0, vec![33]),
                (Rule::UserNotAllowed, "[[gpu]] 1".into(), 1.0, vec![32]),
                // 35 GiB used of 80, 30 may be: the newest (alice) frees enough.
                (
                    Rule::ReservedMemory,
                    "[[gpu]] 1".into(),
                    (35 * GIB) as f64,
                    vec![32]
                ),
                (
                    Rule::GroupMemory,
                    "[[group]] students".into(),
                    (40 * GIB) as f64,
                    vec![31]
                ),
            ]
        );
    }

    #[test]
    fn a_process_without_a_memory_reading_is_not_evaluable_not_zero() {
        let text = "[defaults]\nmax_memory_per_process = \"1GiB\"\n";
        let rows = [(proc_info(70, 1000, "alice", 10), 2, None, None)];
        let evaluation = evaluate(
            &policy(text),
            &snapshot_at(0, &rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        assert!(evaluation.violations.is_empty());
        assert_eq!(
            evaluation.not_evaluable,
            [
                "GPU 2 reports no memory for pid 70: the memory limits of [defaults] cannot be evaluated for it"
            ]
        );
    }

    #[test]
    fn a_window_replaces_the_limit_while_active() {
        let text = r#"
            [defaults]
            max_memory_per_process = "10GiB"
            [[window]]
            name = "weekend"
            days = ["sat", "sun"]
            start = "00:00"
            end = "00:00"
            max_memory_per_process = "70GiB"
        "#;
        let rows = [(proc_info(50, 1000, "alice", 10), 0, Some(20), None)];
        let compiled = policy(text);
        let snapshot = snapshot_at(0, &rows);
        let at = |weekday| LocalTime {
            weekday,
            minute: 600,
        };
        let history = UtilHistory::default();
        assert_eq!(
            evaluate(&compiled, &snapshot, &history, at(Weekday::Fri))
                .violations
                .len(),
            1
        );
        assert!(
            evaluate(&compiled, &snapshot, &history, at(Weekday::Sun))
                .violations
                .is_empty()
        );
    }
}
