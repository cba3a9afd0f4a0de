//! The record of the original gpukill's `audit.jsonl`: what `audit export` writes and
//! `audit import` reads. Field names and meanings are gpukill's and must never change:
//! `id` (gpukill used the time in ms, plus the pid for a process record), `timestamp` (RFC
//! 3339 UTC), `gpu_index`, `gpu_name`, `pid`, `user` and `process_name` (null on a GPU
//! record), `memory_used_mb` (MiB), `utilization_pct`, `temperature_c` and `power_w` (0 on a
//! process record), `container`.

use std::time::UNIX_EPOCH;

use gpukill_proto::v1::AuditRecord;
use serde::{Deserialize, Serialize};

use super::time::rfc3339_millis;

/// One line of a gpukill audit.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpukillRecord {
    /// gpukill's id: the time in ms (plus the pid for a process record). Not unique; ignored
    /// on import.
    #[serde(default)]
    pub id: i64,
    /// When the record was taken, RFC 3339.
    pub timestamp: String,
    /// The GPU's index.
    pub gpu_index: u32,
    /// The GPU's product name.
    pub gpu_name: String,
    /// The process (process records only).
    pub pid: Option<u32>,
    /// The process owner's user name.
    pub user: Option<String>,
    /// The process name.
    pub process_name: Option<String>,
    /// Memory used by the GPU (or the process), MiB.
    pub memory_used_mb: u64,
    /// SM utilization, percent.
    pub utilization_pct: f64,
    /// Temperature, °C.
    pub temperature_c: i32,
    /// Power draw, W.
    pub power_w: f64,
    /// The process's container, if any.
    pub container: Option<String>,
}

impl GpukillRecord {
    /// A record taken at `time_ms` with everything else empty; gpukill's id convention.
    pub fn at(time_ms: i64, gpu_index: u32, gpu_name: &str, pid: Option<u32>) -> Self {
        GpukillRecord {
            id: time_ms.saturating_add(pid.map_or(0, i64::from)),
            timestamp: rfc3339_millis(time_ms).unwrap_or_default(),
            gpu_index,
            gpu_name: gpu_name.to_owned(),
            pid,
            user: None,
            process_name: None,
            memory_used_mb: 0,
            utilization_pct: 0.0,
            temperature_c: 0,
            power_w: 0.0,
            container: None,
        }
    }

    /// Parses one line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Self, String> {
        let record: GpukillRecord = serde_json::from_str(line)
            .map_err(|err| format!("not a gpukill audit record: {err}"))?;
        if parse_timestamp(&record.timestamp).is_none() {
            return Err(format!(
                "timestamp {:?} is not an RFC 3339 time (2024-05-01T12:00:00Z)",
                record.timestamp
            ));
        }
        Ok(record)
    }

    /// The ImportAudit message of this record, from line `line` of its file.
    pub fn to_proto(&self, line: u64) -> AuditRecord {
        AuditRecord {
            line,
            time_unix_ms: parse_timestamp(&self.timestamp).unwrap_or_default(),
            gpu_index: self.gpu_index,
            gpu_name: self.gpu_name.clone(),
            pid: self.pid,
            user: self.user.clone(),
            process_name: self.process_name.clone(),
            memory_used_mib: self.memory_used_mb,
            utilization_pct: self.utilization_pct,
            temperature_c: self.temperature_c,
            power_w: self.power_w,
            container: self.container.clone(),
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time: `Z` or a `±HH:MM` offset (as chrono,
/// which gpukill used, writes and reads them), any number of fractional digits.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let (base, offset_minutes) = split_offset(text)?;
    let time = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
    let ms = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_millis()).ok()?,
    };
    Some(ms - offset_minutes * 60_000)
}

/// `text` without its zone, and the zone's offset east of UTC in minutes.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(base) = text.strip_suffix(['Z', 'z']) {
        return Some((base, 0));
    }
    let (base, zone) = text.split_at_checked(text.len().checked_sub(6)?)?;
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((base, sign * (hours * 60 + minutes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 1_714_564_800_000;

    #[test]
    fn timestamps_as_chrono_writes_them() {
        for (text, ms) in [
            ("2024-05-01T12:00:00Z", Some(NOON)),
            ("2024-05-01T12:00:00.123456789Z", Some(NOON + 123)),
            ("2024-05-01T14:30:00+02:30", Some(NOON)),
            ("2024-05-01T11:00:00.5-01:00", Some(NOON + 500)),
            ("2024-05-01T12:00:00", None),
            ("2024-05-01T12:00:00+25:00", None),
            ("yesterday", None),
            ("", None),
        ] {
            assert_eq!(parse_timestamp(text), ms, "{text}");
        }
    }

    #[test]
    fn a_gpukill_line_parses_and_a_bad_one_says_why() {
        let line = r#"{"id":1714564800042,"timestamp":"2024-05-01T12:00:00.000Z","gpu_index":1,"gpu_name":"NVIDIA A100","pid":42,"user":"alice","process_name":"python","memory_used_mb":2048,"utilization_pct":0.0,"temperature_c":0,"power_w":0.0,"container":null,"node_id":"n1"}"#;
        let record = GpukillRecord::parse(line).expect("valid");
        assert_eq!(record.pid, Some(42));
        let message = record.to_proto(7);
        assert_eq!(
            (message.line, message.time_unix_ms, message.memory_used_mib),
            (7, NOON, 2048)
        );
        assert!(
            GpukillRecord::parse("{\"timestamp\": 3}")
                .expect_err("bad")
                .starts_with("not a gpukill audit record: invalid type: integer `3`")
        );
        assert_eq!(
            GpukillRecord::parse(&line.replace("2024-05-01T12:00:00.000Z", "noon"))
                .expect_err("bad"),
            "timestamp \"noon\" is not an RFC 3339 time (2024-05-01T12:00:00Z)"
        );
    }

    #[test]
    fn export_and_parse_round_trip() {
        let mut record = GpukillRecord::at(NOON, 0, "A100", Some(9));
        record.user = Some("bob".to_owned());
        record.process_name = Some("train".to_owned());
        assert_eq!(record.id, NOON + 9);
        let line = serde_json::to_string(&record).expect("encode");
        assert_eq!(GpukillRecord::parse(&line), Ok(record));
    }
}
