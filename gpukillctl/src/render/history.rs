//! The table, JSON and CSV of `gpukillctl history`.
//!
//! Table: one row per sample (a GPU over one persist interval), oldest first, columns
//! `TIME, GPU, UTIL_MEAN, UTIL_MAX, MEM_MAX_MB, TEMP_MEAN, POWER_MEAN_W, TICKS`: TIME is the
//! interval's start, date and time in the chosen [`TimeZone`]; means with one decimal;
//! MEM_MAX_MB whole MiB; `-` for anything absent. At hourly resolution one row per GPU and
//! hour instead: `HOUR, GPU, UTIL_MEAN, UTIL_MIN, UTIL_MAX, MEM_MEAN_MB, MEM_MAX_MB,
//! TEMP_MEAN, POWER_MEAN_W, ENERGY_WH, SAMPLES`.
//!
//! JSON: `{"resolution": "raw"|"hourly", "samples": [...]}` with the fields of
//! [`SampleJson`], absent values `null`. CSV: the sample fields in the same order under a
//! header row, absent values empty.

use gpukill_proto::v1::{GpuSample, HistoryResponse, Resolution};
use serde::Serialize;

use super::csv::{csv as csv_table, or_empty};
use super::json::document;
use super::mib;
use super::table::{or_absent, table};
use super::time::{TimeZone, date_time, rfc3339_millis};
use crate::error::Error;

/// The JSON document of `gpukillctl history --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryJson {
    /// `raw` (one row per persist interval) or `hourly`.
    pub resolution: &'static str,
    /// The samples, oldest first.
    pub samples: Vec<SampleJson>,
}

/// One GPU over one persist interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleJson {
    /// Start of the interval, RFC 3339 UTC with milliseconds.
    pub time: Option<String>,
    /// Start of the interval, milliseconds since the epoch.
    pub time_unix_ms: i64,
    /// The GPU's index.
    pub gpu_index: u32,
    /// The GPU's UUID.
    pub uuid: Option<String>,
    /// The GPU's product name.
    pub name: Option<String>,
    /// Ticks aggregated.
    pub ticks: u32,
    /// Mean SM utilization, percent.
    pub util_mean: Option<f64>,
    /// Highest SM utilization, percent.
    pub util_max: Option<u32>,
    /// Mean memory-controller utilization, percent.
    pub mem_util_mean: Option<f64>,
    /// Most memory used, bytes.
    pub mem_used_max_bytes: Option<u64>,
    /// Total memory, bytes.
    pub mem_total_bytes: Option<u64>,
    /// Mean temperature, °C.
    pub temp_mean: Option<f64>,
    /// Highest temperature, °C.
    pub temp_max: Option<i32>,
    /// Mean power draw, milliwatts.
    pub power_mean_mw: Option<f64>,
    /// Highest power draw, milliwatts.
    pub power_max_mw: Option<u32>,
    /// The GPU's PCI bus id (raw only).
    pub pci_bus_id: Option<String>,
    /// Mean fan speed, percent (raw only).
    pub fan_mean_pct: Option<f64>,
    /// Mean SM clock, MHz (raw only).
    pub sm_clock_mean_mhz: Option<f64>,
    /// Mean memory clock, MHz (raw only).
    pub mem_clock_mean_mhz: Option<f64>,
    /// Raw samples aggregated: 1 for a raw sample.
    pub samples: u32,
    /// Floor of the lowest sample mean utilization, percent (hourly only).
    pub util_min: Option<u32>,
    /// Mean memory used, bytes (hourly only).
    pub mem_used_mean_bytes: Option<f64>,
    /// Energy used, watt-hours (hourly only).
    pub energy_wh: Option<f64>,
}

/// The CSV header: the JSON field names, in order.
const CSV_HEADER: [&str; 23] = [
    "time",
    "time_unix_ms",
    "gpu_index",
    "uuid",
    "name",
    "ticks",
    "util_mean",
    "util_max",
    "mem_util_mean",
    "mem_used_max_bytes",
    "mem_total_bytes",
    "temp_mean",
    "temp_max",
    "power_mean_mw",
    "power_max_mw",
    "pci_bus_id",
    "fan_mean_pct",
    "sm_clock_mean_mhz",
    "mem_clock_mean_mhz",
    "samples",
    "util_min",
    "mem_used_mean_bytes",
    "energy_wh",
];

impl HistoryJson {
    /// The JSON view of `response`.
    pub fn new(response: &HistoryResponse) -> Self {
        HistoryJson {
            resolution: resolution_name(response.resolution()),
            samples: response.samples.iter().map(SampleJson::new).collect(),
        }
    }
}

impl SampleJson {
    /// The JSON view of one sample.
    pub fn new(sample: &GpuSample) -> Self {
        SampleJson {
            time: rfc3339_millis(sample.time_unix_ms),
            time_unix_ms: sample.time_unix_ms,
            gpu_index: sample.gpu_index,
            uuid: sample.uuid.clone(),
            name: sample.name.clone(),
            ticks: sample.ticks,
            util_mean: sample.util_mean,
            util_max: sample.util_max,
            mem_util_mean: sample.mem_util_mean,
            mem_used_max_bytes: sample.mem_used_max_bytes,
            mem_total_bytes: sample.mem_total_bytes,
            temp_mean: sample.temp_mean,
            temp_max: sample.temp_max,
            power_mean_mw: sample.power_mean_mw,
            power_max_mw: sample.power_max_mw,
            pci_bus_id: sample.pci_bus_id.clone(),
            fan_mean_pct: sample.fan_mean_pct,
            sm_clock_mean_mhz: sample.sm_clock_mean_mhz,
            mem_clock_mean_mhz: sample.mem_clock_mean_mhz,
            samples: sample.samples,
            util_min: sample.util_min,
            mem_used_mean_bytes: sample.mem_used_mean_bytes,
            energy_wh: sample.energy_wh,
        }
    }

    /// The CSV row, in [`CSV_HEADER`] order.
    fn csv_row(self) -> Vec<String> {
        vec![
            or_empty(self.time),
            self.time_unix_ms.to_string(),
            self.gpu_index.to_string(),
            or_empty(self.uuid),
            or_empty(self.name),
            self.ticks.to_string(),
            or_empty(self.util_mean),
            or_empty(self.util_max),
            or_empty(self.mem_util_mean),
            or_empty(self.mem_used_max_bytes),
            or_empty(self.mem_total_bytes),
            or_empty(self.temp_mean),
            or_empty(self.temp_max),
            or_empty(self.power_mean_mw),
            or_empty(self.power_max_mw),
            or_empty(self.pci_bus_id),
            or_empty(self.fan_mean_pct),
            or_empty(self.sm_clock_mean_mhz),
            or_empty(self.mem_clock_mean_mhz),
            self.samples.to_string(),
            or_empty(self.util_min),
            or_empty(self.mem_used_mean_bytes),
            or_empty(self.energy_wh),
        ]
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn json(response: &HistoryResponse) -> Result<String, Error> {
    document(&HistoryJson::new(response))
}

/// `response` as CSV with a header row.
pub fn csv(response: &HistoryResponse) -> String {
    let rows = response
        .samples
        .iter()
        .map(|sample| SampleJson::new(sample).csv_row());
    csv_table(&CSV_HEADER, rows)
}

/// The JSON name of a resolution (the daemon never answers AUTO; a newer daemon's value
/// that this client does not know reads as raw).
fn resolution_name(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Hourly => "hourly",
        Resolution::Raw | Resolution::Unspecified => "raw",
    }
}

/// `response` as a table with times in `tz`, ending in a newline.
pub fn render(response: &HistoryResponse, tz: TimeZone) -> String {
    if response.resolution() == Resolution::Hourly {
        return render_hourly(response, tz);
    }
    let header = [
        "TIME",
        "GPU",
        "UTIL_MEAN",
        "UTIL_MAX",
        "MEM_MAX_MB",
        "TEMP_MEAN",
        "POWER_MEAN_W",
        "TICKS",
    ];
    let one_decimal = |value: Option<f64>| or_absent(value.map(|value| format!("{value:.1}")));
    let rows = response.samples.iter().map(|sample| {
        vec![
            or_absent(date_time(sample.time_unix_ms, tz)),
            sample.gpu_index.to_string(),
            one_decimal(sample.util_mean),
            or_absent(sample.util_max),
            or_absent(sample.mem_used_max_bytes.map(mib)),
            one_decimal(sample.temp_mean),
            one_decimal(sample.power_mean_mw.map(|mw| mw / 1000.0)),
            sample.ticks.to_string(),
        ]
    });
    table(&header, rows)
}

/// The hourly table of [`render`].
fn render_hourly(response: &HistoryResponse, tz: TimeZone) -> String {
    let header = [
        "HOUR",
        "GPU",
        "UTIL_MEAN",
        "UTIL_MIN",
        "UTIL_MAX",
        "MEM_MEAN_MB",
        "MEM_MAX_MB",
        "TEMP_MEAN",
        "POWER_MEAN_W",
        "ENERGY_WH",
        "SAMPLES",
    ];
    let one_decimal = |value: Option<f64>| or_absent(value.map(|value| format!("{value:.1}")));
    let rows = response.samples.iter().map(|sample| {
        vec![
            or_absent(date_time(sample.time_unix_ms, tz)),
            sample.gpu_index.to_string(),
            one_decimal(sample.util_mean),
            or_absent(sample.util_min),
            or_absent(sample.util_max),
            or_absent(sample.mem_used_mean_bytes.map(|bytes| mib(bytes as u64))),
            or_absent(sample.mem_used_max_bytes.map(mib)),
            one_decimal(sample.temp_mean),
            one_decimal(sample.power_mean_mw.map(|mw| mw / 1000.0)),
            one_decimal(sample.energy_wh),
            sample.samples.to_string(),
        ]
    });
    table(&header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use serde_json::{Value, json};

    #[test]
    fn samples_table() {
        assert_snapshot(
            "history-table.txt",
            &render(&testutil::history_response(), TimeZone::Utc),
        );
    }

    #[test]
    fn hourly_table() {
        assert_snapshot(
            "history-hourly-table.txt",
            &render(&testutil::hourly_history_response(), TimeZone::Utc),
        );
        let text = json(&testutil::hourly_history_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual["resolution"], "hourly");
        assert_eq!(actual["samples"][0]["samples"], 360);
        assert_eq!(actual["samples"][0]["util_min"], 12);
        assert_eq!(actual["samples"][1]["energy_wh"], Value::Null);
    }

    #[test]
    fn the_response_renders_to_the_documented_json() {
        let text = json(&testutil::history_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            actual,
            json!({
                "samples": [
                    {
                        "time": "2024-05-01T11:59:50.000Z",
                        "time_unix_ms": 1_714_564_790_000_i64,
                        "gpu_index": 0,
                        "uuid": "GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a",
                        "name": "NVIDIA A100-SXM4-80GB",
                        "ticks": 10,
                        "util_mean": 87.5,
                        "util_max": 99,
                        "mem_util_mean": 45.0,
                        "mem_used_max_bytes": 26_843_545_600_u64,
                        "mem_total_bytes": 85_899_345_920_u64,
                        "temp_mean": 64.25,
                        "temp_max": 66,
                        "power_mean_mw": 245_123.5,
                        "power_max_mw": 250_000,
                        "pci_bus_id": "00000000:17:00.0",
                        "fan_mean_pct": 35.0,
                        "sm_clock_mean_mhz": 1410.0,
                        "mem_clock_mean_mhz": 1593.0,
                        "samples": 1,
                        "util_min": null,
                        "mem_used_mean_bytes": null,
                        "energy_wh": null
                    },
                    {
                        "time": "2024-05-01T12:00:00.000Z",
                        "time_unix_ms": 1_714_564_800_000_i64,
                        "gpu_index": 0,
                        "uuid": null,
                        "name": "A100, \"SXM4\"",
                        "ticks": 3,
                        "util_mean": null,
                        "util_max": null,
                        "mem_util_mean": null,
                        "mem_used_max_bytes": null,
                        "mem_total_bytes": null,
                        "temp_mean": null,
                        "temp_max": null,
                        "power_mean_mw": null,
                        "power_max_mw": null,
                        "pci_bus_id": null,
                        "fan_mean_pct": null,
                        "sm_clock_mean_mhz": null,
                        "mem_clock_mean_mhz": null,
                        "samples": 1,
                        "util_min": null,
                        "mem_used_mean_bytes": null,
                        "energy_wh": null
                    }
                ],
                "resolution": "raw"
            })
        );
    }

    #[test]
    fn csv_has_a_header_and_quotes_what_needs_it() {
        assert_eq!(
            csv(&testutil::history_response()),
            format!(
                "{}\n\
                 2024-05-01T11:59:50.000Z,1714564790000,0,GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a,\
                 NVIDIA A100-SXM4-80GB,10,87.5,99,45,26843545600,85899345920,64.25,66,245123.5,250000,\
                 00000000:17:00.0,35,1410,1593,1,,,\n\
                 2024-05-01T12:00:00.000Z,1714564800000,0,,\"A100, \"\"SXM4\"\"\",3,,,,,,,,,,,,,,1,,,\n",
                CSV_HEADER.join(",")
            )
        );
    }
}
