//! Floods a hostile caller can throw at the daemon, each written as the attack (issue 17's
//! red team) and checked for the bound that stops it: queued runs with huge commands,
//! idle Unix-socket connections under a low file limit, credential-less TLS connections,
//! metrics clients that pipeline requests and never read. Each also checks that everyone
//! else is still served. Bounded in count and time, loopback only.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};
use support::flood::{
    Flood, PIPELINE, TCP_SILENT, TLS_IDLE, UNIX_IDLE, http_get, metric, open_fds,
};
use support::measure::status_kib;
use support::pki::{Pki, bearer, free_port, tls_channel, token_file};
use support::{Daemon, DaemonOptions, full_gpu, other_uid, shared_gpukillctl};

/// The flooding uid (no passwd entry needed: the daemon names it by number).
const MALLORY: u32 = 4242;
/// Another unprivileged uid that holds the only GPU.
const BOB: u32 = 4343;

fn one_gpu() -> Value {
    json!({ "gpus": [full_gpu(0, json!([]))] })
}

fn start(config: &str, nofile: Option<u64>) -> Daemon {
    Daemon::start_with(
        &one_gpu(),
        DaemonOptions {
            config: config.to_owned(),
            nofile,
            ..DaemonOptions::default()
        },
    )
}

/// `gpukillctl list` as `uid`: whether it succeeded, and how long it took.
fn timed_list(daemon: &Daemon, uid: u32) -> (bool, Duration) {
    let started = Instant::now();
    let output = daemon.ctl_as(uid, &["list"]);
    (output.status.success(), started.elapsed())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn queued_runs_are_capped_per_user_and_their_commands_clipped() {
    let other = other_uid();
    let daemon = start("[reservations]\nmax_queued_per_user = 3\n", None);
    // Bob takes the only GPU.
    let held = daemon.ctl_as(BOB, &["reserve", "--gpus", "1"]);
    assert!(held.status.success(), "{held:?}");
    let rss_before = status_kib(daemon.pid(), "VmRSS");

    // Mallory queues runs with 100 KB commands: three wait, the rest are refused at once.
    let long = "x".repeat(100_000);
    let mut waiting = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..6 {
        let mut child = Command::new(shared_gpukillctl())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["run", "--gpus", "1", "--", "/bin/echo", &long])
            .uid(MALLORY)
            .gid(MALLORY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        std::thread::sleep(Duration::from_millis(300));
        match child.try_wait().expect("try_wait") {
            Some(_) => refused.push(child.wait_with_output().expect("output")),
            None => waiting.push(child),
        }
    }
    let stderr: Vec<String> = refused
        .iter()
        .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
        .collect();
    assert_eq!(
        waiting.len(),
        3,
        "three runs wait; the refused said {stderr:?}"
    );
    assert_eq!(refused.len(), 3, "the others are refused");
    for output in &refused {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("max_queued_per_user = 3"),
            "the refusal names the limit: {stderr}"
        );
    }

    // Another user still sees the queue, each command clipped to 1 KiB.
    let status = daemon.ctl_as(other, &["status", "--output", "json"]);
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let queue = status["queue"].as_array().expect("queue");
    assert_eq!(queue.len(), 3, "{status}");
    for request in queue {
        let command = request["command"].as_str().expect("command");
        assert!(command.len() <= 1024, "{} bytes", command.len());
        assert!(command.ends_with('…'), "{command:.40}");
    }
    // The daemon held no copy of the commands worth measuring.
    let grown = status_kib(daemon.pid(), "VmRSS").saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB");

    for mut child in waiting {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Bob's reservation is untouched.
    let after = daemon.ctl_as(other, &["status", "--output", "json"]);
    let after: Value = serde_json::from_slice(&after.stdout).expect("status JSON");
    assert_eq!(
        after["gpus"][0]["reservation"]["uid"],
        json!(BOB),
        "{after}"
    );
}

#[test]
fn a_request_over_the_size_limit_is_refused_and_changes_nothing() {
    let daemon = start("[limits]\nmax_request_size = \"64KiB\"\n", None);
    let held = daemon.ctl_as(BOB, &["reserve", "--gpus", "1"]);
    assert!(held.status.success(), "{held:?}");
    runtime().block_on(async {
        let mut client = support::client(&daemon.socket).await;
        let start = pb::RunRequest {
            message: Some(pb::run_request::Message::Start(pb::RunStart {
                count: 1,
                wait: true,
                command: "y".repeat(4 << 20),
                ..pb::RunStart::default()
            })),
        };
        let error = client
            .run(tonic::codegen::tokio_stream::iter(vec![start]))
            .await
            .map(|answer| answer.into_inner());
        let error = match error {
            Err(status) => status,
            Ok(mut stream) => stream
                .message()
                .await
                .expect_err("a 4 MiB command is refused"),
        };
        assert!(
            error.message().contains("too large") || error.message().contains("limit"),
            "{error:?}"
        );
        let status = client
            .reservations(pb::ReservationsRequest {})
            .await
            .expect("Reservations")
            .into_inner();
        assert!(status.queue.is_empty(), "nothing was queued");
        assert_eq!(status.queue_total, 0);
    });
}

#[test]
fn idle_unix_connections_are_capped_per_uid_and_closed_when_silent() {
    let other = other_uid();
    // The red team's setting: a 1024 file limit; silence ends a connection after 4 s here.
    let metrics_port = free_port();
    let daemon = start(
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [limits]\nhandshake_timeout = \"2s\"\nidle_timeout = \"4s\"\n"
        ),
        Some(1024),
    );
    let baseline = open_fds(daemon.pid());
    let flood = Flood::start(
        UNIX_IDLE,
        &[daemon.socket.display().to_string(), "1100".to_owned()],
        MALLORY,
    );
    assert_eq!(flood.opened, 1100, "the kernel queues every connect");
    // Everyone else is served while the flood holds its connections.
    for _ in 0..5 {
        let (ok, took) = timed_list(&daemon, other);
        assert!(ok, "another user's list failed during the flood");
        assert!(
            took < Duration::from_secs(1),
            "another user's list took {took:?}"
        );
    }
    let (ok, _) = timed_list(&daemon, 0);
    assert!(ok, "root's list failed during the flood");
    // The flooder's own next connection is refused, and told why (once the flood's own
    // refused connections have had their second to read the same).
    std::thread::sleep(Duration::from_millis(1200));
    let refused = daemon.ctl_as(MALLORY, &["list"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("connections_per_uid"), "{stderr}");
    // 32 admitted, and at most 64 refused ones kept up to a second while they are told why.
    let held = open_fds(daemon.pid()).saturating_sub(baseline);
    assert!(
        held <= 32 + 64 + 8,
        "the daemon holds {held} more descriptors than before"
    );
    // Silent connections are closed by the idle deadline (or the keep-alive ping).
    std::thread::sleep(Duration::from_secs(7));
    let closed = flood.finish();
    assert_eq!(
        closed, 1100,
        "every flood connection was closed by the daemon"
    );
    let held = open_fds(daemon.pid()).saturating_sub(baseline);
    assert!(held <= 4, "the daemon still holds {held} more descriptors");
    let log = daemon.log_text();
    assert!(
        log.contains("uid 4242 holds 32 connections to the Unix socket"),
        "the refusal is logged:\n{log}"
    );
    // And counted, for Prometheus.
    let refused = metric(
        metrics_port,
        "gpukill_connections_refused_total{listener=\"unix\",reason=\"per_caller\"}",
    );
    assert!(refused >= Some(1000.0), "refused: {refused:?}");
    // The keep-alive ping or the idle deadline closed them all: none is held now.
    let open = metric(metrics_port, "gpukill_connections_open{listener=\"unix\"}");
    assert!(matches!(open, Some(held) if held <= 1.0), "open: {open:?}");
    let (ok, _) = timed_list(&daemon, other);
    assert!(ok);
}

#[test]
fn credential_less_tls_connections_are_capped_per_address_and_closed_when_silent() {
    let other = other_uid();
    let pki = Pki::new(&std::env::temp_dir(), "floods-tls");
    let port = free_port();
    let (cert, key) = pki.server("server");
    const TOKEN: &str = "flood-test-admin-token-0123456789";
    let tokens = token_file(&pki.dir.join("tokens"), &[("ops", TOKEN)]);
    let config = format!(
        "[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {tokens:?}\n\
         [tcp.principals]\nops = \"admin\"\n\
         [limits]\nhandshake_timeout = \"2s\"\nidle_timeout = \"4s\"\n"
    );
    let daemon = start(&config, Some(1024));
    let baseline = open_fds(daemon.pid());
    let flood = Flood::start(TLS_IDLE, &[port.to_string(), "1050".to_owned()], MALLORY);
    assert!(
        flood.opened <= 32,
        "{} credential-less TLS connections were kept",
        flood.opened
    );
    let held = open_fds(daemon.pid()).saturating_sub(baseline);
    assert!(held <= 32 + 8, "the daemon holds {held} more descriptors");
    let (ok, took) = timed_list(&daemon, other);
    assert!(
        ok && took < Duration::from_secs(1),
        "local list: {ok} in {took:?}"
    );
    std::thread::sleep(Duration::from_secs(7));
    let kept = flood.opened;
    let closed = flood.finish();
    assert_eq!(closed, kept, "every silent TLS connection was closed");
    // The address's slots are free again: a client with a token is served.
    runtime().block_on(async {
        let channel = tls_channel(port, &pki.ca_pem(), None).await.expect("TLS");
        let mut client =
            gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient::new(channel);
        let list = client
            .list(bearer(pb::ListRequest::default(), TOKEN))
            .await
            .expect("List with a token after the flood");
        let snapshot = list.into_inner().snapshot.expect("a snapshot");
        assert_eq!(snapshot.gpus.len(), 1);
    });
}

#[test]
fn metrics_clients_that_never_read_cannot_take_healthz_down() {
    let port = free_port();
    let daemon = start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), None);
    let (status, _) = http_get(port, "/healthz");
    assert!(status.contains("200"), "{status}");
    let flood = Flood::start(PIPELINE, &[port.to_string(), "16".to_owned()], MALLORY);
    assert_eq!(flood.opened, 16);
    // Let the flood fill the send buffers and every slot.
    std::thread::sleep(Duration::from_secs(1));
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (status, took) = http_get(port, "/healthz");
        assert!(
            status.contains("200"),
            "healthz during the flood: {status:?}"
        );
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_secs(1), "healthz took {slowest:?}");
    let (status, _) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    let evicted = metric(
        port,
        "gpukill_connections_timed_out_total{listener=\"metrics\"}",
    );
    // Each probe took the slot of a client that never reads (and gave it back).
    assert!(evicted >= Some(1.0), "evicted: {evicted:?}");
    drop(flood);
    assert!(daemon.ctl(&["list"]).status.success());
}

#[test]
fn silent_ingest_connections_are_capped_per_address_and_closed() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = token_file(
        &dir.path().join("tokens"),
        &[("node-a", "ingest-flood-token-0123456789")],
    );
    let daemon = start(
        &format!(
            "[ingest]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntokens = {tokens:?}\n\
             [ingest.principals]\nnode-a = {{ role = \"node\", nodes = [\"0123456789abcdef0123456789abcdef\"] }}\n\
             [limits]\nhandshake_timeout = \"1s\"\n"
        ),
        None,
    );
    let baseline = open_fds(daemon.pid());
    let flood = Flood::start(TCP_SILENT, &[port.to_string(), "200".to_owned()], MALLORY);
    assert_eq!(flood.opened, 200, "the kernel queues every connect");
    std::thread::sleep(Duration::from_millis(300));
    let held = open_fds(daemon.pid()).saturating_sub(baseline);
    assert!(held <= 8 + 4, "the daemon holds {held} more descriptors");
    // Silence past the first-request deadline closes the admitted ones too.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(flood.finish(), 200, "every silent connection was closed");
    // The endpoint still answers (401 without a token).
    let (status, _) = http_get(port, "/api/v1/usage");
    assert!(status.contains("401"), "{status}");
    assert!(daemon.ctl(&["list"]).status.success());
}
