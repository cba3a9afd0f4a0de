//! Option values that several commands take: output formats, the vendor filter, and points in
//! time and durations with their parsers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use gpukill_proto::v1::Vendor;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// JSON, with the field names of the original gpukill.
    Json,
}

/// How a report (`audit`, `history`) prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Human-readable tables.
    Table,
    /// JSON.
    Json,
    /// CSV with a header row.
    Csv,
}

/// The `--vendor` choices; `all` means no vendor filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VendorArg {
    /// NVIDIA GPUs.
    Nvidia,
    /// AMD GPUs.
    Amd,
    /// Intel GPUs.
    Intel,
    /// Apple Silicon GPUs.
    Apple,
    /// Every vendor.
    All,
}

impl From<VendorArg> for Vendor {
    fn from(arg: VendorArg) -> Self {
        match arg {
            VendorArg::Nvidia => Vendor::Nvidia,
            VendorArg::Amd => Vendor::Amd,
            VendorArg::Intel => Vendor::Intel,
            VendorArg::Apple => Vendor::Apple,
            VendorArg::All => Vendor::Unspecified,
        }
    }
}

/// A point in time on the command line: absolute, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// An RFC 3339 time.
    At(SystemTime),
    /// This long before now.
    Ago(Duration),
}

impl TimeArg {
    /// Milliseconds since the epoch, `Ago` counted back from `now`; 0 for anything before
    /// the epoch.
    pub fn unix_ms(self, now: SystemTime) -> i64 {
        let time = match self {
            TimeArg::At(time) => Some(time),
            TimeArg::Ago(ago) => now.checked_sub(ago),
        };
        time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
            })
    }
}

/// The window `since`..`until` (default now), or the last `hours` when `since` is absent,
/// in milliseconds since the epoch, counted back from `now`.
pub fn window(
    hours: u32,
    since: Option<TimeArg>,
    until: Option<TimeArg>,
    now: SystemTime,
) -> (i64, i64) {
    let until = until.unwrap_or(TimeArg::Ago(Duration::ZERO));
    let since = since.unwrap_or(TimeArg::Ago(Duration::from_secs(u64::from(hours) * 3600)));
    (since.unix_ms(now), until.unix_ms(now))
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2024-05-01T12:00:00Z`) or a humantime
/// duration ago (`2h`, `1h 30m`).
pub fn parse_time(value: &str) -> Result<TimeArg, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(TimeArg::Ago(ago));
    }
    humantime::parse_rfc3339_weak(value)
        .map(TimeArg::At)
        .map_err(|_| "use RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (2h)".to_owned())
}

/// Parses a humantime duration (`30m`, `2h`, `7d`, `1h 30m`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|err| err.to_string())
}

/// Parses a humantime duration that is not zero (`30m`, `4h`, `1h 30m`).
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero".to_owned());
    }
    Ok(duration)
}

/// `duration` in whole milliseconds, for the API; 0 (the API's "not given") when `None`.
pub fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |duration| {
        // Rounded up, so that a duration under a millisecond is not taken for "not given".
        let partial = u128::from(duration.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(duration.as_millis() + partial).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_count_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(TimeArg::Ago(Duration::from_secs(1)).unix_ms(now), 9_999_000);
        assert_eq!(TimeArg::Ago(Duration::from_secs(20_000)).unix_ms(now), 0);
        assert_eq!(TimeArg::At(now).unix_ms(UNIX_EPOCH), 10_000_000);
    }

    #[test]
    fn vendor_names_match_the_proto_names() {
        for arg in VendorArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            assert_eq!(Vendor::from(*arg).cli_name(), name);
        }
    }
}
