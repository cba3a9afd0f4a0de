//! Product names for AMD and Intel PCI ids, from the tables the distribution ships:
//! libdrm's `amdgpu.ids` (marketing names by device id and revision) and the PCI ID
//! repository's `pci.ids`.

use std::collections::HashMap;
use std::path::Path;

use super::sysfs::Card;

/// Where distributions install `pci.ids`, in the order to try.
pub const DEFAULT_PCI_IDS: &[&str] = &["/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids"];

/// PCI vendor ids whose devices `pci.ids` is kept for.
const VENDORS: [u16; 2] = [0x1002, 0x8086];
const AMD: u16 = 0x1002;

/// Product-name tables, loaded once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// `amdgpu.ids`: (device id, revision) -> marketing name.
    amdgpu: HashMap<(u16, u8), String>,
    /// `pci.ids`: (vendor id, device id) -> device name, AMD and Intel only.
    pci: HashMap<(u16, u16), String>,
}

impl Names {
    /// Loads the tables from these files; a file that is absent, unreadable or not given
    /// leaves its table empty (logged at debug).
    pub fn load(amdgpu_ids: Option<&Path>, pci_ids: Option<&Path>) -> Names {
        Names {
            amdgpu: amdgpu_ids
                .and_then(read)
                .map(|text| parse_amdgpu_ids(&text))
                .unwrap_or_default(),
            pci: pci_ids
                .and_then(read)
                .map(|text| parse_pci_ids(&text))
                .unwrap_or_default(),
        }
    }

    /// The product name of a device: `amdgpu.ids` by (device, revision) first (AMD only),
    /// then the `pci.ids` device name.
    pub fn name(&self, vendor_id: u16, device_id: u16, revision: Option<u8>) -> Option<String> {
        revision
            .filter(|_| vendor_id == AMD)
            .and_then(|revision| self.amdgpu.get(&(device_id, revision)))
            .or_else(|| self.pci.get(&(vendor_id, device_id)))
            .cloned()
    }

    /// The name of `card` from the tables, else `<brand> GPU [vvvv:dddd]` (`vendor_id` when
    /// the card's own is unknown).
    pub fn card_name(&self, card: &Card, vendor_id: u16, brand: &str) -> String {
        let (vendor, device) = (card.vendor_id.unwrap_or(vendor_id), card.device_id);
        device
            .and_then(|device| self.name(vendor, device, card.revision))
            .unwrap_or_else(|| match device {
                Some(device) => format!("{brand} GPU [{vendor:04x}:{device:04x}]"),
                None => format!("{brand} GPU"),
            })
    }
}

/// The first of [`DEFAULT_PCI_IDS`] that exists.
pub fn default_pci_ids() -> Option<&'static Path> {
    DEFAULT_PCI_IDS
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
}

fn read(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        // pci.ids is UTF-8 today but was Latin-1 once; a stray byte costs one name.
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(error) => {
            tracing::debug!("no product names from {}: {error}", path.display());
            None
        }
    }
}

/// `744C,\tC8,\tAMD Radeon RX 7900 XTX` lines; comments (`#`) and the version line (no
/// commas) are skipped.
fn parse_amdgpu_ids(text: &str) -> HashMap<(u16, u8), String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.splitn(3, ',');
            let device = u16::from_str_radix(fields.next()?.trim(), 16).ok()?;
            let revision = u8::from_str_radix(fields.next()?.trim(), 16).ok()?;
            let name = fields.next()?.trim();
            (!name.is_empty()).then(|| ((device, revision), name.to_owned()))
        })
        .collect()
}

/// Vendor lines (`1002  Advanced Micro Devices, ...`) and their device lines
/// (`\t740f  Aldebaran/MI200 [Instinct MI210]`), for AMD and Intel; subsystem lines (two
/// tabs), comments and the device-class section are skipped.
fn parse_pci_ids(text: &str) -> HashMap<(u16, u16), String> {
    let mut names = HashMap::new();
    let mut vendor: Option<u16> = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(device_line) = line.strip_prefix('\t') {
            if device_line.starts_with('\t') {
                continue; // a subsystem
            }
            let Some(vendor) = vendor else { continue };
            if let Some((id, name)) = id_and_name(device_line) {
                names.insert((vendor, id), name.to_owned());
            }
        } else {
            // A new vendor, or the class section (`C 03  Display controller`), which
            // matches no kept vendor.
            vendor = id_and_name(line)
                .map(|(id, _)| id)
                .filter(|id| VENDORS.contains(id));
        }
    }
    names
}

/// `740f  Aldebaran/MI200 [Instinct MI210]` -> (0x740f, the name).
fn id_and_name(line: &str) -> Option<(u16, &str)> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    if id.len() != 4 {
        return None;
    }
    let name = name.trim();
    Some((u16::from_str_radix(id, 16).ok()?, name)).filter(|_| !name.is_empty())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backends::drm::sysfs::fixture;

    fn fixture_names() -> Names {
        Names::load(Some(&fixture("amdgpu.ids")), Some(&fixture("pci.ids")))
    }

    #[test]
    fn amdgpu_ids_by_device_and_revision_first_then_pci_ids() {
        let names = fixture_names();
        assert_eq!(
            names.name(0x1002, 0x744c, Some(0xc8)).as_deref(),
            Some("AMD Radeon RX 7900 XTX")
        );
        // Another revision of the same device: amdgpu.ids has none, pci.ids does.
        assert_eq!(
            names.name(0x1002, 0x744c, Some(0xcc)).as_deref(),
            Some("Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]")
        );
        assert_eq!(
            names.name(0x1002, 0x740f, None).as_deref(),
            Some("Aldebaran/MI200 [Instinct MI210]")
        );
        assert_eq!(
            names.name(0x8086, 0x56a0, Some(0x08)).as_deref(),
            Some("DG2 [Arc A770]")
        );
        assert_eq!(
            names.name(0x8086, 0xe20b, Some(0x00)).as_deref(),
            Some("Battlemage G21 [Arc B580]")
        );
        // ASPEED is in the fixture's pci.ids, but only AMD and Intel are kept.
        assert_eq!(names.name(0x1a03, 0x2000, None), None);
        // A subsystem line is not a device.
        assert_eq!(names.name(0x1002, 0x0c34, None), None);
    }

    #[test]
    fn missing_files_give_empty_tables() {
        let names = Names::load(Some(Path::new("/nonexistent/amdgpu.ids")), None);
        assert_eq!(names, Names::default());
        assert_eq!(names.name(0x1002, 0x744c, Some(0xc8)), None);
    }

    #[test]
    fn parses_the_formats() {
        let amdgpu = parse_amdgpu_ids(
            "# comment\n1.0.0\n\n744C,\tC8,\tAMD Radeon RX 7900 XTX\n7480,\tC0,\tAMD Radeon RX 7600, 7600 XT\n",
        );
        assert_eq!(amdgpu.len(), 2);
        assert_eq!(amdgpu[&(0x7480, 0xc0)], "AMD Radeon RX 7600, 7600 XT");

        let pci = parse_pci_ids(
            "# c\n1002  AMD\n\t744c  Navi 31\n\t\t1002 0e3b  Sub\n10de  NVIDIA\n\t2330  H100\n8086  Intel\n\t56a0  DG2 [Arc A770]\nC 03  Display controller\n\t00  VGA compatible controller\n",
        );
        let mut keys: Vec<_> = pci.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![(0x1002, 0x744c), (0x8086, 0x56a0)]);
    }
}
