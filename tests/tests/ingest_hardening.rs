//! The ingest endpoint under attack (issue 17, finding 8): a real gpukilld serves
//! `[ingest]` on loopback, with one token per node bound to its node id, a reader, and a
//! principal that has a token but no entry. A node token posting another node's id, a
//! reader posting, a node reading another node, and payloads with impossible values are
//! each refused (403 and an audit event, or 400 naming the field), and the first node's
//! stored hours stay exactly as they were.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukilld::upload::payload::{GpuHour, Payload, SCHEMA, UserHour, sha256_hex};
use serde_json::{Value, json};
use support::central::{past_hour, prefill};
use support::pki::{client_token, free_port, token_file};
use support::{Daemon, DaemonOptions};

const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TOKEN_A: &str = "node-a-token-0123456789abcdef";
const TOKEN_B: &str = "node-b-token-0123456789abcdef";
const TOKEN_READER: &str = "reader-token-0123456789abcdef";
const TOKEN_STRANGER: &str = "stranger-token-0123456789abcdef";

/// An ingest daemon on a free loopback port: node-a may upload for `ID_A`, node-b for
/// `ID_B`, billing reads; stranger has a token and no `[ingest.principals]` entry.
fn ingest() -> (Daemon, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("a temp dir for the ingest");
    let tokens = token_file(
        &dir.path().join("tokens"),
        &[
            ("node-a", TOKEN_A),
            ("node-b", TOKEN_B),
            ("billing", TOKEN_READER),
            ("stranger", TOKEN_STRANGER),
        ],
    );
    let daemon = Daemon::start_with(
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[ingest]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntokens = {tokens:?}\n\
                 [ingest.principals]\n\
                 node-a = {{ role = \"node\", nodes = [\"{ID_A}\"] }}\n\
                 node-b = {{ role = \"node\", nodes = [\"{ID_B}\"] }}\n\
                 billing = {{ role = \"reader\" }}\n"
            ),
            ..DaemonOptions::default()
        },
    );
    // The token file lives in `dir`; the daemon has read it.
    drop(dir);
    (daemon, port)
}

/// One HTTP/1.1 request on a new loopback connection: (status, body).
fn http(port: u16, method: &str, query: &str, token: &str, body: Option<&[u8]>) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the ingest");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut request = format!(
        "{method} /api/v1/usage{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\n"
    );
    if let Some(body) = body {
        // The headers the node's uploader sends: its key and the body's hash.
        let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let key = format!(
            "{}:{}",
            payload["node_id"].as_str().unwrap_or(""),
            payload["hour_unix_ms"]
        );
        request.push_str(&format!(
            "Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
             Content-SHA256: {}\r\nContent-Length: {}\r\n",
            sha256_hex(body),
            body.len()
        ));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    if let Some(body) = body {
        stream.write_all(body).expect("send the body");
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// Every stored row, as a reader sees it.
fn everything(port: u16) -> Value {
    let (status, body) = http(port, "GET", "?rows=users", TOKEN_READER, None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// A valid hour of `node_id`: one GPU, one user.
fn payload(node_id: &str, hour: i64, gpu_seconds: f64) -> Payload {
    Payload {
        schema: SCHEMA.into(),
        node_id: node_id.into(),
        node_name: format!("host-{}", &node_id[..4]),
        hour_unix_ms: hour,
        hour: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(hour as u64),
        )
        .to_string(),
        gpus: vec![GpuHour {
            gpu_index: 0,
            samples: 360,
            util_mean_pct: Some(41.5),
            util_min_pct: Some(3),
            util_max_pct: Some(97),
            mem_used_mean_bytes: Some(8.1e9),
            mem_used_max_bytes: Some(8 << 30),
            temp_mean_c: Some(55.2),
            temp_max_c: Some(61),
            power_mean_w: Some(250.1),
            power_max_w: Some(300.0),
            energy_wh: Some(250.1),
        }],
        users: vec![UserHour {
            gpu_index: 0,
            user: "alice".into(),
            uid: 1000,
            gpu_seconds,
            memory_gib_hours: 3.3,
            peak_memory_bytes: Some(4 << 30),
            processes: 1,
        }],
    }
}

/// The audit events of the ingest daemon that refused `principal`.
fn denials(daemon: &Daemon, principal: &str) -> Vec<Value> {
    daemon
        .events_json()
        .into_iter()
        .filter(|event| event["type"] == "deny" && event["caller_user"] == principal)
        .collect()
}

/// The `batches` rows of the ingest's own database: (node id, hour, sha256, principal,
/// revisions).
fn batches(daemon: &Daemon) -> Vec<(String, i64, String, String, i64)> {
    let path = daemon.dir.path().join("state/ingest.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open ingest.db");
    let mut statement = conn
        .prepare(
            "SELECT node_id, hour_ms, sha256, principal, revisions FROM batches
             ORDER BY node_id, hour_ms",
        )
        .expect("prepare the batches query");
    statement
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .expect("query the batches")
        .collect::<Result<_, _>>()
        .expect("read the batches")
}

/// A node daemon with node id `ID_A` whose store holds `hours`, uploading them to the
/// ingest on `port` with node-a's token.
fn node_a(hours: &[i64], port: u16) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-upload-")
        .tempdir()
        .expect("a temp dir for the node");
    let state = dir.path().join("state");
    prefill(&state, hours, 1, 1);
    std::fs::write(state.join("node-id"), format!("{ID_A}\n")).expect("write the node id");
    let token = client_token(&dir.path().join("upload.token"), TOKEN_A);
    let socket = dir.path().join("gpukilld.sock");
    Daemon::start_on(
        dir,
        socket,
        &json!({"gpus": []}),
        DaemonOptions {
            config: format!(
                "[upload]\nurl = \"http://127.0.0.1:{port}/api/v1/usage\"\ntoken_file = {token:?}\n\
                 retry_min = \"50ms\"\nretry_max = \"200ms\"\ntimeout = \"5s\"\n"
            ),
            ..DaemonOptions::default()
        },
    )
}

async fn wait_delivered(daemon: &Daemon, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = support::client(&daemon.socket)
            .await
            .uploads(pb::UploadsRequest::default())
            .await
            .expect("Uploads")
            .into_inner();
        if answer.summary.as_ref().map_or(0, |s| s.delivered) == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} hours not delivered: {answer:#?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_token_cannot_overwrite_or_read_another_node_s_hours() {
    let (ingest, port) = ingest();
    // Node A delivers its two hours through its own uploader.
    let hours = [past_hour(3), past_hour(2)];
    let node = node_a(&hours, port);
    wait_delivered(&node, 2).await;
    let before = everything(port);
    let stored_before = batches(&ingest);
    assert_eq!(stored_before.len(), 2, "{stored_before:?}");
    assert!(stored_before.iter().all(|b| b.0 == ID_A && b.3 == "node-a"));
    let users = before["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{before:#}");
    assert!(users.iter().all(|u| u["node_id"] == ID_A));

    // The attack: node-b's token posts node A's hour with different hours.
    let forged = payload(ID_A, hours[0], 3_599.0).to_json();
    let (status, body) = http(port, "POST", "", TOKEN_B, Some(&forged));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("node-b") && body.contains(ID_A) && body.contains(ID_B),
        "names the principal, the node and what it is bound to: {body}"
    );
    let denied = denials(&ingest, "node-b");
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["outcome"], "denied");
    assert_eq!(denied[0]["transport"], "ingest");
    assert_eq!(denied[0]["action"], "ingest upload");
    assert!(
        denied[0]["reason"].as_str().unwrap().contains(ID_A),
        "{denied:#?}"
    );

    // Reading node A's rows with node-b's token is refused too, and audited.
    let (status, body) = http(port, "GET", &format!("?node={ID_A}"), TOKEN_B, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("node-b") && body.contains(ID_A), "{body}");
    // Without a filter, node-b sees only its own node's rows: none yet.
    let (status, body) = http(port, "GET", "", TOKEN_B, None);
    assert_eq!(status, 200, "{body}");
    let own: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(own, json!({"gpus": [], "users": []}));
    // Node A reads its own.
    let (status, body) = http(port, "GET", &format!("?node={ID_A}"), TOKEN_A, None);
    assert_eq!(status, 200, "{body}");
    let theirs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(theirs["users"].as_array().unwrap().len(), 2);
    let reads = denials(&ingest, "node-b");
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert!(reads.iter().any(|e| e["action"] == "ingest read"));

    // A reader never uploads, not even a valid hour of a real node.
    let valid_b = payload(ID_B, hours[0], 100.0).to_json();
    let (status, body) = http(port, "POST", "", TOKEN_READER, Some(&valid_b));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("billing") && body.contains("reader"),
        "{body}"
    );
    assert_eq!(denials(&ingest, "billing").len(), 1);
    // A token whose principal has no entry may do nothing.
    let (status, body) = http(port, "POST", "", TOKEN_STRANGER, Some(&valid_b));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("stranger") && body.contains("[ingest.principals]"));
    let (status, _) = http(port, "GET", "", TOKEN_STRANGER, None);
    assert_eq!(status, 403);
    assert_eq!(denials(&ingest, "stranger").len(), 2);

    // Node A's hours are exactly as they were, and nothing of B's was stored.
    assert_eq!(everything(port), before);
    assert_eq!(batches(&ingest), stored_before);

    // Node B's own upload is stored (2xx), beside A's.
    let (status, body) = http(port, "POST", "", TOKEN_B, Some(&valid_b));
    assert_eq!(status, 200, "{body}");
    let after = batches(&ingest);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(&after[..2], &stored_before[..]);
    assert_eq!((after[2].0.as_str(), after[2].3.as_str()), (ID_B, "node-b"));
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_values_are_refused_with_400_and_never_stored() {
    let (ingest, port) = ingest();
    let hour = past_hour(2);
    let valid = payload(ID_A, hour, 3_000.0);
    let (status, body) = http(port, "POST", "", TOKEN_A, Some(&valid.to_json()));
    assert_eq!(status, 200, "{body}");
    let before = everything(port);
    let stored_before = batches(&ingest);

    // Each one a revision of the stored hour that must not replace it.
    let in_an_hour = past_hour(-2);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/gpus/0/util_mean_pct",
            json!(-5.0),
            "gpus[0].util_mean_pct",
        ),
        ("/gpus/0/util_max_pct", json!(250), "gpus[0].util_max_pct"),
        ("/gpus/0/temp_max_c", json!(10_000), "gpus[0].temp_max_c"),
        ("/gpus/0/temp_mean_c", json!(-300.0), "gpus[0].temp_mean_c"),
        ("/gpus/0/samples", json!(u64::MAX), "gpus[0].samples"),
        (
            "/gpus/0/mem_used_max_bytes",
            json!(u64::MAX),
            "gpus[0].mem_used_max_bytes",
        ),
        ("/gpus/0/power_mean_w", json!(1e12), "gpus[0].power_mean_w"),
        ("/gpus/0/gpu_index", json!(100_000), "gpus[0].gpu_index"),
        ("/users/0/gpu_index", json!(-1), "users[0].gpu_index"),
        ("/users/0/gpu_seconds", json!(-60.0), "users[0].gpu_seconds"),
        ("/users/0/gpu_seconds", json!(1e9), "users[0].gpu_seconds"),
        ("/users/0/processes", json!(u64::MAX), "users[0].processes"),
        (
            "/users/0/peak_memory_bytes",
            json!(u64::MAX),
            "users[0].peak_memory_bytes",
        ),
        ("/users/0/uid", json!(u32::MAX), "users[0].uid"),
        ("/hour_unix_ms", json!(hour + 1), "hour_unix_ms"),
        ("/hour_unix_ms", json!(in_an_hour), "hour_unix_ms"),
        ("/node_id", json!(""), "node_id"),
    ];
    for (pointer, value, field) in &cases {
        let mut body: Value = serde_json::from_slice(&valid.to_json()).unwrap();
        *body.pointer_mut(pointer).unwrap() = value.clone();
        let bytes = serde_json::to_vec(&body).unwrap();
        let (status, answer) = http(port, "POST", "", TOKEN_A, Some(&bytes));
        assert_eq!(status, 400, "{pointer} = {value}: {answer}");
        assert!(
            answer.contains(&format!("{field} = {value}")),
            "names the field and the value: {answer}"
        );
    }
    // A GPU twice (which the store's key would have turned into a 503).
    let mut twice = valid.clone();
    twice.gpus.push(twice.gpus[0].clone());
    let (status, answer) = http(port, "POST", "", TOKEN_A, Some(&twice.to_json()));
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("gpus[1].gpu_index"), "{answer}");
    // The largest number JSON can carry is not a number this server takes either.
    let text = String::from_utf8(valid.to_json())
        .unwrap()
        .replace("\"util_mean_pct\":41.5", "\"util_mean_pct\":1e400");
    let (status, answer) = http(port, "POST", "", TOKEN_A, Some(text.as_bytes()));
    assert_eq!(status, 400, "{answer}");

    // Nothing was stored: the hour is the valid one, never revised, and no other hour or
    // node appeared.
    assert_eq!(everything(port), before);
    assert_eq!(batches(&ingest), stored_before);
    assert_eq!(stored_before[0].4, 0, "no revision");
    // None of it was an authorization problem.
    assert!(denials(&ingest, "node-a").is_empty());
    // And a valid revision still replaces the hour.
    let revised = payload(ID_A, hour, 3_100.0);
    let (status, body) = http(port, "POST", "", TOKEN_A, Some(&revised.to_json()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(everything(port)["users"][0]["gpu_seconds"], json!(3_100.0));
}

#[test]
fn an_ingest_without_principals_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(&dir.path().join("tokens"), &[("node-a", TOKEN_A)]);
    let config = dir.path().join("gpukilld.toml");
    // A configuration written before [ingest.principals] existed.
    std::fs::write(
        &config,
        format!("[ingest]\nenabled = true\nlisten = \"127.0.0.1:1\"\ntokens = {tokens:?}\n"),
    )
    .unwrap();
    let output = Command::new(support::gpukilld())
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ingest.principals") && stderr.contains("role = \"node\""),
        "names the key and what to add: {stderr}"
    );
    // The same file with the table is accepted.
    std::fs::write(
        &config,
        format!(
            "[ingest]\nenabled = true\nlisten = \"127.0.0.1:1\"\ntokens = {tokens:?}\n\
             [ingest.principals]\nnode-a = {{ role = \"node\", nodes = [\"{ID_A}\"] }}\n"
        ),
    )
    .unwrap();
    let output = Command::new(support::gpukilld())
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
