//! GPU health through the real daemon and gpukillctl: the AMD fixture's RAS and throttle
//! readings become states and reasons in `health` and `list --output json`, `health` events
//! are written, and `health clear` is for admins only and audited.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, fixtures, other_uid};

/// The tests run gpukillctl as another uid.
fn must_be_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the health tests switch uids and must run as root (CI does)"
    );
}

/// A daemon on the committed mixed sysfs fixture (two AMD and two Intel cards), NVIDIA off.
fn amd_and_intel() -> Daemon {
    let empty_procfs = tempfile::tempdir().expect("tempdir");
    Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            env: vec![
                (
                    "GPUKILL_SYSFS_ROOT".into(),
                    fixtures().join("sysfs/mixed").display().to_string(),
                ),
                (
                    "GPUKILL_PROCFS_ROOT".into(),
                    empty_procfs.keep().display().to_string(),
                ),
                ("GPUKILL_NVIDIA_ENABLED".into(), "false".into()),
            ],
            ..DaemonOptions::default()
        },
    )
}

fn gpu(health: &Value, index: u64) -> &Value {
    health
        .as_array()
        .and_then(|gpus| gpus.iter().find(|gpu| gpu["gpu_index"] == json!(index)))
        .unwrap_or_else(|| panic!("no GPU {index} in {health:#}"))
}

#[test]
fn amd_uncorrectable_ras_errors_are_critical_until_an_admin_clears_them() {
    must_be_root();
    let daemon = amd_and_intel();
    let health = daemon.ctl_json(&["health", "--output", "json"]);
    // card1 (MI210): umc ue=1 -> critical; its thermal throttling is a further reason.
    let mi210 = gpu(&health, 0);
    assert_eq!(mi210["vendor"], json!("amd"));
    assert_eq!(mi210["state"], json!("critical"), "{mi210:#}");
    assert_eq!(mi210["reasons"][0]["condition"], json!("ras_uncorrectable"));
    assert_eq!(
        mi210["reasons"][0]["text"],
        json!("1 uncorrectable RAS errors (umc)")
    );
    assert_eq!(mi210["reasons"][1]["condition"], json!("throttle"));
    assert_eq!(mi210["throttle"], json!(["sw_power_cap", "sw_thermal"]));
    let blocks: Vec<&str> = mi210["ras"]
        .as_array()
        .expect("ras")
        .iter()
        .filter_map(|block| block["block"].as_str())
        .collect();
    assert_eq!(blocks, ["gfx", "umc"]);
    // card2 (RX 7900 XTX): readable, nothing wrong.
    assert_eq!(gpu(&health, 1)["state"], json!("ok"));
    // The same in list's JSON.
    let list = daemon.list_json(&[]);
    assert_eq!(list["gpus"][0]["health"]["state"], json!("critical"));
    // A GPU first seen critical is in the audit trail (written in the background).
    daemon.wait_for_json(
        &["events", "--type", "health", "--output", "json"],
        Duration::from_secs(10),
        |events| {
            events["events"].as_array().is_some_and(|events| {
                events.iter().any(|event| {
                    event["outcome"] == json!("critical")
                        && event["reason"]
                            .as_str()
                            .is_some_and(|reason| reason.contains("uncorrectable RAS"))
                })
            })
        },
    );

    // Drained: reserve does not hand it out (exit 7, saying why), status says so, and the
    // healthy AMD GPU is still handed out.
    let refused = daemon.ctl_as(other_uid(), &["reserve", "--gpu-ids", "0"]);
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("GPU 0 is not handed out: its health is critical"),
        "{message}"
    );
    let status = daemon.ctl_json(&["status", "--output", "json"]);
    assert!(
        status.to_string().contains("its health is critical"),
        "{status:#}"
    );
    let granted = daemon.ctl_as(other_uid(), &["reserve", "--gpus", "1", "--output", "json"]);
    assert!(granted.status.success(), "{granted:?}");
    let granted: Value = serde_json::from_slice(&granted.stdout).expect("reserve JSON");
    assert!(
        !granted.to_string().contains("\"gpu_index\":0"),
        "{granted:#}"
    );
    let released = daemon.ctl_as(other_uid(), &["release"]);
    assert!(released.status.success(), "{released:?}");

    // Not an admin: refused (exit 4), nothing cleared, the refusal audited.
    let refused = daemon.ctl_as(other_uid(), &["health", "clear", "--gpu", "0"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let denials = daemon.ctl_json(&["events", "--type", "deny", "--output", "json"]);
    assert!(
        denials["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|event| event["action"]
                .as_str()
                .is_some_and(|action| action.starts_with("health clear (GPU 0)")))),
        "{denials:#}"
    );
    assert_eq!(
        gpu(&daemon.ctl_json(&["health", "--output", "json"]), 0)["state"],
        json!("critical")
    );

    // Root clears it: acknowledged; still throttled by heat, so warning.
    let cleared = daemon.ctl(&["health", "clear", "--gpu", "0"]);
    assert!(cleared.status.success(), "{cleared:?}");
    let text = String::from_utf8_lossy(&cleared.stdout);
    assert!(
        text.starts_with("GPU 0: health cleared (was critical)"),
        "{text}"
    );
    let after = daemon.wait_for_json(
        &["health", "--gpu", "0", "--output", "json"],
        Duration::from_secs(10),
        |health| health[0]["state"] != json!("critical"),
    );
    assert_eq!(after[0]["state"], json!("warning"), "{after:#}");
    let events = daemon.ctl_json(&["events", "--type", "health", "--output", "json"]);
    let events = events["events"].as_array().cloned().unwrap_or_default();
    let clear = events
        .iter()
        .find(|event| event["outcome"] == json!("cleared"))
        .unwrap_or_else(|| panic!("no clear event in {events:#?}"));
    assert_eq!(clear["caller_uid"], json!(0));

    // An unknown GPU is a clear error, changing nothing.
    let missing = daemon.ctl(&["health", "clear", "--gpu", "9"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
}

#[test]
fn intel_without_health_counters_reports_throttling_and_is_otherwise_ok() {
    must_be_root();
    let daemon = amd_and_intel();
    let health = daemon.ctl_json(&["health", "--output", "json"]);
    let i915 = gpu(&health, 2);
    assert_eq!(i915["vendor"], json!("intel"));
    assert_eq!(i915["throttle"], json!(["sw_power_cap"]));
    // sw_power_cap is not in warn_on_throttle: ok.
    assert_eq!(i915["state"], json!("ok"), "{i915:#}");
    assert!(i915["ecc_dbe_volatile"].is_null());
    let xe = gpu(&health, 3);
    assert_eq!(xe["throttle"], json!(["sw_thermal"]));
    assert_eq!(xe["state"], json!("warning"));
}
