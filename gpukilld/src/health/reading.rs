//! What a backend reads of a GPU's health each tick: error counters, retired and remapped
//! memory, throttle reasons, the performance state, PCIe replays, and AMD's RAS counters;
//! and the Xid errors its event thread saw since the last tick. (NVIDIA's GPM activity is
//! read with them but kept in `Gpu::gpm`: it changes every tick.)
//! Every field is absent (`None`, empty) where the GPU or its driver does not report it:
//! absent is never reported as zero.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::THROTTLE_NAMES;

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
    /// AMD RAS error counts per block (`umc`, `gfx`, `sdma`, …), sorted by block.
    pub ras: Vec<RasCount>,
    /// The GPU answered GPU_IS_LOST: it fell off the bus.
    pub lost: bool,
}

impl HealthReading {
    /// Whether nothing at all was read.
    pub fn is_empty(&self) -> bool {
        *self == HealthReading::default()
    }
}

/// Clock event (throttle) reasons as NVML's bitmask (`nvmlClocksEventReason*`, named in
/// `config::THROTTLE_NAMES`), which
/// dcgm-exporter exports as `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`; other vendors' reasons are
/// mapped onto the same bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle(pub u64);

impl Throttle {
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

    /// The names of the bits set (`THROTTLE_NAMES[i]` is bit `1 << i`), in bit order; an
    /// unnamed bit as `0x…`.
    pub fn names(self) -> Vec<String> {
        (0..64)
            .map(|shift| 1u64 << shift)
            .filter(|bit| self.0 & bit != 0)
            .map(
                |bit| match THROTTLE_NAMES.get(bit.trailing_zeros() as usize) {
                    Some(name) => (*name).to_owned(),
                    None => format!("{bit:#x}"),
                },
            )
            .collect()
    }

    /// The bit of a reason's name.
    pub fn bit(name: &str) -> Option<u64> {
        THROTTLE_NAMES
            .iter()
            .position(|known| *known == name)
            .map(|shift| 1u64 << shift)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_bits_are_named_as_nvml_names_them() {
        assert_eq!(Throttle(0x40).names(), ["hw_thermal"]);
        assert_eq!(
            Throttle(0x4 | 0x80 | 0x1000).names(),
            ["sw_power_cap", "hw_power_brake", "0x1000"]
        );
        assert_eq!(Throttle::bit("hw_thermal"), Some(Throttle::HW_THERMAL));
        assert_eq!(Throttle::bit("sw_power_cap"), Some(Throttle::SW_POWER_CAP));
        assert_eq!(Throttle::bit("hw_slowdown"), Some(Throttle::HW_SLOWDOWN));
        assert_eq!(
            Throttle::bit("hw_power_brake"),
            Some(Throttle::HW_POWER_BRAKE)
        );
        assert_eq!(Throttle::bit("sw_thermal"), Some(Throttle::SW_THERMAL));
        assert_eq!(Throttle::bit("nonsense"), None);
    }
}
