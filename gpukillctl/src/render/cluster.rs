//! The tables and the JSON of `gpukillctl cluster nodes|list|contention`.
//!
//! `cluster list` reuses the rows of `gpukillctl list` ([`super::table`]) with a NODE column
//! first, and its JSON gives each node the fields of `gpukillctl list --output json`
//! ([`SnapshotJson`]: `host`, `ts`, `gpus`, `procs`, ... under the same names), next to the
//! node's own (`name`, `node_id`, `address`, `state`, `latency_ms`, `error`, ...). A node that
//! did not answer has `null` for every snapshot field (absent, not an empty list).
//!
//! As everywhere in gpukillctl, JSON fields are serialized under their Rust names, in
//! declaration order, and every absent value is `null`.

use gpukill_proto::v1::{
    ClusterGpu, ClusterUser, ContentionResponse, ListAllResponse, Node, NodeSnapshot, NodeState,
    NodesResponse,
};
use serde::Serialize;

use super::health::{state_cell, state_name};
use super::json::{SnapshotJson, document, non_empty};
use super::layout::{self, Step};
use super::mib;
use super::table::{
    ABSENT, GPU_HEADER, GPU_STEPS, PROCESS_STEPS, TableOptions, gpu_row, memory, mib_text,
    or_absent, or_absent_str, problems, process_header, process_row, table,
};
use super::time::{age, rfc3339_millis};
use crate::error::Error;

/// How many hex digits of a node id tables show.
const SHORT_ID: usize = 12;

/// The node state as tables and JSON name it: `up`, `down` or `unknown` (also for an unset
/// or unknown value).
pub fn node_state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Up) => "up",
        Ok(NodeState::Down) => "down",
        Ok(NodeState::Unknown | NodeState::Unspecified) | Err(_) => "unknown",
    }
}

/// `12s ago`, from `now_ms`; `None` when the time is unset.
fn ago(ms: Option<i64>, now_ms: i64) -> Option<String> {
    ms.filter(|ms| *ms > 0)
        .map(|ms| format!("{} ago", age(now_ms.saturating_sub(ms))))
}

/// The JSON document of `gpukillctl cluster nodes --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodesJson {
    /// The nodes, by name.
    pub nodes: Vec<NodeJson>,
}

/// One node, as its coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeJson {
    /// The node's name (unique in the cluster).
    pub name: String,
    /// Its stable id (32 hex digits), once known.
    pub node_id: Option<String>,
    /// Where the coordinator reaches it, `https://host:port`.
    pub address: Option<String>,
    /// `static` (the coordinator's configuration) or `registered`.
    pub source: Option<String>,
    /// `up`, `down` or `unknown`.
    pub state: &'static str,
    /// When it last answered or sent a heartbeat, RFC 3339 UTC with milliseconds.
    pub last_seen: Option<String>,
    /// The same time, milliseconds since the epoch.
    pub last_seen_unix_ms: Option<i64>,
    /// Why it is down.
    pub error: Option<String>,
}

impl NodeJson {
    /// The JSON view of `node`.
    pub fn new(node: &Node) -> Self {
        let last_seen = node.last_seen_unix_ms.and_then(rfc3339_millis);
        NodeJson {
            name: node.name.clone(),
            node_id: node.node_id.as_deref().and_then(non_empty),
            address: non_empty(&node.address),
            source: non_empty(&node.source),
            state: node_state_name(node.state),
            last_seen_unix_ms: last_seen.as_ref().and(node.last_seen_unix_ms),
            last_seen,
            error: node.error.clone(),
        }
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn nodes_json(response: &NodesResponse) -> Result<String, Error> {
    document(&NodesJson {
        nodes: response.nodes.iter().map(NodeJson::new).collect(),
    })
}

/// `response` as a table, LAST SEEN counted back from `now_ms`, ending in a newline.
pub fn render_nodes(response: &NodesResponse, now_ms: i64) -> String {
    let header = [
        "NAME",
        "STATE",
        "ADDRESS",
        "SOURCE",
        "LAST SEEN",
        "NODE ID",
        "ERROR",
    ];
    let rows = response.nodes.iter().map(|node| {
        vec![
            node.name.clone(),
            node_state_name(node.state).to_owned(),
            or_absent_str(&node.address),
            or_absent_str(&node.source),
            or_absent(ago(node.last_seen_unix_ms, now_ms)),
            or_absent(
                node.node_id
                    .as_deref()
                    .filter(|id| !id.is_empty())
                    .map(|id| id.chars().take(SHORT_ID).collect::<String>()),
            ),
            or_absent(node.error.as_deref()),
        ]
    });
    table(&header, rows)
}

/// The JSON document of `gpukillctl cluster list --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterListJson {
    /// Every node asked, by name.
    pub nodes: Vec<NodeSnapshotJson>,
    /// The coordinator's per-node deadline, milliseconds.
    pub deadline_ms: u64,
}

/// One node's answer: the node, then the fields of `gpukillctl list --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSnapshotJson {
    /// The node's name.
    pub name: String,
    /// Its stable id, once known.
    pub node_id: Option<String>,
    /// Where the coordinator reaches it.
    pub address: Option<String>,
    /// `static` or `registered`.
    pub source: Option<String>,
    /// `up`, `down` or `unknown`.
    pub state: &'static str,
    /// How long the node took to answer (or to fail), milliseconds; `null` when it was not
    /// asked (down).
    pub latency_ms: Option<f64>,
    /// Why there is no snapshot: down, deadline exceeded, or the node's error.
    pub error: Option<String>,
    /// The node's snapshot, as `gpukillctl list --output json` shows it; every field `null`
    /// when the node did not answer.
    #[serde(flatten)]
    pub snapshot: SnapshotFields,
}

/// The snapshot fields of a node in [`NodeSnapshotJson`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SnapshotFields {
    /// The node answered.
    Answered(Box<SnapshotJson>),
    /// It did not: the same fields, all `null`.
    Missing(NoSnapshot),
}

/// The fields of [`SnapshotJson`], all `null`, for a node without a snapshot. A test keeps
/// the two field lists the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NoSnapshot {
    /// `null`.
    pub host: Option<()>,
    /// `null`.
    pub ts: Option<()>,
    /// `null`.
    pub seq: Option<()>,
    /// `null`.
    pub stale: Option<()>,
    /// `null`.
    pub stale_reason: Option<()>,
    /// `null`.
    pub poll_interval_ms: Option<()>,
    /// `null`.
    pub age_ms: Option<()>,
    /// `null`.
    pub vendors: Option<()>,
    /// `null`.
    pub gpus: Option<()>,
    /// `null`.
    pub procs: Option<()>,
}

impl NodeSnapshotJson {
    /// The JSON view of one node's answer.
    pub fn new(answer: &NodeSnapshot) -> Self {
        let node = answer.node.clone().unwrap_or_default();
        let asked = answer.snapshot.is_some() || answer.latency_us > 0;
        NodeSnapshotJson {
            name: node.name.clone(),
            node_id: node.node_id.as_deref().and_then(non_empty),
            address: non_empty(&node.address),
            source: non_empty(&node.source),
            state: node_state_name(node.state),
            latency_ms: asked.then(|| answer.latency_us as f64 / 1000.0),
            error: answer.snapshot.is_none().then(|| reason(answer)),
            snapshot: match &answer.snapshot {
                Some(snapshot) => SnapshotFields::Answered(Box::new(SnapshotJson::new(snapshot))),
                None => SnapshotFields::Missing(NoSnapshot::default()),
            },
        }
    }
}

/// Why `answer` has no snapshot: its error, the node's, or (from a coordinator that says
/// nothing) "no answer".
fn reason(answer: &NodeSnapshot) -> String {
    answer
        .error
        .clone()
        .filter(|error| !error.is_empty())
        .or_else(|| answer.node.as_ref().and_then(|node| node.error.clone()))
        .unwrap_or_else(|| "no answer".to_owned())
}

/// The node name of `answer`.
fn name(answer: &NodeSnapshot) -> &str {
    answer
        .node
        .as_ref()
        .map_or(ABSENT, |node| node.name.as_str())
}

/// `NAME (why)` for every node of `response` that did not answer.
pub fn unreachable(response: &ListAllResponse) -> Vec<String> {
    response
        .nodes
        .iter()
        .filter(|answer| answer.snapshot.is_none())
        .map(|answer| format!("{} ({})", name(answer), reason(answer)))
        .collect()
}

/// `response` as one indented JSON document, ending in a newline.
pub fn list_json(response: &ListAllResponse) -> Result<String, Error> {
    document(&ClusterListJson {
        nodes: response.nodes.iter().map(NodeSnapshotJson::new).collect(),
        deadline_ms: response.deadline_ms,
    })
}

/// `response` as text, ending in a newline:
/// 1. the GPU table of every node that answered: NODE, then the columns of `list`;
/// 2. per node, `NODE: ...` lines for what is wrong (stale, GPUs that could not be read or
///    that are critical or lost, vendors not OK, no GPUs at all);
/// 3. with `--details` or `--containers`, a blank line and the process table (NODE first);
/// 4. `unreachable: n2 (why); n3 (why)` when nodes did not answer.
pub fn render_list(response: &ListAllResponse, options: &TableOptions) -> String {
    let answered: Vec<(&str, &gpukill_proto::v1::Snapshot)> = response
        .nodes
        .iter()
        .filter_map(|answer| Some((name(answer), answer.snapshot.as_ref()?)))
        .collect();
    let header: Vec<&str> = std::iter::once("NODE").chain(GPU_HEADER).collect();
    let rows = answered.iter().flat_map(|(node, snapshot)| {
        snapshot.gpus.iter().map(move |gpu| {
            std::iter::once((*node).to_owned())
                .chain(gpu_row(snapshot, gpu))
                .collect()
        })
    });
    let mut text = layout::fitted(&header, rows, &with_node(&GPU_STEPS), options.width);
    for (node, snapshot) in &answered {
        if snapshot.stale {
            let why = snapshot
                .stale_reason
                .as_deref()
                .unwrap_or("no reason given");
            text.push_str(&format!("{node}: STALE: {why}\n"));
        }
        if snapshot.gpus.is_empty() {
            text.push_str(&format!("{node}: no GPUs\n"));
        }
        for line in problems(snapshot) {
            text.push_str(&format!("{node}: {line}\n"));
        }
    }
    if options.details || options.containers {
        let header: Vec<&str> = std::iter::once("NODE")
            .chain(process_header(options))
            .collect();
        let rows = answered.iter().flat_map(|(node, snapshot)| {
            snapshot.processes.iter().map(move |process| {
                std::iter::once((*node).to_owned())
                    .chain(process_row(snapshot, process, options))
                    .collect()
            })
        });
        text.push('\n');
        text.push_str(&layout::fitted(
            &header,
            rows,
            &with_node(&PROCESS_STEPS),
            options.width,
        ));
    }
    let unreachable = unreachable(response);
    if !unreachable.is_empty() {
        text.push_str(&format!("unreachable: {}\n", unreachable.join("; ")));
    }
    text
}

/// The steps of a `list` table, then narrowing the NODE column those tables begin with.
fn with_node(steps: &[Step]) -> Vec<Step> {
    let mut steps = steps.to_vec();
    steps.push(Step::Shrink("NODE", 8));
    steps
}

/// The JSON document of `gpukillctl cluster contention --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContentionJson {
    /// GPUs with memory or utilization at 90% or more.
    pub busy: Vec<ClusterGpuJson>,
    /// GPUs with no processes.
    pub free: Vec<ClusterGpuJson>,
    /// GPUs whose processes do nothing.
    pub idle: Vec<ClusterGpuJson>,
    /// GPUs whose health is critical or lost (in none of busy, free and idle).
    pub unhealthy: Vec<ClusterGpuJson>,
    /// Top users by GPU memory.
    pub top_by_memory: Vec<ClusterUserJson>,
    /// Top users by SM utilization.
    pub top_by_utilization: Vec<ClusterUserJson>,
    /// What to do about it, one line each.
    pub suggestions: Vec<String>,
    /// Nodes that did not answer, `NAME: why`.
    pub unreachable: Vec<String>,
}

/// A GPU somewhere in the cluster (names as in `gpukillctl list --output json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterGpuJson {
    /// The node's name.
    pub node: String,
    /// The GPU's index on the node.
    pub gpu_index: u32,
    /// Product name.
    pub name: Option<String>,
    /// GPU utilization, percent.
    pub util_pct: Option<u32>,
    /// Memory in use, whole MiB.
    pub mem_used_mb: Option<u64>,
    /// Total memory, whole MiB.
    pub mem_total_mb: Option<u64>,
    /// Users with processes on it.
    pub users: Vec<String>,
    /// `ok`, `warning`, `critical`, `lost`, or `unknown` (also from a node that does not
    /// assess health).
    pub health_state: String,
    /// Why it is warning, critical or lost.
    pub health_reason: Option<String>,
}

impl ClusterGpuJson {
    /// The JSON view of `gpu`.
    pub fn new(gpu: &ClusterGpu) -> Self {
        ClusterGpuJson {
            node: gpu.node.clone(),
            gpu_index: gpu.index,
            name: gpu.name.clone(),
            util_pct: gpu.utilization_pct,
            mem_used_mb: gpu.memory_used_bytes.map(mib),
            mem_total_mb: gpu.memory_total_bytes.map(mib),
            users: gpu.users.clone(),
            health_state: state_name(gpu.health_state).into_owned(),
            health_reason: gpu.health_reason.clone(),
        }
    }
}

/// A user's footprint across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterUserJson {
    /// User name, as the nodes report it.
    pub user: String,
    /// GPU memory of their processes, whole MiB.
    pub mem_used_mb: u64,
    /// Sum of their processes' SM utilization, percent.
    pub sm_util_pct: u32,
    /// GPUs they are on.
    pub gpus: u32,
    /// Their GPU processes.
    pub procs: u32,
    /// Nodes they are on.
    pub nodes: Vec<String>,
}

impl ClusterUserJson {
    /// The JSON view of `user`.
    pub fn new(user: &ClusterUser) -> Self {
        ClusterUserJson {
            user: user.user.clone(),
            mem_used_mb: mib(user.memory_bytes),
            sm_util_pct: user.sm_utilization_pct,
            gpus: user.gpus,
            procs: user.processes,
            nodes: user.nodes.clone(),
        }
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn contention_json(response: &ContentionResponse) -> Result<String, Error> {
    let gpus = |gpus: &[ClusterGpu]| gpus.iter().map(ClusterGpuJson::new).collect();
    let users = |users: &[ClusterUser]| users.iter().map(ClusterUserJson::new).collect();
    document(&ContentionJson {
        busy: gpus(&response.busy),
        free: gpus(&response.free),
        idle: gpus(&response.idle),
        unhealthy: gpus(&response.unhealthy),
        top_by_memory: users(&response.top_by_memory),
        top_by_utilization: users(&response.top_by_utilization),
        suggestions: response.suggestions.clone(),
        unreachable: response.unreachable.clone(),
    })
}

/// `response` as titled sections, each a table or `none`, separated by blank lines, ending
/// in a newline.
pub fn render_contention(response: &ContentionResponse) -> String {
    let sections = [
        ("BUSY GPUS", gpu_section(&response.busy, false)),
        ("FREE GPUS", gpu_section(&response.free, false)),
        (
            "IDLE GPUS (processes that do nothing)",
            gpu_section(&response.idle, false),
        ),
        (
            "UNHEALTHY GPUS (critical or lost: not counted as busy, free or idle)",
            gpu_section(&response.unhealthy, true),
        ),
        ("TOP USERS BY MEMORY", user_section(&response.top_by_memory)),
        (
            "TOP USERS BY UTILIZATION",
            user_section(&response.top_by_utilization),
        ),
        ("SUGGESTIONS", line_section(&response.suggestions)),
        ("UNREACHABLE", line_section(&response.unreachable)),
    ];
    sections
        .iter()
        .map(|(title, body)| format!("{title}\n{body}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table of `gpus`, or `none`; with `reasons`, a REASON column last (why each is
/// unhealthy).
fn gpu_section(gpus: &[ClusterGpu], reasons: bool) -> String {
    if gpus.is_empty() {
        return "none\n".to_owned();
    }
    let mut header = vec!["NODE", "GPU", "NAME", "MEMORY", "UTIL", "HEALTH", "USERS"];
    if reasons {
        header.push("REASON");
    }
    let rows = gpus.iter().map(|gpu| {
        let mut row = vec![
            gpu.node.clone(),
            gpu.index.to_string(),
            or_absent(gpu.name.as_deref()),
            memory(gpu.memory_used_bytes, gpu.memory_total_bytes),
            or_absent(gpu.utilization_pct.map(|pct| format!("{pct}%"))),
            state_cell(gpu.health_state),
            or_absent_str(&gpu.users.join(",")),
        ];
        if reasons {
            row.push(or_absent(gpu.health_reason.as_deref()));
        }
        row
    });
    table(&header, rows)
}

/// The table of `users`, or `none`.
fn user_section(users: &[ClusterUser]) -> String {
    if users.is_empty() {
        return "none\n".to_owned();
    }
    let header = ["USER", "MEMORY", "SM_UTIL", "GPUS", "PROCS", "NODES"];
    let rows = users.iter().map(|user| {
        vec![
            user.user.clone(),
            mib_text(Some(user.memory_bytes)),
            format!("{}%", user.sm_utilization_pct),
            user.gpus.to_string(),
            user.processes.to_string(),
            or_absent_str(&user.nodes.join(",")),
        ]
    });
    table(&header, rows)
}

/// `- line` per line, or `none`.
fn line_section(lines: &[String]) -> String {
    if lines.is_empty() {
        return "none\n".to_owned();
    }
    lines.iter().map(|line| format!("- {line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, NOW_MS, assert_snapshot};
    use serde_json::{Value, json};

    const PLAIN: TableOptions = TableOptions {
        details: false,
        containers: false,
        tz: TimeZone::Utc,
        width: None,
    };

    #[test]
    fn nodes_table() {
        assert_snapshot(
            "cluster-nodes.txt",
            &render_nodes(&testutil::cluster_nodes_response(), NOW_MS),
        );
    }

    #[test]
    fn nodes_json_has_the_documented_fields() {
        let text = nodes_json(&testutil::cluster_nodes_response()).expect("encode");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value["nodes"][0],
            json!({
                "name": "n1",
                "node_id": "5f0c1e2d3b4a69788796a5b4c3d2e1f0",
                "address": "https://n1.example:7443",
                "source": "static",
                "state": "up",
                "last_seen": "2024-05-01T11:59:58.250Z",
                "last_seen_unix_ms": 1_714_564_798_250_i64,
                "error": null
            })
        );
        assert_eq!(
            value["nodes"][3],
            json!({
                "name": "n4",
                "node_id": null,
                "address": "https://n4.example:7443",
                "source": "static",
                "state": "unknown",
                "last_seen": null,
                "last_seen_unix_ms": null,
                "error": null
            })
        );
    }

    #[test]
    fn list_table_has_a_node_column_and_names_the_unreachable() {
        assert_snapshot(
            "cluster-list.txt",
            &render_list(&testutil::cluster_list_response(), &PLAIN),
        );
    }

    #[test]
    fn list_details_add_the_process_table_with_nodes() {
        let options = TableOptions {
            details: true,
            ..PLAIN
        };
        assert_snapshot(
            "cluster-list-details.txt",
            &render_list(&testutil::cluster_list_response(), &options),
        );
    }

    #[test]
    fn list_tables_fit_a_width_with_their_node_column() {
        let options = TableOptions {
            details: true,
            containers: true,
            width: Some(100),
            ..PLAIN
        };
        let text = render_list(&testutil::cluster_list_response(), &options);
        for line in text.lines().filter(|line| line.contains('|')) {
            assert!(layout::text_width(line) <= 100, "{line:?} in\n{text}");
        }
        assert!(text.contains(" NODE "), "{text}");
    }

    #[test]
    fn list_shows_each_gpus_health_and_names_the_unfit_per_node() {
        let text = render_list(&testutil::cluster_list_response(), &PLAIN);
        let health: Vec<(&str, &str, &str)> = text
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with(' '))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells[0], cells[1], cells[8])
            })
            .collect();
        assert_eq!(
            health,
            [
                ("n1", "0", "-"),
                ("n1", "1", "lost"),
                ("n2", "0", "ok"),
                ("n2", "1", "critical")
            ],
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nn2: GPU 1 (NVIDIA H100 80GB HBM3): critical: {}\n",
                testutil::XID_79
            )),
            "{text}"
        );
        let json: Value =
            serde_json::from_str(&list_json(&testutil::cluster_list_response()).expect("encode"))
                .expect("JSON");
        assert_eq!(json["nodes"][1]["gpus"][1]["health"]["state"], "critical");
        assert_eq!(
            json["nodes"][1]["gpus"][1]["health"]["reasons"][0]["text"],
            testutil::XID_79
        );
    }

    #[test]
    fn list_rows_are_the_rows_of_list() {
        // The NODE column aside, a node's rows are exactly what `gpukillctl list` shows.
        let text = render_list(&testutil::cluster_list_response(), &PLAIN);
        let single = crate::render::table::render(&testutil::snapshot(), &PLAIN);
        let list_row = single
            .lines()
            .find(|line| line.starts_with(" 0 "))
            .expect("GPU 0 in list");
        let cluster_row = text
            .lines()
            .find(|line| line.starts_with(" n1 ") && line.contains("python:4242"))
            .expect("n1 GPU 0 in cluster list");
        let cells = |line: &str| -> Vec<String> {
            line.split('|').map(|cell| cell.trim().to_owned()).collect()
        };
        assert_eq!(cells(cluster_row)[1..], cells(list_row)[..]);
    }

    #[test]
    fn list_json_nodes_carry_the_list_fields() {
        let response = testutil::cluster_list_response();
        let text = list_json(&response).expect("encode");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["deadline_ms"], 1000);
        let n1 = &value["nodes"][0];
        assert_eq!(n1["name"], "n1");
        assert_eq!(n1["node_id"], "5f0c1e2d3b4a69788796a5b4c3d2e1f0");
        assert_eq!(n1["address"], "https://n1.example:7443");
        assert_eq!(n1["state"], "up");
        assert_eq!(n1["latency_ms"], 1.25);
        assert_eq!(n1["error"], Value::Null);
        // Exactly the document of `gpukillctl list --output json`, merged in.
        let list: Value =
            serde_json::to_value(SnapshotJson::new(&testutil::snapshot())).expect("encode");
        for (key, expected) in list.as_object().expect("object") {
            assert_eq!(&n1[key], expected, "{key}");
        }
        assert_eq!(n1["gpus"][0]["gpu_index"], 0);
        assert_eq!(n1["gpus"][0]["mem_used_mb"], 25600);
        assert_eq!(n1["procs"][0]["proc_name"], "python");
        let n3 = &value["nodes"][2];
        assert_eq!(n3["name"], "n3");
        assert_eq!(n3["state"], "down");
        assert_eq!(n3["latency_ms"], Value::Null);
        assert_eq!(n3["error"], "down: no heartbeat for 45s");
        assert_eq!(n3["host"], Value::Null);
        assert_eq!(n3["gpus"], Value::Null);
        assert_eq!(n3["procs"], Value::Null);
        let n4 = &value["nodes"][3];
        assert_eq!(n4["latency_ms"], 1000.0);
        assert_eq!(n4["error"], "deadline exceeded after 1s");
        // Node fields first, in declaration order, then the snapshot's.
        let keys: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("      \"") && !line.starts_with("       "))
            .map(|line| line.trim().split('"').nth(1).unwrap_or_default())
            .take(8)
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "node_id",
                "address",
                "source",
                "state",
                "latency_ms",
                "error",
                "host"
            ]
        );
    }

    #[test]
    fn a_missing_snapshot_has_every_snapshot_field_as_null() {
        let answered =
            serde_json::to_value(SnapshotJson::new(&testutil::snapshot())).expect("encode");
        let missing = serde_json::to_value(NoSnapshot::default()).expect("encode");
        let keys = |value: &Value| -> Vec<String> {
            value.as_object().expect("object").keys().cloned().collect()
        };
        assert_eq!(keys(&answered), keys(&missing));
        assert!(
            missing
                .as_object()
                .expect("object")
                .values()
                .all(Value::is_null)
        );
    }

    #[test]
    fn unreachable_nodes_say_why() {
        assert_eq!(
            unreachable(&testutil::cluster_list_response()),
            [
                "n3 (down: no heartbeat for 45s)",
                "n4 (deadline exceeded after 1s)"
            ]
        );
        let silent = ListAllResponse {
            nodes: vec![NodeSnapshot {
                node: Some(Node {
                    name: "n9".to_owned(),
                    error: Some("unreachable: connection refused".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            deadline_ms: 1000,
        };
        assert_eq!(
            unreachable(&silent),
            ["n9 (unreachable: connection refused)"]
        );
    }

    #[test]
    fn contention_sections() {
        assert_snapshot(
            "cluster-contention.txt",
            &render_contention(&testutil::cluster_contention_response()),
        );
    }

    #[test]
    fn empty_contention_says_none() {
        let text = render_contention(&ContentionResponse::default());
        assert_eq!(text.matches("none\n").count(), 8, "{text}");
        assert!(text.starts_with("BUSY GPUS\nnone\n\nFREE GPUS\n"), "{text}");
    }

    #[test]
    fn contention_json_has_the_documented_fields() {
        let text = contention_json(&testutil::cluster_contention_response()).expect("encode");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value["busy"][0],
            json!({
                "node": "n1",
                "gpu_index": 0,
                "name": "NVIDIA A100-SXM4-80GB",
                "util_pct": 97,
                "mem_used_mb": 79872,
                "mem_total_mb": 81920,
                "users": ["alice"],
                "health_state": "unknown",
                "health_reason": null
            })
        );
        assert_eq!(value["free"][0]["users"], json!([]));
        assert_eq!(value["free"][0]["util_pct"], Value::Null);
        assert_eq!(value["free"][0]["health_state"], "warning");
        assert_eq!(value["free"][0]["health_reason"], "throttled: hw_thermal");
        assert_eq!(value["unhealthy"][0]["node"], "n2");
        assert_eq!(value["unhealthy"][0]["gpu_index"], 1);
        assert_eq!(value["unhealthy"][0]["health_state"], "critical");
        assert_eq!(value["unhealthy"][0]["health_reason"], testutil::XID_79);
        assert_eq!(
            value["top_by_memory"][0],
            json!({
                "user": "alice",
                "mem_used_mb": 79872,
                "sm_util_pct": 95,
                "gpus": 1,
                "procs": 2,
                "nodes": ["n1"]
            })
        );
        assert_eq!(
            value["unreachable"],
            json!(["n3: down: no heartbeat for 45s"])
        );
        assert_eq!(value["suggestions"].as_array().map(Vec::len), Some(3));
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        // (serde_json's map sorts them.)
        assert_eq!(
            keys,
            [
                "busy",
                "free",
                "idle",
                "suggestions",
                "top_by_memory",
                "top_by_utilization",
                "unhealthy",
                "unreachable"
            ]
        );
    }

    #[test]
    fn node_states_are_named() {
        assert_eq!(node_state_name(NodeState::Up as i32), "up");
        assert_eq!(node_state_name(NodeState::Down as i32), "down");
        assert_eq!(node_state_name(NodeState::Unknown as i32), "unknown");
        assert_eq!(node_state_name(0), "unknown");
        assert_eq!(node_state_name(42), "unknown");
    }
}
