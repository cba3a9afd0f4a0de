//! `gpukillctl reset` end to end against a fake `nvidia-smi` on the daemon's PATH that
//! records its arguments.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

const ALICE: u32 = 4242;
const BOB: u32 = 4343;

/// A directory holding a fake nvidia-smi that appends its arguments to `calls`.
fn fake_smi() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-smi-")
        .tempdir()
        .expect("tempdir");
    let calls = dir.path().join("calls");
    let script =
        format!("#!/bin/sh\necho \"$*\" >> {calls:?}\necho \"GPU $3 was successfully reset.\"\n");
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(&smi, script).expect("write fake nvidia-smi");
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, calls)
}

fn calls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn start(target: &Target, smi_dir: &Path) -> Daemon {
    let busy = full_gpu(
        0,
        json!([{"pid": target.pid(), "used_memory_bytes": 100 * MIB}]),
    );
    let idle = full_gpu(1, json!([]));
    let mut mig = full_gpu(2, json!([]));
    mig["mig_enabled"] = json!(true);
    let path = format!(
        "{}:{}",
        smi_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Daemon::start_with(
        &json!({"gpus": [busy, idle, mig]}),
        DaemonOptions {
            env: vec![("PATH".into(), path)],
            ..DaemonOptions::default()
        },
    )
}

fn reset_events(daemon: &Daemon) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| {
            event["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("reset"))
        })
        .collect()
}

#[test]
fn reset_is_for_admins_needs_an_idle_supported_gpu_and_passes_the_pci_id() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "switches uids: run as root (CI does)"
    );
    let (smi_dir, smi_calls) = fake_smi();
    let mut target = Target::sleep(Some(ALICE));
    let daemon = start(&target, smi_dir.path());

    // Not an admin: exit 4, nvidia-smi never runs.
    let denied = daemon.ctl_as(BOB, &["reset", "--gpu", "1"]);
    assert_eq!(
        denied.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("admin"));

    // Processes on the GPU and no --force: refused, naming the process.
    let busy = daemon.ctl(&["reset", "--gpu", "0"]);
    assert_eq!(
        busy.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let message = String::from_utf8_lossy(&busy.stderr);
    assert!(
        message.contains(&target.pid().to_string()) && message.contains("--force"),
        "{message}"
    );
    assert!(target.alive());

    // MIG enabled: unsupported, exit 5.
    let mig = daemon.ctl(&["reset", "--gpu", "2"]);
    assert_eq!(
        mig.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&mig.stderr)
    );
    assert!(String::from_utf8_lossy(&mig.stderr).contains("MIG"));
    assert!(
        calls(&smi_calls).is_empty(),
        "no refused reset ran nvidia-smi"
    );

    // An idle GPU: nvidia-smi gets its PCI bus id.
    let idle = daemon.ctl(&["reset", "--gpu", "1", "--output", "json"]);
    assert_eq!(
        idle.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&idle.stderr)
    );
    let result: Value = serde_json::from_slice(&idle.stdout).expect("json");
    assert_eq!(result["results"][0]["outcome"], json!("reset"));
    assert_eq!(
        calls(&smi_calls),
        vec!["--gpu-reset -i 00000000:08:00.0".to_string()]
    );

    // --force kills the process first, then resets.
    let forced = daemon.ctl(&["reset", "--gpu", "0", "--force", "--output", "json"]);
    assert_eq!(
        forced.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let result: Value = serde_json::from_slice(&forced.stdout).expect("json");
    assert_eq!(
        result["results"][0]["killed"][0]["pid"],
        json!(target.pid())
    );
    assert_eq!(
        result["results"][0]["killed"][0]["outcome"],
        json!("terminated")
    );
    assert!(target.exits_within(Duration::from_secs(2)));
    assert_eq!(
        calls(&smi_calls).last().map(String::as_str),
        Some("--gpu-reset -i 00000000:07:00.0")
    );

    // Every attempt is in the audit trail.
    let outcomes: Vec<(Value, Value)> = reset_events(&daemon)
        .iter()
        .map(|event| (event["type"].clone(), event["outcome"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (json!("deny"), json!("denied")),
            (json!("reset"), json!("refused")),
            (json!("reset"), json!("unsupported")),
            (json!("reset"), json!("reset")),
            (json!("kill"), json!("terminated")),
            (json!("reset"), json!("reset")),
        ]
    );
    let denied_event = &reset_events(&daemon)[0];
    assert_eq!(denied_event["caller_uid"], json!(BOB));
}

#[test]
fn a_gpu_critical_after_an_xid_is_healthy_again_once_reset() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (CI does)");
    let (smi_dir, smi_calls) = fake_smi();
    let mut gpu = full_gpu(0, json!([]));
    gpu["events"] = json!([{"at_ms": 0, "type": "xid", "data": 79}]);
    let path = format!(
        "{}:{}",
        smi_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = Daemon::start_with(
        &json!({"gpus": [gpu]}),
        DaemonOptions {
            env: vec![("PATH".into(), path)],
            ..DaemonOptions::default()
        },
    );
    daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |health| health[0]["state"] == json!("critical"),
    );
    let reset = daemon.ctl(&["reset", "--gpu", "0"]);
    assert!(reset.status.success(), "{reset:?}");
    assert_eq!(calls(&smi_calls).len(), 1);
    let after = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |health| health[0]["state"] != json!("critical"),
    );
    assert_eq!(after[0]["state"], json!("ok"), "{after:#}");
    // The Xid stays in the GPU's history; it no longer makes it critical.
    assert_eq!(after[0]["recent_xids"][0]["code"], json!(79));
}
