//! `Watch` streams consecutive snapshots, and watchers that go away are not leaked.

mod support;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};
use support::{Daemon, MIB, Target, full_gpu};

async fn next(stream: &mut tonic::Streaming<pb::WatchResponse>) -> pb::Snapshot {
    stream
        .message()
        .await
        .expect("stream error")
        .expect("stream ended")
        .snapshot
        .expect("a snapshot in every message")
}

fn scenario(target: &Target) -> Value {
    json!({"gpus": [full_gpu(0, json!([{"pid": target.pid(), "used_memory_bytes": 10 * MIB}]))]})
}

/// `gpukillctl list --watch --output json` on `daemon`, with its output lines.
fn json_watcher(daemon: &Daemon) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(support::gpukillctl())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["list", "--watch", "--output", "json"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

#[test]
fn gpukillctl_watch_prints_consecutive_snapshots() {
    let target = Target::sleep(None);
    let daemon = Daemon::start(&scenario(&target));
    let (mut child, mut lines) = json_watcher(&daemon);
    let mut sequences = Vec::new();
    while sequences.len() < 4 {
        let line = lines.next().expect("a line").expect("utf-8");
        let snapshot: Value = serde_json::from_str(&line).expect("one JSON document per line");
        sequences.push(snapshot["seq"].as_u64().expect("seq"));
        assert_eq!(snapshot["gpus"][0]["mem_total_mb"], json!(81920));
    }
    for pair in sequences.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "snapshots are consecutive: {sequences:?}"
        );
    }
    // Ctrl-C ends the watch with exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "Ctrl-C exits 0");
}

async fn watchers(daemon: &Daemon) -> u64 {
    let mut client = daemon.client().await;
    client
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner()
        .watchers
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_watchers_do_not_leak() {
    let target = Target::sleep(None);
    let daemon = Daemon::start(&scenario(&target));
    assert_eq!(watchers(&daemon).await, 0);
    let fds_before = open_fds(daemon.pid());

    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut client = daemon.client().await;
        let mut stream = client
            .watch(pb::WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        let first = next(&mut stream).await;
        let second = next(&mut stream).await;
        assert!(second.sequence > first.sequence);
        streams.push((client, stream));
    }
    assert_eq!(watchers(&daemon).await, 20);
    drop(streams);

    // A gpukillctl watcher killed with SIGKILL (no goodbye) is cleaned up too.
    let mut killed = Command::new(support::gpukillctl())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["list", "--watch"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchers(&daemon).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the gpukillctl watcher never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill().expect("kill watcher");
    killed.wait().expect("reap watcher");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = watchers(&daemon).await;
        if open == 0 && open_fds(daemon.pid()) <= fds_before + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watchers still counted: {open}; fds {} (before {fds_before})",
            open_fds(daemon.pid())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sigterm_stops_the_daemon_promptly_while_a_watcher_is_open() {
    let target = Target::sleep(None);
    let daemon = Daemon::start(&scenario(&target));
    let (mut watcher, mut lines) = json_watcher(&daemon);
    lines.next().expect("first snapshot").expect("utf-8");
    let socket = daemon.socket.clone();
    let started = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM took {:?} with a watcher open",
        started.elapsed()
    );
    assert!(!socket.exists(), "socket removed");
    // The watcher notices the end of the stream and exits on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = watcher.try_wait().expect("wait") {
            assert!(!status.success(), "a watch cut short is not a success");
            break;
        }
        assert!(Instant::now() < deadline, "the watcher did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
