//! Health benchmark: how long after NVML delivers an Xid 79 the GPU is `critical` in a
//! published snapshot (target: one poll interval + 50 ms), at two poll intervals.
//!
//! The fake NVML delivers an Xid each time the scenario is rewritten with a new one; the daemon's
//! event thread logs the moment it received it ("reported Xid 79", microsecond timestamps).
//! A Watch stream receives every snapshot; the latency is from that log line to the arrival
//! of the first snapshot in which the GPU is critical. Between rounds root clears the GPU
//! (HealthClear) and the stream waits for it to be `ok` again. Prints a Markdown table.
//! Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench health

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};
use support::measure::median;
use support::{Daemon, DaemonOptions, full_gpu};

const ROUNDS: usize = 8;

/// Two GPUs; with `xid`, GPU 0 has an Xid 79 due `xid` ms after the fake's start (long
/// past: it is delivered at once, and a different time makes a new event).
fn scenario(xid: Option<usize>) -> Value {
    let mut gpu = full_gpu(0, json!([]));
    gpu["events"] = match xid {
        Some(at_ms) => json!([{"at_ms": at_ms, "type": "xid", "data": 79}]),
        None => json!([]),
    };
    json!({"gpus": [gpu, full_gpu(1, json!([]))]})
}

/// The times the event thread logged receiving an Xid 79, oldest first.
fn xid_times(daemon: &Daemon) -> Vec<SystemTime> {
    daemon
        .log_text()
        .lines()
        .filter(|line| line.contains("reported Xid 79"))
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|stamp| humantime::parse_rfc3339(stamp).ok())
        .collect()
}

/// Waits on `stream` for a snapshot in which GPU 0's health is `state`; when it came.
async fn until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    state: pb::HealthState,
) -> SystemTime {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a snapshot within 10 s")
            .expect("the stream")
            .expect("not ended");
        let Some(snapshot) = message.snapshot else {
            continue;
        };
        let health = snapshot.gpus.first().and_then(|gpu| gpu.health.as_ref());
        if health.is_some_and(|health| health.state == state as i32) {
            return SystemTime::now();
        }
    }
}

/// (median, max) latency in ms at `interval`.
async fn latency(interval: &'static str) -> (f64, f64) {
    let daemon = Daemon::start_with(
        &scenario(None),
        DaemonOptions {
            poll_interval: interval,
            vendor_timeout: "1s",
            ..DaemonOptions::default()
        },
    );
    let mut client = daemon.client().await;
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    until(&mut stream, pb::HealthState::Ok).await;
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        daemon.set_scenario(&scenario(Some(round)));
        let critical = until(&mut stream, pb::HealthState::Critical).await;
        let received = *xid_times(&daemon).get(round).expect("the Xid logged");
        let ms = critical
            .duration_since(received)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3;
        latencies.push(ms);
        daemon.set_scenario(&scenario(None));
        client
            .health_clear(pb::HealthClearRequest { gpu_index: 0 })
            .await
            .expect("HealthClear");
        until(&mut stream, pb::HealthState::Ok).await;
    }
    let max = latencies.iter().copied().fold(0.0, f64::max);
    (median(&mut latencies), max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "| poll interval | Xid 79 received -> critical snapshot, median of {ROUNDS} | max | target |"
    );
    println!("| --- | --- | --- | --- |");
    for (interval, ms) in [("500ms", 500.0), ("2s", 2000.0)] {
        let (median, max) = latency(interval).await;
        println!(
            "| {interval} | {median:.0} ms | {max:.0} ms | <= {:.0} ms |",
            ms + 50.0
        );
    }
}
