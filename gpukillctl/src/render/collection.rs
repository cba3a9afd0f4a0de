//! The JSON and CSV of `gpukillctl collection show`: one object (or row) per GPU in
//! gpu_monitor's collection format: `timestamp, uid, pci_bus_id, name, temperature,
//! memory_used, memory_total, gpu_utilization, memory_utilization, power_usage, fan_speed,
//! graphics_clock, memory_clock`. Memory in MiB, power in W, clocks in MHz; absent values
//! are `null` (JSON) or empty (CSV).

use gpukill_proto::v1::GpuSample;
use serde::Serialize;

use super::csv::{csv as csv_table, or_empty};
use super::json::document;
use super::mib;
use super::time::rfc3339_millis;
use crate::error::Error;

/// One GPU's sample in gpu_monitor's field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionJson {
    /// Start of the sample's persist interval, RFC 3339 UTC with milliseconds.
    pub timestamp: Option<String>,
    /// The GPU's UUID.
    pub uid: Option<String>,
    /// The GPU's PCI bus id.
    pub pci_bus_id: Option<String>,
    /// The GPU's product name.
    pub name: Option<String>,
    /// Mean temperature, °C.
    pub temperature: Option<f64>,
    /// Most memory used, MiB.
    pub memory_used: Option<u64>,
    /// Total memory, MiB.
    pub memory_total: Option<u64>,
    /// Mean SM utilization, percent.
    pub gpu_utilization: Option<f64>,
    /// Mean memory-controller utilization, percent.
    pub memory_utilization: Option<f64>,
    /// Mean power draw, W.
    pub power_usage: Option<f64>,
    /// Mean fan speed, percent.
    pub fan_speed: Option<f64>,
    /// Mean SM clock, MHz.
    pub graphics_clock: Option<f64>,
    /// Mean memory clock, MHz.
    pub memory_clock: Option<f64>,
}

const CSV_HEADER: [&str; 13] = [
    "timestamp",
    "uid",
    "pci_bus_id",
    "name",
    "temperature",
    "memory_used",
    "memory_total",
    "gpu_utilization",
    "memory_utilization",
    "power_usage",
    "fan_speed",
    "graphics_clock",
    "memory_clock",
];

impl CollectionJson {
    /// The collection view of one sample.
    pub fn new(sample: &GpuSample) -> Self {
        CollectionJson {
            timestamp: rfc3339_millis(sample.time_unix_ms),
            uid: sample.uuid.clone(),
            pci_bus_id: sample.pci_bus_id.clone(),
            name: sample.name.clone(),
            temperature: sample.temp_mean,
            memory_used: sample.mem_used_max_bytes.map(mib),
            memory_total: sample.mem_total_bytes.map(mib),
            gpu_utilization: sample.util_mean,
            memory_utilization: sample.mem_util_mean,
            power_usage: sample.power_mean_mw.map(|mw| mw / 1000.0),
            fan_speed: sample.fan_mean_pct,
            graphics_clock: sample.sm_clock_mean_mhz,
            memory_clock: sample.mem_clock_mean_mhz,
        }
    }

    fn csv_row(self) -> Vec<String> {
        vec![
            or_empty(self.timestamp),
            or_empty(self.uid),
            or_empty(self.pci_bus_id),
            or_empty(self.name),
            or_empty(self.temperature),
            or_empty(self.memory_used),
            or_empty(self.memory_total),
            or_empty(self.gpu_utilization),
            or_empty(self.memory_utilization),
            or_empty(self.power_usage),
            or_empty(self.fan_speed),
            or_empty(self.graphics_clock),
            or_empty(self.memory_clock),
        ]
    }
}

/// `samples` as an indented JSON array, ending in a newline.
pub fn json(samples: &[GpuSample]) -> Result<String, Error> {
    document(&samples.iter().map(CollectionJson::new).collect::<Vec<_>>())
}

/// `samples` as CSV with a header row.
pub fn csv(samples: &[GpuSample]) -> String {
    csv_table(
        &CSV_HEADER,
        samples
            .iter()
            .map(|sample| CollectionJson::new(sample).csv_row()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use serde_json::{Value, json as value};

    #[test]
    fn a_sample_in_gpu_monitor_fields() {
        let samples = testutil::history_response().samples;
        let actual: Value =
            serde_json::from_str(&json(&samples[..1]).expect("encode")).expect("JSON");
        assert_eq!(
            actual,
            value!([{
                "timestamp": "2024-05-01T11:59:50.000Z",
                "uid": "GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a",
                "pci_bus_id": "00000000:17:00.0",
                "name": "NVIDIA A100-SXM4-80GB",
                "temperature": 64.25,
                "memory_used": 25_600,
                "memory_total": 81_920,
                "gpu_utilization": 87.5,
                "memory_utilization": 45.0,
                "power_usage": 245.1235,
                "fan_speed": 35.0,
                "graphics_clock": 1410.0,
                "memory_clock": 1593.0
            }])
        );
        assert_eq!(
            csv(&samples),
            format!(
                "{}\n\
                 2024-05-01T11:59:50.000Z,GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a,00000000:17:00.0,\
                 NVIDIA A100-SXM4-80GB,64.25,25600,81920,87.5,45,245.1235,35,1410,1593\n\
                 2024-05-01T12:00:00.000Z,,,\"A100, \"\"SXM4\"\"\",,,,,,,,,\n",
                CSV_HEADER.join(",")
            )
        );
    }
}
