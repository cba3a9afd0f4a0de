//! The PCI bus as sysfs shows it (`<sysfs_root>/bus/pci/devices/<bus id>/{vendor,class}`):
//! whether a host has a GPU of a vendor at all, so that a vendor whose library or driver is
//! missing is told apart as absent (no such device) or failed (a device without its driver).

use std::io;
use std::path::Path;

use super::drm::sysfs::read_hex;

/// PCI vendor id of NVIDIA.
pub const NVIDIA: u16 = 0x10de;

/// The PCI base class of display controllers (VGA, XGA, 3D, other).
const DISPLAY_CLASS: u32 = 0x03;

/// The bus ids of `vendor`'s display controllers (VGA and 3D controllers: class 0x03xxxx)
/// under `<sysfs_root>/bus/pci/devices`, sorted. `Ok(empty)` when there is no PCI directory
/// at all (no PCI bus, or sysfs not mounted there).
pub fn display_controllers(sysfs_root: &Path, vendor: u16) -> io::Result<Vec<String>> {
    let devices = sysfs_root.join("bus/pci/devices");
    let entries = match std::fs::read_dir(&devices) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let dir = entry.path();
        let hex = |name: &str| read_hex::<u32>(&dir.join(name)).ok().flatten();
        let matches = hex("vendor") == Some(u32::from(vendor))
            && hex("class").map(|class| class >> 16) == Some(DISPLAY_CLASS);
        if matches {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(root: &Path, bus_id: &str, vendor: &str, class: &str) {
        let dir = root.join("bus/pci/devices").join(bus_id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(dir.join("class"), format!("{class}\n")).unwrap();
    }

    #[test]
    fn finds_only_the_vendors_display_and_3d_controllers() {
        let root = tempfile::tempdir().unwrap();
        device(root.path(), "0000:c1:00.0", "0x10de", "0x030200");
        device(root.path(), "0000:01:00.0", "0x10de", "0x030000");
        // NVIDIA's audio function and an NVSwitch bridge are not GPUs.
        device(root.path(), "0000:01:00.1", "0x10de", "0x040300");
        device(root.path(), "0000:05:00.0", "0x10de", "0x068000");
        // An ASPEED BMC is a VGA controller of another vendor.
        device(root.path(), "0000:02:00.0", "0x1a03", "0x030000");
        assert_eq!(
            display_controllers(root.path(), NVIDIA).unwrap(),
            vec!["0000:01:00.0".to_owned(), "0000:c1:00.0".to_owned()]
        );
    }

    #[test]
    fn no_pci_directory_means_no_devices() {
        let root = tempfile::tempdir().unwrap();
        assert!(display_controllers(root.path(), NVIDIA).unwrap().is_empty());
    }
}
