//! Which free GPUs a request gets, and the environment a command runs with on them. Pure.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use super::usage::GpuRef;
use crate::snapshot::Vendor;

/// When GPUs were last used and released, for the order GPUs are handed out in.
#[derive(Debug, Clone, Default)]
pub struct UseMarks {
    /// When each user last used each GPU (held it, or ran a process on it): (uid, key) -> ms.
    pub last_used: HashMap<(u32, String), i64>,
    /// When each GPU's last reservation ended: key -> ms.
    pub last_released: HashMap<String, i64>,
}

/// Orders `free` GPUs for `uid`: the ones the user used most recently first, then the
/// least recently released (never released first), then by vendor and index.
pub fn order(mut free: Vec<GpuRef>, uid: u32, marks: &UseMarks) -> Vec<GpuRef> {
    free.sort_by_cached_key(|gpu| {
        let used = marks.last_used.get(&(uid, gpu.key.clone())).copied();
        let released = marks.last_released.get(&gpu.key).copied();
        (
            used.is_none(),
            Reverse(used),
            released.unwrap_or(i64::MIN),
            gpu.vendor,
            gpu.index,
        )
    });
    free
}

/// The environment of a command on `granted`: `CUDA_VISIBLE_DEVICES` (UUIDs, in PCI bus
/// order with `CUDA_DEVICE_ORDER=PCI_BUS_ID`; empty when no NVIDIA GPU is granted on a host
/// that has some, so CUDA sees none), `ROCR_VISIBLE_DEVICES` for AMD and `ZE_AFFINITY_MASK`
/// for Intel.
pub fn environment(granted: &[GpuRef], host_vendors: &[Vendor]) -> BTreeMap<String, String> {
    let ids = |vendor: Vendor, by_uuid: bool| -> Option<String> {
        let ids: Vec<String> = granted
            .iter()
            .filter(|gpu| gpu.vendor == vendor)
            .map(|gpu| match (&gpu.uuid, by_uuid) {
                (Some(uuid), true) => uuid.to_string(),
                // The runtimes number their own vendor's GPUs.
                _ => gpu.vendor_index.to_string(),
            })
            .collect();
        (!ids.is_empty() || host_vendors.contains(&vendor)).then(|| ids.join(","))
    };
    let mut environment = BTreeMap::new();
    if let Some(devices) = ids(Vendor::Nvidia, true) {
        environment.insert("CUDA_VISIBLE_DEVICES".to_owned(), devices);
        environment.insert("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned());
    }
    if let Some(devices) = ids(Vendor::Amd, true) {
        environment.insert("ROCR_VISIBLE_DEVICES".to_owned(), devices);
    }
    if let Some(devices) = ids(Vendor::Intel, false) {
        environment.insert("ZE_AFFINITY_MASK".to_owned(), devices);
    }
    environment
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn gpu(index: u32, vendor: Vendor) -> GpuRef {
        GpuRef {
            key: format!("GPU-{index}"),
            index,
            vendor_index: index % 4,
            uuid: Some(Arc::from(format!("GPU-{index}"))),
            vendor,
            name: None,
        }
    }

    fn indices(gpus: &[GpuRef]) -> Vec<u32> {
        gpus.iter().map(|g| g.index).collect()
    }

    #[test]
    fn recently_used_first_then_least_recently_released() {
        let free: Vec<GpuRef> = (0..5).map(|i| gpu(i, Vendor::Nvidia)).collect();
        let mut marks = UseMarks::default();
        marks.last_used.insert((7, "GPU-3".into()), 500);
        marks.last_used.insert((7, "GPU-1".into()), 900);
        marks.last_used.insert((8, "GPU-4".into()), 999);
        marks.last_released.insert("GPU-0".into(), 300);
        marks.last_released.insert("GPU-2".into(), 100);
        // GPU 4 was never released by anyone: it comes first among those user 7 never used.
        assert_eq!(indices(&order(free.clone(), 7, &marks)), [1, 3, 4, 2, 0]);
        assert_eq!(indices(&order(free, 8, &marks)), [4, 1, 3, 2, 0]);
    }

    #[test]
    fn environment_names_uuids_per_vendor() {
        let granted = [gpu(2, Vendor::Nvidia), gpu(5, Vendor::Nvidia)];
        let environment = environment(&granted, &[Vendor::Nvidia]);
        assert_eq!(environment["CUDA_VISIBLE_DEVICES"], "GPU-2,GPU-5");
        assert_eq!(environment["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert!(!environment.contains_key("ROCR_VISIBLE_DEVICES"));

        let amd_only = [gpu(5, Vendor::Amd), gpu(4, Vendor::Intel)];
        let mixed = super::environment(&amd_only, &[Vendor::Nvidia, Vendor::Amd, Vendor::Intel]);
        assert_eq!(mixed["CUDA_VISIBLE_DEVICES"], "", "CUDA must see no GPU");
        assert_eq!(mixed["ROCR_VISIBLE_DEVICES"], "GPU-5");
        // Level Zero numbers Intel's GPUs alone: host index 4 is Intel's first.
        assert_eq!(mixed["ZE_AFFINITY_MASK"], "0");
    }
}
