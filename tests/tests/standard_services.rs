//! The standard services stock tools use, against the real daemon: the socket path as
//! `:authority` (as grpc C-core and grpc-java send it) is served; `grpc.health.v1.Health`
//! goes NOT_SERVING while NVML hangs and back, and tells watchers; health and reflection
//! streams do not hold the daemon's shutdown open; on TCP both need credentials and a role
//! that may read.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::gpu_kill_service_server::GpuKillServiceServer;
use prost::Message;
use serde_json::{Value, json};
use support::pki::{Pki, bearer, free_port, tls_channel, token_file};
use support::{Daemon, DaemonOptions, full_gpu};
use tokio_stream::StreamExt;
use tonic::server::NamedService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

const NODE_SERVICE: &str = <GpuKillServiceServer<()> as NamedService>::NAME;

fn scenario(hang: Value) -> Value {
    let mut gpu = full_gpu(0, json!([]));
    gpu["hang"] = hang;
    json!({"gpus": [gpu]})
}

// --- The socket path as :authority, in hand-made HTTP/2 -----------------------------------

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("a small frame")
        .to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK string (no Huffman coding): its length, 7-bit prefix, then its bytes.
fn hpack_string(block: &mut Vec<u8>, text: &str) {
    let mut length = text.len();
    if length < 127 {
        block.push(length as u8);
    } else {
        block.push(127);
        length -= 127;
        while length >= 128 {
            block.push((length % 128) as u8 | 0x80);
            length /= 128;
        }
        block.push(length as u8);
    }
    block.extend_from_slice(text.as_bytes());
}

/// A unary `Version` call with `authority` as `:authority` on a fresh connection to
/// `socket`: the decoded answer, or how the daemon refused the stream.
fn version_with_authority(
    socket: &std::path::Path,
    authority: &str,
) -> Result<pb::VersionResponse, String> {
    let io = |what: &'static str| move |error: std::io::Error| format!("{what}: {error}");
    let mut connection =
        std::os::unix::net::UnixStream::connect(socket).map_err(io("connecting"))?;
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("setting a read timeout"))?;
    let mut headers = Vec::new();
    let path = format!("/{NODE_SERVICE}/Version");
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path.as_str()),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // A literal header field without indexing, with a literal name.
        headers.push(0x00);
        hpack_string(&mut headers, name);
        hpack_string(&mut headers, value);
    }
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    request.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    request.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA: an empty message, END_STREAM
    connection
        .write_all(&request)
        .map_err(io("writing the request"))?;

    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        connection
            .read_exact(&mut head)
            .map_err(io("reading a frame"))?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        connection
            .read_exact(&mut payload)
            .map_err(io("reading a frame"))?;
        match (kind, stream) {
            (0x4, 0) if flags & 0x1 == 0 => connection
                .write_all(&frame(0x4, 0x1, 0, &[]))
                .map_err(io("acknowledging the settings"))?,
            (0x0, 1) => data.extend_from_slice(&payload),
            // Trailers (or a trailers-only answer): the call is over.
            (0x1, 1) if flags & 0x1 != 0 => break,
            (0x3, 1) => return Err(format!("RST_STREAM, error code {payload:?}")),
            (0x7, _) => return Err(format!("GOAWAY {payload:?}")),
            _ => {}
        }
    }
    // One gRPC message: a compression flag, a 4-byte length, the protobuf.
    if data.len() < 5 {
        return Err(format!("no message, {} bytes of data", data.len()));
    }
    pb::VersionResponse::decode(&data[5..]).map_err(|error| error.to_string())
}

#[test]
fn the_socket_path_as_authority_is_served_as_no_authority() {
    let daemon = Daemon::start(&scenario(json!([])));
    let path = daemon.socket.to_str().unwrap().to_string();
    let encoded = path.replace('/', "%2F");
    for authority in [
        encoded.as_str(),                  // grpc C-core >= 1.57 (Python, Ruby, C++)
        path.as_str(),                     // grpc-java, grpc-swift
        encoded.trim_start_matches("%2F"), // C-core on a `unix:relative` target
        "localhost",                       // grpc-go, tonic, grpc.default_authority
    ] {
        let version = version_with_authority(&daemon.socket, authority).unwrap_or_else(|error| {
            panic!(
                "authority {authority:?}: {error}\ndaemon log:\n{}",
                daemon.log_text()
            )
        });
        assert_eq!(version.api, "gpukill.v1", "authority {authority:?}");
    }
}

// --- Health follows the snapshots ----------------------------------------------------------

async fn check(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("Check answers")
        .into_inner()
        .status
}

/// Polls `Check(service)` until it answers `status` or 10 s pass.
async fn wait_for(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    status: ServingStatus,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(client, service).await != status as i32 {
        assert!(
            Instant::now() < deadline,
            "{service:?} never turned {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next status a `Watch` stream sends, within 10 s.
async fn next_status(stream: &mut tonic::Streaming<HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a health status within 10 s")
        .expect("the stream is open")
        .expect("a status")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_nvml_hangs_and_serving_again_after() {
    let daemon = Daemon::start(&scenario(json!([])));
    let mut health = HealthClient::new(daemon_channel(&daemon).await);
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(check(&mut health, "").await, serving);
    assert_eq!(check(&mut health, NODE_SERVICE).await, serving);
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, serving);

    daemon.set_scenario(&scenario(json!(["nvmlDeviceGetPowerUsage"])));
    wait_for(&mut health, NODE_SERVICE, ServingStatus::NotServing).await;
    assert_eq!(check(&mut health, "").await, not_serving);
    assert_eq!(
        next_status(&mut watch).await,
        not_serving,
        "watchers are told"
    );
    // The reason is logged once, as the status changes.
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("gRPC health: NOT_SERVING") && l.contains("stale")),
        "{log}"
    );

    daemon.set_scenario(&scenario(json!([])));
    wait_for(&mut health, NODE_SERVICE, ServingStatus::Serving).await;
    assert_eq!(check(&mut health, "").await, serving);
    assert_eq!(next_status(&mut watch).await, serving);
}

async fn daemon_channel(daemon: &Daemon) -> tonic::transport::Channel {
    support::channel(&daemon.socket).await
}

/// A reflection stream that stays open (its request side never ends) after `first`.
async fn open_reflection(
    channel: tonic::transport::Channel,
    first: MessageRequest,
) -> (
    tokio::sync::mpsc::Sender<ServerReflectionRequest>,
    tonic::Streaming<ServerReflectionResponse>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(first),
        })
        .await
        .expect("queue the first request");
    let answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("a reflection stream")
        .into_inner();
    (sender, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_health_and_reflection_streams_do_not_hold_the_shutdown() {
    let daemon = Daemon::start(&scenario(json!([])));
    let channel = daemon_channel(&daemon).await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: NODE_SERVICE.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    let (_still_asking, mut reflection) =
        open_reflection(channel, MessageRequest::ListServices(String::new())).await;
    let listed = reflection.next().await.unwrap().unwrap();
    assert!(matches!(
        listed.message_response,
        Some(MessageResponse::ListServicesResponse(_))
    ));

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || daemon.stop())
        .await
        .unwrap();
    assert!(status.success(), "gpukilld exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?} with streams open",
        started.elapsed()
    );
    // The watcher heard NOT_SERVING, then the stream ended as the daemon stopped.
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("the watch ended with {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), reflection.next())
        .await
        .expect("the reflection stream ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

// --- TCP: credentials and a role that may read ---------------------------------------------

const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const NODE_TOKEN: &str = "node-token-0123456789abcdefgh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tcp_health_and_reflection_need_credentials_and_a_role_that_reads() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "test");
    let port = free_port();
    let (cert, key) = pki.server("server");
    let tokens = token_file(
        &pki.dir.join("tokens"),
        &[("grafana", READER_TOKEN), ("n1", NODE_TOKEN)],
    );
    let config = format!(
        "[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {tokens:?}\n\
         [tcp.principals]\ngrafana = \"reader\"\nn1 = \"node\"\n"
    );
    let daemon = Daemon::start_with(
        &scenario(json!([])),
        DaemonOptions {
            config,
            ..DaemonOptions::default()
        },
    );
    let channel = tls_channel(port, &pki.ca_pem(), None).await.expect("TLS");
    let mut health = HealthClient::new(channel.clone());
    let request = || HealthCheckRequest {
        service: String::new(),
    };

    let none = health.check(request()).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let none = reflection
        .server_reflection_info(tokio_stream::once(list()))
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");

    let reader = health.check(bearer(request(), READER_TOKEN)).await.unwrap();
    assert_eq!(reader.into_inner().status, ServingStatus::Serving as i32);
    let mut answers = reflection
        .server_reflection_info(bearer(tokio_stream::once(list()), READER_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(services)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    assert!(services.service.iter().any(|s| s.name == NODE_SERVICE));

    // The node role registers with a coordinator and reads nothing.
    let node = health
        .check(bearer(request(), NODE_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(node.code(), tonic::Code::PermissionDenied, "{node:?}");
    assert!(node.message().contains("node role"), "{node:?}");
    // The refusal is audited (in the background: a refusal never waits on the store).
    daemon.wait_for_json(
        &["events", "--output", "json"],
        Duration::from_secs(5),
        |events| {
            events["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "deny" && e["action"] == "Health.Check" && e["caller_user"] == "n1"
                })
            })
        },
    );
}
