//! One DRM client's usage stats, as the kernel prints them in `/proc/PID/fdinfo/FD` for a
//! file descriptor open on a DRM node (`Documentation/gpu/drm-usage-stats.rst`).
//!
//! [`ClientRecord::parse`] is pure: it takes the file's text. [`read`] is the one helper that
//! touches the file system. Lines that are not `key: value`, keys this module does not know
//! and values that do not parse are ignored, so a file with garbage in it still yields the
//! fields it has.

use std::io;
use std::path::Path;

use super::Driver;

/// How busy one engine class was with this client since the client was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCounter {
    /// `drm-engine-<e>: N ns` (amdgpu, i915): nanoseconds the engine class spent on the
    /// client's work.
    Nanoseconds(u64),
    /// `drm-cycles-<e>` and `drm-total-cycles-<e>` (xe): GPU cycles spent on the client's
    /// work and the GPU's cycle counter at the same moment; over an interval the busy fraction
    /// is Δ`busy` / Δ`total`.
    Cycles {
        /// `drm-cycles-<e>`: cycles spent on this client.
        busy: u64,
        /// `drm-total-cycles-<e>`: cycles elapsed on the GPU.
        total: u64,
    },
}

/// One engine class of a client (`gfx`, `compute`, `render`, `rcs`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// The class as the driver names it (the `<e>` of `drm-engine-<e>`).
    pub name: String,
    /// Its busy counter.
    pub counter: EngineCounter,
    /// `drm-engine-capacity-<e>`: how many engines of this class the counter adds up
    /// (1 when the file does not say).
    pub capacity: u32,
}

/// One memory region of a client (`vram`, `gtt`, `cpu`, `local0`, `system0`, `vram0`,
/// `stolen`, ...), in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Region {
    /// The region as the driver names it.
    pub name: String,
    /// `drm-total-<r>`: all memory of the client's buffers in this region.
    pub total: Option<u64>,
    /// `drm-resident-<r>`: the part of it actually resident there.
    pub resident: Option<u64>,
    /// `drm-memory-<r>`: the older key (amdgpu before `drm-total-`), counted like `total`.
    pub legacy: Option<u64>,
}

impl Region {
    /// The client's bytes in this region: `drm-total-` when the file has it, else the legacy
    /// `drm-memory-`, else `drm-resident-`.
    pub fn bytes(&self) -> Option<u64> {
        self.total.or(self.legacy).or(self.resident)
    }

    /// Whether the region is the GPU's own memory (see [`is_local_region`]).
    pub fn is_local(&self) -> bool {
        is_local_region(&self.name)
    }
}

/// Whether a region name is device-local memory: `vram*` (amdgpu, xe) and `local*` (i915).
/// Everything else (`gtt`, `cpu`, `system*`, `stolen`) is system memory.
pub fn is_local_region(name: &str) -> bool {
    name.starts_with("vram") || name.starts_with("local")
}

/// Everything gpukill uses from one DRM fdinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// `drm-driver`.
    pub driver: Driver,
    /// `drm-pdev`: the GPU's PCI address, `0000:03:00.0`.
    pub pdev: String,
    /// `drm-client-id`: unique per open of the device; every fd and every process that shares
    /// the open file (dup, fork, fd passing) shows the same id.
    pub client_id: u64,
    /// The engine classes, in the order the file lists them.
    pub engines: Vec<Engine>,
    /// The memory regions, in the order the file first mentions them.
    pub regions: Vec<Region>,
}

impl ClientRecord {
    /// Parses the text of an fdinfo file. `None` when it is not a usable DRM client: no
    /// `drm-driver` or one other than amdgpu/i915/xe (`nvidia-drm`, `virtio_gpu`, ...), or no
    /// `drm-client-id` or `drm-pdev`.
    pub fn parse(text: &str) -> Option<ClientRecord> {
        let mut driver = None;
        let mut pdev = None;
        let mut client_id = None;
        let mut engines: Vec<EngineFields> = Vec::new();
        let mut regions: Vec<Region> = Vec::new();

        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(key) = key.strip_prefix("drm-") else {
                continue;
            };
            match key {
                "driver" => driver = Some(value),
                "pdev" => pdev = Some(value),
                "client-id" => client_id = value.parse::<u64>().ok().or(client_id),
                _ => parse_usage(key, value, &mut engines, &mut regions),
            }
        }

        let driver = Driver::from_name(driver?)?;
        let pdev = pdev.filter(|p| !p.is_empty() && !p.contains(char::is_whitespace))?;
        let client_id = client_id?;
        let engines = engines
            .into_iter()
            .filter_map(|e| {
                let counter = match (e.ns, e.cycles, e.total_cycles) {
                    (Some(ns), _, _) => EngineCounter::Nanoseconds(ns),
                    (None, Some(busy), Some(total)) => EngineCounter::Cycles { busy, total },
                    _ => return None,
                };
                Some(Engine {
                    name: e.name.to_string(),
                    counter,
                    capacity: e.capacity.unwrap_or(1),
                })
            })
            .collect();
        Some(ClientRecord {
            driver,
            pdev: pdev.to_string(),
            client_id,
            engines,
            regions,
        })
    }

    /// The engine class `name`, if the client reports it.
    pub fn engine(&self, name: &str) -> Option<&Engine> {
        self.engines.iter().find(|e| e.name == name)
    }

    /// The memory region `name`, if the client reports it.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The client's bytes in device-local regions (`vram*`, `local*`); `None` when it
    /// reports no such region at all (an integrated GPU, or a driver too old to say).
    pub fn local_bytes(&self) -> Option<u64> {
        self.sum_regions(true)
    }

    /// The client's bytes in system-memory regions (`gtt`, `cpu`, `system*`, `stolen`);
    /// `None` when it reports none.
    pub fn system_bytes(&self) -> Option<u64> {
        self.sum_regions(false)
    }

    fn sum_regions(&self, local: bool) -> Option<u64> {
        self.regions
            .iter()
            .filter(|r| r.is_local() == local)
            .filter_map(Region::bytes)
            .reduce(u64::saturating_add)
    }
}

/// Reads and parses one fdinfo file: `Ok(None)` when it is not a usable DRM client (see
/// [`ClientRecord::parse`]); `Err` when it cannot be read (the process exited, ...).
pub fn read(path: &Path) -> io::Result<Option<ClientRecord>> {
    Ok(ClientRecord::parse(&std::fs::read_to_string(path)?))
}

/// An engine class's keys while the file is being read (they may come in any order).
struct EngineFields<'a> {
    name: &'a str,
    ns: Option<u64>,
    cycles: Option<u64>,
    total_cycles: Option<u64>,
    capacity: Option<u32>,
}

/// One `drm-<key>: <value>` line other than driver, pdev and client id (`key` without the
/// `drm-`).
fn parse_usage<'a>(
    key: &'a str,
    value: &str,
    engines: &mut Vec<EngineFields<'a>>,
    regions: &mut Vec<Region>,
) {
    // The longer prefixes first: `engine-capacity-` is also an `engine-`, `total-cycles-`
    // also a `total-`.
    if let Some(name) = key.strip_prefix("engine-capacity-") {
        if let Some(n) = value.parse::<u32>().ok().filter(|&n| n > 0)
            && let Some(engine) = engine_fields(engines, name)
        {
            engine.capacity = Some(n);
        }
    } else if let Some(name) = key.strip_prefix("engine-") {
        if let Some(ns) = parse_number(value, &["ns"])
            && let Some(engine) = engine_fields(engines, name)
        {
            engine.ns = Some(ns);
        }
    } else if let Some(name) = key.strip_prefix("total-cycles-") {
        if let Some(n) = parse_number(value, &[])
            && let Some(engine) = engine_fields(engines, name)
        {
            engine.total_cycles = Some(n);
        }
    } else if let Some(name) = key.strip_prefix("cycles-") {
        if let Some(n) = parse_number(value, &[])
            && let Some(engine) = engine_fields(engines, name)
        {
            engine.cycles = Some(n);
        }
    } else if let Some(name) = key.strip_prefix("total-") {
        set_region(regions, name, value, |r| &mut r.total);
    } else if let Some(name) = key.strip_prefix("resident-") {
        set_region(regions, name, value, |r| &mut r.resident);
    } else if let Some(name) = key.strip_prefix("memory-") {
        set_region(regions, name, value, |r| &mut r.legacy);
    }
    // drm-shared-, drm-purgeable-, drm-active-, drm-maxfreq-, drm-client-name, ...: unused.
}

/// The fields of engine class `name`, added if new; `None` for an empty name.
fn engine_fields<'a, 'b>(
    engines: &'b mut Vec<EngineFields<'a>>,
    name: &'a str,
) -> Option<&'b mut EngineFields<'a>> {
    if name.is_empty() {
        return None;
    }
    let index = match engines.iter().position(|e| e.name == name) {
        Some(index) => index,
        None => {
            engines.push(EngineFields {
                name,
                ns: None,
                cycles: None,
                total_cycles: None,
                capacity: None,
            });
            engines.len() - 1
        }
    };
    engines.get_mut(index)
}

/// Sets one field of region `name` to the byte count in `value`, if it parses.
fn set_region(
    regions: &mut Vec<Region>,
    name: &str,
    value: &str,
    field: impl FnOnce(&mut Region) -> &mut Option<u64>,
) {
    let Some(bytes) = parse_bytes(value) else {
        return;
    };
    if name.is_empty() {
        return;
    }
    let region = match regions.iter().position(|r| r.name == name) {
        Some(index) => &mut regions[index],
        None => {
            regions.push(Region {
                name: name.to_string(),
                ..Region::default()
            });
            let last = regions.len() - 1;
            &mut regions[last]
        }
    };
    *field(region) = Some(bytes);
}

/// `N` or `N <unit>` with a unit from `units`; anything else is `None`.
fn parse_number(value: &str, units: &[&str]) -> Option<u64> {
    let mut words = value.split_whitespace();
    let n = words.next()?.parse::<u64>().ok()?;
    match (words.next(), words.next()) {
        (None, None) => Some(n),
        (Some(unit), None) if units.contains(&unit) => Some(n),
        _ => None,
    }
}

/// A memory size: bytes when there is no unit, else `KiB`, `MiB` or `GiB`.
fn parse_bytes(value: &str) -> Option<u64> {
    let mut words = value.split_whitespace();
    let n = words.next()?.parse::<u64>().ok()?;
    let shift = match words.next() {
        None | Some("B") => 0,
        Some("KiB") => 10,
        Some("MiB") => 20,
        Some("GiB") => 30,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;

    const AMDGPU: &str = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t1073\n\
        drm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\ndrm-client-id:\t42\n\
        drm-memory-vram:\t4194304 KiB\ndrm-memory-gtt:\t 20480 KiB\ndrm-memory-cpu:\t0 KiB\n\
        amd-memory-visible-vram:\t0 KiB\ndrm-engine-gfx:\t1234567890 ns\n\
        drm-engine-compute:\t987654321 ns\ndrm-engine-dma:\t123 ns\n";

    const I915: &str = "pos:\t0\nflags:\t02100002\ndrm-driver:\ti915\n\
        drm-pdev:\t0000:03:00.0\ndrm-client-id:\t7\ndrm-engine-render:\t25662044495 ns\n\
        drm-engine-copy:\t0 ns\ndrm-engine-video:\t0 ns\ndrm-engine-capacity-video:\t2\n\
        drm-engine-video-enhance:\t0 ns\ndrm-total-local0:\t1048576 KiB\n\
        drm-resident-local0:\t1048576 KiB\ndrm-total-system0:\t4096 KiB\n";

    const XE: &str = "drm-driver:\txe\ndrm-pdev:\t0000:00:02.0\ndrm-client-id:\t19\n\
        drm-total-system:\t0\ndrm-total-gtt:\t4 MiB\ndrm-resident-gtt:\t4 MiB\n\
        drm-total-vram0:\t1024 KiB\ndrm-resident-vram0:\t1024 KiB\ndrm-total-stolen:\t0\n\
        drm-cycles-rcs:\t28257900\ndrm-total-cycles-rcs:\t7655183225\n\
        drm-cycles-bcs:\t0\ndrm-total-cycles-bcs:\t7655183225\n\
        drm-cycles-ccs:\t100\ndrm-total-cycles-ccs:\t7655183225\ndrm-engine-capacity-ccs:\t4\n";

    #[test]
    fn parses_amdgpu() {
        let record = ClientRecord::parse(AMDGPU).expect("amdgpu client");
        assert_eq!(record.driver, Driver::Amdgpu);
        assert_eq!(record.pdev, "0000:03:00.0");
        assert_eq!(record.client_id, 42);
        let names: Vec<&str> = record.engines.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["gfx", "compute", "dma"]);
        let gfx = record.engine("gfx").expect("gfx");
        assert_eq!(gfx.counter, EngineCounter::Nanoseconds(1_234_567_890));
        assert_eq!(gfx.capacity, 1);
        assert_eq!(record.region("vram").and_then(Region::bytes), Some(4 * GIB));
        assert_eq!(record.region("gtt").and_then(Region::bytes), Some(20 * MIB));
        assert_eq!(record.local_bytes(), Some(4 * GIB));
        assert_eq!(record.system_bytes(), Some(20 * MIB));
        // amd-memory-visible-vram is not a drm- key.
        assert_eq!(record.regions.len(), 3);
    }

    #[test]
    fn newer_amdgpu_prefers_total_over_legacy_and_resident() {
        let text = "drm-driver: amdgpu\ndrm-pdev: 0000:03:00.0\ndrm-client-id: 3\n\
            drm-memory-vram: 100 KiB\ndrm-total-vram: 200 KiB\ndrm-shared-vram: 50 KiB\n\
            drm-resident-vram: 150 KiB\ndrm-purgeable-vram: 0 KiB\ndrm-active-vram: 0 KiB\n\
            drm-resident-gtt: 8 KiB\ndrm-memory-cpu: 1 KiB\ndrm-resident-cpu: 2 KiB\n";
        let record = ClientRecord::parse(text).expect("client");
        let vram = record.region("vram").expect("vram");
        assert_eq!(
            (vram.total, vram.resident, vram.legacy),
            (Some(200 * KIB), Some(150 * KIB), Some(100 * KIB))
        );
        assert_eq!(vram.bytes(), Some(200 * KIB));
        // gtt: resident only; cpu: legacy beats resident.
        assert_eq!(record.system_bytes(), Some(8 * KIB + KIB));
    }

    #[test]
    fn parses_i915_with_capacity() {
        let record = ClientRecord::parse(I915).expect("i915 client");
        assert_eq!(record.driver, Driver::I915);
        assert_eq!(record.client_id, 7);
        let render = record.engine("render").expect("render");
        assert_eq!(render.counter, EngineCounter::Nanoseconds(25_662_044_495));
        assert_eq!(record.engine("video").map(|e| e.capacity), Some(2));
        assert_eq!(record.engine("video-enhance").map(|e| e.capacity), Some(1));
        assert_eq!(record.local_bytes(), Some(GIB));
        assert_eq!(record.system_bytes(), Some(4 * MIB));
    }

    #[test]
    fn parses_xe_cycles() {
        let record = ClientRecord::parse(XE).expect("xe client");
        assert_eq!(record.driver, Driver::Xe);
        assert_eq!(record.pdev, "0000:00:02.0");
        let rcs = record.engine("rcs").expect("rcs");
        assert_eq!(
            rcs.counter,
            EngineCounter::Cycles {
                busy: 28_257_900,
                total: 7_655_183_225
            }
        );
        assert_eq!(record.engine("ccs").map(|e| e.capacity), Some(4));
        assert_eq!(record.engines.len(), 3);
        assert_eq!(record.local_bytes(), Some(MIB));
        // system 0 + gtt 4 MiB + stolen 0.
        assert_eq!(record.system_bytes(), Some(4 * MIB));
    }

    #[test]
    fn units() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12 B"), Some(12));
        assert_eq!(parse_bytes("3 KiB"), Some(3 * KIB));
        assert_eq!(parse_bytes(" 5  MiB "), Some(5 * MIB));
        assert_eq!(parse_bytes("2 GiB"), Some(2 * GIB));
        assert_eq!(parse_bytes("2 TiB"), None);
        assert_eq!(parse_bytes("2 KiB extra"), None);
        assert_eq!(parse_bytes("-1 KiB"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes(&format!("{} GiB", u64::MAX)), None);
        assert_eq!(parse_number("10 ns", &["ns"]), Some(10));
        assert_eq!(parse_number("10", &["ns"]), Some(10));
        assert_eq!(parse_number("10 us", &["ns"]), None);
    }

    #[test]
    fn tolerates_garbage() {
        let text = "garbage without colon\n\n:::\ndrm-driver: amdgpu\n\
            drm-pdev: 0000:0a:00.0\ndrm-client-id: not-a-number\ndrm-client-id: 9\n\
            drm-engine-gfx: lots ns\ndrm-engine-compute: 5 ms\ndrm-engine-dma: 7 ns\n\
            drm-engine-: 5 ns\ndrm-engine-capacity-dma: 0\ndrm-engine-capacity-gfx: x\n\
            drm-memory-vram: 12 parsecs\ndrm-memory-gtt: 1 KiB\ndrm-total-: 5\n\
            drm-cycles-rcs: 5\n\u{fffd}\u{0}: weird\ndrm-total-vram\n";
        let record = ClientRecord::parse(text).expect("client despite the garbage");
        assert_eq!(record.client_id, 9);
        let names: Vec<&str> = record.engines.iter().map(|e| e.name.as_str()).collect();
        // gfx and compute do not parse; rcs has no total; capacity 0 is ignored.
        assert_eq!(names, ["dma"]);
        assert_eq!(record.engine("dma").map(|e| e.capacity), Some(1));
        assert_eq!(record.local_bytes(), None);
        assert_eq!(record.system_bytes(), Some(KIB));
    }

    #[test]
    fn rejects_what_is_not_a_usable_client() {
        let without = |key: &str| {
            AMDGPU
                .lines()
                .filter(|l| !l.starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(ClientRecord::parse(&without("drm-driver")).is_none());
        assert!(ClientRecord::parse(&without("drm-pdev")).is_none());
        assert!(ClientRecord::parse(&without("drm-client-id")).is_none());
        for driver in ["nvidia-drm", "virtio_gpu", ""] {
            let text = AMDGPU.replace("drm-driver:\tamdgpu", &format!("drm-driver:\t{driver}"));
            assert!(ClientRecord::parse(&text).is_none(), "{driver}");
        }
        assert!(ClientRecord::parse("").is_none());
        assert!(ClientRecord::parse("pos:\t0\nflags:\t02\nmnt_id:\t1\n").is_none());
    }

    #[test]
    fn no_local_region_is_none() {
        let text = "drm-driver: i915\ndrm-pdev: 0000:00:02.0\ndrm-client-id: 1\n\
            drm-engine-render: 5 ns\ndrm-total-system0: 8 KiB\n";
        let record = ClientRecord::parse(text).expect("client");
        assert_eq!(record.local_bytes(), None);
        assert_eq!(record.system_bytes(), Some(8 * KIB));
        let text = "drm-driver: i915\ndrm-pdev: 0000:00:02.0\ndrm-client-id: 1\n";
        let record = ClientRecord::parse(text).expect("client");
        assert_eq!((record.local_bytes(), record.system_bytes()), (None, None));
    }

    #[test]
    fn read_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("5");
        std::fs::write(&path, I915).expect("write");
        let record = read(&path).expect("read").expect("client");
        assert_eq!(record.client_id, 7);
        assert!(read(&dir.path().join("6")).is_err());
    }
}
