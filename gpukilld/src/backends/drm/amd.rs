//! One AMD GPU's device-level metrics, from the files `amdgpu` exposes under
//! `/sys/class/drm/cardN/device` and its hwmon directory.
//!
//! Files read (each may be absent: the metric is then absent, not an error):
//! `product_name`, `unique_id`, `gpu_busy_percent`, `mem_busy_percent`,
//! `mem_info_vram_{used,total}`, `mem_info_gtt_{used,total}`, `pp_dpm_sclk`, `pp_dpm_mclk`,
//! `ras/umc_err_count`, and in `hwmon/hwmonN`: `temp*_{input,label}`, `power1_average`,
//! `power1_input`, `energy1_input`, `pwm1`, `pwm1_max`.

use std::path::Path;
use std::sync::Arc;

use super::names::Names;
use super::sysfs::{self, Card, FieldReader};
use crate::snapshot::Gpu;

/// Reads one AMD GPU. `index` becomes both `index` and `vendor_index`. Read errors other
/// than a missing file are named in `gpu.error` as `"<file>: <error>"`; a card whose device
/// directory has gone is reported with its identity and an error, metrics absent.
pub fn read_gpu(index: u32, card: &Card, names: &Names) -> Gpu {
    let identity = Gpu {
        index,
        vendor_index: index,
        pci_bus_id: card.pci_bus_id.as_deref().map(Arc::from),
        reset_supported: Some(true),
        ..Gpu::default()
    };
    if let Err(error) = std::fs::metadata(&card.device_dir) {
        return Gpu {
            name: Some(Arc::from(names.card_name(card, 0x1002, "AMD"))),
            error: Some(format!("{}: {error}", card.device_dir.display())),
            ..identity
        };
    }

    let dir = card.device_dir.as_path();
    let mut fields = FieldReader::new();
    let name = fields
        .string(dir, "product_name")
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| names.card_name(card, 0x1002, "AMD"));
    // rocminfo prints the same 64-bit id as `GPU-<hex>`.
    let uuid = fields
        .string(dir, "unique_id")
        .filter(|id| !id.is_empty())
        .map(|id| Arc::from(format!("GPU-{id}")));
    let percent = |fields: &mut FieldReader, file| {
        fields
            .u64(dir, file)
            .and_then(|pct| u32::try_from(pct).ok())
    };
    let utilization_gpu_pct = percent(&mut fields, "gpu_busy_percent");
    let utilization_memory_pct = percent(&mut fields, "mem_busy_percent");
    let memory_used_bytes = fields.u64(dir, "mem_info_vram_used");
    let memory_total_bytes = fields.u64(dir, "mem_info_vram_total");
    let gtt_used_bytes = fields.u64(dir, "mem_info_gtt_used");
    let gtt_total_bytes = fields.u64(dir, "mem_info_gtt_total");
    let clock_sm_mhz = fields.parsed(dir, "pp_dpm_sclk", current_dpm_mhz).flatten();
    let clock_mem_mhz = fields.parsed(dir, "pp_dpm_mclk", current_dpm_mhz).flatten();
    let ecc_volatile_errors = fields.parsed(dir, "ras/umc_err_count", ras_error_count);

    let hwmon = fields
        .take("hwmon", sysfs::hwmon_dir(dir))
        .map(|hwmon| read_hwmon(&hwmon, &mut fields))
        .unwrap_or_default();

    Gpu {
        uuid,
        name: Some(Arc::from(name)),
        memory_used_bytes,
        memory_total_bytes,
        gtt_used_bytes,
        gtt_total_bytes,
        utilization_gpu_pct,
        utilization_memory_pct,
        temperature_c: hwmon.temperature_c,
        power_mw: hwmon.power_mw,
        energy_total_mj: hwmon.energy_total_mj,
        fan_speed_pct: hwmon.fan_speed_pct,
        clock_sm_mhz,
        clock_mem_mhz,
        ecc_volatile_errors,
        error: fields.into_error(),
        ..identity
    }
}

/// What the hwmon directory says.
#[derive(Debug, Default)]
struct Hwmon {
    temperature_c: Option<i32>,
    power_mw: Option<u32>,
    energy_total_mj: Option<u64>,
    fan_speed_pct: Option<u32>,
}

fn read_hwmon(hwmon: &Path, fields: &mut FieldReader) -> Hwmon {
    let temperature_c = temperature_file(hwmon, fields)
        .and_then(|file| fields.i64(hwmon, &file))
        .and_then(sysfs::millidegrees_to_c);
    let power_mw = sysfs::hwmon_power_mw(hwmon, fields);
    let energy_total_mj = fields
        .u64(hwmon, "energy1_input")
        .map(sysfs::micro_to_milli);
    // An RPM reading alone is not a percent: without pwm1 the fan speed stays absent.
    let fan_speed_pct = fields.u64(hwmon, "pwm1").and_then(|pwm| {
        let max = fields.u64(hwmon, "pwm1_max").unwrap_or(255);
        (max > 0).then(|| u32::try_from((pwm * 100 + max / 2) / max).ok())?
    });
    Hwmon {
        temperature_c,
        power_mw,
        energy_total_mj,
        fan_speed_pct,
    }
}

/// The `tempN_input` to report: the sensor labelled `edge`, else `junction`, else
/// `temp1_input`.
fn temperature_file(hwmon: &Path, fields: &mut FieldReader) -> Option<String> {
    let channels = fields
        .take("hwmon", sysfs::channels(hwmon, "temp", "label").map(Some))
        .unwrap_or_default();
    let labels: Vec<(u32, String)> = channels
        .into_iter()
        .filter_map(|n| Some((n, fields.string(hwmon, &format!("temp{n}_label"))?)))
        .collect();
    let labelled = |wanted: &str| {
        labels
            .iter()
            .find(|(_, label)| label == wanted)
            .map(|(n, _)| *n)
    };
    let channel = labelled("edge")
        .or_else(|| labelled("junction"))
        .unwrap_or(1);
    Some(format!("temp{channel}_input"))
}

/// The clock of the level marked `*` in `pp_dpm_sclk`/`pp_dpm_mclk` (`1: 1800Mhz *`).
fn current_dpm_mhz(text: &str) -> Result<Option<u32>, String> {
    let Some(line) = text.lines().find(|line| line.trim_end().ends_with('*')) else {
        // No level marked current (some ASICs in deep sleep): no reading, not an error.
        return Ok(None);
    };
    let value = line
        .split_once(':')
        .map_or(line, |(_, value)| value)
        .trim()
        .trim_end_matches('*')
        .trim();
    let digits = value
        .strip_suffix("Mhz")
        .or_else(|| value.strip_suffix("MHz"))
        .unwrap_or(value)
        .trim();
    digits
        .parse()
        .map(Some)
        .map_err(|_| format!("unexpected level {line:?}"))
}

/// `ue: 1\nce: 3` -> 4 (uncorrectable + correctable).
fn ras_error_count(text: &str) -> Result<u64, String> {
    let mut total = 0u64;
    let mut seen = false;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let count = line
            .split_once(':')
            .and_then(|(_, count)| count.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        total = total.saturating_add(count);
        seen = true;
    }
    if seen {
        Ok(total)
    } else {
        Err("empty".to_owned())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backends::drm::sysfs::{discover, fixture};
    use std::fs;

    fn fixture_gpus() -> Vec<Gpu> {
        let names = Names::load(Some(&fixture("amdgpu.ids")), Some(&fixture("pci.ids")));
        let cards = discover(&fixture("sysfs/mixed")).unwrap();
        cards
            .iter()
            .filter(|card| card.driver == crate::backends::drm::Driver::Amdgpu)
            .enumerate()
            .map(|(index, card)| read_gpu(index as u32, card, &names))
            .collect()
    }

    #[test]
    fn mi210_reads_every_field() {
        let gpus = fixture_gpus();
        assert_eq!(
            gpus[0],
            Gpu {
                index: 0,
                vendor_index: 0,
                uuid: Some(Arc::from("GPU-5a2f7c1e9b3d4068")),
                name: Some(Arc::from("AMD Instinct MI210")),
                pci_bus_id: Some(Arc::from("0000:03:00.0")),
                memory_used_bytes: Some(12 << 30),
                memory_total_bytes: Some(64 << 30),
                gtt_used_bytes: Some(22 << 20),
                gtt_total_bytes: Some(126 << 30),
                utilization_gpu_pct: Some(87),
                utilization_memory_pct: Some(41),
                // edge (temp1), not junction (51) or mem (47).
                temperature_c: Some(43),
                // power1_average, 187 W.
                power_mw: Some(187_000),
                energy_total_mj: None,
                // Passively cooled: no pwm1.
                fan_speed_pct: None,
                clock_sm_mhz: Some(1700),
                clock_mem_mhz: Some(1600),
                ecc_volatile_errors: Some(4),
                mig_enabled: None,
                reset_supported: Some(true),
                error: None,
                health: Default::default(),
            }
        );
    }

    #[test]
    fn rx7900xtx_has_no_power_and_no_error() {
        let gpus = fixture_gpus();
        assert_eq!(gpus.len(), 2, "the ASPEED card is not an AMD GPU");
        assert_eq!(
            gpus[1],
            Gpu {
                index: 1,
                vendor_index: 1,
                uuid: None,
                // No product_name: amdgpu.ids by device and revision.
                name: Some(Arc::from("AMD Radeon RX 7900 XTX")),
                pci_bus_id: Some(Arc::from("0000:0c:00.0")),
                memory_used_bytes: Some(1_610_612_736),
                memory_total_bytes: Some(25_753_026_560),
                gtt_used_bytes: Some(68_157_440),
                gtt_total_bytes: Some(33_420_423_168),
                utilization_gpu_pct: Some(3),
                utilization_memory_pct: Some(9),
                temperature_c: Some(38),
                power_mw: None,
                energy_total_mj: None,
                // pwm1 128 of 255.
                fan_speed_pct: Some(50),
                clock_sm_mhz: Some(2482),
                clock_mem_mhz: Some(1249),
                ecc_volatile_errors: None,
                mig_enabled: None,
                reset_supported: Some(true),
                error: None,
                health: Default::default(),
            }
        );
    }

    /// A minimal amdgpu card in a temp dir.
    fn temp_card(root: &Path) -> Card {
        let card_dir = root.join("class/drm/card0");
        let device_dir = card_dir.join("device");
        fs::create_dir_all(device_dir.join("hwmon/hwmon0")).unwrap();
        Card {
            name: "card0".into(),
            number: 0,
            driver: crate::backends::drm::Driver::Amdgpu,
            pci_bus_id: Some("0000:03:00.0".into()),
            vendor_id: Some(0x1002),
            device_id: Some(0x73bf),
            revision: Some(0xc1),
            card_dir,
            device_dir,
        }
    }

    #[test]
    fn a_read_error_is_named_and_other_fields_still_read() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        let dir = &card.device_dir;
        // A directory where a file is expected: EISDIR, not NotFound.
        fs::create_dir(dir.join("gpu_busy_percent")).unwrap();
        fs::write(dir.join("mem_info_vram_total"), "17163091968\n").unwrap();
        fs::write(dir.join("pp_dpm_sclk"), "0: 500Mhz\n1: fast *\n").unwrap();
        let hwmon = dir.join("hwmon/hwmon0");
        fs::write(hwmon.join("temp2_input"), "71000\n").unwrap();
        fs::write(hwmon.join("temp2_label"), "junction\n").unwrap();
        fs::write(hwmon.join("power1_input"), "95000000\n").unwrap();
        fs::write(hwmon.join("pwm1"), "255\n").unwrap();

        let gpu = read_gpu(3, &card, &Names::default());
        assert_eq!(gpu.name.as_deref(), Some("AMD GPU [1002:73bf]"));
        assert_eq!(gpu.utilization_gpu_pct, None);
        assert_eq!(gpu.memory_total_bytes, Some(17_163_091_968));
        assert_eq!(gpu.memory_used_bytes, None);
        // No edge sensor: the junction one.
        assert_eq!(gpu.temperature_c, Some(71));
        // No power1_average: power1_input.
        assert_eq!(gpu.power_mw, Some(95_000));
        // pwm1_max absent: out of 255.
        assert_eq!(gpu.fan_speed_pct, Some(100));
        assert_eq!(gpu.clock_sm_mhz, None);
        let error = gpu.error.unwrap();
        assert!(
            error.starts_with("gpu_busy_percent: Is a directory"),
            "{error}"
        );
        assert!(
            error.contains("; pp_dpm_sclk: unexpected level \"1: fast *\""),
            "{error}"
        );
    }

    #[test]
    fn a_vanished_device_is_an_error_with_no_metrics() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        fs::remove_dir_all(&card.device_dir).unwrap();
        let gpu = read_gpu(0, &card, &Names::default());
        assert_eq!(gpu.pci_bus_id.as_deref(), Some("0000:03:00.0"));
        assert_eq!(gpu.memory_total_bytes, None);
        assert_eq!(gpu.temperature_c, None);
        assert!(gpu.error.unwrap().contains("No such file"));
    }

    #[test]
    fn parses_dpm_and_ras() {
        assert_eq!(
            current_dpm_mhz("0: 500Mhz \n1: 1800Mhz *\n"),
            Ok(Some(1800))
        );
        assert_eq!(current_dpm_mhz("S: 19Mhz *\n0: 500Mhz\n"), Ok(Some(19)));
        assert_eq!(current_dpm_mhz("0: 500Mhz\n1: 1800Mhz\n"), Ok(None));
        assert_eq!(ras_error_count("ue: 0\nce: 3\n"), Ok(3));
        assert!(ras_error_count("").is_err());
        assert!(ras_error_count("ue: x\n").is_err());
    }
}
