//! Store faults on real filesystems: the state directory turns read-only under the running
//! daemon (an ext4 error, which the kernel answers by making the filesystem read-only, as
//! it does for a failing disk) or fills up. Live `list` keeps answering, `Health` reports
//! the store degraded with the error, and history writes resume, the intervals queued
//! meanwhile included, once the cause is gone.
//!
//! A filesystem cannot be remounted read-only while a process holds a file on it open for
//! writing (`mount -o remount,ro` says busy), so the read-only fault is the kernel's own:
//! `errors=remount-ro` and ext4's `trigger_fs_error`. Undoing it takes what an admin does:
//! unmount, e2fsck, mount again; the unmount only works once the daemon has let go of the
//! broken filesystem.
//!
//! These tests mount filesystems and so need root (CI runs as root); as another user they
//! fail and say so.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gpukill_proto::v1 as pb;
use serde_json::json;
use support::{Daemon, DaemonOptions, full_gpu};

/// The persist interval: one history row per GPU per second.
const PERSIST_INTERVAL: &str = "1s";

/// How long the daemon gets to notice a fault, and to recover from one.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Runs `program` with `args`, returning its output; fails the test when it cannot start.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

/// Runs `program` with `args` and fails the test, with its output, unless it succeeds.
fn run_ok(program: &str, args: &[&str]) {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// The kind of filesystem a test mounts for the daemon's state directory.
enum Disk {
    /// ext4 in an image file on a loop device, with `errors=remount-ro`.
    Ext4 { image: PathBuf },
    /// tmpfs of a fixed size.
    Tmpfs,
}

/// A filesystem mounted at `<temp dir>/state` for one test. Unmounted on drop (lazily, when
/// still busy): declare it before the daemon that uses it, so the daemon stops first.
struct Mounted {
    disk: Disk,
    point: PathBuf,
    /// Holds the image and the mount point; removed after the unmount.
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// A fresh ext4 filesystem of `mib` MiB; fails the test when not root.
    fn ext4(mib: u64) -> Mounted {
        must_mount();
        let dir = temp_dir();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(mib * 1024 * 1024))
            .expect("create the disk image");
        run_ok("mkfs.ext4", &["-q", "-F", path_arg(&image)]);
        let point = dir.path().join("state");
        std::fs::create_dir(&point).expect("mount point");
        let mounted = Mounted {
            disk: Disk::Ext4 { image },
            point,
            _dir: dir,
        };
        mounted.mount();
        mounted
    }

    /// A tmpfs of `size` (as mount's `size=` takes it); fails the test when not root.
    fn tmpfs(size: &str) -> Mounted {
        must_mount();
        let dir = temp_dir();
        let point = dir.path().join("state");
        std::fs::create_dir(&point).expect("mount point");
        run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                path_arg(&point),
            ],
        );
        Mounted {
            disk: Disk::Tmpfs,
            point,
            _dir: dir,
        }
    }

    fn point(&self) -> &Path {
        &self.point
    }

    fn image(&self) -> &Path {
        match &self.disk {
            Disk::Ext4 { image } => image,
            Disk::Tmpfs => panic!("a tmpfs has no image"),
        }
    }

    fn mount(&self) {
        run_ok(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "loop,errors=remount-ro",
                path_arg(self.image()),
                path_arg(&self.point),
            ],
        );
    }

    /// The mounted device, as /proc/self/mounts names it (`/dev/loop3`).
    fn device(&self) -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
        let point = path_arg(&self.point);
        mounts.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            (fields.next()? == point).then(|| device.to_string())
        })
    }

    /// Makes the kernel see an ext4 error on this filesystem; with `errors=remount-ro` it
    /// turns the filesystem read-only at once, open files included.
    fn break_read_only(&self) {
        let device = self.device().expect("mounted");
        let name = device.rsplit('/').next().expect("device name");
        std::fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "gpukill store_faults test",
        )
        .expect("trigger an ext4 error");
        let error = std::fs::File::create(self.point.join("probe"))
            .expect_err("the filesystem is read-only after the error");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ReadOnlyFilesystem,
            "{error}"
        );
    }

    /// Repairs the filesystem as an admin would: unmount (which only works once no process
    /// has a file on it open), e2fsck, mount again. `daemon` names what still holds it.
    fn repair(&self, daemon: &Daemon) {
        let deadline = Instant::now() + NOTICE_TIMEOUT;
        loop {
            let output = run("umount", &[path_arg(&self.point)]);
            if output.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cannot unmount the broken filesystem in {NOTICE_TIMEOUT:?} ({}): the daemon \
                 still holds {:?}\ndaemon log:\n{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                open_files_under(daemon.pid(), &self.point),
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Unmounted, the state dir is an empty directory: the daemon must not start a new
        // store there (it would write into a file the mount then hides).
        std::thread::sleep(Duration::from_millis(600));
        let database = self.point.join("gpukill.db");
        assert!(
            !database.exists(),
            "the daemon created {} on the bare mount point",
            database.display()
        );
        let problems = store_problems(&daemon.health());
        eprintln!("... and while it is unmounted: {problems:?}");
        assert!(!problems.is_empty(), "the store is still missing");
        let output = run("e2fsck", &["-f", "-y", path_arg(self.image())]);
        // 0: clean; 1: errors corrected (the error state the test caused, at least).
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "e2fsck failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.mount();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.device().is_none() {
            return;
        }
        let point = path_arg(&self.point);
        if !run("umount", &[point]).status.success() {
            let lazy = run("umount", &["-l", point]);
            if !lazy.status.success() {
                eprintln!(
                    "cannot unmount {point}: {}",
                    String::from_utf8_lossy(&lazy.stderr)
                );
            }
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gpukill-store-faults-")
        .tempdir()
        .expect("temp dir")
}

/// Fails the test unless this process may mount filesystems.
fn must_mount() {
    support::require_root("mounts filesystems (ext4 on a loop device, tmpfs) as the state dir");
}

/// The files under `dir` that process `pid` has open.
fn open_files_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir))
                .collect()
        })
        .unwrap_or_default()
}

/// A daemon on one GPU with its state in `state_dir`, persisting every second.
fn start_daemon(state_dir: &Path) -> Daemon {
    Daemon::start_with(
        &json!({"gpus": [full_gpu(0, json!([]))]}),
        DaemonOptions {
            config: format!("state_dir = {state_dir:?}\n"),
            env: vec![("GPUKILL_PERSIST_INTERVAL".into(), PERSIST_INTERVAL.into())],
            ..DaemonOptions::default()
        },
    )
}

/// The problems Health reports about the store.
fn store_problems(health: &pb::HealthResponse) -> Vec<String> {
    health
        .problems
        .iter()
        .filter(|problem| problem.contains("store") || problem.contains("history"))
        .cloned()
        .collect()
}

/// Live data: `list` answers with GPU 0 and a fresh snapshot; returns its sequence number.
fn live_sequence(daemon: &Daemon) -> u64 {
    let list = daemon.list_json(&[]);
    assert_eq!(list["gpus"][0]["gpu_index"], json!(0), "{list:#}");
    assert_eq!(list["gpus"][0]["util_pct"], json!(50), "{list:#}");
    assert_eq!(list["stale"], json!(false), "{list:#}");
    list["seq"].as_u64().expect("seq")
}

/// Polls Health, and `list` between, until the store is reported degraded; returns the
/// store's problem lines.
fn wait_until_degraded(daemon: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        live_sequence(daemon);
        let health = daemon.health();
        let problems = store_problems(&health);
        if !problems.is_empty() {
            assert_eq!(health.state(), pb::ServingState::Degraded, "{health:?}");
            return problems;
        }
        assert!(
            Instant::now() < deadline,
            "Health did not report the store degraded in {NOTICE_TIMEOUT:?}: {health:?}\n\
             daemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// While the store is degraded, `list` keeps answering with new snapshots for `period`,
/// and Health keeps saying why; returns every store problem line it said.
fn keeps_serving_live_data(daemon: &Daemon, period: Duration) -> Vec<String> {
    let first = live_sequence(daemon);
    let deadline = Instant::now() + period;
    let mut last = first;
    let mut said: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        last = live_sequence(daemon);
        let health = daemon.health();
        let problems = store_problems(&health);
        assert!(
            !problems.is_empty(),
            "the store is still broken: {health:?}"
        );
        for problem in problems {
            if !said.contains(&problem) {
                said.push(problem);
            }
        }
    }
    assert!(
        last >= first + 5,
        "the sampler went on while the store was broken: seq {first} -> {last}"
    );
    said
}

/// Polls Health until it no longer reports a problem with the store, and is serving.
fn wait_until_recovered(daemon: &Daemon) {
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        let health = daemon.health();
        if store_problems(&health).is_empty() {
            assert_eq!(health.state(), pb::ServingState::Serving, "{health:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not recover in {NOTICE_TIMEOUT:?}: {health:?}\ndaemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The start times of GPU 0's stored history intervals, as `gpukillctl history` shows them.
fn history_times(daemon: &Daemon) -> Vec<i64> {
    daemon.ctl_json(&["history", "--gpu", "0", "--hours", "1", "--output", "json"])["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|sample| sample["time_unix_ms"].as_i64().expect("time_unix_ms"))
        .collect()
}

/// Waits until `history` shows an interval that starts at or after `since_ms`.
fn wait_for_history_since(daemon: &Daemon, since_ms: i64) -> Vec<i64> {
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        let times = history_times(daemon);
        if times.iter().any(|&time| time >= since_ms) {
            return times;
        }
        assert!(
            Instant::now() < deadline,
            "no history interval from {since_ms} on in {NOTICE_TIMEOUT:?}: {times:?}\n\
             daemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the fault is gone: Health is serving again, the intervals sampled during the fault
/// were kept and written, and new ones follow.
fn writes_resume(daemon: &Daemon, fault_ms: i64, fixed_ms: i64) {
    wait_until_recovered(daemon);
    let times = wait_for_history_since(daemon, fixed_ms);
    let persist_ms = 1000;
    assert!(
        times
            .iter()
            .any(|&time| time >= fault_ms && time + persist_ms <= fixed_ms),
        "the intervals sampled while the store was broken ({fault_ms}..{fixed_ms}) were \
         not written after it recovered: {times:?}"
    );
    live_sequence(daemon);
}

/// Whether SQLite finds the database intact.
fn integrity(database: &Path) -> String {
    rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the store")
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check")
}

#[test]
fn a_read_only_state_dir_at_runtime_degrades_the_store_and_writes_resume_after_repair() {
    let disk = Mounted::ext4(32);
    let daemon = start_daemon(disk.point());
    wait_for_history_since(&daemon, 0);
    // What was written so far is on the disk before it breaks.
    run_ok("sync", &["-f", path_arg(disk.point())]);

    let fault_ms = now_ms();
    disk.break_read_only();
    let problems = wait_until_degraded(&daemon);
    eprintln!("Health with a read-only state dir: {problems:?}");
    let text = problems.join("\n").to_lowercase();
    assert!(
        text.contains("store degraded")
            && ["readonly", "read-only", "i/o error"]
                .iter()
                .any(|error| text.contains(error)),
        "Health names the store and the error: {problems:?}"
    );
    let said = keeps_serving_live_data(&daemon, Duration::from_secs(2));
    eprintln!("... and while it stays read-only: {said:?}");

    disk.repair(&daemon);
    let fixed_ms = now_ms();
    writes_resume(&daemon, fault_ms, fixed_ms);

    let (status, _dir) = daemon.stop_keeping_dir();
    assert!(status.success());
    assert_eq!(integrity(&disk.point().join("gpukill.db")), "ok");
}

#[test]
fn a_full_state_dir_degrades_the_store_and_writes_resume_when_space_is_freed() {
    let disk = Mounted::tmpfs("8m");
    let daemon = start_daemon(disk.point());
    wait_for_history_since(&daemon, 0);

    let fault_ms = now_ms();
    let filler = disk.point().join("filler");
    fill(&filler);
    let problems = wait_until_degraded(&daemon);
    eprintln!("Health with a full state dir: {problems:?}");
    let text = problems.join("\n").to_lowercase();
    assert!(
        text.contains("store degraded") && text.contains("full"),
        "Health names the store and the error: {problems:?}"
    );
    let said = keeps_serving_live_data(&daemon, Duration::from_secs(2));
    eprintln!("... and while it stays full: {said:?}");

    std::fs::remove_file(&filler).expect("remove the filler");
    let fixed_ms = now_ms();
    writes_resume(&daemon, fault_ms, fixed_ms);

    let (status, _dir) = daemon.stop_keeping_dir();
    assert!(status.success());
    assert_eq!(integrity(&disk.point().join("gpukill.db")), "ok");
}

/// Writes zeros to `path` until the filesystem has no room left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => return,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}
