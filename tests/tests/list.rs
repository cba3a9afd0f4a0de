//! `gpukillctl list` against a real daemon on the fake NVML: what the scenario says, with
//! users from /proc and null for what the device does not support.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Daemon, MIB, Target, full_gpu, other_uid, user_name};

fn scenario(mine: &Target, theirs: &Target, both: &Target) -> Value {
    json!({
        "driver_version": "550.54.15",
        "gpus": [
            full_gpu(0, json!([
                {"pid": mine.pid(), "used_memory_bytes": 1024 * MIB, "kind": "compute", "sm_util_pct": 37},
                {"pid": theirs.pid(), "used_memory_bytes": 512 * MIB, "kind": "compute", "sm_util_pct": 5},
                // A PID that does not exist: dropped cleanly, as a process that just exited.
                {"pid": 999_999_999u32, "used_memory_bytes": 4 * MIB, "kind": "compute"},
            ])),
            {
                "uuid": "GPU-00000000-0000-4000-8000-000000000001",
                "name": "NVIDIA GeForce RTX 3090",
                "pci_bus_id": "00000000:41:00.0",
                "memory_total_bytes": 24576 * MIB,
                "memory_used_bytes": 300 * MIB,
                "utilization_gpu_pct": 3,
                "utilization_memory_pct": 1,
                "clock_sm_mhz": 210,
                "clock_mem_mhz": 405,
                "processes": [
                    {"pid": both.pid(), "used_memory_bytes": null, "kind": "both"}
                ]
            }
        ]
    })
}

/// A daemon whose scenario puts three real processes (one of another user) on two GPUs,
/// once all three are listed.
fn start_with_three_targets() -> (Daemon, [Target; 3]) {
    let targets = [
        Target::sleep(None),
        Target::sleep(Some(other_uid())),
        Target::sleep(None),
    ];
    let daemon = Daemon::start(&scenario(&targets[0], &targets[1], &targets[2]));
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"]
            .as_array()
            .is_some_and(|procs| procs.len() == 3)
    });
    (daemon, targets)
}

fn start_time_is_recent(proc_: &Value) {
    let text = proc_["start_time"].as_str().expect("start_time string");
    let start = humantime::parse_rfc3339_weak(text).expect("RFC 3339 start_time");
    let now = SystemTime::now();
    let age = now.duration_since(start).unwrap_or_default();
    assert!(
        age < Duration::from_secs(120),
        "start_time {text} is not recent"
    );
    assert!(start > UNIX_EPOCH);
}

#[test]
fn json_equals_the_scenario_with_users_from_proc_and_null_for_unsupported() {
    let (daemon, [mine, theirs, both]) = start_with_three_targets();
    let list = daemon.list_json(&[]);

    assert_eq!(list["stale"], json!(false));
    assert!(list["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(list["ts"].as_str().is_some());
    assert_eq!(list["vendors"][0]["vendor"], json!("nvidia"));
    assert_eq!(list["vendors"][0]["state"], json!("ok"));
    assert_eq!(list["vendors"][0]["driver_version"], json!("550.54.15"));
    // The fake NVML's default CUDA driver version, 12040, as nvidia-smi shows it.
    assert_eq!(list["vendors"][0]["cuda_version"], json!("12.4"));

    let gpus = list["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2);
    let gpu0 = &gpus[0];
    let expected0 = json!({
        "gpu_index": 0, "vendor": "nvidia", "name": "NVIDIA A100-SXM4-80GB",
        "uuid": "GPU-00000000-0000-4000-8000-000000000000", "pci_bus_id": "00000000:07:00.0",
        "mem_used_mb": 1536, "mem_total_mb": 81920, "util_pct": 50, "mem_util_pct": 20,
        "temp_c": 41, "power_w": 250.5, "fan_pct": 30, "sm_clock_mhz": 1410, "mem_clock_mhz": 1593,
        "ecc_volatile": 3, "mig_enabled": false, "reset_supported": true, "error": null, "pids": 2,
    });
    for (key, value) in expected0.as_object().expect("object") {
        assert_eq!(&gpu0[key], value, "gpus[0].{key}");
    }
    assert_eq!(gpu0["top_proc"]["pid"], json!(mine.pid()));
    assert_eq!(gpu0["top_proc"]["used_mem_mb"], json!(1024));

    // GPU 1 does not support temperature, power, fan, ECC or MIG: null, never 0.
    let gpu1 = &gpus[1];
    for key in [
        "temp_c",
        "power_w",
        "fan_pct",
        "ecc_volatile",
        "mig_enabled",
        "reset_supported",
    ] {
        assert_eq!(
            gpu1[key],
            Value::Null,
            "gpus[1].{key} must be null: {gpu1:#}"
        );
    }
    assert_eq!(gpu1["mem_used_mb"], json!(300));
    assert_eq!(gpu1["util_pct"], json!(3));
    assert_eq!(gpu1["pids"], json!(1));
    assert_eq!(gpu1["error"], Value::Null);

    let procs = list["procs"].as_array().expect("procs");
    let find = |pid: u32| {
        procs
            .iter()
            .find(|p| p["pid"] == json!(pid))
            .unwrap_or_else(|| panic!("pid {pid} missing from {procs:#?}"))
    };
    let mine_json = find(mine.pid());
    assert_eq!(mine_json["gpu_index"], json!(0));
    assert_eq!(mine_json["user"], json!(user_name(mine.uid)));
    assert_eq!(mine_json["uid"], json!(mine.uid));
    assert_eq!(mine_json["proc_name"], json!("sleep"));
    assert_eq!(mine_json["cmdline"], json!("/bin/sleep 600"));
    assert_eq!(mine_json["used_mem_mb"], json!(1024));
    assert_eq!(mine_json["sm_util_pct"], json!(37));
    assert_eq!(mine_json["kind"], json!("compute"));
    assert_eq!(mine_json["container"], Value::Null);
    start_time_is_recent(mine_json);

    let theirs_json = find(theirs.pid());
    assert_eq!(theirs_json["user"], json!(user_name(theirs.uid)));
    assert_eq!(theirs_json["used_mem_mb"], json!(512));

    let both_json = find(both.pid());
    assert_eq!(both_json["gpu_index"], json!(1));
    assert_eq!(both_json["kind"], json!("compute+graphics"));
    assert_eq!(both_json["used_mem_mb"], Value::Null);
    assert_eq!(both_json["sm_util_pct"], Value::Null);
}

#[test]
fn table_shows_dashes_for_absent_values_and_the_process_table() {
    let (daemon, [mine, theirs, _both]) = start_with_three_targets();
    let output = daemon.ctl(&["list", "--details"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    // Not a terminal: every column whole, with units; the header names the drivers.
    let header = table.lines().next().expect("header line");
    assert!(
        header.ends_with("  NVIDIA driver 550.54.15  CUDA 12.4"),
        "{header}"
    );
    assert!(header.contains("  sampled "), "{header}");
    for header in [
        "GPU", "NAME", "MEMORY", "UTIL", "TEMP", "POWER", "ECC", "HEALTH", "PIDS", "TOP_PROC",
    ] {
        assert!(table.contains(header), "missing column {header}:\n{table}");
    }
    for header in ["PID", "USER", "PROC", "START", "CONTAINER", "COMMAND"] {
        assert!(
            table.contains(header),
            "missing process column {header}:\n{table}"
        );
    }
    assert!(table.contains("1536 / 81920 MiB"), "{table}");
    assert!(table.contains("1024 MiB"), "{table}");
    assert!(table.contains("251 W"), "{table}");
    assert!(table.contains("41°C"), "{table}");
    assert!(table.contains("50%"), "{table}");
    assert!(table.contains("/bin/sleep 600"), "{table}");
    assert!(table.contains(&format!("sleep:{}", mine.pid())), "{table}");
    let gpu1_row = table
        .lines()
        .find(|line| line.contains("RTX 3090"))
        .expect("GPU 1 row");
    assert!(
        gpu1_row.contains(" - "),
        "absent values must render as '-': {gpu1_row}"
    );
    // HEALTH: the A100 reports its ECC counters and nothing is wrong: ok; the RTX 3090
    // reports nothing about its health: unknown, shown as '-'.
    let cells = |line: &str| -> Vec<String> {
        line.split('|').map(|cell| cell.trim().to_owned()).collect()
    };
    let column = cells(table.lines().nth(1).expect("GPU table header"))
        .iter()
        .position(|cell| cell == "HEALTH")
        .expect("HEALTH column");
    let gpu0_row = table
        .lines()
        .find(|line| line.contains("A100"))
        .expect("GPU 0 row");
    assert_eq!(cells(gpu0_row)[column], "ok", "{table}");
    assert_eq!(cells(gpu1_row)[column], "-", "{table}");
    assert!(table.contains(&theirs.pid().to_string()), "{table}");
}

/// gpukillctl's standard output of `args`, failing with its error.
fn ctl_text(daemon: &Daemon, args: &[&str]) -> String {
    let output = daemon.ctl(args);
    assert!(
        output.status.success(),
        "gpukillctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `text` without its first line (the header: the sample's time and age change per tick).
fn without_header(text: &str) -> &str {
    text.split_once('\n').map_or("", |(_, rest)| rest)
}

#[test]
fn the_gpu_table_from_summaries_is_the_gpu_table_of_the_full_list() {
    let (daemon, [mine, theirs, both]) = start_with_three_targets();
    let theirs_name = user_name(theirs.uid);
    let filters: [&[&str]; 5] = [
        &[],
        &["--user", &theirs_name],
        &["--filter", "^nothing matches$"],
        &["--vendor", "amd"],
        &["--wide"],
    ];
    for filter in filters {
        // `list` asks for summaries; `--details` for the full list, whose GPU table is
        // everything before the blank line that starts the process table.
        let summarized = ctl_text(&daemon, &[&["list"], filter].concat());
        let full = ctl_text(&daemon, &[&["list", "--details"], filter].concat());
        let (gpus, _processes) = full.split_once("\n\n").expect("a process table");
        assert_eq!(
            without_header(&summarized),
            without_header(&format!("{gpus}\n")),
            "{filter:?}"
        );
    }
    let table = ctl_text(&daemon, &["list"]);
    // GPU 0: mine (1024 MiB) on top of theirs; GPU 1: one process of unknown memory.
    assert!(
        table.contains(&format!("| 2    | sleep:{}", mine.pid())),
        "{table}"
    );
    assert!(
        table.contains(&format!("| 1    | sleep:{}", both.pid())),
        "{table}"
    );

    // On the wire: no process list, a summary per GPU.
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            daemon
                .client()
                .await
                .list(gpukill_proto::v1::ListRequest {
                    filter: None,
                    process_view: gpukill_proto::v1::ProcessView::Summary.into(),
                })
                .await
                .expect("List")
                .into_inner()
                .snapshot
                .expect("a snapshot")
        });
    assert_eq!(answer.processes, []);
    let summaries: Vec<(u32, Option<u64>, Option<u32>)> = answer
        .gpus
        .iter()
        .map(|gpu| {
            let summary = gpu.process_summary.as_ref().expect("a summary");
            (
                summary.process_count,
                summary.used_memory_bytes,
                summary.top_process.as_ref().map(|top| top.pid),
            )
        })
        .collect();
    assert_eq!(
        summaries,
        [
            (2, Some(1536 * MIB), Some(mine.pid())),
            (1, None, Some(both.pid())),
        ]
    );
}

#[test]
fn filter_and_vendor_select_processes() {
    let (daemon, _targets) = start_with_three_targets();
    let none = daemon.list_json(&["--filter", "^python"]);
    assert_eq!(none["procs"], json!([]));
    assert_eq!(
        none["gpus"].as_array().map(Vec::len),
        Some(2),
        "GPUs are always listed"
    );
    let sleeps = daemon.list_json(&["--filter", "sleep 600"]);
    assert_eq!(sleeps["procs"].as_array().map(Vec::len), Some(3));
    let amd = daemon.list_json(&["--vendor", "amd"]);
    assert_eq!(amd["gpus"], json!([]));
    let containers = daemon.list_json(&["--containers"]);
    assert_eq!(
        containers["procs"],
        json!([]),
        "no target runs in a container"
    );
}

#[test]
fn list_and_kill_filters_select_the_same_processes() {
    let (daemon, [mine, theirs, both]) = start_with_three_targets();
    let pids = |value: &Value, key: &str| -> Vec<u64> {
        let mut pids: Vec<u64> = value[key]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    // A user name is not a process filter: neither selects nobody's process by its user.
    let theirs_name = user_name(theirs.uid);
    let listed = daemon.list_json(&["--filter", &theirs_name]);
    assert_eq!(pids(&listed, "procs"), Vec::<u64>::new());
    let kill = daemon.ctl(&["kill", "--filter", &theirs_name]);
    assert_eq!(kill.status.code(), Some(3), "{kill:?}");
    assert!(
        String::from_utf8_lossy(&kill.stderr).contains("no GPU process matches"),
        "{kill:?}"
    );
    // The command line: the same three processes in both, and nothing killed without
    // --batch.
    let listed = daemon.list_json(&["--filter", "sleep 600$"]);
    let matched = daemon.ctl_json(&["kill", "--filter", "sleep 600$", "-o", "json"]);
    assert_eq!(matched["needs_batch"], json!(true));
    assert_eq!(pids(&listed, "procs"), pids(&matched, "results"));
    let mut all = vec![
        u64::from(mine.pid()),
        u64::from(theirs.pid()),
        u64::from(both.pid()),
    ];
    all.sort_unstable();
    assert_eq!(pids(&listed, "procs"), all);
    // --user selects by user, as kill --user does: by name or uid.
    let by_name = daemon.list_json(&["--user", &theirs_name]);
    assert_eq!(pids(&by_name, "procs"), [u64::from(theirs.pid())]);
    let by_uid = daemon.list_json(&["--user", &theirs.uid.to_string()]);
    assert_eq!(pids(&by_uid, "procs"), [u64::from(theirs.pid())]);
    let matched = daemon.ctl_json(&["kill", "--user", &theirs_name, "-o", "json"]);
    assert_eq!(pids(&matched, "results"), [u64::from(theirs.pid())]);
}
