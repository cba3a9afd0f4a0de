//! NVIDIA GPUs through NVML (nvml-wrapper). The library is loaded lazily on the first poll
//! and loading is retried while it fails, so the daemon comes up (degraded) on a host whose
//! driver is not loaded yet. A library that cannot be loaded on a host with no NVIDIA GPU on
//! its PCI bus means NVIDIA is absent (an AMD- or Intel-only host), not failed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{Backend, GpuReading, Reading, pci};
use crate::snapshot::{Gpu, ProcessKind, Vendor, VendorProcess};

/// How often to retry loading NVML after it failed.
const INIT_RETRY: Duration = Duration::from_secs(10);

/// The NVIDIA backend.
pub struct NvidiaBackend {
    library: OsString,
    /// Where sysfs is mounted, to look for NVIDIA GPUs on the PCI bus.
    sysfs_root: PathBuf,
    nvml: Option<Loaded>,
    last_init_failure: Option<(Instant, InitFailure)>,
}

/// Why NVML is not loaded.
#[derive(Debug, Clone)]
enum InitFailure {
    /// The library is missing and the host has no NVIDIA GPU: nothing to report.
    Absent,
    /// NVML cannot be used: the message says why and what to do.
    Failed(String),
}

struct Loaded {
    nvml: Nvml,
    driver_version: Option<String>,
    /// The newest CUDA version the driver supports, as nvidia-smi shows it ("12.4").
    cuda_version: Option<String>,
    /// Per GPU index, the newest per-process utilization timestamp seen, so each poll asks
    /// only for samples taken since the previous one.
    last_utilization_sample: BTreeMap<u32, u64>,
    /// GPU identity strings (uuid, name, bus id), shared between ticks.
    identities: Interner,
}

/// Hands out one shared copy of each string, so the ring does not hold an hour of copies of
/// the same GPU names.
#[derive(Default)]
struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    /// More distinct identity strings than this means something is off; start over.
    const LIMIT: usize = 4096;

    fn intern(&mut self, text: String) -> Arc<str> {
        if let Some(shared) = self.0.get(text.as_str()) {
            return Arc::clone(shared);
        }
        if self.0.len() >= Self::LIMIT {
            self.0.clear();
        }
        let shared: Arc<str> = Arc::from(text);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

impl NvidiaBackend {
    /// A backend that loads NVML from `library` (a path, or a name for the loader), looking
    /// for NVIDIA GPUs under `sysfs_root` when it cannot.
    pub fn new(library: impl Into<OsString>, sysfs_root: PathBuf) -> Self {
        Self {
            library: library.into(),
            sysfs_root,
            nvml: None,
            last_init_failure: None,
        }
    }

    fn load(&mut self) -> Result<&mut Loaded, InitFailure> {
        if self.nvml.is_none() {
            if let Some((at, failure)) = &self.last_init_failure
                && at.elapsed() < INIT_RETRY
            {
                return Err(failure.clone());
            }
            match Nvml::builder().lib_path(&self.library).init() {
                Ok(nvml) => {
                    let driver_version = nvml.sys_driver_version().ok();
                    let cuda_version = nvml.sys_cuda_driver_version().ok().map(cuda_version);
                    tracing::info!(
                        library = %self.library.to_string_lossy(),
                        driver_version = driver_version.as_deref().unwrap_or("unknown"),
                        cuda_version = cuda_version.as_deref().unwrap_or("unknown"),
                        "NVML initialized"
                    );
                    self.last_init_failure = None;
                    self.nvml = Some(Loaded {
                        nvml,
                        driver_version,
                        cuda_version,
                        last_utilization_sample: BTreeMap::new(),
                        identities: Interner::default(),
                    });
                }
                Err(error) => {
                    let failure = self.init_failure(&error);
                    let first = self.last_init_failure.is_none();
                    match &failure {
                        InitFailure::Failed(message) if first => tracing::error!("{message}"),
                        InitFailure::Absent if first => tracing::info!(
                            library = %self.library.to_string_lossy(),
                            "no NVML library and no NVIDIA GPU on the PCI bus: NVIDIA is absent"
                        ),
                        _ => {}
                    }
                    self.last_init_failure = Some((Instant::now(), failure.clone()));
                    return Err(failure);
                }
            }
        }
        self.nvml
            .as_mut()
            .ok_or_else(|| InitFailure::Failed("NVML is not loaded".to_string()))
    }

    /// What a failed initialization means: a missing library on a host without an NVIDIA
    /// GPU is NVIDIA's absence; with one (or when the PCI bus cannot be read) it is a
    /// failure naming the devices and the fix.
    fn init_failure(&self, error: &NvmlError) -> InitFailure {
        let message = init_error_message(&self.library, error);
        if !matches!(error, NvmlError::LibloadingError(_)) {
            return InitFailure::Failed(message);
        }
        match pci::display_controllers(&self.sysfs_root, pci::NVIDIA) {
            Ok(devices) if devices.is_empty() => InitFailure::Absent,
            Ok(devices) => InitFailure::Failed(format!(
                "{message}; NVIDIA GPU{} on the PCI bus: {}",
                if devices.len() == 1 { "" } else { "s" },
                devices.join(", ")
            )),
            Err(error) => InitFailure::Failed(format!(
                "{message}; cannot tell whether this host has an NVIDIA GPU: {}/bus/pci/devices: {error}",
                self.sysfs_root.display()
            )),
        }
    }
}

/// NVML's CUDA driver version (1000 * major + 10 * minor, e.g. 12040) as nvidia-smi shows
/// it: `12.4`.
fn cuda_version(version: i32) -> String {
    format!(
        "{}.{}",
        nvml_wrapper::cuda_driver_version_major(version),
        nvml_wrapper::cuda_driver_version_minor(version)
    )
}

fn init_error_message(library: &OsString, error: &NvmlError) -> String {
    let library = library.to_string_lossy();
    match error {
        NvmlError::LibloadingError(source) => format!(
            "cannot load the NVML library {library}: {source} (install the NVIDIA driver, or set [nvidia] library / GPUKILL_NVML_LIBRARY)"
        ),
        NvmlError::DriverNotLoaded => {
            format!("NVML ({library}) reports the NVIDIA driver is not loaded")
        }
        other => format!("NVML ({library}) failed to initialize: {other}"),
    }
}

impl Backend for NvidiaBackend {
    fn vendors(&self) -> Vec<Vendor> {
        vec![Vendor::Nvidia]
    }

    fn poll(&mut self) -> Vec<Reading> {
        vec![self.read()]
    }
}

impl NvidiaBackend {
    /// Reads every NVIDIA GPU.
    fn read(&mut self) -> Reading {
        let loaded = match self.load() {
            Ok(loaded) => loaded,
            Err(InitFailure::Absent) => return Reading::Absent,
            Err(InitFailure::Failed(message)) => return Reading::Failed(message),
        };
        let count = match loaded.nvml.device_count() {
            Ok(count) => count,
            Err(error) => return Reading::Failed(format!("cannot count NVIDIA GPUs: {error}")),
        };
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let reading = match loaded.nvml.device_by_index(index) {
                Ok(device) => {
                    let since = loaded.last_utilization_sample.get(&index).copied();
                    let (reading, newest) = read_gpu(index, &device, since, &mut loaded.identities);
                    if let Some(newest) = newest {
                        loaded.last_utilization_sample.insert(index, newest);
                    }
                    reading
                }
                Err(error) => GpuReading {
                    gpu: Gpu {
                        index,
                        error: Some(describe(&error)),
                        ..Gpu::default()
                    },
                    ..GpuReading::default()
                },
            };
            gpus.push(reading);
        }
        Reading::Ok {
            driver_version: loaded.driver_version.clone(),
            cuda_version: loaded.cuda_version.clone(),
            gpus,
        }
    }
}

/// NVML's own words for an error, without the wrapper's decoration.
fn describe(error: &NvmlError) -> String {
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

/// Collects one GPU's fields: unsupported ones stay `None`; other failures are named in
/// `gpu.error`; a fatal one (GPU lost) stops the reading.
struct FieldReader {
    errors: Vec<String>,
    fatal: bool,
}

impl FieldReader {
    fn read<T>(&mut self, field: &str, call: impl FnOnce() -> Result<T, NvmlError>) -> Option<T> {
        if self.fatal {
            return None;
        }
        match call() {
            Ok(value) => Some(value),
            // An older driver's library without the function does not support the field.
            Err(
                NvmlError::NotSupported | NvmlError::NotFound | NvmlError::FailedToLoadSymbol(_),
            ) => None,
            Err(error) if is_fatal(&error) => {
                self.fatal = true;
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
}

/// Reads one GPU. Returns the reading and the newest per-process utilization timestamp.
fn read_gpu(
    index: u32,
    device: &Device<'_>,
    since: Option<u64>,
    identities: &mut Interner,
) -> (GpuReading, Option<u64>) {
    let mut fields = FieldReader {
        errors: Vec::new(),
        fatal: false,
    };
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
        error: (!fields.errors.is_empty()).then(|| fields.errors.join("; ")),
        ..Gpu::default()
    };
    let processes = if fields.fatal {
        Vec::new()
    } else {
        processes.into_values().collect()
    };
    (
        GpuReading {
            gpu,
            processes,
            ..GpuReading::default()
        },
        newest,
    )
}
