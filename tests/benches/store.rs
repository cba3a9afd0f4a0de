//! Store benchmark: 30 days of history for 8 GPUs at the default 10 s persist interval (and
//! 3 days of the heavy 1 s case), written through the store's real write path. Reports
//! bytes per GPU-day on disk, write time and writer-thread CPU per interval (the writer's
//! cost per tick), one hourly rollup, `audit --summary` over the 30 days (on a read-only
//! connection, as the daemon answers it), one retention pass and the longest a reader
//! waited during it. Prints a Markdown table. Run it with:
//!
//!     cargo bench -p gpukill-tests --bench store

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gpukilld::store::{GpuSampleRow, Retention, SessionUpdate, Store};

const GPUS: u32 = 8;
const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01, a multiple of a day

fn sample(time_ms: i64, gpu: u32, tick: i64) -> GpuSampleRow {
    let wave = ((tick + i64::from(gpu)) % 100) as f64;
    GpuSampleRow {
        time_ms,
        gpu_index: gpu,
        uuid: Some(format!("GPU-5c0ffee{gpu}-0000-4000-8000-00000000000{gpu}")),
        pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x17 + gpu)),
        name: Some("NVIDIA A100-SXM4-80GB".to_string()),
        ticks: 5,
        util_mean: Some(wave),
        util_max: Some(((wave as u32) + 3).min(100)),
        mem_util_mean: Some(wave / 2.0),
        mem_used_max: Some((40_000 + tick as u64 % 1000) << 20),
        mem_total: Some(81_920 << 20),
        temp_mean: Some(40.0 + wave / 4.0),
        temp_max: Some(40 + (wave as i32) / 4 + 1),
        power_mean_mw: Some(100_000.0 + wave * 2500.0),
        power_max_mw: Some(100_000 + (wave as u32) * 2600),
        fan_mean: Some(35.0),
        sm_clock_mean: Some(1410.0),
        mem_clock_mean: Some(1593.0),
    }
}

/// Four processes per GPU, each a six-hour job (a new pid every six hours).
fn sessions(time_ms: i64, interval_s: f64) -> Vec<SessionUpdate> {
    let job = (time_ms - START_MS) / (6 * 3_600_000);
    (0..GPUS)
        .flat_map(|gpu| {
            (0..4).map(move |slot| {
                let pid = 10_000 + (job as u32) * 64 + gpu * 4 + slot;
                SessionUpdate {
                    pid,
                    start_time_ms: START_MS + job * 6 * 3_600_000,
                    gpu_index: gpu,
                    first_seen_ms: time_ms,
                    last_seen_ms: time_ms,
                    uid: 1000 + slot,
                    user: format!("user{slot}"),
                    name: "python3".to_string(),
                    cmdline: format!("python3 train.py --job {job} --rank {slot}"),
                    container_id: None,
                    container_runtime: None,
                    pod_uid: None,
                    peak_memory_bytes: Some(10_000 << 20),
                    memory_byte_seconds: (10_000u64 << 20) as f64 * interval_s,
                    gpu_seconds: interval_s,
                    util_seconds: Some(0.8 * interval_s),
                }
            })
        })
        .collect()
}

struct Filled {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    write_us_p50: f64,
    write_cpu_us_p50: f64,
    bytes_per_gpu_day: f64,
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fill(days: i64, interval_ms: i64) -> Filled {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gpukill.db");
    let mut store = Store::open(&path).expect("open");
    let mut write_times = Vec::new();
    let mut write_cpu = Vec::new();
    let intervals = days * DAY_MS / interval_ms;
    for tick in 0..intervals {
        let time_ms = START_MS + tick * interval_ms;
        let samples: Vec<GpuSampleRow> = (0..GPUS).map(|gpu| sample(time_ms, gpu, tick)).collect();
        let updates = sessions(time_ms, interval_ms as f64 / 1000.0);
        let (started, cpu) = (Instant::now(), thread_cpu());
        store.write_history(&samples, &updates).expect("write");
        if tick % 97 == 0 {
            write_times.push(started.elapsed().as_secs_f64() * 1e6);
            write_cpu.push((thread_cpu() - cpu).as_secs_f64() * 1e6);
        }
    }
    drop(store);
    // Checkpoint so the main file holds everything.
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(conn);
    let bytes = std::fs::metadata(&path).expect("size").len() as f64;
    Filled {
        path,
        _dir: dir,
        write_us_p50: median(&mut write_times),
        write_cpu_us_p50: median(&mut write_cpu),
        bytes_per_gpu_day: bytes / (f64::from(GPUS) * days as f64),
    }
}

fn main() {
    eprintln!("writing 30 days x 8 GPUs at 10 s...");
    let default = fill(30, 10_000);
    eprintln!("writing 3 days x 8 GPUs at 1 s...");
    let heavy = fill(3, 1_000);

    let mut store = Store::open(&default.path).expect("open");
    let mut rollups = Vec::new();
    for hour in 0..24 {
        let started = Instant::now();
        store
            .rollup_hour(
                START_MS + 10 * DAY_MS + hour * 3_600_000,
                Duration::from_secs(10),
                None,
            )
            .expect("rollup");
        rollups.push(started.elapsed().as_secs_f64() * 1e3);
    }
    rollups.sort_by(f64::total_cmp);

    // Every other hour of the 30 days rolled up, as the daemon leaves them; then the summary
    // of the whole window, on a read-only connection like the daemon's readers.
    let started = Instant::now();
    for hour in 0..30 * 24 {
        if !(240..264).contains(&hour) {
            store
                .rollup_hour(START_MS + hour * 3_600_000, Duration::from_secs(10), None)
                .expect("rollup");
        }
    }
    let rollup_all_s = started.elapsed().as_secs_f64();
    let reader = Store::open_read_only(&default.path).expect("reader");
    let request = gpukill_proto::v1::SummaryRequest {
        since_unix_ms: START_MS,
        until_unix_ms: START_MS + 30 * DAY_MS,
        top: 10,
    };
    let mut summaries: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let summary = gpukilld::rpc::summary::summarize(&reader, &request).expect("summary");
            assert_eq!(summary.gpus.len(), GPUS as usize);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    drop(reader);

    // Retention at day 31 with 30-day samples: deletes one day of raw rows while a reader
    // on another connection keeps reading.
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = Arc::clone(&stop);
    let reader_path = default.path.clone();
    let reader = std::thread::spawn(move || {
        let reader = Store::open_read_only(&reader_path).expect("reader");
        let mut longest = Duration::ZERO;
        let mut reads = 0u64;
        while !reader_stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            reader
                .gpu_samples(
                    Some(3),
                    START_MS + 20 * DAY_MS,
                    START_MS + 20 * DAY_MS + 3_600_000,
                )
                .expect("read");
            longest = longest.max(started.elapsed());
            reads += 1;
        }
        (longest, reads)
    });
    let started = Instant::now();
    let pruned = store
        .prune(START_MS + 31 * DAY_MS, &Retention::default(), 1000)
        .expect("prune");
    let prune_ms = started.elapsed().as_secs_f64() * 1e3;
    stop.store(true, Ordering::Relaxed);
    let (longest_read, reads) = reader.join().expect("reader");

    println!("\n| measure (8 GPUs, store write path) | result | target |");
    println!("| --- | --- | --- |");
    println!(
        "| bytes per GPU-day, 10 s persist (30 days) | {:.0} KiB | <= 1 MiB |",
        default.bytes_per_gpu_day / 1024.0
    );
    println!(
        "| bytes per GPU-day, 1 s persist (3 days) | {:.0} KiB | - |",
        heavy.bytes_per_gpu_day / 1024.0
    );
    println!(
        "| write of one interval (8 GPU rows + 32 session upserts), p50 | {:.0} us (1 s case: {:.0} us) | - |",
        default.write_us_p50, heavy.write_us_p50
    );
    println!(
        "| writer-thread CPU for that write, p50 | {:.0} us (1 s case: {:.0} us) | - |",
        default.write_cpu_us_p50, heavy.write_cpu_us_p50
    );
    println!(
        "| one hourly rollup over 30 days of data, median of 24 | {:.1} ms | <= 50 ms |",
        rollups[rollups.len() / 2]
    );
    println!(
        "| audit --summary over 30 days (720 hours, 3840 sessions), median of 5 | {:.1} ms | <= 200 ms |",
        median(&mut summaries)
    );
    println!(
        "| rolling up all 720 hours (startup after a long outage) | {rollup_all_s:.1} s | - |"
    );
    println!(
        "| one retention pass (1 day of samples, {} rows, {} batches, {} pages vacuumed) | {prune_ms:.0} ms | - |",
        pruned.samples, pruned.batches, pruned.vacuumed_pages
    );
    println!(
        "| longest reader wait during retention ({reads} reads) | {:.1} ms | <= 100 ms |",
        longest_read.as_secs_f64() * 1e3
    );
}
