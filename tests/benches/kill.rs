//! Kill benchmark through the real daemon and client: how long a batch of processes that
//! ignore SIGTERM takes with `--timeout-secs 2 --force` (the targets are signalled and waited
//! for together, so it should be one timeout plus a little), and the latency of killing one
//! well-behaved process. Prints a Markdown table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench kill

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::measure::median;
use support::{Daemon, MIB, Target, full_gpu};

fn scenario(targets: &[Target]) -> Value {
    let processes: Vec<Value> = targets
        .iter()
        .map(|t| json!({"pid": t.pid(), "used_memory_bytes": 64 * MIB}))
        .collect();
    json!({"gpus": [full_gpu(0, json!(processes))]})
}

/// Waits until the daemon lists exactly `targets`.
fn wait_listed(daemon: &Daemon, targets: &[Target]) {
    let mut wanted: Vec<u64> = targets.iter().map(|t| u64::from(t.pid())).collect();
    wanted.sort_unstable();
    daemon.wait_for_list(Duration::from_secs(20), |list| {
        let mut listed: Vec<u64> = list["procs"]
            .as_array()
            .map(|procs| procs.iter().filter_map(|p| p["pid"].as_u64()).collect())
            .unwrap_or_default();
        listed.sort_unstable();
        listed == wanted
    });
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: targets run as another uid"
    );
    const BATCH: usize = 50;
    const ROUNDS: usize = 5;
    let daemon = Daemon::start(&json!({"gpus": [full_gpu(0, json!([]))]}));

    let mut batch_seconds = Vec::new();
    for _ in 0..ROUNDS {
        let mut targets: Vec<Target> = (0..BATCH).map(|_| Target::stubborn(Some(4242))).collect();
        daemon.set_scenario(&scenario(&targets));
        wait_listed(&daemon, &targets);
        let started = Instant::now();
        let output = daemon.ctl(&[
            "kill",
            "--filter",
            "^sh$",
            "--batch",
            "--timeout-secs",
            "2",
            "--force",
            "--output",
            "json",
        ]);
        batch_seconds.push(started.elapsed().as_secs_f64());
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let results: Value = serde_json::from_slice(&output.stdout).expect("json");
        let killed = results["results"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["outcome"] == json!("killed")).count());
        assert_eq!(killed, Some(BATCH));
        for target in &mut targets {
            assert!(target.exits_within(Duration::from_secs(2)));
        }
    }

    let mut single_ms = Vec::new();
    for _ in 0..15 {
        let target = Target::sleep(Some(4242));
        daemon.set_scenario(&scenario(std::slice::from_ref(&target)));
        wait_listed(&daemon, std::slice::from_ref(&target));
        let pid = target.pid().to_string();
        let started = Instant::now();
        let output = daemon.ctl(&["kill", "--pid", &pid]);
        single_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let (min, max) = (
        batch_seconds.iter().copied().fold(f64::MAX, f64::min),
        batch_seconds.iter().copied().fold(0.0, f64::max),
    );
    println!("\n| measure (real daemon and client) | result | target |");
    println!("| --- | --- | --- |");
    println!(
        "| {BATCH} processes ignoring SIGTERM, `kill --batch --timeout-secs 2 --force`, median of {ROUNDS} (min-max) | {:.2} s ({min:.2}-{max:.2}) | about 2-3 s |",
        median(&mut batch_seconds)
    );
    println!(
        "| `kill --pid` of one process that exits on SIGTERM, wall time, median of 15 | {:.1} ms | - |",
        median(&mut single_ms)
    );
}
