//! GPU reservations end to end: real uids running gpukillctl (reserve, release, run), real
//! commands on the granted GPUs, real signals, the fake NVML's GPUs and processes, and the
//! daemon's store across a restart.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu, shared_gpukillctl};

/// Unprivileged uids without passwd entries (their names are the numbers).
const ALICE: u32 = 4242;
const BOB: u32 = 4343;
/// The heartbeat timeout of these tests' daemons.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

const CONFIG: &str = "[reservations]\nheartbeat_interval = \"200ms\"\nheartbeat_timeout = \"2s\"\n";

/// `count` idle GPUs, with `processes` (GPU, pid, MiB) on them.
fn gpus(count: u32, processes: &[(u32, u32, u64)]) -> Value {
    let gpus: Vec<Value> = (0..count)
        .map(|index| {
            let on: Vec<Value> = processes
                .iter()
                .filter(|(gpu, _, _)| *gpu == index)
                .map(|(_, pid, mib)| json!({"pid": pid, "used_memory_bytes": mib * MIB}))
                .collect();
            full_gpu(index, json!(on))
        })
        .collect();
    json!({ "gpus": gpus })
}

fn uuid(index: u32) -> String {
    format!("GPU-00000000-0000-4000-8000-00000000000{index}")
}

fn start(scenario: &Value, extra: &str) -> Daemon {
    Daemon::start_with(
        scenario,
        DaemonOptions {
            config: format!("{CONFIG}{extra}"),
            ..DaemonOptions::default()
        },
    )
}

/// gpukillctl against `daemon` as `uid`, in its own process group (so a test can signal
/// the client and its command together), with `USER`/`LOGNAME` set to lie about who it is.
fn ctl(daemon: &Daemon, uid: u32, args: &[&str]) -> Command {
    let mut command = Command::new(shared_gpukillctl());
    command
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .uid(uid)
        .gid(uid)
        .env("USER", "alice")
        .env("LOGNAME", "alice")
        .stdin(Stdio::null())
        .process_group(0);
    command
}

fn ctl_output(daemon: &Daemon, uid: u32, args: &[&str]) -> Output {
    ctl(daemon, uid, args).output().expect("run gpukillctl")
}

/// `run --gpus 1 -- /bin/sleep 600` as `uid`, in the background (its own process group).
fn sleeping_run(daemon: &Daemon, uid: u32) -> std::process::Child {
    ctl(
        daemon,
        uid,
        &["run", "--gpus", "1", "--", "/bin/sleep", "600"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn run")
}

/// The Reservations rpc, as root.
fn status(socket: &Path) -> pb::ReservationsResponse {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            support::client(socket)
                .await
                .reservations(pb::ReservationsRequest {})
                .await
                .expect("Reservations")
                .into_inner()
        })
}

fn state_of(response: &pb::ReservationsResponse, index: u32) -> pb::GpuReservation {
    response
        .gpus
        .iter()
        .find(|gpu| gpu.gpu.as_ref().map(|g| g.index) == Some(index))
        .cloned()
        .expect("the GPU is listed")
}

/// Polls status until `accept` takes it, up to `timeout`.
fn wait_status(
    daemon: &Daemon,
    timeout: Duration,
    accept: impl Fn(&pb::ReservationsResponse) -> bool,
) -> pb::ReservationsResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let now = status(&daemon.socket);
        if accept(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "status never came: {now:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reservation_events(daemon: &Daemon) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| event["type"] == "reservation")
        .collect()
}

/// A directory every test uid may write to.
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

#[test]
fn two_users_running_at_the_same_moment_get_disjoint_gpus_every_time() {
    let daemon = start(&gpus(8, &[]), "");
    let dir = shared_dir();
    for round in 0..100 {
        let runs: Vec<(std::process::Child, std::path::PathBuf)> = [ALICE, BOB]
            .iter()
            .map(|uid| {
                let out = dir.path().join(format!("{round}-{uid}"));
                let script = format!(
                    "echo \"$CUDA_VISIBLE_DEVICES\" > {}; sleep 0.1",
                    out.display()
                );
                let child = ctl(
                    &daemon,
                    *uid,
                    &[
                        "run",
                        "--gpus",
                        "4",
                        "--nonblock",
                        "--",
                        "/bin/sh",
                        "-c",
                        &script,
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn run");
                (child, out)
            })
            .collect();
        let mut seen = Vec::new();
        for (child, out) in runs {
            let output = child.wait_with_output().expect("wait run");
            assert!(
                output.status.success(),
                "round {round}: {:?} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let devices = std::fs::read_to_string(&out).expect("the command ran");
            let devices: Vec<String> = devices.trim().split(',').map(str::to_owned).collect();
            assert_eq!(devices.len(), 4, "round {round}: {devices:?}");
            seen.extend(devices);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8, "round {round}: the two runs shared a GPU");
        // Both released when their commands ended.
        wait_status(&daemon, Duration::from_secs(5), |s| {
            s.gpus.iter().all(|g| g.reservation.is_none())
        });
    }
}

#[test]
fn run_sees_the_uuids_returns_the_exit_code_and_a_killed_client_releases_at_once() {
    let daemon = start(&gpus(4, &[]), "");
    let output = ctl_output(
        &daemon,
        ALICE,
        &[
            "run",
            "--gpus",
            "2",
            "--",
            "/bin/sh",
            "-c",
            "echo \"$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER\"; exit 7",
        ],
    );
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (devices, order) = stdout.trim().split_once(' ').expect("two words");
    assert_eq!(order, "PCI_BUS_ID");
    let devices: Vec<&str> = devices.split(',').collect();
    assert_eq!(devices.len(), 2, "{stdout}");
    let all: Vec<String> = (0..4).map(uuid).collect();
    assert!(
        devices.iter().all(|d| all.iter().any(|u| u == d)),
        "{devices:?}"
    );

    // A run whose client dies with SIGKILL: released when the stream breaks.
    let mut client = sleeping_run(&daemon, ALICE);
    let held = wait_status(&daemon, Duration::from_secs(5), |s| {
        s.gpus.iter().any(|g| g.reservation.is_some())
    });
    let reservation = held
        .gpus
        .iter()
        .find_map(|g| g.reservation.clone())
        .expect("held");
    assert_eq!(reservation.uid, ALICE);
    assert_eq!(reservation.kind, pb::ReservationKind::Run as i32);
    assert!(reservation.attached);
    assert_eq!(reservation.note, "/bin/sleep 600");
    let killed = Instant::now();
    let group = nix::unistd::Pid::from_raw(client.id() as i32);
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let _ = client.wait();
    wait_status(&daemon, HEARTBEAT_TIMEOUT, |s| {
        s.gpus.iter().all(|g| g.reservation.is_none())
    });
    eprintln!("kill -9 of the client to release: {:?}", killed.elapsed());
    // The orphaned sleep goes too.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let events = reservation_events(&daemon);
    let released = events.iter().filter(|e| e["outcome"] == "released").count();
    assert_eq!(released, 3, "{events:#?}");
}

#[test]
fn another_user_cannot_release_a_reservation_whatever_their_environment_says() {
    let daemon = start(&gpus(4, &[]), "");
    let reserved = ctl_output(
        &daemon,
        ALICE,
        &[
            "reserve",
            "--gpu-ids",
            "1",
            "--duration",
            "1h",
            "--note",
            "paper",
        ],
    );
    assert!(reserved.status.success(), "{reserved:?}");
    // Bob, with USER=alice in his environment.
    let refused = ctl_output(&daemon, BOB, &["release", "--gpu-ids", "1"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("reserved by 4242"), "{message}");
    // Without ids, Bob's own reservations: none.
    let nothing = ctl_output(&daemon, BOB, &["release"]);
    assert!(nothing.status.success(), "{nothing:?}");
    let held = state_of(&status(&daemon.socket), 1);
    let reservation = held.reservation.expect("still held");
    assert_eq!(
        (reservation.uid, reservation.note.as_str()),
        (ALICE, "paper")
    );
    // A reservation of Bob's is refused on Alice's GPU, and changes nothing.
    let taken = ctl_output(&daemon, BOB, &["reserve", "--gpu-ids", "1"]);
    assert_eq!(taken.status.code(), Some(7), "{taken:?}");
    // Root is an admin.
    let admin = daemon.ctl(&["release", "--gpu-ids", "1"]);
    assert!(admin.status.success(), "{admin:?}");
    assert!(state_of(&status(&daemon.socket), 1).reservation.is_none());
    let events = reservation_events(&daemon);
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["caller_user"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("reserve GPU 1", "4242"), ("release GPU 1", "root")],
        "{events:#?}"
    );
}

#[test]
fn a_manual_reservation_expires_on_time_with_nobody_asking() {
    let daemon = start(&gpus(2, &[]), "");
    let reserved = ctl_output(
        &daemon,
        ALICE,
        &["reserve", "--gpus", "1", "--duration", "2s"],
    );
    assert!(reserved.status.success(), "{reserved:?}");
    // Nobody calls status: the expiry is in the audit trail on its own.
    std::thread::sleep(Duration::from_secs(3));
    let events = reservation_events(&daemon);
    let time = |outcome: &str| {
        let event = events
            .iter()
            .find(|e| e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} event: {events:#?}"));
        event["time_unix_ms"].as_i64().expect("time")
    };
    let late = time("expired") - time("ok") - 2000;
    assert!(
        (0..1000).contains(&late),
        "expired {late} ms after its time"
    );
    assert!(
        status(&daemon.socket)
            .gpus
            .iter()
            .all(|g| g.reservation.is_none())
    );
}

#[test]
fn wrong_user_use_is_shown_and_terminated_in_hard_mode() {
    let mut squatter = Target::sleep(Some(BOB));
    let mut free_rider = Target::sleep(Some(BOB));
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_dir.path().join("guard.toml");
    std::fs::write(
        &policy,
        "mode = \"hard\"\nmin_duration = \"1s\"\n[reservation]\nenforce = true\n",
    )
    .expect("policy");
    let daemon = Daemon::start_with(
        &gpus(3, &[]),
        DaemonOptions {
            config: CONFIG.to_owned(),
            env: vec![("GPUKILL_GUARD_POLICY".into(), policy.display().to_string())],
            ..DaemonOptions::default()
        },
    );
    let reserved = ctl_output(&daemon, ALICE, &["reserve", "--gpu-ids", "0"]);
    assert!(reserved.status.success(), "{reserved:?}");
    // Bob runs 2 GiB on Alice's GPU 0 and 4 GiB on the unreserved GPU 2.
    daemon.set_scenario(&gpus(
        3,
        &[(0, squatter.pid(), 2048), (2, free_rider.pid(), 4096)],
    ));
    let seen = wait_status(&daemon, Duration::from_secs(5), |s| {
        state_of(s, 0).state == pb::ReservationState::WrongUser as i32
    });
    let wrong = state_of(&seen, 0);
    assert_eq!(wrong.misuse[0].pid, squatter.pid());
    assert_eq!(wrong.misuse[0].uid, BOB);
    assert_eq!(
        state_of(&seen, 2).state,
        pb::ReservationState::UnreservedUse as i32
    );
    assert!(
        squatter.exits_within(Duration::from_secs(5)),
        "the squatter still runs"
    );
    assert!(
        free_rider.exits_within(Duration::from_secs(5)),
        "the free rider still runs"
    );
    let kills: Vec<Value> = daemon
        .events_json()
        .into_iter()
        .filter(|e| e["type"] == "kill")
        .collect();
    assert_eq!(kills.len(), 2, "{kills:#?}");
    assert!(
        kills
            .iter()
            .all(|k| k["action"] == "guard hard: reservation"),
        "{kills:#?}"
    );
    let reasons: Vec<&str> = kills.iter().filter_map(|k| k["reason"].as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("on 4242's reservation of GPU 0")),
        "{reasons:?}"
    );
}

#[test]
fn a_restart_keeps_manual_reservations_and_ends_runs_that_do_not_come_back() {
    let scenario = gpus(4, &[]);
    let daemon = start(&scenario, "");
    let reserved = ctl_output(
        &daemon,
        ALICE,
        &[
            "reserve",
            "--gpus",
            "2",
            "--duration",
            "4h",
            "--note",
            "sweep",
        ],
    );
    assert!(reserved.status.success(), "{reserved:?}");
    let before = status(&daemon.socket);
    // A run whose client will not come back: it dies while the daemon is down.
    let mut client = sleeping_run(&daemon, ALICE);
    wait_status(&daemon, Duration::from_secs(5), |s| {
        s.gpus.iter().filter(|g| g.reservation.is_some()).count() == 3
    });
    let socket = daemon.socket.clone();
    let (_, dir) = daemon.stop_keeping_dir();
    let group = nix::unistd::Pid::from_raw(client.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = client.wait();
    let daemon = Daemon::start_on(
        dir,
        socket,
        &scenario,
        DaemonOptions {
            config: CONFIG.to_owned(),
            ..DaemonOptions::default()
        },
    );
    let restarted = Instant::now();
    let after = status(&daemon.socket);
    let run = after
        .gpus
        .iter()
        .filter_map(|g| g.reservation.as_ref())
        .find(|r| r.kind == pb::ReservationKind::Run as i32)
        .expect("the run reservation is back, waiting for its client");
    assert!(!run.attached, "{run:#?}");
    // Its client does not reconnect: released after the heartbeat timeout.
    let after = wait_status(&daemon, HEARTBEAT_TIMEOUT * 2, |s| {
        s.gpus.iter().filter(|g| g.reservation.is_some()).count() == 2
    });
    let waited = restarted.elapsed();
    assert!(
        waited >= HEARTBEAT_TIMEOUT - Duration::from_millis(500),
        "{waited:?}"
    );
    let lapsed = reservation_events(&daemon).into_iter().find(|e| {
        e["outcome"] == "expired"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("did not reconnect"))
    });
    assert!(lapsed.is_some(), "{:#?}", reservation_events(&daemon));
    let held = |s: &pb::ReservationsResponse| -> Vec<(u32, u32, String, Option<i64>)> {
        s.gpus
            .iter()
            .filter_map(|g| g.reservation.as_ref())
            .map(|r| {
                (
                    r.gpu.as_ref().map_or(99, |g| g.index),
                    r.uid,
                    r.note.clone(),
                    r.expires_unix_ms,
                )
            })
            .collect()
    };
    assert_eq!(held(&after).len(), 2, "{after:#?}");
    assert_eq!(held(&after), held(&before));
}

#[test]
fn a_node_where_nobody_reserves_calls_a_used_gpu_busy_until_someone_does() {
    let worker = Target::sleep(Some(BOB));
    let daemon = start(&gpus(2, &[]), "");
    // Bob uses 4 GiB of GPU 1; nobody has ever reserved a GPU here.
    daemon.set_scenario(&gpus(2, &[(1, worker.pid(), 4096)]));
    let seen = wait_status(&daemon, Duration::from_secs(5), |s| {
        state_of(s, 1).state == pb::ReservationState::UnreservedUse as i32
    });
    assert!(!seen.reservations_used);
    let text = ctl_output(&daemon, ALICE, &["status"]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("BUSY, used by {BOB}: pid {}", worker.pid())),
        "{text}"
    );
    assert!(!text.contains("UNRESERVED"), "{text}");
    // Alice reserves GPU 0: the node now uses reservations, and Bob's use of GPU 1 is
    // unreserved use.
    let reserved = ctl_output(&daemon, ALICE, &["reserve", "--gpu-ids", "0"]);
    assert!(reserved.status.success(), "{reserved:?}");
    let json = ctl_output(&daemon, ALICE, &["status", "-o", "json"]);
    let json: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["reservations_used"], json!(true));
    let text = ctl_output(&daemon, ALICE, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("UNRESERVED USE by {BOB}: pid {}", worker.pid())),
        "{text}"
    );
    // Released, it is still remembered: a node that used reservations keeps using them.
    let released = ctl_output(&daemon, ALICE, &["release"]);
    assert!(released.status.success(), "{released:?}");
    assert!(status(&daemon.socket).reservations_used);
}
