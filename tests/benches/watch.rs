//! Watch fan-out benchmark: daemon CPU per tick with 0, 100 and 1,000 `Watch` streams on 8
//! GPUs x 64 processes (fake NVML, 100 ms ticks), unfiltered (one conversion and encoding
//! per snapshot, shared by every stream) and with a filter that keeps everything but makes
//! each stream convert and encode its own copy (as every stream did before the sharing).
//! The streams are drained by light clients in the bench process that read each message's
//! `skipped` and step over the snapshot's bytes without decoding them.
//! Prints a Markdown table: CPU per tick, and the share of the snapshots published while it
//! was measured that the streams delivered (the rest they skipped). Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench watch

#[path = "shared/busy_node.rs"]
mod busy_node;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use busy_node::{GPUS, PROCS_PER_GPU, cpu_per_tick, scenario};
use gpukill_proto::v1 as pb;
use support::{Daemon, DaemonOptions, Target};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

const TICKS: u64 = 50;

/// What the bench's watchers read of each message: `skipped` (field 2). The snapshot (field 1)
/// is stepped over by its length, not decoded, so that the clients, which share the machine's
/// two cores with the daemon they measure, cost little next to it.
#[derive(Clone, PartialEq, prost::Message)]
struct SkippedOnly {
    #[prost(uint64, tag = "2")]
    skipped: u64,
}

/// `count` Watch streams with `filter`, `per_connection` to a connection, each drained by a
/// task; returns the tasks (abort them to close) and the counts of messages received and of
/// the snapshots they say were skipped.
async fn open_watchers(
    daemon: &Daemon,
    count: usize,
    per_connection: usize,
    filter: Option<pb::SnapshotFilter>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    let mut channel = support::channel(&daemon.socket).await;
    for n in 0..count {
        if n > 0 && n % per_connection == 0 {
            channel = support::channel(&daemon.socket).await;
        }
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let request = tonic::Request::new(pb::WatchRequest {
            filter: filter.clone(),
        });
        let mut stream = grpc
            .server_streaming(
                request,
                PathAndQuery::from_static("/gpukill.v1.GpuKillService/Watch"),
                ProstCodec::<pb::WatchRequest, SkippedOnly>::default(),
            )
            .await
            .expect("watch")
            .into_inner();
        let counts = Arc::clone(&counts);
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                counts.received.fetch_add(1, Relaxed);
                counts.skipped.fetch_add(message.skipped, Relaxed);
            }
        }));
    }
    (tasks, counts)
}

/// Messages the watchers received, and the snapshots those messages say were skipped.
#[derive(Default)]
struct Counts {
    received: AtomicU64,
    skipped: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let targets: Vec<Target> = (0..GPUS as usize * PROCS_PER_GPU)
        .map(|_| Target::sleep(None))
        .collect();
    let daemon = Daemon::start_with(
        &scenario(&targets, false),
        DaemonOptions {
            poll_interval: "100ms",
            vendor_timeout: "1s",
            // 1,000 streams over 50 connections of one uid.
            config: "[limits]\nconnections_per_uid = 128\n".to_owned(),
            ..DaemonOptions::default()
        },
    );
    let listed = daemon.list_json(&[]);
    assert_eq!(listed["procs"].as_array().map(Vec::len), Some(512));
    let idle = cpu_per_tick(&daemon, TICKS).await;
    // Keeps every process, yet is a filter: each stream converts and encodes its own.
    let everything = Some(pb::SnapshotFilter {
        process_regex: Some(".".to_owned()),
        ..Default::default()
    });
    let mut rows = Vec::new();
    for (count, per_connection, filter, label) in [
        (100, 10, None, "unfiltered (shared encoding)"),
        (
            100,
            10,
            everything.clone(),
            "filtered (one encoding per stream)",
        ),
        (1000, 20, None, "unfiltered (shared encoding)"),
    ] {
        eprintln!("{count} watchers, {label}...");
        let opening = Instant::now();
        let (tasks, counts) = open_watchers(&daemon, count, per_connection, filter).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = (counts.received.load(Relaxed), counts.skipped.load(Relaxed));
        let cpu = cpu_per_tick(&daemon, TICKS).await;
        let received = counts.received.load(Relaxed) - before.0;
        let skipped = counts.skipped.load(Relaxed) - before.1;
        for task in tasks {
            task.abort();
        }
        eprintln!("  {:.1} s", opening.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows.push((count, label, cpu, received, skipped));
    }
    println!(
        "\n| Watch streams (8 GPUs x 64 processes, 100 ms ticks) | daemon CPU per tick | above idle | per stream | snapshots delivered (skipped) | target |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| none (idle) | {idle:.2} ms | - | - | - | - |");
    for (count, label, cpu, received, skipped) in rows {
        let above = cpu - idle;
        let target = if count == 100 && label.starts_with("unfiltered") {
            "<= 4 ms"
        } else {
            "-"
        };
        let delivered = 100.0 * received as f64 / (received + skipped).max(1) as f64;
        println!(
            "| {count} {label} | {cpu:.2} ms | {above:.2} ms | {:.3} ms | {delivered:.1}% ({skipped}) | {target} |",
            above / count as f64
        );
    }
}
