//! Identity and authorization attacks (issue 17, findings 5, 6, 7, 10, 12, 13), each against
//! real daemons on loopback with real uids, and each checking that the victim is untouched
//! and everyone else is still served:
//! - a principal named `NAME@lab.example` (or `4343@...`) forwarded by a coordinator is not
//!   the node's user NAME (or uid 4343);
//! - a forwarded uid 0 (root on the coordinator, or the coordinator's token replayed with
//!   forged caller fields) meets the node's protection of root's processes;
//! - `[tcp] insecure_role` other than "reader" stops the start;
//! - a second node principal cannot take over, or keep alive, another node's registration;
//! - `guard export` shows non-admins the policy with its secrets redacted;
//! - a token file owned by another uid stops the start; an egid in the admin group that the
//!   group database does not back is not admin.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::cluster_service_client::ClusterServiceClient;
use gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient;
use serde_json::{Value, json};
use support::pki::{Pki, bearer, client_token, free_port, tls_channel, token_file};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu, other_uid, user_name};

const COORDINATOR_TOKEN: &str = "coordinator-token-0123456789";
const N1_TOKEN: &str = "n1-node-token-0123456789";
const N2_TOKEN: &str = "n2-node-token-0123456789";
const AT_NAME_TOKEN: &str = "at-name-user-token-0123456789";
const AT_UID_TOKEN: &str = "at-uid-user-token-0123456789";
const UID_NAME_TOKEN: &str = "uid-name-user-token-0123456789";

/// A uid with no entry in the user database: /proc shows its processes' owner as "4343".
const BARE_UID: u32 = 4343;

fn root_uid() -> u32 {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root (they start targets and clients as other uids)"
    );
    0
}

fn nobody() -> u32 {
    other_uid()
}

/// A coordinator "coord" (no GPUs) and one node "n1" whose GPU 0 runs `processes`, on TLS
/// with bearer tokens. The coordinator knows node principals n1 and n2 (n2's node never
/// runs: its token is the attacker's), users `NOBODY@lab.example` and `4343@lab.example`;
/// n1 knows the coordinator and a user principal named "4343".
struct Cluster {
    _pki_dir: tempfile::TempDir,
    pki: Pki,
    coordinator: Daemon,
    /// The coordinator's configuration, to start it again on its state.
    coordinator_config: String,
    coordinator_port: u16,
    node: Daemon,
    node_port: u16,
}

impl Cluster {
    async fn start(processes: Value) -> Cluster {
        root_uid();
        let pki_dir = tempfile::tempdir().expect("a temp dir for the PKI");
        let pki = Pki::new(pki_dir.path(), "test");
        let (cert, key) = pki.server("server");
        let at_name = format!("{}@lab.example", user_name(nobody()));
        let at_uid = format!("{BARE_UID}@lab.example");
        let coordinator_tokens = token_file(
            &pki.dir.join("coordinator-tokens"),
            &[
                ("n1", N1_TOKEN),
                ("n2", N2_TOKEN),
                (&at_name, AT_NAME_TOKEN),
                (&at_uid, AT_UID_TOKEN),
            ],
        );
        let coordinator_port = free_port();
        let own_token = client_token(&pki.dir.join("coordinator.token"), COORDINATOR_TOKEN);
        let ca = pki.ca_file("test");
        let coordinator_config = format!(
            "[node]\nname = \"coord\"\n\
             [nvidia]\nenabled = false\n\
             [tcp]\nlisten = \"127.0.0.1:{coordinator_port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {coordinator_tokens:?}\n\
             [tcp.principals]\nn1 = \"node\"\nn2 = \"node\"\n{at_name:?} = \"user\"\n{at_uid:?} = \"user\"\n\
             [cluster]\nrole = \"coordinator\"\nheartbeat_interval = \"200ms\"\nnode_timeout = \"1s\"\ndeadline = \"500ms\"\n\
             token_file = {own_token:?}\nca = {ca:?}\n"
        );
        let coordinator = Daemon::start_with(
            &json!({"gpus": []}),
            DaemonOptions {
                config: coordinator_config.clone(),
                ..DaemonOptions::default()
            },
        );
        let node_port = free_port();
        let node_tokens = token_file(
            &pki.dir.join("n1-tokens"),
            &[
                ("coord", COORDINATOR_TOKEN),
                (&BARE_UID.to_string(), UID_NAME_TOKEN),
            ],
        );
        let node_own = client_token(&pki.dir.join("n1.token"), N1_TOKEN);
        let node = Daemon::start_with(
            &json!({"gpus": [full_gpu(0, processes)]}),
            DaemonOptions {
                config: format!(
                    "[node]\nname = \"n1\"\n\
                     [tcp]\nlisten = \"127.0.0.1:{node_port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {node_tokens:?}\n\
                     [tcp.principals]\ncoord = \"coordinator\"\n\"{BARE_UID}\" = \"user\"\n\
                     [cluster]\ncoordinator = \"https://127.0.0.1:{coordinator_port}\"\nadvertise = \"https://127.0.0.1:{node_port}\"\n\
                     heartbeat_interval = \"200ms\"\nnode_timeout = \"1s\"\ntoken_file = {node_own:?}\nca = {ca:?}\n"
                ),
                ..DaemonOptions::default()
            },
        );
        let cluster = Cluster {
            _pki_dir: pki_dir,
            pki,
            coordinator,
            coordinator_config,
            coordinator_port,
            node,
            node_port,
        };
        cluster.wait_for_n1().await;
        cluster
    }

    /// Every node, as the coordinator lists it to root.
    async fn nodes(&self) -> Vec<pb::Node> {
        ClusterServiceClient::new(support::channel(&self.coordinator.socket).await)
            .nodes(pb::NodesRequest {})
            .await
            .expect("Cluster.Nodes")
            .into_inner()
            .nodes
    }

    /// n1 as the coordinator lists it, once it is up.
    async fn wait_for_n1(&self) -> pb::Node {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = self.nodes().await;
            let up = nodes
                .iter()
                .find(|n| n.name == "n1" && n.state == pb::NodeState::Up as i32);
            if let Some(n1) = up {
                return n1.clone();
            }
            assert!(
                Instant::now() < deadline,
                "n1 never registered: {nodes:#?}\n{}",
                self.coordinator.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tls(&self, port: u16) -> tonic::transport::Channel {
        tls_channel(port, &self.pki.ca_pem(), None)
            .await
            .expect("TLS to a daemon")
    }
}

fn on_gpu(targets: &[&Target]) -> Value {
    Value::Array(
        targets
            .iter()
            .map(|t| json!({"pid": t.pid(), "used_memory_bytes": 256 * MIB, "kind": "compute"}))
            .collect(),
    )
}

fn kill_pid(pid: u32) -> pb::KillRequest {
    pb::KillRequest {
        target: Some(pb::kill_request::Target::Pid(pid)),
        force: true,
        ..pb::KillRequest::default()
    }
}

/// The one result of a kill that the daemon answered.
fn outcome(response: Result<tonic::Response<pb::KillResponse>, tonic::Status>) -> pb::KillResult {
    let response = response.expect("the kill is answered (with a per-target outcome)");
    let results = response.into_inner().results;
    assert_eq!(results.len(), 1, "{results:#?}");
    results.into_iter().next().expect("one result")
}

fn with_metadata<T>(
    mut request: tonic::Request<T>,
    pairs: &[(&'static str, &str)],
) -> tonic::Request<T> {
    for (name, value) in pairs {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("an ASCII header value"));
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_with_an_at_sign_forwarded_by_a_coordinator_is_not_that_local_user() {
    let nobody = nobody();
    let mut named_victim = Target::sleep(Some(nobody));
    let mut uid_victim = Target::sleep(Some(BARE_UID));
    let cluster = Cluster::start(on_gpu(&[&named_victim, &uid_victim])).await;
    let mut coordinator = GpuKillServiceClient::new(cluster.tls(cluster.coordinator_port).await);

    // `nobody@lab.example` through the coordinator, for nobody's process on n1: the old
    // `user@host` header split at the first '@' and made this user "nobody" there.
    for (token, victim, principal) in [
        (
            AT_NAME_TOKEN,
            &named_victim,
            format!("{}@lab.example", user_name(nobody)),
        ),
        (AT_UID_TOKEN, &uid_victim, format!("{BARE_UID}@lab.example")),
    ] {
        let request = with_metadata(
            bearer(kill_pid(victim.pid()), token),
            &[("gpukill-node", "n1")],
        );
        let result = outcome(coordinator.kill(request).await);
        assert_eq!(
            result.outcome,
            pb::KillOutcome::Denied as i32,
            "{principal}: {result:?}"
        );
        assert!(result.reason.contains(&principal), "{result:?}");
    }
    // A principal named like the bare uid, directly on the node, is not uid 4343 either.
    let mut node = GpuKillServiceClient::new(cluster.tls(cluster.node_port).await);
    let result = outcome(
        node.kill(bearer(kill_pid(uid_victim.pid()), UID_NAME_TOKEN))
            .await,
    );
    assert_eq!(result.outcome, pb::KillOutcome::Denied as i32, "{result:?}");

    // Nothing changed: both victims run, n1 still lists them to root on the coordinator,
    // and n1's audit names each refused caller in full.
    assert!(named_victim.alive() && uid_victim.alive());
    let listed = cluster
        .coordinator
        .ctl_json(&["--node", "n1", "list", "--output", "json"]);
    assert_eq!(
        listed["procs"].as_array().map(Vec::len),
        Some(2),
        "{listed:#}"
    );
    let events = cluster.node.events_json();
    let denied: Vec<&Value> = events.iter().filter(|e| e["outcome"] == "denied").collect();
    for who in [
        format!("{}@lab.example@coord", user_name(nobody)),
        format!("{BARE_UID}@lab.example@coord"),
    ] {
        assert!(
            denied
                .iter()
                .any(|e| e["caller_user"] == who.as_str() && e["via"] == "coord"),
            "{who} in {denied:#?}"
        );
    }
    assert!(
        events
            .iter()
            .all(|e| e["type"] != "kill" || e["outcome"] == "denied"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_uid_0_meets_the_protection_of_roots_processes_on_the_node() {
    root_uid();
    let mut victim = Target::sleep(None);
    let cluster = Cluster::start(on_gpu(&[&victim])).await;
    let pid = victim.pid().to_string();

    // Root on the coordinator, forwarded: protected on n1.
    let forwarded = cluster
        .coordinator
        .ctl(&["--node", "n1", "kill", "--pid", &pid, "--force"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&forwarded.stdout),
        String::from_utf8_lossy(&forwarded.stderr)
    );
    assert_eq!(forwarded.status.code(), Some(4), "{said}");
    assert!(said.contains("protected"), "{said}");
    assert!(victim.alive());

    // The coordinator's token replayed straight at n1, with forged caller fields for root.
    let mut node = GpuKillServiceClient::new(cluster.tls(cluster.node_port).await);
    let forged = with_metadata(
        bearer(kill_pid(victim.pid()), COORDINATOR_TOKEN),
        &[
            ("gpukill-caller-user", "root"),
            ("gpukill-caller-host", "coord"),
            ("gpukill-caller-uid", "0"),
            ("gpukill-caller-role", "admin"),
        ],
    );
    let result = outcome(node.kill(forged).await);
    assert_eq!(
        result.outcome,
        pb::KillOutcome::Protected as i32,
        "{result:?}"
    );
    assert!(result.reason.contains("root's processes"), "{result:?}");
    // The old single `user@host` field is refused outright.
    let legacy = with_metadata(
        bearer(kill_pid(victim.pid()), COORDINATOR_TOKEN),
        &[
            ("gpukill-caller", "root@coord"),
            ("gpukill-caller-uid", "0"),
            ("gpukill-caller-role", "admin"),
        ],
    );
    let status = node
        .kill(legacy)
        .await
        .expect_err("the legacy field is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        victim.alive(),
        "no forwarded request signalled root's process"
    );

    let events = cluster.node.events_json();
    let protected = events
        .iter()
        .filter(|e| e["target"]["pid"] == victim.pid() && e["outcome"] == "protected")
        .count();
    assert_eq!(protected, 2, "{events:#?}");

    // Root on n1's own socket still may: the exemption is narrowed, not gone.
    let local = cluster.node.ctl(&["kill", "--pid", &pid, "--force"]);
    assert!(local.status.success(), "{local:?}");
    assert!(victim.exits_within(Duration::from_secs(10)));
}

#[test]
fn an_insecure_role_above_reader_stops_the_start_naming_the_key() {
    for role in ["admin", "coordinator"] {
        let dir = tempfile::tempdir().unwrap();
        let (code, stderr) = support::start_refused(
            dir.path(),
            &format!(
                "[tcp]\nlisten = \"127.0.0.1:{}\"\ninsecure_loopback = true\ninsecure_role = \"{role}\"\n",
                free_port()
            ),
        );
        assert_eq!(code, Some(3), "{role}: {stderr}");
        assert!(
            stderr.contains("tcp.insecure_role")
                && stderr.contains(role)
                && stderr.contains("\"reader\""),
            "{stderr}"
        );
        assert!(
            !dir.path().join("gpukilld.sock").exists(),
            "nothing started"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_principal_cannot_take_over_or_keep_alive_a_registration() {
    let cluster = Cluster::start(json!([])).await;
    let before = cluster.wait_for_n1().await;
    let n1_id = before.node_id.clone().expect("a registered node has an id");
    let mut attacker = ClusterServiceClient::new(cluster.tls(cluster.coordinator_port).await);
    let register = |node_id: &str, name: &str| {
        bearer(
            pb::RegisterRequest {
                node_id: node_id.to_string(),
                name: name.to_string(),
                address: "https://127.0.0.1:1".into(),
                daemon_version: "0.0.0".into(),
            },
            N2_TOKEN,
        )
    };
    // n1's id under its name and under another; n1's name under another id; n1's heartbeat.
    for (node_id, name) in [
        (n1_id.as_str(), "n1"),
        (n1_id.as_str(), "evil"),
        ("f".repeat(32).as_str(), "n1"),
    ] {
        let status = attacker
            .register(register(node_id, name))
            .await
            .expect_err("another principal's registration is refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("n1") && status.message().contains("\"n2\""),
            "{status:?}"
        );
    }
    let status = attacker
        .heartbeat(bearer(
            pb::HeartbeatRequest {
                node_id: n1_id.clone(),
            },
            N2_TOKEN,
        ))
        .await
        .expect_err("another principal's heartbeat is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The registration is unchanged and n1 stays up past node_timeout on its own heartbeats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = cluster.wait_for_n1().await;
    assert_eq!(
        (&after.node_id, &after.address),
        (&before.node_id, &before.address),
        "{after:#?}"
    );
    let nodes = cluster.nodes().await;
    assert!(nodes.iter().all(|n| n.name != "evil"), "{nodes:#?}");
    // Every refusal is in the coordinator's audit trail, naming the attacker and the owner.
    let events = cluster.coordinator.events_json();
    let refusals: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "deny" && e["caller_user"] == "n2")
        .collect();
    assert_eq!(refusals.len(), 4, "{events:#?}");
    assert!(
        refusals.iter().all(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("registered by principal \"n1\""))),
        "{refusals:#?}"
    );
    assert!(
        refusals.iter().any(|e| e["action"] == "Cluster.Heartbeat"),
        "{refusals:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_stays_bound_to_its_principal_across_a_coordinator_restart() {
    let cluster = Cluster::start(json!([])).await;
    let n1_id = cluster
        .wait_for_n1()
        .await
        .node_id
        .expect("a registered node has an id");
    let Cluster {
        coordinator,
        coordinator_config,
        coordinator_port,
        node,
        pki,
        _pki_dir,
        ..
    } = cluster;
    // n1 stops (so it cannot register again first), then the coordinator restarts on its
    // state directory.
    drop(node);
    let (_, dir) = coordinator.stop_keeping_dir();
    let socket = dir.path().join("gpukilld.sock");
    let coordinator = Daemon::start_on(
        dir,
        socket,
        &json!({"gpus": []}),
        DaemonOptions {
            config: coordinator_config,
            ..DaemonOptions::default()
        },
    );
    let channel = tls_channel(coordinator_port, &pki.ca_pem(), None)
        .await
        .expect("TLS to the coordinator");
    let mut attacker = ClusterServiceClient::new(channel);
    for (node_id, name) in [(n1_id.as_str(), "evil"), ("e".repeat(32).as_str(), "n1")] {
        let status = attacker
            .register(bearer(
                pb::RegisterRequest {
                    node_id: node_id.to_string(),
                    name: name.to_string(),
                    address: "https://127.0.0.1:1".into(),
                    daemon_version: "0.0.0".into(),
                },
                N2_TOKEN,
            ))
            .await
            .expect_err("n1's id and name are still n1's after the restart");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("\"n1\""),
            "the refusal names the owner: {status:?}"
        );
    }
    let nodes = ClusterServiceClient::new(support::channel(&coordinator.socket).await)
        .nodes(pb::NodesRequest {})
        .await
        .expect("Cluster.Nodes")
        .into_inner()
        .nodes;
    assert!(nodes.iter().all(|n| n.name != "evil"), "{nodes:#?}");
}

#[test]
fn guard_export_shows_non_admins_the_policy_without_its_secrets() {
    let nobody = nobody();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guard.toml");
    let policy = "# Webhook relay (was http://old-user:old-pass@relay.example/x?key=oldkey)\n\
                  mode = \"dry-run\"\n\
                  [notify]\n\
                  webhook = \"http://hook:s3cr3t-pass@127.0.0.1:9/hooks/T0/B0/SLACKSECRET?token=tok-123456\"\n\
                  webhook_retries = 1\n";
    std::fs::write(&path, policy).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let daemon = Daemon::start_with(
        &json!({"gpus": [full_gpu(0, json!([]))]}),
        DaemonOptions {
            env: vec![("GPUKILL_GUARD_POLICY".into(), path.display().to_string())],
            ..DaemonOptions::default()
        },
    );
    daemon.wait_for_json(
        &["guard", "status", "--output", "json"],
        Duration::from_secs(10),
        |s| s["loaded"] == true,
    );

    let shown = daemon.ctl_as(nobody, &["guard", "export"]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    for secret in [
        "old-pass",
        "oldkey",
        "s3cr3t-pass",
        "SLACKSECRET",
        "tok-123456",
        "hook:",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} shown to a non-admin:\n{text}"
        );
    }
    assert!(text.contains("<redacted>"), "{text}");
    assert!(
        text.contains("127.0.0.1:9"),
        "the receiver's host stays: {text}"
    );
    // Still a valid policy: the same file, secrets aside.
    gpukilld::guard::policy::CompiledPolicy::parse(&text, None, &|_| None)
        .unwrap_or_else(|error| panic!("the redacted policy does not parse: {error}\n{text}"));

    // Root sees the file as it is; the file and the loaded policy are unchanged.
    let root = daemon.ctl(&["guard", "export"]);
    assert_eq!(String::from_utf8_lossy(&root.stdout), policy);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), policy);
    let status = daemon.ctl_json(&["guard", "status", "--output", "json"]);
    assert_eq!(status["loaded"], true, "{status:#}");
}

#[test]
fn a_token_file_owned_by_another_uid_stops_the_start() {
    let nobody = nobody();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        &dir.path().join("tokens"),
        &[("ops", "ops-admin-token-0123456789")],
    );
    let bearer_file = client_token(&dir.path().join("cluster.token"), COORDINATOR_TOKEN);
    for file in [&tokens, &bearer_file] {
        nix::unistd::chown(
            file.as_path(),
            Some(nix::unistd::Uid::from_raw(nobody)),
            None,
        )
        .unwrap();
    }
    let start = |extra: &str| {
        let tcp = format!("[tcp]\nlisten = \"127.0.0.1:{}\"\n{extra}", free_port());
        support::start_refused(dir.path(), &tcp)
    };
    let (code, stderr) = start(&format!("tokens = {tokens:?}\n"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&tokens.display().to_string())
            && stderr.contains(&format!("owned by uid {nobody}")),
        "{stderr}"
    );
    // Refused before the socket exists.
    assert!(!dir.path().join("gpukilld.sock").exists());
    let (code, stderr) = start(&format!(
        "insecure_loopback = true\n[cluster]\nrole = \"coordinator\"\ntoken_file = {bearer_file:?}\n"
    ));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&bearer_file.display().to_string())
            && stderr.contains(&format!("owned by uid {nobody}")),
        "{stderr}"
    );
}

#[test]
fn an_admin_group_egid_the_group_database_does_not_back_is_not_admin() {
    let nobody = nobody();
    let mut victim = Target::sleep(Some(BARE_UID));
    let daemon = Daemon::start_with(
        &json!({"gpus": [full_gpu(0, on_gpu(&[&victim]))]}),
        DaemonOptions {
            // Group root (gid 0), of which the database does not make nobody a member.
            config: "admin_group = \"root\"\n".into(),
            ..DaemonOptions::default()
        },
    );
    // A `newgrp root` shell, as far as the kernel's credentials go: uid nobody, egid 0.
    let output = Command::new(support::shared_gpukillctl())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["kill", "--pid", &victim.pid().to_string(), "--force"])
        .uid(nobody)
        .gid(0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(victim.alive(), "an egid alone did not make nobody an admin");
    let events = daemon.events_json();
    let denied = events
        .iter()
        .find(|e| e["target"]["pid"] == victim.pid())
        .unwrap_or_else(|| panic!("the refusal is audited: {events:#?}"));
    assert_eq!(denied["outcome"], "denied", "{denied:#}");
    assert_eq!(denied["caller_uid"], nobody, "{denied:#}");
}
