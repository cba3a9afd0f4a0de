//! Why an Intel GPU's clocks are held down, from the per-GT throttle files both drivers
//! publish (each `0` or `1`, a bit of the GT's PERF_LIMIT_REASONS register):
//!
//! - i915 (6.1 and later): `cardN/gt/gtM/throttle_reason_status` and
//!   `throttle_reason_<reason>`;
//! - xe: `device/tileT/gtM/freq0/throttle/status` and `reason_<reason>`.
//!
//! Each reason is mapped onto NVML's clock-event bits ([`REASONS`]; docs/health-amd.md has
//! the table), and the bits of every GT of the card are combined. `status` is read first, so
//! an unthrottled GT costs one read a tick; a reason with no NVML counterpart (Crescent
//! Island's `p0_freq`) is left out. A card with no such files has no throttle reading.

use std::io;
use std::path::{Path, PathBuf};

use super::Driver;
use super::sysfs::{self, Card, FieldReader};
use crate::health::Throttle;

const HW_THERMAL: u64 = Throttle::HW_SLOWDOWN | Throttle::HW_THERMAL;

/// Every reason file (without its driver's prefix) and the NVML bits it is reported as.
pub const REASONS: [(&str, u64); 17] = [
    // Package power limits: the firmware's power-capping loop.
    ("pl1", Throttle::SW_POWER_CAP),
    ("pl2", Throttle::SW_POWER_CAP),
    ("psys_pl1", Throttle::SW_POWER_CAP),
    ("psys_pl2", Throttle::SW_POWER_CAP),
    // Sustained current limit of the voltage regulator, held by the same loop.
    ("vr_tdc", Throttle::SW_POWER_CAP),
    // Peak current protection (PL4 is "package PL4, Iccmax etc.").
    ("pl4", Throttle::HW_SLOWDOWN),
    ("iccmax", Throttle::HW_SLOWDOWN),
    ("fastvmode", Throttle::HW_SLOWDOWN),
    // Platform power critical: the system asks for less power now.
    (
        "psys_crit",
        Throttle::HW_SLOWDOWN | Throttle::HW_POWER_BRAKE,
    ),
    // Temperature limits the firmware regulates to (RATL: running average thermal limit).
    ("thermal", Throttle::SW_THERMAL),
    ("ratl", Throttle::SW_THERMAL),
    ("soc_thermal", Throttle::SW_THERMAL),
    ("soc_avg_thermal", Throttle::SW_THERMAL),
    ("mem_thermal", Throttle::SW_THERMAL),
    ("vr_thermal", Throttle::SW_THERMAL),
    // Hardware signals: the platform's PROCHOT# pin, a regulator's thermal alert.
    ("prochot", HW_THERMAL),
    ("vr_thermalert", HW_THERMAL),
];

/// The directory of every GT of `card` that may hold throttle files.
fn gt_dirs(card: &Card) -> io::Result<Vec<PathBuf>> {
    match card.driver {
        Driver::Xe => {
            let mut dirs = Vec::new();
            for tile in numbered(&card.device_dir, "tile")? {
                let tile = card.device_dir.join(format!("tile{tile}"));
                for gt in numbered(&tile, "gt")? {
                    dirs.push(tile.join(format!("gt{gt}/freq0/throttle")));
                }
            }
            Ok(dirs)
        }
        _ => {
            let gts = card.card_dir.join("gt");
            Ok(numbered(&gts, "gt")?
                .into_iter()
                .map(|gt| gts.join(format!("gt{gt}")))
                .collect())
        }
    }
}

/// The `N` of every `<prefix>N` entry of `dir`, ascending; none when `dir` does not exist.
fn numbered(dir: &Path, prefix: &str) -> io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut numbers: Vec<u32> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let digits = name.to_str()?.strip_prefix(prefix)?;
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())?
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// The card's throttle reasons; `None` when no GT has a throttle status file. A file that
/// cannot be read is recorded in `fields` (named relative to the card's directory).
pub fn read(card: &Card, fields: &mut FieldReader) -> Option<Throttle> {
    let (status_file, reason_prefix) = match card.driver {
        Driver::Xe => ("status", "reason_"),
        _ => ("throttle_reason_status", "throttle_reason_"),
    };
    let dirs = fields.take("throttle", gt_dirs(card).map(Some))?;
    let mut throttle: Option<Throttle> = None;
    for dir in dirs {
        let label = |file: &str| {
            let path = dir.join(file);
            let base = match card.driver {
                Driver::Xe => &card.device_dir,
                _ => &card.card_dir,
            };
            path.strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string()
        };
        let Some(status) =
            fields.take(&label(status_file), sysfs::read_u64(&dir.join(status_file)))
        else {
            continue;
        };
        let bits = throttle.get_or_insert(Throttle(0));
        if status == 0 {
            continue;
        }
        for (reason, nvml) in REASONS {
            let file = format!("{reason_prefix}{reason}");
            if fields.take(&label(&file), sysfs::read_u64(&dir.join(&file))) == Some(1) {
                bits.0 |= nvml;
            }
        }
    }
    throttle
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::fs;

    fn card(root: &Path, driver: Driver) -> Card {
        let card_dir = root.join("class/drm/card5");
        let device_dir = card_dir.join("device");
        fs::create_dir_all(&device_dir).unwrap();
        Card {
            name: "card5".into(),
            number: 5,
            driver,
            pci_bus_id: Some("0000:0a:00.0".into()),
            vendor_id: Some(0x8086),
            device_id: Some(0x56a1),
            revision: Some(0x08),
            card_dir,
            device_dir,
        }
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (file, value) in files {
            fs::write(dir.join(file), value).unwrap();
        }
    }

    #[test]
    fn i915_reasons_of_every_gt_combined() {
        let root = tempfile::tempdir().unwrap();
        let card = card(root.path(), Driver::I915);
        write(
            &card.card_dir.join("gt/gt0"),
            &[
                ("throttle_reason_status", "1\n"),
                ("throttle_reason_pl1", "1\n"),
                ("throttle_reason_pl2", "0\n"),
                ("throttle_reason_thermal", "0\n"),
                ("throttle_reason_prochot", "0\n"),
            ],
        );
        write(
            &card.card_dir.join("gt/gt1"),
            &[
                ("throttle_reason_status", "1\n"),
                ("throttle_reason_prochot", "1\n"),
            ],
        );
        let mut fields = FieldReader::new();
        assert_eq!(
            read(&card, &mut fields),
            Some(Throttle(
                Throttle::SW_POWER_CAP | Throttle::HW_SLOWDOWN | Throttle::HW_THERMAL
            ))
        );
        assert_eq!(fields.into_error(), None);
    }

    #[test]
    fn xe_status_zero_is_not_throttled_and_its_reasons_are_not_read() {
        let root = tempfile::tempdir().unwrap();
        let card = card(root.path(), Driver::Xe);
        let throttle = card.device_dir.join("tile0/gt0/freq0/throttle");
        write(&throttle, &[("status", "0\n")]);
        // A reason that would be an error if it were read.
        fs::create_dir(throttle.join("reason_pl1")).unwrap();
        let mut fields = FieldReader::new();
        assert_eq!(read(&card, &mut fields), Some(Throttle(0)));
        assert_eq!(fields.into_error(), None);

        write(
            &throttle,
            &[
                ("status", "1\n"),
                ("reason_thermal", "1\n"),
                ("reason_ratl", "0\n"),
            ],
        );
        let mut fields = FieldReader::new();
        assert_eq!(
            read(&card, &mut fields),
            Some(Throttle(Throttle::SW_THERMAL))
        );
        assert_eq!(
            fields.into_error().as_deref(),
            Some("tile0/gt0/freq0/throttle/reason_pl1: Is a directory (os error 21)")
        );
    }

    #[test]
    fn no_throttle_files_is_no_reading() {
        let root = tempfile::tempdir().unwrap();
        for driver in [Driver::I915, Driver::Xe] {
            let card = card(root.path(), driver);
            // A GT directory without throttle files (an older kernel).
            fs::create_dir_all(card.card_dir.join("gt/gt0")).unwrap();
            fs::create_dir_all(card.device_dir.join("tile0/gt0/freq0")).unwrap();
            let mut fields = FieldReader::new();
            assert_eq!(read(&card, &mut fields), None);
            assert_eq!(fields.into_error(), None);
        }
    }

    #[test]
    fn the_docs_map_every_reason() {
        let docs = std::fs::read_to_string(crate::backends::drm::sysfs::fixture(
            "../../docs/health-amd.md",
        ))
        .unwrap();
        for (reason, _) in REASONS {
            assert!(docs.contains(&format!("`{reason}`")), "{reason}");
        }
    }

    #[test]
    fn a_garbled_status_is_an_error_and_no_reading() {
        let root = tempfile::tempdir().unwrap();
        let card = card(root.path(), Driver::I915);
        write(
            &card.card_dir.join("gt/gt0"),
            &[("throttle_reason_status", "yes\n")],
        );
        let mut fields = FieldReader::new();
        assert_eq!(read(&card, &mut fields), None);
        assert_eq!(
            fields.into_error().as_deref(),
            Some("gt/gt0/throttle_reason_status: not a number: \"yes\"")
        );
    }
}
