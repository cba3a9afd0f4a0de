//! The guard end to end: a policy file, real processes of real uids whose GPU memory the fake
//! NVML scenario changes over time, and what the daemon does about them in each mode.

mod support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

/// Unprivileged uids without passwd entries (their names are the numbers).
const ALICE: u32 = 4242;
const BOB: u32 = 4343;
/// The poll interval of these tests.
const TICK: Duration = Duration::from_millis(200);

/// A daemon with `policy` as its guard policy file; the file stays writable through the
/// returned path.
fn start(scenario: &Value, policy: &str) -> (Daemon, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guard.toml");
    std::fs::write(&path, policy).expect("write policy");
    let daemon = Daemon::start_with(
        scenario,
        DaemonOptions {
            env: vec![("GPUKILL_GUARD_POLICY".into(), path.display().to_string())],
            ..DaemonOptions::default()
        },
    );
    (daemon, dir, path)
}

/// GPU 0 with `processes`: (target pid, MiB).
fn gpu0(processes: &[(u32, u64)]) -> Value {
    let list: Vec<Value> = processes
        .iter()
        .map(|(pid, mib)| json!({"pid": pid, "used_memory_bytes": mib * MIB}))
        .collect();
    json!({"gpus": [full_gpu(0, json!(list))]})
}

fn events_of(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| event["target"]["pid"] == json!(pid))
        .collect()
}

/// Waits up to `timeout` for an event of `pid` that `accept` takes.
fn wait_event(
    daemon: &Daemon,
    pid: u32,
    timeout: Duration,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(event) = events_of(daemon, pid).into_iter().find(|e| accept(e)) {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no such event for pid {pid}: {:#?}",
            events_of(daemon, pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn guard_status(daemon: &Daemon) -> Value {
    daemon.ctl_json(&["guard", "status", "--output", "json"])
}

const HARD: &str = r#"
mode = "hard"
min_duration = "1s"
[[user]]
name = "4242"
max_memory_per_process = "1GiB"
"#;

#[test]
fn hard_mode_kills_a_process_that_grows_over_its_limit_within_min_duration_and_two_ticks() {
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let (daemon, _dir, _path) = start(&gpu0(&[(pid, 100)]), HARD);
    let status = guard_status(&daemon);
    assert_eq!(status["mode"], "hard", "{status:#}");
    std::thread::sleep(TICK * 3);
    assert!(target.alive(), "under the limit: untouched");

    let grown = Instant::now();
    daemon.set_scenario(&gpu0(&[(pid, 2048)]));
    // min_duration (1 s) + 2 ticks, plus the fake's reload and the signal's delivery.
    assert!(
        target.exits_within(Duration::from_secs(1) + TICK * 2 + Duration::from_millis(800)),
        "still running {:?} after growing; events: {:#?}",
        grown.elapsed(),
        events_of(&daemon, pid)
    );
    let took = grown.elapsed();
    // The decision is recorded as "signalling" before the signal, then its outcome.
    let kill = wait_event(&daemon, pid, Duration::from_secs(3), |e| {
        e["type"] == "kill" && e["outcome"] != "signalling"
    });
    assert_eq!(kill["caller_user"], "gpukilld-guard", "{kill:#}");
    assert_eq!(kill["transport"], "guard", "{kill:#}");
    assert_eq!(kill["outcome"], "terminated", "{kill:#}");
    let reason = kill["reason"].as_str().expect("reason");
    for part in [
        "memory_per_process",
        "[[user]] 4242",
        "2.0 GiB",
        "limit 1.0 GiB",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    eprintln!("violation to exit: {took:?}");
}

#[test]
fn dry_run_records_that_it_would_act_and_the_process_survives() {
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let policy = HARD.replace("mode = \"hard\"", "mode = \"dry-run\"");
    let (daemon, _dir, _path) = start(&gpu0(&[(pid, 2048)]), &policy);
    let event = wait_event(&daemon, pid, Duration::from_secs(5), |e| {
        e["type"] == "violation"
    });
    assert_eq!(event["outcome"], "would_act", "{event:#}");
    assert!(
        event["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("guard dry-run"))
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(target.alive(), "dry-run never acts");
    assert!(events_of(&daemon, pid).iter().all(|e| e["type"] != "kill"));
    // Once per violation, not once per tick.
    let violations = events_of(&daemon, pid).len();
    assert_eq!(violations, 1, "{:#?}", events_of(&daemon, pid));
}

#[test]
fn soft_mode_warns_spares_a_process_back_under_the_limit_and_kills_one_that_stays_over() {
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let policy = r#"
mode = "soft"
grace = "2s"
[[user]]
name = "4242"
max_memory_per_process = "1GiB"
"#;
    let (daemon, _dir, _path) = start(&gpu0(&[(pid, 100)]), policy);
    std::thread::sleep(TICK * 3);
    daemon.set_scenario(&gpu0(&[(pid, 2048)]));
    let warning = wait_event(&daemon, pid, Duration::from_secs(3), |e| {
        e["outcome"] == "warned"
    });
    assert_eq!(warning["type"], "violation");
    // Back under (well below the hysteresis band) within the grace: spared.
    daemon.set_scenario(&gpu0(&[(pid, 100)]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(target.alive(), "back under the limit within the grace");

    // Over again and staying over: a new warning, then the kill after the grace.
    daemon.set_scenario(&gpu0(&[(pid, 2048)]));
    let over_again = Instant::now();
    assert!(
        target.exits_within(Duration::from_secs(5)),
        "killed after the grace"
    );
    assert!(
        over_again.elapsed() >= Duration::from_millis(1800),
        "not before the grace: {:?}",
        over_again.elapsed()
    );
    let warnings = events_of(&daemon, pid)
        .into_iter()
        .filter(|e| e["outcome"] == "warned")
        .count();
    assert_eq!(warnings, 2);
    wait_event(&daemon, pid, Duration::from_secs(3), |e| {
        e["type"] == "kill" && e["outcome"] == "terminated"
    });
}

#[test]
fn protected_users_and_the_daemon_itself_are_never_killed_and_the_rate_limit_holds() {
    let mut bobs = Target::sleep(Some(BOB));
    let mut alices: Vec<Target> = (0..3).map(|_| Target::sleep(Some(ALICE))).collect();
    let policy = r#"
mode = "hard"
min_duration = "0s"
max_kills_per_minute = 2
protected_users = ["4343"]
[defaults]
max_memory_per_process = "1GiB"
"#;
    // Everyone over the limit, gpukilld itself included (the fake reports any pid).
    let scenario = |daemon_pid: u32| {
        let mut processes: Vec<(u32, u64)> = alices.iter().map(|t| (t.pid(), 2048)).collect();
        processes.push((bobs.pid(), 2048));
        processes.push((daemon_pid, 2048));
        gpu0(&processes)
    };
    let (daemon, _dir, _path) = start(&gpu0(&[]), policy);
    daemon.set_scenario(&scenario(daemon.pid()));

    let bob_event = wait_event(&daemon, bobs.pid(), Duration::from_secs(5), |e| {
        e["type"] == "kill"
    });
    assert_eq!(bob_event["outcome"], "protected", "{bob_event:#}");
    let own = wait_event(&daemon, daemon.pid(), Duration::from_secs(5), |e| {
        e["type"] == "kill"
    });
    assert_eq!(own["outcome"], "protected", "{own:#}");
    assert!(
        own["reason"]
            .as_str()
            .is_some_and(|r| r.contains("gpukilld itself")),
        "{own:#}"
    );

    // Two kills a minute: two of Alice's three go, the third is held back and recorded.
    std::thread::sleep(Duration::from_secs(3));
    let dead = alices
        .iter_mut()
        .map(|t| !t.alive())
        .filter(|dead| *dead)
        .count();
    assert!(bobs.alive());
    // The daemon's own (protected) attempt spends no kill; Bob's neither.
    assert_eq!(dead, 2, "the rate limit allows 2 kills a minute");
    let survivor = alices
        .iter_mut()
        .find_map(|t| t.alive().then(|| t.pid()))
        .expect("one survives");
    let held = wait_event(&daemon, survivor, Duration::from_secs(2), |e| {
        e["type"] == "violation"
    });
    assert_eq!(held["outcome"], "rate_limited", "{held:#}");
    let status = guard_status(&daemon);
    assert_eq!(status["max_kills_per_minute"], 2, "{status:#}");
}

#[test]
fn an_invalid_policy_at_reload_is_rejected_with_its_line_and_the_old_one_stays() {
    let target = Target::sleep(Some(ALICE));
    let (daemon, _dir, path) = start(&gpu0(&[(target.pid(), 100)]), HARD);
    assert_eq!(guard_status(&daemon)["mode"], "hard");

    std::fs::write(
        &path,
        "mode = \"soft\"\n\n[[user]]\nname = \"4242\"\nmax_memory_per_process = \"lots\"\n",
    )
    .expect("write");
    let status = daemon.wait_for_json(
        &["guard", "status", "--output", "json"],
        Duration::from_secs(5),
        |status| status["load_error"].is_string(),
    );
    let error = status["load_error"].as_str().expect("error");
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("invalid size \"lots\""), "{error}");
    assert_eq!(
        status["mode"], "hard",
        "the previous policy stays: {status:#}"
    );
    let text = String::from_utf8_lossy(&daemon.ctl(&["guard", "status"]).stdout).into_owned();
    assert!(text.contains("load error: "), "{text}");

    // Fixed: the new policy loads (on the change; SIGHUP would do the same).
    std::fs::write(&path, HARD.replace("hard", "soft")).expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let status = daemon.wait_for_json(
        &["guard", "status", "--output", "json"],
        Duration::from_secs(5),
        |status| status["mode"] == "soft",
    );
    assert!(status["load_error"].is_null(), "{status:#}");
}

#[test]
fn group_totals_gpu_allowed_users_and_reserved_memory_each_stop_the_right_process() {
    let mut group_old = Target::sleep(Some(ALICE));
    std::thread::sleep(Duration::from_millis(1100));
    let mut group_new = Target::sleep(Some(BOB));
    // Two users outside the group.
    let mut stranger = Target::sleep(Some(4444));
    let mut reserve_user = Target::sleep(Some(4545));
    let policy = r#"
mode = "hard"
min_duration = "0s"
[[group]]
name = "lab"
members = ["4242", "4343"]
max_memory_total = "3GiB"
[[gpu]]
index = 1
allowed_users = ["4242"]
[[gpu]]
index = 2
reserved_memory = "79GiB"
"#;
    let process = |t: &Target, mib: u64| json!({"pid": t.pid(), "used_memory_bytes": mib * MIB});
    let mut gpu2 = full_gpu(2, json!([process(&reserve_user, 2048)]));
    gpu2["memory_used_bytes"] = json!(2048 * MIB);
    let scenario = json!({"gpus": [
        // The lab uses 2 + 2 GiB on GPU 0: the newer process goes.
        full_gpu(0, json!([process(&group_old, 2048), process(&group_new, 2048)])),
        // Only Alice may use GPU 1.
        full_gpu(1, json!([process(&stranger, 10)])),
        // GPU 2 may use 1 GiB; 2 GiB are in use.
        gpu2,
    ]});
    let (daemon, _dir, _path) = start(&scenario, policy);
    assert!(
        group_new.exits_within(Duration::from_secs(4)),
        "the group's newest process"
    );
    assert!(
        stranger.exits_within(Duration::from_secs(4)),
        "a user GPU 1 does not allow"
    );
    assert!(
        reserve_user.exits_within(Duration::from_secs(4)),
        "into GPU 2's reserve"
    );
    assert!(
        group_old.alive(),
        "the older group process stays: the newer freed enough"
    );
    let rules: Vec<String> = [group_new.pid(), stranger.pid(), reserve_user.pid()]
        .iter()
        .map(|pid| {
            wait_event(&daemon, *pid, Duration::from_secs(3), |e| {
                e["type"] == "kill"
            })["action"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        rules,
        [
            "guard hard: group_memory",
            "guard hard: user_not_allowed",
            "guard hard: reserved_memory"
        ]
    );
}

#[test]
fn guard_test_says_what_would_happen_without_acting() {
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let policy = HARD.replace("min_duration = \"1s\"", "min_duration = \"1h\"");
    let (daemon, _dir, _path) = start(&gpu0(&[(pid, 2048)]), &policy);
    let test = daemon.ctl_json(&["guard", "test", "--output", "json"]);
    assert_eq!(test["mode"], "hard");
    let violation = &test["violations"][0];
    assert_eq!(violation["rule"], "memory_per_process", "{test:#}");
    assert_eq!(violation["offenders"][0]["pid"], pid);
    assert_eq!(violation["would"], "kill once it has lasted 1h", "{test:#}");
    assert!(target.alive());
}

#[test]
fn a_renamed_miner_is_found_by_its_exe_and_killed_despite_a_whitelisted_name() {
    // A copy of python3 named xmrig that sets its comm to "python3": /proc/PID/exe still
    // says xmrig.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let miner = dir.path().join("xmrig");
    std::fs::copy("/usr/bin/python3", &miner).expect("copy python3");
    let script = "import ctypes, time\n\
                  ctypes.CDLL(None).prctl(15, b'python3', 0, 0, 0)\n\
                  time.sleep(600)\n";
    // Another test's fork may briefly hold the copy's write descriptor (ETXTBSY): retry.
    let spawn_deadline = Instant::now() + Duration::from_secs(5);
    let mut child = loop {
        match std::process::Command::new(&miner)
            .args(["-c", script])
            .env("PYTHONHOME", "/usr")
            .uid(ALICE)
            .gid(ALICE)
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => break child,
            Err(error)
                if error.raw_os_error() == Some(libc::ETXTBSY)
                    && Instant::now() < spawn_deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("cannot start the renamed miner: {error}"),
        }
    };
    let pid = child.id();
    // Wait for the rename.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "python3\n" {
        assert!(Instant::now() < deadline, "the miner never renamed itself");
        std::thread::sleep(Duration::from_millis(20));
    }
    let policy = r#"
mode = "hard"
min_duration = "0s"
rogue_act_at = "high"
[rogue.whitelist]
names = ["^python3$"]
"#;
    let (daemon, _policy_dir, _path) = start(&gpu0(&[(pid, 100)]), policy);
    // The decision is recorded as "signalling" before the signal, then its outcome.
    let kill = wait_event(&daemon, pid, Duration::from_secs(5), |e| {
        e["type"] == "kill" && e["outcome"] != "signalling"
    });
    let _ = child.kill();
    let status = child.wait().expect("wait");
    assert_eq!(kill["action"], "guard hard: rogue", "{kill:#}");
    assert_eq!(kill["outcome"], "terminated", "{kill:#}");
    let reason = kill["reason"].as_str().expect("reason");
    assert!(reason.contains("xmrig"), "{reason}");
    assert!(reason.contains("whitelist overridden"), "{reason}");
    assert!(!status.success());
}

#[test]
fn admins_change_the_policy_through_the_api_keeping_its_comments_and_nothing_else_changes_it() {
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let original = "# The lab's policy: dry-run until we trust it.\nmode = \"dry-run\"\nmin_duration = \"0s\"\n";
    let (daemon, _dir, path) = start(&gpu0(&[(pid, 2048)]), original);

    // Another user may read but not change it: exit 4, file unchanged, refusal recorded.
    let denied = daemon.ctl_as(BOB, &["guard", "mode", "hard"]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), original);
    let shown = daemon.ctl_as(BOB, &["guard", "export"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout), original);

    // An invalid entry: exit 3 naming the value, nothing written.
    let bad = daemon.ctl(&[
        "guard",
        "policy",
        "add-user",
        "4242",
        "--max-memory-per-process",
        "lots",
    ]);
    assert_eq!(bad.status.code(), Some(3), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid size \"lots\""),
        "{bad:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), original);

    // Root is an admin: the limit and then hard mode; the comment stays.
    let added = daemon.ctl(&[
        "guard",
        "policy",
        "add-user",
        "4242",
        "--max-memory-per-process",
        "1GiB",
    ]);
    assert!(added.status.success(), "{added:?}");
    assert_eq!(
        String::from_utf8_lossy(&added.stdout),
        "added [[user]] 4242\n"
    );
    assert!(target.alive(), "still dry-run");
    let hard = daemon.ctl(&["guard", "mode", "hard"]);
    assert!(hard.status.success(), "{hard:?}");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("# The lab's policy: dry-run until we trust it.\nmode = \"hard\""),
        "{text}"
    );
    assert!(
        target.exits_within(Duration::from_secs(12)),
        "hard mode acts on the new limit"
    );

    let policy_events: Vec<Value> = daemon
        .events_json()
        .into_iter()
        .filter(|e| {
            e["type"] == "policy" || (e["type"] == "deny" && e["action"] == "guard mode hard")
        })
        .collect();
    let outcomes: Vec<(String, String)> = policy_events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("guard mode hard".to_owned(), "denied".to_owned()),
            ("guard policy add-user".to_owned(), "rejected".to_owned()),
            ("guard policy add-user".to_owned(), "changed".to_owned()),
            ("guard mode hard".to_owned(), "changed".to_owned()),
        ],
        "{policy_events:#?}"
    );
}

/// A pseudo-terminal whose slave side belongs to `uid`: (master, slave path).
fn terminal_of(uid: u32) -> (std::fs::File, PathBuf) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = PathBuf::from(
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned(),
        );
        std::os::unix::fs::chown(&path, Some(uid), None).expect("chown the terminal");
        let flags = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK);
        (std::fs::File::from_raw_fd(master), path)
    }
}

#[test]
fn soft_mode_tells_the_user_on_their_terminal_and_posts_to_the_webhook_with_retries() {
    use std::io::Read;
    let (port, notices) = support::http::webhook_receiver(true);
    let (mut master, _slave) = terminal_of(ALICE);
    // The slave must stay open for writes to reach the master.
    let _slave_open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&_slave)
        .expect("open slave");
    let mut target = Target::sleep(Some(ALICE));
    let pid = target.pid();
    let policy = format!(
        r#"
mode = "soft"
grace = "1s"
[[user]]
name = "4242"
max_memory_per_process = "1GiB"
[notify]
webhook = "http://127.0.0.1:{port}/hooks/gpu"
webhook_retries = 2
terminals = true
"#
    );
    let (_daemon, _dir, _path) = start(&gpu0(&[(pid, 2048)]), &policy);
    assert!(
        target.exits_within(Duration::from_secs(5)),
        "killed after the grace"
    );

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut screen = String::new();
    loop {
        let mut buffer = [0u8; 4096];
        if let Ok(read) = master.read(&mut buffer) {
            screen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
        let outcomes: Vec<String> = notices
            .lock()
            .expect("lock")
            .iter()
            .map(|n| n["outcome"].as_str().unwrap_or_default().to_owned())
            .collect();
        let done = screen.contains("was killed by the GPU policy")
            && outcomes.contains(&"warned".to_owned())
            && outcomes.contains(&"terminated".to_owned());
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "terminal: {screen:?}\nwebhook outcomes: {outcomes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        screen.contains(&format!(
            "your process {pid} (sleep) on GPU 0 breaks the GPU policy"
        )),
        "{screen}"
    );
    assert!(screen.contains("It will be killed in 1s"), "{screen}");
    let notices = notices.lock().expect("lock").clone();
    let warned = notices
        .iter()
        .find(|n| n["outcome"] == "warned")
        .expect("warned");
    assert_eq!(warned["rule"], "memory_per_process", "{warned:#}");
    assert_eq!(warned["mode"], "soft");
    assert_eq!(warned["processes"][0]["pid"], pid, "{warned:#}");
    assert_eq!(warned["limit"].as_f64(), Some(1_073_741_824.0));
}
