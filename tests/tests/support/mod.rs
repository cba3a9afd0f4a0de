//! Test support: start the real gpukilld against the fake NVML library, run the real
//! gpukillctl against it, spawn real target processes, and talk gRPC to the daemon.

// unwrap_used: clippy.toml's allow-unwrap-in-tests covers #[test] functions only, and these
// helpers (shared with the benches) are not; a panic here fails the test that called it.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub mod central;
pub mod clients;
pub mod flood;
pub mod http;
pub mod measure;
pub mod pki;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

/// The cargo target directory the test binaries were built into (target/debug).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test>-<hash> or target/release/deps/<bench>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for needed in ["gpukilld", "gpukillctl", "libfake_nvml.so"] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: build the workspace first (scripts/test does: cargo build --workspace)",
            dir.join(needed).display()
        );
    }
    dir
}

pub fn gpukilld() -> PathBuf {
    build_dir().join("gpukilld")
}

pub fn gpukillctl() -> PathBuf {
    build_dir().join("gpukillctl")
}

pub fn fake_nvml() -> PathBuf {
    build_dir().join("libfake_nvml.so")
}

/// Writes a scenario atomically (temp file + rename), as the fake NVML re-reads it.
/// The committed fixture trees (`tests/fixtures`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn write_scenario(path: &Path, scenario: &Value) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(scenario).unwrap()).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Options for starting a daemon.
pub struct DaemonOptions {
    /// Extra lines for the daemon's config file.
    pub config: String,
    pub poll_interval: &'static str,
    pub vendor_timeout: &'static str,
    pub ring_capacity: Option<usize>,
    pub nvml_library: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// The daemon's `RLIMIT_NOFILE`, soft and hard (as `prlimit --nofile=N:N` would set it).
    pub nofile: Option<u64>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            config: String::new(),
            poll_interval: "200ms",
            vendor_timeout: "300ms",
            ring_capacity: None,
            nvml_library: None,
            env: Vec::new(),
            nofile: None,
        }
    }
}

/// A running gpukilld in its own temp dir, stopped (SIGTERM) on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub scenario: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(scenario: &Value) -> Daemon {
        Daemon::start_with(scenario, DaemonOptions::default())
    }

    pub fn start_with(scenario: &Value, options: DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("gpukill-test-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("gpukilld.sock");
        Daemon::start_on(dir, socket, scenario, options)
    }

    /// Starts a daemon on a given socket in a given dir (used for socket hygiene tests).
    pub fn start_on(
        dir: tempfile::TempDir,
        socket: PathBuf,
        scenario: &Value,
        options: DaemonOptions,
    ) -> Daemon {
        // Other uids (test clients) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let scenario_path = dir.path().join("scenario.json");
        write_scenario(&scenario_path, scenario);
        let log = dir.path().join("gpukilld.log");
        let child = Daemon::spawn(dir.path(), &socket, &scenario_path, &log, &options);
        let mut daemon = Daemon {
            dir,
            socket,
            scenario: scenario_path,
            log,
            child: Some(child),
        };
        daemon.wait_ready();
        daemon
    }

    /// Spawns gpukilld without waiting for it.
    pub fn spawn(
        dir: &Path,
        socket: &Path,
        scenario: &Path,
        log: &Path,
        options: &DaemonOptions,
    ) -> Child {
        let config = dir.join("gpukilld.toml");
        // Top-level keys go first: the options' text may end inside a [section].
        let mut text = String::new();
        if !options.config.contains("state_dir") {
            text.push_str(&format!("state_dir = {:?}\n", dir.join("state")));
        }
        if let Some(capacity) = options.ring_capacity {
            text.push_str(&format!("ring_capacity = {capacity}\n"));
        }
        text.push_str(&options.config);
        std::fs::write(&config, text).unwrap();
        let library = options.nvml_library.clone().unwrap_or_else(fake_nvml);
        let mut command = Command::new(gpukilld());
        command
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(socket)
            .arg("--poll-interval")
            .arg(options.poll_interval)
            .env("GPUKILL_VENDOR_TIMEOUT", options.vendor_timeout)
            .env("GPUKILL_NVML_LIBRARY", &library)
            .env("FAKE_NVML_SCENARIO", scenario)
            // This machine's own DRM cards must not show up in tests (a test that wants
            // AMD or Intel GPUs points this at a fixture tree); names come from the fixtures.
            .env("GPUKILL_SYSFS_ROOT", dir.join("no-sysfs"))
            .env("GPUKILL_AMD_IDS_FILE", fixtures().join("amdgpu.ids"))
            .env("GPUKILL_PCI_IDS", fixtures().join("pci.ids"))
            .env("GPUKILL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        if let Some(limit) = options.nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        command.spawn().expect("spawn gpukilld")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "gpukilld exited with {status} before serving:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gpukilld did not serve in 15 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn set_scenario(&self, scenario: &Value) {
        write_scenario(&self.scenario, scenario);
    }

    /// Runs gpukillctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_on(&self.socket, args)
    }

    /// Runs gpukillctl with `args` and parses its JSON output, failing with the daemon's log.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "gpukillctl {args:?} failed with {}: {}\ndaemon log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

    /// Runs `gpukillctl list --output json` (plus `extra`) and parses its output.
    pub fn list_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["list", "--output", "json"];
        args.extend_from_slice(extra);
        self.ctl_json(&args)
    }

    /// Polls gpukillctl `args` (JSON output) until `accept` holds or `timeout` passes;
    /// returns the last output.
    pub fn wait_for_json(
        &self,
        args: &[&str],
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.ctl_json(args);
            if accept(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "gpukillctl {args:?}: condition not reached in {timeout:?}; last output:\n{value:#}\ndaemon log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `list` until `accept` holds or `timeout` passes; returns the last output.
    pub fn wait_for_list(&self, timeout: Duration, accept: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_json(&["list", "--output", "json"], timeout, accept)
    }

    /// A gRPC client over the daemon's socket.
    pub async fn client(&self) -> GpuKillServiceClient<Channel> {
        client(&self.socket).await
    }

    /// The Health rpc, as root, from outside any async runtime.
    pub fn health(&self) -> gpukill_proto::v1::HealthResponse {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                self.client()
                    .await
                    .health(gpukill_proto::v1::HealthRequest {})
                    .await
                    .expect("Health")
                    .into_inner()
            })
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate().expect("daemon running")
    }

    /// SIGKILL (no chance to clean up), then reap; returns the daemon's directory.
    pub fn sigkill_keeping_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = tempfile::Builder::new()
            .prefix("gpukill-moved-")
            .tempdir()
            .unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// SIGTERM, then wait; returns the exit status and the daemon's directory (with its
    /// state), which lives on until the caller drops it.
    pub fn stop_keeping_dir(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let status = self.terminate().expect("daemon running");
        let dir = tempfile::Builder::new()
            .prefix("gpukill-moved-")
            .tempdir()
            .unwrap();
        let kept = std::mem::replace(&mut self.dir, dir);
        (status, kept)
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs gpukilld on a configuration of `text` in `dir` (its state and socket there, NVML
/// off) for a start-up that must be refused: waits for it to exit and returns its exit code
/// and what it printed on stderr.
pub fn start_refused(dir: &Path, text: &str) -> (Option<i32>, String) {
    let config = dir.join("gpukilld.toml");
    let state = dir.join("state");
    std::fs::write(&config, format!("state_dir = {state:?}\n{text}")).unwrap();
    let output = Command::new(gpukilld())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.join("gpukilld.sock"))
        .env("GPUKILL_NVIDIA_ENABLED", "false")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// gpukillctl where any uid can run it (the build dir may sit under a 0700 home): a hard
/// link (or copy) in a world-readable directory of this test process.
pub fn shared_gpukillctl() -> PathBuf {
    static SHARED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("gpukill-bin-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let shared = dir.join("gpukillctl");
            let _ = std::fs::remove_file(&shared);
            if std::fs::hard_link(gpukillctl(), &shared).is_err() {
                std::fs::copy(gpukillctl(), &shared).unwrap();
            }
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
            shared
        })
        .clone()
}

impl Daemon {
    /// Runs gpukillctl against this daemon as `uid` (gid = uid).
    pub fn ctl_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new(shared_gpukillctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .output()
            .expect("run gpukillctl as another uid")
    }

    /// The audit trail as `gpukillctl events --output json` shows it to root.
    pub fn events_json(&self) -> Vec<Value> {
        self.ctl_json(&["events", "--output", "json"])["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Runs gpukillctl against `socket`.
pub fn ctl_on(socket: &Path, args: &[&str]) -> Output {
    Command::new(gpukillctl())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gpukillctl")
}

/// A gRPC client over a Unix socket.
pub async fn client(socket: &Path) -> GpuKillServiceClient<Channel> {
    GpuKillServiceClient::new(channel(socket).await)
}

/// A gRPC channel over a Unix socket.
pub async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to gpukilld")
}

/// A real process that a test puts "on a GPU"; killed on drop.
pub struct Target {
    pub child: Child,
    pub uid: u32,
}

impl Target {
    /// `sleep 600` as `uid` (None: as the test's own uid).
    pub fn sleep(uid: Option<u32>) -> Target {
        Target::spawn(uid, "/bin/sleep", &["600"])
    }

    /// A shell that ignores SIGTERM, as `uid`.
    pub fn stubborn(uid: Option<u32>) -> Target {
        let target = Target::spawn(
            uid,
            "/bin/sh",
            &["-c", "trap '' TERM; while :; do sleep 0.05; done"],
        );
        // Let the shell install its trap before anyone signals it.
        std::thread::sleep(Duration::from_millis(100));
        target
    }

    /// `program` with `args`, as `uid` (None: as the test's own uid).
    pub fn spawn(uid: Option<u32>, program: &str, args: &[&str]) -> Target {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().expect("spawn target");
        Target {
            child,
            uid: uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits up to `timeout` for the process to exit; true when it did.
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.alive()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the calling test unless it runs as root, naming what it needs root for: `why`
/// completes "it ...". A test that needs root fails loudly without it, never passes untested.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it {why} (run scripts/test as root)"
    );
}

/// The uid tests use for "another user": nobody's. Running processes as another uid needs
/// root, so this fails the test when not root rather than quietly using our own uid.
pub fn other_uid() -> u32 {
    require_root("runs processes as another user (nobody)");
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw())
        .expect("this test needs the user nobody (getent passwd nobody) to run processes as")
}

/// The user name /etc/passwd gives `uid`.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Reads a child's stdout to the end (for tests that kill a watcher).
pub fn read_all(mut reader: impl Read) -> String {
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    text
}

pub const MIB: u64 = 1024 * 1024;

/// A GPU object for a scenario with every metric present, and healthy: its volatile ECC
/// errors are all corrected (an uncorrected one would make it critical and drain it).
pub fn full_gpu(index: u32, processes: Value) -> Value {
    serde_json::json!({
        "uuid": format!("GPU-00000000-0000-4000-8000-00000000000{index}"),
        "name": "NVIDIA A100-SXM4-80GB",
        "pci_bus_id": format!("00000000:{:02X}:00.0", index + 7),
        "memory_total_bytes": 81920 * MIB,
        "memory_used_bytes": 1536 * MIB,
        "utilization_gpu_pct": 50,
        "utilization_memory_pct": 20,
        "temperature_c": 41,
        "power_mw": 250500,
        "fan_speed_pct": 30,
        "clock_sm_mhz": 1410,
        "clock_mem_mhz": 1593,
        "ecc_volatile_corrected": 3,
        "ecc_volatile_uncorrected": 0,
        "mig_enabled": false,
        "multi_gpu_board": false,
        "processes": processes,
    })
}
