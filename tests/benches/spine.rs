//! Spine benchmark: 8 GPUs x 64 processes on the fake NVML, through the real daemon.
//!
//! Measures daemon CPU time per tick, RSS with a full one-hour ring (1,800 snapshots, the
//! default for a 2 s poll interval; filled at 100 ms here so it takes 3 minutes, not an
//! hour), `gpukillctl list` wall time, and 100 concurrent `Watch` clients. Prints a
//! Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench spine

#[path = "shared/busy_node.rs"]
mod busy_node;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use busy_node::{GPUS, PROCS_PER_GPU, cpu_per_tick, health, scenario};
use gpukill_proto::v1 as pb;
use support::measure::{median, status_kib};
use support::{Daemon, DaemonOptions, Target};

const RING: usize = 1800;

struct RingResult {
    cpu_ms_per_tick: f64,
    tick_p50_us: u64,
    rss_mib: f64,
    hwm_mib: f64,
    /// The daemon's own memory (heap, stacks); the rest of the RSS is file pages (its code,
    /// shared libraries), shared with the page cache.
    anon_mib: f64,
}

async fn fill_ring(daemon: &Daemon) -> RingResult {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_ms_per_tick = cpu_per_tick(daemon, 300).await;
    loop {
        let health = health(daemon).await;
        if health.ring_len as usize >= RING {
            return RingResult {
                cpu_ms_per_tick,
                tick_p50_us: health.tick_duration_p50_us,
                rss_mib: status_kib(daemon.pid(), "VmRSS") as f64 / 1024.0,
                hwm_mib: status_kib(daemon.pid(), "VmHWM") as f64 / 1024.0,
                anon_mib: status_kib(daemon.pid(), "RssAnon") as f64 / 1024.0,
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ctl_wall_ms(daemon: &Daemon, args: &[&str], runs: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(support::gpukillctl())
                .arg("--socket")
                .arg(&daemon.socket)
                .args(args)
                .stdout(Stdio::null())
                .status()
                .expect("gpukillctl");
            assert!(status.success());
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut targets = Vec::new();
    for _ in 0..GPUS as usize * PROCS_PER_GPU {
        targets.push(Target::sleep(None));
    }
    let options = || DaemonOptions {
        poll_interval: "100ms",
        vendor_timeout: "1s",
        ring_capacity: Some(RING),
        // The 100 Watch clients below are more than one uid's default 32 connections.
        config: "[limits]\nconnections_per_uid = 128\n".to_owned(),
        ..DaemonOptions::default()
    };
    eprintln!("filling two 1,800-snapshot rings at 100 ms (about 3 minutes)...");
    let static_daemon = Daemon::start_with(&scenario(&targets, false), options());
    let changing_daemon = Daemon::start_with(&scenario(&targets, true), options());
    let (static_ring, changing_ring) =
        tokio::join!(fill_ring(&static_daemon), fill_ring(&changing_daemon));
    let sample = static_daemon.list_json(&[]);
    assert_eq!(
        sample["procs"].as_array().map(Vec::len),
        Some(512),
        "all 512 processes listed"
    );
    drop(changing_daemon);

    eprintln!("timing gpukillctl list...");
    let list_table_ms = ctl_wall_ms(&static_daemon, &["list"], 41);
    let list_details_ms = ctl_wall_ms(&static_daemon, &["list", "--details"], 41);
    let list_json_ms = ctl_wall_ms(&static_daemon, &["list", "--output", "json"], 41);

    eprintln!("opening 100 watchers...");
    let lagged_before = health(&static_daemon).await.watch_lagged_total;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut client = static_daemon.client().await;
        let mut stream = client
            .watch(pb::WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut received = 0u64;
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                    Ok(Ok(Some(pb::WatchResponse {
                        snapshot: Some(snapshot),
                        ..
                    }))) => {
                        received += 1;
                        let now_ms = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0);
                        latencies.push((now_ms - snapshot.timestamp_unix_ms) as f64);
                    }
                    _ => break,
                }
            }
            (received, latencies)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watch_cpu = cpu_per_tick(&static_daemon, 50).await;
    let mut received = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (count, mut lat) = task.await.expect("watcher");
        received.push(count as f64);
        latencies.append(&mut lat);
    }
    let lagged = health(&static_daemon).await.watch_lagged_total - lagged_before;
    let idle_cpu = cpu_per_tick(&static_daemon, 50).await;

    println!("\n| measure (8 GPUs x 64 processes, fake NVML) | result | target |");
    println!("| --- | --- | --- |");
    println!(
        "| daemon CPU per tick, static process table | {:.2} ms | <= 2 ms |",
        static_ring.cpu_ms_per_tick
    );
    println!(
        "| daemon CPU per tick, every process's memory and SM% changing each tick | {:.2} ms | <= 2 ms |",
        changing_ring.cpu_ms_per_tick
    );
    println!(
        "| tick wall time p50 (static / all changing) | {} us / {} us | - |",
        static_ring.tick_p50_us, changing_ring.tick_p50_us
    );
    println!(
        "| RSS with a full 1,800-snapshot ring, static process table (peak) | {:.1} MiB ({:.1}) | <= 25 MiB |",
        static_ring.rss_mib, static_ring.hwm_mib
    );
    println!(
        "| RSS with a full 1,800-snapshot ring, all changing (peak) | {:.1} MiB ({:.1}) | <= 25 MiB |",
        changing_ring.rss_mib, changing_ring.hwm_mib
    );
    println!(
        "| of which the daemon's own (anonymous) memory, static / all changing | {:.1} MiB / {:.1} MiB | - |",
        static_ring.anon_mib, changing_ring.anon_mib
    );
    println!("| `gpukillctl list` wall, median of 41 | {list_table_ms:.1} ms | <= 10 ms |");
    println!("| `gpukillctl list --details` wall, median of 41 | {list_details_ms:.1} ms | - |");
    println!("| `gpukillctl list --output json` wall, median of 41 | {list_json_ms:.1} ms | - |");
    println!(
        "| 100 Watch clients: daemon CPU per tick (idle: {idle_cpu:.2} ms) | {watch_cpu:.2} ms | - |"
    );
    println!(
        "| 100 Watch clients: snapshots per client in 10 s at 100 ms (median) | {:.0} | ~100 |",
        median(&mut received)
    );
    println!(
        "| 100 Watch clients: tick-to-client latency p50 | {:.0} ms | - |",
        median(&mut latencies)
    );
    println!("| 100 Watch clients: snapshots skipped (lagged) | {lagged} | 0 |");
}
