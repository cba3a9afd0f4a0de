//! Importing an original gpukill audit.jsonl end to end: the good lines land in the history
//! (sessions, samples and the rolled-up hour), the bad ones are reported by line number,
//! importing again adds nothing, only admins may import, and `audit export` writes the same
//! record shape back.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Daemon, full_gpu, other_uid};

const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// One gpukill record as gpukill wrote it.
fn record(ms: i64, gpu: u32, pid: Option<u32>, memory_mb: u64, util: f64) -> Value {
    json!({
        "id": ms + i64::from(pid.unwrap_or(0)),
        "timestamp": rfc3339(ms),
        "gpu_index": gpu,
        "gpu_name": "NVIDIA A100-SXM4-80GB",
        "pid": pid,
        "user": pid.map(|_| "root"),
        "process_name": pid.map(|_| "legacy-train"),
        "memory_used_mb": memory_mb,
        "utilization_pct": util,
        "temperature_c": if pid.is_some() { 0 } else { 61 },
        "power_w": if pid.is_some() { 0.0 } else { 250.5 },
        "container": null
    })
}

#[test]
fn a_gpukill_audit_file_is_imported_once_and_bad_lines_are_named() {
    let daemon = Daemon::start(&json!({"gpus": [full_gpu(0, json!([]))]}));
    // Three hours ago, ten snapshots 2 s apart: a closed hour the import rolls up.
    let start = now_ms() - now_ms().rem_euclid(HOUR_MS) - 3 * HOUR_MS + 600_000;
    let mut lines = Vec::new();
    for step in 0..10 {
        let at = start + step * 2_000;
        lines.push(record(at, 0, None, 20_000, 40.0 + step as f64).to_string());
        lines.push(record(at, 0, Some(777_001), 1_000 + step as u64, 0.0).to_string());
        if step == 1 {
            // Line 5: cut off mid-record, as a crash during gpukill's append leaves it.
            lines.push(r#"{"id":1,"timestamp":"2024-05-"#.to_owned());
        }
    }
    // Line 22: valid JSON, but no such GPU.
    lines.push(record(start, 5000, None, 1, 1.0).to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = file.to_str().expect("utf-8");

    let output = daemon.ctl(&["audit", "import", path]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "imported 10 GPU records and 10 process records from {path}\n\
             skipped 0 records imported before and 0 older than gpukilld keeps\n\
             2 bad lines not imported:\n  line 5: not a gpukill audit record: EOF while parsing"
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("  line 22: gpu_index 5000 is out of range (0 to 1023)\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("2 of 22 lines of {path} were not imported")),
        "{stderr}"
    );

    // One session of 18 s (ten sightings 2 s apart), its peak the largest record.
    let window = [
        "--since",
        &rfc3339(start - 60_000),
        "--until",
        &rfc3339(start + 60_000),
    ];
    let audit = daemon.ctl_json(&[&["audit", "--output", "json"][..], &window[..]].concat());
    let sessions: Vec<&Value> = audit["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["pid"] == 777_001)
        .collect();
    assert_eq!(sessions.len(), 1, "{audit:#}");
    assert_eq!(sessions[0]["proc_name"], "legacy-train");
    assert_eq!(sessions[0]["uid"], 0);
    assert_eq!(sessions[0]["gpu_seconds"].as_f64(), Some(18.0), "{audit:#}");
    assert_eq!(sessions[0]["peak_memory_bytes"].as_u64(), Some(1_009 << 20));

    // The hour was rolled up at import: ten samples, utilization 40..49.
    let history = daemon.ctl_json(&[
        "history",
        "--gpu",
        "0",
        "--hours",
        "6",
        "--resolution",
        "hourly",
        "--output",
        "json",
    ]);
    assert_eq!(history["resolution"], "hourly");
    let hour = start - start.rem_euclid(HOUR_MS);
    let row = history["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .find(|row| row["time_unix_ms"] == hour)
        .unwrap_or_else(|| panic!("no hourly row at {hour}: {history:#}"))
        .clone();
    assert_eq!(row["samples"], 10, "{row:#}");
    assert_eq!(row["util_mean"].as_f64(), Some(44.5), "{row:#}");
    assert_eq!(row["util_max"], 49, "{row:#}");

    // Again: nothing new, every good line a duplicate.
    let again = daemon.ctl(&["audit", "import", path]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.starts_with(&format!(
            "imported 0 GPU records and 0 process records from {path}\n\
             skipped 20 records imported before"
        )),
        "{stdout}"
    );
    let audit_again = daemon.ctl_json(&[&["audit", "--output", "json"][..], &window[..]].concat());
    assert_eq!(audit_again, audit);

    // Export writes gpukill's shape back: the ten GPU records and the session.
    let export = daemon.ctl(&[&["audit", "export", "--format", "jsonl"][..], &window[..]].concat());
    assert!(export.status.success(), "{export:?}");
    let exported: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let gpu_records = exported.iter().filter(|r| r["pid"].is_null()).count();
    assert_eq!(gpu_records, 10, "{exported:#?}");
    let process = exported
        .iter()
        .find(|r| r["pid"] == 777_001)
        .expect("the session's record");
    assert_eq!(process["timestamp"], rfc3339(start));
    assert_eq!(process["user"], "root");
    assert_eq!(process["memory_used_mb"], 1_009);
    assert_eq!(exported[0]["temperature_c"], 61);
    assert_eq!(exported[0]["power_w"].as_f64(), Some(250.5));

    // Only admins import: another user is refused (exit 4), and nothing changes.
    let denied = daemon.ctl_as(other_uid(), &["audit", "import", path]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("importing usage history is for admins"),
        "{denied:?}"
    );
}
