//! Cluster benchmark: `ClusterService.ListAll` (`cluster list`) through a real coordinator to 1, 10 and 100 real node
//! daemons (separate release gpukilld processes on loopback, each with its own fake NVML
//! scenario of 8 GPUs and 16 processes, serving TLS with bearer tokens, polling every 2 s),
//! and the coordinator's CPU and memory while a client refreshes the 100-node view every
//! 2 s. The client calls the coordinator on its Unix socket, as `gpukillctl cluster list`
//! does. Prints a Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench cluster
//!
//! `GPUKILL_BENCH_SECONDS` shortens the two CPU windows (default 60 s each).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::cluster_service_client::ClusterServiceClient;
use serde_json::{Value, json};
use support::measure::{cpu_ns, percentile, status_kib};
use support::pki::{Pki, client_token, free_port, token_file};
use support::{Daemon, DaemonOptions, MIB, Target};

const NODES: usize = 100;
const GPUS: u32 = 8;
const PROCESSES: usize = 16;
const CALLS: usize = 31;
const TOKEN: &str = "bench-coordinator-token-0123456789";

fn scenario(targets: &[Target]) -> Value {
    let gpus: Vec<Value> = (0..GPUS)
        .map(|gpu| {
            let processes: Vec<Value> = targets
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % GPUS == gpu)
                .map(|(i, target)| {
                    json!({"pid": target.pid(), "used_memory_bytes": (1024 + i as u64) * MIB,
                           "kind": "compute", "sm_util_pct": (i * 7) % 100})
                })
                .collect();
            support::full_gpu(gpu, json!(processes))
        })
        .collect();
    json!({"gpus": gpus})
}

async fn list(
    client: &mut ClusterServiceClient<tonic::transport::Channel>,
    nodes: &[String],
) -> (f64, pb::ListAllResponse) {
    let started = Instant::now();
    let response = client
        .list_all(pb::ListAllRequest {
            filter: None,
            nodes: nodes.to_vec(),
        })
        .await
        .expect("Cluster.List")
        .into_inner();
    (started.elapsed().as_secs_f64() * 1e3, response)
}

fn answered(response: &pb::ListAllResponse) -> usize {
    response
        .nodes
        .iter()
        .filter(|node| {
            node.snapshot
                .as_ref()
                .is_some_and(|s| s.gpus.len() == GPUS as usize)
        })
        .count()
}

/// The coordinator's CPU per second over `window`, refreshing the full view every 2 s
/// when `refreshing`.
async fn cpu_per_second(
    coordinator: &Daemon,
    client: &mut ClusterServiceClient<tonic::transport::Channel>,
    window: Duration,
    refreshing: bool,
) -> (f64, usize) {
    let pid = coordinator.pid();
    let before = cpu_ns(pid);
    let started = Instant::now();
    let mut refreshes = 0;
    while started.elapsed() < window {
        if refreshing {
            let (_, response) = list(client, &[]).await;
            assert_eq!(answered(&response), NODES, "every node answers");
            refreshes += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    ((cpu_ns(pid) - before) as f64 / 1e6 / seconds, refreshes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let window = Duration::from_secs(
        std::env::var("GPUKILL_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let targets: Vec<Target> = (0..PROCESSES).map(|_| Target::sleep(None)).collect();
    let scenario = scenario(&targets);
    let pki_dir = tempfile::tempdir().expect("a temp dir for the PKI");
    let pki = Pki::new(pki_dir.path(), "bench");
    let (cert, key) = pki.server("server");
    let node_tokens = token_file(&pki.dir.join("node-tokens"), &[("coord", TOKEN)]);

    eprintln!("starting {NODES} node daemons...");
    let started = Instant::now();
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let port = free_port();
        let config = format!(
            "[node]\nname = \"n{i:03}\"\n\
             [tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {node_tokens:?}\n\
             [tcp.principals]\ncoord = \"coordinator\"\n"
        );
        let daemon = Daemon::start_with(
            &scenario,
            DaemonOptions {
                config,
                poll_interval: "2s",
                vendor_timeout: "1s",
                ..DaemonOptions::default()
            },
        );
        nodes.push((format!("n{i:03}"), port, daemon));
    }
    eprintln!(
        "{NODES} nodes up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let node_rss: Vec<f64> = nodes
        .iter()
        .map(|(_, _, daemon)| status_kib(daemon.pid(), "VmRSS") as f64 / 1024.0)
        .collect();

    let static_nodes: String = nodes
        .iter()
        .map(|(name, port, _)| {
            format!("{{ name = \"{name}\", address = \"https://127.0.0.1:{port}\" }}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let coordinator_token = client_token(&pki.dir.join("coordinator.token"), TOKEN);
    let coordinator = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[node]\nname = \"coord\"\n[nvidia]\nenabled = false\n\
                 [cluster]\nrole = \"coordinator\"\nnodes = [{static_nodes}]\n\
                 token_file = {coordinator_token:?}\nca = {ca:?}\n",
                ca = pki.ca_file("bench")
            ),
            poll_interval: "2s",
            vendor_timeout: "1s",
            ..DaemonOptions::default()
        },
    );
    let mut client = ClusterServiceClient::new(support::channel(&coordinator.socket).await);
    let rss_before = status_kib(coordinator.pid(), "VmRSS");

    // The first call opens the 100 TLS connections.
    let (cold_ms, response) = list(&mut client, &[]).await;
    assert_eq!(
        answered(&response),
        NODES,
        "{:#?}",
        response.nodes.iter().find(|n| n.error.is_some())
    );
    let bytes: usize = response
        .nodes
        .iter()
        .filter_map(|node| node.snapshot.as_ref())
        .map(prost::Message::encoded_len)
        .sum();

    let mut rows = Vec::new();
    for count in [1, 10, NODES] {
        let names: Vec<String> = if count == NODES {
            Vec::new()
        } else {
            nodes
                .iter()
                .take(count)
                .map(|(name, _, _)| name.clone())
                .collect()
        };
        let mut latencies = Vec::new();
        let mut slowest_node = Vec::new();
        for _ in 0..CALLS {
            let (ms, response) = list(&mut client, &names).await;
            assert_eq!(answered(&response), count);
            latencies.push(ms);
            slowest_node.push(
                response
                    .nodes
                    .iter()
                    .map(|node| node.latency_us as f64 / 1e3)
                    .fold(0.0, f64::max),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows.push((
            count,
            percentile(&mut latencies, 50),
            percentile(&mut latencies, 99),
            percentile(&mut slowest_node, 50),
        ));
    }

    eprintln!(
        "coordinator CPU: {} s without refreshes, {} s refreshing 100 nodes every 2 s...",
        window.as_secs(),
        window.as_secs()
    );
    let (idle_cpu, _) = cpu_per_second(&coordinator, &mut client, window, false).await;
    let (busy_cpu, refreshes) = cpu_per_second(&coordinator, &mut client, window, true).await;
    let rss = status_kib(coordinator.pid(), "VmRSS");
    let hwm = status_kib(coordinator.pid(), "VmHWM");

    println!(
        "\n| measure ({NODES} real node daemons on loopback, TLS + token, {GPUS} GPUs x {PROCESSES} processes each, fake NVML) | result |"
    );
    println!("| --- | --- |");
    println!(
        "| first `Cluster.List` of {NODES} nodes (opens {NODES} TLS connections) | {cold_ms:.1} ms |"
    );
    for (count, p50, p99, slowest) in &rows {
        println!(
            "| `Cluster.List`, {count} node{}, p50 (p99) of {CALLS} | {p50:.1} ms ({p99:.1} ms); slowest node p50 {slowest:.1} ms |",
            if *count == 1 { "" } else { "s" }
        );
    }
    println!(
        "| answer size at {NODES} nodes (snapshots, protobuf) | {} KiB |",
        bytes / 1024
    );
    println!(
        "| coordinator CPU, idle ({}s) | {idle_cpu:.2} ms/s |",
        window.as_secs()
    );
    println!(
        "| coordinator CPU, {NODES}-node view every 2 s ({refreshes} refreshes in {}s) | {busy_cpu:.2} ms/s ({:.1} ms per refresh) |",
        window.as_secs(),
        (busy_cpu - idle_cpu) * 2.0
    );
    println!(
        "| coordinator RSS: before the first call, after the run (peak) | {:.1} MiB, {:.1} MiB ({:.1} MiB) |",
        rss_before as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let mut node_rss = node_rss;
    println!(
        "| node daemon RSS, median of {NODES} | {:.1} MiB |",
        percentile(&mut node_rss, 50)
    );
    drop(nodes);
}
