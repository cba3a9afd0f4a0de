//! NVIDIA health through the real nvml-wrapper path on the fake NVML: what the backend
//! reads (error counters, retired and remapped memory, throttle reasons, performance state,
//! PCIe replays, GPM activity), a lost GPU next to healthy ones, Xid events from the event
//! thread within one poll, and the event thread's end when the backend is dropped. Most
//! tests poll `NvidiaBackend` in this process; the last one runs the daemon and reads the
//! same through `gpukillctl health`.

mod support;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use gpukilld::backends::nvidia::NvidiaBackend;
use gpukilld::backends::nvidia::events::THREAD_NAME;
use gpukilld::backends::nvidia::health::SLOW_EVERY;
use gpukilld::backends::{Backend, GpuReading, Reading};
use gpukilld::health::{GpmActivity, HealthReading, Throttle};
use serde_json::{Value, json};
use support::{Daemon, full_gpu, write_scenario};

/// A daemon's tick in these tests: the time between an injected event and the poll that
/// must report it.
const TICK: Duration = Duration::from_millis(150);

/// The fake NVML is one library per process with one scenario file (named by the
/// environment), so the tests that load it here take turns, each writing its scenario to
/// the same file; the lock is held until the test's backend is dropped.
struct Fake {
    _turn: MutexGuard<'static, ()>,
    scenario: PathBuf,
}

fn fake(scenario: &Value) -> Fake {
    static TURN: Mutex<()> = Mutex::new(());
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let path = FILE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("gpukill-health-nvml-")
            .tempdir()
            .expect("a temp dir for the scenario")
            .keep();
        let path = dir.join("scenario.json");
        // SAFETY: set once, under the turn lock, before this process loads the fake
        // NVML (the only reader of the variable); the other tests wait on the lock.
        unsafe { std::env::set_var("FAKE_NVML_SCENARIO", &path) };
        path
    });
    write_scenario(path, scenario);
    Fake {
        _turn: turn,
        scenario: path.clone(),
    }
}

impl Fake {
    fn set(&self, scenario: &Value) {
        write_scenario(&self.scenario, scenario);
    }
}

fn backend() -> NvidiaBackend {
    NvidiaBackend::new(support::fake_nvml(), PathBuf::from("/nonexistent-sysfs"))
}

/// One poll's GPUs, failing on anything but an answer.
fn poll(backend: &mut NvidiaBackend) -> Vec<GpuReading> {
    match backend.poll().pop() {
        Some(Reading::Ok { gpus, .. }) => gpus,
        other => panic!("NVIDIA did not answer: {other:?}"),
    }
}

/// A GPU with every health counter.
fn sick_gpu(index: u32) -> Value {
    let mut gpu = full_gpu(index, json!([]));
    gpu["ecc_volatile_corrected"] = json!(5);
    gpu["ecc_volatile_uncorrected"] = json!(1);
    gpu["ecc_aggregate_corrected"] = json!(20);
    gpu["ecc_aggregate_uncorrected"] = json!(4);
    gpu["retired_pages_sbe"] = json!(2);
    gpu["retired_pages_dbe"] = json!(1);
    gpu["retired_pages_pending"] = json!(true);
    gpu["remapped_rows"] =
        json!({"correctable": 3, "uncorrectable": 1, "pending": true, "failure": false});
    gpu["throttle_reasons"] = json!(Throttle::HW_THERMAL);
    gpu["pstate"] = json!(2);
    gpu["pcie_replay_counter"] = json!(7);
    gpu
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn event_threads() -> usize {
    thread_names().iter().filter(|n| *n == THREAD_NAME).count()
}

/// Waits up to 2 s for `count` event threads (a new thread names itself once running).
fn wait_for_event_threads(count: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    while event_threads() != count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    event_threads()
}

#[test]
fn every_counter_is_read_and_a_gpu_without_them_has_none() {
    let _fake = fake(&json!({"gpus": [sick_gpu(0), full_gpu(1, json!([]))]}));
    let mut backend = backend();
    let gpus = poll(&mut backend);

    let sick = &gpus[0];
    assert_eq!(sick.gpu.error, None);
    assert_eq!(
        sick.health,
        HealthReading {
            ecc_sbe_volatile: Some(5),
            ecc_dbe_volatile: Some(1),
            ecc_sbe_aggregate: Some(20),
            ecc_dbe_aggregate: Some(4),
            retired_sbe: Some(2),
            retired_dbe: Some(1),
            retired_pending: Some(true),
            remapped_correctable: Some(3),
            remapped_uncorrectable: Some(1),
            remap_pending: Some(true),
            remap_failure: Some(false),
            throttle: Some(Throttle(Throttle::HW_THERMAL)),
            pstate: Some(2),
            pcie_replay: Some(7),
            ..HealthReading::default()
        }
    );
    assert_eq!(
        sick.health.throttle.map(Throttle::names),
        Some(vec!["hw_thermal".to_string()])
    );
    assert_eq!(
        sick.gpu.ecc_volatile_errors,
        Some(6),
        "the old sum still works"
    );
    assert!(sick.xids.is_empty());

    // full_gpu has volatile ECC counts and nothing else of health: the rest is absent,
    // not 0, and not an error.
    let plain = &gpus[1];
    assert_eq!(plain.gpu.error, None);
    assert_eq!(
        plain.health,
        HealthReading {
            ecc_sbe_volatile: Some(3),
            ecc_dbe_volatile: Some(0),
            ..HealthReading::default()
        }
    );
}

#[test]
fn refused_and_missing_calls_are_absent_and_a_failing_one_is_named() {
    let mut gpu = sick_gpu(0);
    gpu["errors"] = json!({
        "nvmlDeviceGetPcieReplayCounter": "NO_PERMISSION",
        "nvmlDeviceGetRemappedRows": "FUNCTION_NOT_FOUND",
        "nvmlDeviceGetRetiredPagesPendingStatus": "NOT_SUPPORTED",
        "nvmlDeviceGetPerformanceState": "UNKNOWN",
    });
    let _fake = fake(&json!({"gpus": [gpu]}));
    let mut backend = backend();
    let reading = poll(&mut backend).remove(0);
    let health = &reading.health;
    assert_eq!(health.pcie_replay, None);
    assert_eq!(health.remapped_correctable, None);
    assert_eq!(health.remap_failure, None);
    assert_eq!(health.retired_pending, None);
    assert_eq!(health.pstate, None);
    assert_eq!(health.retired_dbe, Some(1), "the other calls still answer");
    assert_eq!(health.throttle, Some(Throttle(Throttle::HW_THERMAL)));
    let error = reading.gpu.error.unwrap_or_default();
    assert!(
        error.starts_with("performance state: ") && !error.contains(';'),
        "only the unexpected failure is an error: {error}"
    );
}

#[test]
fn slow_counters_are_read_every_tenth_poll_or_at_once_after_an_ecc_event() {
    let mut gpu = sick_gpu(0);
    gpu["event_types"] = json!(["double_bit_ecc", "single_bit_ecc"]);
    let fake = fake(&json!({"gpus": [gpu.clone()]}));
    let mut backend = backend();
    assert_eq!(poll(&mut backend)[0].health.ecc_dbe_aggregate, Some(4));

    gpu["ecc_volatile_uncorrected"] = json!(2);
    gpu["ecc_aggregate_uncorrected"] = json!(5);
    gpu["remapped_rows"]["failure"] = json!(true);
    fake.set(&json!({"gpus": [gpu.clone()]}));
    for _ in 1..SLOW_EVERY {
        let health = &poll(&mut backend)[0].health;
        assert_eq!(
            health.ecc_dbe_volatile,
            Some(2),
            "volatile counts every poll"
        );
        assert_eq!(health.ecc_dbe_aggregate, Some(4), "the slow ones kept");
        assert_eq!(health.remap_failure, Some(false));
    }
    let health = &poll(&mut backend)[0].health;
    assert_eq!(
        health.ecc_dbe_aggregate,
        Some(5),
        "read again on poll {SLOW_EVERY}"
    );
    assert_eq!(health.remap_failure, Some(true));

    // A double-bit ECC event: the next poll reads the slow counters, whatever the count.
    gpu["ecc_aggregate_uncorrected"] = json!(6);
    gpu["events"] = json!([{"at_ms": 0, "type": "double_bit_ecc"}]);
    fake.set(&json!({"gpus": [gpu]}));
    std::thread::sleep(TICK);
    let health = &poll(&mut backend)[0].health;
    assert_eq!(
        health.ecc_dbe_aggregate,
        Some(6),
        "read at once after the event"
    );
}

#[test]
fn a_lost_gpu_stays_under_its_last_identity_next_to_unaffected_ones() {
    let scenario = |lost: Value, handle_errors: Value| {
        let mut gpu1 = sick_gpu(1);
        gpu1["processes"] = json!([{"pid": 4242, "used_memory_bytes": 1024}]);
        if !lost.is_null() {
            gpu1["lost_at_ms"] = lost;
        }
        gpu1["errors"] = handle_errors;
        json!({"gpus": [sick_gpu(0), gpu1, sick_gpu(2)]})
    };
    let fake = fake(&scenario(Value::Null, json!({})));
    let mut backend = backend();
    let before = poll(&mut backend);
    assert!(!before[1].health.lost);
    assert_eq!(before[1].processes.len(), 1);

    // Every call on GPU 1 answers GPU_IS_LOST from now on (its handle still works).
    fake.set(&scenario(json!(0), json!({})));
    let after = poll(&mut backend);
    assert_eq!(after.len(), 3);
    let lost = &after[1];
    assert!(lost.health.lost);
    assert_eq!(
        lost.health,
        HealthReading {
            lost: true,
            ..HealthReading::default()
        },
        "nothing but `lost` is known of a lost GPU"
    );
    assert_eq!(lost.gpu.error.as_deref(), Some("GPU is lost"));
    assert_eq!(lost.gpu.index, 1);
    assert_eq!(
        lost.gpu.uuid, before[1].gpu.uuid,
        "known by its last identity"
    );
    assert_eq!(lost.gpu.name, before[1].gpu.name);
    assert_eq!(lost.gpu.pci_bus_id, before[1].gpu.pci_bus_id);
    assert_eq!(lost.gpu.utilization_gpu_pct, None);
    assert!(lost.processes.is_empty());
    for unaffected in [&after[0], &after[2]] {
        assert_eq!(unaffected.gpu.error, None);
        assert!(!unaffected.health.lost);
        assert_eq!(
            unaffected.health,
            before[unaffected.gpu.index as usize].health
        );
        assert_eq!(unaffected.gpu.utilization_gpu_pct, Some(50));
    }

    // A GPU whose very handle is lost: the same.
    fake.set(&scenario(
        Value::Null,
        json!({"nvmlDeviceGetHandleByIndex_v2": "GPU_IS_LOST"}),
    ));
    let after = poll(&mut backend);
    assert!(after[1].health.lost);
    assert_eq!(after[1].gpu.error.as_deref(), Some("GPU is lost"));
    assert_eq!(after[1].gpu.uuid, before[1].gpu.uuid);
    assert!(!after[2].health.lost);

    // Back on the bus: read in full again.
    fake.set(&scenario(Value::Null, json!({})));
    let back = poll(&mut backend);
    assert_eq!(back[1].health, before[1].health);
    assert_eq!(back[1].gpu.error, None);
}

#[test]
fn an_xid_reaches_the_next_poll_once_oldest_first() {
    let scenario = |events: Value| {
        let mut gpu0 = sick_gpu(0);
        gpu0["events"] = events;
        json!({"gpus": [gpu0, sick_gpu(1)]})
    };
    let fake = fake(&scenario(json!([])));
    let mut backend = backend();
    assert!(poll(&mut backend).iter().all(|gpu| gpu.xids.is_empty()));

    let injected = SystemTime::now();
    fake.set(&scenario(json!([
        {"at_ms": 0, "type": "xid", "data": 79},
        {"at_ms": 1, "type": "xid", "data": 13},
        {"at_ms": 0, "type": "pstate"}
    ])));
    // One tick later (the fake looks at its file every 50 ms): the next poll has them.
    std::thread::sleep(TICK);
    let gpus = poll(&mut backend);
    let codes: Vec<u64> = gpus[0].xids.iter().map(|xid| xid.code).collect();
    assert_eq!(
        codes,
        [79, 13],
        "both Xids, oldest first; a pstate event is no Xid"
    );
    for xid in &gpus[0].xids {
        assert!(xid.time >= injected && xid.time <= SystemTime::now());
    }
    assert!(gpus[1].xids.is_empty(), "another GPU's Xids are its own");
    assert!(
        poll(&mut backend).iter().all(|gpu| gpu.xids.is_empty()),
        "each Xid is reported once"
    );
    assert_eq!(backend.dropped_xids(), 0);
}

#[test]
fn the_event_thread_runs_only_with_events_and_stops_within_a_second_of_the_drop() {
    {
        // No GPU supports events: no thread keeps running.
        let _fake = fake(&json!({"gpus": [sick_gpu(0)]}));
        let mut backend = backend();
        poll(&mut backend);
        assert_eq!(
            wait_for_event_threads(0),
            0,
            "a thread with nothing to wait for ends"
        );
    }

    let mut gpu = sick_gpu(0);
    gpu["events"] = json!([]);
    let _fake = fake(&json!({"gpus": [gpu]}));
    let mut backend = backend();
    poll(&mut backend);
    assert_eq!(wait_for_event_threads(1), 1, "{:?}", thread_names());
    let started = Instant::now();
    drop(backend);
    let took = started.elapsed();
    assert_eq!(
        event_threads(),
        0,
        "the thread has ended when the drop returns"
    );
    assert!(took < Duration::from_secs(1), "the drop took {took:?}");
    eprintln!("event thread stopped in {took:?}");
}

#[test]
fn gpm_activity_comes_from_two_samples_a_poll_apart() {
    let mut hopper = sick_gpu(0);
    hopper["gpm"] = json!({"graphics_pct": 50.0, "sm_pct": 40.0, "tensor_pct": [20.0]});
    let _fake = fake(&json!({"gpus": [hopper, sick_gpu(1)]}));
    let mut backend = backend();
    let first = poll(&mut backend);
    assert_eq!(first[0].gpu.gpm, None, "one sample is not an interval");
    let second = poll(&mut backend);
    assert_eq!(
        second[0].gpu.gpm,
        Some(GpmActivity {
            graphics_engine: Some(0.5),
            sm: Some(0.4),
            tensor: Some(0.2),
            dram: None,
        })
    );
    assert_eq!(second[1].gpu.gpm, None, "no GPM before Hopper");
    assert_eq!(second[0].gpu.error, None);
}

#[test]
fn the_daemon_reports_an_injected_xid_and_a_lost_gpu() {
    let scenario = |events: Value, lost_at_ms: Value| {
        // Throttled and with correctable errors only: `warning` until the Xid.
        let mut gpu0 = sick_gpu(0);
        gpu0["ecc_volatile_uncorrected"] = json!(0);
        gpu0["remapped_rows"]["uncorrectable"] = json!(0);
        gpu0["events"] = events;
        let mut gpu1 = full_gpu(1, json!([]));
        gpu1["ecc_volatile_uncorrected"] = json!(0);
        gpu1["throttle_reasons"] = json!(0);
        if !lost_at_ms.is_null() {
            gpu1["lost_at_ms"] = lost_at_ms;
        }
        json!({"gpus": [gpu0, gpu1]})
    };
    let health = |daemon: &Daemon| daemon.ctl_json(&["health", "--output", "json"]);
    let daemon = Daemon::start(&scenario(json!([]), Value::Null));
    let before = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |gpus| gpus[1]["state"] == json!("ok"),
    );
    // What the backend read, through the daemon.
    assert_eq!(before[0]["state"], json!("warning"), "{before:#}");
    assert_eq!(before[0]["throttle_reasons"], json!(Throttle::HW_THERMAL));
    assert_eq!(before[0]["throttle"], json!(["hw_thermal"]));
    assert_eq!(before[0]["ecc_dbe_aggregate"], json!(4));
    assert_eq!(before[0]["remapped_correctable"], json!(3));
    assert_eq!(before[0]["pstate"], json!(2));
    assert_eq!(before[0]["pcie_replay"], json!(7));
    assert_eq!(before[1]["retired_sbe"], Value::Null, "absent, not 0");

    daemon.set_scenario(&scenario(
        json!([{"at_ms": 0, "type": "xid", "data": 79}]),
        Value::Null,
    ));
    let injected = Instant::now();
    let after = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(5),
        |gpus| {
            gpus[0]["recent_xids"]
                .as_array()
                .is_some_and(|x| !x.is_empty())
        },
    );
    let latency = injected.elapsed();
    eprintln!("Xid 79 in `gpukillctl health` {latency:?} after the scenario was written");
    assert!(
        latency < Duration::from_millis(1500),
        "Xid 79 took {latency:?} (200 ms ticks)"
    );
    assert_eq!(after[0]["recent_xids"][0]["code"], json!(79));
    assert_eq!(after[0]["state"], json!("critical"));
    assert_eq!(
        after[1]["state"],
        json!("ok"),
        "the other GPU is unaffected"
    );
    assert!(
        daemon
            .log_text()
            .contains("NVIDIA GPU 0 reported Xid 79: GPU has fallen off the bus"),
        "the event thread logs the Xid:\n{}",
        daemon.log_text()
    );

    // GPU 1 falls off the bus: `lost`, under its UUID; GPU 0 is still critical.
    daemon.set_scenario(&scenario(
        json!([{"at_ms": 0, "type": "xid", "data": 79}]),
        json!(0),
    ));
    let lost = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(5),
        |gpus| gpus[1]["state"] == json!("lost"),
    );
    assert_eq!(lost[1]["uuid"], before[1]["uuid"]);
    assert_eq!(lost[1]["name"], before[1]["name"]);
    assert_eq!(lost[0]["state"], json!("critical"));
    assert_eq!(
        health(&daemon)[0]["recent_xids"].as_array().map(Vec::len),
        Some(1),
        "the Xid was delivered once"
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

/// The Prometheus sample of `family` whose labels contain every one of `labels`.
fn sample(exposition: &str, family: &str, labels: &[&str]) -> Option<String> {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .map(str::to_owned)
}

#[test]
fn an_xid_79_reaches_every_view_and_the_gpu_is_handed_out_no_more() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches uids and must run as root (CI does)"
    );
    let (webhook_port, notices) = support::http::webhook_receiver(false);
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_dir.path().join("guard.toml");
    std::fs::write(
        &policy,
        format!("[notify]\nwebhook = \"http://127.0.0.1:{webhook_port}/gpu-health\"\n"),
    )
    .expect("write the policy");
    let metrics_port = support::pki::free_port();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    // Three healthy GPUs that support events; GPU 1 reports Xid 79 once the daemon runs.
    let scenario = |xid_on_1: bool| {
        let gpus: Vec<Value> = (0..3)
            .map(|index| {
                let mut gpu = full_gpu(index, json!([]));
                gpu["events"] = if xid_on_1 && index == 1 {
                    json!([{"at_ms": 0, "type": "xid", "data": 79}])
                } else {
                    json!([])
                };
                gpu
            })
            .collect();
        json!({"gpus": gpus})
    };
    let daemon = Daemon::start_with(
        &scenario(false),
        support::DaemonOptions {
            env: vec![
                ("GPUKILL_GUARD_POLICY".into(), policy.display().to_string()),
                (
                    "GPUKILL_METRICS_LISTEN".into(),
                    format!("127.0.0.1:{metrics_port}"),
                ),
            ],
            ..support::DaemonOptions::default()
        },
    );
    let before = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |gpus| gpus.as_array().is_some_and(|gpus| gpus.len() == 3),
    );
    assert!(
        (0..3).all(|n| before[n]["state"] == json!("ok")),
        "{before:#}"
    );

    daemon.set_scenario(&scenario(true));
    let injected = Instant::now();
    let after = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(5),
        |gpus| gpus[1]["state"] == json!("critical"),
    );
    let latency = injected.elapsed();
    eprintln!("Xid 79 -> critical in `gpukillctl health` after {latency:?}");
    // Two 200 ms ticks, plus the fake's 50 ms look at its scenario and gpukillctl's start.
    assert!(latency < Duration::from_millis(1500), "{latency:?}");
    assert_eq!(after[1]["recent_xids"][0]["code"], json!(79), "{after:#}");
    assert_eq!(after[1]["reasons"][0]["condition"], json!("xid"));
    assert_eq!(after[0]["state"], json!("ok"));
    assert_eq!(after[2]["state"], json!("ok"));
    let list = daemon.list_json(&[]);
    assert_eq!(list["gpus"][1]["health"]["state"], json!("critical"));
    assert_eq!(list["gpus"][0]["health"]["state"], json!("ok"));

    // Metrics: dcgm-exporter's last-Xid gauge, gpukill's counter and state.
    let exposition = support::http::request(metrics, "GET", "/metrics").body;
    let gpu1 = "gpu=\"1\"";
    assert_eq!(
        sample(&exposition, "DCGM_FI_DEV_XID_ERRORS", &[gpu1]).as_deref(),
        Some("79"),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, "DCGM_FI_DEV_XID_ERRORS", &["gpu=\"0\""]),
        None,
        "no Xid on GPU 0: absent"
    );
    assert_eq!(
        sample(
            &exposition,
            "gpukill_gpu_xid_errors_total",
            &[gpu1, "xid=\"79\""]
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(
            &exposition,
            "gpukill_gpu_health_state",
            &[gpu1, "state=\"critical\""]
        )
        .as_deref(),
        Some("1")
    );

    // One `health` event for the Xid (code and meaning) and one for the state change.
    let events = daemon.wait_for_json(
        &["events", "--type", "health", "--output", "json"],
        Duration::from_secs(5),
        |events| events["events"].as_array().is_some_and(|e| e.len() >= 2),
    );
    let events = events["events"].as_array().cloned().unwrap_or_default();
    let xids: Vec<&Value> = events
        .iter()
        .filter(|event| event["outcome"] == json!("reported"))
        .collect();
    assert_eq!(xids.len(), 1, "{events:#?}");
    assert_eq!(
        xids[0]["reason"],
        json!("Xid 79: GPU has fallen off the bus")
    );
    assert!(
        xids[0]["action"]
            .as_str()
            .is_some_and(|action| action.starts_with("xid 79 on GPU 1")),
        "{xids:#?}"
    );
    assert!(
        events
            .iter()
            .any(|event| event["outcome"] == json!("critical")
                && event["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.starts_with("was ok: Xid 79"))),
        "{events:#?}"
    );

    // The webhook: a health notice for the Xid and one for the change, and nothing else.
    let deadline = Instant::now() + Duration::from_secs(5);
    let posted = loop {
        let posted = notices.lock().expect("lock").clone();
        if posted.len() >= 2 || Instant::now() > deadline {
            break posted;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(posted.len(), 2, "{posted:#?}");
    assert!(
        posted
            .iter()
            .all(|notice| notice["kind"] == json!("health") && notice["gpu_index"] == json!(1))
    );
    let xid = posted
        .iter()
        .find(|notice| !notice["xid"].is_null())
        .expect("an Xid notice");
    assert_eq!(xid["xid"]["code"], json!(79));
    assert_eq!(xid["xid"]["meaning"], json!("GPU has fallen off the bus"));
    let change = posted
        .iter()
        .find(|notice| notice["xid"].is_null())
        .expect("a state notice");
    assert_eq!(change["state"], json!("critical"));
    assert_eq!(change["previous"], json!("ok"));
    assert_eq!(change["uuid"], before[1]["uuid"]);

    // Not handed out: asked for by name or needed for a count, exit 7 with the reason; the
    // others are still handed out.
    let user = support::other_uid();
    let refused = daemon.ctl_as(user, &["reserve", "--gpu-ids", "1"]);
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("GPU 1 is not handed out"),
        "{refused:?}"
    );
    let all = daemon.ctl_as(user, &["reserve", "--gpus", "3"]);
    assert_eq!(all.status.code(), Some(7), "{all:?}");
    let run = daemon.ctl_as(user, &["run", "--gpus", "3", "--", "/bin/true"]);
    assert_eq!(run.status.code(), Some(7), "{run:?}");
    let granted = daemon.ctl_as(user, &["reserve", "--gpus", "2", "--output", "json"]);
    assert!(granted.status.success(), "{granted:?}");
    let granted: Value = serde_json::from_slice(&granted.stdout).expect("reserve JSON");
    let mut indexes: Vec<u64> = granted["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter_map(|gpu| gpu["gpu_index"].as_u64())
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 2], "{granted:#}");
    assert!(daemon.ctl_as(user, &["release"]).status.success());

    // Cleared: by a user, exit 4; by an admin, ok again and audited.
    let denied = daemon.ctl_as(user, &["health", "clear", "--gpu", "1"]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    let cleared = daemon.ctl(&["health", "clear", "--gpu", "1"]);
    assert!(cleared.status.success(), "{cleared:?}");
    daemon.wait_for_json(
        &["health", "--gpu", "1", "--output", "json"],
        Duration::from_secs(5),
        |health| health[0]["state"] == json!("ok"),
    );
    let run = daemon.ctl_as(user, &["run", "--gpus", "3", "--", "/bin/true"]);
    assert!(run.status.success(), "{run:?}");
    // SIGTERM: the event thread, waiting on all three GPUs, does not hold the daemon up.
    let stopping = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let stopped = stopping.elapsed();
    eprintln!("stopped {stopped:?} after SIGTERM");
    assert!(
        stopped < Duration::from_secs(1),
        "stopped {stopped:?} after SIGTERM"
    );
}

#[test]
fn kill_new_kills_what_starts_on_a_critical_gpu_and_spares_what_was_there() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches uids and must run as root (CI does)"
    );
    let user = support::other_uid();
    let mut before = support::Target::sleep(Some(user));
    let mut newcomer = support::Target::sleep(Some(user));
    let mut elsewhere = support::Target::sleep(Some(user));
    let process = |target: &support::Target| json!({"pid": target.pid(), "used_memory_bytes": 512 * support::MIB});
    let scenario = |gpu0: Value, gpu1: Value| {
        let mut sick = full_gpu(0, gpu0);
        sick["events"] = json!([{"at_ms": 0, "type": "xid", "data": 79}]);
        json!({"gpus": [sick, full_gpu(1, gpu1)]})
    };
    let daemon = Daemon::start_with(
        &scenario(json!([process(&before)]), json!([])),
        support::DaemonOptions {
            env: vec![("GPUKILL_HEALTH_ON_CRITICAL".into(), "kill-new".into())],
            ..support::DaemonOptions::default()
        },
    );
    daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |gpus| gpus[0]["state"] == json!("critical"),
    );
    // Two ticks with GPU 0 critical and its first process seen.
    std::thread::sleep(Duration::from_millis(500));
    daemon.set_scenario(&scenario(
        json!([process(&before), process(&newcomer)]),
        json!([process(&elsewhere)]),
    ));
    assert!(
        newcomer.exits_within(Duration::from_secs(5)),
        "the process that started on the critical GPU was killed\n{}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        before.alive(),
        "the process already there is left to finish"
    );
    assert!(
        elsewhere.alive(),
        "a healthy GPU's processes are not touched"
    );
    let kills: Vec<Value> = daemon
        .events_json()
        .into_iter()
        .filter(|event| event["action"] == json!("kill-new on GPU 0"))
        .collect();
    assert_eq!(kills.len(), 1, "{kills:#?}");
    assert_eq!(
        kills[0]["target"]["pid"],
        json!(newcomer.pid()),
        "{kills:#?}"
    );
    assert_eq!(kills[0]["outcome"], json!("terminated"), "{kills:#?}");
    assert!(
        kills[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with("GPU 0 is critical (Xid 79")
                && reason.ends_with("on_critical = \"kill-new\")")),
        "{kills:#?}"
    );
}

#[test]
fn each_condition_has_its_state_reason_and_metric_through_the_daemon() {
    let metrics_port = support::pki::free_port();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let scenario = |later: bool| {
        let mut throttled = full_gpu(0, json!([]));
        throttled["throttle_reasons"] = json!(Throttle::HW_THERMAL);
        let mut ecc = full_gpu(1, json!([]));
        ecc["ecc_volatile_uncorrected"] = json!(if later { 2 } else { 0 });
        let mut remap = full_gpu(2, json!([]));
        remap["remapped_rows"] = json!({"correctable": 4, "uncorrectable": 0,
                                        "pending": true, "failure": later});
        let mut retired = full_gpu(3, json!([]));
        retired["retired_pages_sbe"] = json!(2);
        retired["retired_pages_dbe"] = json!(1);
        retired["retired_pages_pending"] = json!(true);
        let mut bare = full_gpu(4, json!([]));
        let fields = bare.as_object_mut().expect("an object");
        fields.remove("ecc_volatile_corrected");
        fields.remove("ecc_volatile_uncorrected");
        json!({"gpus": [throttled, ecc, remap, retired, bare]})
    };
    let daemon = Daemon::start_with(
        &scenario(false),
        support::DaemonOptions {
            env: vec![(
                "GPUKILL_METRICS_LISTEN".into(),
                format!("127.0.0.1:{metrics_port}"),
            )],
            ..support::DaemonOptions::default()
        },
    );
    let conditions = |gpu: &Value| -> Vec<String> {
        gpu["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|reason| reason["condition"].as_str().map(str::to_owned))
            .collect()
    };
    // The slow counters (remapped rows, retired pages) are read on the first poll.
    let first = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |gpus| gpus[2]["remap_pending"] == json!(true) && gpus[3]["retired_pending"] == json!(true),
    );
    assert_eq!(first[0]["state"], json!("warning"), "{first:#}");
    assert_eq!(first[0]["throttle"], json!(["hw_thermal"]));
    assert_eq!(conditions(&first[0]), ["throttle"]);
    assert_eq!(first[1]["state"], json!("ok"), "{:#}", first[1]);
    assert_eq!(first[2]["state"], json!("warning"), "{:#}", first[2]);
    assert_eq!(conditions(&first[2]), ["remap_pending"]);
    assert_eq!(first[3]["state"], json!("warning"), "{:#}", first[3]);
    assert_eq!(conditions(&first[3]), ["retirement_pending"]);
    assert_eq!(
        first[4]["state"],
        json!("unknown"),
        "nothing readable: {:#}",
        first[4]
    );
    for field in [
        "ecc_sbe_volatile",
        "ecc_dbe_volatile",
        "retired_sbe",
        "remapped_correctable",
        "throttle_reasons",
        "pstate",
    ] {
        assert_eq!(first[4][field], Value::Null, "{field} is absent, not 0");
    }

    let exposition = support::http::request(metrics, "GET", "/metrics").body;
    let metric = |family: &str, gpu: u32| sample(&exposition, family, &[&format!("gpu=\"{gpu}\"")]);
    assert_eq!(
        metric("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 0).as_deref(),
        Some("64"),
        "{exposition}"
    );
    assert_eq!(
        metric("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", 2).as_deref(),
        Some("4")
    );
    assert_eq!(
        metric("DCGM_FI_DEV_ROW_REMAP_FAILURE", 2).as_deref(),
        Some("0")
    );
    assert_eq!(metric("DCGM_FI_DEV_RETIRED_SBE", 3).as_deref(), Some("2"));
    assert_eq!(metric("DCGM_FI_DEV_RETIRED_DBE", 3).as_deref(), Some("1"));
    assert_eq!(
        metric("DCGM_FI_DEV_RETIRED_PENDING", 3).as_deref(),
        Some("1")
    );
    assert_eq!(
        metric("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 1).as_deref(),
        Some("0")
    );
    for family in [
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
    ] {
        assert_eq!(metric(family, 4), None, "{family} absent on GPU 4");
    }
    assert_eq!(
        sample(
            &exposition,
            "gpukill_gpu_health_state",
            &["gpu=\"4\"", "state=\"unknown\""]
        )
        .as_deref(),
        Some("1")
    );

    // Double-bit errors rise and a row cannot be remapped: both critical.
    daemon.set_scenario(&scenario(true));
    let later = daemon.wait_for_json(
        &["health", "--output", "json"],
        Duration::from_secs(10),
        |gpus| gpus[1]["state"] == json!("critical") && gpus[2]["state"] == json!("critical"),
    );
    assert_eq!(
        conditions(&later[1]),
        ["ecc_uncorrectable"],
        "{:#}",
        later[1]
    );
    assert_eq!(conditions(&later[2])[0], "remap_failure", "{:#}", later[2]);
    assert_eq!(later[0]["state"], json!("warning"), "the others unchanged");
    let exposition = support::http::request(metrics, "GET", "/metrics").body;
    let metric = |family: &str, gpu: u32| sample(&exposition, family, &[&format!("gpu=\"{gpu}\"")]);
    assert_eq!(
        metric("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 1).as_deref(),
        Some("2")
    );
    assert_eq!(
        metric("DCGM_FI_DEV_ROW_REMAP_FAILURE", 2).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(
            &exposition,
            "gpukill_gpu_health_state",
            &["gpu=\"1\"", "state=\"critical\""]
        )
        .as_deref(),
        Some("1")
    );
}
