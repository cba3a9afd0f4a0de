//! Guard benchmark. Part 1, in process: one guard tick (`history.record` + `evaluate` +
//! `tracker.update`, what the daemon's guard task does per snapshot) with a 200-entry policy
//! (`[defaults]`, 150 `[[user]]`, 20 `[[group]]`, 8 `[[gpu]]`, 21 `[[window]]`) against 8 GPUs
//! x 64 processes of 100 users whose memory and SM utilization change every tick, after a
//! full 5-minute utilization window (150 ticks at 2 s). Part 2, through the real daemon at a
//! 1 s poll interval: the time from a process growing over its memory limit in the fake NVML
//! scenario to its SIGTERM handler running (a python3 target of another uid time-stamps the
//! signal), and to the guard's audit records. Part 1 leaves out what the guard task does
//! besides (the protection check of new offenders, recording events). Prints a Markdown
//! table. Run it with:
//!
//!     cargo build --release --workspace && cargo bench -p gpukill-tests --bench guard

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gpukilld::guard::evaluate::{UtilHistory, evaluate};
use gpukilld::guard::policy::{CompiledPolicy, LocalTime, Weekday};
use gpukilld::guard::tracker::{Decision, Tracker};
use gpukilld::procinfo::ProcessInfo;
use gpukilld::snapshot::{
    Gpu, ProcessKind, ProcessSlot, ProcessTable, Snapshot, Vendor, VendorData,
};
use serde_json::{Value, json};
use support::measure::{median, percentile};
use support::{Daemon, DaemonOptions, MIB};

const GPUS: u32 = 8;
const PROCS_PER_GPU: usize = 64;
const PROCS: usize = GPUS as usize * PROCS_PER_GPU;
const GIB: u64 = 1 << 30;
/// The default poll interval; 150 ticks fill the policy's 5-minute utilization window.
const POLL: Duration = Duration::from_secs(2);
const WARMUP_TICKS: u64 = 150;
const TIMED_TICKS: u64 = 300;
/// 2026-11-18 12:00 UTC; the local time evaluated is fixed separately (Wednesday 23:30).
const START_S: u64 = 1_795_521_600;
/// Wednesday 23:30: the night windows (22:00-06:00), the late ones (23:00-01:00) and the
/// maintenance window are active, the business-hours and weekend ones are not.
const LOCAL: LocalTime = LocalTime {
    weekday: Weekday::Wed,
    minute: 23 * 60 + 30,
};
/// The uid of the real targets in part 2 (not root: root's processes are protected).
const TARGET_UID: u32 = 4242;
const ROUNDS: usize = 15;

/// splitmix64: a deterministic spread of values without a random-number crate.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The user of process slot `slot`: each GPU hosts about 13 of the 100 users (uids 1000 to
/// 1099), about 5 processes each, neighbouring GPUs sharing one user.
fn uid_of_slot(slot: usize) -> u32 {
    let gpu = (slot / PROCS_PER_GPU) as u32;
    1000 + gpu * 25 / 2 + (slot % PROCS_PER_GPU) as u32 % 13
}

/// The GPU most of `uid`'s processes are on.
fn gpu_of_uid(uid: u32) -> u32 {
    ((uid - 1000) * 2 / 25).min(GPUS - 1)
}

/// A user written by name or by uid, alternately, as policy files do both.
fn user_ref(uid: u32) -> String {
    if uid.is_multiple_of(2) {
        format!("\"u{uid}\"")
    } else {
        format!("\"{uid}\"")
    }
}

/// 200 entries: `[defaults]`, 150 users (uids 1040 to 1189: 40 of the active users have no
/// entry and 50 entries name nobody running), 20 groups of 8 users, 8 GPUs, 21 windows.
fn policy_text() -> String {
    let mut text = String::from(
        r#"mode = "hard"
min_duration = "10s"
max_kills_per_minute = 10
protected_users = ["backup"]
protected_processes = ["^sshd$"]

[defaults]
max_memory_per_process = "4GiB"
max_duration = "24h"
max_utilization_pct = 80
utilization_window = "5m"
"#,
    );
    for k in 0..150u32 {
        let uid = 1040 + k;
        let gpu = gpu_of_uid(uid.min(1099));
        let _ = write!(
            text,
            "\n[[user]]\nname = {}\nmax_memory_per_process = \"{}GiB\"\nmax_memory_total = \"{}GiB\"\nmax_processes = {}\nmax_utilization_pct = {}\n",
            user_ref(uid),
            3 + k % 4,
            8 + k % 3,
            if k % 10 == 0 { 4 } else { 8 },
            85 + k % 10,
        );
        if k % 5 == 0 {
            text.push_str("max_duration = \"48h\"\nutilization_window = \"5m\"\n");
        }
        if k % 7 == 0 {
            let allowed: Vec<String> = (gpu.saturating_sub(1)..=(gpu + 1).min(GPUS - 1))
                .map(|g| g.to_string())
                .collect();
            let _ = writeln!(text, "allowed_gpus = [{}]", allowed.join(", "));
        }
    }
    for k in 0..20u32 {
        let members: Vec<String> = (0..8).map(|m| user_ref(1000 + 5 * k + m)).collect();
        let _ = write!(
            text,
            "\n[[group]]\nname = \"g{k}\"\nmembers = [{}]\nmax_memory_total = \"{}GiB\"\nmax_processes = 45\nmax_utilization_pct = {}\n",
            members.join(", "),
            44 + 4 * (k % 3),
            700 + 100 * (k % 4),
        );
    }
    for gpu in 0..GPUS {
        let _ = write!(
            text,
            "\n[[gpu]]\nindex = {gpu}\nmax_memory_per_process = \"6GiB\"\nreserved_memory = \"8GiB\"\n"
        );
        if gpu < 4 {
            // Every group with a member on this GPU, and two users from elsewhere: everyone
            // here is allowed, but each check walks the list.
            let on_gpu: BTreeSet<u32> = (0..PROCS)
                .filter(|slot| slot / PROCS_PER_GPU == gpu as usize)
                .map(uid_of_slot)
                .collect();
            let mut allowed: Vec<String> = (0..20u32)
                .filter(|k| (0..8).any(|m| on_gpu.contains(&(1000 + 5 * k + m))))
                .map(|k| format!("\"@g{k}\""))
                .collect();
            allowed.push("\"u1150\"".to_owned());
            allowed.push("\"1151\"".to_owned());
            let _ = writeln!(text, "allowed_users = [{}]", allowed.join(", "));
        }
        if gpu == 7 {
            let _ = writeln!(text, "blocked_users = [\"u1098\", \"1199\"]");
        }
    }
    for k in 0..20u32 {
        let group = |offset: u32| format!("\"@g{}\"", (k + offset) % 20);
        match k % 4 {
            0 => {
                let _ = write!(
                    text,
                    "\n[[window]]\nname = \"night-{k}\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nstart = \"22:00\"\nend = \"06:00\"\napplies_to = [{}, {}]\nmax_memory_per_process = \"6GiB\"\n",
                    group(0),
                    group(7)
                );
            }
            1 => {
                let _ = write!(
                    text,
                    "\n[[window]]\nname = \"day-{k}\"\nstart = \"09:00\"\nend = \"17:00\"\napplies_to = [{}, {}]\nmax_utilization_pct = 60\n",
                    group(0),
                    user_ref(1000 + 5 * k)
                );
            }
            2 => {
                let _ = write!(
                    text,
                    "\n[[window]]\nname = \"weekend-{k}\"\ndays = [\"sat\", \"sun\"]\nstart = \"00:00\"\nend = \"00:00\"\napplies_to = [{}]\nmax_memory_per_process = \"20GiB\"\n",
                    group(3)
                );
            }
            _ => {
                let _ = write!(
                    text,
                    "\n[[window]]\nname = \"late-{k}\"\nstart = \"23:00\"\nend = \"01:00\"\napplies_to = [{}, {}, {}]\nmax_processes = 7\n",
                    user_ref(1000 + 5 * k),
                    user_ref(1001 + 5 * k),
                    group(11)
                );
            }
        }
    }
    text.push_str(
        "\n[[window]]\nname = \"maintenance\"\nstart = \"23:00\"\nend = \"23:59\"\nmax_duration = \"28h\"\n",
    );
    text
}

/// One process of the simulated node.
struct Job {
    info: Arc<ProcessInfo>,
    seed: u64,
    /// Base memory in MiB.
    base_mib: u64,
    /// Runs near 100 % SM all the time.
    hog: bool,
}

fn job(slot: usize, serial: u32, started: SystemTime) -> Job {
    let uid = uid_of_slot(slot);
    let pid = 100_000 + serial;
    let seed = mix(u64::from(pid));
    Job {
        info: Arc::new(ProcessInfo {
            pid,
            start_ticks: u64::from(pid) * 100,
            start_time: started,
            uid,
            user: Arc::from(format!("u{uid}")),
            name: "python3".to_owned(),
            cmdline: format!("python3 train.py --run {pid}"),
            container: None,
            exe_name: None,
        }),
        seed,
        base_mib: 200 + seed % 1000,
        hog: seed.is_multiple_of(64),
    }
}

/// 512 processes started up to 20 hours ago (2 % of them 30 hours ago); one is replaced by a
/// new one every tick, and each one's memory and SM utilization change every tick. About 2 %
/// are "heavy" (7 GiB) at any time, for 30 s each time, and 1.6 % run near 100 % SM.
struct Node {
    jobs: Vec<Job>,
    serial: u32,
    previous: ProcessTable,
}

impl Node {
    fn new() -> Self {
        let start = UNIX_EPOCH + Duration::from_secs(START_S);
        let jobs = (0..PROCS)
            .map(|slot| {
                let seed = mix(slot as u64 ^ 0xA5A5);
                let age = if seed.is_multiple_of(50) {
                    30 * 3600
                } else {
                    seed % (20 * 3600)
                };
                job(slot, slot as u32, start - Duration::from_secs(age))
            })
            .collect();
        Node {
            jobs,
            serial: PROCS as u32,
            previous: ProcessTable::default(),
        }
    }

    fn snapshot(&mut self, tick: u64) -> Snapshot {
        let taken_at = UNIX_EPOCH + Duration::from_secs(START_S) + POLL * tick as u32;
        let churn = (tick as usize * 37) % PROCS;
        self.jobs[churn] = job(churn, self.serial, taken_at);
        self.serial += 1;
        let mut gpu_used = [512 * MIB; GPUS as usize];
        let rows: Vec<(ProcessSlot, Option<u64>, Option<u32>)> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(slot, job)| {
                let gpu = (slot / PROCS_PER_GPU) as u32;
                let wobble = mix(job.seed ^ tick);
                let heavy = mix(job.seed ^ ((tick / 15) << 32)) % 100 < 2;
                let memory = if heavy {
                    7 * GIB + (wobble % 256) * MIB
                } else {
                    (job.base_mib + wobble % 64) * MIB
                };
                let sm = if job.hog {
                    85 + (wobble % 15) as u32
                } else {
                    (job.seed % 20 + wobble % 10) as u32
                };
                gpu_used[gpu as usize] += memory;
                let slot = ProcessSlot {
                    vendor: Vendor::Nvidia,
                    gpu_index: gpu,
                    kind: ProcessKind::Compute,
                    info: Arc::clone(&job.info),
                };
                (slot, Some(memory), Some(sm))
            })
            .collect();
        let processes = ProcessTable::new(rows, &self.previous);
        self.previous = processes.clone();
        let gpus = (0..GPUS)
            .map(|index| Gpu {
                index,
                memory_used_bytes: Some(gpu_used[index as usize]),
                memory_total_bytes: Some(80 * GIB),
                ..Gpu::default()
            })
            .collect();
        Snapshot {
            host: Arc::from("node"),
            taken_at,
            sequence: tick,
            vendors: Vec::new(),
            data: vec![(
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(taken_at),
                    gpus,
                    processes,
                }),
            )],
            tick_duration: Duration::ZERO,
            poll_interval: POLL,
        }
    }
}

struct TickResult {
    parse_ms: f64,
    tick_us: Vec<f64>,
    evaluate_us: Vec<f64>,
    record_us: Vec<f64>,
    tracker_us: Vec<f64>,
    violations: Vec<f64>,
    offending: Vec<f64>,
    /// Act decisions and rate-limited ones over the timed ticks.
    acts: usize,
    rate_limited: usize,
    by_rule: BTreeMap<&'static str, usize>,
}

/// Runs the guard's per-tick work for `text` over the warm-up and the timed ticks.
fn evaluation_per_tick(text: &str) -> TickResult {
    let no_unix_groups = |_: &str| None;
    let started = Instant::now();
    let policy = CompiledPolicy::parse(text, Some("guard.toml"), &no_unix_groups)
        .unwrap_or_else(|error| panic!("the benchmark's policy: {error}"));
    let parse_ms = started.elapsed().as_secs_f64() * 1e3;
    let p = &policy.policy;
    assert_eq!(
        1 + p.users.len() + p.groups.len() + p.gpus.len() + p.windows.len(),
        200,
        "200 policy entries"
    );
    // What the daemon keeps: the longest utilization window of the policy (engine.rs,
    // `longest_window`), 5 minutes here.
    let keep = Duration::from_secs(300);
    let mut node = Node::new();
    let mut history = UtilHistory::default();
    let mut tracker = Tracker::default();
    let mut result = TickResult {
        parse_ms,
        tick_us: Vec::new(),
        evaluate_us: Vec::new(),
        record_us: Vec::new(),
        tracker_us: Vec::new(),
        violations: Vec::new(),
        offending: Vec::new(),
        acts: 0,
        rate_limited: 0,
        by_rule: BTreeMap::new(),
    };
    for tick in 0..WARMUP_TICKS + TIMED_TICKS {
        let snapshot = node.snapshot(tick);
        let started = Instant::now();
        history.record(&snapshot, keep);
        let recorded = Instant::now();
        let evaluation = evaluate(&policy, &snapshot, &history, LOCAL);
        let evaluated = Instant::now();
        let count = evaluation.violations.len();
        let offending: BTreeSet<u32> = evaluation
            .violations
            .iter()
            .flat_map(|v| v.offenders.iter().map(|o| o.info.pid))
            .collect();
        let rules: Vec<&'static str> = evaluation
            .violations
            .iter()
            .map(|v| v.rule.as_str())
            .collect();
        assert!(
            evaluation.not_evaluable.is_empty(),
            "{:?}",
            evaluation.not_evaluable
        );
        let before_tracker = Instant::now();
        let decisions = tracker.update(p, evaluation.violations, snapshot.taken_at);
        let done = Instant::now();
        if tick < WARMUP_TICKS {
            continue;
        }
        let tracker_us = (done - before_tracker).as_secs_f64() * 1e6;
        result
            .record_us
            .push((recorded - started).as_secs_f64() * 1e6);
        result
            .evaluate_us
            .push((evaluated - recorded).as_secs_f64() * 1e6);
        result.tracker_us.push(tracker_us);
        result
            .tick_us
            .push((evaluated - started).as_secs_f64() * 1e6 + tracker_us);
        result.violations.push(count as f64);
        result.offending.push(offending.len() as f64);
        for decision in &decisions {
            match decision {
                Decision::Act(_) => result.acts += 1,
                Decision::RateLimited(_) => result.rate_limited += 1,
                Decision::Warn(_) | Decision::WouldAct(_) => {}
            }
        }
        for rule in rules {
            *result.by_rule.entry(rule).or_default() += 1;
        }
    }
    result
}

/// The target: prints `ready` once its handler is installed, then on SIGTERM the
/// CLOCK_REALTIME nanosecond at which the handler ran, and exits.
const TARGET_SCRIPT: &str = r#"
import os, signal, sys, time
def on_term(signum, frame):
    stamp = time.time_ns()
    sys.stdout.write(f"{stamp}\n")
    sys.stdout.flush()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    time.sleep(3600)
"#;

/// A python3 process of another uid that writes the CLOCK_REALTIME nanosecond at which its
/// SIGTERM handler ran, then exits; killed on drop.
struct SignalTarget {
    child: Child,
    stamps: mpsc::Receiver<String>,
}

impl SignalTarget {
    fn spawn() -> SignalTarget {
        let python = "/usr/bin/python3";
        assert!(
            std::path::Path::new(python).exists(),
            "{python} is needed for the SIGTERM targets"
        );
        let mut child = Command::new(python)
            .args(["-I", "-c", TARGET_SCRIPT])
            .current_dir("/")
            .uid(TARGET_UID)
            .gid(TARGET_UID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 target");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (send, stamps) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let target = SignalTarget { child, stamps };
        let ready = target.stamps.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            ready.as_deref(),
            Ok("ready"),
            "the target did not install its handler"
        );
        target
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the SIGTERM handler ran, in ns since the epoch.
    fn sigterm_ns(&self, timeout: Duration) -> Option<i128> {
        self.stamps.recv_timeout(timeout).ok()?.parse().ok()
    }
}

impl Drop for SignalTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gpu0(pid: Option<u32>, mib: u64) -> Value {
    let processes: Vec<Value> = pid
        .map(|pid| json!({"pid": pid, "used_memory_bytes": mib * MIB}))
        .into_iter()
        .collect();
    json!({"gpus": [support::full_gpu(0, json!(processes))]})
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

struct LatencyResult {
    sigterm_ms: Vec<f64>,
    acting_ms: Vec<f64>,
    kill_ms: Vec<f64>,
}

/// Event times (ms since the epoch) of `kind` events with `outcome`, by target pid.
fn event_times(daemon: &Daemon, kind: &str, outcome: &str) -> BTreeMap<u64, i64> {
    let events = daemon.ctl_json(&[
        "events", "--type", kind, "--limit", "1000", "--output", "json",
    ]);
    events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["outcome"] == json!(outcome))
        .filter_map(|event| {
            Some((
                event["target"]["pid"].as_u64()?,
                event["time_unix_ms"].as_i64()?,
            ))
        })
        .collect()
}

fn violation_to_sigterm() -> LatencyResult {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: the targets run as another uid"
    );
    let dir = tempfile::Builder::new()
        .prefix("gpukill-guard-bench-")
        .tempdir()
        .expect("tempdir");
    let policy = dir.path().join("guard.toml");
    std::fs::write(
        &policy,
        "mode = \"hard\"\nmin_duration = \"0s\"\nmax_kills_per_minute = 1000\n[defaults]\nmax_memory_per_process = \"1GiB\"\n",
    )
    .expect("write policy");
    let daemon = Daemon::start_with(
        &gpu0(None, 0),
        DaemonOptions {
            poll_interval: "1s",
            vendor_timeout: "1s",
            env: vec![(
                "GPUKILL_GUARD_POLICY".to_owned(),
                policy.display().to_string(),
            )],
            ..DaemonOptions::default()
        },
    );
    let mut sigterm_ms = Vec::new();
    let mut rewrites = Vec::new();
    for round in 0..ROUNDS {
        let mut target = SignalTarget::spawn();
        let pid = target.pid();
        daemon.set_scenario(&gpu0(Some(pid), 100));
        daemon.wait_for_list(Duration::from_secs(10), |list| {
            list["procs"]
                .as_array()
                .is_some_and(|procs| procs.iter().any(|p| p["pid"] == json!(pid)))
        });
        // A few ticks under the limit, then the growth at a different phase of the 1 s tick
        // each round.
        std::thread::sleep(Duration::from_millis(2000 + (round as u64 * 613) % 1000));
        // Measured once the new scenario is in place (after the rename).
        daemon.set_scenario(&gpu0(Some(pid), 2048));
        let grown = now_ns();
        let stamp = target
            .sigterm_ns(Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "pid {pid} got no SIGTERM 10 s after growing over its limit; log:\n{}",
                    daemon.log_text()
                )
            });
        sigterm_ms.push((stamp - grown) as f64 / 1e6);
        rewrites.push((u64::from(pid), grown));
        let _ = target.child.wait();
        drop(target);
    }
    daemon.set_scenario(&gpu0(None, 0));
    // The kill events are written once the target has exited; give the last one a moment.
    std::thread::sleep(Duration::from_millis(500));
    let acting = event_times(&daemon, "violation", "acting");
    let kills = event_times(&daemon, "kill", "terminated");
    let since = |times: &BTreeMap<u64, i64>| -> Vec<f64> {
        rewrites
            .iter()
            .map(|(pid, grown)| {
                let at = times
                    .get(pid)
                    .unwrap_or_else(|| panic!("no event for pid {pid}: {times:?}"));
                (i128::from(*at) * 1_000_000 - grown) as f64 / 1e6
            })
            .collect()
    };
    let result = LatencyResult {
        acting_ms: since(&acting),
        kill_ms: since(&kills),
        sigterm_ms,
    };
    drop(daemon);
    result
}

fn main() {
    let started = Instant::now();
    eprintln!(
        "evaluating 200 policies x {PROCS} processes for {} ticks...",
        WARMUP_TICKS + TIMED_TICKS
    );
    let text = policy_text();
    let mut ticks = evaluation_per_tick(&text);
    eprintln!(
        "violations by rule over {TIMED_TICKS} ticks: {:?}; processes named per tick, median: {}",
        ticks.by_rule,
        median(&mut ticks.offending)
    );
    // The same with the rogue scorer's name lists emptied: what the default known-miner
    // names and patterns cost per tick.
    let mut unnamed = evaluation_per_tick(&format!(
        "{text}\n[rogue]\nknown_miners = []\nname_patterns = []\n"
    ));
    eprintln!("violation to SIGTERM through the daemon at 1 s, {ROUNDS} rounds...");
    let mut latency = violation_to_sigterm();
    eprintln!(
        "SIGTERM latencies (ms): {:?}",
        latency
            .sigterm_ms
            .iter()
            .map(|ms| ms.round())
            .collect::<Vec<_>>()
    );
    let max = |values: &[f64]| values.iter().copied().fold(f64::MIN, f64::max);
    let min = |values: &[f64]| values.iter().copied().fold(f64::MAX, f64::min);

    println!("\n| measure (guard: 200 policy entries, 8 GPUs x 64 processes) | result | target |");
    println!("| --- | --- | --- |");
    println!(
        "| guard tick (`history.record` + `evaluate` + `tracker.update`), median (p99) of {TIMED_TICKS} | {:.0} us ({:.0} us) | <= 1 ms |",
        median(&mut ticks.tick_us),
        percentile(&mut ticks.tick_us, 99)
    );
    println!(
        "| `evaluate` alone, median (p99) | {:.0} us ({:.0} us) | - |",
        median(&mut ticks.evaluate_us),
        percentile(&mut ticks.evaluate_us, 99)
    );
    println!(
        "| `evaluate` with `[rogue]` `known_miners` and `name_patterns` emptied, median (p99) | {:.0} us ({:.0} us) | - |",
        median(&mut unnamed.evaluate_us),
        percentile(&mut unnamed.evaluate_us, 99)
    );
    println!(
        "| `history.record` / `tracker.update` alone, median | {:.0} us / {:.0} us | - |",
        median(&mut ticks.record_us),
        median(&mut ticks.tracker_us)
    );
    println!(
        "| violations per tick, median (min-max); processes named in them, median | {:.0} ({:.0}-{:.0}); {:.0} of {PROCS} | 5-10 % of processes |",
        median(&mut ticks.violations),
        min(&ticks.violations),
        max(&ticks.violations),
        median(&mut ticks.offending)
    );
    println!(
        "| tracker decisions over {TIMED_TICKS} ticks (hard, min_duration 10 s, 10 kills/min): act / rate-limited | {} / {} | - |",
        ticks.acts, ticks.rate_limited
    );
    println!(
        "| parsing the 200-entry policy | {:.1} ms | - |",
        ticks.parse_ms
    );
    println!(
        "| violation to SIGTERM in the target, 1 s poll, median of {ROUNDS} (min-max) | {:.0} ms ({:.0}-{:.0}) | <= ~1 s |",
        median(&mut latency.sigterm_ms),
        min(&latency.sigterm_ms),
        max(&latency.sigterm_ms)
    );
    println!(
        "| violation to the guard's `acting` record / `kill` record, median (max) | {:.0} ms ({:.0}) / {:.0} ms ({:.0}) | - |",
        median(&mut latency.acting_ms),
        max(&latency.acting_ms),
        median(&mut latency.kill_ms),
        max(&latency.kill_ms)
    );
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
}
