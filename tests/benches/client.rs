//! Client start-up benchmark: how much a cold `gpukillctl list` costs over gpukillctl's own
//! start-up floor, `gpukillctl --version` (which parses the command line and exits), and
//! `gpukillctl version` (one small RPC: what connecting to the daemon costs by itself).
//!
//! One daemon with 8 GPUs x 64 processes on the fake NVML (as the spine benchmark); each
//! command is run as a new process, the runs of the commands interleaved (so that a busy
//! moment of the machine hits them alike), from spawn to exit. Prints a Markdown table of
//! medians and the ratio to `--version`. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench client

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::measure::{median, percentile};
use support::{Daemon, DaemonOptions, MIB, Target};

const GPUS: usize = 8;
const PROCS_PER_GPU: usize = 64;
/// Runs of each command.
const RUNS: usize = 201;

fn scenario(targets: &[Target]) -> Value {
    let gpus: Vec<Value> = (0..GPUS)
        .map(|gpu| {
            let processes: Vec<Value> = targets[gpu * PROCS_PER_GPU..(gpu + 1) * PROCS_PER_GPU]
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    json!({"pid": target.pid(), "used_memory_bytes": (64 + i as u64) * MIB,
                           "kind": "compute", "sm_util_pct": i % 100})
                })
                .collect();
            support::full_gpu(gpu as u32, json!(processes))
        })
        .collect();
    json!({ "gpus": gpus })
}

/// One run of gpukillctl with `args` (after `--socket`, unless `args` is `--version`), from
/// spawn to exit, in milliseconds.
fn once(daemon: &Daemon, args: &[&str]) -> f64 {
    let mut command = Command::new(support::gpukillctl());
    if args != ["--version"] {
        command.arg("--socket").arg(&daemon.socket);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let status = command.status().expect("gpukillctl");
    let elapsed = started.elapsed();
    assert!(status.success(), "gpukillctl {args:?}: {status}");
    elapsed.as_secs_f64() * 1e3
}

fn main() {
    let targets: Vec<Target> = (0..GPUS * PROCS_PER_GPU)
        .map(|_| Target::sleep(None))
        .collect();
    let daemon = Daemon::start_with(
        &scenario(&targets),
        DaemonOptions {
            poll_interval: "2s",
            vendor_timeout: "1s",
            ..DaemonOptions::default()
        },
    );
    daemon.wait_for_list(Duration::from_secs(20), |list| {
        list["procs"]
            .as_array()
            .is_some_and(|procs| procs.len() == GPUS * PROCS_PER_GPU)
    });

    let commands: [&[&str]; 5] = [
        &["--version"],
        &["version"],
        &["list"],
        &["list", "--details"],
        &["list", "--output", "json"],
    ];
    // Warm the page cache and the daemon's first answers.
    for args in commands {
        for _ in 0..5 {
            once(&daemon, args);
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(RUNS); commands.len()];
    for _ in 0..RUNS {
        for (at, args) in commands.iter().enumerate() {
            times[at].push(once(&daemon, args));
        }
    }
    let floor = median(&mut times[0].clone());

    println!(
        "\n| command (8 GPUs x 64 processes, fake NVML), {RUNS} runs each | median | p90 | ratio to --version | target |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (at, args) in commands.iter().enumerate() {
        let mut runs = times[at].clone();
        let mid = median(&mut runs);
        let p90 = percentile(&mut runs, 90);
        let target = match *args {
            ["--version"] => "the floor",
            ["list"] => "<= 1.3x",
            _ => "-",
        };
        println!(
            "| `gpukillctl {}` | {mid:.2} ms | {p90:.2} ms | {:.2}x | {target} |",
            args.join(" "),
            mid / floor
        );
    }
}
