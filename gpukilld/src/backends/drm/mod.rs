//! AMD (`amdgpu`) and Intel (`i915`, `xe`) GPUs, read from files the kernel exposes:
//! devices from sysfs (`/sys/class/drm/cardN/device`), processes from DRM fdinfo
//! (`/proc/PID/fdinfo/FD` of the file descriptors that point at `/dev/dri/*`).

pub mod amd;
pub mod backend;
pub mod clients;
pub mod fdinfo;
pub mod gpu_metrics;
pub mod intel;
pub mod intel_throttle;
pub mod names;
pub mod ras;
pub mod sysfs;

use crate::snapshot::Vendor;

/// The kernel driver a DRM device is bound to; only these count as GPUs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Driver {
    /// AMD's `amdgpu`.
    Amdgpu,
    /// Intel's `i915`.
    I915,
    /// Intel's `xe`.
    Xe,
}

impl Driver {
    /// The driver of this kernel name (`amdgpu`, `i915`, `xe`); `None` for any other
    /// (`ast`, `nvidia-drm`, `virtio_gpu`, ...).
    pub fn from_name(name: &str) -> Option<Driver> {
        match name {
            "amdgpu" => Some(Driver::Amdgpu),
            "i915" => Some(Driver::I915),
            "xe" => Some(Driver::Xe),
            _ => None,
        }
    }

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Amdgpu => "amdgpu",
            Driver::I915 => "i915",
            Driver::Xe => "xe",
        }
    }

    /// Whose GPUs it drives.
    pub fn vendor(self) -> Vendor {
        match self {
            Driver::Amdgpu => Vendor::Amd,
            Driver::I915 | Driver::Xe => Vendor::Intel,
        }
    }
}
