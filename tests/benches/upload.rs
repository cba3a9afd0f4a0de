//! Upload benchmark: a node whose store holds a 30-day backlog (720 closed hours of 8 GPUs
//! and 20 users each) drains it to the project's own ingest endpoint (a second release
//! gpukilld on loopback, plain HTTP). Measures the time to roll up and queue the 720 hours
//! at startup, the drain time (first attempt to the last delivery), the ingest's stored rows
//! per second, and both daemons' CPU. Prints a Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench upload

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::json;
use support::central::{past_hour, prefill};
use support::measure::cpu_ns;
use support::pki::{client_token, free_port, token_file};
use support::{Daemon, DaemonOptions};

const HOURS: i64 = 720;
const GPUS: u32 = 8;
const USERS: u32 = 20;
const TOKEN: &str = "bench-upload-token-0123456789";
/// The node's id (`<state_dir>/node-id`), bound to its token in `[ingest.principals]`.
const NODE_ID: &str = "0123456789abcdef0123456789abcdef";

async fn summary(daemon: &Daemon) -> pb::UploadsResponse {
    support::client(&daemon.socket)
        .await
        .uploads(pb::UploadsRequest {
            status: 0,
            limit: 1,
        })
        .await
        .expect("Uploads")
        .into_inner()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ingest_port = free_port();
    let ingest_dir = tempfile::tempdir().expect("a temp dir for the ingest");
    let tokens = token_file(&ingest_dir.path().join("tokens"), &[("node", TOKEN)]);
    let ingest = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[nvidia]\nenabled = false\n[ingest]\nenabled = true\nlisten = \"127.0.0.1:{ingest_port}\"\ntokens = {tokens:?}\n\
                 [ingest.principals]\nnode = {{ role = \"node\", nodes = [\"{NODE_ID}\"] }}\n"
            ),
            ..DaemonOptions::default()
        },
    );

    eprintln!("writing {HOURS} hours x {GPUS} GPUs x {USERS} users of history...");
    let dir = tempfile::Builder::new()
        .prefix("gpukill-upload-bench-")
        .tempdir()
        .expect("a temp dir for the node");
    let hours: Vec<i64> = (1..=HOURS).rev().map(past_hour).collect();
    prefill(&dir.path().join("state"), &hours, GPUS, USERS);
    // The id the ingest binds the node's token to.
    std::fs::write(dir.path().join("state/node-id"), NODE_ID).expect("write the node id");
    let token = client_token(&dir.path().join("upload.token"), TOKEN);
    let socket = dir.path().join("gpukilld.sock");

    let started = Instant::now();
    let node = Daemon::start_on(
        dir,
        socket,
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[retention]\nsamples = \"60days\"\nsessions = \"60days\"\n\
                 [upload]\nurl = \"http://127.0.0.1:{ingest_port}/api/v1/usage\"\ntoken_file = {token:?}\n"
            ),
            poll_interval: "2s",
            vendor_timeout: "1s",
            ..DaemonOptions::default()
        },
    );
    let (node_cpu_before, ingest_cpu_before) = (cpu_ns(node.pid()), cpu_ns(ingest.pid()));
    let mut queued_at = None;
    let mut first_attempt: Option<i64> = None;
    loop {
        let answer = summary(&node).await;
        let totals = answer.summary.clone().unwrap_or_default();
        let queued = totals.pending + totals.delivered + totals.parked + totals.rejected;
        if queued_at.is_none() && queued == HOURS as u64 {
            queued_at = Some(started.elapsed());
        }
        if totals.delivered == HOURS as u64 {
            break;
        }
        assert!(
            totals.parked + totals.rejected == 0,
            "{totals:?}\n{}",
            node.log_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not drained in 5 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = started.elapsed();
    let (node_cpu, ingest_cpu) = (
        (cpu_ns(node.pid()) - node_cpu_before) as f64 / 1e9,
        (cpu_ns(ingest.pid()) - ingest_cpu_before) as f64 / 1e9,
    );
    let oldest = support::client(&node.socket)
        .await
        .upload_show(pb::UploadShowRequest {
            hour_unix_ms: hours[0],
        })
        .await
        .expect("UploadShow")
        .into_inner();
    let newest = support::client(&node.socket)
        .await
        .upload_show(pb::UploadShowRequest {
            hour_unix_ms: hours[hours.len() - 1],
        })
        .await
        .expect("UploadShow")
        .into_inner();
    first_attempt.get_or_insert(oldest.attempts[0].time_unix_ms);
    let last = newest.attempts.last().expect("the newest hour was sent");
    let first = first_attempt.expect("the oldest hour was sent");
    let drain_ms = (last.time_unix_ms + last.latency_ms as i64 - first) as f64;
    let rows = HOURS as f64 * f64::from(GPUS + GPUS * USERS);
    let payload_kib = oldest.entry.expect("the oldest hour's entry").payload_bytes as f64 / 1024.0;

    println!(
        "\n| measure ({HOURS} hours x {GPUS} GPUs x {USERS} users, node -> ingest on loopback) | result | target |"
    );
    println!("| --- | --- | --- |");
    println!(
        "| node start to {HOURS} hours rolled up and queued | {:.2} s | - |",
        queued_at.unwrap_or(done).as_secs_f64()
    );
    println!(
        "| drain: first attempt to last delivery | {:.2} s | < 30 s |",
        drain_ms / 1e3
    );
    println!(
        "| node start to all delivered | {:.2} s | - |",
        done.as_secs_f64()
    );
    println!(
        "| ingest rows stored per second ({:.0} rows) | {:.0} | - |",
        rows,
        rows / (drain_ms / 1e3)
    );
    println!("| payload per hour | {payload_kib:.1} KiB | - |");
    println!("| CPU: node, ingest (whole run) | {node_cpu:.2} s, {ingest_cpu:.2} s | - |");
}
