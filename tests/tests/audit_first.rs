//! No record, no kill: the audit record of a kill is written before any signal, and when it
//! cannot be (a full state directory, a database deleted under the running daemon) the kill
//! is refused, the target lives, and Health says why. Real binaries, real uids, a real full
//! filesystem (a 4 MiB tmpfs filled with dd).
//!
//! These tests mount filesystems and switch uids: they must run as root (CI does).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

/// The victim's owner: an unprivileged uid without a passwd entry.
const ALICE: u32 = 4242;

/// The exit code gpukillctl documents for FAILED_PRECONDITION (the daemon cannot do this
/// now): what a kill refused for want of an audit record gets.
const REFUSED: i32 = 5;

/// How long the daemon gets to notice a fault, and to recover from one.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

fn must_be_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the audit-first tests mount filesystems and switch uids: run them as root (CI does)"
    );
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

/// A 4 MiB tmpfs at `<temp dir>/state`, unmounted on drop (lazily when still busy): declare
/// it before the daemon, so the daemon stops first.
struct Tmpfs {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("gpukill-audit-first-")
            .tempdir()
            .expect("temp dir");
        let point = dir.path().join("state");
        std::fs::create_dir(&point).expect("mount point");
        let output = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=4m,mode=0755",
                "tmpfs",
                path_arg(&point),
            ],
        );
        assert!(
            output.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { point, _dir: dir }
    }

    /// Fills the filesystem with `dd` until it stops with ENOSPC.
    fn fill(&self) -> PathBuf {
        let filler = self.point.join("fill");
        let output = run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", path_arg(&filler)),
                "bs=64k",
            ],
        );
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && said.contains("No space left"),
            "dd did not stop at a full filesystem: {said}"
        );
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let point = path_arg(&self.point);
        if !run("umount", &[point]).status.success() {
            let _ = run("umount", &["-l", point]);
        }
    }
}

fn on_gpu(target: &Target) -> Value {
    json!({"gpus": [full_gpu(0, json!([{"pid": target.pid(), "used_memory_bytes": 100 * MIB}]))]})
}

/// A daemon with its state in `state_dir` (None: its own temp dir), persisting every second.
fn start_daemon(scenario: &Value, state_dir: Option<&Path>) -> Daemon {
    Daemon::start_with(
        scenario,
        DaemonOptions {
            config: state_dir
                .map(|dir| format!("state_dir = {dir:?}\n"))
                .unwrap_or_default(),
            env: vec![("GPUKILL_PERSIST_INTERVAL".into(), "1s".into())],
            ..DaemonOptions::default()
        },
    )
}

/// Polls Health until the store is in `state`; returns that Health.
fn wait_for_store(daemon: &Daemon, state: pb::StoreState) -> pb::HealthResponse {
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        let health = daemon.health();
        if health
            .store
            .as_ref()
            .is_some_and(|store| store.state() == state)
        {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "the store was not {state:?} in {NOTICE_TIMEOUT:?}: {health:?}\ndaemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `gpukillctl kill --pid` as `uid`.
fn kill_as(daemon: &Daemon, uid: u32, pid: u32) -> Output {
    daemon.ctl_as(
        uid,
        &["kill", "--pid", &pid.to_string(), "--output", "json"],
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// The events about `pid`, as root's `gpukillctl events` shows them.
fn events_for(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| event["target"]["pid"] == json!(pid))
        .collect()
}

/// Asserts that the victim is still running a moment after a refused kill.
fn still_alive(victim: &mut Target) {
    std::thread::sleep(Duration::from_millis(500));
    assert!(victim.alive(), "a refused kill signalled nothing");
}

#[test]
fn a_full_state_dir_refuses_a_kill_and_kills_once_space_is_freed() {
    must_be_root();
    let disk = Tmpfs::mount();
    let mut victim = Target::sleep(Some(ALICE));
    let daemon = start_daemon(&on_gpu(&victim), Some(&disk.point));
    let database = disk.point.join("gpukill.db");
    wait_for_store(&daemon, pb::StoreState::Ok);
    let events_before = daemon.events_json().len();

    let filler = disk.fill();
    // The history writes meet the full disk within a persist interval.
    let health = wait_for_store(&daemon, pb::StoreState::Degraded);
    let store = health.store.expect("store");
    assert_eq!(store.path, database.display().to_string());
    assert!(store.message.contains("full"), "{store:?}");

    let refused = kill_as(&daemon, ALICE, victim.pid());
    let said = stderr(&refused);
    assert_eq!(refused.status.code(), Some(REFUSED), "{said}");
    assert!(
        said.contains("nothing was signalled")
            && said.contains(&database.display().to_string())
            && said.contains("full")
            && said.contains("free space"),
        "the refusal names the store, the error and what to do: {said}"
    );
    still_alive(&mut victim);
    // Nothing else changed: live data is served, and the store holds no trace of the kill.
    let list = daemon.list_json(&[]);
    assert_eq!(list["procs"][0]["pid"], json!(victim.pid()), "{list:#}");
    assert!(events_for(&daemon, victim.pid()).is_empty());
    assert_eq!(daemon.events_json().len(), events_before);

    std::fs::remove_file(&filler).expect("remove the filler");
    wait_for_store(&daemon, pb::StoreState::Ok);
    let killed = kill_as(&daemon, ALICE, victim.pid());
    assert_eq!(killed.status.code(), Some(0), "{}", stderr(&killed));
    assert!(victim.exits_within(Duration::from_secs(5)));
    let rows = events_for(&daemon, victim.pid());
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["type"], json!("kill"));
    assert_eq!(rows[0]["caller_uid"], json!(ALICE));
    assert_eq!(rows[0]["outcome"], json!("terminated"));
}

#[test]
fn a_deleted_database_refuses_kills_and_health_says_so() {
    must_be_root();
    let mut victim = Target::sleep(Some(ALICE));
    let daemon = start_daemon(&on_gpu(&victim), None);
    let state = daemon.dir.path().join("state");
    let database = state.join("gpukill.db");
    wait_for_store(&daemon, pb::StoreState::Ok);

    // rm gpukill.db*
    let mut removed = 0;
    for entry in std::fs::read_dir(&state).expect("state dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("gpukill.db") {
            std::fs::remove_file(&path).expect("rm");
            removed += 1;
        }
    }
    assert!(removed >= 2, "the database and its WAL were there");

    let health = wait_for_store(&daemon, pb::StoreState::Unavailable);
    assert_eq!(health.state(), pb::ServingState::Degraded, "{health:?}");
    let store = health.store.expect("store");
    assert!(
        store
            .message
            .contains(&format!("{} was deleted", database.display()))
            && store.message.contains("restart gpukilld"),
        "{store:?}"
    );
    assert!(
        health
            .problems
            .iter()
            .any(|problem| problem.contains("store unavailable, kill and reset are refused")),
        "{:?}",
        health.problems
    );

    let refused = kill_as(&daemon, ALICE, victim.pid());
    let said = stderr(&refused);
    assert_eq!(refused.status.code(), Some(REFUSED), "{said}");
    assert!(
        said.contains("nothing was signalled") && said.contains("was deleted"),
        "{said}"
    );
    still_alive(&mut victim);
    // Nothing else changed: live data is served, no new database was started silently,
    // and every background task still runs, none restarted.
    let list = daemon.list_json(&[]);
    assert_eq!(list["procs"][0]["pid"], json!(victim.pid()), "{list:#}");
    assert!(!database.exists(), "the daemon created a new database");
    let tasks = daemon.health().tasks;
    let names: Vec<&str> = tasks.iter().map(|task| task.name.as_str()).collect();
    for expected in ["sampler", "reservations", "guard", "reload", "recorder"] {
        assert!(
            names.contains(&expected),
            "Health lists {expected}: {tasks:?}"
        );
    }
    assert!(
        tasks
            .iter()
            .all(|task| task.state() == pb::TaskState::Running
                && task.restarts == 0
                && task.last_panic.is_none()),
        "{tasks:?}"
    );
    // Still refused a while later: the refusal lasts until the store is back.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        kill_as(&daemon, ALICE, victim.pid()).status.code(),
        Some(REFUSED)
    );
    still_alive(&mut victim);
}

#[test]
fn the_guard_does_not_kill_what_it_cannot_record() {
    must_be_root();
    let mut victim = Target::sleep(Some(ALICE));
    let pid = victim.pid();
    let with_memory = |mib: u64| json!({"gpus": [full_gpu(0, json!([{"pid": pid, "used_memory_bytes": mib * MIB}]))]});
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_dir.path().join("guard.toml");
    std::fs::write(
        &policy,
        "mode = \"hard\"\nmin_duration = \"1s\"\n[[user]]\nname = \"4242\"\nmax_memory_per_process = \"1GiB\"\n",
    )
    .expect("write policy");
    let daemon = Daemon::start_with(
        &with_memory(100),
        DaemonOptions {
            env: vec![("GPUKILL_GUARD_POLICY".into(), policy.display().to_string())],
            ..DaemonOptions::default()
        },
    );
    wait_for_store(&daemon, pb::StoreState::Ok);
    let state = daemon.dir.path().join("state");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("gpukill.db{suffix}")));
    }
    wait_for_store(&daemon, pb::StoreState::Unavailable);

    // Over its limit: the guard would kill it after min_duration (1 s) and two ticks.
    daemon.set_scenario(&with_memory(2048));
    std::thread::sleep(Duration::from_secs(4));
    assert!(victim.alive(), "the guard killed without an audit record");
    let log = daemon.log_text();
    assert!(
        log.contains("guard: not killing") && log.contains("was deleted"),
        "the journal says why: {log}"
    );
    // Nothing else changed: live data is served, with the victim still on its GPU.
    let list = daemon.list_json(&[]);
    assert_eq!(list["procs"][0]["pid"], json!(pid), "{list:#}");
}
