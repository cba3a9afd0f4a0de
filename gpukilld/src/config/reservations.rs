//! `[reservations]`: GPU reservations (`gpukillctl reserve`, `run`, `status`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};
use crate::units::bytes;

/// `[reservations]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationsConfig {
    /// GPU memory (bytes, or `"1GiB"`) a GPU's processes must use together before the GPU
    /// counts as in use: an idle GPU shows a few hundred MiB of driver and context memory.
    #[serde(with = "bytes")]
    pub unreserved_threshold: u64,
    /// How long `gpukillctl reserve` holds GPUs without `--duration`.
    #[serde(with = "duration")]
    pub default_duration: Duration,
    /// The longest reservation anyone may make.
    #[serde(with = "duration")]
    pub max_duration: Duration,
    /// How often a `gpukillctl run` client sends a heartbeat.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// How long a `run` reservation is kept without a heartbeat (a hung client), and how long
    /// its client has to reconnect after the daemon restarted.
    #[serde(with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Requests one user may have waiting in the queue (`gpukillctl run --wait`).
    pub max_queued_per_user: usize,
    /// Requests all users together may have waiting.
    pub max_queued: usize,
}

impl Default for ReservationsConfig {
    fn default() -> Self {
        Self {
            unreserved_threshold: 1 << 30,
            default_duration: Duration::from_secs(8 * 3600),
            max_duration: Duration::from_secs(7 * 86_400),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            max_queued_per_user: 4,
            max_queued: 256,
        }
    }
}

impl ReservationsConfig {
    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: Duration, message: String| ConfigError::Invalid {
            key,
            value: humantime::format_duration(value).to_string(),
            origin: origin("reservations"),
            message,
        };
        if self.default_duration.is_zero() || self.default_duration > self.max_duration {
            return Err(invalid(
                "reservations.default_duration",
                self.default_duration,
                format!(
                    "must be more than 0 and at most reservations.max_duration ({})",
                    humantime::format_duration(self.max_duration)
                ),
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(10)
            || self.heartbeat_interval > Duration::from_secs(600)
        {
            return Err(invalid(
                "reservations.heartbeat_interval",
                self.heartbeat_interval,
                "is out of range: use 10ms to 10m".into(),
            ));
        }
        let counts = [
            ("reservations.max_queued_per_user", self.max_queued_per_user),
            ("reservations.max_queued", self.max_queued),
        ];
        for (key, value) in counts {
            if !(1..=100_000).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    origin: origin("reservations"),
                    message: "is out of range: use 1 to 100000".to_owned(),
                });
            }
        }
        if self.heartbeat_timeout < 2 * self.heartbeat_interval {
            return Err(invalid(
                "reservations.heartbeat_timeout",
                self.heartbeat_timeout,
                format!(
                    "must be at least twice reservations.heartbeat_interval ({}), or one late heartbeat ends a run",
                    humantime::format_duration(self.heartbeat_interval)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ReservationsConfig, String> {
        let config: ReservationsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .validate(&|_| "test".to_string())
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn sizes_and_durations_parse() {
        let config = parse("unreserved_threshold = \"512MiB\"\ndefault_duration = \"2h\"").unwrap();
        assert_eq!(config.unreserved_threshold, 512 << 20);
        assert_eq!(config.default_duration, Duration::from_secs(7200));
        assert_eq!(
            parse("unreserved_threshold = 1000")
                .unwrap()
                .unreserved_threshold,
            1000
        );
    }

    #[test]
    fn bad_values_are_named() {
        let error = parse("unreserved_threshold = \"lots\"").unwrap_err();
        assert!(error.contains("\"lots\""), "{error}");
        let error = parse("default_duration = \"30d\"").unwrap_err();
        assert!(error.contains("reservations.default_duration"), "{error}");
        let error = parse("max_queued_per_user = 0").unwrap_err();
        assert!(
            error.contains("reservations.max_queued_per_user = 0"),
            "{error}"
        );
        let error = parse("heartbeat_interval = \"10s\"\nheartbeat_timeout = \"15s\"").unwrap_err();
        assert!(error.contains("reservations.heartbeat_timeout"), "{error}");
    }
}
