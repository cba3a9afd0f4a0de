//! Turning answers into text: for `list`, human tables ([`table`]) and the gpukill JSON
//! ([`json`]); for `kill`, `reset`, `events`, `cluster` and `uploads`, one module each with
//! both renderings (and [`reservations`] for `reserve`, `release` and `status`, [`drain`] for `drain` and
//! `undrain`); for the reports `audit` and `history`, one module each with a table, JSON
//! and CSV ([`csv`]).
//!
//! The renderings share the helpers here, so a table and the JSON of the same answer always
//! agree on names, units, the process count and the top process of a GPU. Human output never
//! carries a control character to the terminal: [`escape`] says how they are shown.

pub mod audit;
pub mod cluster;
pub mod collection;
pub mod csv;
pub mod drain;
pub mod escape;
pub mod events;
pub mod gpukill_record;
pub mod guard;
pub mod health;
pub mod history;
pub mod json;
pub mod kill;
pub mod layout;
pub mod reservations;
pub mod reset;
pub mod table;
pub mod time;
pub mod uploads;

use std::borrow::Cow;

use gpukill_proto::v1::{
    EventType, Gpu, GpuProcess, GuardMode, GuardRule, GuardUnit, KillOutcome, ProcessKind,
    ResetOutcome, RogueLevel, Snapshot, Vendor, VendorState,
};

/// Bytes per MiB; memory is shown in whole MiB, rounded down.
const MIB: u64 = 1024 * 1024;

/// Whole MiB in `bytes`, rounded down.
pub fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

/// The lower-case vendor name (`nvidia`, `amd`, ...); `unknown` for an unset or unknown value.
pub fn vendor_name(vendor: i32) -> &'static str {
    match Vendor::try_from(vendor) {
        Ok(Vendor::Unspecified) | Err(_) => "unknown",
        Ok(vendor) => vendor.cli_name(),
    }
}

/// The vendor state as `ok`, `error` or `hung`; `unknown` for an unset or unknown value.
pub fn vendor_state_name(state: i32) -> &'static str {
    match VendorState::try_from(state) {
        Ok(VendorState::Ok) => "ok",
        Ok(VendorState::Error) => "error",
        Ok(VendorState::Hung) => "hung",
        Ok(VendorState::Unspecified) | Err(_) => "unknown",
    }
}

/// The process kind as `compute`, `graphics` or `compute+graphics`; `None` when unset.
pub fn process_kind_name(kind: i32) -> Option<&'static str> {
    match ProcessKind::try_from(kind) {
        Ok(ProcessKind::Compute) => Some("compute"),
        Ok(ProcessKind::Graphics) => Some("graphics"),
        Ok(ProcessKind::ComputeAndGraphics) => Some("compute+graphics"),
        Ok(ProcessKind::Unspecified) | Err(_) => None,
    }
}

/// The kill outcome as JSON names it: `terminated`, `killed`, `still_running`,
/// `already_gone`, `denied`, `protected` or `matched` (the proto names in lower case, as the
/// audit trail writes them); `unknown` for an unset or unknown value.
pub fn kill_outcome_name(outcome: i32) -> &'static str {
    match KillOutcome::try_from(outcome) {
        Ok(KillOutcome::Terminated) => "terminated",
        Ok(KillOutcome::Killed) => "killed",
        Ok(KillOutcome::StillRunning) => "still_running",
        Ok(KillOutcome::AlreadyGone) => "already_gone",
        Ok(KillOutcome::Denied) => "denied",
        Ok(KillOutcome::Protected) => "protected",
        Ok(KillOutcome::Matched) => "matched",
        Ok(KillOutcome::Unspecified) | Err(_) => "unknown",
    }
}

/// The kill outcome in words, for tables: `still running` rather than `still_running`.
pub fn kill_outcome_words(outcome: i32) -> &'static str {
    match KillOutcome::try_from(outcome) {
        Ok(KillOutcome::StillRunning) => "still running",
        Ok(KillOutcome::AlreadyGone) => "already gone",
        _ => kill_outcome_name(outcome),
    }
}

/// The reset outcome as JSON and tables name it: `reset` or `failed` (the proto names in lower
/// case); `unknown` for an unset or unknown value.
pub fn reset_outcome_name(outcome: i32) -> &'static str {
    match ResetOutcome::try_from(outcome) {
        Ok(ResetOutcome::Reset) => "reset",
        Ok(ResetOutcome::Failed) => "failed",
        Ok(ResetOutcome::Unspecified) | Err(_) => "unknown",
    }
}

/// An enum value from the daemon as output shows it: the name `name` gives a known value;
/// `unknown` for the unset zero value (for which `name` answers `None`); `unknown(N)` for a
/// number this client does not know (a newer daemon's).
fn enum_name<E: TryFrom<i32>>(
    value: i32,
    name: fn(E) -> Option<&'static str>,
) -> Cow<'static, str> {
    match E::try_from(value) {
        Ok(known) => Cow::Borrowed(name(known).unwrap_or("unknown")),
        Err(_) => Cow::Owned(format!("unknown({value})")),
    }
}

/// The guard rule as the policy and the audit trail name it: `memory_per_process`,
/// `memory_total`, `utilization`, `duration`, `processes`, `gpu_not_allowed`,
/// `user_not_allowed`, `gpu_memory_per_process`, `reserved_memory`, `group_memory`,
/// `group_utilization`, `group_processes`, `rogue` or `reservation`.
pub fn guard_rule_name(rule: i32) -> Cow<'static, str> {
    enum_name(rule, |rule| match rule {
        GuardRule::Unspecified => None,
        GuardRule::MemoryPerProcess => Some("memory_per_process"),
        GuardRule::MemoryTotal => Some("memory_total"),
        GuardRule::Utilization => Some("utilization"),
        GuardRule::Duration => Some("duration"),
        GuardRule::Processes => Some("processes"),
        GuardRule::GpuNotAllowed => Some("gpu_not_allowed"),
        GuardRule::UserNotAllowed => Some("user_not_allowed"),
        GuardRule::GpuMemoryPerProcess => Some("gpu_memory_per_process"),
        GuardRule::ReservedMemory => Some("reserved_memory"),
        GuardRule::GroupMemory => Some("group_memory"),
        GuardRule::GroupUtilization => Some("group_utilization"),
        GuardRule::GroupProcesses => Some("group_processes"),
        GuardRule::Rogue => Some("rogue"),
        GuardRule::Reservation => Some("reservation"),
    })
}

/// The unit of a guard violation: `bytes`, `percent`, `seconds`, `count`, `gpu` or `score`.
pub fn guard_unit_name(unit: i32) -> Cow<'static, str> {
    enum_name(unit, |unit| match unit {
        GuardUnit::Unspecified => None,
        GuardUnit::Bytes => Some("bytes"),
        GuardUnit::Percent => Some("percent"),
        GuardUnit::Seconds => Some("seconds"),
        GuardUnit::Count => Some("count"),
        GuardUnit::Gpu => Some("gpu"),
        GuardUnit::Score => Some("score"),
    })
}

/// The guard mode as the policy file and `guard mode` name it: `dry-run`, `soft` or `hard`.
pub fn guard_mode_name(mode: i32) -> Cow<'static, str> {
    enum_name(mode, |mode| match mode {
        GuardMode::Unspecified => None,
        GuardMode::DryRun => Some("dry-run"),
        GuardMode::Soft => Some("soft"),
        GuardMode::Hard => Some("hard"),
    })
}

/// The risk level of a rogue finding: `low`, `medium`, `high` or `critical`.
pub fn rogue_level_name(level: i32) -> Cow<'static, str> {
    enum_name(level, |level| match level {
        RogueLevel::Unspecified => None,
        RogueLevel::Low => Some("low"),
        RogueLevel::Medium => Some("medium"),
        RogueLevel::High => Some("high"),
        RogueLevel::Critical => Some("critical"),
    })
}

/// The type of an audit event: `kill`, `reset`, `deny`, `violation`, `policy` or
/// `reservation`.
pub fn event_type_name(event_type: i32) -> Cow<'static, str> {
    enum_name(event_type, |event_type| match event_type {
        EventType::Unspecified => None,
        EventType::Kill => Some("kill"),
        EventType::Reset => Some("reset"),
        EventType::Deny => Some("deny"),
        EventType::Violation => Some("violation"),
        EventType::Policy => Some("policy"),
        EventType::Reservation => Some("reservation"),
        EventType::Health => Some("health"),
    })
}

/// The processes of `snapshot` that run on `gpu` (same vendor and index).
pub fn processes_on<'a>(
    snapshot: &'a Snapshot,
    gpu: &Gpu,
) -> impl Iterator<Item = &'a GpuProcess> + use<'a> {
    let (vendor, index) = (gpu.vendor, gpu.index);
    snapshot
        .processes
        .iter()
        .filter(move |process| process.vendor == vendor && process.gpu_index == index)
}

/// How many distinct processes run on `gpu`. `None` (unknown, not zero) when the GPU could
/// not be read this tick and no process was reported for it.
///
/// When the request had a process filter, this counts the processes that matched it. From
/// the GPU's process summary when the daemon sent one (`PROCESS_VIEW_SUMMARY`), else from
/// the snapshot's processes: both give the same count.
pub fn pid_count(snapshot: &Snapshot, gpu: &Gpu) -> Option<u64> {
    let count = match &gpu.process_summary {
        Some(summary) => u64::from(summary.process_count),
        None => {
            let mut pids: Vec<u32> = processes_on(snapshot, gpu).map(|p| p.pid).collect();
            pids.sort_unstable();
            pids.dedup();
            pids.len() as u64
        }
    };
    if count == 0 && gpu.error.is_some() {
        None
    } else {
        Some(count)
    }
}

/// The process using the most memory on `gpu`. Processes whose memory is unknown rank below
/// every process whose memory is known; ties go to the lowest PID. A GPU whose processes all
/// have unknown memory still has a top process (the lowest PID), since one is better than none.
///
/// The daemon picks it by the same rule for a process summary; when the GPU has one, that is
/// the answer.
pub fn top_process<'a>(snapshot: &'a Snapshot, gpu: &'a Gpu) -> Option<&'a GpuProcess> {
    if let Some(summary) = &gpu.process_summary {
        return summary.top_process.as_ref();
    }
    processes_on(snapshot, gpu).min_by(|a, b| {
        // `Option` orders `None` below `Some`, so reversing puts the largest known first.
        b.used_memory_bytes
            .cmp(&a.used_memory_bytes)
            .then(a.pid.cmp(&b.pid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    fn process(gpu_index: u32, pid: u32, used: Option<u64>) -> GpuProcess {
        GpuProcess {
            gpu_index,
            vendor: Vendor::Nvidia as i32,
            pid,
            used_memory_bytes: used,
            ..Default::default()
        }
    }

    fn gpu(index: u32) -> Gpu {
        Gpu {
            index,
            vendor: Vendor::Nvidia as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_top_process_uses_the_most_memory_on_that_gpu() {
        let snapshot = testutil::snapshot();
        let top = top_process(&snapshot, &snapshot.gpus[0]).expect("GPU 0 has processes");
        assert_eq!((top.name.as_str(), top.pid), ("python", 4242));
        assert_eq!(top_process(&snapshot, &snapshot.gpus[1]), None);
    }

    #[test]
    fn known_memory_beats_unknown_and_ties_go_to_the_lowest_pid() {
        let snapshot = Snapshot {
            gpus: vec![gpu(0), gpu(1), gpu(2)],
            processes: vec![
                process(0, 30, None),
                process(0, 20, Some(1)),
                process(1, 9, Some(5 * MIB)),
                process(1, 7, Some(5 * MIB)),
                process(1, 8, Some(6 * MIB)),
                process(2, 50, None),
                process(2, 40, None),
                // Same index, other vendor: not on GPU 2.
                GpuProcess {
                    vendor: Vendor::Amd as i32,
                    ..process(2, 1, Some(100 * MIB))
                },
            ],
            ..Default::default()
        };
        let top = |i: usize| top_process(&snapshot, &snapshot.gpus[i]).map(|p| p.pid);
        assert_eq!(top(0), Some(20));
        assert_eq!(top(1), Some(8));
        assert_eq!(top(2), Some(40));
    }

    #[test]
    fn pid_counts_are_unknown_for_unreadable_gpus_without_processes() {
        let snapshot = testutil::snapshot();
        assert_eq!(pid_count(&snapshot, &snapshot.gpus[0]), Some(3));
        assert_eq!(pid_count(&snapshot, &snapshot.gpus[1]), None);
        let idle = Snapshot {
            gpus: vec![gpu(0)],
            ..Default::default()
        };
        assert_eq!(pid_count(&idle, &idle.gpus[0]), Some(0));
    }

    #[test]
    fn names_and_units() {
        assert_eq!(mib(85_899_345_920), 81920);
        assert_eq!(mib(MIB - 1), 0);
        assert_eq!(vendor_name(Vendor::Nvidia as i32), "nvidia");
        assert_eq!(vendor_name(0), "unknown");
        assert_eq!(vendor_name(99), "unknown");
        assert_eq!(vendor_state_name(VendorState::Hung as i32), "hung");
        assert_eq!(process_kind_name(3), Some("compute+graphics"));
        assert_eq!(process_kind_name(0), None);
    }

    #[test]
    fn guard_rogue_and_event_names_are_the_proto_names_in_lower_case() {
        fn check<E: TryFrom<i32> + Copy>(
            name: fn(i32) -> Cow<'static, str>,
            proto_name: fn(&E) -> &'static str,
            prefix: &str,
        ) {
            assert_eq!(name(0), "unknown");
            let mut value = 1;
            while let Ok(known) = E::try_from(value) {
                let proto = proto_name(&known).trim_start_matches(prefix).to_lowercase();
                assert_eq!(
                    name(value),
                    proto.replace("dry_run", "dry-run"),
                    "{prefix}{value}"
                );
                value += 1;
            }
            assert!(value > 2, "{prefix}: no values");
            assert_eq!(name(value), format!("unknown({value})"));
        }
        check(guard_rule_name, GuardRule::as_str_name, "GUARD_RULE_");
        check(guard_unit_name, GuardUnit::as_str_name, "GUARD_UNIT_");
        check(guard_mode_name, GuardMode::as_str_name, "GUARD_MODE_");
        check(rogue_level_name, RogueLevel::as_str_name, "ROGUE_LEVEL_");
        check(event_type_name, EventType::as_str_name, "EVENT_TYPE_");
        assert_eq!(guard_mode_name(GuardMode::DryRun as i32), "dry-run");
        assert_eq!(event_type_name(-3), "unknown(-3)");
    }

    #[test]
    fn kill_outcome_names_are_the_proto_names_in_lower_case() {
        for value in 1..=7 {
            let outcome = KillOutcome::try_from(value).expect("known outcome");
            let proto = outcome.as_str_name().trim_start_matches("KILL_OUTCOME_");
            assert_eq!(kill_outcome_name(value), proto.to_lowercase());
            assert_eq!(
                kill_outcome_words(value),
                proto.to_lowercase().replace('_', " ")
            );
        }
        assert_eq!(kill_outcome_name(0), "unknown");
        assert_eq!(kill_outcome_words(99), "unknown");
    }

    #[test]
    fn reset_outcome_names_are_the_proto_names_in_lower_case() {
        for value in 1..=2 {
            let outcome = ResetOutcome::try_from(value).expect("known outcome");
            let proto = outcome.as_str_name().trim_start_matches("RESET_OUTCOME_");
            assert_eq!(reset_outcome_name(value), proto.to_lowercase());
        }
        assert_eq!(reset_outcome_name(0), "unknown");
        assert_eq!(reset_outcome_name(99), "unknown");
    }
}
