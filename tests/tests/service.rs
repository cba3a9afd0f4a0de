//! gpukilld as a systemd service: the notify protocol (READY, STATUS, WATCHDOG only while
//! sampling, RELOADING, STOPPING) against a datagram socket the test owns, a clean stop on
//! SIGTERM, SIGHUP with a broken configuration, socket activation, the unit files, and the
//! launchd job.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, full_gpu};

/// The messages systemd would receive, with when they arrived.
struct Manager {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
                kept.lock().expect("lock").push((Instant::now(), text));
            }
        });
        Manager {
            messages,
            path,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().expect("lock").clone()
    }

    /// Waits up to `timeout` for a message with `line` in it; returns when it came.
    fn wait_for(&self, line: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self
                .all()
                .into_iter()
                .find(|(_, m)| m.lines().any(|l| l == line))
            {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in {:#?}",
                self.all()
                    .iter()
                    .map(|(_, m)| m.clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// WATCHDOG=1 messages that arrived in [from, to).
    fn pings(&self, from: Instant, to: Instant) -> usize {
        self.all()
            .iter()
            .filter(|(at, m)| *at >= from && *at < to && m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    }
}

fn one_gpu() -> Value {
    json!({"gpus": [full_gpu(0, json!([]))]})
}

fn hung_gpu() -> Value {
    json!({"gpus": [full_gpu(0, json!([]))], "hang": ["nvmlDeviceGetCount_v2"]})
}

fn notified(manager: &Manager, extra: Vec<(String, String)>) -> Daemon {
    let mut env = vec![
        (
            "NOTIFY_SOCKET".to_owned(),
            manager.path.display().to_string(),
        ),
        // Pings every 200 ms.
        ("WATCHDOG_USEC".to_owned(), "400000".to_owned()),
    ];
    env.extend(extra);
    Daemon::start_with(
        &one_gpu(),
        DaemonOptions {
            env,
            ..DaemonOptions::default()
        },
    )
}

#[test]
fn ready_status_watchdog_only_while_sampling_and_stopping() {
    let manager = Manager::new();
    let daemon = notified(&manager, Vec::new());
    let ready = manager.wait_for("READY=1", Duration::from_secs(5));
    // Ready means serving: the socket answers.
    assert!(daemon.ctl(&["version"]).status.success());
    let first = manager
        .all()
        .into_iter()
        .find(|(at, _)| *at == ready)
        .expect("ready")
        .1;
    assert!(
        first.contains("STATUS=1 GPUs, 0 GPU processes, last tick"),
        "{first}"
    );

    std::thread::sleep(Duration::from_secs(1));
    let now = Instant::now();
    let ticking = manager.pings(now - Duration::from_secs(1), now);
    assert!(ticking >= 3, "{ticking} pings in 1 s while sampling");

    // A vendor call that hangs: the snapshots go stale and the pings stop.
    daemon.set_scenario(&hung_gpu());
    std::thread::sleep(Duration::from_millis(1500));
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        manager.pings(from, Instant::now()),
        0,
        "no pings while NVML hangs"
    );
    assert!(daemon.log_text().contains("no watchdog ping until it does"));

    // Unhung: pings again.
    daemon.set_scenario(&one_gpu());
    std::thread::sleep(Duration::from_millis(1500));
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert!(manager.pings(from, Instant::now()) >= 3, "pings resume");

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    manager.wait_for("STOPPING=1", Duration::from_secs(2));
}

#[test]
fn sigterm_stops_within_5_s_removes_the_socket_and_writes_the_last_samples() {
    let daemon = Daemon::start_with(
        &one_gpu(),
        DaemonOptions {
            env: vec![("GPUKILL_PERSIST_INTERVAL".into(), "1s".into())],
            ..DaemonOptions::default()
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    let socket = daemon.socket.clone();
    let stopped_at = SystemTime::now();
    let started = Instant::now();
    let (status, dir) = daemon.stop_keeping_dir();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert!(!socket.exists(), "the socket is removed");
    // The interval that was open when the signal came is in the store.
    let db = rusqlite::Connection::open(dir.path().join("state").join("gpukill.db")).expect("open");
    let last: i64 = db
        .query_row("SELECT max(time_ms) FROM gpu_samples", [], |row| row.get(0))
        .expect("max");
    let stopped_ms = stopped_at
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    assert!(
        stopped_ms - last < 1_500,
        "the last stored interval starts {} ms before the stop",
        stopped_ms - last
    );
}

#[test]
fn sighup_with_a_broken_configuration_keeps_the_running_one() {
    let manager = Manager::new();
    let daemon = notified(&manager, Vec::new());
    manager.wait_for("READY=1", Duration::from_secs(5));
    let config = daemon.dir.path().join("gpukilld.toml");
    let good = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, format!("{good}poll_interval = \"soon\"\n")).expect("break config");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    manager.wait_for("RELOADING=1", Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !daemon
        .log_text()
        .contains("the new configuration is invalid")
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log_text();
    assert!(log.contains("soon"), "the log names the bad value: {log}");
    // Still serving, with the old configuration.
    let list = daemon.list_json(&[]);
    assert_eq!(list["gpus"].as_array().map(Vec::len), Some(1));
    let rejected = manager
        .all()
        .into_iter()
        .any(|(_, m)| m.contains("READY=1") && m.contains("STATUS=reload rejected"));
    assert!(rejected, "READY=1 again, saying the reload was rejected");
}

#[test]
fn socket_activation_serves_on_the_inherited_socket_and_leaves_it_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let scenario = dir.path().join("scenario.json");
    support::write_scenario(&scenario, &one_gpu());
    let config = dir.path().join("gpukilld.toml");
    std::fs::write(
        &config,
        format!("state_dir = {:?}\n", dir.path().join("state")),
    )
    .expect("config");
    let fd = listener.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    // LISTEN_PID must be the daemon's own pid: the shell's, which exec keeps.
    command
        .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
        .arg(support::gpukilld())
        .arg("--config")
        .arg(&config)
        .args(["--poll-interval", "200ms"])
        .env("GPUKILL_NVML_LIBRARY", support::fake_nvml())
        .env("FAKE_NVML_SCENARIO", &scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; fd is open in the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn gpukilld");
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let output = support::ctl_on(&socket, &["list", "--output", "json"]);
        if output.status.success() {
            break serde_json::from_slice::<Value>(&output.stdout).expect("JSON");
        }
        assert!(
            Instant::now() < deadline,
            "no answer on the inherited socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(list["gpus"].as_array().map(Vec::len), Some(1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "systemd's socket stays");
}

#[test]
fn systemd_analyze_verify_prints_nothing_for_the_units() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart= is executable: point it at the built binary.
    let service = std::fs::read_to_string(root.join("systemd/gpukilld.service"))
        .expect("read the service")
        .replace(
            "/usr/bin/gpukilld",
            &support::gpukilld().display().to_string(),
        );
    std::fs::write(dir.path().join("gpukilld.service"), service).expect("write");
    std::fs::copy(
        root.join("systemd/gpukilld.socket"),
        dir.path().join("gpukilld.socket"),
    )
    .expect("copy the socket unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("gpukilld.service"))
        .arg(dir.path().join("gpukilld.socket"))
        .output()
        .expect("systemd-analyze (package systemd) must be installed; .ci/run installs it");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert_eq!(printed, "", "systemd-analyze verify printed something");
}

/// The launchd job (packaging/macos) runs gpukilld with options it accepts and a
/// configuration it accepts, restarts it after a failure only, and gives it longer than its
/// 5 s stop to exit. (launchd itself is not available here.)
#[test]
fn launchd_job_starts_gpukilld_with_a_valid_configuration() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let job = plist::Value::from_file(root.join("packaging/macos/com.gpukill.gpukilld.plist"))
        .expect("the launchd plist parses");
    let job = job.as_dictionary().expect("a dictionary");
    assert_eq!(
        job.get("Label").and_then(plist::Value::as_string),
        Some("com.gpukill.gpukilld")
    );
    assert_eq!(
        job.get("RunAtLoad").and_then(plist::Value::as_boolean),
        Some(true)
    );
    let keep_alive = job
        .get("KeepAlive")
        .and_then(plist::Value::as_dictionary)
        .expect("KeepAlive is a dictionary");
    assert_eq!(
        keep_alive
            .get("SuccessfulExit")
            .and_then(plist::Value::as_boolean),
        Some(false),
        "restart after a failure, not after a clean stop"
    );
    let exit_timeout = job
        .get("ExitTimeOut")
        .and_then(plist::Value::as_signed_integer)
        .expect("ExitTimeOut");
    assert!(exit_timeout > 5, "ExitTimeOut {exit_timeout} s");
    let arguments: Vec<&str> = job
        .get("ProgramArguments")
        .and_then(plist::Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|argument| argument.as_string().expect("a string"))
        .collect();
    assert_eq!(
        arguments,
        [
            "/usr/local/bin/gpukilld",
            "--config",
            "/usr/local/etc/gpukill/gpukilld.toml"
        ]
    );
    // The installed configuration is packaging/macos/gpukilld.toml.
    let output = Command::new(support::gpukilld())
        .arg("--config")
        .arg(root.join("packaging/macos/gpukilld.toml"))
        .arg("--print-config")
        .output()
        .expect("run gpukilld");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "socket = \"/var/run/gpukill/gpukilld.sock\"",
        "state_dir = \"/usr/local/var/gpukill\"",
        "guard_policy = \"/usr/local/etc/gpukill/guard.toml\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}:\n{printed}");
    }
}
