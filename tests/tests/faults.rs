//! Vendor faults: a lost GPU is reported while the others keep updating; a hung NVML call
//! does not stop `list` from answering, and the daemon recovers when the hang ends.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, MIB, Target, full_gpu};

fn two_gpus(target: &Target, util0: u32, gpu1_errors: Value, gpu0_hang: Value) -> Value {
    let mut gpu0 = full_gpu(
        0,
        json!([{"pid": target.pid(), "used_memory_bytes": 64 * MIB}]),
    );
    gpu0["utilization_gpu_pct"] = json!(util0);
    gpu0["hang"] = gpu0_hang;
    let mut gpu1 = full_gpu(1, json!([]));
    gpu1["errors"] = gpu1_errors;
    json!({"gpus": [gpu0, gpu1]})
}

#[test]
fn a_lost_gpu_shows_its_error_while_the_others_keep_updating() {
    let target = Target::sleep(None);
    let daemon = Daemon::start(&two_gpus(&target, 10, json!({}), json!([])));
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"][1]["util_pct"] == json!(50)
    });

    daemon.set_scenario(&two_gpus(
        &target,
        11,
        json!({"*": "GPU_IS_LOST"}),
        json!([]),
    ));
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"][1]["error"] == json!("GPU is lost")
    });
    assert_eq!(
        list["gpus"][1]["util_pct"],
        Value::Null,
        "a lost GPU's metrics are absent"
    );
    assert_eq!(list["gpus"][1]["gpu_index"], json!(1));
    assert_eq!(
        list["vendors"][0]["state"],
        json!("ok"),
        "one lost GPU is not a vendor failure"
    );

    // GPU 0 keeps updating while GPU 1 stays lost.
    daemon.set_scenario(&two_gpus(
        &target,
        77,
        json!({"*": "GPU_IS_LOST"}),
        json!([]),
    ));
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"][0]["util_pct"] == json!(77)
    });
    assert_eq!(list["gpus"][1]["error"], json!("GPU is lost"));
    assert_eq!(list["procs"][0]["pid"], json!(target.pid()));
    assert_eq!(list["stale"], json!(false));

    // An UNKNOWN error on one call is named, and only that field is absent.
    daemon.set_scenario(&two_gpus(
        &target,
        77,
        json!({"nvmlDeviceGetTemperature": "UNKNOWN"}),
        json!([]),
    ));
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"][1]["error"] != json!("GPU is lost")
    });
    let error = list["gpus"][1]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("temperature"),
        "error names the failed call: {error}"
    );
    assert_eq!(list["gpus"][1]["temp_c"], Value::Null);
    assert_eq!(list["gpus"][1]["util_pct"], json!(50));
}

#[test]
fn a_hung_nvml_call_leaves_list_answering_stale_and_recovers() {
    let target = Target::sleep(None);
    let daemon = Daemon::start(&two_gpus(&target, 10, json!({}), json!([])));
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|p| p.len() == 1)
    });

    daemon.set_scenario(&two_gpus(
        &target,
        10,
        json!({}),
        json!(["nvmlDeviceGetPowerUsage"]),
    ));
    // Give the daemon time to hit the hang and time out on it.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        let started = Instant::now();
        let list = daemon.list_json(&[]);
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(1),
            "list took {elapsed:?} while NVML is hung"
        );
        assert_eq!(list["stale"], json!(true), "{list:#}");
        assert!(
            list["stale_reason"]
                .as_str()
                .is_some_and(|r| r.contains("nvidia")),
            "{list:#}"
        );
        assert_eq!(list["vendors"][0]["state"], json!("hung"));
        // The last known values are still shown.
        assert_eq!(list["gpus"][0]["util_pct"], json!(10));
        std::thread::sleep(Duration::from_millis(200));
    }

    daemon.set_scenario(&two_gpus(&target, 42, json!({}), json!([])));
    let list = daemon.wait_for_list(Duration::from_secs(5), |list| {
        list["stale"] == json!(false) && list["gpus"][0]["util_pct"] == json!(42)
    });
    assert_eq!(list["vendors"][0]["state"], json!("ok"));
}
