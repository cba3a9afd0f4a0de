//! `[health]`: when a GPU's health counts as `warning`, and what a `critical` GPU leads to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// What happens to a GPU that turns `critical` (or `lost`), beyond the audit event, the log
/// line and the webhook every state change gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCritical {
    /// Only tell: events, logs, webhook, metrics.
    Notify,
    /// Tell, and hand the GPU out no more (`reserve`, `run`) until it is healthy again.
    #[default]
    Drain,
    /// Tell, drain, and kill every process that starts on the GPU while it is unfit (those
    /// already there are left to finish).
    KillNew,
}

impl OnCritical {
    /// Whether an unfit GPU is kept from `reserve` and `run`.
    pub fn drains(self) -> bool {
        matches!(self, OnCritical::Drain | OnCritical::KillNew)
    }

    /// Whether processes that start on an unfit GPU are killed.
    pub fn kills_new(self) -> bool {
        self == OnCritical::KillNew
    }
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Correctable (single-bit ECC, AMD RAS correctable) errors within `correctable_window`
    /// that make a GPU `warning`.
    pub correctable_errors: u64,
    /// The window `correctable_errors` counts over.
    #[serde(with = "duration")]
    pub correctable_window: Duration,
    /// Clock event (throttle) reasons that make a GPU `warning` while they hold, by name
    /// (`hw_slowdown`, `hw_thermal`, `sw_thermal`, `hw_power_brake`, `sw_power_cap`,
    /// `sync_boost`, …).
    pub warn_on_throttle: Vec<String>,
    /// What a `critical` or `lost` GPU leads to: `notify`, `drain` or `kill-new`.
    pub on_critical: OnCritical,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            correctable_errors: 10,
            correctable_window: Duration::from_secs(3600),
            warn_on_throttle: ["hw_slowdown", "hw_thermal", "sw_thermal", "hw_power_brake"]
                .map(str::to_owned)
                .to_vec(),
            on_critical: OnCritical::default(),
        }
    }
}

/// The throttle reason names `warn_on_throttle` accepts (NVML's, as `Throttle::NAMES`).
pub const THROTTLE_NAMES: [&str; 9] = [
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
    "display_clock_setting",
];

impl HealthConfig {
    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.correctable_errors == 0 {
            return Err(ConfigError::Invalid {
                key: "health.correctable_errors",
                value: "0".to_owned(),
                origin: origin("health"),
                message: "must be at least 1".to_owned(),
            });
        }
        if self.correctable_window < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "health.correctable_window",
                value: humantime::format_duration(self.correctable_window).to_string(),
                origin: origin("health"),
                message: "must be at least 1s".to_owned(),
            });
        }
        if let Some(unknown) = self
            .warn_on_throttle
            .iter()
            .find(|name| !THROTTLE_NAMES.contains(&name.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "health.warn_on_throttle",
                value: unknown.clone(),
                origin: origin("health"),
                message: format!(
                    "is not a throttle reason: use {}",
                    THROTTLE_NAMES.join(", ")
                ),
            });
        }
        Ok(())
    }
}
