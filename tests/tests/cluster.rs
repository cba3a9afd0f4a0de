//! A coordinator and three nodes, each a real gpukilld on its own fake NVML scenario, on
//! loopback TCP with TLS and bearer tokens: nodes register and send heartbeats; `Cluster.List`
//! shows every node's GPUs, a killed node is reported unreachable within the deadline while
//! the others still answer, and a restarted node comes back under the same id; a kill sent
//! through the coordinator with `--node` runs on the node, as the caller the coordinator
//! verified, audited there with both names; a node's critical GPU shows in `cluster list`
//! and `cluster contention` counts it as unhealthy, never as free.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::cluster_service_client::ClusterServiceClient;
use serde_json::{Value, json};
use support::pki::{Pki, client_token, free_port, token_file};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu, other_uid};

const COORDINATOR_TOKEN: &str = "coordinator-token-0123456789";

fn node_token(name: &str) -> String {
    format!("{name}-node-token-0123456789")
}

/// The test cluster: a coordinator named "coord" (no GPUs of its own) and nodes n1..nN.
struct Cluster {
    _pki_dir: tempfile::TempDir,
    pki: Pki,
    coordinator: Daemon,
    coordinator_port: u16,
    nodes: Vec<Option<Node>>,
}

struct Node {
    port: u16,
    daemon: Daemon,
}

/// Fast timings, so a dead node is noticed in about a second.
const DEADLINE_MS: u64 = 500;

impl Cluster {
    fn start(scenarios: Vec<Value>) -> Cluster {
        let pki_dir = tempfile::tempdir().expect("a temp dir for the PKI");
        let pki = Pki::new(pki_dir.path(), "test");
        let (cert, key) = pki.server("server");
        let names: Vec<String> = (1..=scenarios.len()).map(|i| format!("n{i}")).collect();
        let mut tokens: Vec<(String, String)> = names
            .iter()
            .map(|name| (name.clone(), node_token(name)))
            .collect();
        tokens.push(("ops".into(), "ops-admin-token-0123456789".into()));
        let borrowed: Vec<(&str, &str)> = tokens
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        let coordinator_tokens = token_file(&pki.dir.join("coordinator-tokens"), &borrowed);
        let principals: String = names
            .iter()
            .map(|name| format!("{name} = \"node\"\n"))
            .collect();
        let coordinator_port = free_port();
        let coordinator_client_token =
            client_token(&pki.dir.join("coordinator.token"), COORDINATOR_TOKEN);
        let config = format!(
            "[node]\nname = \"coord\"\n\
             [nvidia]\nenabled = false\n\
             [tcp]\nlisten = \"127.0.0.1:{coordinator_port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {coordinator_tokens:?}\n\
             [tcp.principals]\n{principals}ops = \"admin\"\n\
             [cluster]\nrole = \"coordinator\"\nheartbeat_interval = \"200ms\"\nnode_timeout = \"1s\"\ndeadline = \"{DEADLINE_MS}ms\"\n\
             token_file = {coordinator_client_token:?}\nca = {ca:?}\n",
            ca = pki.ca_file("test"),
        );
        let coordinator = Daemon::start_with(
            &json!({"gpus": []}),
            DaemonOptions {
                config,
                ..DaemonOptions::default()
            },
        );
        let mut cluster = Cluster {
            _pki_dir: pki_dir,
            pki,
            coordinator,
            coordinator_port,
            nodes: Vec::new(),
        };
        for (name, scenario) in names.iter().zip(scenarios) {
            let node = cluster.start_node(name, &scenario, None);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn node_options(&self, name: &str, port: u16) -> DaemonOptions {
        let (cert, key) = (
            self.pki.dir.join("server.pem"),
            self.pki.dir.join("server.key"),
        );
        let tokens = token_file(
            &self.pki.dir.join(format!("{name}-tokens")),
            &[("coord", COORDINATOR_TOKEN)],
        );
        let own_token = client_token(
            &self.pki.dir.join(format!("{name}.token")),
            &node_token(name),
        );
        let config = format!(
            "[node]\nname = \"{name}\"\n\
             [tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = {cert:?}\nkey = {key:?}\ntokens = {tokens:?}\n\
             [tcp.principals]\ncoord = \"coordinator\"\n\
             [cluster]\ncoordinator = \"https://127.0.0.1:{coordinator}\"\nadvertise = \"https://127.0.0.1:{port}\"\n\
             heartbeat_interval = \"200ms\"\nnode_timeout = \"1s\"\ntoken_file = {own_token:?}\nca = {ca:?}\n",
            coordinator = self.coordinator_port,
            ca = self.pki.ca_file("test"),
        );
        DaemonOptions {
            config,
            ..DaemonOptions::default()
        }
    }

    /// Starts node `name` (in `dir` with its state, when restarting).
    fn start_node(
        &self,
        name: &str,
        scenario: &Value,
        restart: Option<(tempfile::TempDir, PathBuf, u16)>,
    ) -> Node {
        let (daemon, port) = match restart {
            Some((dir, socket, port)) => (
                Daemon::start_on(dir, socket, scenario, self.node_options(name, port)),
                port,
            ),
            None => {
                let port = free_port();
                (
                    Daemon::start_with(scenario, self.node_options(name, port)),
                    port,
                )
            }
        };
        Node { port, daemon }
    }

    fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().expect("node running")
    }

    async fn client(&self) -> ClusterServiceClient<tonic::transport::Channel> {
        ClusterServiceClient::new(support::channel(&self.coordinator.socket).await)
    }

    async fn nodes(&self) -> Vec<pb::Node> {
        self.client()
            .await
            .nodes(pb::NodesRequest {})
            .await
            .expect("Cluster.Nodes")
            .into_inner()
            .nodes
    }

    async fn list(&self) -> pb::ListAllResponse {
        self.client()
            .await
            .list_all(pb::ListAllRequest::default())
            .await
            .expect("Cluster.List")
            .into_inner()
    }

    /// Waits until `accept` holds for the coordinator's node list.
    async fn wait_for_nodes(
        &self,
        what: &str,
        accept: impl Fn(&[pb::Node]) -> bool,
    ) -> Vec<pb::Node> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let nodes = self.nodes().await;
            if accept(&nodes) {
                return nodes;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {nodes:#?}\ncoordinator log:\n{}",
                self.coordinator.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn up(nodes: &[pb::Node], name: &str) -> bool {
    nodes
        .iter()
        .any(|node| node.name == name && node.state == pb::NodeState::Up as i32)
}

fn scenario_with(gpus: usize, processes: Value) -> Value {
    let mut list: Vec<Value> = (0..gpus).map(|i| full_gpu(i as u32, json!([]))).collect();
    list[0]["processes"] = processes;
    json!({"gpus": list})
}

fn gpus_by_node(list: &pb::ListAllResponse) -> Vec<(String, Option<usize>)> {
    list.nodes
        .iter()
        .map(|node| {
            (
                node.node
                    .as_ref()
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                node.snapshot.as_ref().map(|s| s.gpus.len()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_list_shows_every_node_and_a_dead_node_within_the_deadline() {
    let mut cluster = Cluster::start(vec![
        scenario_with(1, json!([])),
        scenario_with(2, json!([])),
        scenario_with(1, json!([])),
    ]);
    let nodes = cluster
        .wait_for_nodes("all three nodes register", |nodes| {
            ["n1", "n2", "n3"].iter().all(|name| up(nodes, name))
        })
        .await;
    let n2_id = nodes
        .iter()
        .find(|node| node.name == "n2")
        .and_then(|node| node.node_id.clone())
        .expect("n2 has an id");
    assert!(
        nodes.iter().all(|node| node.source == "registered"),
        "{nodes:#?}"
    );

    let list = cluster.list().await;
    assert_eq!(
        gpus_by_node(&list),
        [
            ("n1".to_string(), Some(1)),
            ("n2".to_string(), Some(2)),
            ("n3".to_string(), Some(1))
        ],
        "{list:#?}"
    );
    assert_eq!(list.deadline_ms, DEADLINE_MS);

    // n2 dies: the next list still answers, within the deadline, naming n2 unreachable.
    let n2 = cluster.nodes[1].take().expect("n2");
    let (port, socket, scenario) = (
        n2.port,
        n2.daemon.socket.clone(),
        scenario_with(2, json!([])),
    );
    let dir = n2.daemon.sigkill_keeping_dir();
    let started = Instant::now();
    let list = cluster.list().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(DEADLINE_MS) + Duration::from_millis(700),
        "took {took:?}"
    );
    let by_node = gpus_by_node(&list);
    assert_eq!(by_node[0], ("n1".to_string(), Some(1)));
    assert_eq!(by_node[1], ("n2".to_string(), None));
    assert_eq!(by_node[2], ("n3".to_string(), Some(1)));
    let error = list.nodes[1].error.clone().unwrap_or_default();
    assert!(
        error.contains("unreachable") || error.contains("deadline") || error.contains("down"),
        "{error}"
    );
    // Without heartbeats it is down after node_timeout, and then not even asked.
    cluster
        .wait_for_nodes("n2 is marked down", |nodes| {
            nodes
                .iter()
                .any(|node| node.name == "n2" && node.state == pb::NodeState::Down as i32)
        })
        .await;
    let started = Instant::now();
    let list = cluster.list().await;
    assert!(started.elapsed() < Duration::from_millis(DEADLINE_MS));
    assert!(
        list.nodes[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no heartbeat")),
        "{list:#?}"
    );

    // Restarted with its state, n2 comes back under the same id.
    let n2 = cluster.start_node("n2", &scenario, Some((dir, socket, port)));
    cluster.nodes[1] = Some(n2);
    let nodes = cluster
        .wait_for_nodes("n2 comes back", |nodes| up(nodes, "n2"))
        .await;
    assert_eq!(
        nodes
            .iter()
            .find(|node| node.name == "n2")
            .and_then(|node| node.node_id.clone()),
        Some(n2_id)
    );
    let list = cluster.list().await;
    assert_eq!(gpus_by_node(&list)[1], ("n2".to_string(), Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_through_the_coordinator_runs_on_the_node_as_the_verified_caller() {
    let nobody = other_uid();
    let mut victim = Target::sleep(Some(nobody));
    let mut protected = Target::sleep(Some(nobody));
    let processes = json!([
        {"pid": victim.pid(), "used_memory_bytes": 512 * MIB, "kind": "compute"},
        {"pid": protected.pid(), "used_memory_bytes": 512 * MIB, "kind": "compute"},
    ]);
    let cluster = Cluster::start(vec![
        scenario_with(1, json!([])),
        scenario_with(1, processes),
    ]);
    cluster
        .wait_for_nodes("both nodes register", |nodes| {
            up(nodes, "n1") && up(nodes, "n2")
        })
        .await;
    let n2 = &cluster.node(1).daemon;

    // A user who is not an admin on the coordinator may not kill nobody's process on n2.
    let refused = cluster.coordinator.ctl_as(
        4242,
        &[
            "--node",
            "n2",
            "kill",
            "--pid",
            &protected.pid().to_string(),
            "--force",
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(protected.alive());

    // root on the coordinator is an admin there: the kill runs on n2.
    let killed = cluster.coordinator.ctl(&[
        "--node",
        "n2",
        "kill",
        "--pid",
        &victim.pid().to_string(),
        "--force",
    ]);
    assert!(
        killed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&killed.stdout),
        String::from_utf8_lossy(&killed.stderr)
    );
    assert!(victim.exits_within(Duration::from_secs(10)));
    assert!(protected.alive());

    // n2's audit trail names the coordinator and the original caller, for both.
    let events = n2.events_json();
    let kill = events
        .iter()
        .find(|e| e["type"] == "kill" && e["target"]["pid"] == victim.pid())
        .unwrap_or_else(|| panic!("the kill is audited on n2: {events:#?}"));
    assert_eq!(kill["caller_user"], "root@coord", "{kill:#}");
    assert_eq!(kill["via"], "coord", "{kill:#}");
    assert_eq!(kill["transport"], "tcp", "{kill:#}");
    let denied = events
        .iter()
        .find(|e| e["target"]["pid"] == protected.pid())
        .unwrap_or_else(|| panic!("the refusal is audited on n2: {events:#?}"));
    assert_eq!(denied["outcome"], "denied", "{denied:#}");
    assert_eq!(denied["via"], "coord", "{denied:#}");
    assert!(
        denied["caller_user"]
            .as_str()
            .is_some_and(|user| user.ends_with("@coord")),
        "{denied:#}"
    );

    // Nothing on n1 changed, and a node that does not exist is named as such.
    assert!(cluster.node(0).daemon.events_json().is_empty());
    let unknown = cluster.coordinator.ctl(&["--node", "n9", "list"]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("n9"));
}

/// The `- ` lines of `section` in `cluster contention`'s text, or its table's rows.
fn contention_section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.split("\n\n")
        .find(|section| section.starts_with(title))
        .unwrap_or_else(|| panic!("no section {title} in\n{text}"))
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with("--") && !line.starts_with(" NODE "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_gpu_shows_in_cluster_list_and_contention_never_offers_it() {
    // n2's GPU 1 reports an uncorrectable ECC error: critical from its first tick.
    let mut sick = full_gpu(1, json!([]));
    sick["ecc_volatile_uncorrected"] = json!(1);
    let cluster = Cluster::start(vec![
        scenario_with(1, json!([])),
        json!({"gpus": [full_gpu(0, json!([])), sick]}),
    ]);
    cluster
        .wait_for_nodes("both nodes register", |nodes| {
            up(nodes, "n1") && up(nodes, "n2")
        })
        .await;
    let coordinator = &cluster.coordinator;

    // cluster list, JSON: every node's GPUs with their health, as the nodes assessed it
    // (critical from n2's first tick; the wait is for both nodes to have answered).
    let list = coordinator.wait_for_json(
        &["cluster", "list", "--output", "json"],
        Duration::from_secs(15),
        |list| list["nodes"][1]["gpus"][1]["health"]["state"] == "critical",
    );
    let health = |node: usize, gpu: usize| list["nodes"][node]["gpus"][gpu]["health"].clone();
    assert_eq!(list["nodes"][1]["name"], "n2", "{list:#}");
    assert_eq!(health(0, 0)["state"], "ok", "{list:#}");
    assert_eq!(health(1, 0)["state"], "ok", "{list:#}");
    assert_eq!(
        health(1, 1)["reasons"][0]["condition"],
        "ecc_uncorrectable",
        "{list:#}"
    );
    let reason = health(1, 1)["reasons"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("uncorrectable ECC"), "{reason}");

    // cluster list, table: the HEALTH column, and a line naming the critical GPU and why.
    let output = coordinator.ctl(&["cluster", "list"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split('|').map(str::trim).collect();
    let column = header
        .iter()
        .position(|cell| *cell == "HEALTH")
        .unwrap_or_else(|| panic!("a HEALTH column in\n{text}"));
    let health_cells: Vec<(String, String, String)> = lines[2..]
        .iter()
        .take_while(|line| line.starts_with(' '))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[0].to_owned(),
                cells[1].to_owned(),
                cells[column].to_owned(),
            )
        })
        .collect();
    let cell =
        |node: &str, gpu: &str, health: &str| (node.to_owned(), gpu.to_owned(), health.to_owned());
    assert_eq!(
        health_cells,
        [
            cell("n1", "0", "ok"),
            cell("n2", "0", "ok"),
            cell("n2", "1", "critical")
        ],
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nn2: GPU 1 (NVIDIA A100-SXM4-80GB): critical: {reason}\n"
        )),
        "{text}"
    );

    // cluster contention, JSON: n2's GPU 1 is unhealthy, in no other list, and not offered.
    let contention = coordinator.ctl_json(&["cluster", "contention", "--output", "json"]);
    let places = |list: &str| -> Vec<(String, u64, String)> {
        contention[list]
            .as_array()
            .unwrap_or_else(|| panic!("{list} in {contention:#}"))
            .iter()
            .map(|gpu| {
                (
                    gpu["node"].as_str().unwrap_or_default().to_owned(),
                    gpu["gpu_index"].as_u64().unwrap_or(u64::MAX),
                    gpu["health_state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let place = |node: &str, index: u64, health: &str| (node.to_owned(), index, health.to_owned());
    assert_eq!(
        places("unhealthy"),
        [place("n2", 1, "critical")],
        "{contention:#}"
    );
    assert_eq!(contention["unhealthy"][0]["health_reason"], json!(reason));
    assert_eq!(
        places("free"),
        [place("n1", 0, "ok"), place("n2", 0, "ok")],
        "{contention:#}"
    );
    assert!(places("busy").is_empty(), "{contention:#}");
    assert!(places("idle").is_empty(), "{contention:#}");
    let suggestions: Vec<&str> = contention["suggestions"]
        .as_array()
        .map(|lines| lines.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        suggestions.contains(&"2 free GPUs: n1 GPU 0, n2 GPU 0"),
        "{suggestions:#?}"
    );
    assert!(
        suggestions.contains(
            &format!(
                "n2 GPU 1 is critical ({reason}): not counted as free; an admin checks it with \
                 `gpukillctl --node n2 health`"
            )
            .as_str()
        ),
        "{suggestions:#?}"
    );

    // cluster contention, table: the same in its sections.
    let output = coordinator.ctl(&["cluster", "contention"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let unhealthy = contention_section(&text, "UNHEALTHY GPUS");
    assert_eq!(unhealthy.len(), 1, "{text}");
    let cells: Vec<&str> = unhealthy[0].split('|').map(str::trim).collect();
    assert_eq!(cells[..2], ["n2", "1"], "{text}");
    assert!(cells.contains(&"critical"), "{text}");
    assert_eq!(cells.last(), Some(&reason.as_str()), "{text}");
    let free = contention_section(&text, "FREE GPUS");
    assert_eq!(free.len(), 2, "{text}");
    assert!(
        free.iter().all(|row| !row.starts_with(" n2   | 1 ")),
        "{text}"
    );
    assert!(
        contention_section(&text, "SUGGESTIONS")
            .iter()
            .any(|line| line.starts_with("- n2 GPU 1 is critical (")),
        "{text}"
    );

    // What the suggestion says to run works through the coordinator.
    let on_n2 = coordinator.ctl_json(&["--node", "n2", "health", "--output", "json"]);
    assert_eq!(on_n2[1]["state"], "critical", "{on_n2:#}");
    assert_eq!(on_n2[1]["reasons"][0]["text"], json!(reason), "{on_n2:#}");
}
