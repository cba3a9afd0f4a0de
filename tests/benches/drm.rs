//! DRM client scan benchmark: the per-tick procfs walk of the AMD/Intel backend
//! (`gpukilld::backends::drm::clients::ClientScanner`) over a fixture procfs of 500 processes
//! with about 20 fds each, 20 of which hold one or two fds on `/dev/dri/renderD128` with
//! amdgpu fdinfo (counters move between scans), then over this machine's real `/proc` for
//! scale. Reports the first (cold) scan and the steady state (median, p95 and max), against
//! the target of 3 ms per scan. The fixture lives in `/dev/shm` when there is one: procfs is
//! in memory, and on a disk filesystem the fdinfo rewrites between scans add journal and
//! writeback work that a real procfs does not have (on ext4 the steady scan measured about a
//! third slower). Prints a Markdown table. Run it with:
//!
//!     cargo bench -p gpukill-tests --bench drm

#[allow(dead_code)]
#[path = "../tests/support/measure.rs"]
mod measure;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Instant;

use gpukilld::backends::drm::clients::{ClientScanner, ScanStats};
use measure::{median, percentile};

const PROCESSES: u32 = 500;
const HOLDERS: u32 = 20;
const FDS: u32 = 20;
const FIRST_PID: u32 = 1000;
const STEADY_SCANS: usize = 200;
const REAL_SCANS: usize = 100;
const TARGET_MS: f64 = 3.0;

/// Every 25th process holds the GPU; every other holder twice (a dup of one client).
fn drm_fds(index: u32) -> &'static [u32] {
    if !index.is_multiple_of(PROCESSES / HOLDERS) {
        &[]
    } else if index.is_multiple_of(2) {
        &[FDS, FDS + 1]
    } else {
        &[FDS]
    }
}

fn fdinfo(client_id: u32, gfx_ns: u64) -> String {
    format!(
        "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t1073\ndrm-driver:\tamdgpu\n\
         drm-pdev:\t0000:03:00.0\ndrm-client-id:\t{client_id}\n\
         drm-memory-vram:\t4194304 KiB\ndrm-memory-gtt:\t 20480 KiB\ndrm-memory-cpu:\t0 KiB\n\
         amd-memory-visible-vram:\t0 KiB\ndrm-engine-gfx:\t{gfx_ns} ns\n\
         drm-engine-compute:\t{} ns\ndrm-engine-dma:\t123 ns\n",
        gfx_ns / 3
    )
}

/// Writes the fixture procfs under `root`.
fn build_fixture(root: &Path) {
    for index in 0..PROCESSES {
        let dir = root.join((FIRST_PID + index).to_string());
        std::fs::create_dir_all(dir.join("fd")).expect("fd dir");
        std::fs::create_dir_all(dir.join("fdinfo")).expect("fdinfo dir");
        std::fs::write(
            dir.join("stat"),
            format!(
                "{} (python3) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {index} 0 0",
                FIRST_PID + index
            ),
        )
        .expect("stat");
        for fd in 0..FDS {
            let target = match fd {
                0 => "/dev/null".to_string(),
                1 | 2 => format!("pipe:[{}]", 9000 + index),
                _ if fd % 3 == 0 => format!("/home/user/data/part-{fd}.bin"),
                _ => format!("socket:[{}]", 123_000 + index * FDS + fd),
            };
            symlink(target, dir.join("fd").join(fd.to_string())).expect("fd link");
        }
        for &fd in drm_fds(index) {
            symlink("/dev/dri/renderD128", dir.join("fd").join(fd.to_string())).expect("drm");
        }
    }
    std::fs::create_dir(root.join("self")).expect("self");
    std::fs::write(root.join("uptime"), "12345.67 2345.67\n").expect("uptime");
}

/// Moves every holder's gfx counter forward (between scans, not timed).
fn advance(root: &Path, tick: u64) {
    for index in 0..PROCESSES {
        for &fd in drm_fds(index) {
            let path = root.join(format!("{}/fdinfo/{fd}", FIRST_PID + index));
            std::fs::write(path, fdinfo(index + 1, tick * 400_000_000)).expect("fdinfo");
        }
    }
}

/// Milliseconds of one scan, and what it did.
fn timed_scan(scanner: &mut ClientScanner) -> (f64, usize, ScanStats) {
    let started = Instant::now();
    let found = scanner.scan(started).expect("scan");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    (ms, found.len(), scanner.stats())
}

struct Row {
    what: String,
    stats: ScanStats,
    listed: usize,
    median: f64,
    p95: f64,
    max: f64,
    judged: bool,
}

/// The row of one (first) scan.
fn cold(what: &str, scanner: &mut ClientScanner) -> Row {
    let (ms, listed, stats) = timed_scan(scanner);
    Row {
        what: what.to_string(),
        stats,
        listed,
        median: ms,
        p95: ms,
        max: ms,
        judged: false,
    }
}

fn steady(what: &str, scanner: &mut ClientScanner, scans: usize, tick: impl Fn(u64)) -> Row {
    let mut times = Vec::with_capacity(scans);
    let mut last = (0, ScanStats::default());
    let mut fd_tables = 0;
    for i in 0..scans {
        tick(i as u64 + 1);
        let (ms, listed, stats) = timed_scan(scanner);
        times.push(ms);
        fd_tables += stats.fd_tables_read;
        last = (listed, stats);
    }
    // fd tables read: the mean per scan (the rotation makes it vary).
    let mut stats = last.1;
    stats.fd_tables_read = fd_tables.div_ceil(scans);
    Row {
        what: format!("{what}, {scans} scans"),
        stats,
        listed: last.0,
        median: median(&mut times),
        p95: percentile(&mut times, 95),
        max: times.iter().copied().fold(0.0, f64::max),
        judged: true,
    }
}

fn main() {
    let shm = Path::new("/dev/shm");
    let fixture = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let root = fixture.path();
    println!("fixture procfs in {}", root.display());
    build_fixture(root);
    advance(root, 0);

    let mut rows = Vec::new();
    let mut scanner = ClientScanner::new(root);
    let first = cold("fixture: first (cold) scan", &mut scanner);
    assert_eq!(first.listed, HOLDERS as usize, "every holder listed once");
    rows.push(first);
    rows.push(steady(
        "fixture: steady state",
        &mut scanner,
        STEADY_SCANS,
        |tick| advance(root, tick),
    ));

    let mut real = ClientScanner::new("/proc");
    rows.push(cold("real /proc: first (cold) scan", &mut real));
    rows.push(steady(
        "real /proc: steady state",
        &mut real,
        REAL_SCANS,
        |_| {},
    ));

    println!(
        "\n| scan | processes | fd tables read per scan | DRM fdinfo read | listed (pid, GPU) | median ms | p95 ms | max ms | target <= {TARGET_MS} ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let verdict = match (row.judged, row.median <= TARGET_MS) {
            (false, _) => "-",
            (true, true) => "met (median)",
            (true, false) => "MISSED",
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {verdict} |",
            row.what,
            row.stats.processes,
            row.stats.fd_tables_read,
            row.stats.fdinfo_read,
            row.listed,
            row.median,
            row.p95,
            row.max,
        );
    }
}
