//! The GPU health families: dcgm-exporter's names for NVIDIA's error counters, throttle
//! reasons, performance state and profiling (GPM) fields, and gpukill's own for the assessed
//! state, Xid counts (counters that never lose an Xid between scrapes) and AMD's RAS counts.

use super::exposition::{Exposition, Value};
use super::gpus::gpu_samples;
use crate::health::{HealthReading, HealthState};
use crate::snapshot::{Gpu, Snapshot, Vendor};

/// A dcgm-exporter health field: name, type, help, and how to read it.
struct DcgmField {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Gpu) -> Option<Value>,
}

fn count(value: Option<u64>) -> Option<Value> {
    value.map(Value::Uint)
}

fn flag(value: Option<bool>) -> Option<Value> {
    value.map(Value::Bool)
}

fn ratio(value: Option<f64>) -> Option<Value> {
    value.map(Value::Float)
}

fn reading(gpu: &Gpu) -> &HealthReading {
    &gpu.health.reading
}

/// NVIDIA's health fields under dcgm-exporter's names (its `default-counters.csv` and
/// `dcp-metrics-included.csv`).
const DCGM_FIELDS: &[DcgmField] = &[
    DcgmField {
        name: "DCGM_FI_DEV_XID_ERRORS",
        kind: "gauge",
        help: "Value of the last XID error encountered.",
        value: |gpu| gpu.health.last_xid().map(Value::Uint),
    },
    DcgmField {
        name: "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        kind: "gauge",
        help: "Current clock throttle reasons (bitmask of DCGM_CLOCKS_THROTTLE_REASON_*).",
        value: |gpu| count(reading(gpu).throttle.map(|throttle| throttle.0)),
    },
    DcgmField {
        name: "DCGM_FI_DEV_PSTATE",
        kind: "gauge",
        help: "Performance state (P-State) 0-15. 0=highest.",
        value: |gpu| reading(gpu).pstate.map(|p| Value::Uint(p.into())),
    },
    DcgmField {
        name: "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        kind: "counter",
        help: "Total number of PCIe retries.",
        value: |gpu| count(reading(gpu).pcie_replay),
    },
    DcgmField {
        name: "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        kind: "counter",
        help: "Total number of single-bit volatile ECC errors.",
        value: |gpu| count(reading(gpu).ecc_sbe_volatile),
    },
    DcgmField {
        name: "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        kind: "counter",
        help: "Total number of double-bit volatile ECC errors.",
        value: |gpu| count(reading(gpu).ecc_dbe_volatile),
    },
    DcgmField {
        name: "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        kind: "counter",
        help: "Total number of single-bit persistent ECC errors.",
        value: |gpu| count(reading(gpu).ecc_sbe_aggregate),
    },
    DcgmField {
        name: "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        kind: "counter",
        help: "Total number of double-bit persistent ECC errors.",
        value: |gpu| count(reading(gpu).ecc_dbe_aggregate),
    },
    DcgmField {
        name: "DCGM_FI_DEV_RETIRED_SBE",
        kind: "counter",
        help: "Total number of retired pages due to single-bit errors.",
        value: |gpu| count(reading(gpu).retired_sbe),
    },
    DcgmField {
        name: "DCGM_FI_DEV_RETIRED_DBE",
        kind: "counter",
        help: "Total number of retired pages due to double-bit errors.",
        value: |gpu| count(reading(gpu).retired_dbe),
    },
    DcgmField {
        name: "DCGM_FI_DEV_RETIRED_PENDING",
        kind: "counter",
        help: "Total number of pages pending retirement.",
        value: |gpu| flag(reading(gpu).retired_pending),
    },
    DcgmField {
        name: "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        kind: "counter",
        help: "Number of remapped rows for correctable errors.",
        value: |gpu| count(reading(gpu).remapped_correctable),
    },
    DcgmField {
        name: "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        kind: "counter",
        help: "Number of remapped rows for uncorrectable errors.",
        value: |gpu| count(reading(gpu).remapped_uncorrectable),
    },
    DcgmField {
        name: "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        kind: "gauge",
        help: "Whether remapping of rows has failed.",
        value: |gpu| flag(reading(gpu).remap_failure),
    },
    DcgmField {
        name: "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        kind: "gauge",
        help: "Ratio of time the graphics engine is active.",
        value: |gpu| ratio(gpu.gpm.and_then(|gpm| gpm.graphics_engine)),
    },
    DcgmField {
        name: "DCGM_FI_PROF_SM_ACTIVE",
        kind: "gauge",
        help: "The ratio of cycles an SM has at least 1 warp assigned.",
        value: |gpu| ratio(gpu.gpm.and_then(|gpm| gpm.sm)),
    },
    DcgmField {
        name: "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        kind: "gauge",
        help: "Ratio of cycles the tensor (HMMA) pipe is active.",
        value: |gpu| ratio(gpu.gpm.and_then(|gpm| gpm.tensor)),
    },
    DcgmField {
        name: "DCGM_FI_PROF_DRAM_ACTIVE",
        kind: "gauge",
        help: "Ratio of cycles the device memory interface is active sending or receiving data.",
        value: |gpu| ratio(gpu.gpm.and_then(|gpm| gpm.dram)),
    },
];

/// The health families. `labels(n)` are the n-th GPU's dcgm-exporter labels, `short(n)`
/// its `gpu`, `UUID` (and `vendor`) labels, for gpukill's own families.
pub(super) fn render_health<'a>(
    out: &mut Exposition,
    snapshot: &Snapshot,
    labels: impl Fn(usize) -> &'a str + Copy,
    short: impl Fn(usize) -> &'a str,
) {
    let nvidia = |vendor: Vendor| vendor == Vendor::Nvidia;
    for field in DCGM_FIELDS {
        let family = out.family(field.name, field.kind, field.help);
        let value = field.value;
        gpu_samples(family, snapshot, labels, nvidia, value);
    }
    let other = |vendor: Vendor| vendor != Vendor::Nvidia;
    let throttle = out.family(
        "gpukill_gpu_clock_throttle_reasons",
        "gauge",
        "AMD and Intel: current clock throttle reasons, mapped onto NVML's bits (docs/health.md).",
    );
    gpu_samples(throttle, snapshot, labels, other, |gpu: &Gpu| {
        count(gpu.health.reading.throttle.map(|throttle| throttle.0))
    });
    let mut state = out.family(
        "gpukill_gpu_health_state",
        "gauge",
        "The GPU's assessed health: 1 for its state (unknown, ok, warning, critical, lost), 0 for the others.",
    );
    for (n, (vendor, gpu)) in snapshot.gpus().enumerate() {
        for each in HealthState::ALL {
            state.sample(
                short(n),
                &[("vendor", vendor.name()), ("state", each.as_str())],
                Value::Bool(gpu.health.state == each),
            );
        }
    }
    let mut xids = out.family(
        "gpukill_gpu_xid_errors_total",
        "counter",
        "Xid errors the GPU reported since gpukilld started, per Xid code.",
    );
    for (n, (vendor, gpu)) in snapshot.gpus().enumerate() {
        for (code, total) in &gpu.health.xid_counts {
            xids.sample(
                short(n),
                &[("vendor", vendor.name()), ("xid", &code.to_string())],
                Value::Uint(*total),
            );
        }
    }
    let mut ras = out.family(
        "gpukill_gpu_ras_errors_total",
        "counter",
        "AMD RAS error counts per block and type (correctable, uncorrectable).",
    );
    for (n, (vendor, gpu)) in snapshot.gpus().enumerate() {
        for block in &gpu.health.reading.ras {
            let counts = [
                ("correctable", block.correctable),
                ("uncorrectable", block.uncorrectable),
            ];
            for (kind, value) in counts {
                if let Some(value) = value {
                    ras.sample(
                        short(n),
                        &[
                            ("vendor", vendor.name()),
                            ("block", &block.block),
                            ("type", kind),
                        ],
                        Value::Uint(value),
                    );
                }
            }
        }
    }
}
