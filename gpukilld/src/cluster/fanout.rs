//! Asking every node at once: `List` to all nodes concurrently, each bounded by the
//! per-node deadline, so one slow or dead node costs the answer at most one deadline and
//! never fails it. The coordinator's own GPUs are one more node, read from its ring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient;

use super::registry::Registry;
use crate::authz::Caller;
use crate::node::NodeIdentity;
use crate::ring::Ring;

/// The coordinator itself, when it samples GPUs of its own.
#[derive(Clone)]
pub struct Local {
    /// Who it is.
    pub node: Arc<NodeIdentity>,
    /// Its snapshots.
    pub ring: Arc<Ring>,
}

/// The source name of the coordinator's own entry.
pub const SELF_SOURCE: &str = "self";

impl Local {
    /// The coordinator as a node.
    pub fn describe(&self) -> pb::Node {
        pb::Node {
            name: self.node.name.clone(),
            node_id: Some(self.node.id.clone()),
            address: "local".to_string(),
            source: SELF_SOURCE.to_string(),
            state: pb::NodeState::Up.into(),
            last_seen_unix_ms: Some(crate::store::unix_ms(std::time::SystemTime::now())),
            error: None,
        }
    }
}

/// Asks the nodes named in `request` (all when none) for their `List`, concurrently, each
/// within `deadline`. Unknown names are answered as errors, not dropped.
pub async fn list(
    registry: &Arc<Registry>,
    local: Option<&Local>,
    caller: &Caller,
    request: pb::ListAllRequest,
    deadline: Duration,
) -> pb::ListAllResponse {
    let wanted = |name: &str| request.nodes.is_empty() || request.nodes.iter().any(|n| n == name);
    let (targets, unknown) = registry.targets(
        &request
            .nodes
            .iter()
            .filter(|name| local.is_none_or(|local| local.node.name != **name))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let filter = request.filter.clone();
    let asks = targets.into_iter().map(|target| {
        let filter = filter.clone();
        let registry = Arc::clone(registry);
        async move {
            let started = Instant::now();
            let node = registry.node(&target.name);
            if let Some(reason) = target.down {
                return pb::NodeSnapshot {
                    node,
                    snapshot: None,
                    error: Some(reason),
                    latency_us: 0,
                };
            }
            let mut call = tonic::Request::new(pb::ListRequest {
                filter,
                ..Default::default()
            });
            call.set_timeout(deadline);
            registry.credentials().authorize(&mut call);
            let mut client = GpuKillServiceClient::new(target.channel);
            let answer = tokio::time::timeout(deadline, client.list(call)).await;
            let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let result = match answer {
                Ok(Ok(response)) => Ok(response.into_inner().snapshot),
                Ok(Err(status)) => Err(describe_status(&status)),
                Err(_) => Err(format!(
                    "deadline exceeded after {}",
                    humantime::format_duration(deadline)
                )),
            };
            registry.record(&target.name, result.as_ref().err().cloned());
            let node = registry.node(&target.name).or(node);
            match result {
                Ok(snapshot) => pb::NodeSnapshot {
                    node,
                    snapshot,
                    error: None,
                    latency_us,
                },
                Err(error) => pb::NodeSnapshot {
                    node,
                    snapshot: None,
                    error: Some(error),
                    latency_us,
                },
            }
        }
    });
    let mut nodes = join_all(asks).await;
    if let Some(local) = local.filter(|local| wanted(&local.node.name)) {
        let started = Instant::now();
        let answer = crate::rpc::list::list(
            &local.ring,
            caller,
            pb::ListRequest {
                filter,
                ..Default::default()
            },
        );
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (snapshot, error) = match answer {
            Ok(response) => (response.snapshot, None),
            Err(error) => (None, Some(error.to_string())),
        };
        nodes.push(pb::NodeSnapshot {
            node: Some(local.describe()),
            snapshot,
            error,
            latency_us,
        });
    }
    for name in unknown {
        nodes.push(pb::NodeSnapshot {
            node: Some(pb::Node {
                name: name.clone(),
                state: pb::NodeState::Unknown.into(),
                ..pb::Node::default()
            }),
            snapshot: None,
            error: Some(format!(
                "no node named {name:?} (gpukillctl cluster nodes lists them)"
            )),
            latency_us: 0,
        });
    }
    nodes.sort_by(|a, b| {
        let name = |n: &pb::NodeSnapshot| n.node.as_ref().map(|n| n.name.clone());
        name(a).cmp(&name(b))
    });
    pb::ListAllResponse {
        nodes,
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Runs the futures as tasks (so they spread over the runtime's threads) and returns their
/// outputs in order.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut order = Vec::new();
    for (index, future) in futures.enumerate() {
        order.push(set.spawn(async move { (index, future.await) }));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..order.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((index, output)) = joined {
            outputs[index] = Some(output);
        }
    }
    outputs.into_iter().flatten().collect()
}

/// A node's failure in a few words: the gRPC code and message, or the transport error.
pub fn describe_status(status: &tonic::Status) -> String {
    use std::error::Error as _;
    if status.code() == tonic::Code::Unavailable {
        let reason = status
            .source()
            .map_or_else(|| status.message().to_string(), innermost);
        return format!("unreachable: {reason}");
    }
    format!("{:?}: {}", status.code(), status.message())
}

/// The innermost cause of `error` (the OS error under "transport error: tcp connect
/// error: ..."), without io's "(os error N)" suffix.
pub fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(cause) = current.source() {
        current = cause;
    }
    let text = current.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}
