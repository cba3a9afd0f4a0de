//! Per-process SM utilization over the last ticks, for the utilization windows: kept by the
//! guard tick by tick, read by evaluation as a mean over a window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use crate::snapshot::{GpuProcess, Snapshot, Vendor};

/// Identifies one process on one GPU across ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcKey {
    pub(super) vendor: Vendor,
    pub(super) gpu_index: u32,
    pub(super) pid: u32,
    pub(super) start_ticks: u64,
}

impl ProcKey {
    /// The key of `process`.
    pub(super) fn of(process: &GpuProcess<'_>) -> Self {
        ProcKey {
            vendor: process.slot.vendor,
            gpu_index: process.slot.gpu_index,
            pid: process.slot.info.pid,
            start_ticks: process.slot.info.start_ticks,
        }
    }
}

/// Per-process SM utilization over the last ticks, kept by the guard tick by tick (one
/// sample per process per tick), for the `max_utilization_pct` windows. Each sample holds
/// running totals, so the mean over any window is two lookups, not a walk over the window.
#[derive(Debug, Default)]
pub struct UtilHistory {
    series: HashMap<ProcKey, Series>,
}

/// Running totals of one process's samples, up to and including one sample.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Σ utilization of the samples that had one.
    sum: u64,
    /// How many had one.
    known: u64,
    /// How many had none.
    unknown: u64,
}

/// One process's samples: (time, totals up to it), and the totals before the first.
#[derive(Debug, Default)]
pub(super) struct Series {
    samples: VecDeque<(SystemTime, Totals)>,
    before: Totals,
}

impl UtilHistory {
    /// Adds `snapshot`'s per-process utilization and forgets what is older than `keep`
    /// (and processes that are gone).
    pub fn record(&mut self, snapshot: &Snapshot, keep: Duration) {
        let at = snapshot.taken_at;
        let mut present = HashSet::new();
        for process in snapshot.processes() {
            let key = ProcKey::of(&process);
            present.insert(key);
            let series = self.series.entry(key).or_default();
            let mut totals = series.samples.back().map_or(series.before, |(_, t)| *t);
            match process.sm_utilization_pct {
                Some(pct) => {
                    totals.sum += u64::from(pct);
                    totals.known += 1;
                }
                None => totals.unknown += 1,
            }
            series.samples.push_back((at, totals));
        }
        let oldest = at.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
        self.series.retain(|key, series| {
            while series
                .samples
                .front()
                .is_some_and(|(time, _)| *time < oldest)
            {
                if let Some((_, totals)) = series.samples.pop_front() {
                    series.before = totals;
                }
            }
            !series.samples.is_empty() && present.contains(key)
        });
    }

    /// The samples of the process `key`, if it has any.
    pub(super) fn series(&self, key: &ProcKey) -> Option<&Series> {
        self.series.get(key)
    }
}

impl Series {
    /// The mean utilization over the `window` before `now`: `Ok(None)` while the process
    /// has not been seen for the whole window yet, `Err` when a tick in it had no
    /// per-process utilization (the device does not give it).
    pub(super) fn mean(
        &self,
        window: Duration,
        now: SystemTime,
        poll: Duration,
    ) -> Result<Option<f64>, ()> {
        let series = self;
        let samples = &series.samples;
        let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        // Seen for the whole window: the first sample is within one tick of its start.
        let covered = samples
            .front()
            .is_some_and(|(first, _)| *first <= since + poll);
        let first = samples.partition_point(|(time, _)| *time < since);
        let before = match first {
            0 => series.before,
            n => samples.get(n - 1).map_or(series.before, |(_, t)| *t),
        };
        let last = samples.back().map_or(series.before, |(_, t)| *t);
        if last.unknown > before.unknown {
            return Err(());
        }
        let count = last.known - before.known;
        if !covered || count == 0 {
            return Ok(None);
        }
        Ok(Some((last.sum - before.sum) as f64 / count as f64))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{WEDNESDAY_NOON, policy, proc_info, snapshot_at};
    use super::super::{Evaluation, Rule, evaluate};
    use super::*;

    #[test]
    fn utilization_needs_the_whole_window_and_per_process_numbers() {
        let text = r#"
            [defaults]
            max_utilization_pct = 80
            utilization_window = "5s"
        "#;
        let busy = proc_info(40, 1000, "alice", 600);
        let blind = proc_info(41, 1000, "alice", 600);
        let mut history = UtilHistory::default();
        let compiled = policy(text);
        let mut last = Evaluation::default();
        for second in 0..8 {
            let snapshot = snapshot_at(
                second,
                &[
                    (
                        Arc::clone(&busy),
                        0,
                        Some(1),
                        Some(if second == 3 { 60 } else { 95 }),
                    ),
                    (Arc::clone(&blind), 1, Some(1), None),
                ],
            );
            history.record(&snapshot, Duration::from_secs(60));
            last = evaluate(&compiled, &snapshot, &history, WEDNESDAY_NOON);
            if second < 4 {
                // Not seen for 5 s yet.
                assert!(
                    last.violations.is_empty(),
                    "at {second}: {:?}",
                    last.violations
                );
            }
        }
        // At 7 s the window 2..7 holds 95, 60, 95, 95, 95, 95: mean 89.2.
        assert_eq!(last.violations.len(), 1);
        let violation = &last.violations[0];
        assert_eq!(
            (violation.rule, violation.offenders[0].info.pid),
            (Rule::Utilization, 40)
        );
        assert!(
            (violation.measured - 535.0 / 6.0).abs() < 1e-9,
            "{}",
            violation.measured
        );
        assert_eq!(
            last.not_evaluable,
            [
                "GPU 1 reports no per-process utilization: the max_utilization_pct of [defaults] cannot be evaluated there"
            ]
        );
        assert!(
            violation
                .describe()
                .starts_with("utilization: pid 40 (python3, alice) on GPU 0 89.2%, limit 80.0%"),
            "{}",
            violation.describe()
        );
    }
}
