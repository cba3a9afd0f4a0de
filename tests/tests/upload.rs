//! Uploads of hourly usage: a real daemon whose store holds past hours (rolled up and queued
//! at start) sends them to a central server on loopback — a scriptable one that stores
//! idempotently and fails on command, or the project's own ingest endpoint.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use serde_json::json;
use support::central::{Behavior, Central, past_hour, prefill, serve};
use support::pki::{client_token, free_port, token_file};
use support::{Daemon, DaemonOptions};

const TOKEN: &str = "upload-token-0123456789abcdef";
/// The node id of every node daemon here (`<state_dir>/node-id`), which the ingest's
/// `[ingest.principals]` binds node-a's token to.
const NODE_ID: &str = "0123456789abcdef0123456789abcdef";

/// `[ingest.principals]` for node-a, uploading as `NODE_ID`.
fn principals() -> String {
    format!("[ingest.principals]\nnode-a = {{ role = \"node\", nodes = [\"{NODE_ID}\"] }}\n")
}

/// A node daemon whose state directory holds `hours` of history, uploading to
/// `127.0.0.1:port` with fast retries; `extra` is more `[upload]` settings.
fn node(hours: &[i64], port: u16, extra: &str) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-upload-")
        .tempdir()
        .expect("a temp dir for the node");
    prefill(&dir.path().join("state"), hours, 2, 2);
    std::fs::write(dir.path().join("state/node-id"), NODE_ID).expect("write the node id");
    let token = client_token(&dir.path().join("upload.token"), TOKEN);
    let config = format!(
        "[upload]\nurl = \"http://127.0.0.1:{port}/api/v1/usage\"\ntoken_file = {token:?}\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\ntimeout = \"5s\"\n{extra}"
    );
    let socket = dir.path().join("gpukilld.sock");
    Daemon::start_on(
        dir,
        socket,
        &json!({"gpus": []}),
        DaemonOptions {
            config,
            ..DaemonOptions::default()
        },
    )
}

async fn uploads(daemon: &Daemon) -> pb::UploadsResponse {
    support::client(&daemon.socket)
        .await
        .uploads(pb::UploadsRequest::default())
        .await
        .expect("Uploads")
        .into_inner()
}

async fn show(daemon: &Daemon, hour: i64) -> pb::UploadShowResponse {
    support::client(&daemon.socket)
        .await
        .upload_show(pb::UploadShowRequest { hour_unix_ms: hour })
        .await
        .expect("UploadShow")
        .into_inner()
}

async fn wait_for(
    daemon: &Daemon,
    what: &str,
    accept: impl Fn(&pb::UploadsResponse) -> bool,
) -> pb::UploadsResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = uploads(daemon).await;
        if accept(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {answer:#?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivered(answer: &pb::UploadsResponse) -> u64 {
    answer.summary.as_ref().map_or(0, |s| s.delivered)
}

fn key_hour(key: &str) -> i64 {
    key.rsplit(':')
        .next()
        .and_then(|hour| hour.parse().ok())
        .unwrap_or_else(|| panic!("no hour at the end of {key:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_queued_while_the_server_is_down_arrive_oldest_first_exactly_once() {
    let hours: Vec<i64> = (1..=6).rev().map(past_hour).collect();
    let port = free_port();
    let daemon = node(&hours, port, "max_attempts = 1000\n");
    // The server is down: every hour is pending and has been tried.
    wait_for(
        &daemon,
        "six hours tried while the server is down",
        |answer| {
            answer.entries.len() == 6
                && answer
                    .entries
                    .iter()
                    .all(|e| e.status == pb::UploadStatus::Pending as i32)
                && answer.entries[0].attempts >= 2
        },
    )
    .await;
    let central = Arc::new(Central::default());
    let (_, _server) = serve(
        Arc::clone(&central),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await;
    let answer = wait_for(&daemon, "all six delivered", |answer| {
        delivered(answer) == 6
    })
    .await;
    let stored = central.stored();
    assert_eq!(stored.len(), 6);
    assert!(stored.values().all(|(_, times)| *times == 1), "{stored:?}");
    let order: Vec<i64> = central
        .deliveries()
        .iter()
        .map(|d| key_hour(&d.key))
        .collect();
    assert_eq!(order, hours, "oldest first, each once");
    for entry in &answer.entries {
        let (hash, _) = stored
            .iter()
            .find(|(key, _)| key_hour(key) == entry.hour_unix_ms)
            .map(|(_, value)| value.clone())
            .unwrap();
        assert_eq!(hash, entry.sha256);
    }
    // The node id keys every hour.
    let version = support::client(&daemon.socket)
        .await
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stored
            .keys()
            .all(|key| key.starts_with(&format!("{}:", version.node_id)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_500s_then_200_is_delivered_with_three_attempts_recorded() {
    let central = Arc::new(Central::default());
    central.script(&[Behavior::Status(500), Behavior::Status(500)]);
    let (address, _server) =
        serve(Arc::clone(&central), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let hour = past_hour(1);
    let daemon = node(&[hour], address.port(), "");
    wait_for(&daemon, "delivered", |answer| delivered(answer) == 1).await;
    let shown = show(&daemon, hour).await;
    let statuses: Vec<Option<u32>> = shown.attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert_eq!(shown.entry.unwrap().attempts, 3);
    assert!(
        shown.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("scripted 500")
    );
    let payload: serde_json::Value = serde_json::from_str(&shown.payload_json).unwrap();
    assert_eq!(payload["schema"], "gpukill.usage/v1");
    assert_eq!(payload["hour_unix_ms"], hour);
    assert_eq!(payload["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(payload["users"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_answer_and_a_wrong_hash_are_retried_and_stored_once() {
    let central = Arc::new(Central::default());
    central.script(&[Behavior::StoreThenDrop, Behavior::WrongHash]);
    let (address, _server) =
        serve(Arc::clone(&central), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let hour = past_hour(2);
    let daemon = node(&[hour], address.port(), "");
    wait_for(&daemon, "delivered", |answer| delivered(answer) == 1).await;
    let deliveries = central.deliveries();
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    let stored = central.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored.values().next().unwrap().1,
        1,
        "the retries changed nothing"
    );
    let shown = show(&daemon, hour).await;
    assert_eq!(shown.attempts.len(), 3);
    assert_eq!(
        shown.attempts[0].http_status, None,
        "no answer to the first"
    );
    assert!(
        shown.attempts[1]
            .error
            .as_deref()
            .unwrap()
            .contains("stored hash 0000"),
        "{:?}",
        shown.attempts[1]
    );
    assert_eq!(shown.attempts[2].http_status, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_rejects_without_retrying_and_a_429_retries() {
    let central = Arc::new(Central::default());
    central.script(&[Behavior::Status(400), Behavior::Status(429)]);
    let (address, _server) =
        serve(Arc::clone(&central), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let (older, newer) = (past_hour(3), past_hour(2));
    let daemon = node(&[older, newer], address.port(), "");
    let answer = wait_for(&daemon, "one rejected, one delivered", |answer| {
        delivered(answer) == 1 && answer.summary.as_ref().is_some_and(|s| s.rejected == 1)
    })
    .await;
    let rejected = &answer.entries[0];
    assert_eq!(rejected.hour_unix_ms, older);
    assert_eq!(rejected.status, pb::UploadStatus::Rejected as i32);
    assert!(
        rejected
            .last_error
            .as_deref()
            .unwrap()
            .contains("HTTP 400: scripted 400")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown = show(&daemon, older).await;
    assert_eq!(shown.attempts.len(), 1, "a 400 is not retried");
    let shown = show(&daemon, newer).await;
    let statuses: Vec<Option<u32>> = shown.attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, [Some(429), Some(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_retries_after_restart_and_lands_once() {
    let central = Arc::new(Central::default());
    central.script(&[Behavior::StoreThenStall(Duration::from_secs(5))]);
    let (address, _server) =
        serve(Arc::clone(&central), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let hour = past_hour(1);
    let daemon = node(&[hour], address.port(), "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while central.deliveries().is_empty() {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server has stored it; the node dies before the answer.
    let socket = daemon.socket.clone();
    let config = std::fs::read_to_string(daemon.dir.path().join("gpukilld.toml")).unwrap();
    let dir = daemon.sigkill_keeping_dir();
    let daemon = Daemon::start_on(
        dir,
        socket,
        &json!({"gpus": []}),
        DaemonOptions {
            config,
            ..DaemonOptions::default()
        },
    );
    wait_for(&daemon, "delivered after the restart", |answer| {
        delivered(answer) == 1
    })
    .await;
    assert!(central.deliveries().len() >= 2);
    let stored = central.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored.values().next().unwrap().1, 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outbox_bound_the_oldest_hours_are_dropped_and_counted() {
    let hours: Vec<i64> = (1..=6).rev().map(past_hour).collect();
    let daemon = node(
        &hours,
        free_port(),
        "offline = true\nmax_outbox_hours = 3\n",
    );
    let answer = wait_for(&daemon, "three kept, three dropped", |answer| {
        answer
            .summary
            .as_ref()
            .is_some_and(|s| s.dropped_total == 3 && s.pending == 3)
    })
    .await;
    let kept: Vec<i64> = answer.entries.iter().map(|e| e.hour_unix_ms).collect();
    assert_eq!(kept, hours[3..], "the newest three are kept");
    assert!(answer.summary.unwrap().offline);
    let health = support::client(&daemon.socket)
        .await
        .health(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("3 hours dropped")),
        "{:?}",
        health.problems
    );
    assert_eq!(health.uploads.unwrap().dropped_total, 3);
    assert!(daemon.log_text().contains("the upload outbox is full"));
    // Offline: nothing was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = uploads(&daemon).await;
    assert!(answer.entries.iter().all(|e| e.attempts == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_land_once_in_the_projects_own_ingest_and_read_back() {
    let ingest_port = free_port();
    let ingest_dir = tempfile::tempdir().unwrap();
    let tokens = token_file(&ingest_dir.path().join("tokens"), &[("node-a", TOKEN)]);
    let ingest = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[ingest]\nenabled = true\nlisten = \"127.0.0.1:{ingest_port}\"\ntokens = {tokens:?}\n{}",
                principals()
            ),
            ..DaemonOptions::default()
        },
    );
    let hours = [past_hour(3), past_hour(2)];
    let node = node(&hours, ingest_port, "");
    wait_for(&node, "both delivered", |answer| delivered(answer) == 2).await;

    let get = |query: &str, token: Option<&str>| {
        let mut request =
            format!("GET /api/v1/usage{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", ingest_port)).unwrap();
        use std::io::{Read, Write};
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(get("", None).starts_with("HTTP/1.1 401"));
    let answer = get(&format!("?since={}", hours[0]), Some(TOKEN));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        json["gpus"].as_array().unwrap().len(),
        4,
        "2 hours x 2 GPUs"
    );
    assert_eq!(
        json["users"].as_array().unwrap().len(),
        8,
        "2 hours x 2 GPUs x 2 users"
    );
    let csv = get("?format=csv&user=user1", Some(TOKEN));
    let rows: Vec<&str> = csv.split("\r\n\r\n").nth(1).unwrap().lines().collect();
    assert_eq!(rows.len(), 1 + 4, "{csv}");
    assert!(rows[1].contains(",user1,"), "{csv}");
    assert!(get("?since=yesterday", Some(TOKEN)).starts_with("HTTP/1.1 400"));
    drop(ingest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_over_tls_checked_against_the_configured_ca() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = support::pki::Pki::new(pki_dir.path(), "test");
    let (cert, key) = pki.server("ingest");
    let ingest_port = free_port();
    let tokens = token_file(&pki_dir.path().join("tokens"), &[("node-a", TOKEN)]);
    let _ingest = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[ingest]\nenabled = true\nlisten = \"127.0.0.1:{ingest_port}\"\ntokens = {tokens:?}\ncert = {cert:?}\nkey = {key:?}\n{}",
                principals()
            ),
            ..DaemonOptions::default()
        },
    );
    let hour = past_hour(1);
    let dir = tempfile::Builder::new()
        .prefix("gpukill-upload-")
        .tempdir()
        .unwrap();
    prefill(&dir.path().join("state"), &[hour], 1, 1);
    std::fs::write(dir.path().join("state/node-id"), NODE_ID).unwrap();
    let token = client_token(&dir.path().join("upload.token"), TOKEN);
    // A node that trusts another CA never delivers; one that trusts the right CA does.
    let other_dir = tempfile::tempdir().unwrap();
    let other = support::pki::Pki::new(other_dir.path(), "other");
    let start = |dir: tempfile::TempDir, ca: std::path::PathBuf| {
        let socket = dir.path().join("gpukilld.sock");
        Daemon::start_on(
            dir,
            socket,
            &json!({"gpus": []}),
            DaemonOptions {
                config: format!(
                    "[upload]\nurl = \"https://127.0.0.1:{ingest_port}/api/v1/usage\"\ntoken_file = {token:?}\nca = {ca:?}\n\
                     retry_min = \"50ms\"\nretry_max = \"100ms\"\nmax_attempts = 1000\n"
                ),
                ..DaemonOptions::default()
            },
        )
    };
    let wrong = start(dir, other.ca_file("other"));
    let answer = wait_for(&wrong, "refused by TLS", |answer| {
        answer.entries.first().is_some_and(|e| e.attempts >= 2)
    })
    .await;
    let error = answer.entries[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    let (_, dir) = wrong.stop_keeping_dir();
    let right = start(dir, pki.ca_file("test"));
    wait_for(&right, "delivered over TLS", |answer| {
        delivered(answer) == 1
    })
    .await;
}
