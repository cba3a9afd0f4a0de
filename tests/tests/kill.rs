//! `gpukillctl kill` end to end: real processes, real uids, real signals, and the audit trail.
//! CI runs as root; the client and the targets run as other uids.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

/// Two unprivileged uids without passwd entries (their names are the numbers).
const ALICE: u32 = 4242;
const BOB: u32 = 4343;

fn on_gpu(targets: &[&Target]) -> Value {
    let processes: Vec<Value> = targets
        .iter()
        .map(|t| json!({"pid": t.pid(), "used_memory_bytes": 100 * MIB}))
        .collect();
    json!({"gpus": [full_gpu(0, json!(processes))]})
}

fn must_be_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the kill tests switch uids and must run as root (CI does)"
    );
}

fn kill_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn events_for(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| event["target"]["pid"] == json!(pid))
        .collect()
}

#[test]
fn owners_kill_their_own_others_are_denied_and_root_may_kill_anyone() {
    must_be_root();
    let mut alices = Target::sleep(Some(ALICE));
    let mut alices_second = Target::sleep(Some(ALICE));
    let daemon = Daemon::start(&on_gpu(&[&alices, &alices_second]));
    let pid = alices.pid().to_string();

    // Bob is not Alice and not an admin: denied, exit 4, nothing happens.
    let denied = daemon.ctl_as(BOB, &["kill", "--pid", &pid, "--output", "json"]);
    assert_eq!(
        denied.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let result = &kill_json(&denied)["results"][0];
    assert_eq!(result["outcome"], json!("denied"));
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| r.contains("4242")),
        "{result}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(alices.alive(), "a denied kill changes nothing");

    // Alice kills her own process.
    let own = daemon.ctl_as(ALICE, &["kill", "--pid", &pid, "--output", "json"]);
    assert_eq!(
        own.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_eq!(
        kill_json(&own)["results"][0]["outcome"],
        json!("terminated")
    );
    assert!(alices.exits_within(Duration::from_secs(2)));

    // Root may kill anyone's (unprotected) process.
    let second = alices_second.pid().to_string();
    let by_root = daemon.ctl(&["kill", "--pid", &second, "--output", "json"]);
    assert_eq!(
        by_root.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&by_root.stderr)
    );
    assert!(alices_second.exits_within(Duration::from_secs(2)));

    // The audit trail has the denial (Bob) and the kill (Alice), with the kernel's uids.
    let rows = events_for(&daemon, alices.pid());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[0]["type"], json!("deny"));
    assert_eq!(rows[0]["caller_uid"], json!(BOB));
    assert_eq!(rows[0]["outcome"], json!("denied"));
    assert_eq!(rows[1]["type"], json!("kill"));
    assert_eq!(rows[1]["caller_uid"], json!(ALICE));
    assert_eq!(rows[1]["outcome"], json!("terminated"));
    assert_eq!(rows[1]["target"]["uid"], json!(ALICE));
    assert_eq!(rows[1]["target"]["gpu_index"], json!(0));
    let root_rows = events_for(&daemon, alices_second.pid());
    assert_eq!(root_rows[0]["caller_uid"], json!(0));
    assert_eq!(root_rows[0]["outcome"], json!("terminated"));

    // `events --type deny` shows only the denial.
    let denials = daemon.ctl(&["events", "--type", "deny", "--output", "json"]);
    let denials: Value = serde_json::from_slice(&denials.stdout).expect("events JSON");
    let denials = denials["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(denials.len(), 1, "{denials:#?}");
    assert_eq!(denials[0]["target"]["pid"], json!(alices.pid()));
}

#[test]
fn sigterm_ignored_is_still_running_without_force_and_killed_with_it() {
    must_be_root();
    let mut stubborn = Target::stubborn(Some(ALICE));
    let daemon = Daemon::start(&on_gpu(&[&stubborn]));
    let pid = stubborn.pid().to_string();

    let soft = daemon.ctl_as(
        ALICE,
        &[
            "kill",
            "--pid",
            &pid,
            "--timeout-secs",
            "1",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        soft.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&soft.stderr)
    );
    assert_eq!(
        kill_json(&soft)["results"][0]["outcome"],
        json!("still_running")
    );
    assert!(stubborn.alive());

    let hard = daemon.ctl_as(
        ALICE,
        &[
            "kill",
            "--pid",
            &pid,
            "--timeout-secs",
            "1",
            "--force",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        hard.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hard.stderr)
    );
    assert_eq!(kill_json(&hard)["results"][0]["outcome"], json!("killed"));
    assert!(stubborn.exits_within(Duration::from_secs(2)));

    let outcomes: Vec<Value> = events_for(&daemon, stubborn.pid())
        .iter()
        .map(|event| event["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec![json!("still_running"), json!("killed")]);
}

#[test]
fn pid_1_the_daemon_and_protected_users_are_refused_even_for_root_with_force() {
    must_be_root();
    let mut protected = Target::sleep(Some(ALICE));
    let daemon = Daemon::start_with(
        &on_gpu(&[&protected]),
        DaemonOptions {
            config: format!("protected_users = [\"{ALICE}\"]\n"),
            ..DaemonOptions::default()
        },
    );
    let daemon_pid = daemon.pid().to_string();
    let protected_pid = protected.pid().to_string();
    for pid in ["1", daemon_pid.as_str(), protected_pid.as_str()] {
        let output = daemon.ctl(&["kill", "--pid", pid, "--force", "--output", "json"]);
        assert_eq!(
            output.status.code(),
            Some(4),
            "pid {pid}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result = &kill_json(&output)["results"][0];
        assert_eq!(result["outcome"], json!("protected"), "pid {pid}: {result}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(protected.alive());
    let daemon_still_answers = daemon.list_json(&[]);
    assert_eq!(daemon_still_answers["gpus"][0]["gpu_index"], json!(0));
    for pid in [1, daemon.pid(), protected.pid()] {
        let rows = events_for(&daemon, pid);
        assert_eq!(rows.len(), 1, "pid {pid}: {rows:#?}");
        assert_eq!(rows[0]["type"], json!("deny"));
        assert_eq!(rows[0]["outcome"], json!("protected"));
    }
}

#[test]
fn a_filter_without_batch_kills_nothing_and_with_batch_kills_all_in_parallel() {
    must_be_root();
    let mut targets: Vec<Target> = (0..12).map(|_| Target::stubborn(Some(ALICE))).collect();
    let refs: Vec<&Target> = targets.iter().collect();
    let daemon = Daemon::start(&on_gpu(&refs));

    let listed = daemon.ctl_as(ALICE, &["kill", "--filter", "^sh$", "--output", "json"]);
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listing = kill_json(&listed);
    assert_eq!(listing["needs_batch"], json!(true));
    assert_eq!(listing["results"].as_array().map(Vec::len), Some(12));
    assert!(
        listing["results"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["outcome"] == json!("matched")))
    );
    assert!(String::from_utf8_lossy(&listed.stderr).contains("--batch"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        targets.iter_mut().all(Target::alive),
        "listing kills nothing"
    );

    let started = Instant::now();
    let batch = daemon.ctl_as(
        ALICE,
        &[
            "kill",
            "--filter",
            "^sh$",
            "--batch",
            "--timeout-secs",
            "2",
            "--force",
            "--output",
            "json",
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(
        batch.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&batch.stderr)
    );
    let results = kill_json(&batch)["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(results.len(), 12);
    assert!(
        results.iter().all(|r| r["outcome"] == json!("killed")),
        "{results:#?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "12 stubborn targets took {elapsed:?}"
    );
    for target in &mut targets {
        assert!(target.exits_within(Duration::from_secs(2)));
        assert_eq!(events_for(&daemon, target.pid()).len(), 1);
    }
}

#[test]
fn bad_requests_are_clear_errors_that_change_nothing() {
    must_be_root();
    let mut target = Target::sleep(Some(ALICE));
    let daemon = Daemon::start(&on_gpu(&[&target]));
    let cases: [(&[&str], i32, &str); 4] = [
        (&["kill", "--filter", "sleep("], 3, "sleep("),
        (&["kill", "--gpu", "7"], 3, "GPU 7"),
        (&["kill", "--pid", "999999999"], 3, "999999999"),
        (
            &["kill", "--user", "no-such-user-here"],
            3,
            "no-such-user-here",
        ),
    ];
    for (args, code, named) in cases {
        let output = daemon.ctl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} must name {named}: {stderr}"
        );
    }
    // A process that is not on a GPU needs --force.
    let me = std::process::id().to_string();
    let not_gpu = daemon.ctl(&["kill", "--pid", &me]);
    assert_eq!(not_gpu.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&not_gpu.stderr).contains("--force"));
    assert!(target.alive());
    assert!(
        daemon.events_json().is_empty(),
        "bad requests leave no kill events"
    );
}
