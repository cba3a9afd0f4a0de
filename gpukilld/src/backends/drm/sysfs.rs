//! Finding the DRM cards bound to a GPU driver under sysfs, and reading single values
//! from sysfs files.
//!
//! A card is `<sysfs>/class/drm/cardN`; its PCI device is `cardN/device` (on a real system
//! both are symlinks into `/sys/devices/pci...`). The driver comes from `device/uevent`
//! (`DRIVER=`), or from the name of the `device/driver` symlink when uevent does not say.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use super::Driver;

/// One DRM card bound to `amdgpu`, `i915` or `xe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The entry's name under `class/drm`, e.g. `card0`.
    pub name: String,
    /// The `N` of `cardN`.
    pub number: u32,
    /// The driver the PCI device is bound to.
    pub driver: Driver,
    /// PCI address (domain:bus:device.function), e.g. `0000:03:00.0`.
    pub pci_bus_id: Option<String>,
    /// PCI vendor id (0x1002 AMD, 0x8086 Intel).
    pub vendor_id: Option<u16>,
    /// PCI device id.
    pub device_id: Option<u16>,
    /// PCI revision id (`device/revision`).
    pub revision: Option<u8>,
    /// `<sysfs>/class/drm/cardN`.
    pub card_dir: PathBuf,
    /// `card_dir/device`, the PCI device.
    pub device_dir: PathBuf,
}

/// Cards under `<sysfs_root>/class/drm` bound to amdgpu/i915/xe, ordered by card number.
/// `Ok(empty)` when `class/drm` does not exist; `Err` when it exists but cannot be listed.
/// Connectors (`card0-DP-1`), render nodes (`renderD128`) and devices bound to any other
/// driver (a BMC's `ast`, `nvidia-drm`, `virtio_gpu`, ...) are left out; a card whose driver
/// cannot be learned is left out too (logged at debug).
pub fn discover(sysfs_root: &Path) -> io::Result<Vec<Card>> {
    let drm_dir = sysfs_root.join("class/drm");
    let entries = match fs::read_dir(&drm_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut cards = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(number) = card_number(&name) else {
            continue;
        };
        if let Some(card) = read_card(name, number, entry.path()) {
            cards.push(card);
        }
    }
    cards.sort_by_key(|card| card.number);
    Ok(cards)
}

/// `N` for an entry named exactly `cardN`.
fn card_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("card")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The card at `card_dir`, when its device is bound to a GPU driver this backend reads.
fn read_card(name: String, number: u32, card_dir: PathBuf) -> Option<Card> {
    let device_dir = card_dir.join("device");
    let uevent = match read_string(&device_dir.join("uevent")) {
        Ok(text) => text.unwrap_or_default(),
        Err(error) => {
            tracing::debug!("{}: cannot read device/uevent: {error}", card_dir.display());
            String::new()
        }
    };
    let field = |key: &str| {
        uevent.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    };
    let driver_name = field("DRIVER").or_else(|| {
        fs::read_link(device_dir.join("driver"))
            .ok()?
            .file_name()?
            .to_str()
            .map(str::to_owned)
    });
    let Some(driver) = driver_name.as_deref().and_then(Driver::from_name) else {
        tracing::debug!(
            "{}: not a GPU this backend reads (driver {})",
            card_dir.display(),
            driver_name.as_deref().unwrap_or("unknown")
        );
        return None;
    };
    let (mut vendor_id, mut device_id) = field("PCI_ID")
        .and_then(|ids| {
            let (vendor, device) = ids.split_once(':')?;
            Some((parse_hex_u16(vendor), parse_hex_u16(device)))
        })
        .unwrap_or((None, None));
    // Without PCI_ID in uevent, the PCI device's own id files say the same.
    if vendor_id.is_none() {
        vendor_id = read_hex(&device_dir.join("vendor")).ok().flatten();
    }
    if device_id.is_none() {
        device_id = read_hex(&device_dir.join("device")).ok().flatten();
    }
    let revision = read_hex(&device_dir.join("revision")).ok().flatten();
    let pci_bus_id = field("PCI_SLOT_NAME").or_else(|| {
        // The device link's target ends in the PCI address.
        fs::read_link(&device_dir)
            .ok()?
            .file_name()?
            .to_str()
            .filter(|name| name.contains(':'))
            .map(str::to_owned)
    });
    Some(Card {
        name,
        number,
        driver,
        pci_bus_id,
        vendor_id,
        device_id,
        revision,
        card_dir,
        device_dir,
    })
}

/// A hex number with or without `0x` (`1002`, `0x740f`).
fn parse_hex_u16(text: &str) -> Option<u16> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u16::from_str_radix(digits, 16).ok()
}

/// The trimmed contents of one sysfs file; `Ok(None)` when it does not exist.
pub fn read_string(path: &Path) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// One sysfs file holding an unsigned decimal integer (a `0x` prefix is read as hex);
/// `Ok(None)` when it does not exist, `InvalidData` when it holds something else.
pub fn read_u64(path: &Path) -> io::Result<Option<u64>> {
    let Some(text) = read_string(path)? else {
        return Ok(None);
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    parsed.map(Some).ok_or_else(|| not_a_number(&text))
}

/// One sysfs file holding a signed decimal integer (temperatures in millidegrees);
/// `Ok(None)` when it does not exist.
pub fn read_i64(path: &Path) -> io::Result<Option<i64>> {
    let Some(text) = read_string(path)? else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| not_a_number(&text))
}

/// One sysfs file holding a hex id (`0x1002`, `0xc8`), as PCI `vendor`, `device` and
/// `revision` do; `Ok(None)` when it does not exist.
pub fn read_hex<T: TryFrom<u64>>(path: &Path) -> io::Result<Option<T>> {
    let Some(text) = read_string(path)? else {
        return Ok(None);
    };
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    u64::from_str_radix(digits, 16)
        .ok()
        .and_then(|value| T::try_from(value).ok())
        .map(Some)
        .ok_or_else(|| not_a_number(&text))
}

fn not_a_number(text: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("not a number: {text:?}"))
}

/// The first `hwmon*` directory under `device_dir/hwmon` (a GPU has one), by number;
/// `Ok(None)` when the device has none.
pub fn hwmon_dir(device_dir: &Path) -> io::Result<Option<PathBuf>> {
    let entries = match fs::read_dir(device_dir.join("hwmon")) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_prefix("hwmon"))
            .and_then(|digits| digits.parse::<u32>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(lowest, _)| number < *lowest) {
            best = Some((number, entry.path()));
        }
    }
    Ok(best.map(|(_, path)| path))
}

/// The channel numbers `N` of the files `<prefix>N_<suffix>` in `dir`, ascending
/// (`temp`, `label` -> the N of every `tempN_label`).
pub fn channels(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<u32>> {
    let mut numbers: Vec<u32> = fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let rest = name.to_str()?.strip_prefix(prefix)?;
            let (digits, tail) = rest.split_once('_')?;
            (tail == suffix).then(|| digits.parse().ok())?
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Reads one GPU's files: a file that does not exist is an unsupported metric (`None`, no
/// error); any other failure is named in the error, as `"<file>: <error>"`.
#[derive(Debug, Default)]
pub struct FieldReader {
    errors: Vec<String>,
}

impl FieldReader {
    /// A reader with no errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `read`, or `None` with the error recorded under `file`.
    pub fn take<T>(&mut self, file: &str, read: io::Result<Option<T>>) -> Option<T> {
        match read {
            Ok(value) => value,
            Err(error) => {
                self.record(file, &error);
                None
            }
        }
    }

    /// Records a failure to read `file`.
    pub fn record(&mut self, file: &str, error: &dyn std::fmt::Display) {
        self.errors.push(format!("{file}: {error}"));
    }

    /// `dir/file` as a trimmed string.
    pub fn string(&mut self, dir: &Path, file: &str) -> Option<String> {
        self.take(file, read_string(&dir.join(file)))
    }

    /// `dir/file` as an unsigned integer.
    pub fn u64(&mut self, dir: &Path, file: &str) -> Option<u64> {
        self.take(file, read_u64(&dir.join(file)))
    }

    /// `dir/file` as a signed integer.
    pub fn i64(&mut self, dir: &Path, file: &str) -> Option<i64> {
        self.take(file, read_i64(&dir.join(file)))
    }

    /// `dir/file` parsed by `parse`; a parse failure is recorded like a read failure.
    pub fn parsed<T>(
        &mut self,
        dir: &Path,
        file: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(dir, file)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(error) => {
                self.record(file, &error);
                None
            }
        }
    }

    /// The recorded errors joined with `"; "`, or `None` when there were none.
    pub fn into_error(self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }
}

/// Millidegrees Celsius to whole degrees, rounded to nearest.
pub fn millidegrees_to_c(millidegrees: i64) -> Option<i32> {
    i32::try_from((millidegrees + 500).div_euclid(1000)).ok()
}

/// Micro-units (µW, µJ) to milli-units, rounded to nearest.
pub fn micro_to_milli(micro: u64) -> u64 {
    micro.saturating_add(500) / 1000
}

/// The hwmon power reading in milliwatts: `power1_average` (most amdgpu ASICs), else
/// `power1_input` (newer kernels give some that instead), both microwatts.
pub fn hwmon_power_mw(hwmon: &Path, fields: &mut FieldReader) -> Option<u32> {
    let microwatts = match fields.u64(hwmon, "power1_average") {
        Some(uw) => Some(uw),
        None => fields.u64(hwmon, "power1_input"),
    };
    microwatts.and_then(|uw| u32::try_from(micro_to_milli(uw)).ok())
}

/// Where the test trees live.
#[cfg(test)]
pub(crate) fn fixture(path: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(path)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn discovers_gpu_cards_only_in_card_order() {
        let root = fixture("sysfs/mixed");
        let cards = discover(&root).unwrap();
        let summary: Vec<_> = cards
            .iter()
            .map(|card| {
                (
                    card.name.as_str(),
                    card.number,
                    card.driver,
                    card.pci_bus_id.as_deref(),
                    card.vendor_id,
                    card.device_id,
                    card.revision,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "card1",
                    1,
                    Driver::Amdgpu,
                    Some("0000:03:00.0"),
                    Some(0x1002),
                    Some(0x740f),
                    Some(0x02)
                ),
                (
                    "card2",
                    2,
                    Driver::Amdgpu,
                    Some("0000:0c:00.0"),
                    Some(0x1002),
                    Some(0x744c),
                    Some(0xc8)
                ),
                (
                    "card3",
                    3,
                    Driver::I915,
                    Some("0000:05:00.0"),
                    Some(0x8086),
                    Some(0x56a0),
                    Some(0x08)
                ),
                (
                    "card4",
                    4,
                    Driver::Xe,
                    Some("0000:08:00.0"),
                    Some(0x8086),
                    Some(0xe20b),
                    Some(0x00)
                ),
            ]
        );
        let first = &cards[0];
        assert_eq!(first.card_dir, root.join("class/drm/card1"));
        assert_eq!(first.device_dir, root.join("class/drm/card1/device"));
    }

    #[test]
    fn no_drm_class_is_no_cards_and_an_unlistable_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(discover(dir.path()).unwrap(), Vec::new());

        // class/drm is a file: it exists but cannot be listed.
        fs::create_dir(dir.path().join("class")).unwrap();
        fs::write(dir.path().join("class/drm"), "").unwrap();
        assert!(discover(dir.path()).is_err());
    }

    #[test]
    fn driver_falls_back_to_the_driver_link_and_ids_to_the_id_files() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("class/drm/card7/device");
        fs::create_dir_all(&device).unwrap();
        std::os::unix::fs::symlink("../../../../bus/pci/drivers/xe", device.join("driver"))
            .unwrap();
        fs::write(device.join("uevent"), "PCI_SLOT_NAME=0000:0a:00.0\n").unwrap();
        fs::write(device.join("vendor"), "0x8086\n").unwrap();
        fs::write(device.join("device"), "0xe20b\n").unwrap();
        let cards = discover(dir.path()).unwrap();
        assert_eq!(cards.len(), 1);
        assert_eq!(cards[0].driver, Driver::Xe);
        assert_eq!(cards[0].number, 7);
        assert_eq!(cards[0].pci_bus_id.as_deref(), Some("0000:0a:00.0"));
        assert_eq!(
            (cards[0].vendor_id, cards[0].device_id),
            (Some(0x8086), Some(0xe20b))
        );
        assert_eq!(cards[0].revision, None);

        // Bound to nothing: not a GPU this backend reads.
        fs::remove_file(device.join("driver")).unwrap();
        assert_eq!(discover(dir.path()).unwrap(), Vec::new());
    }

    #[test]
    fn value_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        fs::write(path("n"), "  42\n").unwrap();
        fs::write(path("hex"), "0xc8\n").unwrap();
        fs::write(path("neg"), "-5000\n").unwrap();
        fs::write(path("junk"), "many\n").unwrap();
        fs::create_dir(path("dir")).unwrap();

        assert_eq!(read_u64(&path("n")).unwrap(), Some(42));
        assert_eq!(read_u64(&path("hex")).unwrap(), Some(0xc8));
        assert_eq!(read_u64(&path("missing")).unwrap(), None);
        assert_eq!(
            read_u64(&path("junk")).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        assert!(read_u64(&path("dir")).is_err());
        assert_eq!(read_i64(&path("neg")).unwrap(), Some(-5000));
        assert_eq!(read_hex::<u8>(&path("hex")).unwrap(), Some(0xc8));
        assert!(read_hex::<u8>(&path("n")).is_ok());
        assert_eq!(read_string(&path("n")).unwrap().as_deref(), Some("42"));

        let mut reader = FieldReader::new();
        assert_eq!(reader.u64(dir.path(), "missing"), None);
        assert_eq!(reader.u64(dir.path(), "n"), Some(42));
        assert!(reader.into_error().is_none(), "absent files are not errors");

        assert_eq!(millidegrees_to_c(43_499), Some(43));
        assert_eq!(millidegrees_to_c(43_500), Some(44));
        assert_eq!(millidegrees_to_c(-5_000), Some(-5));
        assert_eq!(micro_to_milli(187_000_000), 187_000);
    }

    #[test]
    fn hwmon_dir_is_the_lowest_numbered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(hwmon_dir(dir.path()).unwrap(), None);
        fs::create_dir_all(dir.path().join("hwmon/hwmon12")).unwrap();
        fs::create_dir_all(dir.path().join("hwmon/hwmon3")).unwrap();
        assert_eq!(
            hwmon_dir(dir.path()).unwrap(),
            Some(dir.path().join("hwmon/hwmon3"))
        );
    }
}
