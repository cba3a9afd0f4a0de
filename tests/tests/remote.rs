//! gpukilld on TCP: authentication is mandatory (bearer tokens, client certificates),
//! roles limit what a principal may do, and every refusal changes nothing and is audited.
//! A listener without authentication is refused at startup.

mod support;

use std::time::Duration;

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient;
use serde_json::{Value, json};
use support::pki::{Pki, bearer, free_port, tls_channel, token_file};
use support::{Daemon, DaemonOptions, Target, full_gpu, other_uid};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";

fn scenario(target: &Target) -> Value {
    json!({"gpus": [full_gpu(0, json!([
        {"pid": target.pid(), "used_memory_bytes": 1024 * support::MIB, "kind": "compute"}
    ]))]})
}

/// A node serving TLS on a free port, with tokens (ops: admin, grafana: reader) and client
/// certificates from `pki` (ops-cert: admin).
fn secure_node(pki: &Pki, scenario: &Value) -> (Daemon, u16) {
    let port = free_port();
    let (cert, key) = pki.server("server");
    let tokens = token_file(
        &pki.dir.join("tokens"),
        &[("ops", ADMIN_TOKEN), ("grafana", READER_TOKEN)],
    );
    let config = format!(
        "[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\ntokens = {tokens:?}\n\
         [tcp.principals]\nops = \"admin\"\ngrafana = \"reader\"\nops-cert = \"admin\"\n",
        ca = pki.ca_file("test"),
    );
    let daemon = Daemon::start_with(
        scenario,
        DaemonOptions {
            config,
            ..DaemonOptions::default()
        },
    );
    (daemon, port)
}

fn code(result: Result<impl Sized, tonic::Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_refuses_missing_and_wrong_credentials_and_unknown_cas_and_changes_nothing() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "test");
    let mut target = Target::sleep(Some(other_uid()));
    let (daemon, port) = secure_node(&pki, &scenario(&target));
    let channel = tls_channel(port, &pki.ca_pem(), None).await.expect("TLS");
    let mut client = GpuKillServiceClient::new(channel.clone());
    let pid = target.pid();
    let kill = || pb::KillRequest {
        target: Some(pb::kill_request::Target::Pid(pid)),
        force: true,
        ..pb::KillRequest::default()
    };

    // No credentials, a wrong token: Unauthenticated.
    let none = client.kill(tonic::Request::new(kill())).await;
    assert_eq!(code(none), tonic::Code::Unauthenticated);
    let wrong = client
        .kill(bearer(kill(), "not-the-token-0123456789"))
        .await;
    let status = wrong.expect_err("a wrong token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("not valid"), "{status:?}");
    // A reader may list but not kill.
    let listed = client
        .list(bearer(pb::ListRequest::default(), READER_TOKEN))
        .await;
    assert_eq!(listed.unwrap().into_inner().snapshot.unwrap().gpus.len(), 1);
    let status = client
        .kill(bearer(kill(), READER_TOKEN))
        .await
        .expect_err("a reader may not kill");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("reader"), "{status:?}");
    // A certificate from another CA: the handshake fails.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path(), "other");
    let (cert, key) = other.client("ops-cert");
    let refused = match tls_channel(port, &pki.ca_pem(), Some((&cert, &key))).await {
        Ok(channel) => GpuKillServiceClient::new(channel)
            .list(pb::ListRequest::default())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a certificate from an unknown CA is refused");
    // Nothing changed.
    assert!(target.alive(), "no refused request killed the target");

    // A certificate from the right CA names its principal.
    let (cert, key) = pki.client("ops-cert");
    let mut with_cert = GpuKillServiceClient::new(
        tls_channel(port, &pki.ca_pem(), Some((&cert, &key)))
            .await
            .expect("TLS with a client certificate"),
    );
    let version = with_cert.version(pb::VersionRequest {}).await.unwrap();
    assert_eq!(version.get_ref().node_id.len(), 32);

    // Every refusal is in the audit trail; the handshake refusal too.
    let events = daemon.events_json();
    let denials: Vec<&Value> = events.iter().filter(|e| e["type"] == "deny").collect();
    let reasons: Vec<String> = denials
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("no credentials")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not valid")),
        "{reasons:#?}"
    );
    assert!(reasons.iter().any(|r| r.contains("reader")), "{reasons:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("client certificate refused")),
        "{reasons:#?}"
    );
    assert!(
        denials.iter().all(|e| e["transport"] == "tcp"),
        "{denials:#?}"
    );

    // An admin token kills.
    let killed = client.kill(bearer(kill(), ADMIN_TOKEN)).await.unwrap();
    assert_eq!(killed.get_ref().results.len(), 1);
    assert!(target.exits_within(Duration::from_secs(10)));
    let events = daemon.events_json();
    let kill_event = events
        .iter()
        .find(|e| e["type"] == "kill")
        .expect("the kill is audited");
    assert_eq!(kill_event["caller_user"], "ops");
    assert_eq!(kill_event["transport"], "tcp");
}

#[test]
fn a_tcp_listener_without_authentication_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let start = |tcp: &str| support::start_refused(dir.path(), &format!("[tcp]\n{tcp}"));
    let (code, stderr) = start("listen = \"0.0.0.0:9401\"\n");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("tcp.listen = 0.0.0.0:9401") && stderr.contains("no authentication"),
        "{stderr}"
    );
    let (code, stderr) = start("listen = \"0.0.0.0:9401\"\ninsecure_loopback = true\n");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("loopback address only"), "{stderr}");
    let (code, stderr) = start("listen = \"0.0.0.0:9401\"\ntokens = \"/etc/gpukill/tokens\"\n");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("no TLS"), "{stderr}");
    assert!(
        !dir.path().join("gpukilld.sock").exists(),
        "nothing was started"
    );
}

#[test]
fn a_readable_token_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(&dir.path().join("tokens"), &[("ops", ADMIN_TOKEN)]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = support::start_refused(
        dir.path(),
        &format!(
            "[tcp]\nlisten = \"127.0.0.1:{}\"\ntokens = {tokens:?}\n",
            free_port()
        ),
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}
