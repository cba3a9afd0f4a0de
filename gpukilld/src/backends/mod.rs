//! GPU vendor backends. Each backend is polled on its own dedicated thread (see
//! `sampler::worker`), so a vendor call that blocks never blocks the async runtime.

pub mod drm;
pub mod nvidia;
pub mod pci;

use crate::health::{HealthReading, Xid};
use crate::snapshot::{Gpu, Vendor, VendorProcess};

/// One GPU as a vendor reported it in one poll, with the processes on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// Device metrics.
    pub gpu: Gpu,
    /// Processes holding a context on this GPU, one entry per pid.
    pub processes: Vec<VendorProcess>,
    /// Its health counters and flags this tick.
    pub health: HealthReading,
    /// Xid errors reported since the previous poll, oldest first.
    pub xids: Vec<Xid>,
}

/// The result of one poll of one vendor.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The vendor answered; individual GPUs may carry errors.
    Ok {
        /// Driver version, when known.
        driver_version: Option<String>,
        /// The newest CUDA version the driver supports (NVIDIA), when known.
        cuda_version: Option<String>,
        /// GPUs in index order.
        gpus: Vec<GpuReading>,
    },
    /// The vendor could not be polled at all (library missing, initialization failed).
    Failed(String),
    /// The host has no device of this vendor (no card bound to its driver): nothing to
    /// report, not even a status, so an NVIDIA-only host does not list AMD and Intel.
    Absent,
}

/// A backend of one or more GPU vendors (AMD and Intel share one, so one walk of /proc
/// serves both). `poll` blocks; it is only ever called on the backend's thread.
pub trait Backend: Send + 'static {
    /// The vendors it reads, in the order `poll` answers them.
    fn vendors(&self) -> Vec<Vendor>;
    /// Reads every GPU of each vendor and the processes on them: one reading per vendor,
    /// in the order of [`vendors`](Self::vendors).
    fn poll(&mut self) -> Vec<Reading>;
}
