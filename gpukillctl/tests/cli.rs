//! Black-box tests of the `gpukillctl` binary: exit codes and what reaches the terminal.

use std::process::{Command, Output};

/// The environment variables of gpukillctl's global options, removed so that the caller's
/// environment cannot change what these tests see.
const ENV: [&str; 6] = [
    "GPUKILL_SOCKET",
    "GPUKILL_TOKEN_FILE",
    "GPUKILL_CERT",
    "GPUKILL_KEY",
    "GPUKILL_CA",
    "GPUKILL_NODE",
];

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpukillctl"));
    for name in ENV {
        command.env_remove(name);
    }
    command
}

fn gpukillctl(args: &[&str]) -> Output {
    command().args(args).output().expect("run gpukillctl")
}

#[test]
fn an_unreachable_daemon_is_one_line_and_exit_6() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gpukilld.sock");
    let socket = socket.to_str().expect("UTF-8 path");
    let output = gpukillctl(&["--socket", socket, "list"]);
    assert_eq!(output.status.code(), Some(6));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert_eq!(
        stderr,
        format!(
            "gpukillctl: error: cannot reach gpukilld at {socket}: No such file or directory \
             (is gpukilld.service running? try: systemctl status gpukilld.service, or pass \
             --socket / GPUKILL_SOCKET)\n"
        )
    );
}

#[test]
fn the_socket_can_come_from_the_environment_as_a_unix_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("env.sock");
    let output = command()
        .args(["version"])
        .env("GPUKILL_SOCKET", format!("unix://{}", socket.display()))
        .output()
        .expect("run gpukillctl");
    assert_eq!(output.status.code(), Some(6));
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(stdout.starts_with("client  gpukillctl "), "{stdout}");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
}

#[test]
fn usage_errors_exit_3() {
    let output = gpukillctl(&["list", "--vendor", "matrox"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.contains("invalid value 'matrox' for '--vendor"),
        "{stderr}"
    );
    assert_eq!(gpukillctl(&["frobnicate"]).status.code(), Some(3));
}

#[test]
fn kill_needs_exactly_one_selector() {
    let none = gpukillctl(&["kill", "--batch"]);
    assert_eq!(none.status.code(), Some(3));
    let stderr = String::from_utf8(none.stderr).expect("UTF-8");
    assert!(
        stderr.contains("<--pid <PID>|--filter <REGEX>|--gpu <N>|--user <NAME>>"),
        "{stderr}"
    );
    let two = gpukillctl(&["kill", "--pid", "1", "--filter", "x"]);
    assert_eq!(two.status.code(), Some(3));
    let stderr = String::from_utf8(two.stderr).expect("UTF-8");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn reset_needs_exactly_one_of_gpu_and_all() {
    let none = gpukillctl(&["reset", "--force"]);
    assert_eq!(none.status.code(), Some(3));
    let stderr = String::from_utf8(none.stderr).expect("UTF-8");
    assert!(stderr.contains("<--gpu <N>|--all>"), "{stderr}");
    let two = gpukillctl(&["reset", "--gpu", "0", "--all"]);
    assert_eq!(two.status.code(), Some(3));
    let stderr = String::from_utf8(two.stderr).expect("UTF-8");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn uploads_retry_needs_exactly_one_of_hour_and_all_parked() {
    let none = gpukillctl(&["uploads", "retry"]);
    assert_eq!(none.status.code(), Some(3));
    let stderr = String::from_utf8(none.stderr).expect("UTF-8");
    assert!(stderr.contains("<HOUR|--all-parked>"), "{stderr}");
    let two = gpukillctl(&["uploads", "retry", "2h", "--all-parked"]);
    assert_eq!(two.status.code(), Some(3));
    let stderr = String::from_utf8(two.stderr).expect("UTF-8");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn a_bad_upload_hour_exits_3_naming_it() {
    let output = gpukillctl(&["uploads", "show", "noonish"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(stderr.contains("'noonish'"), "{stderr}");
    assert!(stderr.contains("RFC 3339 in UTC"), "{stderr}");
}

#[test]
fn a_bad_duration_exits_3_naming_it() {
    let output = gpukillctl(&["events", "--since", "5 parsecs"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(stderr.contains("'5 parsecs'"), "{stderr}");
}

#[test]
fn https_without_a_ca_is_a_usage_error() {
    let output = gpukillctl(&["--addr", "https://node1:50051", "list"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.starts_with("gpukillctl: error: https://node1:50051 needs --ca FILE"),
        "{stderr}"
    );
    assert!(stderr.contains("pass --ca FILE"), "{stderr}");
}

#[test]
fn http_to_another_host_is_refused() {
    let output = gpukillctl(&["--addr", "http://node1:50051", "list"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.contains("http://node1:50051 is not a loopback address"),
        "{stderr}"
    );
}

#[test]
fn credentials_from_the_environment_with_the_unix_socket_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gpukilld.sock");
    let output = command()
        .args(["--socket", socket.to_str().expect("UTF-8"), "list"])
        .env("GPUKILL_TOKEN_FILE", "/etc/gpukill/token")
        .output()
        .expect("run gpukillctl");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.contains("--token-file applies to https:// addresses; the Unix socket"),
        "{stderr}"
    );
    assert!(stderr.contains("unset GPUKILL_TOKEN_FILE"), "{stderr}");
}

#[test]
fn a_closed_loopback_port_is_unreachable_naming_the_url() {
    // Bind and drop: nothing listens on the port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = gpukillctl(&["--addr", &url, "list"]);
    assert_eq!(output.status.code(), Some(6));
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.starts_with(&format!(
            "gpukillctl: error: cannot reach gpukilld at {url}: Connection refused (is gpukilld \
             listening there?"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_and_version_exit_0() {
    let help = gpukillctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: gpukillctl"));
    let version = gpukillctl(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("gpukillctl {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn run_without_a_daemon_exits_6_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gpukilld.sock");
    let ran = dir.path().join("ran");
    let touch = format!("touch '{}'", ran.display());
    let output = gpukillctl(&[
        "--socket",
        socket.to_str().expect("UTF-8 path"),
        "run",
        "/bin/sh",
        "-c",
        &touch,
    ]);
    assert_eq!(output.status.code(), Some(6));
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert!(
        stderr.starts_with("gpukillctl: error: cannot reach gpukilld at "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!ran.exists());
}

#[test]
fn run_needs_a_command_and_positive_durations() {
    let none = gpukillctl(&["run", "--gpus", "2"]);
    assert_eq!(none.status.code(), Some(3));
    let zero = gpukillctl(&["reserve", "--duration", "0s"]);
    assert_eq!(zero.status.code(), Some(3));
    let stderr = String::from_utf8(zero.stderr).expect("UTF-8");
    assert!(
        stderr.contains("invalid value '0s' for '--duration <DURATION>'"),
        "{stderr}"
    );
    let both = gpukillctl(&["run", "--nonblock", "--wait", "1m", "true"]);
    assert_eq!(both.status.code(), Some(3));
}
