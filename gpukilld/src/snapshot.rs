//! The domain model of one poll tick: GPUs, the processes on them and how each vendor
//! answered. A [`Snapshot`] is immutable once published; readers share it through `Arc`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::health::{GpmActivity, GpuHealth};
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
    /// Index on this host across vendors: NVIDIA's GPUs first in NVML's order (so it is
    /// nvidia-smi's index), then AMD's, then Intel's. Backends set it to their own
    /// numbering; the sampler moves that to `vendor_index` and numbers the host's GPUs.
    pub index: u32,
    /// Index within its vendor (NVML's index; for AMD and Intel, the order of their DRM
    /// card numbers, which is rocm-smi's order for AMD).
    pub vendor_index: u32,
    /// Stable identifier (shared between ticks, like the other identity strings).
    pub uuid: Option<Arc<str>>,
    /// Product name.
    pub name: Option<Arc<str>>,
    /// PCI bus id (domain:bus:device.function).
    pub pci_bus_id: Option<Arc<str>>,
    /// Framebuffer memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Total framebuffer memory, bytes.
    pub memory_total_bytes: Option<u64>,
    /// AMD: system memory mapped for the GPU (GTT) in use, bytes.
    pub gtt_used_bytes: Option<u64>,
    /// AMD: size of the GTT, bytes.
    pub gtt_total_bytes: Option<u64>,
    /// Kernel-busy percent over the last sample period.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-busy percent over the last sample period.
    pub utilization_memory_pct: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<i32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Energy used since the driver loaded, millijoules (a counter).
    pub energy_total_mj: Option<u64>,
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
    /// NVIDIA GPM activity (Hopper and newer), from two samples a tick apart. Kept out of
    /// `health`: it changes every tick, and the health is shared between ticks.
    pub gpm: Option<GpmActivity>,
    /// Its health as assessed this tick (the sampler sets it; shared with the previous
    /// tick's while nothing changes).
    pub health: Arc<GpuHealth>,
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

/// Who is on which GPU, in what role. Changes only when processes come and go, so it is
/// shared between ticks.
#[derive(Debug, Clone)]
pub struct ProcessSlot {
    /// Vendor of the GPU.
    pub vendor: Vendor,
    /// Index of the GPU within its vendor.
    pub gpu_index: u32,
    /// Compute, graphics or both.
    pub kind: ProcessKind,
    /// Who the process is (shared for the life of the process).
    pub info: Arc<ProcessInfo>,
}

impl PartialEq for ProcessSlot {
    fn eq(&self, other: &Self) -> bool {
        self.vendor == other.vendor
            && self.gpu_index == other.gpu_index
            && self.kind == other.kind
            && Arc::ptr_eq(&self.info, &other.info)
    }
}

/// Marks an absent per-process memory reading (NVML's own NVML_VALUE_NOT_AVAILABLE).
const NO_MEMORY: u64 = u64::MAX;
/// Marks an absent per-process SM utilization.
const NO_UTILIZATION: u8 = u8::MAX;

/// The processes of one vendor at one tick, stored by column so an hour-long ring stays
/// small: the membership, the memory column and the utilization column are each shared with
/// the previous tick when unchanged, and a changing tick costs 9 bytes per process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessTable {
    slots: Arc<[ProcessSlot]>,
    used_memory: Arc<[u64]>,
    sm_utilization: Arc<[u8]>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self {
            slots: Arc::from([]),
            used_memory: Arc::from([]),
            sm_utilization: Arc::from([]),
        }
    }
}

/// One process on a GPU at one tick: its slot and its numbers.
#[derive(Debug, Clone, Copy)]
pub struct GpuProcess<'a> {
    /// Who and where.
    pub slot: &'a ProcessSlot,
    /// GPU memory it uses, bytes.
    pub used_memory_bytes: Option<u64>,
    /// Its share of SM time, percent.
    pub sm_utilization_pct: Option<u32>,
}

impl ProcessTable {
    /// A table of `rows` (slot, used memory, SM utilization), reusing every column of
    /// `previous` that is unchanged.
    pub fn new(
        rows: impl IntoIterator<Item = (ProcessSlot, Option<u64>, Option<u32>)>,
        previous: &ProcessTable,
    ) -> Self {
        let mut slots = Vec::new();
        let mut used_memory = Vec::new();
        let mut sm_utilization = Vec::new();
        for (slot, memory, utilization) in rows {
            slots.push(slot);
            used_memory.push(
                memory
                    .filter(|bytes| *bytes != NO_MEMORY)
                    .unwrap_or(NO_MEMORY),
            );
            sm_utilization.push(
                utilization
                    .and_then(|pct| u8::try_from(pct).ok())
                    .filter(|pct| *pct != NO_UTILIZATION)
                    .unwrap_or(NO_UTILIZATION),
            );
        }
        fn reuse<T: PartialEq>(new: Vec<T>, old: &Arc<[T]>) -> Arc<[T]> {
            if *new == **old {
                Arc::clone(old)
            } else {
                Arc::from(new)
            }
        }
        Self {
            slots: reuse(slots, &previous.slots),
            used_memory: reuse(used_memory, &previous.used_memory),
            sm_utilization: reuse(sm_utilization, &previous.sm_utilization),
        }
    }

    /// The processes, in table order.
    pub fn iter(&self) -> impl Iterator<Item = GpuProcess<'_>> {
        self.slots
            .iter()
            .zip(self.used_memory.iter())
            .zip(self.sm_utilization.iter())
            .map(|((slot, memory), utilization)| GpuProcess {
                slot,
                used_memory_bytes: (*memory != NO_MEMORY).then_some(*memory),
                sm_utilization_pct: (*utilization != NO_UTILIZATION)
                    .then_some(u32::from(*utilization)),
            })
    }

    /// Whether `self` and `other` share their storage (no copy was made for this tick).
    #[cfg(test)]
    fn shares_storage_with(&self, other: &ProcessTable) -> bool {
        Arc::ptr_eq(&self.slots, &other.slots)
            && Arc::ptr_eq(&self.used_memory, &other.used_memory)
            && Arc::ptr_eq(&self.sm_utilization, &other.sm_utilization)
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
    /// The newest CUDA version the driver supports (NVIDIA, "12.4"), when known.
    pub cuda_version: Option<String>,
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
    pub processes: ProcessTable,
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
    pub fn processes(&self) -> impl Iterator<Item = GpuProcess<'_>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn slot(pid: u32) -> ProcessSlot {
        ProcessSlot {
            vendor: Vendor::Nvidia,
            gpu_index: 0,
            kind: ProcessKind::Compute,
            info: Arc::new(ProcessInfo {
                pid,
                start_ticks: 1,
                start_time: UNIX_EPOCH,
                uid: 0,
                user: Arc::from("root"),
                name: "x".into(),
                cmdline: "x".into(),
                container: None,
                exe_name: None,
            }),
        }
    }

    #[test]
    fn absent_readings_stay_absent_and_unchanged_columns_are_shared() {
        let (a, b) = (slot(1), slot(2));
        let first = ProcessTable::new(
            [(a.clone(), Some(10), None), (b.clone(), None, Some(99))],
            &ProcessTable::default(),
        );
        let rows: Vec<_> = first
            .iter()
            .map(|p| (p.slot.info.pid, p.used_memory_bytes, p.sm_utilization_pct))
            .collect();
        assert_eq!(rows, vec![(1, Some(10), None), (2, None, Some(99))]);

        let same = ProcessTable::new(
            [(a.clone(), Some(10), None), (b.clone(), None, Some(99))],
            &first,
        );
        assert!(same.shares_storage_with(&first));

        let changed = ProcessTable::new([(a, Some(11), None), (b, None, Some(99))], &first);
        assert!(!changed.shares_storage_with(&first));
        assert!(
            Arc::ptr_eq(&changed.slots, &first.slots),
            "membership still shared"
        );
        assert_eq!(
            changed.iter().next().and_then(|p| p.used_memory_bytes),
            Some(11)
        );
    }
}
