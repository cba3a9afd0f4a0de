//! Manual drains end to end: root drains a GPU of the fake NVML through gpukillctl, a real
//! other uid (nobody) cannot drain or undrain and cannot get the drained GPU, the drain is in
//! `status` (table and JSON) and in the audit trail, survives a daemon restart, and an
//! undrain hands the GPU out again, waking a `run --wait` that waited for it.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, full_gpu, other_uid, require_root, shared_gpukillctl};

/// Three idle, healthy GPUs.
fn three_gpus() -> Value {
    json!({ "gpus": (0..3).map(|index| full_gpu(index, json!([]))).collect::<Vec<_>>() })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `drained` object of GPU `index` in `status --output json`, as root.
fn drained(daemon: &Daemon, index: usize) -> Value {
    daemon.ctl_json(&["status", "--output", "json"])["gpus"][index]["drained"].clone()
}

/// The audit events of `type`, as root.
fn events_of(daemon: &Daemon, kind: &str) -> Vec<Value> {
    daemon.ctl_json(&["events", "--type", kind, "--output", "json"])["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_admin_drains_a_gpu_nobody_gets_it_until_undrained_even_across_a_restart() {
    require_root("runs gpukillctl as the user nobody");
    let nobody = other_uid();
    let scenario = three_gpus();
    let daemon = Daemon::start(&scenario);

    // Not an admin: refused (exit 4), nothing drained, the refusal audited.
    let refused = daemon.ctl_as(nobody, &["drain", "--gpu", "0", "--reason", "mine"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        stderr(&refused).contains("draining a GPU is for admins"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(drained(&daemon, 0), Value::Null);
    assert!(
        events_of(&daemon, "deny")
            .iter()
            .any(|event| event["action"] == "drain GPU 0" && event["caller_uid"] == nobody),
        "{:#?}",
        events_of(&daemon, "deny")
    );

    // Root drains GPU 0.
    let done = daemon.ctl(&["drain", "--gpu", "0", "--reason", "fan noise"]);
    assert!(done.status.success(), "{done:?}");
    assert_eq!(
        stdout(&done),
        "GPU 0 drained: reserve and run no longer hand it out (reason: fan noise)\n"
    );
    let drain = drained(&daemon, 0);
    assert_eq!(drain["by"], "root", "{drain:#}");
    assert_eq!(drain["uid"], 0);
    assert_eq!(drain["reason"], "fan noise");
    assert!(drain["since_unix_ms"].as_i64().is_some_and(|ms| ms > 0));
    assert_eq!(drained(&daemon, 1), Value::Null);
    let table = stdout(&daemon.ctl(&["status", "--wide"]));
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no GPU 0 in\n{table}"));
    assert!(
        row.contains("DRAINED by root ") && row.contains("ago: fan noise"),
        "{table}"
    );

    // Users get the other GPUs, never GPU 0; asking for it, or for all, is exit 7 naming
    // the drain.
    let granted = daemon.ctl_as(nobody, &["reserve", "--gpus", "1", "--output", "json"]);
    assert!(granted.status.success(), "{granted:?}");
    let granted: Value = serde_json::from_slice(&granted.stdout).expect("reserve JSON");
    assert_ne!(granted["gpus"][0]["gpu_index"], 0, "{granted:#}");
    for ask in [&["--gpu-ids", "0"][..], &["--gpus", "2"]] {
        let refused = daemon.ctl_as(nobody, &[&["reserve"][..], ask].concat());
        assert_eq!(refused.status.code(), Some(7), "{ask:?}: {refused:?}");
        let message = stderr(&refused);
        assert!(
            message.contains("GPU 0 is drained by root since ")
                && message.contains(
                    ": fan noise (an admin undrains it with `gpukillctl undrain --gpu 0`)"
                ),
            "{ask:?}: {message}"
        );
    }

    // The drain is in the audit trail, with the admin's uid.
    let reservation_events = events_of(&daemon, "reservation");
    let event = reservation_events
        .iter()
        .find(|event| event["action"] == "drain GPU 0")
        .unwrap_or_else(|| panic!("no drain event in {reservation_events:#?}"));
    assert_eq!(event["caller_uid"], 0, "{event:#}");
    assert_eq!(event["outcome"], "drained");
    assert_eq!(event["reason"], "fan noise");

    // Draining again changes nothing; bad requests are exit 3 and change nothing either.
    let again = daemon.ctl(&["drain", "--gpu", "0", "--reason", "other"]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        stdout(&again).starts_with("GPU 0 was already drained by root since "),
        "{}",
        stdout(&again)
    );
    let missing = daemon.ctl(&["drain", "--gpu", "9"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert!(
        stderr(&missing).contains("no GPU 9 on this node: its GPUs are 0 to 2"),
        "{}",
        stderr(&missing)
    );
    let long = "x".repeat(501);
    let too_long = daemon.ctl(&["drain", "--gpu", "1", "--reason", &long]);
    assert_eq!(too_long.status.code(), Some(3), "{too_long:?}");
    assert!(
        stderr(&too_long).contains("at most 500 bytes"),
        "{}",
        stderr(&too_long)
    );
    assert_eq!(drained(&daemon, 1), Value::Null);
    assert_eq!(drained(&daemon, 0)["reason"], "fan noise");

    // A restart keeps the drain.
    let socket = daemon.socket.clone();
    let (_, dir) = daemon.stop_keeping_dir();
    let daemon = Daemon::start_on(dir, socket, &scenario, DaemonOptions::default());
    assert_eq!(drained(&daemon, 0), drain);
    let refused = daemon.ctl_as(nobody, &["reserve", "--gpu-ids", "0"]);
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");

    // Not an admin: no undrain either.
    let refused = daemon.ctl_as(nobody, &["undrain", "--gpu", "0"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert_eq!(drained(&daemon, 0), drain);

    // nobody holds the other two GPUs; a run that waits for one is served by the undrain.
    let more = daemon.ctl_as(nobody, &["reserve", "--gpus", "1"]);
    assert!(more.status.success(), "{more:?}");
    let mut waiting = Command::new(shared_gpukillctl())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["run", "--gpus", "1", "--wait", "60s", "--", "/bin/true"])
        .uid(nobody)
        .gid(nobody)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    daemon.wait_for_json(
        &["status", "--output", "json"],
        Duration::from_secs(10),
        |status| status["queue_total"] == 1,
    );
    let undone = daemon.ctl(&["undrain", "--gpu", "0"]);
    assert!(undone.status.success(), "{undone:?}");
    assert!(
        stdout(&undone).starts_with(
            "GPU 0 undrained: reserve and run hand it out again (drained by root since "
        ),
        "{}",
        stdout(&undone)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let ran = loop {
        if let Some(status) = waiting.try_wait().expect("wait for run") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting run was not served after the undrain\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ran.success(), "{ran:?}");
    assert_eq!(drained(&daemon, 0), Value::Null);

    // Undraining again says so; the undrain is audited with the admin's uid.
    let twice = daemon.ctl(&["undrain", "--gpu", "0", "--output", "json"]);
    assert!(twice.status.success(), "{twice:?}");
    let twice: Value = serde_json::from_slice(&twice.stdout).expect("undrain JSON");
    assert_eq!(twice["was_drained"], false, "{twice:#}");
    assert_eq!(twice["gpu_index"], 0);
    let undrain = events_of(&daemon, "reservation")
        .into_iter()
        .find(|event| event["action"] == "undrain GPU 0")
        .expect("an undrain event");
    assert_eq!(undrain["caller_uid"], 0, "{undrain:#}");
    assert_eq!(undrain["outcome"], "undrained");
}
