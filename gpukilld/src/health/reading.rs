//! What a backend reads of a GPU's health each tick: error counters, retired and remapped
//! memory, throttle reasons, the performance state, PCIe replays, AMD's RAS counters and
//! NVIDIA's GPM activity; and the Xid errors its event thread saw since the last tick.
//! Every field is absent (`None`, empty) where the GPU or its driver does not report it:
//! absent is never reported as zero.

use std::sync::Arc;
use std::time::SystemTime;

/// One tick's health readings of one GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthReading {
    /// Single-bit (corrected) ECC errors since the driver loaded.
    pub ecc_sbe_volatile: Option<u64>,
    /// Double-bit (uncorrected) ECC errors since the driver loaded.
    pub ecc_dbe_volatile: Option<u64>,
    /// Single-bit ECC errors over the GPU's life.
    pub ecc_sbe_aggregate: Option<u64>,
    /// Double-bit ECC errors over the GPU's life.
    pub ecc_dbe_aggregate: Option<u64>,
    /// Pages retired after single-bit errors (NVIDIA before Ampere).
    pub retired_sbe: Option<u64>,
    /// Pages retired after double-bit errors.
    pub retired_dbe: Option<u64>,
    /// A page retirement waits for the next driver reload or GPU reset.
    pub retired_pending: Option<bool>,
    /// Rows remapped after correctable errors (Ampere and newer).
    pub remapped_correctable: Option<u64>,
    /// Rows remapped after uncorrectable errors.
    pub remapped_uncorrectable: Option<u64>,
    /// A row remap waits for the next GPU reset.
    pub remap_pending: Option<bool>,
    /// A row could not be remapped: the GPU has run out of spare rows.
    pub remap_failure: Option<bool>,
    /// Why the clocks are held down now.
    pub throttle: Option<Throttle>,
    /// Performance state, 0 (fastest) to 15.
    pub pstate: Option<u32>,
    /// PCIe replays (link-level retransmissions) since the driver loaded.
    pub pcie_replay: Option<u64>,
    /// AMD RAS error counts per block (`umc`, `gfx`, `sdma`, …), in sysfs order.
    pub ras: Vec<RasCount>,
    /// NVIDIA GPM activity (Hopper and newer), from two samples a tick apart.
    pub gpm: Option<GpmActivity>,
    /// The GPU answered GPU_IS_LOST: it fell off the bus.
    pub lost: bool,
}

impl HealthReading {
    /// Whether nothing at all was read.
    pub fn is_empty(&self) -> bool {
        *self == HealthReading::default()
    }
}

/// Clock event (throttle) reasons as NVML's bitmask (`nvmlClocksEventReason*`), which
/// dcgm-exporter exports as `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`; other vendors' reasons are
/// mapped onto the same bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle(pub u64);

impl Throttle {
    /// Every named bit, in bit order, with its name.
    pub const NAMES: [(u64, &'static str); 9] = [
        (0x1, "gpu_idle"),
        (0x2, "applications_clocks_setting"),
        (0x4, "sw_power_cap"),
        (0x8, "hw_slowdown"),
        (0x10, "sync_boost"),
        (0x20, "sw_thermal"),
        (0x40, "hw_thermal"),
        (0x80, "hw_power_brake"),
        (0x100, "display_clock_setting"),
    ];
    /// The GPU is idle: clocks are low because nothing runs, not held down.
    pub const GPU_IDLE: u64 = 0x1;
    /// Software power cap.
    pub const SW_POWER_CAP: u64 = 0x4;
    /// Hardware slowdown (thermal or power brake; see the next two).
    pub const HW_SLOWDOWN: u64 = 0x8;
    /// Software thermal slowdown.
    pub const SW_THERMAL: u64 = 0x20;
    /// Hardware thermal slowdown.
    pub const HW_THERMAL: u64 = 0x40;
    /// Hardware power brake slowdown (an external power brake signal).
    pub const HW_POWER_BRAKE: u64 = 0x80;

    /// The names of the bits set; an unknown bit as `0x…`.
    pub fn names(self) -> Vec<String> {
        let mut names = Vec::new();
        let mut known = 0;
        for (bit, name) in Throttle::NAMES {
            known |= bit;
            if self.0 & bit != 0 {
                names.push(name.to_owned());
            }
        }
        let unknown = self.0 & !known;
        for shift in 0..64 {
            let bit = 1u64 << shift;
            if unknown & bit != 0 {
                names.push(format!("{bit:#x}"));
            }
        }
        names
    }

    /// Whether `bits` are set.
    pub fn has(self, bits: u64) -> bool {
        self.0 & bits != 0
    }
}

/// AMD RAS error counts of one block (`/sys/class/drm/cardN/device/ras/<block>_err_count`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RasCount {
    /// The block: `umc` (memory), `gfx`, `sdma`, `mmhub`, `xgmi_wafl`, …
    pub block: Arc<str>,
    /// Correctable errors.
    pub correctable: Option<u64>,
    /// Uncorrectable errors.
    pub uncorrectable: Option<u64>,
}

/// GPM activity ratios (0 to 1) over the last tick, as dcgm-exporter's profiling fields.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpmActivity {
    /// Graphics engine active (`DCGM_FI_PROF_GR_ENGINE_ACTIVE`).
    pub graphics_engine: Option<f64>,
    /// SM active (`DCGM_FI_PROF_SM_ACTIVE`).
    pub sm: Option<f64>,
    /// Tensor pipes active (`DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`).
    pub tensor: Option<f64>,
    /// Memory (DRAM) interface active (`DCGM_FI_PROF_DRAM_ACTIVE`).
    pub dram: Option<f64>,
}

/// One Xid error an NVIDIA GPU reported through NVML's event API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xid {
    /// The Xid code.
    pub code: u64,
    /// When the event thread received it.
    pub time: SystemTime,
}
