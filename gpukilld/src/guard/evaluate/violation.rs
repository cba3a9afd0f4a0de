//! What an evaluation reports: a [`Violation`] (the [`Rule`] it breaks, the table that set
//! the limit, its [`Subject`], the value against the limit in a [`Unit`], the [`Offender`]s
//! acting would stop), and how a value and a violation are written for people.

use std::sync::Arc;
use std::time::Duration;

use crate::procinfo::ProcessInfo;
use crate::snapshot::Vendor;

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
