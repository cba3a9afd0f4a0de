//! The guard policy file (`guard.toml`): its schema, parsing and validation.
//!
//! ```toml
//! enabled = true
//! mode = "soft"                 # dry-run | soft | hard
//! grace = "30s"                 # soft: warn, then act if the violation outlasts this
//! min_duration = "10s"          # hard: act once the violation has lasted this long
//! kill_timeout = "5s"           # SIGTERM, then SIGKILL after this
//! max_kills_per_minute = 10     # for the whole node
//! hysteresis_pct = 5            # a violation ends once the value is 5 % under its limit
//! protected_users = ["backup"]  # never acted on (added to the daemon's own protections)
//! protected_processes = ["^sshd$"]
//!
//! [defaults]                    # users without a [[user]] entry
//! max_memory_per_process = "40GiB"
//!
//! [[user]]
//! name = "alice"                # a user name or a numeric uid
//! max_memory_per_process = "20GiB"
//! max_memory_total = "60GiB"
//! max_utilization_pct = 90      # a process's mean SM utilization over utilization_window
//! utilization_window = "10m"
//! max_duration = "24h"          # how long one process may run
//! max_processes = 4             # GPU processes at once
//! allowed_gpus = [0, 1]
//! blocked_gpus = [3]
//!
//! [[group]]
//! name = "students"
//! unix_group = "students"       # members from the group database,
//! members = ["bob"]             # and/or listed
//! max_memory_total = "80GiB"    # summed over the members' processes
//! max_utilization_pct = 200     # summed: 200 = two GPUs' worth
//! max_processes = 6
//!
//! [[gpu]]
//! index = 3
//! allowed_users = ["alice", "@students"]   # @name: a [[group]] of this file, else a Unix group
//! blocked_users = ["mallory"]
//! max_memory_per_process = "10GiB"
//! reserved_memory = "8GiB"      # nobody may use the last 8 GiB of this GPU
//!
//! [[window]]                    # local time; overrides the user limits while active
//! name = "nights"
//! days = ["mon", "tue", "wed", "thu", "fri"]   # the day the window starts (default: all)
//! start = "22:00"
//! end = "06:00"                 # before start: the window crosses midnight
//! applies_to = ["@students"]    # default: everyone
//! max_memory_per_process = "70GiB"
//!
//! [rogue]                       # miner/abuse scoring (see guard::rogue); always reported
//! whitelist = { users = ["ci-bot"] }
//!
//! [notify]
//! webhook = "http://127.0.0.1:9000/gpukill"   # a JSON POST per violation and action
//! webhook_timeout = "5s"
//! webhook_retries = 3
//! terminals = true              # warn the offending user on their terminals
//!
//! [reservation]                 # GPUs used without a reservation or by the wrong user;
//! enforce = true                # always reported, acted on only with enforce = true
//! ```
//!
//! With `rogue_act_at = "high"` (top level) the guard also acts on processes whose rogue
//! score reaches that risk level, as on any other violation; without it findings are only
//! reported (`guard status`, `guard test`, `audit --rogue`).
//!
//! A user's effective limits: `[defaults]`, each field replaced by the user's `[[user]]`
//! entry where it sets one, then by every active `[[window]]` that applies to the user (in
//! file order). Errors name the line of the offending table and what is wrong; nothing of a
//! file that fails is used.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::notify::{NotifyConfig, Webhook};
use super::rogue::{Identity, RiskLevel, RogueConfig, RogueScorer};
pub use crate::units::{Bytes, LocalTime, TimeOfDay, Weekday, parse_bytes};
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

impl FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "dry-run" => Ok(Mode::DryRun),
            "soft" => Ok(Mode::Soft),
            "hard" => Ok(Mode::Hard),
            other => Err(format!(
                "unknown guard mode {other:?}: use dry-run, soft or hard"
            )),
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

/// What is wrong with a policy file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {reason}", origin.as_deref().map(|o| format!("{o}, ")).unwrap_or_default())]
pub struct PolicyError {
    /// The file, when the text came from one.
    pub origin: Option<String>,
    /// The 1-based line of the offending key or table.
    pub line: usize,
    /// What is wrong, naming the value.
    pub reason: String,
}

/// A checked policy, ready to evaluate: the parsed file with its regexes compiled and its
/// groups' members resolved.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The policy as written.
    pub policy: Policy,
    /// `protected_processes`, compiled.
    pub protected_patterns: Vec<Regex>,
    /// Each `[[group]]`'s members (user names and uids as written, plus the Unix group's).
    pub group_members: Vec<Members>,
    /// `[rogue]`, compiled.
    pub rogue: RogueScorer,
    /// `[[group]]` index by name.
    groups_by_name: HashMap<String, usize>,
    /// Unix groups named `@name` in user lists that are not `[[group]]`s, resolved at load.
    unix_groups: HashMap<String, Members>,
    /// `[[user]]` index by name, and by uid for numeric names.
    users_by_name: HashMap<String, usize>,
    users_by_uid: HashMap<u32, usize>,
    /// The rogue identity of each process scored so far (pid, start ticks): it does not
    /// change while the process runs, and is forgotten with the policy.
    pub rogue_identities: RogueIdentities,
}

/// The rogue identity of each process scored so far, by (pid, start ticks).
pub type RogueIdentities = Arc<Mutex<HashMap<(u32, u64), Arc<Identity>>>>;

/// A set of users: names, and uids for the entries that are numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    names: HashSet<String>,
    uids: HashSet<u32>,
}

impl Members {
    fn new(entries: impl IntoIterator<Item = String>) -> Members {
        let mut members = Members::default();
        for entry in entries {
            if let Ok(uid) = entry.parse::<u32>() {
                members.uids.insert(uid);
            }
            members.names.insert(entry);
        }
        members
    }

    /// Whether `user` (by name) or `uid` is one of them. No allocation: this runs for every
    /// process on every tick.
    pub fn contains(&self, user: &str, uid: u32) -> bool {
        self.uids.contains(&uid) || self.names.contains(user)
    }
}

impl CompiledPolicy {
    /// Parses and checks `text` (from `origin`, for messages), resolving Unix groups with
    /// `unix_group_members`.
    pub fn parse(
        text: &str,
        origin: Option<&str>,
        unix_group_members: &dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Result<CompiledPolicy, PolicyError> {
        let error = |line: usize, reason: String| PolicyError {
            origin: origin.map(str::to_owned),
            line,
            reason,
        };
        let policy: Policy = toml::from_str(text).map_err(|parse| {
            let line = parse
                .span()
                .map_or(1, |span| line_of_offset(text, span.start));
            error(line, parse.message().to_owned())
        })?;
        let lines = TableLines::new(text);
        let mut protected_patterns = Vec::new();
        for pattern in &policy.protected_processes {
            let regex = Regex::new(pattern).map_err(|regex| {
                error(
                    lines.key("protected_processes"),
                    format!("protected_processes pattern {pattern:?} does not compile: {regex}"),
                )
            })?;
            protected_patterns.push(regex);
        }
        check_limits(&policy.defaults, "[defaults]")
            .map_err(|reason| error(lines.table("defaults"), reason))?;
        check_fraction(policy.hysteresis_pct, "hysteresis_pct", 0.0, 50.0)
            .map_err(|reason| error(lines.key("hysteresis_pct"), reason))?;
        if policy.max_kills_per_minute == 0 {
            return Err(error(
                lines.key("max_kills_per_minute"),
                "max_kills_per_minute 0 would never act: use 1 or more, or mode = \"dry-run\""
                    .to_owned(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (n, user) in policy.users.iter().enumerate() {
            let at = lines.array("user", n);
            check_limits(&user.limits, &format!("[[user]] {}", user.name))
                .map_err(|reason| error(at, reason))?;
            if !seen.insert(user.name.as_str()) {
                return Err(error(
                    at,
                    format!("user {:?} has two [[user]] entries", user.name),
                ));
            }
        }
        let group_names: BTreeSet<&str> = policy.groups.iter().map(|g| g.name.as_str()).collect();
        if group_names.len() != policy.groups.len() {
            return Err(error(
                lines.array("group", 0),
                "two [[group]] entries share a name".to_owned(),
            ));
        }
        let mut group_members = Vec::new();
        for (n, group) in policy.groups.iter().enumerate() {
            let at = lines.array("group", n);
            let mut members: Vec<String> = group.members.clone();
            if let Some(unix) = &group.unix_group {
                let found = unix_group_members(unix).ok_or_else(|| {
                    error(
                        at,
                        format!(
                            "[[group]] {}: Unix group {unix:?} does not exist",
                            group.name
                        ),
                    )
                })?;
                members.extend(found);
            }
            if let Some(pct) = group.max_utilization_pct
                && !(pct.is_finite() && pct > 0.0)
            {
                return Err(error(
                    at,
                    format!(
                        "[[group]] {}: max_utilization_pct {pct} must be above 0",
                        group.name
                    ),
                ));
            }
            group_members.push(Members::new(members));
        }
        let groups_by_name: HashMap<String, usize> = policy
            .groups
            .iter()
            .enumerate()
            .map(|(n, group)| (group.name.clone(), n))
            .collect();
        // `@name` that is not a [[group]]: a Unix group, resolved now.
        let mut unix_groups = HashMap::new();
        let lists = policy
            .gpus
            .iter()
            .enumerate()
            .flat_map(|(n, gpu)| {
                let at = lines.array("gpu", n);
                gpu.allowed_users
                    .iter()
                    .flatten()
                    .chain(&gpu.blocked_users)
                    .map(move |name| (at, name))
            })
            .chain(policy.windows.iter().enumerate().flat_map(|(n, window)| {
                let at = lines.array("window", n);
                window.applies_to.iter().map(move |name| (at, name))
            }));
        for (at, name) in lists {
            let Some(group) = name.strip_prefix('@') else {
                continue;
            };
            if groups_by_name.contains_key(group) || unix_groups.contains_key(group) {
                continue;
            }
            let found = unix_group_members(group).ok_or_else(|| {
                error(
                    at,
                    format!("{name:?} is neither a [[group]] of this file nor a Unix group"),
                )
            })?;
            unix_groups.insert(group.to_owned(), Members::new(found));
        }
        let mut users_by_name = HashMap::new();
        let mut users_by_uid = HashMap::new();
        for (n, user) in policy.users.iter().enumerate() {
            users_by_name.insert(user.name.clone(), n);
            if let Ok(uid) = user.name.parse::<u32>() {
                users_by_uid.insert(uid, n);
            }
        }
        let mut gpus = BTreeSet::new();
        for (n, gpu) in policy.gpus.iter().enumerate() {
            if !gpus.insert(gpu.index) {
                return Err(error(
                    lines.array("gpu", n),
                    format!("GPU {} has two [[gpu]] entries", gpu.index),
                ));
            }
        }
        for (n, window) in policy.windows.iter().enumerate() {
            check_limits(&window.limits, &format!("[[window]] {}", window.name))
                .map_err(|reason| error(lines.array("window", n), reason))?;
        }
        let rogue = RogueScorer::new(&policy.rogue).map_err(|rogue| {
            error(
                lines.table("rogue"),
                format!("[rogue] {}", crate::errors::chain(&rogue)),
            )
        })?;
        if let Some(url) = &policy.notify.webhook {
            Webhook::parse(url).map_err(|reason| error(lines.table("notify"), reason))?;
        }
        if policy.rogue_act_at == Some(RiskLevel::None) {
            return Err(error(
                lines.key("rogue_act_at"),
                "rogue_act_at \"none\" would act on every process: use low, medium, high or critical".to_owned(),
            ));
        }
        Ok(CompiledPolicy {
            policy,
            protected_patterns,
            group_members,
            rogue,
            groups_by_name,
            unix_groups,
            users_by_name,
            users_by_uid,
            rogue_identities: Arc::default(),
        })
    }

    /// Whether `user` (name) / `uid` is one of `names`: a user name, a uid in decimal, or
    /// `@group` (a `[[group]]` of this policy, else a Unix group resolved by
    /// `unix_group_members`).
    pub fn names_user(&self, names: &[String], user: &str, uid: u32) -> bool {
        names.iter().any(|name| match name.strip_prefix('@') {
            Some(group) => match self.groups_by_name.get(group) {
                Some(n) => self.is_member(*n, user, uid),
                None => self
                    .unix_groups
                    .get(group)
                    .is_some_and(|members| members.contains(user, uid)),
            },
            None => name == user || name.parse::<u32>() == Ok(uid),
        })
    }

    /// Whether `user` / `uid` is a member of `[[group]]` number `n`.
    pub fn is_member(&self, n: usize, user: &str, uid: u32) -> bool {
        self.group_members
            .get(n)
            .is_some_and(|members| members.contains(user, uid))
    }

    /// The `[[user]]` entry of `user` / `uid`, if there is one (by name first).
    pub fn user_entry(&self, user: &str, uid: u32) -> Option<&UserPolicy> {
        self.users_by_name
            .get(user)
            .or_else(|| self.users_by_uid.get(&uid))
            .and_then(|n| self.policy.users.get(*n))
    }

    /// The limits in force for `user` / `uid` at `now`.
    pub fn limits_for(&self, user: &str, uid: u32, now: LocalTime) -> Limits {
        let mut limits = self.policy.defaults.clone();
        if let Some(entry) = self.user_entry(user, uid) {
            limits = limits.overridden_by(&entry.limits);
        }
        for window in &self.policy.windows {
            if window.contains(now)
                && (window.applies_to.is_empty() || self.names_user(&window.applies_to, user, uid))
            {
                limits = limits.overridden_by(&window.limits);
            }
        }
        limits
    }

    /// Names of the windows active at `now`.
    pub fn active_windows(&self, now: LocalTime) -> Vec<&str> {
        self.policy
            .windows
            .iter()
            .filter(|window| window.contains(now))
            .map(|window| window.name.as_str())
            .collect()
    }
}

/// The members of Unix group `name` from the group database: its member list and the users
/// whose primary group it is. `None` when the group does not exist. Blocking.
pub fn unix_group_members(name: &str) -> Option<Vec<String>> {
    let group = nix::unistd::Group::from_name(name).ok().flatten()?;
    let mut members = group.mem.clone();
    // Primary-group members are only in /etc/passwd; a host with network users would need
    // getpwent, which is not thread-safe. The listed members cover the common case.
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[3].parse::<u32>() == Ok(group.gid.as_raw()) {
                members.push(fields[0].to_owned());
            }
        }
    }
    Some(members)
}

fn check_limits(limits: &Limits, what: &str) -> Result<(), String> {
    if let Some(key) = limits.unknown.keys().next() {
        return Err(format!(
            "{what}: unknown key {key:?}; limits are max_memory_per_process, max_memory_total, max_utilization_pct, utilization_window, max_duration, max_processes, allowed_gpus, blocked_gpus"
        ));
    }
    if let Some(pct) = limits.max_utilization_pct {
        check_fraction(pct, &format!("{what}: max_utilization_pct"), 0.0, 100.0)?;
    }
    if limits
        .utilization_window
        .is_some_and(|window| window.is_zero())
    {
        return Err(format!("{what}: utilization_window must be longer than 0s"));
    }
    Ok(())
}

fn check_fraction(value: f64, what: &str, low: f64, high: f64) -> Result<(), String> {
    if value.is_finite() && value >= low && value <= high {
        Ok(())
    } else {
        Err(format!("{what} {value} is out of range ({low} to {high})"))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where the tables and top-level keys of a policy file start, for error messages.
struct TableLines<'a> {
    text: &'a str,
}

impl<'a> TableLines<'a> {
    fn new(text: &'a str) -> Self {
        TableLines { text }
    }

    fn find(&self, wanted: impl Fn(&str) -> bool, nth: usize) -> usize {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, line)| wanted(line.trim()))
            .nth(nth)
            .map_or(1, |(n, _)| n + 1)
    }

    /// The line of `[[name]]` number `n`.
    fn array(&self, name: &str, n: usize) -> usize {
        let header = format!("[[{name}]]");
        self.find(|line| line.starts_with(&header), n)
    }

    /// The line of `[name]`.
    fn table(&self, name: &str) -> usize {
        let header = format!("[{name}]");
        self.find(|line| line.starts_with(&header), 0)
    }

    /// The line of top-level `key = ...`.
    fn key(&self, key: &str) -> usize {
        self.find(
            |line| {
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            },
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GIB: u64 = 1 << 30;

    fn no_groups(_: &str) -> Option<Vec<String>> {
        None
    }

    fn parse(text: &str) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::parse(text, Some("guard.toml"), &no_groups)
    }

    const EXAMPLE: &str = r#"
mode = "hard"
min_duration = "2s"

[defaults]
max_memory_per_process = "40GiB"
max_duration = "24h"

[[user]]
name = "alice"
max_memory_per_process = "20GiB"
max_processes = 2

[[group]]
name = "students"
members = ["bob", "1005"]
max_memory_total = 85899345920

[[gpu]]
index = 3
allowed_users = ["alice", "@students"]
reserved_memory = "8GiB"

[[window]]
name = "nights"
days = ["fri"]
start = "22:00"
end = "06:00"
applies_to = ["@students"]
max_memory_per_process = "70GiB"
"#;

    fn at(weekday: Weekday, hour: u16, minute: u16) -> LocalTime {
        LocalTime {
            weekday,
            minute: hour * 60 + minute,
        }
    }

    #[test]
    fn the_example_parses_and_merges_limits() {
        let compiled = parse(EXAMPLE).unwrap();
        let policy = &compiled.policy;
        assert_eq!(policy.mode, Mode::Hard);
        assert_eq!(policy.min_duration, Duration::from_secs(2));
        assert_eq!(policy.grace, Duration::from_secs(30));
        let noon = at(Weekday::Wed, 12, 0);
        let alice = compiled.limits_for("alice", 1000, noon);
        assert_eq!(alice.max_memory_per_process, Some(Bytes(20 * GIB)));
        assert_eq!(alice.max_duration, Some(Duration::from_secs(86_400)));
        assert_eq!(alice.max_processes, Some(2));
        let carol = compiled.limits_for("carol", 1002, noon);
        assert_eq!(carol.max_memory_per_process, Some(Bytes(40 * GIB)));
        assert_eq!(carol.max_processes, None);
        assert!(compiled.names_user(&["@students".into()], "bob", 1004));
        assert!(compiled.names_user(&["@students".into()], "dave", 1005));
        assert!(!compiled.names_user(&["@students".into()], "carol", 1002));
        assert!(compiled.names_user(&["1002".into()], "carol", 1002));
    }

    #[test]
    fn a_window_crossing_midnight_covers_the_next_morning() {
        let compiled = parse(EXAMPLE).unwrap();
        let limit = |time| {
            compiled
                .limits_for("bob", 1004, time)
                .max_memory_per_process
                .unwrap()
                .0
                / GIB
        };
        // Friday's window: Friday 22:00 to Saturday 06:00.
        assert_eq!(limit(at(Weekday::Fri, 21, 59)), 40);
        assert_eq!(limit(at(Weekday::Fri, 22, 0)), 70);
        assert_eq!(limit(at(Weekday::Sat, 5, 59)), 70);
        assert_eq!(limit(at(Weekday::Sat, 6, 0)), 40);
        // Thursday's night is not in the window; Friday morning belongs to Thursday's.
        assert_eq!(limit(at(Weekday::Fri, 1, 0)), 40);
        assert_eq!(limit(at(Weekday::Sat, 23, 0)), 40);
        // Not a student: the window does not apply.
        let alice = compiled.limits_for("alice", 1000, at(Weekday::Fri, 23, 0));
        assert_eq!(alice.max_memory_per_process, Some(Bytes(20 * GIB)));
        assert_eq!(compiled.active_windows(at(Weekday::Sat, 1, 0)), ["nights"]);
    }

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
    fn errors_name_the_line_and_the_value() {
        let cases: [(&str, usize, &str); 8] = [
            ("mode = \"strict\"", 1, "unknown variant `strict`"),
            ("grace = \"soon\"", 1, "invalid duration \"soon\""),
            (
                // Inside a table with limits, toml names the table's line.
                "[[user]]\nname = \"a\"\n\n[[user]]\nname = \"b\"\nmax_memory_per_process = \"lots\"",
                4,
                "invalid size \"lots\"",
            ),
            (
                "[[user]]\nname = \"a\"\n[[user]]\nname = \"b\"\nmax_gpus = 2",
                3,
                "[[user]] b: unknown key \"max_gpus\"",
            ),
            (
                "protected_processes = [\"(\"]",
                1,
                "protected_processes pattern \"(\" does not compile",
            ),
            ("enabled = true\nx = 1", 2, "unknown field `x`"),
            (
                "[[window]]\nname = \"w\"\nstart = \"25:00\"\nend = \"06:00\"",
                3,
                "invalid time \"25:00\"",
            ),
            (
                "[[group]]\nname = \"g\"\nunix_group = \"no-such-group\"",
                1,
                "Unix group \"no-such-group\" does not exist",
            ),
        ];
        for (text, line, reason) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text}: {error}");
            assert!(error.reason.contains(reason), "{text}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("guard.toml, line {line}: "))
            );
        }
    }

    #[test]
    fn rogue_settings_are_checked() {
        let compiled = parse("rogue_act_at = \"high\"\n[rogue]\nhigh_util_pct = 90\n").unwrap();
        assert_eq!(compiled.policy.rogue_act_at, Some(RiskLevel::High));
        let error = parse("rogue_act_at = \"none\"").unwrap_err();
        assert!(
            error.reason.contains("would act on every process"),
            "{error}"
        );
        let error = parse("x = 1\n[rogue]\nname_patterns = [\"(\"]\n").unwrap_err();
        assert_eq!(error.line, 1, "unknown x first: {error}");
        let error = parse("\n[rogue]\nname_patterns = [\"(\"]\n").unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(
            error.reason.starts_with("[rogue] name_patterns[0]"),
            "{error}"
        );
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let text = include_str!("../../../packaging/guard.toml");
        let compiled = parse(text).unwrap();
        assert_eq!(compiled.policy.mode, Mode::DryRun);
        assert_eq!(compiled.policy.users.len(), 1);
        assert_eq!(compiled.policy.windows[0].start, TimeOfDay(20 * 60));
        assert!(compiled.policy.notify.terminals);
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
        assert!("hard".parse::<Mode>().is_ok());
        assert_eq!(
            "strict".parse::<Mode>().unwrap_err(),
            "unknown guard mode \"strict\": use dry-run, soft or hard"
        );
    }
}
