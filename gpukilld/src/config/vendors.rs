//! `[nvidia]`, `[amd]` and `[intel]`: the NVML and sysfs/DRM backends, and where they read
//! the kernel's files.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// The NVML library name the dynamic loader resolves when no path is configured.
pub const DEFAULT_NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// `[nvidia]`: the NVML backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvidiaConfig {
    /// Whether to poll NVIDIA GPUs.
    pub enabled: bool,
    /// Path or loader name of the NVML library; by default `libnvidia-ml.so.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    /// Where sysfs is mounted: when the library cannot be loaded, an NVIDIA display or 3D
    /// controller under `<sysfs_root>/bus/pci/devices` makes that a failure (the driver is
    /// missing); without one, NVIDIA is absent from this host and not reported.
    pub sysfs_root: PathBuf,
    /// The `nvidia-smi` that resets GPUs (NVML has no public reset call); a bare name is
    /// looked up on PATH.
    pub smi: PathBuf,
    /// How long `nvidia-smi --gpu-reset` may take before it is killed and the reset failed.
    #[serde(with = "duration")]
    pub reset_timeout: Duration,
}

impl Default for NvidiaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            library: None,
            sysfs_root: PathBuf::from("/sys"),
            smi: PathBuf::from("nvidia-smi"),
            reset_timeout: Duration::from_secs(60),
        }
    }
}

/// Where libdrm installs `amdgpu.ids`.
pub const DEFAULT_AMDGPU_IDS: &str = "/usr/share/libdrm/amdgpu.ids";

/// `[amd]`: AMD GPUs bound to the `amdgpu` driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmdConfig {
    /// Whether to look for AMD GPUs (a host without any lists none and shows no AMD status).
    pub enabled: bool,
    /// Where sysfs is mounted: the cards are `<sysfs_root>/class/drm/cardN`.
    pub sysfs_root: PathBuf,
    /// libdrm's table of AMD marketing names by device id and revision.
    pub ids_file: PathBuf,
    /// The `amd-smi` that resets GPUs (`amd-smi reset -G -g <bus id>`); a bare name is
    /// looked up on PATH.
    pub smi: PathBuf,
    /// The `rocm-smi` used when `amd-smi` is not installed (`rocm-smi --gpureset -d N`).
    pub rocm_smi: PathBuf,
    /// How long a reset may take before the tool is killed and the reset failed.
    #[serde(with = "duration")]
    pub reset_timeout: Duration,
}

impl Default for AmdConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sysfs_root: PathBuf::from("/sys"),
            ids_file: PathBuf::from(DEFAULT_AMDGPU_IDS),
            smi: PathBuf::from("amd-smi"),
            rocm_smi: PathBuf::from("rocm-smi"),
            reset_timeout: Duration::from_secs(60),
        }
    }
}

/// `[intel]`: Intel GPUs bound to the `i915` or `xe` driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntelConfig {
    /// Whether to look for Intel GPUs.
    pub enabled: bool,
    /// Where sysfs is mounted.
    pub sysfs_root: PathBuf,
}

impl Default for IntelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sysfs_root: PathBuf::from("/sys"),
        }
    }
}
