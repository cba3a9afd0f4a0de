//! The `[rogue]` settings: what the scorer looks for and how much each signal weighs, with
//! their defaults and their TOML form; and the risk levels a score maps to.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How risky a process looks, from the score's thresholds in [`Levels`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    /// Below the `low` threshold, or whitelisted.
    #[default]
    None,
    /// At or above `low`.
    Low,
    /// At or above `medium`.
    Medium,
    /// At or above `high`.
    High,
    /// At or above `critical`.
    Critical,
}

impl RiskLevel {
    /// Every level, lowest first.
    pub const ALL: [RiskLevel; 5] = [
        RiskLevel::None,
        RiskLevel::Low,
        RiskLevel::Medium,
        RiskLevel::High,
        RiskLevel::Critical,
    ];

    /// The name used in configuration, on the command line and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::None => "none",
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Critical => "critical",
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rogue detection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RogueConfig {
    /// Names of known miners, compared with comm, the exe basename and the argv\[0\]
    /// basename, ignoring case and a version suffix. Default: xmrig, xmr-stak, ethminer,
    /// t-rex, nbminer, lolminer, phoenixminer, gminer, nanominer, teamredminer, cgminer,
    /// bfgminer, ccminer and a dozen more.
    pub known_miners: Vec<String>,
    /// Regular expressions matched against comm, the exe basename and the command line.
    /// Default: the word "miner", stratum URLs, `--donate-level`, a pool host with a port,
    /// and the names of mining algorithms (randomx, cryptonight, kawpow, ethash, ...).
    pub name_patterns: Vec<String>,
    /// Mean SM utilization (percent) from which utilization counts as sustained. Default 95.
    pub high_util_pct: f64,
    /// The shortest window over which a mean at or above `high_util_pct` counts. Default 10m.
    #[serde(with = "duration")]
    pub high_util_window: Duration,
    /// Running at least this long is a signal. Default 24h.
    #[serde(with = "duration")]
    pub long_duration: Duration,
    /// Local hours in which activity is unusual. Default 0 to 6.
    pub unusual_hours: HourRange,
    /// What each signal adds to the score.
    pub weights: Weights,
    /// Score thresholds of the risk levels.
    pub levels: Levels,
    /// Processes that are not scored (see the module documentation for the semantics).
    pub whitelist: Whitelist,
}

impl Default for RogueConfig {
    fn default() -> Self {
        Self {
            known_miners: [
                "xmrig",
                "xmr-stak",
                "xmr-stak-rx",
                "ethminer",
                "t-rex",
                "nbminer",
                "lolminer",
                "phoenixminer",
                "gminer",
                "nanominer",
                "teamredminer",
                "cgminer",
                "bfgminer",
                "ccminer",
                "cpuminer",
                "minerd",
                "bminer",
                "bzminer",
                "srbminer-multi",
                "wildrig",
                "rigel",
                "miniz",
                "kawpowminer",
                "nheqminer",
                "ethdcrminer64",
                "onezerominer",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            name_patterns: [
                r"(?i)miner",
                r"(?i)stratum\+(tcp|ssl|tls)://",
                r"(?i)--donate-level",
                r"(?i)\bpool\b[\s=]*\S*:\d{2,5}\b",
                r"(?i)\b(randomx|cryptonight|kawpow|ethash|etchash|autolykos2?)\b",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            high_util_pct: 95.0,
            high_util_window: Duration::from_secs(10 * 60),
            long_duration: Duration::from_secs(24 * 3600),
            unusual_hours: HourRange { start: 0, end: 6 },
            weights: Weights::default(),
            levels: Levels::default(),
            whitelist: Whitelist::default(),
        }
    }
}

/// Local hours `start` (included) to `end` (excluded), each 0 to 23. When `start > end`
/// the range crosses midnight (22 to 6 is 22:00-05:59); `start == end` is empty, which
/// turns the signal off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourRange {
    /// First hour in the range.
    pub start: u8,
    /// First hour after the range.
    pub end: u8,
}

impl HourRange {
    /// Whether `hour` lies in the range.
    pub fn contains(&self, hour: u8) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&hour)
        } else {
            hour < 24 && (hour >= self.start || hour < self.end)
        }
    }
}

/// What each signal adds to the score (which is capped at 100). 0 turns a signal off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// comm, exe or argv\[0\] is a known miner. Default 80.
    pub known_miner: u32,
    /// A `name_patterns` regex matches. Default 30.
    pub pattern: u32,
    /// Renamed miner: exe or argv\[0\] is a miner while comm is another program. Default 20.
    pub renamed_miner: u32,
    /// The exe is another program than comm and argv\[0\] (and not a miner). Default 10.
    pub renamed: u32,
    /// Sustained high utilization. Default 20.
    pub high_util: u32,
    /// Running for at least `long_duration`. Default 10.
    pub long_running: u32,
    /// Observed in unusual hours. Default 10.
    pub unusual_hours: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            known_miner: 80,
            pattern: 30,
            renamed_miner: 20,
            renamed: 10,
            high_util: 20,
            long_running: 10,
            unusual_hours: 10,
        }
    }
}

/// The lowest score of each risk level; strictly increasing, from 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Levels {
    /// Default 20.
    pub low: u32,
    /// Default 40.
    pub medium: u32,
    /// Default 60.
    pub high: u32,
    /// Default 80.
    pub critical: u32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            low: 20,
            medium: 40,
            high: 60,
            critical: 80,
        }
    }
}

impl Levels {
    /// The lowest score of `level` (0 for `None`).
    pub fn threshold(&self, level: RiskLevel) -> u32 {
        match level {
            RiskLevel::None => 0,
            RiskLevel::Low => self.low,
            RiskLevel::Medium => self.medium,
            RiskLevel::High => self.high,
            RiskLevel::Critical => self.critical,
        }
    }

    /// The risk level of `score`.
    pub fn level(&self, score: u32) -> RiskLevel {
        if score >= self.critical {
            RiskLevel::Critical
        } else if score >= self.high {
            RiskLevel::High
        } else if score >= self.medium {
            RiskLevel::Medium
        } else if score >= self.low {
            RiskLevel::Low
        } else {
            RiskLevel::None
        }
    }
}

/// Processes exempt from scoring. Entries of one list are OR'ed, non-empty lists are
/// AND'ed, and a renamed miner is never exempt (see the `rogue` module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Whitelist {
    /// User names or uids (in decimal), exact.
    pub users: Vec<String>,
    /// Regular expressions on comm.
    pub names: Vec<String>,
    /// Regular expressions on the command line.
    pub cmdlines: Vec<String>,
}

/// Serde for durations written as `10m`, `24h`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({error}): write it like 10m, 24h or 7days"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::RogueScorer;
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn risk_levels_are_named_and_ordered() {
        for level in RiskLevel::ALL {
            assert_eq!(level.to_string(), level.as_str());
        }
        assert!(RiskLevel::None < RiskLevel::Low);
        assert!(RiskLevel::Low < RiskLevel::Medium);
        assert!(RiskLevel::Medium < RiskLevel::High);
        assert!(RiskLevel::High < RiskLevel::Critical);

        let levels = Levels::default();
        assert_eq!(levels.level(0), RiskLevel::None);
        assert_eq!(levels.level(19), RiskLevel::None);
        assert_eq!(levels.level(20), RiskLevel::Low);
        assert_eq!(levels.level(40), RiskLevel::Medium);
        assert_eq!(levels.level(60), RiskLevel::High);
        assert_eq!(levels.level(80), RiskLevel::Critical);
        assert_eq!(levels.level(100), RiskLevel::Critical);
    }

    #[test]
    fn config_from_toml() {
        let empty: RogueConfig = toml::from_str("").expect("empty config");
        assert_eq!(empty, RogueConfig::default());
        assert!(RogueScorer::new(&empty).is_ok());

        let config: RogueConfig = toml::from_str(
            r#"
            high_util_window = "30m"
            long_duration = "7days"
            unusual_hours = { start = 22, end = 6 }
            weights = { unusual_hours = 0 }
            [whitelist]
            users = ["svc-train"]
            "#,
        )
        .expect("valid config");
        assert_eq!(config.high_util_window, Duration::from_secs(1800));
        assert_eq!(config.long_duration, 7 * 24 * HOUR);
        assert_eq!(config.unusual_hours, HourRange { start: 22, end: 6 });
        assert_eq!(config.weights.unusual_hours, 0);
        assert_eq!(config.weights.known_miner, 80);
        assert_eq!(config.whitelist.users, ["svc-train"]);

        let text = toml::to_string(&config).expect("serializes");
        let again: RogueConfig = toml::from_str(&text).expect("round trip");
        assert_eq!(again, config);

        let error = toml::from_str::<RogueConfig>("bogus = 1").expect_err("unknown key");
        assert!(error.to_string().contains("bogus"), "{error}");
        let error =
            toml::from_str::<RogueConfig>("long_duration = \"soon\"").expect_err("bad duration");
        assert!(error.to_string().contains("soon"), "{error}");
    }
}
