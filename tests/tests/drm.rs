//! AMD and Intel GPUs through the real daemon: devices from the committed sysfs fixture
//! (`tests/fixtures/sysfs/mixed`), processes from a procfs tree built here with the
//! committed fdinfo files (`tests/fixtures/fdinfo`) under the PIDs of real processes, so
//! /proc, signals and uids are real. Mixed hosts pair the fixture with the fake NVML.

mod support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, fixtures, full_gpu, other_uid};

const GIB: u64 = 1024 * MIB;

/// A procfs tree holding only DRM file descriptors: `/proc/PID/fd/N` links to a render
/// node and `/proc/PID/fdinfo/N` is a committed fdinfo file.
struct DrmProcfs {
    dir: tempfile::TempDir,
}

impl DrmProcfs {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gpukill-procfs-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        DrmProcfs { dir }
    }

    /// Gives `pid` file descriptor `fd` on a render node, with the fdinfo `fixture`.
    fn open(&self, pid: u32, fd: u32, fixture: &str) {
        let process = self.dir.path().join(pid.to_string());
        std::fs::create_dir_all(process.join("fd")).expect("fd dir");
        std::fs::create_dir_all(process.join("fdinfo")).expect("fdinfo dir");
        symlink(
            "/dev/dri/renderD128",
            process.join("fd").join(fd.to_string()),
        )
        .expect("link");
        std::fs::copy(
            fixtures().join("fdinfo").join(fixture),
            process.join("fdinfo").join(fd.to_string()),
        )
        .expect("copy fdinfo");
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn sysfs() -> String {
    fixtures().join("sysfs/mixed").display().to_string()
}

/// Options of a daemon reading the fixture sysfs and `procfs`; NVIDIA off unless `nvidia`.
fn options(procfs: &DrmProcfs, nvidia: bool) -> DaemonOptions {
    let mut env = vec![
        ("GPUKILL_SYSFS_ROOT".to_string(), sysfs()),
        (
            "GPUKILL_PROCFS_ROOT".to_string(),
            procfs.root().display().to_string(),
        ),
    ];
    if !nvidia {
        env.push(("GPUKILL_NVIDIA_ENABLED".to_string(), "false".to_string()));
    }
    DaemonOptions {
        env,
        ..DaemonOptions::default()
    }
}

/// A daemon on the fixtures without NVIDIA.
fn start(procfs: &DrmProcfs) -> Daemon {
    Daemon::start_with(&json!({"gpus": []}), options(procfs, false))
}

fn gpu_by_index(list: &Value, index: u64) -> &Value {
    list["gpus"]
        .as_array()
        .and_then(|gpus| gpus.iter().find(|gpu| gpu["gpu_index"] == json!(index)))
        .unwrap_or_else(|| panic!("no GPU {index} in {list:#}"))
}

fn process(list: &Value, pid: u32) -> &Value {
    list["procs"]
        .as_array()
        .and_then(|procs| procs.iter().find(|p| p["pid"] == json!(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not listed in {list:#}"))
}

/// The GPU's JSON without the process fields (checked separately).
fn device_fields(gpu: &Value) -> Value {
    let mut gpu = gpu.clone();
    if let Some(object) = gpu.as_object_mut() {
        object.remove("pids");
        object.remove("top_proc");
        // The fixture's health is tested in health.rs.
        object.remove("health");
    }
    gpu
}

#[test]
fn amd_and_intel_gpus_and_their_processes_are_listed_as_the_kernel_files_say() {
    let trainer = Target::sleep(None);
    let worker = Target::sleep(None);
    let render = Target::sleep(None);
    let xe = Target::sleep(None);
    let procfs = DrmProcfs::new();
    // The trainer holds client 42 on two fds (a dup); the worker inherited it and opened
    // client 43 of its own.
    procfs.open(trainer.pid(), 3, "amdgpu-mi210-client42");
    procfs.open(trainer.pid(), 4, "amdgpu-mi210-client42");
    procfs.open(worker.pid(), 5, "amdgpu-mi210-client42");
    procfs.open(worker.pid(), 6, "amdgpu-mi210-client43");
    procfs.open(render.pid(), 3, "i915-a770-client7");
    procfs.open(xe.pid(), 3, "xe-b580-client9");
    let daemon = start(&procfs);

    // Intel utilization needs two readings of the engine counters.
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"].as_array().is_some_and(|gpus| gpus.len() == 4)
            && !gpu_by_index(list, 2)["util_pct"].is_null()
            && list["procs"]
                .as_array()
                .is_some_and(|procs| procs.len() == 4)
    });
    let vendors: Vec<&Value> = list["vendors"].as_array().unwrap().iter().collect();
    assert_eq!(vendors.len(), 2, "{list:#}");
    assert_eq!(vendors[0]["vendor"], json!("amd"));
    assert_eq!(vendors[1]["vendor"], json!("intel"));
    assert!(vendors.iter().all(|v| v["state"] == json!("ok")));

    // The ASPEED BMC (card0) is not a GPU; the AMD cards come first, then Intel's.
    assert_eq!(
        device_fields(gpu_by_index(&list, 0)),
        json!({
            "gpu_index": 0, "vendor": "amd", "name": "AMD Instinct MI210",
            "uuid": "GPU-5a2f7c1e9b3d4068", "pci_bus_id": "0000:03:00.0",
            "mem_used_mb": 12288, "mem_total_mb": 65536, "util_pct": 87, "mem_util_pct": 41,
            "temp_c": 43, "power_w": 187.0, "fan_pct": null, "sm_clock_mhz": 1700,
            "mem_clock_mhz": 1600, "ecc_volatile": 4, "mig_enabled": null,
            "reset_supported": true, "error": null, "vendor_index": 0,
            "mem_used_bytes": 12 * GIB, "mem_total_bytes": 64 * GIB,
            "gtt_used_bytes": 22 * MIB, "gtt_total_bytes": 126 * GIB
        })
    );
    assert_eq!(
        device_fields(gpu_by_index(&list, 1)),
        json!({
            "gpu_index": 1, "vendor": "amd", "name": "AMD Radeon RX 7900 XTX",
            "uuid": null, "pci_bus_id": "0000:0c:00.0",
            "mem_used_mb": 1536, "mem_total_mb": 24560, "util_pct": 3, "mem_util_pct": 9,
            "temp_c": 38, "power_w": null, "fan_pct": 50, "sm_clock_mhz": 2482,
            "mem_clock_mhz": 1249, "ecc_volatile": null, "mig_enabled": null,
            "reset_supported": true, "error": null, "vendor_index": 1,
            "mem_used_bytes": 1_610_612_736_u64, "mem_total_bytes": 25_753_026_560_u64,
            "gtt_used_bytes": 68_157_440_u64, "gtt_total_bytes": 33_420_423_168_u64
        })
    );
    // Intel: sysfs gives name, clock, power (from the energy counter, which the fixture
    // keeps still: 0 W) and the xe card's VRAM size; fdinfo gives utilization (i915's busy
    // nanoseconds do not move: 0 %; xe counts GPU cycles, and without cycles passing there is
    // no utilization to tell) and the VRAM its clients hold.
    assert_eq!(
        device_fields(gpu_by_index(&list, 2)),
        json!({
            "gpu_index": 2, "vendor": "intel", "name": "DG2 [Arc A770]",
            "uuid": null, "pci_bus_id": "0000:05:00.0",
            "mem_used_mb": null, "mem_total_mb": null, "util_pct": 0, "mem_util_pct": null,
            "temp_c": null, "power_w": 0.0, "fan_pct": null, "sm_clock_mhz": 2100,
            "mem_clock_mhz": null, "ecc_volatile": null, "mig_enabled": null,
            "reset_supported": false, "error": null, "vendor_index": 0,
            "mem_used_bytes": null, "mem_total_bytes": null,
            "gtt_used_bytes": null, "gtt_total_bytes": null
        })
    );
    assert_eq!(
        device_fields(gpu_by_index(&list, 3)),
        json!({
            "gpu_index": 3, "vendor": "intel", "name": "Battlemage G21 [Arc B580]",
            "uuid": null, "pci_bus_id": "0000:08:00.0",
            "mem_used_mb": 512, "mem_total_mb": 12288, "util_pct": null, "mem_util_pct": null,
            "temp_c": 55, "power_w": 0.0, "fan_pct": null, "sm_clock_mhz": 2850,
            "mem_clock_mhz": null, "ecc_volatile": null, "mig_enabled": null,
            "reset_supported": false, "error": null, "vendor_index": 1,
            "mem_used_bytes": 512 * MIB, "mem_total_bytes": 12 * GIB,
            "gtt_used_bytes": null, "gtt_total_bytes": null
        })
    );
    assert_eq!(gpu_by_index(&list, 0)["pids"], json!(2));
    assert_eq!(gpu_by_index(&list, 1)["pids"], json!(0));

    // Client 42 is counted once, for the lower of the two pids that hold it.
    let (owner, sharer) = if trainer.pid() < worker.pid() {
        (trainer.pid(), worker.pid())
    } else {
        (worker.pid(), trainer.pid())
    };
    let owner_bytes = 4 * GIB + if owner == worker.pid() { GIB } else { 0 };
    let sharer_bytes = if sharer == worker.pid() { GIB } else { 0 };
    for (pid, bytes) in [(owner, owner_bytes), (sharer, sharer_bytes)] {
        let listed = process(&list, pid);
        assert_eq!(listed["gpu_index"], json!(0), "{listed:#}");
        assert_eq!(listed["vendor"], json!("amd"));
        assert_eq!(listed["used_mem_bytes"], json!(bytes), "{listed:#}");
        assert_eq!(listed["proc_name"], json!("sleep"));
    }
    let listed = process(&list, render.pid());
    assert_eq!(
        (
            &listed["gpu_index"],
            &listed["vendor"],
            &listed["used_mem_bytes"]
        ),
        (&json!(2), &json!("intel"), &json!(2 * GIB))
    );
    assert_eq!(listed["sm_util_pct"], json!(0), "still counters: idle");
    let listed = process(&list, xe.pid());
    assert_eq!(
        (&listed["gpu_index"], &listed["used_mem_bytes"]),
        (&json!(3), &json!(512 * MIB))
    );

    // --vendor filters GPUs and processes alike.
    let intel = daemon.list_json(&["--vendor", "intel"]);
    let indices: Vec<&Value> = intel["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gpu| &gpu["gpu_index"])
        .collect();
    assert_eq!(indices, vec![&json!(2), &json!(3)]);
    assert!(
        intel["procs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["vendor"] == json!("intel"))
    );
}

#[test]
fn a_mixed_host_numbers_nvidia_first_and_an_nvml_failure_hides_no_other_vendor() {
    let procfs = DrmProcfs::new();
    let daemon = Daemon::start_with(
        &json!({"gpus": [full_gpu(0, json!([]))]}),
        options(&procfs, true),
    );
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["gpus"].as_array().is_some_and(|gpus| gpus.len() == 5)
    });
    let vendors: Vec<(&Value, &Value)> = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gpu| (&gpu["vendor"], &gpu["vendor_index"]))
        .collect();
    assert_eq!(
        vendors,
        vec![
            (&json!("nvidia"), &json!(0)),
            (&json!("amd"), &json!(0)),
            (&json!("amd"), &json!(1)),
            (&json!("intel"), &json!(0)),
            (&json!("intel"), &json!(1)),
        ]
    );
    let amd = daemon.list_json(&["--vendor", "amd"]);
    let names: Vec<&Value> = amd["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gpu| &gpu["name"])
        .collect();
    assert_eq!(
        names,
        vec![
            &json!("AMD Instinct MI210"),
            &json!("AMD Radeon RX 7900 XTX")
        ]
    );
    assert_eq!(gpu_by_index(&amd, 1)["gpu_index"], json!(1));
    drop(daemon);

    // NVML cannot be loaded: NVIDIA's error is in the vendor status, the others are listed,
    // and list exits 2 (a vendor library failed) after printing everything.
    let daemon = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            nvml_library: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            ..options(&procfs, true)
        },
    );
    let output = daemon.ctl(&["list", "--output", "json"]);
    assert_eq!(output.status.code(), Some(2));
    let list: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(list["vendors"][0]["vendor"], json!("nvidia"));
    assert_eq!(list["vendors"][0]["state"], json!("error"));
    // The host has an NVIDIA GPU on its PCI bus: the missing library is a failure, with
    // the device and the fix named.
    let message = list["vendors"][0]["message"].as_str().unwrap_or_default();
    for expected in [
        "/nonexistent/libnvidia-ml.so.1",
        "install the NVIDIA driver",
        "0000:01:00.0",
    ] {
        assert!(message.contains(expected), "{expected}: {list:#}");
    }
    assert_eq!(list["vendors"][1]["state"], json!("ok"));
    assert_eq!(list["gpus"].as_array().map(Vec::len), Some(4), "{list:#}");
    assert_eq!(list["gpus"][0]["name"], json!("AMD Instinct MI210"));
}

#[test]
fn an_amd_and_intel_host_without_nvml_lists_no_nvidia_and_exits_0() {
    // The same cards, and no NVIDIA GPU on the PCI bus (no bus/ directory at all).
    let host = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(
        fixtures().join("sysfs/mixed/class"),
        host.path().join("class"),
    )
    .expect("symlink");
    let procfs = DrmProcfs::new();
    let mut options = options(&procfs, true);
    for (name, value) in &mut options.env {
        if name == "GPUKILL_SYSFS_ROOT" {
            *value = host.path().display().to_string();
        }
    }
    let daemon = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            nvml_library: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            ..options
        },
    );
    let output = daemon.ctl(&["list", "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout).expect("json");
    let vendors: Vec<&Value> = list["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|status| &status["vendor"])
        .collect();
    assert_eq!(vendors, vec![&json!("amd"), &json!("intel")], "{list:#}");
    assert_eq!(list["gpus"].as_array().map(Vec::len), Some(4), "{list:#}");
    // The table says nothing of NVIDIA either.
    let table = daemon.ctl(&["list"]);
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout).to_lowercase()
        + &String::from_utf8_lossy(&table.stderr).to_lowercase();
    assert!(!text.contains("nvidia") && !text.contains("nvml"), "{text}");
}

#[test]
fn an_amd_process_found_through_fdinfo_is_killed_by_its_owner() {
    let uid = Some(other_uid());
    let mut target = Target::sleep(uid);
    let bystander = Target::sleep(None);
    let procfs = DrmProcfs::new();
    procfs.open(target.pid(), 3, "amdgpu-mi210-client43");
    procfs.open(bystander.pid(), 3, "amdgpu-mi210-client42");
    let daemon = start(&procfs);
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"]
            .as_array()
            .is_some_and(|procs| procs.len() == 2)
    });
    let pid = target.pid().to_string();
    let output = match uid {
        Some(uid) => daemon.ctl_as(uid, &["kill", "--pid", &pid]),
        None => daemon.ctl(&["kill", "--pid", &pid]),
    };
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        target.exits_within(Duration::from_secs(5)),
        "target survived"
    );
    if let Some(uid) = uid {
        // Its owner may not touch the other user's process on the same GPU.
        let other = bystander.pid().to_string();
        let output = daemon.ctl_as(uid, &["kill", "--pid", &other]);
        assert_eq!(output.status.code(), Some(4));
    }
    let events = daemon.events_json();
    assert!(
        events.iter().any(|event| {
            event["type"] == json!("kill")
                && event["target"]["pid"] == json!(target.pid())
                && event["target"]["gpu_index"] == json!(0)
        }),
        "{events:#?}"
    );
}

#[test]
fn amd_gpus_reset_through_amd_smi_by_bus_id_and_intel_gpus_are_unsupported() {
    let tools = tempfile::Builder::new()
        .prefix("gpukill-amd-smi-")
        .tempdir()
        .expect("tempdir");
    let calls = tools.path().join("calls");
    let amd_smi = tools.path().join("amd-smi");
    std::fs::write(
        &amd_smi,
        format!("#!/bin/sh\necho \"$*\" >> {calls:?}\necho \"Successfully reset GPU $4\"\n"),
    )
    .expect("write fake amd-smi");
    std::fs::set_permissions(&amd_smi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let user = Target::sleep(None);
    let procfs = DrmProcfs::new();
    procfs.open(user.pid(), 3, "amdgpu-mi210-client42");
    let mut options = options(&procfs, false);
    options
        .env
        .push(("GPUKILL_AMD_SMI".into(), amd_smi.display().to_string()));
    let daemon = Daemon::start_with(&json!({"gpus": []}), options);
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"]
            .as_array()
            .is_some_and(|procs| procs.len() == 1)
    });

    // The same safety flow as NVIDIA: a GPU in use is refused without --force (exit 1).
    let busy = daemon.ctl(&["reset", "--gpu", "0"]);
    assert_ne!(busy.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&busy.stderr).contains(&user.pid().to_string()));
    // An idle AMD GPU: amd-smi gets its PCI bus id.
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
        std::fs::read_to_string(&calls).unwrap_or_default(),
        "reset -G -g 0000:0c:00.0\n"
    );
    // Intel: unsupported, exit 5, nothing run.
    let intel = daemon.ctl(&["reset", "--gpu", "2"]);
    assert_eq!(intel.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&intel.stderr).contains("no documented per-device reset"),
        "{}",
        String::from_utf8_lossy(&intel.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .count(),
        1
    );
}
