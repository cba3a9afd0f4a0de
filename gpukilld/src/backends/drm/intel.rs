//! One Intel GPU's device-level metrics, from the files `i915` and `xe` expose in sysfs.
//!
//! Intel's drivers publish much less than amdgpu: there is no busy percent and no used
//! memory in sysfs (the caller computes both from DRM fdinfo), no UUID, and hwmon exists
//! only for discrete cards. Files read (each may be absent: the metric is then absent):
//!
//! - clock: i915 `cardN/gt_act_freq_mhz`, else `cardN/gt/gt0/rps_act_freq_mhz`
//!   (i915 puts its GT attributes on the DRM card, not the PCI device); xe
//!   `device/tile0/gt0/freq0/act_freq` (the frequency PCODE actually resolved, MHz).
//! - memory total: xe `device/tileN/physical_vram_size_bytes`, summed over tiles (the
//!   physical VRAM of each tile, including what the driver reserves; present on the xe
//!   releases that publish it — mainline 6.12 does not, and then the total is absent);
//!   i915 `cardN/lmem_total_bytes`, which only Intel's out-of-tree i915 backport registers
//!   (on the DRM card); mainline i915 has no VRAM total in sysfs.
//! - hwmon (`device/hwmon/hwmonN`): `energy1_input` (i915's one channel, xe's `card`
//!   channel) else `energy2_input` (xe's `pkg` channel, the only one on some cards), in µJ;
//!   `power1_average`/`power1_input` when a kernel has them (neither driver does today);
//!   `temp*_input` with `temp*_label` (xe labels `pkg` and `vram`; i915 has none).
//! - health: the GT throttle reasons (see [`intel_throttle`]); nothing else of health.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::names::Names;
use super::sysfs::{self, Card, FieldReader};
use super::{Driver, intel_throttle};
use crate::health::HealthReading;
use crate::snapshot::Gpu;

/// What one Intel card's reading keeps between polls: the last energy reading, from which
/// the next poll's power is computed.
#[derive(Debug, Clone, Default)]
pub struct IntelState {
    /// Energy counter (µJ) and when it was read.
    last_energy: Option<(u64, Instant)>,
}

/// Reads one Intel GPU at `now`: its metrics and its health readings. `index` becomes both
/// `index` and `vendor_index`.
/// `power_mw` is the average over the time since the previous poll of this card (from the
/// energy counter); the first poll has none unless the kernel exposes a power reading.
/// Read errors other than a missing file are named in `gpu.error` as `"<file>: <error>"`.
pub fn read_gpu(
    index: u32,
    card: &Card,
    names: &Names,
    state: &mut IntelState,
    now: Instant,
) -> (Gpu, HealthReading) {
    let identity = Gpu {
        index,
        vendor_index: index,
        name: Some(Arc::from(names.card_name(card, 0x8086, "Intel"))),
        pci_bus_id: card.pci_bus_id.as_deref().map(Arc::from),
        reset_supported: Some(false),
        ..Gpu::default()
    };
    if let Err(error) = std::fs::metadata(&card.device_dir) {
        state.last_energy = None;
        let gpu = Gpu {
            error: Some(format!("{}: {error}", card.device_dir.display())),
            ..identity
        };
        return (gpu, HealthReading::default());
    }

    let mut fields = FieldReader::new();
    let clock_sm_mhz = match card.driver {
        Driver::Xe => fields.u64(&card.device_dir, "tile0/gt0/freq0/act_freq"),
        _ => match fields.u64(&card.card_dir, "gt_act_freq_mhz") {
            Some(mhz) => Some(mhz),
            None => fields.u64(&card.card_dir, "gt/gt0/rps_act_freq_mhz"),
        },
    }
    .and_then(|mhz| u32::try_from(mhz).ok());
    let memory_total_bytes = match card.driver {
        Driver::Xe => xe_vram_total(&card.device_dir, &mut fields),
        _ => fields.u64(&card.card_dir, "lmem_total_bytes"),
    };

    let mut gpu = Gpu {
        memory_total_bytes,
        clock_sm_mhz,
        ..identity
    };
    match fields.take("hwmon", sysfs::hwmon_dir(&card.device_dir)) {
        Some(hwmon) => read_hwmon(&hwmon, &mut fields, state, now, &mut gpu),
        None => state.last_energy = None,
    }
    let health = HealthReading {
        throttle: intel_throttle::read(card, &mut fields),
        ..HealthReading::default()
    };
    gpu.error = fields.into_error();
    (gpu, health)
}

/// The sum of `tileN/physical_vram_size_bytes` over the tiles that have one.
fn xe_vram_total(device_dir: &Path, fields: &mut FieldReader) -> Option<u64> {
    let tiles = fields.take(
        "tile*",
        std::fs::read_dir(device_dir).map(|entries| {
            let mut tiles: Vec<u32> = entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name();
                    name.to_str()?.strip_prefix("tile")?.parse().ok()
                })
                .collect();
            tiles.sort_unstable();
            Some(tiles)
        }),
    )?;
    tiles
        .into_iter()
        .filter_map(|tile| fields.u64(device_dir, &format!("tile{tile}/physical_vram_size_bytes")))
        .reduce(u64::saturating_add)
}

fn read_hwmon(
    hwmon: &Path,
    fields: &mut FieldReader,
    state: &mut IntelState,
    now: Instant,
    gpu: &mut Gpu,
) {
    let energy_uj = match fields.u64(hwmon, "energy1_input") {
        Some(uj) => Some(uj),
        None => fields.u64(hwmon, "energy2_input"),
    };
    gpu.energy_total_mj = energy_uj.map(sysfs::micro_to_milli);
    let previous = std::mem::replace(&mut state.last_energy, energy_uj.map(|uj| (uj, now)));
    let from_energy = match (previous, energy_uj) {
        (Some(previous), Some(uj)) => average_power_mw(previous, (uj, now)),
        _ => None,
    };
    gpu.power_mw = from_energy.or_else(|| sysfs::hwmon_power_mw(hwmon, fields));
    gpu.temperature_c = temperature_file(hwmon, fields)
        .and_then(|file| fields.i64(hwmon, &file))
        .and_then(sysfs::millidegrees_to_c);
}

/// Milliwatts between two (µJ, time) readings; `None` when no time passed or the counter
/// went back (the driver was reloaded).
fn average_power_mw(before: (u64, Instant), after: (u64, Instant)) -> Option<u32> {
    let energy_uj = after.0.checked_sub(before.0)?;
    let elapsed_ns = after.1.checked_duration_since(before.1)?.as_nanos();
    if elapsed_ns == 0 {
        return None;
    }
    // µJ per ns is kW: scale by 10^6 for mW, rounding to nearest.
    let mw = (u128::from(energy_uj) * 1_000_000 + elapsed_ns / 2) / elapsed_ns;
    u32::try_from(mw).ok()
}

/// The `tempN_input` to report: the one labelled `pkg`, else the lowest-numbered one.
fn temperature_file(hwmon: &Path, fields: &mut FieldReader) -> Option<String> {
    let pkg = fields
        .take("hwmon", sysfs::channels(hwmon, "temp", "label").map(Some))
        .unwrap_or_default()
        .into_iter()
        .find(|n| fields.string(hwmon, &format!("temp{n}_label")).as_deref() == Some("pkg"));
    let channel = match pkg {
        Some(n) => n,
        None => *fields
            .take("hwmon", sysfs::channels(hwmon, "temp", "input").map(Some))
            .unwrap_or_default()
            .first()?,
    };
    Some(format!("temp{channel}_input"))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backends::drm::sysfs::{discover, fixture};
    use crate::health::Throttle;
    use std::fs;
    use std::time::Duration;

    fn fixture_cards() -> (Names, Vec<Card>) {
        let names = Names::load(Some(&fixture("amdgpu.ids")), Some(&fixture("pci.ids")));
        let cards = discover(&fixture("sysfs/mixed"))
            .unwrap()
            .into_iter()
            .filter(|card| card.driver.vendor() == crate::snapshot::Vendor::Intel)
            .collect();
        (names, cards)
    }

    #[test]
    fn arc_a770_on_i915() {
        let (names, cards) = fixture_cards();
        let mut state = IntelState::default();
        let t0 = Instant::now();
        let (first, health) = read_gpu(0, &cards[0], &names, &mut state, t0);
        // gt0 throttled at its PL1 power limit.
        assert_eq!(
            health,
            HealthReading {
                throttle: Some(Throttle(Throttle::SW_POWER_CAP)),
                ..HealthReading::default()
            }
        );
        let expected = Gpu {
            index: 0,
            vendor_index: 0,
            uuid: None,
            name: Some(Arc::from("DG2 [Arc A770]")),
            pci_bus_id: Some(Arc::from("0000:05:00.0")),
            memory_used_bytes: None,
            // Mainline i915 publishes no VRAM total.
            memory_total_bytes: None,
            gtt_used_bytes: None,
            gtt_total_bytes: None,
            utilization_gpu_pct: None,
            utilization_memory_pct: None,
            temperature_c: None,
            // First poll: no previous energy, no power file.
            power_mw: None,
            energy_total_mj: Some(123_456_789),
            fan_speed_pct: None,
            clock_sm_mhz: Some(2100),
            clock_mem_mhz: None,
            ecc_volatile_errors: None,
            mig_enabled: None,
            reset_supported: Some(false),
            error: None,
            gpm: None,
            health: Default::default(),
        };
        assert_eq!(first, expected);
        // The counter did not move in 2 s: a measured 0 W.
        let (second, _) = read_gpu(
            0,
            &cards[0],
            &names,
            &mut state,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(
            second,
            Gpu {
                power_mw: Some(0),
                ..expected
            }
        );
    }

    #[test]
    fn arc_b580_on_xe() {
        let (names, cards) = fixture_cards();
        let mut state = IntelState::default();
        let (gpu, health) = read_gpu(1, &cards[1], &names, &mut state, Instant::now());
        // Thermally throttled.
        assert_eq!(health.throttle, Some(Throttle(Throttle::SW_THERMAL)));
        assert_eq!(
            gpu,
            Gpu {
                index: 1,
                vendor_index: 1,
                uuid: None,
                name: Some(Arc::from("Battlemage G21 [Arc B580]")),
                pci_bus_id: Some(Arc::from("0000:08:00.0")),
                memory_used_bytes: None,
                memory_total_bytes: Some(12 << 30),
                gtt_used_bytes: None,
                gtt_total_bytes: None,
                utilization_gpu_pct: None,
                utilization_memory_pct: None,
                // pkg (temp2), not vram (temp3).
                temperature_c: Some(55),
                power_mw: None,
                // energy1 (card), not energy2 (pkg).
                energy_total_mj: Some(9_876_543),
                fan_speed_pct: None,
                clock_sm_mhz: Some(2850),
                clock_mem_mhz: None,
                ecc_volatile_errors: None,
                mig_enabled: None,
                reset_supported: Some(false),
                error: None,
                gpm: None,
                health: Default::default(),
            }
        );
    }

    fn temp_card(root: &Path, driver: Driver) -> Card {
        let card_dir = root.join("class/drm/card5");
        let device_dir = card_dir.join("device");
        fs::create_dir_all(device_dir.join("hwmon/hwmon2")).unwrap();
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

    #[test]
    fn power_is_the_energy_delta_between_polls() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path(), Driver::I915);
        let energy = card.device_dir.join("hwmon/hwmon2/energy1_input");
        let mut state = IntelState::default();
        let t0 = Instant::now();

        fs::write(&energy, "1000000000\n").unwrap();
        let (gpu, _) = read_gpu(0, &card, &Names::default(), &mut state, t0);
        assert_eq!(gpu.name.as_deref(), Some("Intel GPU [8086:56a1]"));
        assert_eq!((gpu.power_mw, gpu.energy_total_mj), (None, Some(1_000_000)));

        // 45 J in 1.5 s: 30 W.
        fs::write(&energy, "1045000000\n").unwrap();
        let t1 = t0 + Duration::from_millis(1500);
        let (gpu, _) = read_gpu(0, &card, &Names::default(), &mut state, t1);
        assert_eq!(
            (gpu.power_mw, gpu.energy_total_mj),
            (Some(30_000), Some(1_045_000))
        );

        // The counter went back (driver reloaded): no power this poll, then again.
        fs::write(&energy, "5000000\n").unwrap();
        let t2 = t1 + Duration::from_secs(1);
        let (gpu, _) = read_gpu(0, &card, &Names::default(), &mut state, t2);
        assert_eq!(gpu.power_mw, None);
        fs::write(&energy, "5250000\n").unwrap();
        let (gpu, _) = read_gpu(
            0,
            &card,
            &Names::default(),
            &mut state,
            t2 + Duration::from_secs(1),
        );
        assert_eq!(gpu.power_mw, Some(250));
        assert_eq!(gpu.error, None);
    }

    #[test]
    fn i915_fallbacks_and_a_read_error() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path(), Driver::I915);
        fs::create_dir_all(card.card_dir.join("gt/gt0")).unwrap();
        fs::write(card.card_dir.join("gt/gt0/rps_act_freq_mhz"), "1950\n").unwrap();
        fs::write(card.card_dir.join("lmem_total_bytes"), "17179869184\n").unwrap();
        let hwmon = card.device_dir.join("hwmon/hwmon2");
        fs::write(hwmon.join("power1_input"), "42000000\n").unwrap();
        fs::write(hwmon.join("temp1_input"), "48000\n").unwrap();
        // A directory where a file is expected: EISDIR, not NotFound.
        fs::create_dir(hwmon.join("energy1_input")).unwrap();

        let (gpu, _) = read_gpu(
            0,
            &card,
            &Names::default(),
            &mut IntelState::default(),
            Instant::now(),
        );
        assert_eq!(gpu.clock_sm_mhz, Some(1950));
        assert_eq!(gpu.memory_total_bytes, Some(16 << 30));
        assert_eq!(gpu.power_mw, Some(42_000));
        assert_eq!(gpu.temperature_c, Some(48));
        assert_eq!(gpu.energy_total_mj, None);
        let error = gpu.error.unwrap();
        assert!(
            error.starts_with("energy1_input: Is a directory"),
            "{error}"
        );
    }

    #[test]
    fn xe_sums_vram_over_tiles() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path(), Driver::Xe);
        for tile in ["tile0", "tile1"] {
            fs::create_dir_all(card.device_dir.join(tile)).unwrap();
            fs::write(
                card.device_dir.join(tile).join("physical_vram_size_bytes"),
                "68719476736\n",
            )
            .unwrap();
        }
        let (gpu, _) = read_gpu(
            0,
            &card,
            &Names::default(),
            &mut IntelState::default(),
            Instant::now(),
        );
        assert_eq!(gpu.memory_total_bytes, Some(128 << 30));
        assert_eq!(gpu.error, None);
    }

    #[test]
    fn average_power() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(average_power_mw((0, t0), (100_000_000, t1)), Some(50_000));
        assert_eq!(average_power_mw((0, t0), (1, t0)), None);
        assert_eq!(average_power_mw((10, t0), (5, t1)), None);
    }
}
