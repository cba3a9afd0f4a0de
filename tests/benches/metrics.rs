//! Metrics benchmark: the Prometheus endpoint of a real release daemon with 8 GPUs x 64
//! processes (512 real `sleep` processes) on the fake NVML at the default 2 s poll interval.
//!
//! Measures `/metrics` scrape latency (from sending the request to the last byte of the
//! body, over one keep-alive connection as Prometheus scrapes, and with a new connection per
//! scrape), the exposition's size, the render alone in process, and the daemon's CPU time
//! (`/proc/PID/task/*/schedstat`, ns precision) per second over 60 s without scrapes and 60 s
//! scraped once a second. Prints a Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench metrics

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gpukilld::guard::engine::Status as GuardStatus;
use gpukilld::metrics::render::{self, StoreState};
use gpukilld::procinfo::ProcessInfo;
use gpukilld::snapshot::{
    Gpu, ProcessKind, ProcessSlot, ProcessTable, Snapshot, Vendor, VendorData, VendorState,
    VendorStatus,
};
use serde_json::{Value, json};
use support::measure::{cpu_ns, percentile};
use support::{Daemon, DaemonOptions, MIB, Target};

const GPUS: u32 = 8;
const PROCS_PER_GPU: usize = 64;
const SCRAPES: usize = 101;
const CPU_WINDOW: Duration = Duration::from_secs(60);

fn scenario(targets: &[Target]) -> Value {
    let gpus: Vec<Value> = (0..GPUS)
        .map(|gpu| {
            let processes: Vec<Value> = targets
                [gpu as usize * PROCS_PER_GPU..(gpu as usize + 1) * PROCS_PER_GPU]
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    json!({"pid": target.pid(), "used_memory_bytes": (64 + i as u64) * MIB,
                           "kind": "compute", "sm_util_pct": i % 100})
                })
                .collect();
            support::full_gpu(gpu, json!(processes))
        })
        .collect();
    json!({"gpus": gpus})
}

/// Sends one GET /metrics on `stream` and reads the response (by its Content-Length);
/// returns the body.
fn scrape(stream: &mut BufReader<TcpStream>, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    // One write: `write!` would send the request in pieces, and Nagle would hold the last
    // piece for the server's delayed ACK.
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n");
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .expect("send");
    let mut length = None;
    let mut status = String::new();
    stream.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("Content-Length")];
    stream.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("UTF-8")
}

/// A connection as Prometheus opens one (Go sets TCP_NODELAY).
fn connect(address: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(address).expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    BufReader::new(stream)
}

/// Daemon CPU per second over `CPU_WINDOW`, scraping once a second when `scraped`.
fn cpu_per_second(daemon: &Daemon, address: SocketAddr, scraped: bool) -> f64 {
    let mut stream = connect(address);
    let start_cpu = cpu_ns(daemon.pid());
    let started = Instant::now();
    let mut next = started;
    while started.elapsed() < CPU_WINDOW {
        if scraped {
            scrape(&mut stream, false);
        }
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let cpu = cpu_ns(daemon.pid()) - start_cpu;
    cpu as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// The same table in process, for the render alone.
fn in_process_snapshot() -> Snapshot {
    let now = SystemTime::now();
    let mut processes = Vec::new();
    for gpu in 0..GPUS {
        for i in 0..PROCS_PER_GPU {
            let pid = 10_000 + gpu * 100 + i as u32;
            let slot = ProcessSlot {
                vendor: Vendor::Nvidia,
                gpu_index: gpu,
                kind: ProcessKind::Compute,
                info: Arc::new(ProcessInfo {
                    pid,
                    start_ticks: 1,
                    start_time: now,
                    uid: 1000 + i as u32 % 20,
                    user: Arc::from(format!("user{}", i % 20).as_str()),
                    name: "python3".into(),
                    cmdline: "python3 train.py --epochs 100".into(),
                    container: None,
                    exe_name: None,
                }),
            };
            processes.push((slot, Some((64 + i as u64) * MIB), Some(i as u32 % 100)));
        }
    }
    let gpus = (0..GPUS)
        .map(|index| Gpu {
            index,
            vendor_index: index,
            uuid: Some(Arc::from(
                format!("GPU-00000000-0000-4000-8000-00000000000{index}").as_str(),
            )),
            name: Some(Arc::from("NVIDIA A100-SXM4-80GB")),
            pci_bus_id: Some(Arc::from(
                format!("00000000:{:02X}:00.0", index + 7).as_str(),
            )),
            memory_used_bytes: Some(1536 * MIB),
            memory_total_bytes: Some(81920 * MIB),
            utilization_gpu_pct: Some(50),
            utilization_memory_pct: Some(20),
            temperature_c: Some(41),
            power_mw: Some(250_500),
            energy_total_mj: Some(1_234_567_890),
            fan_speed_pct: Some(30),
            clock_sm_mhz: Some(1410),
            clock_mem_mhz: Some(1593),
            ecc_volatile_errors: Some(3),
            mig_enabled: Some(false),
            reset_supported: Some(true),
            error: None,
            ..Gpu::default()
        })
        .collect();
    Snapshot {
        host: Arc::from("bench"),
        taken_at: now,
        sequence: 1,
        vendors: vec![VendorStatus {
            vendor: Vendor::Nvidia,
            state: VendorState::Ok,
            driver_version: None,
            cuda_version: None,
            last_success: Some(now),
        }],
        data: vec![(
            Vendor::Nvidia,
            Arc::new(VendorData {
                taken_at: Some(now),
                gpus,
                processes: ProcessTable::new(processes, &ProcessTable::default()),
            }),
        )],
        tick_duration: Duration::from_micros(800),
        poll_interval: Duration::from_secs(2),
    }
}

fn render_alone_us() -> (f64, f64) {
    let snapshot = in_process_snapshot();
    let guard = GuardStatus::default();
    let mut times = Vec::new();
    let mut capacity = 0;
    for _ in 0..1000 {
        let started = Instant::now();
        let status = render::Status {
            now: SystemTime::now(),
            watchers: 0,
            watch_lagged: 0,
            store: StoreState::Unavailable,
            guard: &guard,
            guard_counters: None,
            connections: &[],
        };
        let text = render::render(&snapshot, &status, capacity);
        capacity = text.len();
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let p50 = percentile(&mut times, 50);
    (p50, percentile(&mut times, 99))
}

fn main() {
    let (render_p50, render_p99) = render_alone_us();

    let mut targets = Vec::new();
    for _ in 0..GPUS as usize * PROCS_PER_GPU {
        targets.push(Target::sleep(None));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let daemon = Daemon::start_with(
        &scenario(&targets),
        DaemonOptions {
            poll_interval: "2s",
            vendor_timeout: "1s",
            env: vec![("GPUKILL_METRICS_LISTEN".into(), address.to_string())],
            ..DaemonOptions::default()
        },
    );
    daemon.wait_for_list(Duration::from_secs(30), |list| {
        list["procs"].as_array().map(Vec::len) == Some(512)
    });

    eprintln!("timing {SCRAPES} scrapes...");
    let mut stream = connect(address);
    let body = scrape(&mut stream, false);
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        body.lines()
            .filter(|l| l.starts_with("gpukill_process_gpu_memory_bytes{"))
            .count()
            == 512,
        "all 512 processes exposed"
    );
    let mut keep_alive = Vec::new();
    for _ in 0..SCRAPES {
        let started = Instant::now();
        scrape(&mut stream, false);
        keep_alive.push(started.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fresh = Vec::new();
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let mut stream = connect(address);
        scrape(&mut stream, true);
        fresh.push(started.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);

    eprintln!(
        "daemon CPU: {} s without scrapes, {} s scraped every second...",
        CPU_WINDOW.as_secs(),
        CPU_WINDOW.as_secs()
    );
    let idle = cpu_per_second(&daemon, address, false);
    let scraped = cpu_per_second(&daemon, address, true);

    println!("\n| measure (8 GPUs x 64 processes, fake NVML, 2 s poll) | result |");
    println!("| --- | --- |");
    println!(
        "| exposition size | {} KiB, {series} samples |",
        body.len() / 1024
    );
    println!(
        "| `/metrics` scrape latency, keep-alive connection, p50 (p99) of {SCRAPES} | {:.2} ms ({:.2} ms) |",
        percentile(&mut keep_alive, 50),
        percentile(&mut keep_alive, 99)
    );
    println!(
        "| `/metrics` scrape latency, new connection each, p50 (p99) of {SCRAPES} | {:.2} ms ({:.2} ms) |",
        percentile(&mut fresh, 50),
        percentile(&mut fresh, 99)
    );
    println!(
        "| render alone, in process, p50 (p99) of 1000 | {render_p50:.0} us ({render_p99:.0} us) |"
    );
    println!(
        "| daemon CPU, not scraped ({} s) | {idle:.2} ms/s |",
        CPU_WINDOW.as_secs()
    );
    println!(
        "| daemon CPU, scraped every second ({} s) | {scraped:.2} ms/s (+{:.2} ms per scrape) |",
        CPU_WINDOW.as_secs(),
        scraped - idle
    );
}
