//! What the guard decided and did since the daemon started, counted per rule: one atomic
//! counter per (rule, decision) and per (rule, kill outcome), so the metrics endpoint reads
//! them without locking and the guard task pays one relaxed increment per decision.

use std::sync::atomic::{AtomicU64, Ordering};

use super::evaluate::Rule;
use super::tracker::Decision;
use crate::actions::kill::Outcome;

/// Every rule, in the order of [`rule_index`].
pub const RULES: [Rule; 14] = [
    Rule::MemoryPerProcess,
    Rule::MemoryTotal,
    Rule::Utilization,
    Rule::Duration,
    Rule::Processes,
    Rule::GpuNotAllowed,
    Rule::UserNotAllowed,
    Rule::GpuMemoryPerProcess,
    Rule::ReservedMemory,
    Rule::GroupMemory,
    Rule::GroupUtilization,
    Rule::GroupProcesses,
    Rule::Rogue,
    Rule::Reservation,
];

/// The position of `rule` in [`RULES`]. Exhaustive, so a new rule does not compile until it
/// is counted.
pub fn rule_index(rule: Rule) -> usize {
    match rule {
        Rule::MemoryPerProcess => 0,
        Rule::MemoryTotal => 1,
        Rule::Utilization => 2,
        Rule::Duration => 3,
        Rule::Processes => 4,
        Rule::GpuNotAllowed => 5,
        Rule::UserNotAllowed => 6,
        Rule::GpuMemoryPerProcess => 7,
        Rule::ReservedMemory => 8,
        Rule::GroupMemory => 9,
        Rule::GroupUtilization => 10,
        Rule::GroupProcesses => 11,
        Rule::Rogue => 12,
        Rule::Reservation => 13,
    }
}

/// The decisions counted, by the outcome name the audit trail gives them.
pub const DECISIONS: [&str; 4] = ["warned", "would_act", "rate_limited", "acting"];

fn decision_index(decision: &Decision) -> usize {
    match decision {
        Decision::Warn(_) => 0,
        Decision::WouldAct(_) => 1,
        Decision::RateLimited(_) => 2,
        Decision::Act(_) => 3,
    }
}

/// The kill outcomes counted (a guard kill is never only "matched").
pub const KILL_OUTCOMES: [Outcome; 6] = [
    Outcome::Terminated,
    Outcome::Killed,
    Outcome::StillRunning,
    Outcome::AlreadyGone,
    Outcome::Denied,
    Outcome::Protected,
];

fn kill_index(outcome: Outcome) -> Option<usize> {
    match outcome {
        Outcome::Terminated => Some(0),
        Outcome::Killed => Some(1),
        Outcome::StillRunning => Some(2),
        Outcome::AlreadyGone => Some(3),
        Outcome::Denied => Some(4),
        Outcome::Protected => Some(5),
        Outcome::Matched => None,
    }
}

/// The guard's counters; share it as `Arc<GuardCounters>`.
#[derive(Debug, Default)]
pub struct GuardCounters {
    decisions: [[AtomicU64; DECISIONS.len()]; RULES.len()],
    kills: [[AtomicU64; KILL_OUTCOMES.len()]; RULES.len()],
}

impl GuardCounters {
    /// Counts one decision about a violation (a warning, a "would act", a held-back kill or
    /// the start of a kill).
    pub fn record_decision(&self, decision: &Decision) {
        let rule = match decision {
            Decision::Warn(v)
            | Decision::WouldAct(v)
            | Decision::RateLimited(v)
            | Decision::Act(v) => v.rule,
        };
        self.decisions[rule_index(rule)][decision_index(decision)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what became of one process the guard acted on for breaking `rule`.
    pub fn record_kill(&self, rule: Rule, outcome: Outcome) {
        if let Some(index) = kill_index(outcome) {
            self.kills[rule_index(rule)][index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Decisions so far: (rule, decision name, count) for every pair, zeros included.
    pub fn decisions(&self) -> impl Iterator<Item = (Rule, &'static str, u64)> + '_ {
        RULES.iter().flat_map(move |rule| {
            DECISIONS.iter().enumerate().map(move |(index, name)| {
                let count = self.decisions[rule_index(*rule)][index].load(Ordering::Relaxed);
                (*rule, *name, count)
            })
        })
    }

    /// Kill outcomes so far: (rule, outcome name, count) for every pair, zeros included.
    pub fn kills(&self) -> impl Iterator<Item = (Rule, &'static str, u64)> + '_ {
        RULES.iter().flat_map(move |rule| {
            KILL_OUTCOMES
                .iter()
                .enumerate()
                .map(move |(index, outcome)| {
                    let count = self.kills[rule_index(*rule)][index].load(Ordering::Relaxed);
                    (*rule, outcome.as_str(), count)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_and_outcome_has_its_own_slot() {
        for (index, rule) in RULES.iter().enumerate() {
            assert_eq!(rule_index(*rule), index, "{}", rule.as_str());
        }
        for (index, outcome) in KILL_OUTCOMES.iter().enumerate() {
            assert_eq!(kill_index(*outcome), Some(index), "{}", outcome.as_str());
        }
    }

    #[test]
    fn kills_are_counted_per_rule_and_outcome() {
        let counters = GuardCounters::default();
        counters.record_kill(Rule::Rogue, Outcome::Killed);
        counters.record_kill(Rule::Rogue, Outcome::Killed);
        counters.record_kill(Rule::MemoryTotal, Outcome::Protected);
        counters.record_kill(Rule::MemoryTotal, Outcome::Matched);
        let nonzero: Vec<_> = counters.kills().filter(|(_, _, n)| *n > 0).collect();
        assert_eq!(
            nonzero,
            vec![
                (Rule::MemoryTotal, "protected", 1),
                (Rule::Rogue, "killed", 2)
            ]
        );
        assert_eq!(counters.kills().count(), RULES.len() * 6);
        assert_eq!(counters.decisions().count(), RULES.len() * 4);
        assert!(counters.decisions().all(|(_, _, n)| n == 0));
    }

    #[test]
    fn decisions_are_counted_per_rule_and_kind() {
        use crate::guard::evaluate::{Subject, Unit, Violation};
        let violation = |rule| Violation {
            rule,
            policy: "[defaults]".into(),
            subject: Subject::User(1000),
            measured: 2.0,
            limit: 1.0,
            unit: Unit::Count,
            offenders: Vec::new(),
            over: true,
            note: String::new(),
        };
        let counters = GuardCounters::default();
        counters.record_decision(&Decision::Warn(violation(Rule::Processes)));
        counters.record_decision(&Decision::Act(violation(Rule::Processes)));
        counters.record_decision(&Decision::Act(violation(Rule::Processes)));
        counters.record_decision(&Decision::WouldAct(violation(Rule::Utilization)));
        counters.record_decision(&Decision::RateLimited(violation(Rule::Rogue)));
        let nonzero: Vec<_> = counters.decisions().filter(|(_, _, n)| *n > 0).collect();
        assert_eq!(
            nonzero,
            vec![
                (Rule::Utilization, "would_act", 1),
                (Rule::Processes, "warned", 1),
                (Rule::Processes, "acting", 2),
                (Rule::Rogue, "rate_limited", 1),
            ]
        );
    }
}
