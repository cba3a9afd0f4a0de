//! One AMD GPU's device-level metrics, from the files `amdgpu` exposes under
//! `/sys/class/drm/cardN/device` and its hwmon directory.
//!
//! Files read (each may be absent: the metric is then absent, not an error):
//! `product_name`, `unique_id`, `gpu_busy_percent`, `mem_busy_percent`,
//! `mem_info_vram_{used,total}`, `mem_info_gtt_{used,total}`, `pp_dpm_sclk`, `pp_dpm_mclk`,
//! in `hwmon/hwmonN`: `temp*_{input,label}`, `power1_average`, `power1_input`,
//! `energy1_input`, `pwm1`, `pwm1_max`; and for health `ras/*_err_count` (see [`ras`],
//! read every [`ras::RAS_INTERVAL`]) and `gpu_metrics` (see [`gpu_metrics`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gpu_metrics::{self, ThrottleState};
use super::names::Names;
use super::ras::{self, RasCache};
use super::sysfs::{self, Card, FieldReader};
use crate::health::HealthReading;
use crate::snapshot::Gpu;

/// What one AMD card's reading keeps between polls: its last RAS counters (read less often
/// than every tick) and its last throttle residency counters.
#[derive(Debug, Clone)]
pub struct AmdState {
    ras: RasCache,
    ras_interval: Duration,
    throttle: ThrottleState,
}

impl Default for AmdState {
    fn default() -> Self {
        AmdState::with_ras_interval(ras::RAS_INTERVAL)
    }
}

impl AmdState {
    /// A state whose RAS counters are read at most once per `interval`.
    pub fn with_ras_interval(interval: Duration) -> Self {
        AmdState {
            ras: RasCache::default(),
            ras_interval: interval,
            throttle: ThrottleState::default(),
        }
    }
}

/// Reads one AMD GPU at `now`: its metrics and its health readings. `index` becomes both
/// `index` and `vendor_index`. Read errors other than a missing file are named in
/// `gpu.error` as `"<file>: <error>"`; a card whose device directory has gone is reported
/// with its identity and an error, metrics and health absent.
pub fn read_gpu(
    index: u32,
    card: &Card,
    names: &Names,
    state: &mut AmdState,
    now: Instant,
) -> (Gpu, HealthReading) {
    let identity = Gpu {
        index,
        vendor_index: index,
        pci_bus_id: card.pci_bus_id.as_deref().map(Arc::from),
        reset_supported: Some(true),
        ..Gpu::default()
    };
    if let Err(error) = std::fs::metadata(&card.device_dir) {
        // Whatever comes back at this address (after a reset, a rebind) starts afresh.
        *state = AmdState::with_ras_interval(state.ras_interval);
        let gpu = Gpu {
            name: Some(Arc::from(names.card_name(card, 0x1002, "AMD"))),
            error: Some(format!("{}: {error}", card.device_dir.display())),
            ..identity
        };
        return (gpu, HealthReading::default());
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
    let ras = state.ras.read(dir, now, state.ras_interval);
    for (file, error) in &ras.errors {
        fields.record(file, error);
    }
    let ecc_volatile_errors = ras.umc_total;
    let throttle = state
        .throttle
        .throttle(fields.take("gpu_metrics", gpu_metrics::read(dir)));

    let hwmon = fields
        .take("hwmon", sysfs::hwmon_dir(dir))
        .map(|hwmon| read_hwmon(&hwmon, &mut fields))
        .unwrap_or_default();

    let gpu = Gpu {
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
    };
    // No performance state: amdgpu's DPM levels are per clock domain, not one P-state.
    let health = HealthReading {
        ras: ras.blocks,
        throttle,
        ..HealthReading::default()
    };
    (gpu, health)
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backends::drm::sysfs::{discover, fixture};
    use crate::health::{RasCount, Throttle};
    use std::fs;

    fn fixture_readings() -> Vec<(Gpu, HealthReading)> {
        let names = Names::load(Some(&fixture("amdgpu.ids")), Some(&fixture("pci.ids")));
        let cards = discover(&fixture("sysfs/mixed")).unwrap();
        cards
            .iter()
            .filter(|card| card.driver == crate::backends::drm::Driver::Amdgpu)
            .enumerate()
            .map(|(index, card)| {
                let mut state = AmdState::default();
                read_gpu(index as u32, card, &names, &mut state, Instant::now())
            })
            .collect()
    }

    fn fixture_gpus() -> Vec<Gpu> {
        fixture_readings().into_iter().map(|(gpu, _)| gpu).collect()
    }

    /// `read_gpu` of a card with a fresh state, now.
    fn read(index: u32, card: &Card) -> (Gpu, HealthReading) {
        read_gpu(
            index,
            card,
            &Names::default(),
            &mut AmdState::default(),
            Instant::now(),
        )
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
                gpm: None,
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
                gpm: None,
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

        let (gpu, _) = read(3, &card);
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
        let (gpu, health) = read(0, &card);
        assert_eq!(gpu.pci_bus_id.as_deref(), Some("0000:03:00.0"));
        assert_eq!(gpu.memory_total_bytes, None);
        assert_eq!(gpu.temperature_c, None);
        assert!(gpu.error.unwrap().contains("No such file"));
        assert!(health.is_empty());
    }

    #[test]
    fn fixture_health_ras_blocks_and_throttling() {
        let readings = fixture_readings();
        let ras = |block: &str, correctable, uncorrectable| RasCount {
            block: Arc::from(block),
            correctable: Some(correctable),
            uncorrectable: Some(uncorrectable),
        };
        // MI210: gfx and umc counters (not `features`), at its hotspot and power limits.
        assert_eq!(
            readings[0].1,
            HealthReading {
                ras: vec![ras("gfx", 2, 0), ras("umc", 3, 1)],
                throttle: Some(Throttle(Throttle::SW_POWER_CAP | Throttle::SW_THERMAL)),
                ..HealthReading::default()
            }
        );
        // RX 7900 XTX: no RAS, not throttled.
        assert_eq!(
            readings[1].1,
            HealthReading {
                throttle: Some(Throttle(0)),
                ..HealthReading::default()
            }
        );
    }

    #[test]
    fn a_card_without_health_files_has_every_health_field_absent() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        let (gpu, health) = read(0, &card);
        assert_eq!(gpu.error, None);
        assert!(health.is_empty(), "{health:?}");
    }

    #[test]
    fn garbled_health_files_are_named_and_the_rest_still_read() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        let dir = &card.device_dir;
        fs::create_dir(dir.join("ras")).unwrap();
        fs::write(dir.join("ras/umc_err_count"), "ue: x\nce: 1\n").unwrap();
        fs::write(dir.join("ras/gfx_err_count"), "ue: 0\nce: 4\n").unwrap();
        // A v1.3 table cut short.
        let mut metrics = crate::backends::drm::gpu_metrics::build::v1_3(1 << 36);
        metrics.truncate(100);
        fs::write(dir.join("gpu_metrics"), &metrics).unwrap();

        let (gpu, health) = read(0, &card);
        assert_eq!(gpu.ecc_volatile_errors, None);
        assert_eq!(
            gpu.error.as_deref(),
            Some(
                "ras/umc_err_count: unexpected line \"ue: x\"; \
                 gpu_metrics: header says 120 bytes, the file has 100"
            )
        );
        assert_eq!(
            health,
            HealthReading {
                ras: vec![RasCount {
                    block: Arc::from("gfx"),
                    correctable: Some(4),
                    uncorrectable: Some(0),
                }],
                ..HealthReading::default()
            }
        );
    }

    #[test]
    fn an_unknown_metrics_revision_is_no_throttle_and_no_error() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        let table = crate::backends::drm::gpu_metrics::build::table(1, 5, 328);
        fs::write(card.device_dir.join("gpu_metrics"), table).unwrap();
        let (gpu, health) = read(0, &card);
        assert_eq!((gpu.error, health.throttle), (None, None));
    }

    #[test]
    fn ras_is_read_once_per_interval() {
        let root = tempfile::tempdir().unwrap();
        let card = temp_card(root.path());
        let ras = card.device_dir.join("ras");
        fs::create_dir(&ras).unwrap();
        fs::write(ras.join("umc_err_count"), "ue: 0\nce: 1\n").unwrap();
        let mut state = AmdState::with_ras_interval(Duration::from_secs(30));
        let t0 = Instant::now();
        let names = Names::default();
        let (gpu, _) = read_gpu(0, &card, &names, &mut state, t0);
        assert_eq!(gpu.ecc_volatile_errors, Some(1));
        fs::write(ras.join("umc_err_count"), "ue: 2\nce: 1\n").unwrap();
        let (gpu, health) = read_gpu(0, &card, &names, &mut state, t0 + Duration::from_secs(1));
        assert_eq!(gpu.ecc_volatile_errors, Some(1));
        assert_eq!(health.ras[0].uncorrectable, Some(0));
        let (gpu, health) = read_gpu(0, &card, &names, &mut state, t0 + Duration::from_secs(30));
        assert_eq!(gpu.ecc_volatile_errors, Some(3));
        assert_eq!(health.ras[0].uncorrectable, Some(2));
    }

    #[test]
    fn parses_dpm() {
        assert_eq!(
            current_dpm_mhz("0: 500Mhz \n1: 1800Mhz *\n"),
            Ok(Some(1800))
        );
        assert_eq!(current_dpm_mhz("S: 19Mhz *\n0: 500Mhz\n"), Ok(Some(19)));
        assert_eq!(current_dpm_mhz("0: 500Mhz\n1: 1800Mhz\n"), Ok(None));
    }
}
