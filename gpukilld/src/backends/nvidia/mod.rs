//! NVIDIA GPUs through NVML (nvml-wrapper). The library is loaded lazily on the first poll
//! and loading is retried while it fails, so the daemon comes up (degraded) on a host whose
//! driver is not loaded yet. A library that cannot be loaded on a host with no NVIDIA GPU on
//! its PCI bus means NVIDIA is absent (an AMD- or Intel-only host), not failed.
//!
//! Each poll reads every GPU's metrics and processes (`device`), its health (`health`:
//! cheap calls every poll, slow ones every tenth), its GPM activity (`gpm`), and the Xids
//! the session's event thread (`events`) queued since the previous poll. A GPU that answers
//! GPU_IS_LOST stays in the reading, `lost`, under the identity it last had.

mod device;
pub mod events;
mod gpm;
pub mod health;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{Backend, GpuReading, Reading, pci};
use crate::health::HealthReading;
use crate::snapshot::{Gpu, Vendor};
use device::{FieldReader, describe};
use events::{EventQueues, EventThread};

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

/// One NVML session: from a successful init until the backend is dropped.
struct Loaded {
    /// Shared with the event thread, which holds its event set on it.
    nvml: Arc<Nvml>,
    driver_version: Option<String>,
    /// The newest CUDA version the driver supports, as nvidia-smi shows it ("12.4").
    cuda_version: Option<String>,
    /// Per GPU index, the newest per-process utilization timestamp seen, so each poll asks
    /// only for samples taken since the previous one.
    last_utilization_sample: BTreeMap<u32, u64>,
    /// GPU identity strings (uuid, name, bus id), shared between ticks.
    identities: Interner,
    /// Per GPU index, the identity it last answered with, for a GPU that stops answering.
    known: BTreeMap<u32, Identity>,
    /// The slow health calls' last answers.
    health: health::HealthPolls,
    /// GPM samples held from one poll to the next.
    gpm: gpm::Gpm,
    /// What the event thread queued for the next poll.
    queues: Arc<EventQueues>,
    /// Stopped (within a second) when the session is dropped; `None` when it could not
    /// be started.
    events: Option<EventThread>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // Samples go back to the library before it shuts down (with the last `Arc`).
        self.gpm.free(&self.nvml);
        // Stop the event thread before the fields go, so its set is freed first.
        self.events.take();
    }
}

/// What a GPU was last known as.
#[derive(Debug, Clone, Default)]
struct Identity {
    uuid: Option<Arc<str>>,
    name: Option<Arc<str>>,
    pci_bus_id: Option<Arc<str>>,
}

impl Identity {
    /// Keeps what `gpu` answered, and fills in what it did not from before.
    fn remember(&mut self, gpu: &mut Gpu) {
        for (known, now) in [
            (&mut self.uuid, &mut gpu.uuid),
            (&mut self.name, &mut gpu.name),
            (&mut self.pci_bus_id, &mut gpu.pci_bus_id),
        ] {
            match now {
                Some(value) => *known = Some(Arc::clone(value)),
                None => now.clone_from(known),
            }
        }
    }
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
                    let nvml = Arc::new(nvml);
                    let driver_version = nvml.sys_driver_version().ok();
                    let cuda_version = nvml.sys_cuda_driver_version().ok().map(cuda_version);
                    tracing::info!(
                        library = %self.library.to_string_lossy(),
                        driver_version = driver_version.as_deref().unwrap_or("unknown"),
                        cuda_version = cuda_version.as_deref().unwrap_or("unknown"),
                        "NVML initialized"
                    );
                    self.last_init_failure = None;
                    let queues = Arc::new(EventQueues::default());
                    let events = EventThread::start(Arc::clone(&nvml), Arc::clone(&queues));
                    self.nvml = Some(Loaded {
                        nvml,
                        driver_version,
                        cuda_version,
                        last_utilization_sample: BTreeMap::new(),
                        identities: Interner::default(),
                        known: BTreeMap::new(),
                        health: health::HealthPolls::default(),
                        gpm: gpm::Gpm::default(),
                        queues,
                        events,
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
    /// Xids the event thread dropped because a GPU's queue was full between two polls,
    /// in this NVML session (0 before NVML is loaded).
    pub fn dropped_xids(&self) -> u64 {
        self.nvml
            .as_ref()
            .map_or(0, |loaded| loaded.queues.dropped())
    }

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
        let nvml = Arc::clone(&loaded.nvml);
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let pending = loaded.queues.take(index);
            let mut reading = match nvml.device_by_index(index) {
                Ok(device) => loaded.read_gpu(&nvml, index, &device, pending.ecc),
                Err(error) => {
                    loaded.health.forget(index);
                    loaded.gpm.forget(&nvml, index);
                    GpuReading {
                        gpu: Gpu {
                            index,
                            vendor_index: index,
                            error: Some(describe(&error)),
                            ..Gpu::default()
                        },
                        health: HealthReading {
                            lost: matches!(error, NvmlError::GpuLost),
                            ..HealthReading::default()
                        },
                        ..GpuReading::default()
                    }
                }
            };
            loaded
                .known
                .entry(index)
                .or_default()
                .remember(&mut reading.gpu);
            reading.xids = pending.xids;
            gpus.push(reading);
        }
        Reading::Ok {
            driver_version: loaded.driver_version.clone(),
            cuda_version: loaded.cuda_version.clone(),
            gpus,
        }
    }
}

impl Loaded {
    /// Reads one GPU: metrics, processes, health and GPM activity. `ecc_event`: an ECC
    /// event came since the last poll, so the slow ECC counters are read now.
    fn read_gpu(
        &mut self,
        nvml: &Nvml,
        index: u32,
        device: &Device<'_>,
        ecc_event: bool,
    ) -> GpuReading {
        let mut fields = FieldReader::default();
        let since = self.last_utilization_sample.get(&index).copied();
        let (mut reading, newest) =
            device::read_gpu(index, device, since, &mut self.identities, &mut fields);
        if let Some(newest) = newest {
            self.last_utilization_sample.insert(index, newest);
        }
        self.health.read(
            index,
            nvml,
            device,
            &mut fields,
            ecc_event,
            &mut reading.health,
        );
        reading.gpu.gpm = self.gpm.read(nvml, index, device, &mut fields);
        if fields.fatal {
            // Nothing of this tick's answers can be trusted: only the error, and `lost`.
            self.gpm.forget(nvml, index);
            reading.processes.clear();
            reading.health = HealthReading {
                lost: fields.lost,
                ..HealthReading::default()
            };
        }
        reading.gpu.error = fields.error();
        reading
    }
}
