//! Evaluating a policy against the latest snapshot: which rules are broken, by how much, and
//! which processes acting on it would stop. Pure: the caller passes the snapshot, the
//! utilization history and the local time, so tests inject all three.
//!
//! Targets of an aggregate violation (a user's or a group's total memory or process count, a
//! GPU's reserved memory) are the newest processes first, as few as bring the value back to
//! the limit: the work lost is the least.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::policy::{CompiledPolicy, Limits, LocalTime};
use super::rogue::{Observed, RiskLevel};
use crate::procinfo::ProcessInfo;
use crate::reservations::usage::Assessment;
use crate::snapshot::{GpuProcess, Snapshot, Vendor};

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// One process uses more GPU memory than its user may.
    MemoryPerProcess,
    /// A user's processes together use more GPU memory than allowed.
    MemoryTotal,
    /// One process's mean SM utilization over the window is above the limit.
    Utilization,
    /// One process has run longer than allowed.
    Duration,
    /// A user has more GPU processes than allowed.
    Processes,
    /// A process runs on a GPU its user may not use.
    GpuNotAllowed,
    /// A process of a user the GPU's policy does not allow.
    UserNotAllowed,
    /// One process uses more memory than its GPU's policy allows.
    GpuMemoryPerProcess,
    /// A GPU's used memory reaches into its reserved memory.
    ReservedMemory,
    /// A group's processes together use more GPU memory than allowed.
    GroupMemory,
    /// A group's processes together have more SM utilization than allowed.
    GroupUtilization,
    /// A group has more GPU processes than allowed.
    GroupProcesses,
    /// A process scores as a miner or abuse (`[rogue]`).
    Rogue,
    /// A process uses a GPU without a reservation, or on another user's reservation
    /// (`[reservation]`).
    Reservation,
}

impl Rule {
    /// The name events and JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MemoryPerProcess => "memory_per_process",
            Rule::MemoryTotal => "memory_total",
            Rule::Utilization => "utilization",
            Rule::Duration => "duration",
            Rule::Processes => "processes",
            Rule::GpuNotAllowed => "gpu_not_allowed",
            Rule::UserNotAllowed => "user_not_allowed",
            Rule::GpuMemoryPerProcess => "gpu_memory_per_process",
            Rule::ReservedMemory => "reserved_memory",
            Rule::GroupMemory => "group_memory",
            Rule::GroupUtilization => "group_utilization",
            Rule::GroupProcesses => "group_processes",
            Rule::Rogue => "rogue",
            Rule::Reservation => "reservation",
        }
    }
}

/// The unit of a violation's value and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes.
    Bytes,
    /// Percent.
    Percent,
    /// Seconds.
    Seconds,
    /// A count.
    Count,
    /// A GPU index (the value is the GPU; no limit).
    Gpu,
    /// A rogue score, 0 to 100 (the limit: the score of `rogue_act_at`).
    Score,
}

/// A process a violation is about, on one GPU.
#[derive(Debug, Clone)]
pub struct Offender {
    /// Who it is.
    pub info: Arc<ProcessInfo>,
    /// Its vendor.
    pub vendor: Vendor,
    /// The GPU.
    pub gpu_index: u32,
    /// Why it must never be signalled, when it must not (filled in by the guard before
    /// deciding: a protected process spends none of the kill rate).
    pub protected: Option<String>,
}

/// What a violation is about: it stays the same from tick to tick while the violation
/// lasts, so the guard can follow it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// One process (pid, start time) on one GPU.
    Process {
        /// The pid.
        pid: u32,
        /// Its start time in ticks since boot.
        start_ticks: u64,
        /// The GPU.
        gpu_index: u32,
    },
    /// A user, by uid.
    User(u32),
    /// A `[[group]]`, by name.
    Group(String),
    /// A GPU, by index.
    Gpu(u32),
}

/// One broken rule.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The table that set the limit: `[defaults]`, `[[user]] alice`, `[[window]] nights`,
    /// `[[group]] students`, `[[gpu]] 3`.
    pub policy: String,
    /// What it is about.
    pub subject: Subject,
    /// The value measured.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// The unit of both.
    pub unit: Unit,
    /// The processes acting would stop (newest first for aggregates).
    pub offenders: Vec<Offender>,
    /// Whether the value is over the limit now. A violation that has started is still
    /// reported while its value stays within `hysteresis_pct` under the limit (then `over`
    /// is false), so a value flapping around the limit is one violation, not one per tick.
    /// A rogue finding below `rogue_act_at` (or with no `rogue_act_at`) is reported with
    /// `over` false: the guard never acts on it.
    pub over: bool,
    /// More for people (a rogue finding's reasons); empty for limits.
    pub note: String,
}

impl Violation {
    /// One line for logs and events, e.g. `memory_per_process: pid 42 (python, alice) on
    /// GPU 0 uses 24.0 GiB, limit 20.0 GiB ([[user]] alice)`.
    pub fn describe(&self) -> String {
        let value = |v: f64| format_value(v, self.unit);
        let what = match &self.subject {
            Subject::Process { pid, gpu_index, .. } => {
                let who = self
                    .offenders
                    .first()
                    .map(|o| format!(" ({}, {})", o.info.name, o.info.user))
                    .unwrap_or_default();
                format!("pid {pid}{who} on GPU {gpu_index}")
            }
            Subject::User(uid) => {
                let name = self
                    .offenders
                    .first()
                    .map_or_else(|| uid.to_string(), |o| o.info.user.to_string());
                format!("user {name}")
            }
            Subject::Group(name) => format!("group {name}"),
            Subject::Gpu(index) => format!("GPU {index}"),
        };
        let measured = match self.unit {
            Unit::Gpu => format!("runs on GPU {}", self.measured),
            Unit::Score => format!("scores {}", value(self.measured)),
            _ => format!("{}, limit {}", value(self.measured), value(self.limit)),
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!(": {}", self.note)
        };
        format!(
            "{}: {what} {measured} ({}){note}",
            self.rule.as_str(),
            self.policy
        )
    }
}

/// The name of a unit in the API and in webhook notices.
pub fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Bytes => "bytes",
        Unit::Percent => "percent",
        Unit::Seconds => "seconds",
        Unit::Count => "count",
        Unit::Gpu => "gpu",
        Unit::Score => "score",
    }
}

/// A value with its unit, for people.
pub fn format_value(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => format!("{:.1} GiB", value / (1u64 << 30) as f64),
        Unit::Percent => format!("{value:.1}%"),
        Unit::Seconds => humantime::format_duration(Duration::from_secs(value as u64)).to_string(),
        Unit::Count => format!("{value:.0}"),
        Unit::Gpu => format!("GPU {value:.0}"),
        Unit::Score => format!("{value:.0}"),
    }
}

/// Identifies one process on one GPU across ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcKey {
    vendor: Vendor,
    gpu_index: u32,
    pid: u32,
    start_ticks: u64,
}

impl ProcKey {
    fn of(process: &GpuProcess<'_>) -> Self {
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
struct Series {
    samples: VecDeque<(SystemTime, Totals)>,
    before: Totals,
}

impl UtilHistory {
    /// Adds `snapshot`'s per-process utilization and forgets what is older than `keep`
    /// (and processes that are gone).
    pub fn record(&mut self, snapshot: &Snapshot, keep: Duration) {
        let at = snapshot.taken_at;
        let mut present = std::collections::HashSet::new();
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
}

impl Series {
    /// The mean utilization over the `window` before `now`: `Ok(None)` while the process
    /// has not been seen for the whole window yet, `Err` when a tick in it had no
    /// per-process utilization (the device does not give it).
    fn mean(&self, window: Duration, now: SystemTime, poll: Duration) -> Result<Option<f64>, ()> {
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

/// Whether `measured` is reported against `limit`: `None` at or below the release level
/// (`hysteresis` percent under the limit), else whether it is over the limit itself.
fn exceeds(measured: f64, limit: f64, hysteresis: f64) -> Option<bool> {
    let release = limit * (1.0 - hysteresis / 100.0);
    (measured > release).then_some(measured > limit)
}

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
    let now = snapshot.taken_at;
    let hysteresis = policy.policy.hysteresis_pct;
    let mut found = Evaluation::default();
    let seen: Vec<Seen<'_>> = snapshot
        .processes()
        .map(|process| {
            let key = ProcKey::of(&process);
            Seen {
                series: history.series.get(&key),
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
        now,
        poll: snapshot.poll_interval,
    };
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
    let mut not_evaluable = std::collections::BTreeSet::new();
    for processes in by_uid.values() {
        let info = processes[0].info();
        let limits = policy.limits_for(&info.user, info.uid, local);
        let source = limit_source(policy, &info.user, info.uid, local);
        let context = Context {
            source: &source,
            means: &means,
            snapshot,
            hysteresis,
        };
        user_rules(
            &limits,
            &context,
            processes,
            &mut found.violations,
            &mut not_evaluable,
        );
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
                &mut found.violations,
            );
        }
        if let Some(limit) = group.max_processes {
            aggregate_count(
                Rule::GroupProcesses,
                &name,
                subject.clone(),
                members,
                limit,
                &mut found.violations,
            );
        }
        if let Some(limit) = group.max_utilization_pct {
            let window = group
                .utilization_window
                .unwrap_or(super::policy::DEFAULT_UTILIZATION_WINDOW);
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
                found.violations.push(Violation {
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
                found.violations.push(Violation {
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
                found.violations.push(Violation {
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
                    found.violations.push(Violation {
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
    rogue_findings(policy, &seen, &means, local, &mut found.violations);
    found.not_evaluable = not_evaluable.into_iter().collect();
    found
}

/// Scores each process (once, on the first GPU it is on) with `[rogue]`: a finding of at
/// least low risk is reported; it is `over` (the guard acts) at `rogue_act_at` and above.
fn rogue_findings(
    policy: &CompiledPolicy,
    seen: &[Seen<'_>],
    means: &Means,
    local: LocalTime,
    out: &mut Vec<Violation>,
) {
    let config = &policy.policy.rogue;
    let act_at = policy.policy.rogue_act_at;
    let now = means.now;
    let mut identities = policy
        .rogue_identities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut scored = std::collections::HashSet::new();
    for process in seen {
        let info = process.info();
        if !scored.insert((info.pid, info.start_ticks)) {
            continue;
        }
        let window = config.high_util_window;
        let mean_util_pct = means.mean(process, window).ok().flatten();
        let observed = Observed {
            name: &info.name,
            exe_name: info.exe_name.as_deref(),
            cmdline: &info.cmdline,
            user: &info.user,
            uid: info.uid,
            running_for: now.duration_since(info.start_time).unwrap_or_default(),
            mean_util_pct,
            util_window: window,
            local_hour: u8::try_from(local.minute / 60).ok(),
        };
        let identity = identities
            .entry((info.pid, info.start_ticks))
            .or_insert_with(|| Arc::new(policy.rogue.identity(&observed)));
        let finding = policy.rogue.score_with(&observed, identity);
        if finding.level < RiskLevel::Low {
            continue;
        }
        let limit = act_at.map_or(f64::from(config.levels.low), |level| {
            f64::from(config.levels.threshold(level))
        });
        out.push(Violation {
            rule: Rule::Rogue,
            policy: format!("[rogue] {}", finding.level.as_str()),
            subject: process.subject(),
            measured: f64::from(finding.score),
            limit,
            unit: Unit::Score,
            offenders: vec![process.offender()],
            over: act_at.is_some_and(|level| finding.level >= level),
            note: finding.reasons.join("; "),
        });
    }
    // Forget processes that are gone.
    identities.retain(|key, _| scored.contains(key));
}

/// One finding per process using a GPU it does not hold (`misuse`, from the reservations):
/// reported always, `over` (the guard acts) when `[reservation] enforce` is on.
pub fn reservation_findings(policy: &CompiledPolicy, misuse: &[Assessment]) -> Vec<Violation> {
    let enforce = policy.policy.reservation.enforce;
    let mut found = Vec::new();
    for assessment in misuse {
        let gpu = &assessment.gpu;
        let note = match &assessment.holder {
            Some(holder) => format!("on {}'s reservation of GPU {}", holder.user, gpu.index),
            None => format!("GPU {} is not reserved", gpu.index),
        };
        for process in &assessment.misuse {
            found.push(Violation {
                rule: Rule::Reservation,
                policy: "[reservation]".to_owned(),
                subject: Subject::Process {
                    pid: process.info.pid,
                    start_ticks: process.info.start_ticks,
                    gpu_index: gpu.index,
                },
                measured: f64::from(gpu.index),
                limit: 0.0,
                unit: Unit::Gpu,
                offenders: vec![Offender {
                    info: Arc::clone(&process.info),
                    vendor: gpu.vendor,
                    gpu_index: gpu.index,
                    protected: None,
                }],
                over: enforce,
                note: note.clone(),
            });
        }
    }
    found
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

/// What the per-user rules share.
struct Context<'a> {
    /// The table the limits come from.
    source: &'a str,
    means: &'a Means,
    snapshot: &'a Snapshot,
    hysteresis: f64,
}

/// The per-user rules for one user's `processes`.
fn user_rules(
    limits: &Limits,
    context: &Context<'_>,
    processes: &[&Seen<'_>],
    out: &mut Vec<Violation>,
    not_evaluable: &mut std::collections::BTreeSet<String>,
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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::UNIX_EPOCH;

    use super::super::policy::Weekday;
    use super::*;
    use crate::snapshot::{Gpu, ProcessKind, ProcessSlot, ProcessTable, VendorData};

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

    #[test]
    fn a_renamed_miner_is_a_rogue_finding_acted_on_at_the_configured_level() {
        let text = r#"
            rogue_act_at = "high"
            [rogue.whitelist]
            names = ["^python3$"]
        "#;
        let mut miner = (*proc_info(60, 1000, "alice", 60)).clone();
        miner.exe_name = Some("xmrig".into());
        let trainer = proc_info(61, 1000, "alice", 60);
        let rows = [
            (Arc::new(miner), 0, Some(1), Some(99)),
            (trainer, 1, Some(1), Some(99)),
        ];
        let evaluation = evaluate(
            &policy(text),
            &snapshot_at(0, &rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        assert_eq!(
            evaluation.violations.len(),
            1,
            "{:?}",
            evaluation.violations
        );
        let finding = &evaluation.violations[0];
        assert_eq!(finding.rule, Rule::Rogue);
        assert_eq!(finding.offenders[0].info.pid, 60);
        assert!(finding.over, "high or critical is acted on");
        assert!(finding.policy == "[rogue] critical" || finding.policy == "[rogue] high");
        assert!(
            finding.describe().contains("xmrig"),
            "{}",
            finding.describe()
        );
        // Without rogue_act_at: reported, never acted on.
        let report_only = evaluate(
            &policy(""),
            &snapshot_at(0, &rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        assert!(report_only.violations.iter().all(|v| !v.over));
        assert_eq!(report_only.violations.len(), 1);
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
