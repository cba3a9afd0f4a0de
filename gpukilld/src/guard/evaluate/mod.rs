//! Evaluating a policy against the latest snapshot: which rules are broken, by how much, and
//! which processes acting on it would stop. Pure: the caller passes the snapshot, the
//! utilization history and the local time, so tests inject all three.
//!
//! Targets of an aggregate violation (a user's or a group's total memory or process count, a
//! GPU's reserved memory) are the newest processes first, as few as bring the value back to
//! the limit: the work lost is the least.

mod findings;
mod history;
mod rules;
mod violation;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use findings::reservation_findings;
pub use history::{ProcKey, UtilHistory};
pub use violation::{Offender, Rule, Subject, Unit, Violation, format_value, unit_name};

use super::policy::{CompiledPolicy, LocalTime};
use crate::procinfo::ProcessInfo;
use crate::snapshot::{GpuProcess, Snapshot};
use history::Series;

/// The utilization history as of one evaluation's snapshot.
struct Means {
    now: SystemTime,
    poll: Duration,
}

impl Means {
    /// The mean utilization of `process` over `window` (see [`Series::mean`]).
    fn mean(&self, process: &Seen<'_>, window: Duration) -> Result<Option<f64>, ()> {
        match process.series {
            Some(series) => series.mean(window, self.now, self.poll),
            None => Ok(None),
        }
    }
}

/// What one evaluation found.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// The broken rules.
    pub violations: Vec<Violation>,
    /// Rules that could not be evaluated on some GPU, and why (one line each).
    pub not_evaluable: Vec<String>,
}

/// One process on one GPU, with what evaluation needs.
struct Seen<'a> {
    process: GpuProcess<'a>,
    key: ProcKey,
    /// Its utilization history, looked up once per evaluation.
    series: Option<&'a Series>,
}

impl Seen<'_> {
    fn info(&self) -> &Arc<ProcessInfo> {
        &self.process.slot.info
    }

    fn offender(&self) -> Offender {
        Offender {
            info: Arc::clone(self.info()),
            vendor: self.key.vendor,
            gpu_index: self.key.gpu_index,
            protected: None,
        }
    }

    fn subject(&self) -> Subject {
        Subject::Process {
            pid: self.key.pid,
            start_ticks: self.key.start_ticks,
            gpu_index: self.key.gpu_index,
        }
    }
}

/// Evaluates `policy` against `snapshot` (taken at `snapshot.taken_at`, local time `local`),
/// with `history` for utilization windows.
pub fn evaluate(
    policy: &CompiledPolicy,
    snapshot: &Snapshot,
    history: &UtilHistory,
    local: LocalTime,
) -> Evaluation {
    let mut found = Evaluation::default();
    let seen: Vec<Seen<'_>> = snapshot
        .processes()
        .map(|process| {
            let key = ProcKey::of(&process);
            Seen {
                series: history.series(&key),
                key,
                process,
            }
        })
        .collect();
    let mut by_uid: BTreeMap<u32, Vec<&Seen<'_>>> = BTreeMap::new();
    for process in &seen {
        by_uid.entry(process.info().uid).or_default().push(process);
    }
    let means = Means {
        now: snapshot.taken_at,
        poll: snapshot.poll_interval,
    };
    let mut not_evaluable = BTreeSet::new();
    rules::user_rules(
        policy,
        &by_uid,
        snapshot,
        &means,
        local,
        &mut found.violations,
        &mut not_evaluable,
    );
    rules::group_rules(
        policy,
        &by_uid,
        &means,
        &mut found.violations,
        &mut not_evaluable,
    );
    rules::gpu_rules(policy, snapshot, &seen, &mut found.violations);
    findings::rogue_findings(policy, &seen, &means, local, &mut found.violations);
    found.not_evaluable = not_evaluable.into_iter().collect();
    found
}

#[cfg(test)]
/// What the evaluation's tests share, and the reservations' tests too: processes, snapshots
/// and policies to evaluate.
pub(crate) mod tests {
    use std::time::UNIX_EPOCH;

    use super::super::policy::Weekday;
    use super::*;
    use crate::snapshot::{Gpu, ProcessKind, ProcessSlot, ProcessTable, Vendor, VendorData};

    pub(crate) const GIB: u64 = 1 << 30;
    /// 2026-11-18 12:00 UTC.
    pub(crate) const NOW_S: u64 = 1_795_521_600;

    /// A process: pid, uid and user, started `age_s` before NOW_S.
    pub(crate) fn proc_info(pid: u32, uid: u32, user: &str, age_s: u64) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid,
            start_ticks: u64::from(pid) * 100,
            start_time: UNIX_EPOCH + Duration::from_secs(NOW_S - age_s),
            uid,
            user: Arc::from(user),
            name: "python3".into(),
            cmdline: format!("python3 job{pid}.py"),
            container: None,
            exe_name: None,
        })
    }

    /// One row of a test snapshot: the process, its GPU, memory (GiB) and SM %.
    pub(crate) type Row = (Arc<ProcessInfo>, u32, Option<u64>, Option<u32>);

    /// A snapshot at NOW_S + offset_s of four 80 GiB NVIDIA GPUs with `rows`; each GPU's
    /// used memory is the sum of its processes'.
    pub(crate) fn snapshot_at(offset_s: u64, rows: &[Row]) -> Snapshot {
        let taken_at = UNIX_EPOCH + Duration::from_secs(NOW_S + offset_s);
        let processes = ProcessTable::new(
            rows.iter().map(|(info, gpu, gib, sm)| {
                (
                    ProcessSlot {
                        vendor: Vendor::Nvidia,
                        gpu_index: *gpu,
                        kind: ProcessKind::Compute,
                        info: Arc::clone(info),
                    },
                    gib.map(|gib| gib * GIB),
                    *sm,
                )
            }),
            &ProcessTable::default(),
        );
        let gpus = (0..4)
            .map(|index| Gpu {
                index,
                memory_used_bytes: Some(
                    rows.iter()
                        .filter(|row| row.1 == index)
                        .filter_map(|row| row.2)
                        .sum::<u64>()
                        * GIB,
                ),
                memory_total_bytes: Some(80 * GIB),
                ..Gpu::default()
            })
            .collect();
        Snapshot {
            host: Arc::from("node"),
            taken_at,
            sequence: offset_s,
            vendors: Vec::new(),
            data: vec![(
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(taken_at),
                    gpus,
                    processes,
                }),
            )],
            tick_duration: Duration::ZERO,
            poll_interval: Duration::from_secs(1),
        }
    }

    pub(crate) fn policy(text: &str) -> CompiledPolicy {
        let groups = |name: &str| (name == "lab").then(|| vec!["erin".to_owned()]);
        CompiledPolicy::parse(text, None, &groups).unwrap()
    }

    pub(crate) const WEDNESDAY_NOON: LocalTime = LocalTime {
        weekday: Weekday::Wed,
        minute: 12 * 60,
    };
}
