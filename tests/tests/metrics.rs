//! The Prometheus endpoint of a real daemon on the fake NVML, over real HTTP: dcgm-exporter's
//! names and labels, absent metrics absent, per-process memory, `promtool check metrics`,
//! `/healthz` and `/readyz` (also while NVML hangs), and the loopback-only rule.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::http::request;
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu, other_uid, user_name};

/// A port nothing listens on now (the daemon binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn scenario(mine: &Target, theirs: &Target, hang: Value) -> Value {
    let mut gpu0 = full_gpu(
        0,
        json!([
            {"pid": mine.pid(), "used_memory_bytes": 1024 * MIB, "kind": "compute", "sm_util_pct": 37},
            {"pid": theirs.pid(), "used_memory_bytes": 512 * MIB, "kind": "compute"},
        ]),
    );
    gpu0["hang"] = hang;
    gpu0["total_energy_mj"] = json!(987_654_321_u64);
    json!({
        "driver_version": "550.54.15",
        "gpus": [
            gpu0,
            {
                // No temperature, power, energy or fan: those metrics must be absent, not 0.
                "uuid": "GPU-00000000-0000-4000-8000-000000000001",
                "name": "NVIDIA GeForce RTX 3090",
                "pci_bus_id": "00000000:41:00.0",
                "memory_total_bytes": 24576 * MIB,
                "memory_used_bytes": 300 * MIB,
                "utilization_gpu_pct": 3,
                "utilization_memory_pct": 1,
                "clock_sm_mhz": 210,
                "clock_mem_mhz": 405,
                "processes": []
            }
        ]
    })
}

/// A response: status code, headers (lower-case names) and body.
/// Runs `promtool check metrics` on `text`. Its only findings may be those dcgm-exporter's
/// own names draw on the DCGM families (`modelName` is camelCase; its counters lack
/// `_total`): those names are kept on purpose so its dashboards work. Our own families must
/// be clean.
fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!(
            "cannot run promtool ({error}): this test needs it; install the Debian package \
             `prometheus` (.ci/run does: apt-get install prometheus)"
        ),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool: 0 clean, 3 lint findings only, 1 the text does not parse.
    let code = output.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "promtool check metrics failed ({:?}):\n{findings}\n--- exposition ---\n{text}",
        output.status
    );
    // dcgm-exporter's counters (energy, ECC, retired pages, remapped rows, PCIe replays)
    // have no `_total` suffix; their names are kept so the dashboards find them. gpukill's
    // own counters must have it.
    for finding in findings.lines().filter(|line| !line.trim().is_empty()) {
        let camel_case = finding.starts_with("DCGM_FI_DEV_")
            && finding.ends_with("label names should be written in 'snake_case' not 'camelCase'");
        let dcgm_counter = finding.starts_with("DCGM_FI_DEV_")
            && finding.contains("counter metrics should have \"_total\" suffix");
        assert!(
            camel_case || dcgm_counter,
            "unexpected promtool finding: {finding}\n--- exposition ---\n{text}"
        );
    }
}

/// The sample lines of the family `name`.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[test]
fn metrics_have_dcgm_names_and_labels_pass_promtool_and_report_readiness() {
    let (mine, theirs) = (Target::sleep(None), Target::sleep(Some(other_uid())));
    let port = free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let daemon = Daemon::start_with(
        &scenario(&mine, &theirs, json!([])),
        DaemonOptions {
            env: vec![("GPUKILL_METRICS_LISTEN".into(), format!("127.0.0.1:{port}"))],
            ..DaemonOptions::default()
        },
    );
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|p| p.len() == 2)
    });
    let host = list["host"].as_str().expect("host").to_owned();

    let response = request(address, "GET", "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &response.body;
    let gpu0 = format!(
        "{{gpu=\"0\",UUID=\"GPU-00000000-0000-4000-8000-000000000000\",pci_bus_id=\"00000000:07:00.0\",device=\"nvidia0\",modelName=\"NVIDIA A100-SXM4-80GB\",Hostname=\"{host}\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"}}"
    );
    for (name, value) in [
        ("DCGM_FI_DEV_GPU_UTIL", "50"),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", "20"),
        ("DCGM_FI_DEV_FB_USED", "1536"),
        ("DCGM_FI_DEV_FB_FREE", "80384"),
        ("DCGM_FI_DEV_GPU_TEMP", "41"),
        ("DCGM_FI_DEV_POWER_USAGE", "250.5"),
        ("DCGM_FI_DEV_SM_CLOCK", "1410"),
        ("DCGM_FI_DEV_MEM_CLOCK", "1593"),
    ] {
        let line = format!("{name}{gpu0} {value}");
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
    }
    let energy = format!("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu0} 987654321");
    assert!(
        text.lines().any(|l| l == energy),
        "missing {energy}:\n{text}"
    );
    assert!(text.contains("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"));
    // GPU 1 reports no temperature, power or energy: absent, not 0.
    for name in [
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    ] {
        assert_eq!(samples(text, name).len(), 1, "{name}:\n{text}");
    }
    assert!(
        samples(text, "DCGM_FI_DEV_GPU_UTIL")
            .iter()
            .any(|l| l.contains("device=\"nvidia1\"") && l.ends_with(" 3")),
        "{text}"
    );
    let memory = samples(text, "gpukill_process_gpu_memory_bytes");
    let my_line = format!(
        "gpukill_process_gpu_memory_bytes{{gpu=\"0\",UUID=\"GPU-00000000-0000-4000-8000-000000000000\",pid=\"{}\",user=\"{}\",process=\"sleep\",container=\"\"}} {}",
        mine.pid(),
        user_name(mine.uid),
        1024 * MIB
    );
    assert!(memory.contains(&my_line.as_str()), "{memory:#?}");
    assert!(
        memory.iter().any(|l| l.contains(&format!(
            "pid=\"{}\",user=\"{}\"",
            theirs.pid(),
            user_name(theirs.uid)
        ))),
        "{memory:#?}"
    );
    for line in [
        "gpukill_snapshot_stale 0",
        "gpukill_vendor_up{vendor=\"nvidia\"} 1",
        "gpukill_store_degraded 0",
        "gpukill_guard_policy_loaded 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    for name in [
        "gpukill_tick_duration_seconds",
        "gpukill_snapshot_age_seconds",
        "gpukill_store_events_dropped_total",
        "gpukill_history_batches_dropped_total",
    ] {
        assert_eq!(samples(text, name).len(), 1, "{name}:\n{text}");
    }
    promtool_check(text);

    let health = request(address, "GET", "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = request(address, "GET", "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(request(address, "GET", "/nothing").status, 404);
    assert_eq!(request(address, "DELETE", "/metrics").status, 405);

    // NVML hangs: not ready (saying why), while /metrics still answers at once from the
    // last snapshot, marked stale.
    daemon.set_scenario(&scenario(
        &mine,
        &theirs,
        json!(["nvmlDeviceGetPowerUsage"]),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = request(address, "GET", "/readyz");
        if ready.status == 503 {
            assert!(
                ready
                    .body
                    .starts_with("not ready: the latest snapshot is stale: "),
                "{}",
                ready.body
            );
            // First no tick completes in time; then the vendor is reported hung.
            if ready.body.contains("nvidia has not answered for") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz: {} {}",
            ready.status,
            ready.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let stale = request(address, "GET", "/metrics");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a scrape waited on NVML"
    );
    assert!(stale.body.lines().any(|l| l == "gpukill_snapshot_stale 1"));
    assert!(
        stale
            .body
            .lines()
            .any(|l| l == "gpukill_vendor_up{vendor=\"nvidia\"} 0")
    );
    assert!(
        samples(&stale.body, "DCGM_FI_DEV_GPU_UTIL").len() == 2,
        "last values kept"
    );
    promtool_check(&stale.body);
    assert_eq!(request(address, "GET", "/healthz").status, 200);

    daemon.set_scenario(&scenario(&mine, &theirs, json!([])));
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(address, "GET", "/readyz").status != 200 {
        assert!(Instant::now() < deadline, "/readyz did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts gpukilld with `env` and waits for it to exit; returns its status and log.
fn start_expecting_exit(env: Vec<(String, String)>) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("scenario.json");
    support::write_scenario(&scenario, &json!({"gpus": []}));
    let log = dir.path().join("gpukilld.log");
    let mut child = Daemon::spawn(
        dir.path(),
        &dir.path().join("gpukilld.sock"),
        &scenario,
        &log,
        &DaemonOptions {
            env,
            ..DaemonOptions::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gpukilld kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !dir.path().join("gpukilld.sock").exists(),
        "nothing is created before the metrics address is bound"
    );
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_non_loopback_address_is_refused_with_the_reason() {
    let (status, log) = start_expecting_exit(vec![(
        "GPUKILL_METRICS_LISTEN".into(),
        "0.0.0.0:9400".into(),
    )]);
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("metrics.listen = 0.0.0.0:9400")
            && log.contains("GPUKILL_METRICS_LISTEN")
            && log.contains("not a loopback address")
            && log.contains("authenticate"),
        "{log}"
    );
}

#[test]
fn a_taken_port_stops_the_start_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let (status, log) =
        start_expecting_exit(vec![("GPUKILL_METRICS_LISTEN".into(), address.to_string())]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot listen for metrics on {address}")),
        "{log}"
    );
}
