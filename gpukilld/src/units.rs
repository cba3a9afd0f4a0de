//! Units every layer may use: byte counts (`"20GiB"`), durations (`"500ms"`, `"2h"`), times
//! of day and days of the week, with their serde forms. A leaf: it imports nothing of the
//! crate.

use serde::Deserialize;

/// A byte count, written `"20GiB"`, `"512 MiB"`, `"1.5GB"` or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(bytes) => Ok(Bytes(bytes)),
            Raw::Text(text) => parse_bytes(&text)
                .map(Bytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"20GiB"`, `"512 MiB"`, `"1.5GB"`, `"4096"`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad_size(text)),
    };
    let value: f64 = number.parse().map_err(|_| bad_size(text))?;
    let bytes = value * scale as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(bad_size(text));
    }
    Ok(bytes.round() as u64)
}

fn bad_size(text: &str) -> String {
    format!("invalid size {text:?}: write it like 512MiB, 20GiB or 1.5TB")
}

/// Days of the week, as windows name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// All seven, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The day before.
    pub fn previous(self) -> Weekday {
        Weekday::ALL[(self as usize + 6) % 7]
    }
}

/// A local time of the week: the day and the minute of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// The day.
    pub weekday: Weekday,
    /// Minutes since local midnight, 0 to 1439.
    pub minute: u16,
}

/// A time of day, `"HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u16);

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let parsed = text.split_once(':').and_then(|(hours, minutes)| {
            let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
            (hours < 24 && minutes < 60 && text.len() == 5).then_some(hours * 60 + minutes)
        });
        parsed.map(TimeOfDay).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid time {text:?}: write it as HH:MM, e.g. 22:00"
            ))
        })
    }
}

/// Serde for durations written as `500ms`, `2s`, `1h`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `value` as [`format`] does.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*value))
    }

    /// A duration in the largest unit that holds it exactly ("90days", "2h", "500ms"), which
    /// reads better than humantime's calendar split ("2months 29days 2h 52m 48s").
    pub fn format(value: Duration) -> String {
        let millis = value.as_millis();
        let units: [(u128, &str); 4] = [
            (86_400_000, "days"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        units
            .iter()
            .find(|(size, _)| millis >= *size && millis.is_multiple_of(*size))
            .map(|(size, unit)| format!("{}{unit}", millis / size))
            .unwrap_or_else(|| format!("{millis}ms"))
    }

    /// Reads `500ms`, `2s`, `1h`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({error}): write it like 500ms, 2s or 1h"
            ))
        })
    }
}

/// A byte count read as an integer or as `"1GiB"`, written as an integer.
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the count as an integer.
    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value)
    }

    /// Reads an integer or a size such as `"1GiB"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        super::Bytes::deserialize(deserializer).map(|bytes| bytes.0)
    }
}

/// Serde for `Option<Duration>` written like `duration`.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Reads an optional `500ms`, `2s`, `1h`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| {
            humantime::parse_duration(&text).map_err(|error| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({error}): write it like 500ms, 2s or 1h"
                ))
            })
        })
        .transpose()
    }
}
