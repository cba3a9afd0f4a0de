//! Watch fan-out benchmark: daemon CPU per tick with 0, 100 and 1,000 `Watch` streams on 8
//! GPUs x 64 processes (fake NVML, 100 ms ticks), unfiltered (one conversion and encoding
//! per snapshot, shared by every stream) and with a filter that keeps everything but makes
//! each stream convert and encode its own copy (as every stream did before the sharing).
//! Prints a Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench watch

#[path = "shared/busy_node.rs"]
mod busy_node;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use busy_node::{GPUS, PROCS_PER_GPU, cpu_per_tick, scenario};
use gpukill_proto::v1 as pb;
use support::{Daemon, DaemonOptions, Target};

const TICKS: u64 = 50;

/// `count` Watch streams with `filter`, `per_connection` to a connection, each drained by a
/// task; returns the tasks (abort them to close) and the messages' `skipped` total.
async fn open_watchers(
    daemon: &Daemon,
    count: usize,
    per_connection: usize,
    filter: Option<pb::SnapshotFilter>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let skipped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut client = daemon.client().await;
    for n in 0..count {
        if n > 0 && n % per_connection == 0 {
            client = daemon.client().await;
        }
        let mut stream = client
            .watch(pb::WatchRequest {
                filter: filter.clone(),
            })
            .await
            .expect("watch")
            .into_inner();
        let skipped = std::sync::Arc::clone(&skipped);
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                skipped.fetch_add(message.skipped, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    (tasks, skipped)
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
        let (tasks, skipped) = open_watchers(&daemon, count, per_connection, filter).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu = cpu_per_tick(&daemon, TICKS).await;
        for task in tasks {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows.push((
            count,
            label,
            cpu,
            skipped.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    println!(
        "\n| Watch streams (8 GPUs x 64 processes, 100 ms ticks) | daemon CPU per tick | above idle | per stream | skipped | target |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| none (idle) | {idle:.2} ms | - | - | - | - |");
    for (count, label, cpu, skipped) in rows {
        let above = cpu - idle;
        let target = if count == 100 && label.starts_with("unfiltered") {
            "<= 4 ms"
        } else {
            "-"
        };
        println!(
            "| {count} {label} | {cpu:.2} ms | {above:.2} ms | {:.3} ms | {skipped} | {target} |",
            above / count as f64
        );
    }
}
