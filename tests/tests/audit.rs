//! Usage history end to end: the sessions and GPU samples the daemon persists are what
//! `gpukillctl audit` and `gpukillctl history` show.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

#[test]
fn audit_and_history_show_what_the_daemon_persisted() {
    let target = Target::sleep(None);
    let pid = u64::from(target.pid());
    let daemon = Daemon::start_with(
        &json!({"gpus": [full_gpu(0, json!([{"pid": target.pid(), "used_memory_bytes": 100 * MIB}]))]}),
        DaemonOptions {
            env: vec![("GPUKILL_PERSIST_INTERVAL".into(), "1s".into())],
            ..DaemonOptions::default()
        },
    );
    std::thread::sleep(Duration::from_secs(3));

    let ours = |audit: &Value| -> Option<Value> {
        audit["sessions"]
            .as_array()?
            .iter()
            .find(|session| session["pid"].as_u64() == Some(pid))
            .cloned()
    };
    let audit = daemon.wait_for_json(
        &["audit", "--hours", "1", "--output", "json"],
        Duration::from_secs(5),
        |audit| ours(audit).is_some_and(|session| session["gpu_seconds"].as_f64() > Some(0.0)),
    );
    let session = ours(&audit).expect("the target's session");
    assert_eq!(session["gpu_index"], 0, "{session:#}");
    assert_eq!(session["peak_memory_bytes"], 100 * MIB, "{session:#}");
    assert!(
        session["memory_gib_hours"].as_f64() > Some(0.0),
        "{session:#}"
    );

    let user = session["user"].as_str().expect("user").to_owned();
    let by_user = daemon.ctl_json(&["audit", "--hours", "1", "--user", &user, "--output", "json"]);
    assert!(ours(&by_user).is_some(), "{by_user:#}");
    let nobody = daemon.ctl_json(&[
        "audit",
        "--hours",
        "1",
        "--user",
        "nobody-like-filter",
        "--output",
        "json",
    ]);
    assert_eq!(nobody, json!({"sessions": []}));

    let history = daemon.wait_for_json(
        &["history", "--gpu", "0", "--hours", "1", "--output", "json"],
        Duration::from_secs(5),
        |history| history["samples"].as_array().is_some_and(|s| !s.is_empty()),
    );
    let samples = history["samples"].as_array().expect("samples");
    for sample in samples {
        assert_eq!(sample["gpu_index"], 0, "{sample:#}");
        assert_eq!(sample["util_mean"].as_f64(), Some(50.0), "{sample:#}");
    }

    // The summary ranks the target's user, and spreads GPU time over 24 UTC hours.
    let summary = daemon.ctl_json(&["audit", "--summary", "--hours", "1", "--output", "json"]);
    let top = &summary["top_users"][0];
    assert_eq!(top["uid"], json!(target.uid), "{summary:#}");
    assert!(
        top["gpu_hours"].as_f64().is_some_and(|h| h > 0.0),
        "{summary:#}"
    );
    let hours = summary["hour_of_day_gpu_hours"]
        .as_array()
        .expect("24 hours");
    assert_eq!(hours.len(), 24);
    let spread: f64 = hours.iter().filter_map(Value::as_f64).sum();
    assert!((spread - top["gpu_hours"].as_f64().unwrap_or_default()).abs() < 1e-9);
    assert_eq!(
        summary["gpus"][0]["util_mean"].as_f64(),
        Some(50.0),
        "{summary:#}"
    );

    let bad = daemon.ctl(&["audit", "--process", "py("]);
    assert_eq!(bad.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("invalid process regex \"py(\""), "{stderr}");

    assert!(daemon.stop().success());
}
