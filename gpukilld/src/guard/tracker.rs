//! Following violations from tick to tick and deciding, by mode, when to warn and when to
//! act; and the node-wide kill rate limit.
//!
//! A violation starts when its value goes over the limit and lasts while the evaluation
//! keeps reporting it (its value stays above the hysteresis band under the limit); it ends
//! when the value falls below the band or the process is gone. Acting needs the value to be
//! over the limit at that moment:
//! - `dry-run`: once the violation has lasted `min_duration`, "would act", once;
//! - `soft`: a warning when it starts; acting once it has lasted `grace`;
//! - `hard`: acting once it has lasted `min_duration`.
//!
//! Each offending process is acted on at most once per violation (a protected or surviving
//! process is not retried every tick); a new process that joins an aggregate violation is.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use super::evaluate::{Rule, Subject, Violation};
use super::policy::{Mode, Policy};

/// What the guard should do about a violation this tick.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Soft mode: the violation started; tell the user.
    Warn(Violation),
    /// Dry-run: acting is due; record that it would have.
    WouldAct(Violation),
    /// Act on these offenders (a subset of the violation's, not acted on before).
    Act(Violation),
    /// Acting is due but the node-wide kill rate is spent; retried next tick.
    RateLimited(Violation),
}

/// One violation being followed.
#[derive(Debug)]
struct Episode {
    started: SystemTime,
    warned: bool,
    would_acted: bool,
    rate_limited: bool,
    /// Processes already acted on (pid, start ticks).
    acted_on: BTreeSet<(u32, u64)>,
}

/// The guard's memory between ticks.
#[derive(Debug, Default)]
pub struct Tracker {
    episodes: BTreeMap<(Rule, Subject), Episode>,
    /// When each recent kill was started, for the rate limit.
    kills: VecDeque<SystemTime>,
}

/// The rate limit's window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Tracker {
    /// Takes this tick's violations at `now` and returns what to do about them under `policy`.
    /// Violations not reported any more end.
    pub fn update(
        &mut self,
        policy: &Policy,
        violations: Vec<Violation>,
        now: SystemTime,
    ) -> Vec<Decision> {
        while self
            .kills
            .front()
            .is_some_and(|at| now.duration_since(*at).unwrap_or_default() >= RATE_WINDOW)
        {
            self.kills.pop_front();
        }
        let reported: BTreeSet<(Rule, Subject)> = violations
            .iter()
            .map(|v| (v.rule, v.subject.clone()))
            .collect();
        self.episodes.retain(|key, _| reported.contains(key));
        let mut decisions = Vec::new();
        for mut violation in violations {
            let key = (violation.rule, violation.subject.clone());
            if !self.episodes.contains_key(&key) {
                if !violation.over {
                    // Within the band without having been over: not a violation.
                    continue;
                }
                self.episodes.insert(
                    key.clone(),
                    Episode {
                        started: now,
                        warned: false,
                        would_acted: false,
                        rate_limited: false,
                        acted_on: BTreeSet::new(),
                    },
                );
            }
            let Some(episode) = self.episodes.get_mut(&key) else {
                continue;
            };
            let lasted = now.duration_since(episode.started).unwrap_or_default();
            if policy.mode == Mode::Soft && !episode.warned {
                episode.warned = true;
                decisions.push(Decision::Warn(violation.clone()));
            }
            let due_after = match policy.mode {
                Mode::Soft => policy.grace,
                Mode::DryRun | Mode::Hard => policy.min_duration,
            };
            if !violation.over || lasted < due_after {
                continue;
            }
            if policy.mode == Mode::DryRun {
                if !episode.would_acted {
                    episode.would_acted = true;
                    decisions.push(Decision::WouldAct(violation));
                }
                continue;
            }
            violation
                .offenders
                .retain(|o| !episode.acted_on.contains(&(o.info.pid, o.info.start_ticks)));
            if violation.offenders.is_empty() {
                continue;
            }
            // Protected offenders are recorded as such by the kill path; they spend no kill.
            let kills = violation
                .offenders
                .iter()
                .filter(|o| o.protected.is_none())
                .count();
            let room = (policy.max_kills_per_minute as usize).saturating_sub(self.kills.len());
            if room < kills {
                if !episode.rate_limited {
                    episode.rate_limited = true;
                    decisions.push(Decision::RateLimited(violation));
                }
                continue;
            }
            for offender in &violation.offenders {
                episode
                    .acted_on
                    .insert((offender.info.pid, offender.info.start_ticks));
                if offender.protected.is_none() {
                    self.kills.push_back(now);
                }
            }
            episode.rate_limited = false;
            decisions.push(Decision::Act(violation));
        }
        decisions
    }

    /// Violations being followed: (rule, subject, when it started).
    pub fn active(&self) -> Vec<(Rule, Subject, SystemTime)> {
        self.episodes
            .iter()
            .map(|((rule, subject), episode)| (*rule, subject.clone(), episode.started))
            .collect()
    }

    /// Kills started in the last minute.
    pub fn recent_kills(&self) -> usize {
        self.kills.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::super::evaluate::tests::proc_info;
    use super::super::evaluate::{Offender, Unit};
    use super::*;
    use crate::snapshot::Vendor;

    fn policy(mode: Mode) -> Policy {
        Policy {
            mode,
            grace: Duration::from_secs(10),
            min_duration: Duration::from_secs(3),
            max_kills_per_minute: 2,
            ..Policy::default()
        }
    }

    fn violation(pid: u32, measured: f64, limit: f64) -> Violation {
        Violation {
            rule: Rule::MemoryPerProcess,
            policy: "[defaults]".into(),
            subject: Subject::Process {
                pid,
                start_ticks: u64::from(pid) * 100,
                gpu_index: 0,
            },
            measured,
            limit,
            unit: Unit::Bytes,
            offenders: vec![Offender {
                info: proc_info(pid, 1000, "alice", 60),
                vendor: Vendor::Nvidia,
                gpu_index: 0,
                protected: None,
            }],
            over: measured > limit,
            note: String::new(),
        }
    }

    fn at(second: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + second)
    }

    fn names(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .map(|d| match d {
                Decision::Warn(v) => format!("warn {}", v.offenders[0].info.pid),
                Decision::WouldAct(v) => format!("would {}", v.offenders[0].info.pid),
                Decision::Act(v) => format!("act {}", v.offenders[0].info.pid),
                Decision::RateLimited(v) => format!("limited {}", v.offenders[0].info.pid),
            })
            .collect()
    }

    #[test]
    fn hard_acts_once_the_violation_has_lasted_min_duration_and_only_once() {
        let mut tracker = Tracker::default();
        let policy = policy(Mode::Hard);
        let mut log = Vec::new();
        for second in 0..8 {
            log.push(names(&tracker.update(
                &policy,
                vec![violation(7, 12.0, 10.0)],
                at(second),
            )));
        }
        let expected: Vec<Vec<String>> = (0..8)
            .map(|s| {
                if s == 3 {
                    vec!["act 7".to_owned()]
                } else {
                    Vec::new()
                }
            })
            .collect();
        assert_eq!(log, expected);
    }

    #[test]
    fn soft_warns_first_and_spares_a_process_that_drops_back() {
        let policy = policy(Mode::Soft);
        let mut tracker = Tracker::default();
        assert_eq!(
            names(&tracker.update(&policy, vec![violation(7, 12.0, 10.0)], at(0))),
            ["warn 7"]
        );
        // Back under the band at 5 s: the violation ends; nothing happens at 10 s.
        assert!(tracker.update(&policy, vec![], at(5)).is_empty());
        assert!(tracker.active().is_empty());
        // Over again: a new warning, and acting after the grace.
        assert_eq!(
            names(&tracker.update(&policy, vec![violation(7, 12.0, 10.0)], at(20))),
            ["warn 7"]
        );
        assert!(
            tracker
                .update(&policy, vec![violation(7, 12.0, 10.0)], at(29))
                .is_empty()
        );
        assert_eq!(
            names(&tracker.update(&policy, vec![violation(7, 12.0, 10.0)], at(30))),
            ["act 7"]
        );
    }

    #[test]
    fn a_value_flapping_inside_the_band_is_one_violation() {
        let policy = policy(Mode::Soft);
        let mut tracker = Tracker::default();
        let mut decisions = Vec::new();
        for second in 0..10 {
            // 10.5 and 9.8 alternately against 10: under the limit but inside the 5 % band.
            let measured = if second % 2 == 0 { 10.5 } else { 9.8 };
            decisions.extend(names(&tracker.update(
                &policy,
                vec![violation(7, measured, 10.0)],
                at(second),
            )));
        }
        assert_eq!(decisions, ["warn 7"]);
        // Under the limit when the grace ends: not acted on until it is over again.
        assert!(
            tracker
                .update(&policy, vec![violation(7, 9.8, 10.0)], at(11))
                .is_empty()
        );
        assert_eq!(
            names(&tracker.update(&policy, vec![violation(7, 10.5, 10.0)], at(12))),
            ["act 7"]
        );
        // Inside the band without ever being over: nothing starts.
        let mut fresh = Tracker::default();
        assert!(
            fresh
                .update(&policy, vec![violation(8, 9.8, 10.0)], at(0))
                .is_empty()
        );
        assert!(fresh.active().is_empty());
    }

    #[test]
    fn dry_run_records_once_and_never_acts() {
        let policy = policy(Mode::DryRun);
        let mut tracker = Tracker::default();
        let mut decisions = Vec::new();
        for second in 0..10 {
            decisions.extend(names(&tracker.update(
                &policy,
                vec![violation(7, 12.0, 10.0)],
                at(second),
            )));
        }
        assert_eq!(decisions, ["would 7"]);
    }

    #[test]
    fn the_kill_rate_limit_holds_and_frees_up_after_a_minute() {
        let policy = policy(Mode::Hard);
        let mut tracker = Tracker::default();
        let three = || {
            (1..=3)
                .map(|pid| violation(pid, 12.0, 10.0))
                .collect::<Vec<_>>()
        };
        tracker.update(&policy, three(), at(0));
        assert_eq!(
            names(&tracker.update(&policy, three(), at(3))),
            ["act 1", "act 2", "limited 3"]
        );
        assert_eq!(tracker.recent_kills(), 2);
        // Still limited: reported once, not every tick.
        assert!(tracker.update(&policy, three(), at(30)).is_empty());
        assert_eq!(names(&tracker.update(&policy, three(), at(63))), ["act 3"]);
    }

    #[test]
    fn protected_offenders_spend_no_kill() {
        let policy = policy(Mode::Hard);
        let mut tracker = Tracker::default();
        let protected = |pid| {
            let mut v = violation(pid, 12.0, 10.0);
            v.offenders[0].protected = Some("this is gpukilld itself".into());
            v
        };
        let all = || {
            vec![
                protected(1),
                protected(2),
                violation(3, 12.0, 10.0),
                violation(4, 12.0, 10.0),
            ]
        };
        tracker.update(&policy, all(), at(0));
        assert_eq!(
            names(&tracker.update(&policy, all(), at(3))),
            ["act 1", "act 2", "act 3", "act 4"]
        );
        assert_eq!(tracker.recent_kills(), 2);
    }

    #[test]
    fn an_aggregate_acts_again_only_on_new_offenders() {
        let policy = policy(Mode::Hard);
        let mut tracker = Tracker::default();
        let aggregate = |pids: &[u32]| {
            let mut v = violation(pids[0], 50.0, 40.0);
            v.rule = Rule::MemoryTotal;
            v.subject = Subject::User(1000);
            v.offenders = pids
                .iter()
                .map(|pid| Offender {
                    info: Arc::clone(&violation(*pid, 0.0, 0.0).offenders[0].info),
                    vendor: Vendor::Nvidia,
                    gpu_index: 0,
                    protected: None,
                })
                .collect();
            v
        };
        tracker.update(&policy, vec![aggregate(&[5])], at(0));
        assert_eq!(
            names(&tracker.update(&policy, vec![aggregate(&[5])], at(3))),
            ["act 5"]
        );
        // Pid 5 survives (or was protected): not retried; a newcomer is acted on.
        assert!(
            tracker
                .update(&policy, vec![aggregate(&[5])], at(4))
                .is_empty()
        );
        assert_eq!(
            names(&tracker.update(&policy, vec![aggregate(&[6, 5])], at(5))),
            ["act 6"]
        );
    }
}
