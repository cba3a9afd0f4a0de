//! The domain model of one poll tick: GPUs, the processes on them and how each vendor
//! answered. A [`Snapshot`] is immutable once published; readers share it through `Arc`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::procinfo::ProcessInfo;

/// GPU vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    /// NVIDIA, through NVML.
    Nvidia,
    /// AMD, through sysfs and DRM fdinfo.
    Amd,
    /// Intel, through sysfs and DRM fdinfo.
    Intel,
    /// Apple Silicon.
    Apple,
}

impl Vendor {
    /// Lower-case name, as in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "amd",
            Vendor::Intel => "intel",
            Vendor::Apple => "apple",
        }
    }
}

/// One GPU's device-level metrics. Every metric is `None` when the device does not support
/// it or it could not be read: absent is never reported as zero.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gpu {
    /// Index as the vendor numbers it.
    pub index: u32,
    /// Stable identifier.
    pub uuid: Option<String>,
    /// Product name.
    pub name: Option<String>,
    /// PCI bus id (domain:bus:device.function).
    pub pci_bus_id: Option<String>,
    /// Framebuffer memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Total framebuffer memory, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Kernel-busy percent over the last sample period.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-busy percent over the last sample period.
    pub utilization_memory_pct: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<i32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Fan speed, percent.
    pub fan_speed_pct: Option<u32>,
    /// SM clock, MHz.
    pub clock_sm_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub clock_mem_mhz: Option<u32>,
    /// Volatile corrected + uncorrected ECC errors.
    pub ecc_volatile_errors: Option<u64>,
    /// Whether MIG mode is enabled.
    pub mig_enabled: Option<bool>,
    /// Whether the device can be reset on its own.
    pub reset_supported: Option<bool>,
    /// Why the GPU (or part of it) could not be read this tick.
    pub error: Option<String>,
}

/// Whether a process holds a compute context, a graphics context or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// Compute (CUDA, OpenCL).
    Compute,
    /// Graphics.
    Graphics,
    /// Both.
    ComputeAndGraphics,
}

impl ProcessKind {
    /// The kind of a process seen in both the compute and the graphics list.
    pub fn merge(self, other: ProcessKind) -> ProcessKind {
        if self == other {
            self
        } else {
            ProcessKind::ComputeAndGraphics
        }
    }
}

/// A process as a vendor reports it, before /proc is consulted.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorProcess {
    /// Process id, as the vendor reports it.
    pub pid: u32,
    /// GPU memory it uses, bytes.
    pub used_memory_bytes: Option<u64>,
    /// Its share of SM time over the last sample period, percent.
    pub sm_utilization_pct: Option<u32>,
    /// Compute, graphics or both.
    pub kind: ProcessKind,
}

/// A process on a GPU, joined with what /proc says of it. Kept small: the ring holds an hour
/// of these, and the identity part is shared between ticks.
#[derive(Debug, Clone)]
pub struct GpuProcess {
    /// Vendor of the GPU.
    pub vendor: Vendor,
    /// Index of the GPU within its vendor.
    pub gpu_index: u32,
    /// Who the process is (shared across ticks while the process lives).
    pub info: Arc<ProcessInfo>,
    /// GPU memory it uses, bytes.
    pub used_memory_bytes: Option<u64>,
    /// Its share of SM time, percent.
    pub sm_utilization_pct: Option<u32>,
    /// Compute, graphics or both.
    pub kind: ProcessKind,
}

impl PartialEq for GpuProcess {
    fn eq(&self, other: &Self) -> bool {
        self.vendor == other.vendor
            && self.gpu_index == other.gpu_index
            && Arc::ptr_eq(&self.info, &other.info)
            && self.used_memory_bytes == other.used_memory_bytes
            && self.sm_utilization_pct == other.sm_utilization_pct
            && self.kind == other.kind
    }
}

/// How a vendor's last poll went.
#[derive(Debug, Clone, PartialEq)]
pub enum VendorState {
    /// It answered.
    Ok,
    /// It failed as a whole; the message says why.
    Error(String),
    /// A call has been outstanding since the given time.
    Hung {
        /// When the outstanding call was made.
        since: SystemTime,
    },
}

/// One vendor backend's status as of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorStatus {
    /// Which vendor.
    pub vendor: Vendor,
    /// How its last poll went.
    pub state: VendorState,
    /// Driver version the vendor library reports.
    pub driver_version: Option<String>,
    /// When it last answered completely.
    pub last_success: Option<SystemTime>,
}

/// All GPUs of one vendor with their processes, as of one successful poll. Shared between
/// consecutive snapshots while that vendor is hung.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VendorData {
    /// When the data was read.
    pub taken_at: Option<SystemTime>,
    /// The GPUs, by index.
    pub gpus: Vec<Gpu>,
    /// Processes on those GPUs.
    pub processes: Arc<[GpuProcess]>,
}

/// What the daemon knows of the node after one tick.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Host name.
    pub host: Arc<str>,
    /// When the tick started.
    pub taken_at: SystemTime,
    /// Tick number since start.
    pub sequence: u64,
    /// One status per configured vendor, in the order of `data`.
    pub vendors: Vec<VendorStatus>,
    /// Per vendor, the GPUs and processes (the last good data when the vendor is hung).
    pub data: Vec<(Vendor, Arc<VendorData>)>,
    /// How long the tick took.
    pub tick_duration: Duration,
    /// The poll interval in force.
    pub poll_interval: Duration,
}

impl Snapshot {
    /// All GPUs of all vendors, with their vendor.
    pub fn gpus(&self) -> impl Iterator<Item = (Vendor, &Gpu)> {
        self.data
            .iter()
            .flat_map(|(vendor, data)| data.gpus.iter().map(move |gpu| (*vendor, gpu)))
    }

    /// All processes of all vendors.
    pub fn processes(&self) -> impl Iterator<Item = &GpuProcess> {
        self.data.iter().flat_map(|(_, data)| data.processes.iter())
    }

    /// When the oldest vendor data in this snapshot was read (the tick time if none).
    pub fn data_taken_at(&self) -> SystemTime {
        self.data
            .iter()
            .filter_map(|(_, data)| data.taken_at)
            .min()
            .unwrap_or(self.taken_at)
    }

    /// Why this snapshot should not be trusted as current at `now`, if it should not.
    /// It is stale when a vendor is hung, or when its data is older than two poll intervals.
    pub fn stale_reason(&self, now: SystemTime) -> Option<String> {
        let hung: Vec<String> = self
            .vendors
            .iter()
            .filter_map(|status| match status.state {
                VendorState::Hung { since } => Some(format!(
                    "{} has not answered for {}",
                    status.vendor.name(),
                    format_age(now.duration_since(since).unwrap_or_default())
                )),
                _ => None,
            })
            .collect();
        if !hung.is_empty() {
            return Some(hung.join("; "));
        }
        let age = now.duration_since(self.data_taken_at()).unwrap_or_default();
        (age > self.poll_interval * 2).then(|| {
            format!(
                "no tick completed for {} (poll interval {})",
                format_age(age),
                format_age(self.poll_interval)
            )
        })
    }
}

/// Formats a duration with one decimal of seconds, or whole milliseconds below a second.
pub fn format_age(age: Duration) -> String {
    if age < Duration::from_secs(1) {
        format!("{}ms", age.as_millis())
    } else {
        format!("{:.1}s", age.as_secs_f64())
    }
}
