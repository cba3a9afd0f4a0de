//! The GPU and process families: dcgm-exporter's names, units and labels for NVIDIA GPUs,
//! `gpukill_gpu_*` for AMD and Intel, and the per-process families.

use std::fmt::Write;

use super::exposition::{Exposition, Family, Value, escape_into};
use crate::snapshot::{Gpu, Snapshot, Vendor};
pub(super) const MIB: u64 = 1024 * 1024;

/// A dcgm-exporter GPU metric: name, type and help (dcgm-exporter's own), and how to read it.
struct DcgmMetric {
    name: &'static str,
    /// The name of the same metric for AMD and Intel GPUs, which dcgm-exporter does not
    /// report (a dashboard filtering on DCGM names must not mistake them for NVIDIA's).
    own_name: &'static str,
    /// Its help.
    own_help: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Gpu) -> Option<Value>,
}

/// The dcgm-exporter default counters the snapshot can answer, in the order of its
/// `default-counters.csv`. The energy counter is NVML's own (since the driver loaded, Volta
/// and newer), never integrated from power: a made-up counter would break `increase()`.
const DCGM_METRICS: &[DcgmMetric] = &[
    DcgmMetric {
        name: "DCGM_FI_DEV_SM_CLOCK",
        own_name: "gpukill_gpu_sm_clock_mhz",
        own_help: "Core (shader) clock frequency (in MHz).",
        kind: "gauge",
        help: "SM clock frequency (in MHz).",
        value: |gpu| gpu.clock_sm_mhz.map(|v| Value::Int(v.into())),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_MEM_CLOCK",
        own_name: "gpukill_gpu_memory_clock_mhz",
        own_help: "Memory clock frequency (in MHz).",
        kind: "gauge",
        help: "Memory clock frequency (in MHz).",
        value: |gpu| gpu.clock_mem_mhz.map(|v| Value::Int(v.into())),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_GPU_TEMP",
        own_name: "gpukill_gpu_temperature_celsius",
        own_help: "GPU temperature (in C).",
        kind: "gauge",
        help: "GPU temperature (in C).",
        value: |gpu| gpu.temperature_c.map(|v| Value::Int(v.into())),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_POWER_USAGE",
        own_name: "gpukill_gpu_power_watts",
        own_help: "Power draw (in W).",
        kind: "gauge",
        help: "Power draw (in W).",
        value: |gpu| gpu.power_mw.map(|v| Value::Float(f64::from(v) / 1000.0)),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        own_name: "gpukill_gpu_energy_millijoules_total",
        own_help: "Energy used since the driver loaded (in mJ).",
        kind: "counter",
        help: "Total energy consumption since boot (in mJ).",
        value: |gpu| gpu.energy_total_mj.map(Value::Uint),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_GPU_UTIL",
        own_name: "gpukill_gpu_utilization_percent",
        own_help: "GPU utilization (in %).",
        kind: "gauge",
        help: "GPU utilization (in %).",
        value: |gpu| gpu.utilization_gpu_pct.map(|v| Value::Int(v.into())),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        own_name: "gpukill_gpu_memory_utilization_percent",
        own_help: "Memory utilization (in %).",
        kind: "gauge",
        help: "Memory utilization (in %).",
        value: |gpu| gpu.utilization_memory_pct.map(|v| Value::Int(v.into())),
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_FB_FREE",
        own_name: "gpukill_gpu_memory_free_mib",
        own_help: "Device memory free (in MiB).",
        kind: "gauge",
        help: "Framebuffer memory free (in MiB).",
        value: |gpu| match (gpu.memory_total_bytes, gpu.memory_used_bytes) {
            (Some(total), Some(used)) => Some(Value::Int(
                i64::try_from(total.saturating_sub(used) / MIB).unwrap_or(i64::MAX),
            )),
            _ => None,
        },
    },
    DcgmMetric {
        name: "DCGM_FI_DEV_FB_USED",
        own_name: "gpukill_gpu_memory_used_mib",
        own_help: "Device memory used (in MiB).",
        kind: "gauge",
        help: "Framebuffer memory used (in MiB).",
        value: |gpu| {
            gpu.memory_used_bytes
                .map(|used| Value::Int(i64::try_from(used / MIB).unwrap_or(i64::MAX)))
        },
    },
];

/// The driver version `vendor`'s library reported, when known.
fn driver_version(snapshot: &Snapshot, vendor: Vendor) -> Option<&str> {
    snapshot
        .vendors
        .iter()
        .find(|status| status.vendor == vendor)
        .and_then(|status| status.driver_version.as_deref())
}

pub(super) fn render_gpus(out: &mut Exposition, snapshot: &Snapshot) {
    // dcgm-exporter's labels, with `device` as it names NVIDIA GPUs (`nvidia<index>`) and
    // likewise `amd<index>` and `intel<index>` (the index within the vendor). AMD and Intel
    // GPUs also carry a `vendor` label.
    let mut labels = String::new();
    let mut starts = Vec::new();
    // Where each GPU's `gpu` and `UUID` labels end: gpukill's own GPU metrics use only
    // those and `vendor` (dcgm-exporter's `modelName` is not the snake case Prometheus
    // recommends).
    let mut short_ends = Vec::new();
    for (vendor, gpu) in snapshot.gpus() {
        starts.push(labels.len());
        let _ = write!(labels, "gpu=\"{}\",UUID=\"", gpu.index);
        escape_into(&mut labels, gpu.uuid.as_deref().unwrap_or(""));
        labels.push('"');
        short_ends.push(labels.len());
        labels.push_str(",pci_bus_id=\"");
        escape_into(&mut labels, gpu.pci_bus_id.as_deref().unwrap_or(""));
        let _ = write!(
            labels,
            "\",device=\"{}{}\",modelName=\"",
            vendor.name(),
            gpu.vendor_index
        );
        escape_into(&mut labels, gpu.name.as_deref().unwrap_or(""));
        labels.push_str("\",Hostname=\"");
        escape_into(&mut labels, &snapshot.host);
        labels.push('"');
        // As dcgm-exporter labels every GPU metric (its default counters' `label` field).
        if vendor == Vendor::Nvidia
            && let Some(driver) = driver_version(snapshot, vendor)
        {
            labels.push_str(",DCGM_FI_DRIVER_VERSION=\"");
            escape_into(&mut labels, driver);
            labels.push('"');
        }
        if vendor != Vendor::Nvidia {
            let _ = write!(labels, ",vendor=\"{}\"", vendor.name());
        }
    }
    starts.push(labels.len());
    let gpu_labels = |n: usize| &labels[starts[n]..starts[n + 1]];
    let nvidia = |vendor: Vendor| vendor == Vendor::Nvidia;
    let other = |vendor: Vendor| vendor != Vendor::Nvidia;
    let any = |_: Vendor| true;
    for metric in DCGM_METRICS {
        let family = out.family(metric.name, metric.kind, metric.help);
        gpu_samples(family, snapshot, gpu_labels, nvidia, metric.value);
    }
    for metric in DCGM_METRICS {
        let family = out.family(metric.own_name, metric.kind, metric.own_help);
        gpu_samples(family, snapshot, gpu_labels, other, metric.value);
    }
    let gtt_used = out.family(
        "gpukill_gpu_gtt_used_bytes",
        "gauge",
        "AMD: system memory mapped for the GPU (GTT) in use, bytes.",
    );
    gpu_samples(gtt_used, snapshot, gpu_labels, any, |gpu| {
        gpu.gtt_used_bytes.map(Value::Uint)
    });
    let gtt_total = out.family(
        "gpukill_gpu_gtt_total_bytes",
        "gauge",
        "AMD: size of the GTT, bytes.",
    );
    gpu_samples(gtt_total, snapshot, gpu_labels, any, |gpu| {
        gpu.gtt_total_bytes.map(Value::Uint)
    });
    super::health::render_health(out, snapshot, gpu_labels, |n| {
        &labels[starts[n]..short_ends[n]]
    });
    let mut up = out.family(
        "gpukill_gpu_up",
        "gauge",
        "Whether the GPU answered this tick (0: lost or unreadable, its metrics are absent).",
    );
    for (n, (vendor, gpu)) in snapshot.gpus().enumerate() {
        up.sample(
            &labels[starts[n]..short_ends[n]],
            &[("vendor", vendor.name())],
            Value::Bool(gpu.error.is_none()),
        );
    }
}

/// One sample per GPU of a vendor `of` accepts that reports `value`, with the GPU's labels
/// (`labels(n)` for the n-th GPU of the snapshot).
pub(super) fn gpu_samples<'a>(
    mut family: Family<'_>,
    snapshot: &Snapshot,
    labels: impl Fn(usize) -> &'a str,
    of: impl Fn(Vendor) -> bool,
    value: impl Fn(&Gpu) -> Option<Value>,
) {
    for (n, (vendor, gpu)) in snapshot.gpus().enumerate() {
        if of(vendor)
            && let Some(value) = value(gpu)
        {
            family.sample(labels(n), &[], value);
        }
    }
}

pub(super) fn render_processes(out: &mut Exposition, snapshot: &Snapshot) {
    // One label set per process, built once and used by both families.
    let mut labels = String::new();
    let mut rows: Vec<(usize, Option<u64>, Option<u32>)> = Vec::new();
    for (_, data) in &snapshot.data {
        for process in data.processes.iter() {
            let slot = process.slot;
            let info = &slot.info;
            let uuid = data
                .gpus
                .iter()
                .find(|gpu| gpu.index == slot.gpu_index)
                .and_then(|gpu| gpu.uuid.as_deref())
                .unwrap_or("");
            rows.push((
                labels.len(),
                process.used_memory_bytes,
                process.sm_utilization_pct,
            ));
            let _ = write!(labels, "gpu=\"{}\",UUID=\"", slot.gpu_index);
            escape_into(&mut labels, uuid);
            let _ = write!(labels, "\",pid=\"{}\",user=\"", info.pid);
            escape_into(&mut labels, &info.user);
            labels.push_str("\",process=\"");
            escape_into(&mut labels, &info.name);
            labels.push_str("\",container=\"");
            if let Some(container) = &info.container {
                escape_into(&mut labels, &container.id);
            }
            labels.push('"');
        }
    }
    let end = labels.len();
    let label_of = |n: usize| {
        let next = rows.get(n + 1).map_or(end, |row| row.0);
        &labels[rows[n].0..next]
    };
    let mut memory = out.family(
        "gpukill_process_gpu_memory_bytes",
        "gauge",
        "GPU memory used by a process (absent when the driver does not report it).",
    );
    for (n, row) in rows.iter().enumerate() {
        if let Some(bytes) = row.1 {
            memory.sample(label_of(n), &[], Value::Uint(bytes));
        }
    }
    let mut sm = out.family(
        "gpukill_process_sm_utilization_percent",
        "gauge",
        "A process's share of SM time over the last sample period, in percent (absent when the driver does not report it).",
    );
    for (n, row) in rows.iter().enumerate() {
        if let Some(pct) = row.2 {
            sm.sample(label_of(n), &[], Value::Uint(pct.into()));
        }
    }
}
