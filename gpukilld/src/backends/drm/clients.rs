//! The per-tick walk of procfs that finds the processes using AMD and Intel GPUs and what
//! each uses: [`ClientScanner`].
//!
//! A process uses a GPU when one of its file descriptors (`/proc/PID/fd/*`) points at a DRM
//! node (`/dev/dri/renderD*` or `/dev/dri/card*`); the fd's `/proc/PID/fdinfo/FD` then
//! carries the DRM client's usage stats ([`super::fdinfo`]).
//!
//! # Cost
//!
//! Reading every process's fd table every tick is what makes such walks expensive, and
//! almost no process holds a GPU. So the scanner keeps, per pid, whether it held a DRM
//! client when last examined:
//!
//! * a pid seen for the first time, or whose `/proc/PID` is a different directory than
//!   before (the pid was reused: its inode number, which `readdir` hands over for free,
//!   changed), is examined at once;
//! * a pid known to hold a DRM client is examined every scan (its counters move);
//! * a young pid is examined again [`YOUNG_RECHECKS`] scans after it was first seen: a job
//!   opens its GPU while it starts (a framework's import takes seconds), after the scan
//!   that first saw it, and this finds it sooner than the rotation would;
//! * any other pid is examined once every [`RECHECK_EVERY`] scans, on the scan whose number
//!   is congruent to `-pid` modulo [`RECHECK_EVERY`], which spreads them evenly over the
//!   scans. So a process that opens a GPU after it was first examined is found at the latest
//!   [`RECHECK_EVERY`] scans after it opened it;
//! * pids that are no longer listed are forgotten.
//!
//! A process that exits mid-walk (`ENOENT`/`ESRCH` anywhere) is skipped for this scan; an
//! fd table the daemon may not read (another user's, without `CAP_SYS_PTRACE`) is skipped
//! and counted in [`ScanStats::permission_denied`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::Driver;
use super::fdinfo::{ClientRecord, EngineCounter};

/// A process cached as holding no DRM client is examined again once every this many scans:
/// the bound, in scans, on how late a process that opens a GPU after its first examination
/// is found.
pub const RECHECK_EVERY: u64 = 10;

/// How many scans after first seeing a pid it is examined again, whatever the rotation.
pub const YOUNG_RECHECKS: [u64; 3] = [1, 2, 4];

/// One process's use of one GPU, as of the latest scan.
#[derive(Debug, Clone, PartialEq)]
pub struct DrmProcess {
    /// The process.
    pub pid: u32,
    /// The driver of the GPU.
    pub driver: Driver,
    /// The GPU's PCI address (`0000:03:00.0`); the same allocation from one scan to the next.
    pub pdev: Arc<str>,
    /// Bytes of device-local memory (`vram*`, `local*`) of the DRM clients it owns (see
    /// [`ClientScanner`] for which process owns a shared client); `Some(0)` when all of its
    /// clients that report such memory are owned by another process, `None` when none of its
    /// clients reports device-local memory at all.
    pub local_bytes: Option<u64>,
    /// The same for system memory (`gtt`, `cpu`, `system*`, `stolen`).
    pub system_bytes: Option<u64>,
    /// Per engine class, how busy its owned clients kept it since the previous scan (0.0 for
    /// the engines of clients another process owns); empty when none of its clients has a
    /// previous reading (first sight, or counters that went backwards).
    pub engines: Vec<EngineBusy>,
    /// The busiest engine class × 100, rounded and capped at 100; `None` when `engines` is
    /// empty.
    pub utilization_pct: Option<u32>,
}

/// How busy one engine class was over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineBusy {
    /// The class as the driver names it (`gfx`, `render`, `rcs`, ...); shared between scans.
    pub engine: Arc<str>,
    /// The busy fraction of the class's capacity, 0.0..=1.0.
    pub busy: f64,
}

/// What the latest scan did, for benchmarks and debug logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes listed in procfs.
    pub processes: usize,
    /// Processes whose fd table was read.
    pub fd_tables_read: usize,
    /// Fd tables that could not be read for lack of permission.
    pub permission_denied: usize,
    /// DRM fds whose fdinfo was read.
    pub fdinfo_read: usize,
    /// Distinct DRM clients (per GPU and client id) found.
    pub clients: usize,
}

/// Walks procfs for DRM clients, keeping what it needs between scans: which pids hold
/// none (see the module documentation for the cost model), the previous counters of each
/// client, and the shared strings of GPU addresses and engine names.
///
/// A DRM client (an open of a device, one `drm-client-id` per GPU) can be on several fds
/// of one process (dup) and in several processes (inherited across fork, passed over a
/// socket). Every process holding a client is listed on that GPU, but the client's memory
/// and engine time are counted once: for the lowest pid that holds it, its **owner**. Any
/// other holder gets only the numbers of the clients it owns itself, and so zeroes when all
/// of its clients are owned by another process.
#[derive(Debug)]
pub struct ClientScanner {
    root: PathBuf,
    scans: u64,
    pids: HashMap<u32, PidState>,
    clients: HashMap<ClientKey, ClientState>,
    strings: HashSet<Arc<str>>,
    text: String,
    stats: ScanStats,
}

/// A GPU's address and a client id on it.
type ClientKey = (Arc<str>, u64);

/// A client's busy fraction per engine class over the last interval.
type Fractions = Vec<(Arc<str>, f64)>;

/// What the scanner remembers of a pid.
#[derive(Debug)]
struct PidState {
    /// The inode number of `/proc/PID`: a different one is a different process.
    ino: u64,
    /// Whether it held a DRM client when last examined.
    holds_drm: bool,
    /// The scan that last listed it.
    seen: u64,
    /// The scan that first listed it (as this process).
    first_seen: u64,
}

/// The previous reading of a client's counters.
#[derive(Debug)]
struct ClientState {
    at: Instant,
    engines: Vec<(Arc<str>, EngineCounter)>,
    seen: u64,
}

/// The outcome of reading one fd table.
enum FdTable {
    /// Read; whether it held a usable DRM client.
    Read(bool),
    /// Not ours to read.
    Denied,
    /// The process is gone (or its fd table is otherwise unreadable).
    Gone,
}

impl ClientScanner {
    /// A scanner of the procfs mounted at `procfs_root` (`/proc`, or a fixture in tests).
    pub fn new(procfs_root: impl Into<PathBuf>) -> Self {
        ClientScanner {
            root: procfs_root.into(),
            scans: 0,
            pids: HashMap::new(),
            clients: HashMap::new(),
            strings: HashSet::new(),
            text: String::new(),
            stats: ScanStats::default(),
        }
    }

    /// Walks procfs at `now` (the time the engine counters are read at: busy fractions
    /// divide by the time since the previous scan's `now`). One entry per process and GPU,
    /// sorted by pid then GPU address. `Err` only when the procfs root itself cannot be
    /// listed; every later error skips what it concerns.
    pub fn scan(&mut self, now: Instant) -> io::Result<Vec<DrmProcess>> {
        let listing = std::fs::read_dir(&self.root)?;
        self.scans += 1;
        let scan = self.scans;
        let mut stats = ScanStats::default();
        let mut held: Vec<(u32, ClientRecord)> = Vec::new();

        for entry in listing {
            let Ok(entry) = entry else { break };
            let Some(pid) = parse_pid(entry.file_name().as_bytes()) else {
                continue;
            };
            stats.processes += 1;
            let ino = entry.ino();
            let state = match self.pids.entry(pid) {
                Entry::Occupied(slot) if slot.get().ino == ino => {
                    let state = slot.into_mut();
                    let due = (u64::from(pid) + scan).is_multiple_of(RECHECK_EVERY)
                        || YOUNG_RECHECKS.contains(&(scan - state.first_seen));
                    state.seen = scan;
                    if !state.holds_drm && !due {
                        continue;
                    }
                    state
                }
                Entry::Occupied(slot) => {
                    let state = slot.into_mut();
                    *state = PidState {
                        ino,
                        holds_drm: false,
                        seen: scan,
                        first_seen: scan,
                    };
                    state
                }
                Entry::Vacant(slot) => slot.insert(PidState {
                    ino,
                    holds_drm: false,
                    seen: scan,
                    first_seen: scan,
                }),
            };
            state.holds_drm =
                match read_fd_table(&self.root, pid, &mut self.text, &mut stats, &mut held) {
                    FdTable::Read(holds) => holds,
                    FdTable::Denied => {
                        stats.permission_denied += 1;
                        false
                    }
                    FdTable::Gone => false,
                };
        }
        self.pids.retain(|_, state| state.seen == scan);

        let processes = self.account(now, scan, &held, &mut stats);
        self.clients.retain(|_, client| client.seen == scan);
        self.stats = stats;
        Ok(processes)
    }

    /// What the latest scan did.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Turns the clients found into one [`DrmProcess`] per process and GPU: owners, counter
    /// deltas against the previous scan, sums.
    fn account(
        &mut self,
        now: Instant,
        scan: u64,
        held: &[(u32, ClientRecord)],
        stats: &mut ScanStats,
    ) -> Vec<DrmProcess> {
        // The lowest pid holding each client owns it.
        let mut owners: HashMap<(&str, u64), u32> = HashMap::new();
        for (pid, record) in held {
            owners
                .entry((record.pdev.as_str(), record.client_id))
                .and_modify(|owner| *owner = (*owner).min(*pid))
                .or_insert(*pid);
        }
        stats.clients = owners.len();

        // Each client's busy fractions (`None`: no reading this scan), computed once from its
        // owner's copy of the record.
        let mut readings: HashMap<(&str, u64), Option<Fractions>> = HashMap::new();
        for (pid, record) in held {
            let key = (record.pdev.as_str(), record.client_id);
            if owners.get(&key) != Some(pid) || readings.contains_key(&key) {
                continue;
            }
            let pdev = intern(&mut self.strings, &record.pdev);
            let current: Vec<(Arc<str>, EngineCounter, u32)> = record
                .engines
                .iter()
                .map(|e| (intern(&mut self.strings, &e.name), e.counter, e.capacity))
                .collect();
            let client = (pdev, record.client_id);
            let reading = self
                .clients
                .get(&client)
                .and_then(|previous| client_busy(previous.at, &previous.engines, now, &current));
            self.clients.insert(
                client,
                ClientState {
                    at: now,
                    engines: current.into_iter().map(|(e, c, _)| (e, c)).collect(),
                    seen: scan,
                },
            );
            readings.insert(key, reading);
        }

        let mut processes: BTreeMap<(u32, &str), Sums> = BTreeMap::new();
        let mut counted: HashSet<(u32, &str, u64)> = HashSet::new();
        for (pid, record) in held {
            if !counted.insert((*pid, record.pdev.as_str(), record.client_id)) {
                continue; // the same client on another fd of this process
            }
            let key = (record.pdev.as_str(), record.client_id);
            let owned = owners.get(&key) == Some(pid);
            let sums = processes
                .entry((*pid, record.pdev.as_str()))
                .or_insert_with(|| Sums::new(record.driver));
            let own = |bytes: u64| if owned { bytes } else { 0 };
            if let Some(bytes) = record.local_bytes() {
                sums.local = Some(sums.local.unwrap_or(0).saturating_add(own(bytes)));
            }
            if let Some(bytes) = record.system_bytes() {
                sums.system = Some(sums.system.unwrap_or(0).saturating_add(own(bytes)));
            }
            if let Some(Some(reading)) = readings.get(&key) {
                for (engine, busy) in reading {
                    sums.add_busy(engine, if owned { *busy } else { 0.0 });
                }
            }
        }

        processes
            .into_iter()
            .map(|((pid, pdev), sums)| {
                let engines: Vec<EngineBusy> = sums
                    .engines
                    .into_iter()
                    .map(|(engine, busy)| EngineBusy {
                        engine,
                        busy: busy.min(1.0),
                    })
                    .collect();
                let utilization_pct = engines
                    .iter()
                    .map(|e| e.busy)
                    .reduce(f64::max)
                    .map(|busy| ((busy * 100.0).round() as u32).min(100));
                DrmProcess {
                    pid,
                    driver: sums.driver,
                    pdev: intern(&mut self.strings, pdev),
                    local_bytes: sums.local,
                    system_bytes: sums.system,
                    engines,
                    utilization_pct,
                }
            })
            .collect()
    }
}

/// Per process and GPU, while the clients are added up.
struct Sums {
    driver: Driver,
    local: Option<u64>,
    system: Option<u64>,
    engines: Vec<(Arc<str>, f64)>,
}

impl Sums {
    fn new(driver: Driver) -> Self {
        Sums {
            driver,
            local: None,
            system: None,
            engines: Vec::new(),
        }
    }

    fn add_busy(&mut self, engine: &Arc<str>, busy: f64) {
        match self.engines.iter_mut().find(|(e, _)| e == engine) {
            Some((_, sum)) => *sum += busy,
            None => self.engines.push((engine.clone(), busy)),
        }
    }
}

/// The shared copy of `s`, made on first use.
fn intern(strings: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(shared) = strings.get(s) {
        return shared.clone();
    }
    let shared: Arc<str> = Arc::from(s);
    strings.insert(shared.clone());
    shared
}

/// A procfs entry name that is a pid (`1234`; not `self`, `sys`, `0`, `01`).
fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.first().is_none_or(|&c| !(b'1'..=b'9').contains(&c)) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Whether an fd's link target is a DRM node.
fn is_drm_node(target: &[u8]) -> bool {
    target
        .strip_prefix(b"/dev/dri/")
        .is_some_and(|node| node.starts_with(b"renderD") || node.starts_with(b"card"))
}

/// Reads the fd table of `pid` and, for each fd on a DRM node, its fdinfo; pushes the usable
/// DRM clients onto `held`.
fn read_fd_table(
    root: &Path,
    pid: u32,
    text: &mut String,
    stats: &mut ScanStats,
    held: &mut Vec<(u32, ClientRecord)>,
) -> FdTable {
    let mut path = root.join(pid.to_string());
    path.push("fd");
    let fds = match std::fs::read_dir(&path) {
        Ok(fds) => fds,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return FdTable::Denied,
        Err(_) => return FdTable::Gone,
    };
    // readlinkat relative to the fd directory: one path component per link instead of the
    // whole `/proc/PID/fd/N` walk, which is most of the cost of an fd table.
    let Ok(base) = nix::fcntl::open(
        &path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return FdTable::Gone;
    };
    stats.fd_tables_read += 1;
    let mut holds = false;
    for fd in fds {
        // An error while listing: the process exited.
        let Ok(fd) = fd else { break };
        let name = fd.file_name();
        let Ok(target) = nix::fcntl::readlinkat(&base, name.as_os_str()) else {
            continue;
        };
        if !is_drm_node(target.as_bytes()) {
            continue;
        }
        path.set_file_name("fdinfo");
        path.push(&name);
        text.clear();
        let read = File::open(&path).and_then(|mut file| file.read_to_string(text));
        path.pop();
        path.set_file_name("fd");
        if read.is_err() {
            continue;
        }
        stats.fdinfo_read += 1;
        if let Some(record) = ClientRecord::parse(text) {
            holds = true;
            held.push((pid, record));
        }
    }
    FdTable::Read(holds)
}

/// A client's busy fraction per engine class between its previous reading (`before`, taken
/// at `then`) and the current one (`current`: engine, counter, capacity, taken at `now`).
/// `None` when there is no reading: no time passed, or a counter went backwards (the client
/// id was reused, or the driver reset it). Engines without a previous counter are left out.
fn client_busy(
    then: Instant,
    before: &[(Arc<str>, EngineCounter)],
    now: Instant,
    current: &[(Arc<str>, EngineCounter, u32)],
) -> Option<Fractions> {
    let elapsed = now.checked_duration_since(then)?;
    if elapsed.is_zero() {
        return None;
    }
    let mut busy = Vec::with_capacity(current.len());
    for (engine, counter, capacity) in current {
        let Some((_, previous)) = before.iter().find(|(e, _)| e == engine) else {
            continue;
        };
        if went_backwards(*previous, *counter) {
            return None;
        }
        if let Some(fraction) = busy_fraction(*previous, *counter, elapsed, *capacity) {
            busy.push((engine.clone(), fraction));
        }
    }
    Some(busy)
}

/// Whether a counter is lower than before (a reset), which makes a delta meaningless.
fn went_backwards(before: EngineCounter, now: EngineCounter) -> bool {
    match (before, now) {
        (EngineCounter::Nanoseconds(a), EngineCounter::Nanoseconds(b)) => b < a,
        (
            EngineCounter::Cycles { busy: a, total: ta },
            EngineCounter::Cycles { busy: b, total: tb },
        ) => b < a || tb < ta,
        _ => true,
    }
}

/// The busy fraction (0.0..=1.0) of an engine class of `capacity` engines between two
/// readings of its counter `elapsed` apart: Δns / (elapsed × capacity) for nanosecond
/// counters, Δbusy / (Δtotal × capacity) for cycle counters (xe sums the cycles of all the
/// engines of a class). `None` when the counters went backwards, are of different kinds, or
/// no time (or no GPU cycle) passed.
pub fn busy_fraction(
    before: EngineCounter,
    now: EngineCounter,
    elapsed: Duration,
    capacity: u32,
) -> Option<f64> {
    let capacity = f64::from(capacity.max(1));
    let fraction = match (before, now) {
        (EngineCounter::Nanoseconds(a), EngineCounter::Nanoseconds(b)) => {
            let busy = b.checked_sub(a)?;
            if elapsed.is_zero() {
                return None;
            }
            busy as f64 / (elapsed.as_nanos() as f64 * capacity)
        }
        (
            EngineCounter::Cycles { busy: a, total: ta },
            EngineCounter::Cycles { busy: b, total: tb },
        ) => {
            let busy = b.checked_sub(a)?;
            let total = tb.checked_sub(ta)?;
            if total == 0 {
                return None;
            }
            busy as f64 / (total as f64 * capacity)
        }
        _ => return None,
    };
    Some(fraction.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const KIB: u64 = 1024;

    /// A fake procfs in a temp dir.
    struct Procfs(tempfile::TempDir);

    impl Procfs {
        fn new() -> Self {
            Procfs(tempfile::tempdir().expect("tempdir"))
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        /// A process with stdin/stdout/stderr on things that are not GPUs.
        fn process(&self, pid: u32) {
            self.process_at(&pid.to_string());
        }

        fn process_at(&self, name: &str) {
            let dir = self.root().join(name);
            std::fs::create_dir_all(dir.join("fd")).expect("fd dir");
            std::fs::create_dir_all(dir.join("fdinfo")).expect("fdinfo dir");
            for (fd, target) in [(0, "/dev/null"), (1, "pipe:[9]"), (2, "socket:[123]")] {
                symlink(target, dir.join("fd").join(fd.to_string())).expect("link");
            }
        }

        /// Gives `pid` an fd `fd` on a render node with this fdinfo.
        fn drm(&self, pid: u32, fd: u32, fdinfo: &str) {
            self.drm_at(&pid.to_string(), fd, fdinfo);
        }

        fn drm_at(&self, name: &str, fd: u32, fdinfo: &str) {
            let dir = self.root().join(name);
            symlink("/dev/dri/renderD128", dir.join("fd").join(fd.to_string())).expect("link");
            std::fs::write(dir.join("fdinfo").join(fd.to_string()), fdinfo).expect("fdinfo");
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.root().join(pid.to_string())).expect("remove");
        }
    }

    fn amdgpu(client_id: u64, vram_kib: u64, gtt_kib: u64, gfx_ns: u64) -> String {
        format!(
            "pos:\t0\nflags:\t02100002\ndrm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\n\
             drm-client-id:\t{client_id}\ndrm-memory-vram:\t{vram_kib} KiB\n\
             drm-memory-gtt:\t{gtt_kib} KiB\ndrm-memory-cpu:\t0 KiB\n\
             drm-engine-gfx:\t{gfx_ns} ns\ndrm-engine-compute:\t0 ns\n"
        )
    }

    fn i915_video(client_id: u64, video_ns: u64) -> String {
        format!(
            "drm-driver:\ti915\ndrm-pdev:\t0000:00:02.0\ndrm-client-id:\t{client_id}\n\
             drm-engine-render:\t0 ns\ndrm-engine-video:\t{video_ns} ns\n\
             drm-engine-capacity-video:\t2\ndrm-total-system0:\t4 KiB\n"
        )
    }

    fn xe(client_id: u64, busy: u64, total: u64) -> String {
        format!(
            "drm-driver:\txe\ndrm-pdev:\t0000:00:02.0\ndrm-client-id:\t{client_id}\n\
             drm-cycles-rcs:\t{busy}\ndrm-total-cycles-rcs:\t{total}\n\
             drm-total-vram0:\t1024 KiB\ndrm-total-gtt:\t8 KiB\n"
        )
    }

    fn scan(scanner: &mut ClientScanner, at: Instant) -> Vec<DrmProcess> {
        scanner.scan(at).expect("scan")
    }

    fn busy(process: &DrmProcess, engine: &str) -> Option<f64> {
        process
            .engines
            .iter()
            .find(|e| &*e.engine == engine)
            .map(|e| e.busy)
    }

    #[test]
    fn finds_drm_holders_only() {
        let procfs = Procfs::new();
        procfs.process(100);
        procfs.drm(100, 5, &amdgpu(42, 4096, 20, 1000));
        procfs.process(101);
        // A DRM node of a driver gpukill does not handle, and a card node without stats.
        procfs.process(102);
        procfs.drm(
            102,
            3,
            "drm-driver:\tnvidia-drm\ndrm-pdev:\t0000:01:00.0\ndrm-client-id:\t1\n",
        );
        procfs.drm(102, 4, "pos:\t0\nflags:\t02\n");
        std::fs::create_dir(procfs.root().join("self")).expect("self");
        std::fs::write(procfs.root().join("uptime"), "1 2").expect("uptime");

        let mut scanner = ClientScanner::new(procfs.root());
        let found = scan(&mut scanner, Instant::now());
        assert_eq!(found.len(), 1);
        let process = &found[0];
        assert_eq!(process.pid, 100);
        assert_eq!(process.driver, Driver::Amdgpu);
        assert_eq!(&*process.pdev, "0000:03:00.0");
        assert_eq!(process.local_bytes, Some(4096 * KIB));
        assert_eq!(process.system_bytes, Some(20 * KIB));
        assert!(process.engines.is_empty(), "no previous reading");
        assert_eq!(process.utilization_pct, None);
        let stats = scanner.stats();
        assert_eq!(stats.processes, 3);
        assert_eq!(stats.fd_tables_read, 3);
        assert_eq!(stats.fdinfo_read, 3);
        assert_eq!(stats.clients, 1);
    }

    #[test]
    fn missing_root_is_an_error() {
        let procfs = Procfs::new();
        let mut scanner = ClientScanner::new(procfs.root().join("nope"));
        assert!(scanner.scan(Instant::now()).is_err());
    }

    #[test]
    fn one_client_on_two_fds_counts_once() {
        let procfs = Procfs::new();
        procfs.process(100);
        procfs.drm(100, 5, &amdgpu(42, 1000, 10, 0));
        procfs.drm(100, 6, &amdgpu(42, 1000, 10, 0));
        procfs.drm(100, 7, &amdgpu(43, 24, 0, 0));
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        let found = scan(&mut scanner, t0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].local_bytes, Some(1024 * KIB));
        assert_eq!(found[0].system_bytes, Some(10 * KIB));
        assert_eq!(scanner.stats().clients, 2);

        // 0.5 s of gfx over 1 s, seen on both fds: 50 %, not 100 %.
        procfs.drm(100, 8, &amdgpu(99, 0, 0, 0));
        for fd in [5, 6] {
            let path = procfs.root().join("100/fdinfo").join(fd.to_string());
            std::fs::write(path, amdgpu(42, 1000, 10, 500_000_000)).expect("fdinfo");
        }
        let found = scan(&mut scanner, t0 + Duration::from_secs(1));
        assert_eq!(busy(&found[0], "gfx"), Some(0.5));
        assert_eq!(found[0].utilization_pct, Some(50));
    }

    #[test]
    fn shared_client_belongs_to_the_lowest_pid() {
        let procfs = Procfs::new();
        // The parent 200 and its fork 300 share client 42; 300 also has client 43; 400 holds
        // only 42.
        for pid in [200, 300, 400] {
            procfs.process(pid);
            procfs.drm(pid, 5, &amdgpu(42, 1000, 100, 0));
        }
        procfs.drm(300, 6, &amdgpu(43, 24, 4, 0));
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        let found = scan(&mut scanner, t0);
        let pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [200, 300, 400]);
        assert_eq!(found[0].local_bytes, Some(1000 * KIB));
        assert_eq!(found[0].system_bytes, Some(100 * KIB));
        assert_eq!(found[1].local_bytes, Some(24 * KIB));
        assert_eq!(found[1].system_bytes, Some(4 * KIB));
        assert_eq!(found[2].local_bytes, Some(0));
        assert_eq!(found[2].system_bytes, Some(0));
        assert_eq!(scanner.stats().clients, 2);
        assert!(Arc::ptr_eq(&found[0].pdev, &found[1].pdev));

        for pid in [200, 300, 400] {
            let path = procfs.root().join(format!("{pid}/fdinfo/5"));
            std::fs::write(path, amdgpu(42, 1000, 100, 250_000_000)).expect("fdinfo");
        }
        let found = scan(&mut scanner, t0 + Duration::from_secs(1));
        assert_eq!(found[0].utilization_pct, Some(25));
        assert_eq!(busy(&found[1], "gfx"), Some(0.0));
        assert_eq!(found[1].utilization_pct, Some(0));
        assert_eq!(found[2].utilization_pct, Some(0));

        // The parent exits: the child owns the client now.
        procfs.remove(200);
        let found = scan(&mut scanner, t0 + Duration::from_secs(2));
        assert_eq!(found[0].pid, 300);
        assert_eq!(found[0].local_bytes, Some(1024 * KIB));
        assert_eq!(found[1].local_bytes, Some(0));
    }

    #[test]
    fn utilization_from_nanoseconds_capacity_and_cycles() {
        let procfs = Procfs::new();
        procfs.process(10);
        procfs.drm(10, 3, &amdgpu(1, 0, 0, 0));
        procfs.process(11);
        procfs.drm(11, 3, &i915_video(2, 0));
        procfs.process(12);
        procfs.drm(12, 3, &xe(3, 1000, 10_000));
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        assert!(scan(&mut scanner, t0).iter().all(|p| p.engines.is_empty()));

        procfs.drm(10, 4, &amdgpu(1, 0, 0, 0)); // a dup, read after the first
        std::fs::write(
            procfs.root().join("10/fdinfo/3"),
            amdgpu(1, 0, 0, 500_000_000),
        )
        .expect("fdinfo");
        std::fs::write(
            procfs.root().join("10/fdinfo/4"),
            amdgpu(1, 0, 0, 500_000_000),
        )
        .expect("fdinfo");
        std::fs::write(
            procfs.root().join("11/fdinfo/3"),
            i915_video(2, 500_000_000),
        )
        .expect("fdinfo");
        std::fs::write(procfs.root().join("12/fdinfo/3"), xe(3, 1300, 11_000)).expect("fdinfo");
        let found = scan(&mut scanner, t0 + Duration::from_secs(1));
        assert_eq!(found.len(), 3);
        assert_eq!(busy(&found[0], "gfx"), Some(0.5));
        assert_eq!(busy(&found[0], "compute"), Some(0.0));
        assert_eq!(found[0].utilization_pct, Some(50));
        assert_eq!(busy(&found[1], "video"), Some(0.25), "capacity 2 halves it");
        assert_eq!(found[1].utilization_pct, Some(25));
        assert_eq!(found[1].local_bytes, None);
        assert_eq!(busy(&found[2], "rcs"), Some(0.3));
        assert_eq!(found[2].utilization_pct, Some(30));
        assert_eq!(found[2].local_bytes, Some(1024 * KIB));
        assert_eq!(found[2].system_bytes, Some(8 * KIB));
    }

    #[test]
    fn counter_reset_gives_no_reading_then_a_new_baseline() {
        let procfs = Procfs::new();
        procfs.process(10);
        procfs.drm(10, 3, &amdgpu(1, 0, 0, 900_000_000));
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        scan(&mut scanner, t0);
        let fdinfo = procfs.root().join("10/fdinfo/3");
        std::fs::write(&fdinfo, amdgpu(1, 0, 0, 100_000_000)).expect("fdinfo");
        let found = scan(&mut scanner, t0 + Duration::from_secs(1));
        assert!(found[0].engines.is_empty());
        assert_eq!(found[0].utilization_pct, None);
        std::fs::write(&fdinfo, amdgpu(1, 0, 0, 200_000_000)).expect("fdinfo");
        let found = scan(&mut scanner, t0 + Duration::from_secs(2));
        assert_eq!(found[0].utilization_pct, Some(10));
    }

    #[test]
    fn busy_fraction_math() {
        use EngineCounter::{Cycles, Nanoseconds};
        let second = Duration::from_secs(1);
        let ns = busy_fraction(Nanoseconds(0), Nanoseconds(500_000_000), second, 1);
        assert_eq!(ns, Some(0.5));
        let ns = busy_fraction(Nanoseconds(0), Nanoseconds(500_000_000), second, 2);
        assert_eq!(ns, Some(0.25));
        let half = Duration::from_millis(500);
        let ns = busy_fraction(Nanoseconds(100), Nanoseconds(100 + 250_000_000), half, 1);
        assert_eq!(ns, Some(0.5));
        // More busy time than wall time (a late tick): capped.
        let ns = busy_fraction(Nanoseconds(0), Nanoseconds(3_000_000_000), second, 1);
        assert_eq!(ns, Some(1.0));
        assert_eq!(
            busy_fraction(Nanoseconds(5), Nanoseconds(4), second, 1),
            None
        );
        assert_eq!(
            busy_fraction(Nanoseconds(5), Nanoseconds(9), Duration::ZERO, 1),
            None
        );
        let cycles = |busy, total| Cycles { busy, total };
        assert_eq!(
            busy_fraction(cycles(0, 0), cycles(250, 1000), second, 1),
            Some(0.25)
        );
        assert_eq!(
            busy_fraction(cycles(0, 0), cycles(2000, 1000), second, 4),
            Some(0.5)
        );
        assert_eq!(busy_fraction(cycles(0, 5), cycles(10, 5), second, 1), None);
        assert_eq!(busy_fraction(cycles(9, 0), cycles(1, 10), second, 1), None);
        assert_eq!(busy_fraction(cycles(0, 10), cycles(1, 9), second, 1), None);
        assert_eq!(busy_fraction(Nanoseconds(0), cycles(1, 9), second, 1), None);
    }

    #[test]
    fn client_busy_needs_time_and_forward_counters() {
        let gfx: Arc<str> = Arc::from("gfx");
        let dma: Arc<str> = Arc::from("dma");
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let before = [(gfx.clone(), EngineCounter::Nanoseconds(0))];
        let now = [
            (gfx.clone(), EngineCounter::Nanoseconds(1_000_000_000), 1),
            (dma.clone(), EngineCounter::Nanoseconds(7), 1),
        ];
        // dma has no previous counter: left out.
        assert_eq!(
            client_busy(t0, &before, t1, &now),
            Some(vec![(gfx.clone(), 0.5)])
        );
        assert_eq!(client_busy(t0, &before, t0, &now), None);
        assert_eq!(client_busy(t1, &before, t0, &now), None);
        let reset = [(gfx.clone(), EngineCounter::Nanoseconds(1_000_000_000))];
        let now = [
            (gfx, EngineCounter::Nanoseconds(0), 1),
            (dma.clone(), EngineCounter::Nanoseconds(7), 1),
        ];
        assert_eq!(client_busy(t0, &reset, t1, &now), None);
    }

    #[test]
    fn a_process_that_opens_a_gpu_later_is_found_within_the_bound() {
        let procfs = Procfs::new();
        let pids: Vec<u32> = (500..500 + RECHECK_EVERY as u32).collect();
        for &pid in &pids {
            procfs.process(pid);
        }
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        assert!(scan(&mut scanner, t0).is_empty());
        assert_eq!(scanner.stats().fd_tables_read, pids.len());
        // Past their young rechecks, the pids are on the rotation only.
        let settled = YOUNG_RECHECKS[YOUNG_RECHECKS.len() - 1];
        for scan_no in 1..=settled {
            scan(&mut scanner, t0 + Duration::from_secs(scan_no));
        }

        for (i, &pid) in pids.iter().enumerate() {
            procfs.drm(pid, 9, &amdgpu(i as u64 + 1, 4, 0, 0));
        }
        let mut found_at: HashMap<u32, u64> = HashMap::new();
        for scan_no in 1..=RECHECK_EVERY {
            let found = scan(&mut scanner, t0 + Duration::from_secs(settled + scan_no));
            // Each scan examines the holders found so far and one of the others (the pids
            // are consecutive, so their slots are spread evenly).
            let known = found_at.len();
            assert_eq!(scanner.stats().fd_tables_read, known + 1, "scan {scan_no}");
            for process in found {
                found_at.entry(process.pid).or_insert(scan_no);
            }
        }
        assert_eq!(
            found_at.len(),
            pids.len(),
            "all found within RECHECK_EVERY scans"
        );
    }

    #[test]
    fn a_young_process_that_opens_a_gpu_after_its_first_scan_is_found_at_the_next_recheck() {
        let procfs = Procfs::new();
        // 13 + scan number is a multiple of RECHECK_EVERY only at scan 7: not before.
        procfs.process(13);
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        // Scan 1 sees it first; scans 2 and 3 are young rechecks (1 and 2 after it).
        for second in 0..3 {
            assert!(scan(&mut scanner, t0 + Duration::from_secs(second)).is_empty());
        }
        // Opened now: scan 4 is neither a young recheck nor its rotation slot; scan 5 (4
        // after the first) is a young recheck.
        procfs.drm(13, 4, &amdgpu(3, 8, 0, 0));
        assert!(scan(&mut scanner, t0 + Duration::from_secs(3)).is_empty());
        let found = scan(&mut scanner, t0 + Duration::from_secs(4));
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![13]);
    }

    #[test]
    fn a_reused_pid_is_examined_at_once() {
        let procfs = Procfs::new();
        // 7 + scan number 2 is not a multiple of RECHECK_EVERY: not its rotation slot.
        procfs.process(7);
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        assert!(scan(&mut scanner, t0).is_empty());

        // Another process with the same pid: a new /proc/7 directory (built next to the old
        // one so that it cannot get the old inode number).
        procfs.process_at("new-7");
        procfs.drm_at("new-7", 4, &amdgpu(5, 8, 0, 0));
        procfs.remove(7);
        std::fs::rename(procfs.root().join("new-7"), procfs.root().join("7")).expect("rename");
        let found = scan(&mut scanner, t0 + Duration::from_secs(1));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, 7);
    }

    #[test]
    fn vanished_pids_and_clients_leave_the_caches() {
        let procfs = Procfs::new();
        for pid in [10, 11, 12] {
            procfs.process(pid);
        }
        procfs.drm(11, 3, &amdgpu(1, 0, 0, 0));
        let mut scanner = ClientScanner::new(procfs.root());
        let t0 = Instant::now();
        assert_eq!(scan(&mut scanner, t0).len(), 1);
        assert_eq!((scanner.pids.len(), scanner.clients.len()), (3, 1));

        procfs.remove(11);
        procfs.remove(12);
        assert!(scan(&mut scanner, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!((scanner.pids.len(), scanner.clients.len()), (1, 0));
        assert!(scanner.pids.contains_key(&10));
    }

    #[test]
    fn a_process_exiting_mid_walk_is_skipped() {
        let procfs = Procfs::new();
        // Listed but without an fd table (gone between readdir and reading it), and a DRM fd
        // whose fdinfo is missing (closed in between).
        std::fs::create_dir(procfs.root().join("20")).expect("dir");
        procfs.process(21);
        symlink("/dev/dri/card0", procfs.root().join("21/fd/3")).expect("link");
        let mut scanner = ClientScanner::new(procfs.root());
        assert!(scan(&mut scanner, Instant::now()).is_empty());
        let stats = scanner.stats();
        assert_eq!(
            (stats.processes, stats.fd_tables_read, stats.fdinfo_read),
            (2, 1, 0)
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse_pid(b"1234"), Some(1234));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b"0"), None);
        assert_eq!(parse_pid(b"012"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"99999999999"), None);
        assert!(is_drm_node(b"/dev/dri/renderD128"));
        assert!(is_drm_node(b"/dev/dri/card1"));
        assert!(!is_drm_node(b"/dev/dri/by-path"));
        assert!(!is_drm_node(b"/dev/nvidia0"));
        assert!(!is_drm_node(b"socket:[123]"));
    }
}
