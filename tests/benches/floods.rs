//! Floods benchmark: the daemon's memory and another user's latency while one hostile uid
//! floods it (issue 17's red-team floods, against the real release daemon).
//!
//! For each flood: daemon RSS before, at the flood's peak and after it ended; and, while it
//! runs, the latency of `List` from another uid (a probe process run as `nobody` that opens
//! a new connection per call, as `gpukillctl list` does) and of `/healthz`. Then the same
//! Unix-socket flood five times over, for memory that must stay flat. Prints a Markdown
//! table. Targets: RSS growth under any flood at most 16 MiB; another user's `List` at most
//! 50 ms p99; `/healthz` at most 50 ms p99 during the metrics flood. Run it as root with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench floods

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::json;
use support::flood::{Flood, PIPELINE, TLS_IDLE, UNIX_IDLE, http_get};
use support::measure::{percentile, status_kib};
use support::pki::{Pki, free_port, token_file};
use support::{Daemon, DaemonOptions, full_gpu};

/// The flooding uid.
const MALLORY: u32 = 4242;
/// The probing uid (`nobody`).
const PROBE_UID: u32 = 65534;
/// Calls the probe makes during each flood.
const PROBES: usize = 100;
/// The environment variable that turns this binary into the probe.
const PROBE_ENV: &str = "GPUKILL_FLOOD_PROBE_SOCKET";

fn main() {
    if let Ok(socket) = std::env::var(PROBE_ENV) {
        probe(Path::new(&socket));
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "run the floods bench as root: it floods as uid {MALLORY} and probes as {PROBE_UID}"
    );
    let pki = Pki::new(&std::env::temp_dir(), "floods-bench");
    let tcp_port = free_port();
    let metrics_port = free_port();
    let (cert, key) = pki.server("server");
    let tokens = token_file(
        &pki.dir.join("tokens"),
        &[("ops", "floods-bench-admin-token-0123456789")],
    );
    let config = format!(
        "[tcp]\nlisten = \"127.0.0.1:{tcp_port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {tokens:?}\n\
         [tcp.principals]\nops = \"admin\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [limits]\nhandshake_timeout = \"2s\"\nidle_timeout = \"4s\"\n"
    );
    let daemon = Daemon::start_with(
        &json!({ "gpus": [full_gpu(0, json!([])), full_gpu(1, json!([]))] }),
        DaemonOptions {
            config,
            nofile: Some(1024),
            ..DaemonOptions::default()
        },
    );
    let probe_binary = shared_copy_of_self();
    // Warm up: the first connections allocate the runtime's and TLS's buffers.
    let _ = run_probe(&probe_binary, &daemon.socket, 20);
    for _ in 0..5 {
        let _ = http_get(metrics_port, "/healthz");
    }
    std::thread::sleep(Duration::from_secs(1));

    println!(
        "| flood | RSS before MiB | RSS peak MiB | RSS after MiB | growth MiB | other user's List p50 / p99 ms | /healthz p50 / p99 ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let socket = daemon.socket.display().to_string();
    let unix = || Flood::start(UNIX_IDLE, &[socket.clone(), "1100".to_owned()], MALLORY);
    row(
        "1,100 idle Unix connections (nofile 1024)",
        &daemon,
        &probe_binary,
        metrics_port,
        unix,
    );
    row(
        "1,050 credential-less TLS connections",
        &daemon,
        &probe_binary,
        metrics_port,
        || {
            Flood::start(
                TLS_IDLE,
                &[tcp_port.to_string(), "1050".to_owned()],
                MALLORY,
            )
        },
    );
    row(
        "16 pipelining metrics clients that never read",
        &daemon,
        &probe_binary,
        metrics_port,
        || {
            Flood::start(
                PIPELINE,
                &[metrics_port.to_string(), "16".to_owned()],
                MALLORY,
            )
        },
    );
    run_queue_row(&daemon, &probe_binary, metrics_port);

    // Memory after repeated floods: it must not creep up.
    let mut after = Vec::new();
    for _ in 0..5 {
        let flood = unix();
        std::thread::sleep(Duration::from_secs(1));
        drop(flood);
        std::thread::sleep(Duration::from_secs(5));
        after.push(rss_mib(&daemon));
    }
    println!();
    println!(
        "RSS after each of 5 Unix floods (MiB): {}",
        after
            .iter()
            .map(|mib| format!("{mib:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// One flood's row: RSS and the probes' latencies while it runs.
fn row(
    name: &str,
    daemon: &Daemon,
    probe_binary: &Path,
    metrics_port: u16,
    flood: impl Fn() -> Flood,
) {
    let before = rss_mib(daemon);
    let running = flood();
    let (mut list, mut healthz, peak) = measure_during(daemon, probe_binary, metrics_port);
    drop(running);
    std::thread::sleep(Duration::from_secs(5));
    print_row(name, before, peak, rss_mib(daemon), &mut list, &mut healthz);
}

/// 100 `Run` streams from one uid with 900 KB commands while the GPUs are taken.
fn run_queue_row(daemon: &Daemon, probe_binary: &Path, metrics_port: u16) {
    let held = daemon.ctl(&["reserve", "--gpus", "2"]);
    assert!(held.status.success(), "{held:?}");
    let before = rss_mib(daemon);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let socket = daemon.socket.clone();
    let streams = runtime.block_on(async move {
        let mut streams = Vec::new();
        for _ in 0..100 {
            let mut client = support::client(&socket).await;
            let start = pb::RunRequest {
                message: Some(pb::run_request::Message::Start(pb::RunStart {
                    count: 1,
                    wait: true,
                    command: "z".repeat(900_000),
                    ..pb::RunStart::default()
                })),
            };
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            sender.send(start).await.expect("queue the start");
            let outbound = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(receiver);
            // Queued (kept) or refused at once (the per-user cap): both are what we measure.
            let answer = client.run(outbound).await;
            streams.push((sender, answer));
        }
        streams
    });
    let (mut list, mut healthz, peak) = measure_during(daemon, probe_binary, metrics_port);
    drop(streams);
    drop(runtime);
    std::thread::sleep(Duration::from_secs(5));
    print_row(
        "100 queued Run streams with 900 KB commands",
        before,
        peak,
        rss_mib(daemon),
        &mut list,
        &mut healthz,
    );
}

/// Probes `List` (as another uid) and `/healthz` while a flood runs; the peak RSS seen.
fn measure_during(
    daemon: &Daemon,
    probe_binary: &Path,
    metrics_port: u16,
) -> (Vec<f64>, Vec<f64>, f64) {
    std::thread::sleep(Duration::from_millis(500));
    let mut peak = rss_mib(daemon);
    let mut healthz = Vec::new();
    let prober = spawn_probe(probe_binary, &daemon.socket, PROBES);
    for _ in 0..PROBES {
        let (status, took) = http_get(metrics_port, "/healthz");
        assert!(status.contains("200"), "healthz: {status:?}");
        healthz.push(took.as_secs_f64() * 1000.0);
        peak = peak.max(rss_mib(daemon));
        std::thread::sleep(Duration::from_millis(10));
    }
    let list = finish_probe(prober);
    peak = peak.max(rss_mib(daemon));
    (list, healthz, peak)
}

fn print_row(
    name: &str,
    before: f64,
    peak: f64,
    after: f64,
    list: &mut [f64],
    healthz: &mut [f64],
) {
    println!(
        "| {name} | {before:.1} | {peak:.1} | {after:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
        peak - before,
        percentile(list, 50),
        percentile(list, 99),
        percentile(healthz, 50),
        percentile(healthz, 99),
    );
}

fn rss_mib(daemon: &Daemon) -> f64 {
    status_kib(daemon.pid(), "VmRSS") as f64 / 1024.0
}

/// This benchmark's binary where `nobody` can run it.
fn shared_copy_of_self() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpukill-floods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    let copy = dir.join("probe");
    std::fs::copy(std::env::current_exe().expect("current exe"), &copy).expect("copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn spawn_probe(binary: &Path, socket: &Path, calls: usize) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new(binary)
        .env(PROBE_ENV, socket)
        .env("GPUKILL_FLOOD_PROBE_CALLS", calls.to_string())
        .uid(PROBE_UID)
        .gid(PROBE_UID)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the probe")
}

fn finish_probe(child: std::process::Child) -> Vec<f64> {
    let output = child.wait_with_output().expect("probe output");
    assert!(output.status.success(), "the probe failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|ms| ms.parse().expect("a latency"))
        .collect()
}

fn run_probe(binary: &Path, socket: &Path, calls: usize) -> Vec<f64> {
    finish_probe(spawn_probe(binary, socket, calls))
}

/// The probe (run as another uid): `calls` times, a new connection and one `List`, each
/// timed; prints the milliseconds.
fn probe(socket: &Path) {
    let calls: usize = std::env::var("GPUKILL_FLOOD_PROBE_CALLS")
        .ok()
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(PROBES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for _ in 0..calls {
            let started = Instant::now();
            let mut client = support::client(socket).await;
            client
                .list(pb::ListRequest::default())
                .await
                .expect("List as another user during the flood");
            print!("{:.3} ", started.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
