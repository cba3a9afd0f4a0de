//! gpukillctl against hostile input (issue 17, findings 9 and 11), with real uids: another
//! user's reservation note and process name full of terminal escapes, printed to root; and a
//! fake "gpukilld" run by another user on a socket path anyone can write to.

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, MIB, full_gpu, gpukillctl, other_uid, user_name};

/// A reservation note that sets the window title, rings, erases the line and returns to its
/// start: what root's terminal must never receive raw.
const NOTE: &str = "thesis \x1b]0;pwned\x07\x1b[2K\r done";
/// How gpukillctl's tables show it.
const NOTE_SHOWN: &str = "thesis \\e]0;pwned\\x07\\e[2K\\r done";
/// A process name set with prctl(PR_SET_NAME): 15 bytes, the most the kernel keeps.
const NAME: &[u8] = b"\x1b]0;pwned\x07\x1b[2K\r";
/// How gpukillctl's tables show it.
const NAME_SHOWN: &str = "\\e]0;pwned\\x07\\e[2K\\r";
/// Bytes that must never reach the terminal: ESC, BEL, CR, and the 8-bit CSI.
const RAW_CONTROLS: [u8; 4] = [0x1b, 0x07, 0x0d, 0x9b];

/// The uid that plays the attacker: these tests switch uids, so they need root.
fn attacker() -> u32 {
    other_uid()
}

/// A process of `uid` that renames itself to [`NAME`] and sleeps; returned once
/// /proc/PID/comm says so (before any daemon reads it, since names are cached per process).
fn renamed_process(uid: u32) -> Child {
    let script = r"import ctypes, time
ctypes.CDLL(None).prctl(15, b'\x1b]0;pwned\x07\x1b[2K\r', 0, 0, 0)
time.sleep(600)
";
    let child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start python3 as the attacker");
    let comm = PathBuf::from(format!("/proc/{}/comm", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = [NAME, b"\n"].concat();
    while std::fs::read(&comm).ok().as_deref() != Some(expected.as_slice()) {
        assert!(
            Instant::now() < deadline,
            "the process never renamed itself"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Kills and reaps `child`.
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Asserts `output` succeeded and its standard output carries none of [`RAW_CONTROLS`].
fn terminal_safe(what: &str, output: &Output) -> String {
    assert!(output.status.success(), "{what}: {output:?}");
    for byte in RAW_CONTROLS {
        assert!(
            !output.stdout.contains(&byte),
            "{what} printed the raw byte {byte:#04x}:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{what}");
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

#[test]
fn another_users_note_and_process_name_cannot_drive_roots_terminal() {
    let attacker = attacker();
    let renamed = renamed_process(attacker);
    let pid = renamed.id();
    // GPU 0: the renamed process, 2 GiB, not reserved (so status names it too); GPU 1 free.
    let scenario = json!({
        "gpus": [
            full_gpu(0, json!([{"pid": pid, "used_memory_bytes": 2048 * MIB, "kind": "compute"}])),
            full_gpu(1, json!([])),
        ]
    });
    let daemon = Daemon::start(&scenario);
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"]
            .as_array()
            .is_some_and(|procs| procs.len() == 1)
    });
    let reserved = daemon.ctl_as(
        attacker,
        &[
            "reserve",
            "--gpu-ids",
            "1",
            "--duration",
            "1h",
            "--note",
            NOTE,
        ],
    );
    assert!(reserved.status.success(), "{reserved:?}");

    // Root looks: the escaped forms are shown, the raw bytes never.
    let status = terminal_safe("status", &daemon.ctl(&["status"]));
    assert!(status.contains(NOTE_SHOWN), "{status}");
    assert!(
        status.contains(&format!("pid {pid} ({NAME_SHOWN})")),
        "{status}"
    );
    let list = terminal_safe("list", &daemon.ctl(&["list"]));
    assert!(
        list.contains(&format!("{NAME_SHOWN}:{pid}")),
        "TOP_PROC: {list}"
    );
    let details = terminal_safe("list --details", &daemon.ctl(&["list", "--details"]));
    let row = details
        .lines()
        .find(|line| line.contains(&format!("| {pid} ")))
        .unwrap_or_else(|| panic!("no process row:\n{details}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(
        cells[..5],
        [
            "0",
            pid.to_string().as_str(),
            user_name(attacker).as_str(),
            NAME_SHOWN,
            "2048 MiB"
        ],
        "{details}"
    );
    // The columns still line up: every row of a table puts its separators where its header
    // does.
    for block in details.split("\n\n") {
        let rows: Vec<&str> = block.lines().filter(|line| line.contains('|')).collect();
        let bars = |line: &str| -> Vec<usize> {
            line.chars()
                .enumerate()
                .filter(|(_, c)| *c == '|')
                .map(|(at, _)| at)
                .collect()
        };
        for line in &rows {
            assert_eq!(bars(line), bars(rows[0]), "{block}");
        }
    }

    // Nothing else changed: JSON carries the exact values, the reservation is the
    // attacker's, and their process runs on.
    let status_json = daemon.ctl_json(&["status", "--output", "json"]);
    let gpu1 = &status_json["gpus"][1];
    assert_eq!(gpu1["state"], "reserved", "{status_json:#}");
    assert_eq!(gpu1["reservation"]["note"], NOTE);
    assert_eq!(gpu1["reservation"]["uid"], attacker);
    assert_eq!(status_json["gpus"][0]["state"], "unreserved_use");
    let list_json = daemon.list_json(&[]);
    let name = String::from_utf8(NAME.to_vec()).expect("UTF-8");
    assert_eq!(list_json["procs"][0]["proc_name"], Value::String(name));
    assert_eq!(list_json["procs"][0]["pid"], pid);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    stop(renamed);
}

/// A fake "gpukilld" run by `uid` on `socket`: it logs, one line per connection, the bytes
/// it received (hex, or `nothing`) until the client hung up or sent its 24-byte HTTP/2
/// preface, after `listening` once it accepts.
struct FakeServer {
    child: Child,
    log: PathBuf,
}

impl FakeServer {
    fn start(uid: u32, socket: &Path, log: &Path) -> FakeServer {
        let script = r#"import socket, sys
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(16)
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
note("listening")
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    received = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            if len(received) >= 24:  # the HTTP/2 client preface: enough said
                break
    except OSError:
        pass
    conn.close()
    note(received.hex() if received else "nothing")
"#;
        let child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(socket)
            .arg(log)
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the fake server as the attacker");
        let server = FakeServer {
            child,
            log: log.to_path_buf(),
        };
        server.wait_for_lines(1);
        server
    }

    /// The log's lines so far.
    fn lines(&self) -> Vec<String> {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text.lines().map(str::to_owned).collect()
    }

    /// The log's lines once it has `count` of them (within 10 s).
    fn wait_for_lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the fake server logged {lines:?}, expected {count} lines"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory anyone may write to, as /tmp (sticky, 1777).
fn writable_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-hostile-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    dir
}

/// Root's gpukillctl with `args` against `socket`, with `daemon_user` as
/// GPUKILL_DAEMON_USER (or unset).
fn root_ctl(socket: &Path, daemon_user: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(gpukillctl());
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("GPUKILL_DAEMON_USER")
        .stdin(Stdio::null());
    if let Some(user) = daemon_user {
        command.env("GPUKILL_DAEMON_USER", user);
    }
    command.output().expect("run gpukillctl")
}

#[test]
fn a_fake_daemon_of_another_user_is_refused_before_a_byte_is_sent() {
    let attacker = attacker();
    let dir = writable_dir();
    let socket = dir.path().join("gpukilld.sock");
    let server = FakeServer::start(attacker, &socket, &dir.path().join("received.log"));
    let marker = dir.path().join("ran");
    let touch = format!("touch '{}'", marker.display());
    let commands: [&[&str]; 4] = [
        &["list"],
        &["status"],
        &["kill", "--pid", "1"],
        &["run", "--", "/bin/sh", "-c", &touch],
    ];
    let name = user_name(attacker);
    for args in commands {
        let output = root_ctl(&socket, None, args);
        assert_eq!(output.status.code(), Some(6), "{args:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "", "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!(
            "gpukillctl: error: refusing to talk to {}: it is served by uid {attacker} ({name}, \
             pid {}), not by root, by you (uid 0) or by GPUKILL_DAEMON_USER (unset), so it may \
             not be gpukilld and nothing was sent to it (pass gpukilld's socket, e.g. --socket \
             /run/gpukill/gpukilld.sock; if gpukilld runs as {name} on purpose, set \
             GPUKILL_DAEMON_USER={name})\n",
            socket.display(),
            server.child.id()
        );
        assert_eq!(stderr, expected, "{args:?}");
    }
    // One connection per command, and not one byte on any of them; `run` started nothing.
    let log = server.wait_for_lines(1 + commands.len());
    assert_eq!(log[1..], ["nothing"; 4], "{log:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.lines().len(),
        1 + commands.len(),
        "one connection per command"
    );
    assert!(!marker.exists());
}

#[test]
fn the_configured_daemon_user_is_trusted() {
    let attacker = attacker();
    let dir = writable_dir();
    let socket = dir.path().join("gpukilld.sock");
    let server = FakeServer::start(attacker, &socket, &dir.path().join("received.log"));
    let name = user_name(attacker);
    // Trusted by name: gpukillctl speaks HTTP/2 to it. This fake hangs up after the client
    // preface, so the request fails as against any broken server, not as a refusal.
    let output = root_ctl(&socket, Some(&name), &["list"]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("refusing"), "{stderr}");
    let preface: String = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    server.wait_for_lines(2);
    // tonic may connect again after the hang-up; every connection got the preface.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.lines();
    assert!(
        log[1..].iter().all(|line| line.starts_with(&preface)),
        "{log:?}"
    );
    // A daemon user that does not exist is a usage error naming it, before connecting.
    let output = root_ctl(&socket, Some("no-such-user-gpukill"), &["list"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("GPUKILL_DAEMON_USER=\"no-such-user-gpukill\" names no user"),
        "{output:?}"
    );
    // A connection would be logged as soon as the client exits: give it time to show.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.lines(), log, "no new connection");
}
