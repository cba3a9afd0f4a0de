//! The scorer: [`RogueScorer`] compiles the `[rogue]` settings and scores an [`Observed`]
//! process, signal by signal, into a [`Finding`] (see the `rogue` module documentation for
//! the signals, renamed miners and the whitelist).

use std::time::Duration;

use regex::Regex;

use super::config::{HourRange, Levels, RiskLevel, RogueConfig, Weights};

/// What the scorer knows of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed<'a> {
    /// comm (at most 15 bytes).
    pub name: &'a str,
    /// Basename of /proc/PID/exe when it differs from comm; None in stored history, or when
    /// the link could not be read.
    pub exe_name: Option<&'a str>,
    /// Command line, arguments joined by spaces.
    pub cmdline: &'a str,
    /// User name (or the uid in decimal when it has none).
    pub user: &'a str,
    /// Real uid.
    pub uid: u32,
    /// How long it has been on the GPU (or alive).
    pub running_for: Duration,
    /// Mean SM utilization (percent) over `util_window`; None when the device gives no
    /// per-process utilization.
    pub mean_util_pct: Option<f64>,
    /// How long `mean_util_pct` covers.
    pub util_window: Duration,
    /// Local hour of day (0 to 23) of the observation.
    pub local_hour: Option<u8>,
}

/// An invalid rogue detection setting. Fields are named relative to the rogue settings.
#[derive(Debug, thiserror::Error)]
pub enum RogueConfigError {
    /// A regular expression does not compile.
    #[error("{field}: invalid regular expression {pattern:?}")]
    Regex {
        /// The setting and the entry's index, e.g. `whitelist.names[1]`.
        field: String,
        /// The expression.
        pattern: String,
        /// Why it does not compile.
        #[source]
        source: regex::Error,
    },
    /// A value is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The identity part of a score (see [`RogueScorer::identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The weights of the identity signals that fired.
    pub score: u32,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// Why the whitelist exempts the process, when it does.
    pub whitelisted: Option<String>,
}

/// Scores processes against a compiled [`RogueConfig`].
#[derive(Debug, Clone)]
pub struct RogueScorer {
    known_miners: Vec<String>,
    patterns: Vec<Regex>,
    high_util_pct: f64,
    high_util_window: Duration,
    long_duration: Duration,
    unusual_hours: HourRange,
    weights: Weights,
    levels: Levels,
    whitelist: CompiledWhitelist,
}

#[derive(Debug, Clone)]
struct CompiledWhitelist {
    users: Vec<String>,
    names: Vec<Regex>,
    cmdlines: Vec<Regex>,
}

/// The verdict on one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 0 to 100.
    pub score: u32,
    /// The level of `score`.
    pub level: RiskLevel,
    /// One line per signal that fired, naming the values and the weight, e.g.
    /// `exe xmrig is a known miner (+80)`; also a line when the whitelist matched but was
    /// overridden.
    pub reasons: Vec<String>,
    /// Why the process is exempt, when it is (then the score is 0).
    pub whitelisted: Option<String>,
}

/// A name other than comm that says the process is a miner.
struct Disguise<'a> {
    /// "exe" or "argv[0]".
    kind: &'static str,
    name: &'a str,
    /// "is a known miner" or "matches pattern ...".
    why: String,
}

impl RogueScorer {
    /// Compiles `config`; fails on a bad regular expression or an out-of-range value.
    pub fn new(config: &RogueConfig) -> Result<Self, RogueConfigError> {
        if !(config.high_util_pct > 0.0 && config.high_util_pct <= 100.0) {
            return Err(RogueConfigError::Invalid {
                field: "high_util_pct",
                message: format!("{}: must be above 0 and at most 100", config.high_util_pct),
            });
        }
        let hours = config.unusual_hours;
        if hours.start > 23 || hours.end > 23 {
            return Err(RogueConfigError::Invalid {
                field: "unusual_hours",
                message: format!(
                    "hours {} to {}: each must be 0 to 23 (22 to 6 crosses midnight)",
                    hours.start, hours.end
                ),
            });
        }
        let levels = config.levels;
        if !(1 <= levels.low
            && levels.low < levels.medium
            && levels.medium < levels.high
            && levels.high < levels.critical
            && levels.critical <= 100)
        {
            return Err(RogueConfigError::Invalid {
                field: "levels",
                message: format!(
                    "low {}, medium {}, high {}, critical {}: must increase strictly from 1 to 100",
                    levels.low, levels.medium, levels.high, levels.critical
                ),
            });
        }
        Ok(Self {
            known_miners: config
                .known_miners
                .iter()
                .map(|name| name.to_lowercase())
                .collect(),
            patterns: compile("name_patterns", &config.name_patterns)?,
            high_util_pct: config.high_util_pct,
            high_util_window: config.high_util_window,
            long_duration: config.long_duration,
            unusual_hours: hours,
            weights: config.weights,
            levels,
            whitelist: CompiledWhitelist {
                users: config.whitelist.users.clone(),
                names: compile("whitelist.names", &config.whitelist.names)?,
                cmdlines: compile("whitelist.cmdlines", &config.whitelist.cmdlines)?,
            },
        })
    }

    /// Scores one process.
    pub fn score(&self, observed: &Observed<'_>) -> Finding {
        self.score_with(observed, &self.identity(observed))
    }

    /// The part of the score that depends only on who the process is (its names, command
    /// line and owner), which does not change while it runs: callers that score the same
    /// process every tick compute it once and pass it to [`score_with`](Self::score_with).
    pub fn identity(&self, observed: &Observed<'_>) -> Identity {
        let comm = observed.name;
        let argv0 = argv0_name(observed.cmdline);
        let disguise = self.disguise(observed, argv0);

        let mut reasons = Vec::new();
        if let Some(why) = self.whitelist.exempts(observed) {
            match &disguise {
                None => {
                    return Identity {
                        score: 0,
                        reasons,
                        whitelisted: Some(why),
                    };
                }
                Some(disguise) => reasons.push(format!(
                    "whitelist overridden ({why}): {} {} {} but comm is {comm}",
                    disguise.kind, disguise.name, disguise.why
                )),
            }
        }

        let weights = &self.weights;
        let mut score = 0u32;
        let mut signal = |weight: u32, reason: String| {
            if weight > 0 {
                score = score.saturating_add(weight);
                reasons.push(format!("{reason} (+{weight})"));
            }
        };

        let names = [
            ("comm", Some(comm)),
            ("exe", observed.exe_name),
            ("argv[0]", argv0),
        ];
        if let Some((kind, name)) = names.iter().find_map(|(kind, name)| {
            name.filter(|name| self.is_known_miner(name))
                .map(|name| (kind, name))
        }) {
            signal(
                weights.known_miner,
                format!("{kind} {name} is a known miner"),
            );
        }

        let texts = [
            ("comm", Some(comm)),
            ("exe", observed.exe_name),
            ("command line", Some(observed.cmdline)),
        ];
        if let Some((kind, pattern)) = self.patterns.iter().find_map(|pattern| {
            texts
                .iter()
                .find(|(_, text)| text.is_some_and(|text| pattern.is_match(text)))
                .map(|(kind, _)| (kind, pattern))
        }) {
            signal(
                weights.pattern,
                format!("{kind} matches pattern {:?}", pattern.as_str()),
            );
        }

        if let Some(disguise) = &disguise {
            signal(
                weights.renamed_miner,
                format!(
                    "renamed binary: {} {} {} but comm is {comm}",
                    disguise.kind, disguise.name, disguise.why
                ),
            );
        } else if let Some(exe) = observed.exe_name
            && !same_program(comm, exe)
            && !argv0.is_some_and(|argv0| same_program(argv0, exe))
        {
            signal(
                weights.renamed,
                format!("exe {exe} is another program than comm {comm}"),
            );
        }
        Identity {
            score,
            reasons,
            whitelisted: None,
        }
    }

    /// The finding for `observed` whose [`identity`](Self::identity) is `identity`: adds
    /// the signals that change while it runs (utilization, duration, hour).
    pub fn score_with(&self, observed: &Observed<'_>, identity: &Identity) -> Finding {
        if let Some(why) = &identity.whitelisted {
            return Finding {
                score: 0,
                level: RiskLevel::None,
                reasons: Vec::new(),
                whitelisted: Some(why.clone()),
            };
        }
        let weights = &self.weights;
        let mut score = identity.score;
        let mut reasons = identity.reasons.clone();
        let mut signal = |weight: u32, reason: String| {
            if weight > 0 {
                score = score.saturating_add(weight);
                reasons.push(format!("{reason} (+{weight})"));
            }
        };

        if let Some(util) = observed.mean_util_pct
            && util >= self.high_util_pct
            && observed.util_window >= self.high_util_window
        {
            signal(
                weights.high_util,
                format!(
                    "mean utilization {util:.0}% over {} (high: {}% over {})",
                    format_duration(observed.util_window),
                    self.high_util_pct,
                    format_duration(self.high_util_window)
                ),
            );
        }

        if observed.running_for >= self.long_duration {
            signal(
                weights.long_running,
                format!(
                    "running for {} (long: {})",
                    format_duration(observed.running_for),
                    format_duration(self.long_duration)
                ),
            );
        }

        if let Some(hour) = observed.local_hour
            && self.unusual_hours.contains(hour)
        {
            signal(
                weights.unusual_hours,
                format!(
                    "seen at {hour:02}h, inside unusual hours {:02}h to {:02}h",
                    self.unusual_hours.start, self.unusual_hours.end
                ),
            );
        }

        let score = score.min(100);
        Finding {
            score,
            level: self.levels.level(score),
            reasons,
            whitelisted: None,
        }
    }

    /// The exe or argv[0] name that is another program than comm and says it is a miner.
    fn disguise<'a>(
        &self,
        observed: &Observed<'a>,
        argv0: Option<&'a str>,
    ) -> Option<Disguise<'a>> {
        [("exe", observed.exe_name), ("argv[0]", argv0)]
            .into_iter()
            .filter_map(|(kind, name)| Some((kind, name?)))
            .filter(|(_, name)| !same_program(observed.name, name))
            .find_map(|(kind, name)| {
                let why = if self.is_known_miner(name) {
                    "is a known miner".to_string()
                } else {
                    let pattern = self
                        .patterns
                        .iter()
                        .find(|pattern| pattern.is_match(name))?;
                    format!("matches pattern {:?}", pattern.as_str())
                };
                Some(Disguise { kind, name, why })
            })
    }

    fn is_known_miner(&self, name: &str) -> bool {
        self.known_miners
            .iter()
            .any(|known| same_program(known, name))
    }
}

impl CompiledWhitelist {
    /// Why the lists exempt `observed`: every non-empty list has a matching entry.
    fn exempts(&self, observed: &Observed<'_>) -> Option<String> {
        if self.users.is_empty() && self.names.is_empty() && self.cmdlines.is_empty() {
            return None;
        }
        let mut why = Vec::new();
        if !self.users.is_empty() {
            let uid = observed.uid.to_string();
            let user = self
                .users
                .iter()
                .find(|user| **user == observed.user || **user == uid)?;
            why.push(format!("user {user} is in whitelist.users"));
        }
        if !self.names.is_empty() {
            let name = self
                .names
                .iter()
                .find(|name| name.is_match(observed.name))?;
            why.push(format!(
                "comm {} matches whitelist.names {:?}",
                observed.name,
                name.as_str()
            ));
        }
        if !self.cmdlines.is_empty() {
            let cmdline = self
                .cmdlines
                .iter()
                .find(|cmdline| cmdline.is_match(observed.cmdline))?;
            why.push(format!(
                "command line matches whitelist.cmdlines {:?}",
                cmdline.as_str()
            ));
        }
        Some(why.join(", "))
    }
}

fn compile(field: &str, patterns: &[String]) -> Result<Vec<Regex>, RogueConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(index, pattern)| {
            Regex::new(pattern).map_err(|source| RogueConfigError::Regex {
                field: format!("{field}[{index}]"),
                pattern: pattern.clone(),
                source,
            })
        })
        .collect()
}

/// Whether two names are the same program: equal ignoring case, one is the other plus a
/// version suffix (`python3`/`python3.11`, `xmrig`/`xmrig-6.21`), or `a` is a comm cut at
/// 15 bytes from `b` (or the other way round).
fn same_program(a: &str, b: &str) -> bool {
    // ASCII case folding on bytes: no allocation (this runs for every process and every
    // known miner on every tick). Program names are ASCII in practice; a non-ASCII one is
    // compared byte for byte.
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let (short, long) = (short.as_bytes(), long.as_bytes());
    if short.is_empty() || !long[..short.len()].eq_ignore_ascii_case(short) {
        return false;
    }
    let rest = &long[short.len()..];
    let is_version = match rest.first() {
        None => true,
        Some(first) if first.is_ascii_digit() => true,
        Some(b'.' | b'-' | b'_') => rest.get(1).is_some_and(u8::is_ascii_digit),
        Some(_) => false,
    };
    is_version || short.len() == 15
}

/// Basename of the first word of the command line.
fn argv0_name(cmdline: &str) -> Option<&str> {
    let argv0 = cmdline.split_whitespace().next()?;
    argv0.rsplit('/').next().filter(|name| !name.is_empty())
}

/// A duration in whole seconds, as humantime writes it ("2h 5m").
fn format_duration(value: Duration) -> String {
    humantime::format_duration(Duration::from_secs(value.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::Whitelist;
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn scorer(config: RogueConfig) -> RogueScorer {
        RogueScorer::new(&config).expect("valid config")
    }

    /// A short, idle, daytime process.
    fn process<'a>(name: &'a str, cmdline: &'a str) -> Observed<'a> {
        Observed {
            name,
            exe_name: None,
            cmdline,
            user: "alice",
            uid: 1000,
            running_for: Duration::from_secs(60),
            mean_util_pct: Some(5.0),
            util_window: Duration::from_secs(60),
            local_hour: Some(14),
        }
    }

    fn whitelist(users: &[&str], names: &[&str], cmdlines: &[&str]) -> RogueConfig {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        RogueConfig {
            whitelist: Whitelist {
                users: strings(users),
                names: strings(names),
                cmdlines: strings(cmdlines),
            },
            ..RogueConfig::default()
        }
    }

    #[test]
    fn renamed_miner_scores_high_even_with_a_whitelisted_name() {
        let scorer = scorer(whitelist(&[], &["^python3$"], &[]));
        let observed = Observed {
            exe_name: Some("xmrig"),
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        assert!(finding.level >= RiskLevel::High, "{finding:?}");
        assert_eq!(finding.whitelisted, None);
        assert!(
            finding
                .reasons
                .iter()
                .any(|reason| reason.contains("renamed") && reason.contains("xmrig")),
            "{finding:?}"
        );
        assert!(
            finding
                .reasons
                .iter()
                .any(|reason| reason.contains("whitelist overridden")),
            "{finding:?}"
        );
    }

    #[test]
    fn renamed_miner_is_not_exempt_by_any_whitelist() {
        let scorer = scorer(whitelist(&["alice"], &["^python3$"], &["train"]));
        let observed = Observed {
            exe_name: Some("xmrig"),
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        assert_eq!(finding.level, RiskLevel::Critical, "{finding:?}");
        assert_eq!(finding.whitelisted, None);
    }

    #[test]
    fn renamed_miner_without_whitelist_is_critical() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("xmrig"),
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        assert_eq!(finding.score, 100);
        assert_eq!(finding.level, RiskLevel::Critical);
        assert_eq!(
            finding.reasons,
            [
                "exe xmrig is a known miner (+80)",
                "renamed binary: exe xmrig is a known miner but comm is python3 (+20)",
            ]
        );
    }

    #[test]
    fn renamed_miner_in_history_is_found_by_argv0() {
        // History has no exe name; argv[0] still tells.
        let scorer = scorer(whitelist(&[], &["^python3$"], &[]));
        let finding = scorer.score(&process("python3", "/tmp/.x/xmrig -o host:3333"));
        assert_eq!(finding.level, RiskLevel::Critical, "{finding:?}");
        assert_eq!(finding.whitelisted, None);
    }

    #[test]
    fn renamed_binary_matching_a_pattern_is_a_renamed_miner() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("superminer"),
            ..process("python3", "python3 run.py")
        };
        let finding = scorer.score(&observed);
        // pattern 30 + renamed miner 20
        assert_eq!(finding.score, 50, "{finding:?}");
        assert!(
            finding.reasons[1].starts_with("renamed binary: exe superminer matches pattern"),
            "{finding:?}"
        );
    }

    #[test]
    fn plain_xmrig_is_critical() {
        let scorer = scorer(RogueConfig::default());
        let finding = scorer.score(&process("xmrig", "xmrig"));
        assert_eq!(finding.level, RiskLevel::Critical, "{finding:?}");
        assert_eq!(finding.reasons, ["comm xmrig is a known miner (+80)"]);
    }

    #[test]
    fn known_miners_match_ignoring_case_and_version() {
        let scorer = scorer(RogueConfig::default());
        for name in ["XMRig", "xmrig-6.21", "lolMiner", "t-rex"] {
            let finding = scorer.score(&process(name, name));
            assert!(finding.level >= RiskLevel::Critical, "{name}: {finding:?}");
        }
        let finding = scorer.score(&process("t", "t"));
        assert_eq!(finding.level, RiskLevel::None, "{finding:?}");
    }

    #[test]
    fn miner_command_line_matches_patterns() {
        let scorer = scorer(RogueConfig::default());
        let finding = scorer.score(&process(
            "app",
            "./app -o stratum+tcp://pool.example.com:3333 -u wallet",
        ));
        assert_eq!(finding.score, 30, "{finding:?}");
        assert_eq!(finding.level, RiskLevel::Low);
        assert!(finding.reasons[0].starts_with("command line matches pattern"));
    }

    #[test]
    fn busy_training_job_scores_at_most_low() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("python3.11"),
            running_for: 2 * HOUR,
            mean_util_pct: Some(98.0),
            util_window: 2 * HOUR,
            ..process("python3", "python3 train.py --epochs 90")
        };
        let finding = scorer.score(&observed);
        assert!(finding.level <= RiskLevel::Low, "{finding:?}");
        assert_eq!(finding.score, 20);
        assert_eq!(
            finding.reasons,
            ["mean utilization 98% over 2h (high: 95% over 10m) (+20)"]
        );
    }

    #[test]
    fn high_util_long_and_at_night_combine_to_medium() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            running_for: 3 * 24 * HOUR,
            mean_util_pct: Some(99.0),
            util_window: HOUR,
            local_hour: Some(3),
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        // 20 + 10 + 10 = 40, the default medium threshold.
        assert_eq!(finding.score, Levels::default().medium);
        assert_eq!(finding.level, RiskLevel::Medium);
        assert_eq!(finding.reasons.len(), 3, "{finding:?}");
    }

    #[test]
    fn high_util_over_a_short_window_does_not_count() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            mean_util_pct: Some(100.0),
            util_window: Duration::from_secs(5 * 60),
            ..process("python3", "python3 train.py")
        };
        assert_eq!(scorer.score(&observed).score, 0);
    }

    #[test]
    fn whitelist_lists_are_anded() {
        // Both lists set: the user matches but the name does not.
        let scorer = scorer(whitelist(&["alice"], &["^jupyter"], &[]));
        let observed = Observed {
            mean_util_pct: Some(99.0),
            util_window: HOUR,
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        assert_eq!(finding.whitelisted, None);
        assert_eq!(finding.score, 20);
    }

    #[test]
    fn whitelist_entries_are_ored_and_empty_lists_ignored() {
        let by_user = scorer(whitelist(&["bob", "alice"], &[], &[]));
        let observed = Observed {
            mean_util_pct: Some(99.0),
            util_window: HOUR,
            ..process("python3", "python3 train.py")
        };
        let finding = by_user.score(&observed);
        assert_eq!(finding.score, 0);
        assert_eq!(finding.level, RiskLevel::None);
        assert!(finding.reasons.is_empty());
        assert_eq!(
            finding.whitelisted.as_deref(),
            Some("user alice is in whitelist.users")
        );

        // By uid too.
        let by_uid = scorer(whitelist(&["1000"], &[], &[]));
        assert!(by_uid.score(&observed).whitelisted.is_some());
    }

    #[test]
    fn whitelist_all_lists_matching_exempts() {
        let scorer = scorer(whitelist(&["alice"], &["^python3$"], &[r"\btrain\.py\b"]));
        let finding = scorer.score(&process("python3", "python3 train.py"));
        assert_eq!(
            finding.whitelisted.as_deref(),
            Some(
                "user alice is in whitelist.users, comm python3 matches whitelist.names \"^python3$\", \
                 command line matches whitelist.cmdlines \"\\\\btrain\\\\.py\\\\b\""
            )
        );
    }

    #[test]
    fn empty_whitelist_exempts_nothing() {
        let scorer = scorer(RogueConfig::default());
        assert_eq!(
            scorer
                .score(&process("python3", "python3 x.py"))
                .whitelisted,
            None
        );
    }

    #[test]
    fn whitelist_exempts_a_miner_that_is_not_renamed() {
        // The whitelist is trusted for what comm says; only a renamed miner overrides it.
        let scorer = scorer(whitelist(&["alice"], &[], &[]));
        let finding = scorer.score(&process("xmrig", "xmrig --bench"));
        assert_eq!(finding.score, 0);
        assert!(finding.whitelisted.is_some());
    }

    #[test]
    fn interpreter_versions_are_not_renamed() {
        let scorer = scorer(RogueConfig::default());
        for (comm, exe) in [
            ("python3", "python3.11"),
            ("python", "python3.12"),
            ("ruby", "ruby3.2"),
            ("a-very-long-bin", "a-very-long-binary-name"),
        ] {
            let observed = Observed {
                exe_name: Some(exe),
                ..process(comm, "x")
            };
            let finding = scorer.score(&observed);
            assert_eq!(finding.score, 0, "{comm} {exe}: {finding:?}");
        }
    }

    #[test]
    fn script_run_by_its_interpreter_is_not_renamed() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("python3.11"),
            ..process("train.py", "/usr/bin/python3 ./train.py --epochs 3")
        };
        assert_eq!(scorer.score(&observed).score, 0);
    }

    #[test]
    fn comm_set_by_the_program_is_not_renamed() {
        // PyTorch names its main thread pt_main_thread; argv[0] still says python3.
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("python3.11"),
            ..process(
                "pt_main_thread",
                "python3 -m torch.distributed.run train.py",
            )
        };
        assert_eq!(scorer.score(&observed).score, 0);
    }

    #[test]
    fn other_exe_is_a_weak_signal() {
        let scorer = scorer(RogueConfig::default());
        let observed = Observed {
            exe_name: Some("a.out"),
            ..process("python3", "python3 train.py")
        };
        let finding = scorer.score(&observed);
        assert_eq!(finding.score, 10);
        assert_eq!(finding.level, RiskLevel::None);
        assert_eq!(
            finding.reasons,
            ["exe a.out is another program than comm python3 (+10)"]
        );
    }

    #[test]
    fn same_program_rules() {
        assert!(same_program("python3", "python3.11"));
        assert!(same_program("python3.11", "python3"));
        assert!(same_program("xmrig", "XMRig-6.21.0"));
        assert!(!same_program("x", "xmrig"));
        assert!(!same_program("t", "t-rex"));
        assert!(!same_program("python3", "xmrig"));
        assert!(!same_program("", "xmrig"));
        assert!(same_program("a-very-long-bin", "a-very-long-binary"));
    }

    #[test]
    fn zero_weight_turns_a_signal_off() {
        let scorer = scorer(RogueConfig {
            weights: Weights {
                known_miner: 0,
                ..Weights::default()
            },
            ..RogueConfig::default()
        });
        let finding = scorer.score(&process("xmrig", "xmrig"));
        assert_eq!(finding.score, 0);
        assert!(finding.reasons.is_empty());
    }

    #[test]
    fn bad_regex_names_field_and_pattern() {
        let config = RogueConfig {
            name_patterns: vec!["(?i)miner".into(), "(unclosed".into()],
            ..RogueConfig::default()
        };
        let error = RogueScorer::new(&config).expect_err("bad regex");
        assert_eq!(
            error.to_string(),
            "name_patterns[1]: invalid regular expression \"(unclosed\""
        );
        let source = std::error::Error::source(&error).expect("regex error as source");
        assert!(source.to_string().contains("unclosed"), "{source}");

        let error =
            RogueScorer::new(&whitelist(&[], &[], &["ok", "[z-a]"])).expect_err("bad regex");
        assert!(
            error
                .to_string()
                .starts_with("whitelist.cmdlines[1]: invalid regular expression \"[z-a]\""),
            "{error}"
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let bad = [
            RogueConfig {
                unusual_hours: HourRange { start: 22, end: 24 },
                ..RogueConfig::default()
            },
            RogueConfig {
                high_util_pct: 0.0,
                ..RogueConfig::default()
            },
            RogueConfig {
                high_util_pct: f64::NAN,
                ..RogueConfig::default()
            },
            RogueConfig {
                levels: Levels {
                    low: 50,
                    medium: 40,
                    ..Levels::default()
                },
                ..RogueConfig::default()
            },
            RogueConfig {
                levels: Levels {
                    low: 0,
                    ..Levels::default()
                },
                ..RogueConfig::default()
            },
        ];
        for config in bad {
            let error = RogueScorer::new(&config).expect_err("out of range");
            assert!(
                matches!(error, RogueConfigError::Invalid { .. }),
                "{error:?}"
            );
        }
    }

    #[test]
    fn unusual_hours_cross_midnight() {
        let night = HourRange { start: 22, end: 6 };
        for hour in [22, 23, 0, 3, 5] {
            assert!(night.contains(hour), "{hour}");
        }
        for hour in [6, 12, 21, 24] {
            assert!(!night.contains(hour), "{hour}");
        }
        let early = HourRange { start: 0, end: 6 };
        assert!(early.contains(0) && early.contains(5) && !early.contains(6));
        let off = HourRange { start: 3, end: 3 };
        assert!((0..24).all(|hour| !off.contains(hour)));

        let scorer = scorer(RogueConfig {
            unusual_hours: night,
            ..RogueConfig::default()
        });
        let observed = Observed {
            local_hour: Some(23),
            ..process("python3", "python3 train.py")
        };
        assert_eq!(
            scorer.score(&observed).reasons,
            ["seen at 23h, inside unusual hours 22h to 06h (+10)"]
        );
    }
}
