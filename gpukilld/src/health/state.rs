//! A GPU's assessed health: its state, why, its latest readings and its recent Xids.

use std::collections::BTreeMap;
use std::fmt;

use super::reading::{HealthReading, Xid};

/// How healthy a GPU is, worst last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// Nothing about its health could be read.
    #[default]
    Unknown,
    /// Nothing wrong seen.
    Ok,
    /// Degraded: throttled by heat or a power brake, correctable errors rising, a retirement
    /// or remap pending.
    Warning,
    /// Not fit for work: a serious Xid, uncorrectable errors, no spare rows left. Stays until
    /// an admin clears it or the GPU is reset.
    Critical,
    /// Fell off the bus: NVML answers GPU_IS_LOST.
    Lost,
}

impl HealthState {
    /// Every state, in order.
    pub const ALL: [HealthState; 5] = [
        HealthState::Unknown,
        HealthState::Ok,
        HealthState::Warning,
        HealthState::Critical,
        HealthState::Lost,
    ];

    /// Lower-case name, as in JSON and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Ok => "ok",
            HealthState::Warning => "warning",
            HealthState::Critical => "critical",
            HealthState::Lost => "lost",
        }
    }

    /// Whether a GPU in this state must not be handed out (reserve, run).
    pub fn is_unfit(self) -> bool {
        matches!(self, HealthState::Critical | HealthState::Lost)
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The GPU answers GPU_IS_LOST.
    Lost,
    /// A serious Xid.
    Xid,
    /// Uncorrectable (double-bit) ECC errors.
    EccUncorrectable,
    /// Rows remapped after uncorrectable errors.
    RemappedUncorrectable,
    /// A row remap failed.
    RemapFailure,
    /// AMD RAS uncorrectable errors.
    RasUncorrectable,
    /// Clocks held down for a reason in `warn_on_throttle`.
    Throttle,
    /// Correctable errors rising.
    CorrectableErrors,
    /// A page retirement is pending.
    RetirementPending,
    /// A row remap is pending.
    RemapPending,
}

impl Condition {
    /// Snake-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Lost => "lost",
            Condition::Xid => "xid",
            Condition::EccUncorrectable => "ecc_uncorrectable",
            Condition::RemappedUncorrectable => "remapped_uncorrectable",
            Condition::RemapFailure => "remap_failure",
            Condition::RasUncorrectable => "ras_uncorrectable",
            Condition::Throttle => "throttle",
            Condition::CorrectableErrors => "correctable_errors",
            Condition::RetirementPending => "retirement_pending",
            Condition::RemapPending => "remap_pending",
        }
    }
}

/// One reason for a GPU's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReason {
    /// The state this reason calls for.
    pub severity: HealthState,
    /// What it is about.
    pub condition: Condition,
    /// One line for people, naming the value.
    pub text: String,
}

/// A GPU's health as the daemon assessed it this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuHealth {
    /// The worst of the reasons' severities (`Ok` with none; `Unknown` when nothing is
    /// readable).
    pub state: HealthState,
    /// Why, worst first.
    pub reasons: Vec<HealthReason>,
    /// What the backend read this tick.
    pub reading: HealthReading,
    /// The most recent Xids since the daemon started, oldest first (at most
    /// [`RECENT_XIDS`]).
    pub recent_xids: Vec<Xid>,
    /// Xids since the daemon started, per code: counters that only grow.
    pub xid_counts: BTreeMap<u64, u64>,
}

/// How many Xids a GPU's health keeps.
pub const RECENT_XIDS: usize = 16;

impl GpuHealth {
    /// The last Xid code seen, as dcgm-exporter's `DCGM_FI_DEV_XID_ERRORS`.
    pub fn last_xid(&self) -> Option<u64> {
        self.recent_xids.last().map(|xid| xid.code)
    }

    /// The state and the reasons that make the GPU unfit for work, as people read them:
    /// `critical (Xid 79 (GPU has fallen off the bus))`.
    pub fn unfit_summary(&self) -> String {
        let reasons: Vec<&str> = self
            .reasons
            .iter()
            .filter(|reason| reason.severity.is_unfit())
            .map(|reason| reason.text.as_str())
            .collect();
        format!("{} ({})", self.state, reasons.join("; "))
    }
}
