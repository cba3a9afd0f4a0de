//! Why an AMD GPU's clocks are held down, from its `device/gpu_metrics` file: a binary
//! table whose layout the kernel names in a 4-byte header (`structure_size` u16,
//! `format_revision` u8, `content_revision` u8; little-endian) and defines in
//! `drivers/gpu/drm/amd/include/kgd_pp_interface.h` as `struct gpu_metrics_vF_C`.
//!
//! Only the revisions whose throttle fields are known exactly are read (offsets from the
//! kernel header, natural C alignment):
//!
//! | revision | GPUs | field | offset |
//! | --- | --- | --- | --- |
//! | 1.3 | MI100, MI200, Radeon RX 5000/6000/7000 | `indep_throttle_status` (u64) | 112 |
//! | 2.2, 2.3, 2.4 | APUs (Van Gogh, Rembrandt, Phoenix...) | `indep_throttle_status` (u64) | 120 |
//! | 1.6 (the released layout, ≥ 1,024 bytes) | MI300 | `accumulation_counter` + 5 residencies (u32) | 32 |
//! | 1.7, 1.8 | MI300, MI325, MI350 | `accumulation_counter` + 5 residencies (u32) | 40 |
//!
//! `indep_throttle_status` is the ASIC-independent `SMU_THROTTLER_*` bitmask (see
//! [`AMD_THROTTLERS`]). MI300-class tables instead count, per cause, the firmware cycles spent
//! throttled (`prochot`, `ppt`, `socket_thm`, `vr_thm`, `hbm_thm`) against a cycle counter: a
//! cause whose count rose since the previous poll throttled the GPU in between, so the first
//! poll of such a card has no throttle reading.
//!
//! Everything else is absent, not zero: v1.0–1.2 and v2.0–2.1 carry only the ASIC-dependent
//! `throttle_status`, whose bits differ per chip; v1.4 and v1.5 (MI300 before 1.6) carry a
//! `throttle_status` the kernel sets to 0 ("not reported through metrics"); 1.6 had an
//! earlier 384-byte layout, reverted; v1.9 and v3.0 have no field of this kind. The
//! kernel fills a table with `0xff` before writing it, so a field that reads all ones was not
//! set by this chip and is absent too.

use std::io::{self, ErrorKind};
use std::path::Path;

use crate::health::Throttle;

/// What a `gpu_metrics` table says about throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleField {
    /// `indep_throttle_status`: the `SMU_THROTTLER_*` bits set now.
    Independent(u64),
    /// MI300-class throttle residency counters.
    Residency(Residency),
    /// The revision has no throttle field that can be read, or the chip did not set it.
    Absent,
}

/// The cycle counter and per-cause throttle residencies of an MI300-class table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// `accumulation_counter`: firmware accumulation cycles.
    pub cycles: u32,
    /// Cycles throttled per cause, in [`RESIDENCY_CAUSES`] order; `None` where unset.
    pub throttled: [Option<u32>; 5],
}

/// The residency fields in table order, with the `SMU_THROTTLER_*` bit the kernel reports
/// each as (`smu_v13_0_6_throttler_map`).
pub const RESIDENCY_CAUSES: [(&str, u32); 5] = [
    ("prochot_residency_acc", SMU_PROCHOT_GFX),
    ("ppt_residency_acc", SMU_PPT0),
    ("socket_thm_residency_acc", SMU_TEMP_GPU),
    ("vr_thm_residency_acc", SMU_TEMP_VR_GFX),
    ("hbm_thm_residency_acc", SMU_TEMP_MEM),
];

const SMU_PPT0: u32 = 0;
const SMU_TEMP_GPU: u32 = 32;
const SMU_TEMP_MEM: u32 = 34;
const SMU_TEMP_VR_GFX: u32 = 38;
const SMU_PROCHOT_GFX: u32 = 47;

const HW_THERMAL: u64 = Throttle::HW_SLOWDOWN | Throttle::HW_THERMAL;

/// Every ASIC-independent throttler bit (`SMU_THROTTLER_*_BIT` in the kernel's
/// `amdgpu_smu.h`), its name there, and the NVML clock-event bits it is reported as. A bit
/// with no NVML counterpart maps to 0 and is left out. docs/health-amd.md has the same table.
pub const AMD_THROTTLERS: [(u32, &str, u64); 34] = [
    // Power limits: the firmware's power-capping loop.
    (0, "PPT0", Throttle::SW_POWER_CAP),
    (1, "PPT1", Throttle::SW_POWER_CAP),
    (2, "PPT2", Throttle::SW_POWER_CAP),
    (3, "PPT3", Throttle::SW_POWER_CAP),
    (4, "SPL", Throttle::SW_POWER_CAP),
    (5, "FPPT", Throttle::SW_POWER_CAP),
    (6, "SPPT", Throttle::SW_POWER_CAP),
    (7, "SPPT_APU", Throttle::SW_POWER_CAP),
    // Sustained current limits (thermal design current): held by the same loop.
    (16, "TDC_GFX", Throttle::SW_POWER_CAP),
    (17, "TDC_SOC", Throttle::SW_POWER_CAP),
    (18, "TDC_MEM", Throttle::SW_POWER_CAP),
    (19, "TDC_VDD", Throttle::SW_POWER_CAP),
    (20, "TDC_CVIP", Throttle::SW_POWER_CAP),
    // Peak current protection: NVML's "power draw too high, fast trigger protection".
    (21, "EDC_CPU", Throttle::HW_SLOWDOWN),
    (22, "EDC_GFX", Throttle::HW_SLOWDOWN),
    (23, "APCC", Throttle::HW_SLOWDOWN),
    // Temperature limits the firmware regulates to.
    (32, "TEMP_GPU", Throttle::SW_THERMAL),
    (33, "TEMP_CORE", Throttle::SW_THERMAL),
    (34, "TEMP_MEM", Throttle::SW_THERMAL),
    (35, "TEMP_EDGE", Throttle::SW_THERMAL),
    (36, "TEMP_HOTSPOT", Throttle::SW_THERMAL),
    (37, "TEMP_SOC", Throttle::SW_THERMAL),
    (38, "TEMP_VR_GFX", Throttle::SW_THERMAL),
    (39, "TEMP_VR_SOC", Throttle::SW_THERMAL),
    (40, "TEMP_VR_MEM0", Throttle::SW_THERMAL),
    (41, "TEMP_VR_MEM1", Throttle::SW_THERMAL),
    (42, "TEMP_LIQUID0", Throttle::SW_THERMAL),
    (43, "TEMP_LIQUID1", Throttle::SW_THERMAL),
    // Hardware signals: a voltage regulator's VR_HOT# or the platform's PROCHOT# pin.
    (44, "VRHOT0", HW_THERMAL),
    (45, "VRHOT1", HW_THERMAL),
    (46, "PROCHOT_CPU", HW_THERMAL),
    (47, "PROCHOT_GFX", HW_THERMAL),
    // Other: platform power management caps power; FIT (reliability) has no counterpart.
    (56, "PPM", Throttle::SW_POWER_CAP),
    (57, "FIT", 0),
];

/// The NVML clock-event bits of a set of `SMU_THROTTLER_*` bits.
pub fn nvml_bits(independent: u64) -> Throttle {
    Throttle(
        AMD_THROTTLERS
            .iter()
            .filter(|(bit, _, _)| independent & (1u64 << bit) != 0)
            .fold(0, |bits, (_, _, nvml)| bits | nvml),
    )
}

/// Reads `device_dir/gpu_metrics`: `Ok(None)` when the card has none (no file, or the
/// driver answers EOPNOTSUPP); `Err` when it cannot be read or is not a whole table.
pub fn read(device_dir: &Path) -> io::Result<Option<ThrottleField>> {
    let bytes = match std::fs::read(device_dir.join("gpu_metrics")) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        // EOPNOTSUPP (95 on Linux): the ASIC's power code has no gpu_metrics.
        Err(error)
            if error.kind() == ErrorKind::Unsupported || error.raw_os_error() == Some(95) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    parse(&bytes)
        .map(Some)
        .map_err(|message| io::Error::new(ErrorKind::InvalidData, message))
}

/// Where a revision keeps its throttle field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `indep_throttle_status` (u64) at this offset.
    Independent(usize),
    /// `accumulation_counter` at this offset, the five residencies (u32) after it.
    Residency(usize),
}

impl Layout {
    /// The layout of revision `format.content` whose table is `size` bytes, if known.
    fn of(format: u8, content: u8, size: usize) -> Option<Layout> {
        match (format, content) {
            (1, 3) => Some(Layout::Independent(112)),
            (2, 2..=4) => Some(Layout::Independent(120)),
            // The 384-byte 1.6 of early 6.x development kept vcn/jpeg activity before the
            // counters; the released one (with per-partition stats) is over 1.5 KiB.
            (1, 6) if size >= 1024 => Some(Layout::Residency(32)),
            (1, 7 | 8) => Some(Layout::Residency(40)),
            _ => None,
        }
    }

    /// Bytes the table must hold for the field to be in it.
    fn end(self) -> usize {
        match self {
            Layout::Independent(offset) => offset + 8,
            Layout::Residency(offset) => offset + 4 * 6,
        }
    }
}

/// Parses a `gpu_metrics` table. An unknown revision is `Absent`, not an error; a table
/// shorter than its header says, or than its revision's field needs, is an error.
pub fn parse(bytes: &[u8]) -> Result<ThrottleField, String> {
    let [size_lo, size_hi, format, content, ..] = *bytes else {
        return Err(format!("{} bytes: no header", bytes.len()));
    };
    let size = usize::from(u16::from_le_bytes([size_lo, size_hi]));
    if size < 4 || size > bytes.len() {
        return Err(format!(
            "header says {size} bytes, the file has {}",
            bytes.len()
        ));
    }
    let Some(layout) = Layout::of(format, content, size) else {
        return Ok(ThrottleField::Absent);
    };
    if size < layout.end() {
        return Err(format!(
            "revision {format}.{content} in {size} bytes: too short for its throttle field"
        ));
    }
    let u32_at = |offset: usize| {
        let mut word = [0; 4];
        word.copy_from_slice(&bytes[offset..offset + 4]);
        u32::from_le_bytes(word)
    };
    Ok(match layout {
        Layout::Independent(offset) => {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[offset..offset + 8]);
            match u64::from_le_bytes(word) {
                u64::MAX => ThrottleField::Absent,
                bits => ThrottleField::Independent(bits),
            }
        }
        Layout::Residency(offset) => match u32_at(offset) {
            u32::MAX => ThrottleField::Absent,
            cycles => {
                let mut throttled = [None; 5];
                for (i, slot) in throttled.iter_mut().enumerate() {
                    *slot = Some(u32_at(offset + 4 * (i + 1))).filter(|&n| n != u32::MAX);
                }
                ThrottleField::Residency(Residency { cycles, throttled })
            }
        },
    })
}

/// What one card's throttle reading keeps between polls: the last residency counters, and
/// the throttle reported from them.
#[derive(Debug, Clone, Default)]
pub struct ThrottleState {
    last: Option<Residency>,
    reported: Option<Throttle>,
}

impl ThrottleState {
    /// The throttle reasons of this poll's `field` (`None`: the card's table could not be
    /// read this poll).
    pub fn throttle(&mut self, field: Option<ThrottleField>) -> Option<Throttle> {
        let now = match field {
            Some(ThrottleField::Independent(bits)) => {
                *self = ThrottleState::default();
                return Some(nvml_bits(bits));
            }
            Some(ThrottleField::Residency(now)) => now,
            Some(ThrottleField::Absent) | None => {
                *self = ThrottleState::default();
                return None;
            }
        };
        let reported = match self.last {
            None => None,
            Some(before) => match since(before, now) {
                // No firmware cycle since the last poll: nothing new to say.
                Since::Unchanged => self.reported,
                Since::Reset => None,
                Since::Throttled(bits) => Some(nvml_bits(bits)),
            },
        };
        self.last = Some(now);
        self.reported = reported;
        reported
    }
}

enum Since {
    Unchanged,
    /// The counters went back or jumped (driver reloaded, GPU reset): no delta this poll.
    Reset,
    /// The `SMU_THROTTLER_*` bits of the causes whose residency rose.
    Throttled(u64),
}

/// What changed between two residency readings. Counters are u32 and wrap (a cycle is about
/// a millisecond: every 49 days), so deltas are taken modulo 2^32; a cycle delta of more than
/// 2^31, or a residency that rose by more than the cycles, is a reset.
fn since(before: Residency, now: Residency) -> Since {
    let cycles = now.cycles.wrapping_sub(before.cycles);
    if cycles == 0 {
        return Since::Unchanged;
    }
    if cycles > u32::MAX / 2 {
        return Since::Reset;
    }
    let mut bits = 0;
    for ((was, is), (_, bit)) in before
        .throttled
        .iter()
        .zip(now.throttled)
        .zip(RESIDENCY_CAUSES)
    {
        let (Some(was), Some(is)) = (*was, is) else {
            continue;
        };
        let throttled = is.wrapping_sub(was);
        if throttled > cycles {
            return Since::Reset;
        }
        if throttled > 0 {
            bits |= 1u64 << bit;
        }
    }
    Since::Throttled(bits)
}

/// Builds `gpu_metrics` tables for tests and the committed fixtures: a table of revision
/// `format.content`, `size` bytes, filled with `0xff` as the kernel fills it.
#[cfg(test)]
pub(crate) mod build {

    /// A `size`-byte table of revision `format.content` with every field unset.
    pub fn table(format: u8, content: u8, size: u16) -> Vec<u8> {
        let mut bytes = vec![0xff; usize::from(size)];
        bytes[0..2].copy_from_slice(&size.to_le_bytes());
        bytes[2] = format;
        bytes[3] = content;
        bytes
    }

    /// A v1.3 table (120 bytes) with `indep_throttle_status` set.
    pub fn v1_3(independent: u64) -> Vec<u8> {
        let mut bytes = table(1, 3, 120);
        bytes[112..120].copy_from_slice(&independent.to_le_bytes());
        bytes
    }

    /// A v1.8 table (3,360 bytes) with the cycle counter and residencies set.
    pub fn v1_8(cycles: u32, residencies: [u32; 5]) -> Vec<u8> {
        let mut bytes = table(1, 8, 3360);
        bytes[40..44].copy_from_slice(&cycles.to_le_bytes());
        for (i, n) in residencies.iter().enumerate() {
            let at = 44 + 4 * i;
            bytes[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backends::drm::sysfs::fixture;

    const HOTSPOT: u64 = 1 << 36;
    const PPT0: u64 = 1 << 0;
    const PROCHOT_GFX: u64 = 1 << 47;

    #[test]
    fn v1_3_reads_the_independent_bits() {
        assert_eq!(
            parse(&build::v1_3(HOTSPOT | PPT0)),
            Ok(ThrottleField::Independent(HOTSPOT | PPT0))
        );
        assert_eq!(
            nvml_bits(HOTSPOT | PPT0),
            Throttle(Throttle::SW_THERMAL | Throttle::SW_POWER_CAP)
        );
        assert_eq!(nvml_bits(PROCHOT_GFX), Throttle(0x48));
        assert_eq!(nvml_bits(0), Throttle(0));
        // FIT and bits the kernel does not define have no NVML counterpart.
        assert_eq!(nvml_bits((1 << 57) | (1 << 63) | (1 << 10)), Throttle(0));
    }

    #[test]
    fn apu_tables_read_at_their_offset() {
        for content in 2..=4 {
            let mut bytes = build::table(2, content, 168);
            bytes[120..128].copy_from_slice(&(1u64 << 16).to_le_bytes());
            assert_eq!(parse(&bytes), Ok(ThrottleField::Independent(1 << 16)));
        }
    }

    #[test]
    fn a_field_the_chip_left_unset_is_absent() {
        assert_eq!(parse(&build::table(1, 3, 120)), Ok(ThrottleField::Absent));
        assert_eq!(parse(&build::table(1, 8, 3360)), Ok(ThrottleField::Absent));
    }

    #[test]
    fn revisions_without_a_readable_field_are_absent() {
        for (format, content, size) in [
            (1, 0, 96),
            (1, 1, 104),
            (1, 2, 112),
            (1, 4, 288),
            (1, 5, 328),
            // The unreleased 384-byte 1.6.
            (1, 6, 384),
            (1, 9, 8),
            (2, 0, 152),
            (2, 1, 120),
            (3, 0, 256),
            (9, 9, 4),
        ] {
            let bytes = build::table(format, content, size);
            assert_eq!(
                parse(&bytes),
                Ok(ThrottleField::Absent),
                "{format}.{content}"
            );
        }
    }

    #[test]
    fn garbled_tables_are_errors() {
        assert_eq!(parse(&[]), Err("0 bytes: no header".to_owned()));
        assert_eq!(parse(&[120, 0, 1]), Err("3 bytes: no header".to_owned()));
        let mut truncated = build::v1_3(HOTSPOT);
        truncated.truncate(64);
        assert_eq!(
            parse(&truncated),
            Err("header says 120 bytes, the file has 64".to_owned())
        );
        // A header claiming revision 1.3 in 100 bytes.
        let short = build::table(1, 3, 100);
        assert!(parse(&short).unwrap_err().contains("too short"));
        // A size below the header itself.
        let mut zero = build::v1_3(HOTSPOT);
        zero[0..2].copy_from_slice(&0u16.to_le_bytes());
        assert!(parse(&zero).is_err());
        // Bytes past the header's size are ignored.
        let mut long = build::v1_3(HOTSPOT);
        long.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&long), Ok(ThrottleField::Independent(HOTSPOT)));
    }

    #[test]
    fn v1_6_and_v1_7_residencies_at_their_offsets() {
        let mut v1_6 = build::table(1, 6, 1664);
        v1_6[32..36].copy_from_slice(&500u32.to_le_bytes());
        v1_6[40..44].copy_from_slice(&7u32.to_le_bytes());
        let ThrottleField::Residency(residency) = parse(&v1_6).unwrap() else {
            panic!("not a residency table");
        };
        assert_eq!(residency.cycles, 500);
        assert_eq!(residency.throttled, [None, Some(7), None, None, None]);

        let mut v1_7 = build::v1_8(9, [1, 2, 3, 4, 5]);
        v1_7[3] = 7;
        let ThrottleField::Residency(residency) = parse(&v1_7).unwrap() else {
            panic!("not a residency table");
        };
        assert_eq!(residency.cycles, 9);
        assert_eq!(
            residency.throttled,
            [Some(1), Some(2), Some(3), Some(4), Some(5)]
        );
    }

    #[test]
    fn residencies_that_rose_since_the_last_poll_are_the_reasons() {
        let mut state = ThrottleState::default();
        let field = |cycles, residencies| parse(&build::v1_8(cycles, residencies)).ok();
        // First poll: nothing to compare with.
        assert_eq!(state.throttle(field(1000, [0, 0, 0, 0, 0])), None);
        // 1000 cycles later, 300 of them at the power limit, 20 at the HBM limit.
        assert_eq!(
            state.throttle(field(2000, [0, 300, 0, 0, 20])),
            Some(Throttle(Throttle::SW_POWER_CAP | Throttle::SW_THERMAL))
        );
        // No cycle since: the last answer stands.
        assert_eq!(
            state.throttle(field(2000, [0, 300, 0, 0, 20])),
            Some(Throttle(Throttle::SW_POWER_CAP | Throttle::SW_THERMAL))
        );
        // Cycles but no throttling: not throttled.
        assert_eq!(
            state.throttle(field(3000, [0, 300, 0, 0, 20])),
            Some(Throttle(0))
        );
        // PROCHOT across the u32 wrap of the cycle counter.
        state.throttle(field(u32::MAX - 10, [5, 300, 0, 0, 20]));
        assert_eq!(
            state.throttle(field(100, [50, 300, 0, 0, 20])),
            Some(Throttle(Throttle::HW_SLOWDOWN | Throttle::HW_THERMAL))
        );
        // Counters back near zero (driver reloaded): no reading, then deltas again.
        assert_eq!(state.throttle(field(5, [0, 0, 0, 0, 0])), None);
        assert_eq!(
            state.throttle(field(900, [0, 0, 1, 0, 0])),
            Some(Throttle(Throttle::SW_THERMAL))
        );
        // A residency that rose by more than the cycles is no delta either.
        assert_eq!(state.throttle(field(910, [0, 0, 500, 0, 0])), None);
        // A table that cannot be read forgets the counters.
        assert_eq!(state.throttle(None), None);
        assert_eq!(state.throttle(field(1900, [0, 0, 9, 0, 0])), None);
    }

    #[test]
    fn independent_bits_need_no_previous_poll() {
        let mut state = ThrottleState::default();
        let field = parse(&build::v1_3(PROCHOT_GFX)).ok();
        assert_eq!(state.throttle(field), Some(Throttle(0x48)));
        assert_eq!(
            state.throttle(Some(ThrottleField::Absent)),
            None,
            "an unknown revision is absent"
        );
    }

    /// The committed fixtures are the tables these recipes build; with
    /// `GPUKILL_WRITE_FIXTURES=1` the test writes them instead.
    #[test]
    fn fixtures_match_their_recipe() {
        let fixtures = [
            // card1, MI210 (aldebaran, v1.3): at its hotspot and power limits.
            (
                "sysfs/mixed/class/drm/card1/device/gpu_metrics",
                build::v1_3(HOTSPOT | PPT0),
            ),
            // card2, RX 7900 XTX (v1.3): not throttled.
            (
                "sysfs/mixed/class/drm/card2/device/gpu_metrics",
                build::v1_3(0),
            ),
        ];
        for (path, bytes) in fixtures {
            let path = fixture(path);
            if std::env::var_os("GPUKILL_WRITE_FIXTURES").is_some() {
                std::fs::write(&path, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{} differs from its recipe: run this test with GPUKILL_WRITE_FIXTURES=1",
                path.display()
            );
        }
    }

    #[test]
    fn the_docs_map_every_throttler_bit() {
        let docs = std::fs::read_to_string(fixture("../../docs/health-amd.md")).unwrap();
        for (bit, name, _) in AMD_THROTTLERS {
            assert!(docs.contains(&format!("`{name}`")), "{name} ({bit})");
        }
    }

    #[test]
    fn a_missing_file_is_no_table_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        std::fs::create_dir(dir.path().join("gpu_metrics")).unwrap();
        assert!(read(dir.path()).is_err());
        std::fs::remove_dir(dir.path().join("gpu_metrics")).unwrap();
        std::fs::write(dir.path().join("gpu_metrics"), [1, 2]).unwrap();
        assert_eq!(
            read(dir.path()).unwrap_err().to_string(),
            "2 bytes: no header"
        );
    }
}
