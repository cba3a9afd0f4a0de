//! The policy file's schema: the types `guard.toml` deserializes into, their defaults, and
//! what they say on their own (a mode's name, limits merged over limits, whether a window
//! is open). Checking the values and resolving names is the job of `parse`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::guard::notify::NotifyConfig;
use crate::guard::rogue::{RiskLevel, RogueConfig};
use crate::units::{Bytes, LocalTime, TimeOfDay, Weekday};
use crate::units::{duration, optional_duration};

/// How the guard responds to a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Record what would be done; never act.
    DryRun,
    /// Warn at once; act if the violation outlasts `grace`.
    Soft,
    /// Act once the violation has lasted `min_duration`.
    Hard,
}

impl Mode {
    /// The name in the policy file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Soft => "soft",
            Mode::Hard => "hard",
        }
    }
}

/// Limits that apply to one user's processes. Every field is optional: an unset one does
/// not limit (and does not override when merged).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Limits {
    /// GPU memory one process may use.
    pub max_memory_per_process: Option<Bytes>,
    /// GPU memory all the user's processes may use together.
    pub max_memory_total: Option<Bytes>,
    /// Mean SM utilization of one process over `utilization_window`, percent.
    pub max_utilization_pct: Option<f64>,
    /// The window of `max_utilization_pct` (default 5 minutes).
    #[serde(default, with = "optional_duration")]
    pub utilization_window: Option<Duration>,
    /// How long one process may run.
    #[serde(default, with = "optional_duration")]
    pub max_duration: Option<Duration>,
    /// GPU processes the user may have at once.
    pub max_processes: Option<u32>,
    /// The only GPUs the user may use.
    pub allowed_gpus: Option<Vec<u32>>,
    /// GPUs the user may not use.
    pub blocked_gpus: Option<Vec<u32>>,
    /// Keys this schema does not know; refused by validation, naming them.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Limits {
    /// `self`, with every field `over` sets replacing this one's.
    pub fn overridden_by(&self, over: &Limits) -> Limits {
        Limits {
            max_memory_per_process: over.max_memory_per_process.or(self.max_memory_per_process),
            max_memory_total: over.max_memory_total.or(self.max_memory_total),
            max_utilization_pct: over.max_utilization_pct.or(self.max_utilization_pct),
            utilization_window: over.utilization_window.or(self.utilization_window),
            max_duration: over.max_duration.or(self.max_duration),
            max_processes: over.max_processes.or(self.max_processes),
            allowed_gpus: over
                .allowed_gpus
                .clone()
                .or_else(|| self.allowed_gpus.clone()),
            blocked_gpus: over
                .blocked_gpus
                .clone()
                .or_else(|| self.blocked_gpus.clone()),
            unknown: BTreeMap::new(),
        }
    }

    /// The window over which utilization is averaged.
    pub fn window(&self) -> Duration {
        self.utilization_window
            .unwrap_or(DEFAULT_UTILIZATION_WINDOW)
    }
}

/// The utilization window when a policy names none.
pub const DEFAULT_UTILIZATION_WINDOW: Duration = Duration::from_secs(300);

/// `[[user]]`: one user's limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserPolicy {
    /// A user name or a numeric uid.
    pub name: String,
    /// The limits.
    #[serde(flatten)]
    pub limits: Limits,
}

/// `[[group]]`: aggregate limits over a set of users.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    /// The policy's name (`@name` in user lists).
    pub name: String,
    /// Members from this Unix group (its member list and the users whose primary group it
    /// is), resolved at load.
    pub unix_group: Option<String>,
    /// Listed members (user names or uids).
    #[serde(default)]
    pub members: Vec<String>,
    /// GPU memory of all the members' processes together.
    pub max_memory_total: Option<Bytes>,
    /// Sum of the members' processes' mean SM utilization over `utilization_window`.
    pub max_utilization_pct: Option<f64>,
    /// The window of `max_utilization_pct` (default 5 minutes).
    #[serde(default, with = "optional_duration")]
    pub utilization_window: Option<Duration>,
    /// GPU processes of all members at once.
    pub max_processes: Option<u32>,
}

/// `[[gpu]]`: who may use one GPU, and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// The GPU's index.
    pub index: u32,
    /// Only these users (names, uids or `@group`) may use it.
    pub allowed_users: Option<Vec<String>>,
    /// These users may not.
    #[serde(default)]
    pub blocked_users: Vec<String>,
    /// GPU memory one process may use on it.
    pub max_memory_per_process: Option<Bytes>,
    /// Memory at the top of the GPU nobody may use: the GPU's used memory must stay at or
    /// below total - reserved.
    pub reserved_memory: Option<Bytes>,
}

/// `[[window]]`: limits that replace the users' while the local time is inside it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimeWindow {
    /// For messages and events.
    pub name: String,
    /// The days the window starts on (default: every day).
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Local start time.
    pub start: TimeOfDay,
    /// Local end time; at or before `start`, the window ends the next day.
    pub end: TimeOfDay,
    /// Users (names, uids, `@group`) it applies to; empty: everyone.
    #[serde(default)]
    pub applies_to: Vec<String>,
    /// The limits it sets.
    #[serde(flatten)]
    pub limits: Limits,
}

impl TimeWindow {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: LocalTime) -> bool {
        let on = |day: Weekday| self.days.is_empty() || self.days.contains(&day);
        let (start, end) = (self.start.0, self.end.0);
        if start < end {
            on(now.weekday) && (start..end).contains(&now.minute)
        } else {
            // Crosses midnight (or lasts 24 h when start == end): the evening part belongs
            // to today's window, the morning part to yesterday's.
            (on(now.weekday) && now.minute >= start)
                || (on(now.weekday.previous()) && now.minute < end)
        }
    }
}

/// The whole policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Whether the guard evaluates at all.
    pub enabled: bool,
    /// What it does about violations.
    pub mode: Mode,
    /// Soft mode: how long a violation may last after the warning.
    #[serde(with = "duration")]
    pub grace: Duration,
    /// Hard mode: how long a violation must last before acting.
    #[serde(with = "duration")]
    pub min_duration: Duration,
    /// How long SIGTERM has before SIGKILL.
    #[serde(with = "duration")]
    pub kill_timeout: Duration,
    /// Kills per minute for the whole node; beyond it, acting waits.
    pub max_kills_per_minute: u32,
    /// A violation ends once its value is this many percent under the limit.
    pub hysteresis_pct: f64,
    /// Users never acted on, besides the daemon's `protected_users`.
    pub protected_users: Vec<String>,
    /// Name or command-line regexes never acted on, besides the daemon's.
    pub protected_processes: Vec<String>,
    /// Limits of users without a `[[user]]` entry (and the base of those with one).
    pub defaults: Limits,
    /// `[[user]]` entries.
    #[serde(rename = "user")]
    pub users: Vec<UserPolicy>,
    /// `[[group]]` entries.
    #[serde(rename = "group")]
    pub groups: Vec<GroupPolicy>,
    /// `[[gpu]]` entries.
    #[serde(rename = "gpu")]
    pub gpus: Vec<GpuPolicy>,
    /// `[[window]]` entries.
    #[serde(rename = "window")]
    pub windows: Vec<TimeWindow>,
    /// Rogue scoring: patterns, weights, levels, whitelist.
    pub rogue: RogueConfig,
    /// Act on rogue findings at or above this risk level (low, medium, high, critical);
    /// unset: report only.
    pub rogue_act_at: Option<RiskLevel>,
    /// Webhook and terminal messages.
    pub notify: NotifyConfig,
    /// Processes on GPUs their users do not hold (see `gpukillctl status`).
    pub reservation: ReservationRule,
}

/// `[reservation]`: what the guard does about GPUs used without a reservation, or by a user
/// other than the holder. Such use is always reported (`guard status`, `guard test`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationRule {
    /// Act on it as on any violation (in soft mode after the grace, in hard mode after
    /// `min_duration`).
    pub enforce: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            mode: Mode::DryRun,
            grace: Duration::from_secs(30),
            min_duration: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(5),
            max_kills_per_minute: 10,
            hysteresis_pct: 5.0,
            protected_users: Vec::new(),
            protected_processes: Vec::new(),
            defaults: Limits::default(),
            users: Vec::new(),
            groups: Vec::new(),
            gpus: Vec::new(),
            windows: Vec::new(),
            rogue: RogueConfig::default(),
            rogue_act_at: None,
            notify: NotifyConfig::default(),
            reservation: ReservationRule::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_bytes;
    use super::super::testutil::{GIB, at, parse};
    use super::*;

    #[test]
    fn a_same_day_window_and_an_all_day_one() {
        let window = |start: u16, end: u16| TimeWindow {
            name: "w".into(),
            days: vec![Weekday::Mon],
            start: TimeOfDay(start),
            end: TimeOfDay(end),
            applies_to: Vec::new(),
            limits: Limits::default(),
        };
        let day = window(9 * 60, 17 * 60);
        assert!(day.contains(at(Weekday::Mon, 9, 0)));
        assert!(!day.contains(at(Weekday::Mon, 17, 0)));
        assert!(!day.contains(at(Weekday::Tue, 10, 0)));
        let whole = window(0, 0);
        assert!(whole.contains(at(Weekday::Mon, 0, 0)));
        assert!(whole.contains(at(Weekday::Mon, 23, 59)));
        assert!(!whole.contains(at(Weekday::Tue, 0, 0)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("20GiB"), Ok(20 * GIB));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("-1GiB").is_err());
        assert!(
            parse_bytes("12 apples")
                .unwrap_err()
                .contains("\"12 apples\"")
        );
    }

    #[test]
    fn an_empty_file_is_the_default_dry_run_policy() {
        let compiled = parse("").unwrap();
        assert_eq!(compiled.policy, Policy::default());
        assert_eq!(compiled.policy.mode, Mode::DryRun);
    }
}
