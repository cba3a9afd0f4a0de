//! One GPU's device metrics and processes through NVML, and how each call's failure is
//! taken: unsupported is absent, a lost GPU stops the reading, anything else is named in
//! the GPU's error.

use std::collections::BTreeMap;

use nvml_wrapper::Device;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::Interner;
use crate::backends::GpuReading;
use crate::snapshot::{Gpu, ProcessKind, VendorProcess};

/// NVML's own words for an error, without the wrapper's decoration.
pub(super) fn describe(error: &NvmlError) -> String {
    match error {
        NvmlError::GpuLost => "GPU is lost".to_string(),
        other => other.to_string(),
    }
}

/// Errors after which nothing more can be read from the device this tick.
fn is_fatal(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::GpuLost | NvmlError::ResetRequired | NvmlError::Uninitialized
    )
}

/// Errors that mean the device (or this driver's library) does not have the field.
fn is_missing(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::NotSupported
            | NvmlError::NotFound
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
    )
}

/// Errors that leave a health field absent: missing, or refused to an unprivileged caller
/// (some counters need root).
pub(super) fn is_unsupported(error: &NvmlError) -> bool {
    is_missing(error) || matches!(error, NvmlError::NoPermission)
}

/// Collects one GPU's fields: unsupported ones stay `None`; other failures are named in
/// the GPU's error; a fatal one (GPU lost) stops the reading.
#[derive(Debug, Default)]
pub(super) struct FieldReader {
    errors: Vec<String>,
    /// A call failed in a way that leaves nothing else readable this tick.
    pub(super) fatal: bool,
    /// That call answered GPU_IS_LOST: the GPU fell off the bus.
    pub(super) lost: bool,
}

impl FieldReader {
    /// One field: `None` when unsupported or after a fatal error.
    pub(super) fn read<T>(
        &mut self,
        field: &str,
        call: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Option<T> {
        self.take(field, call, false)
    }

    /// One health field: as [`read`](Self::read), and also absent when NVML refuses it
    /// to an unprivileged caller (see [`is_unsupported`]).
    pub(super) fn read_health<T>(
        &mut self,
        field: &str,
        call: impl FnOnce() -> Result<T, NvmlError>,
    ) -> Option<T> {
        self.take(field, call, true)
    }

    fn take<T>(
        &mut self,
        field: &str,
        call: impl FnOnce() -> Result<T, NvmlError>,
        no_permission_is_absent: bool,
    ) -> Option<T> {
        if self.fatal {
            return None;
        }
        match call() {
            Ok(value) => Some(value),
            // An older driver's library without the function does not support the field.
            Err(error) if is_missing(&error) => None,
            Err(NvmlError::NoPermission) if no_permission_is_absent => None,
            Err(error) if is_fatal(&error) => {
                self.fatal = true;
                self.lost = matches!(error, NvmlError::GpuLost);
                self.errors.clear();
                self.errors.push(describe(&error));
                None
            }
            Err(error) => {
                self.errors.push(format!("{field}: {}", describe(&error)));
                None
            }
        }
    }

    /// The GPU's error line, if anything failed.
    pub(super) fn error(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }
}

/// Reads one GPU's metrics and processes, with its volatile ECC counts in `health`; the
/// error is left to the caller (`fields`), which reads more. Returns the reading and the
/// newest per-process utilization timestamp.
pub(super) fn read_gpu(
    index: u32,
    device: &Device<'_>,
    since: Option<u64>,
    identities: &mut Interner,
    fields: &mut FieldReader,
) -> (GpuReading, Option<u64>) {
    let uuid = fields
        .read("uuid", || device.uuid())
        .map(|uuid| identities.intern(uuid));
    let name = fields
        .read("name", || device.name())
        .map(|name| identities.intern(name));
    let pci_bus_id = fields
        .read("pci", || device.pci_info())
        .map(|pci| identities.intern(pci.bus_id));
    let memory = fields.read("memory", || device.memory_info());
    let utilization = fields.read("utilization", || device.utilization_rates());
    let temperature_c = fields
        .read("temperature", || device.temperature(TemperatureSensor::Gpu))
        .and_then(|t| i32::try_from(t).ok());
    let power_mw = fields.read("power", || device.power_usage());
    let energy_total_mj = fields.read("energy", || device.total_energy_consumption());
    let fan_speed_pct = match fields.read("fans", || device.num_fans()) {
        Some(0) | None => None,
        Some(_) => fields.read("fan", || device.fan_speed(0)),
    };
    let clock_sm_mhz = fields.read("sm clock", || device.clock_info(Clock::SM));
    let clock_mem_mhz = fields.read("memory clock", || device.clock_info(Clock::Memory));
    let ecc_corrected = fields.read("ecc", || {
        device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
    });
    let ecc_uncorrected = fields.read("ecc", || {
        device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
    });
    let mig_enabled = fields
        .read("mig mode", || device.mig_mode())
        .map(|mode| mode.current == 1);
    let multi_gpu_board = fields.read("multi-gpu board", || device.is_multi_gpu_board());
    let compute = fields.read("compute processes", || device.running_compute_processes());
    let graphics = fields.read("graphics processes", || device.running_graphics_processes());
    let samples = fields.read("process utilization", || {
        device.process_utilization_stats(since)
    });

    let mut processes: BTreeMap<u32, VendorProcess> = BTreeMap::new();
    let listed = [
        (ProcessKind::Compute, compute.unwrap_or_default()),
        (ProcessKind::Graphics, graphics.unwrap_or_default()),
    ];
    for (kind, list) in listed {
        for process in list {
            let used = match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            };
            processes
                .entry(process.pid)
                .and_modify(|seen| {
                    seen.kind = seen.kind.merge(kind);
                    seen.used_memory_bytes = seen.used_memory_bytes.max(used);
                })
                .or_insert(VendorProcess {
                    pid: process.pid,
                    used_memory_bytes: used,
                    sm_utilization_pct: None,
                    kind,
                });
        }
    }
    let mut newest = None;
    // NVML may return several samples per process; the newest one wins.
    let mut latest_sample: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
    for sample in samples.unwrap_or_default() {
        newest = newest.max(Some(sample.timestamp));
        let entry = latest_sample.entry(sample.pid).or_insert((0, 0));
        if sample.timestamp >= entry.0 {
            *entry = (sample.timestamp, sample.sm_util);
        }
    }
    for (pid, (_, sm_util)) in latest_sample {
        if let Some(process) = processes.get_mut(&pid) {
            process.sm_utilization_pct = Some(sm_util);
        }
    }

    let reset_supported = match (mig_enabled, multi_gpu_board) {
        (Some(true), _) | (_, Some(true)) => Some(false),
        (Some(false), Some(false)) => Some(true),
        _ => None,
    };
    let ecc_volatile_errors = match (ecc_corrected, ecc_uncorrected) {
        (None, None) => None,
        (corrected, uncorrected) => Some(corrected.unwrap_or(0) + uncorrected.unwrap_or(0)),
    };
    let gpu = Gpu {
        index,
        vendor_index: index,
        uuid,
        name,
        pci_bus_id,
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        gtt_used_bytes: None,
        gtt_total_bytes: None,
        utilization_gpu_pct: utilization.as_ref().map(|u| u.gpu),
        utilization_memory_pct: utilization.as_ref().map(|u| u.memory),
        temperature_c,
        power_mw,
        energy_total_mj,
        fan_speed_pct,
        clock_sm_mhz,
        clock_mem_mhz,
        ecc_volatile_errors,
        mig_enabled,
        reset_supported,
        ..Gpu::default()
    };
    let mut reading = GpuReading {
        gpu,
        processes: processes.into_values().collect(),
        ..GpuReading::default()
    };
    reading.health.ecc_sbe_volatile = ecc_corrected;
    reading.health.ecc_dbe_volatile = ecc_uncorrected;
    (reading, newest)
}
