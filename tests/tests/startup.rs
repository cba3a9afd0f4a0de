//! Starting up: socket hygiene, configuration errors, a missing NVML library, an unreachable
//! daemon and a bad regex, each with a clear message and the documented exit code.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Daemon, DaemonOptions, ctl_on, full_gpu};

fn empty_scenario() -> serde_json::Value {
    json!({"gpus": [full_gpu(0, json!([]))]})
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-test-")
        .tempdir()
        .expect("tempdir");
    let socket = dir.path().join("gpukilld.sock");
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let daemon = Daemon::start_on(
        dir,
        socket.clone(),
        &empty_scenario(),
        DaemonOptions::default(),
    );
    let list = daemon.list_json(&[]);
    assert_eq!(list["gpus"][0]["gpu_index"], json!(0));
    // The socket's mode is the configured default, 0666.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    // Clean stop removes the socket.
    assert!(daemon.stop().success());
    assert!(!socket.exists(), "the socket is removed on stop");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let first = Daemon::start(&empty_scenario());
    let log = first.dir.path().join("second.log");
    let mut second = Daemon::spawn(
        first.dir.path(),
        &first.socket,
        &first.scenario,
        &log,
        &DaemonOptions::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the second daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let message = std::fs::read_to_string(&log).expect("log");
    assert!(message.contains("already listening"), "{message}");
    assert!(
        message.contains(&first.socket.display().to_string()),
        "{message}"
    );
    // The first daemon is untouched.
    assert_eq!(first.list_json(&[])["gpus"][0]["gpu_index"], json!(0));
}

#[test]
fn an_unknown_config_key_is_exit_3_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gpukilld.toml");
    std::fs::write(&config, "poll_interval = \"1s\"\npoll_intervall = \"2s\"\n").expect("write");
    let output = Command::new(support::gpukilld())
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("run gpukilld");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("poll_intervall"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

#[test]
fn a_bad_env_value_is_exit_3_naming_the_variable() {
    let output = Command::new(support::gpukilld())
        .args(["--config", "/dev/null", "--check-config"])
        .env("GPUKILL_POLL_INTERVAL", "fast")
        .output()
        .expect("run gpukilld");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("GPUKILL_POLL_INTERVAL") && stderr.contains("fast"),
        "{stderr}"
    );
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let output = Command::new(support::gpukilld())
        .args([
            "--config",
            "/dev/null",
            "--print-config",
            "--poll-interval",
            "500ms",
        ])
        .env("GPUKILL_SOCKET", "/tmp/somewhere/gpukilld.sock")
        .output()
        .expect("run gpukilld");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("poll_interval = \"500ms\""), "{text}");
    assert!(
        text.contains("socket = \"/tmp/somewhere/gpukilld.sock\""),
        "{text}"
    );
    assert!(text.contains("ring_capacity = 7200"), "{text}");
}

#[test]
fn a_bad_regex_is_exit_3_with_the_regex_error() {
    let daemon = Daemon::start(&empty_scenario());
    let output = daemon.ctl(&["list", "--filter", "python("]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("python("), "{stderr}");
    assert!(stderr.contains("unclosed group"), "{stderr}");
}

#[test]
fn a_missing_nvml_library_is_reported_with_exit_2() {
    let missing = Path::new("/nonexistent/libnvidia-ml.so.1");
    // The host has an NVIDIA GPU (a 3D controller on its PCI bus), so the missing library
    // is a failure; without one NVIDIA would be absent (tests/tests/drm.rs).
    let sysfs = tempfile::tempdir().expect("tempdir");
    let device = sysfs.path().join("bus/pci/devices/0000:41:00.0");
    std::fs::create_dir_all(&device).expect("mkdir");
    std::fs::write(device.join("vendor"), "0x10de\n").expect("vendor");
    std::fs::write(device.join("class"), "0x030200\n").expect("class");
    let daemon = Daemon::start_with(
        &empty_scenario(),
        DaemonOptions {
            nvml_library: Some(missing.to_path_buf()),
            env: vec![(
                "GPUKILL_NVIDIA_SYSFS_ROOT".to_string(),
                sysfs.path().display().to_string(),
            )],
            ..DaemonOptions::default()
        },
    );
    let output = daemon.ctl(&["list", "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("json still printed");
    assert_eq!(list["vendors"][0]["state"], json!("error"));
    let message = list["vendors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/nonexistent/libnvidia-ml.so.1") && message.contains("0000:41:00.0"),
        "{message}"
    );
    assert_eq!(list["gpus"], json!([]));
    let table = daemon.ctl(&["list"]);
    assert_eq!(table.status.code(), Some(2));
    let text = String::from_utf8_lossy(&table.stdout).to_string()
        + &String::from_utf8_lossy(&table.stderr);
    assert!(text.contains("/nonexistent/libnvidia-ml.so.1"), "{text}");
}

#[test]
fn an_unreachable_daemon_is_one_clear_line_and_exit_6() {
    let socket = Path::new("/nonexistent-gpukill/gpukilld.sock");
    let output = ctl_on(socket, &["list"]);
    assert_eq!(output.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent-gpukill/gpukilld.sock"),
        "{stderr}"
    );
    assert!(stderr.contains("gpukilld.service"), "{stderr}");
}
