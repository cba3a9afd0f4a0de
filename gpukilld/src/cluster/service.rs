//! The `Cluster` gRPC service: what a coordinator knows of its nodes, one view of all of
//! them, contention, and node registration. A daemon that is not a coordinator answers
//! FAILED_PRECONDITION.

use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::cluster_service_server::ClusterService as ClusterRpcs;
use tonic::{Request, Response, Status};

use super::contention;
use super::fanout::{self, Local};
use super::registry::{RegisterError, Registry};
use crate::authz::{Access, AuthzError, Caller};
use crate::rpc::{answer, audit_refusal, rpc_name};
use crate::store::StoreHandle;

/// What a coordinator runs on.
pub struct Coordinator {
    /// The nodes.
    pub registry: Arc<Registry>,
    /// Itself, when it samples GPUs.
    pub local: Option<Local>,
    /// How long a fan-out waits for each node.
    pub deadline: Duration,
    /// How often registered nodes send heartbeats.
    pub heartbeat_interval: Duration,
}

/// The service; `coordinator` is `None` on a plain node.
pub struct ClusterService {
    coordinator: Option<Arc<Coordinator>>,
    store: StoreHandle,
}

impl ClusterService {
    /// The service of a coordinator, or of a plain node (`None`).
    pub fn new(coordinator: Option<Arc<Coordinator>>, store: StoreHandle) -> Self {
        Self { coordinator, store }
    }

    /// `List` on every node (and this one, when it samples), each within the deadline.
    async fn fan_out(
        &self,
        caller: &Caller,
        request: pb::ListAllRequest,
    ) -> Result<pb::ListAllResponse, Status> {
        let coordinator = self.coordinator()?;
        Ok(fanout::list(
            &coordinator.registry,
            coordinator.local.as_ref(),
            caller,
            request,
            coordinator.deadline,
        )
        .await)
    }

    fn coordinator(&self) -> Result<&Coordinator, Status> {
        self.coordinator.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this gpukilld is not a cluster coordinator ([cluster] role = \"node\"): ask the coordinator, or set [cluster] role = \"coordinator\" here",
            )
        })
    }
}

#[tonic::async_trait]
impl ClusterRpcs for ClusterService {
    async fn nodes(
        &self,
        request: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        answer(&self.store, request, Access::Read, |_, _| async {
            let coordinator = self.coordinator()?;
            let mut nodes = coordinator.registry.nodes();
            if let Some(local) = &coordinator.local {
                nodes.push(local.describe());
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Ok::<_, Status>(pb::NodesResponse { nodes })
        })
        .await
    }

    async fn list_all(
        &self,
        request: Request<pb::ListAllRequest>,
    ) -> Result<Response<pb::ListAllResponse>, Status> {
        answer(
            &self.store,
            request,
            Access::Read,
            |caller, message| async move { self.fan_out(&caller, message).await },
        )
        .await
    }

    async fn contention(
        &self,
        request: Request<pb::ContentionRequest>,
    ) -> Result<Response<pb::ContentionResponse>, Status> {
        answer(
            &self.store,
            request,
            Access::Read,
            |caller, message| async move {
                let top = match message.top {
                    0 => contention::DEFAULT_TOP,
                    top => top as usize,
                };
                let listed = self.fan_out(&caller, pb::ListAllRequest::default()).await?;
                let mut answered = Vec::new();
                let mut unreachable = Vec::new();
                for node in listed.nodes {
                    let name = node.node.map(|node| node.name).unwrap_or_default();
                    match (node.snapshot, node.error) {
                        (Some(snapshot), _) => answered.push((name, snapshot)),
                        (None, error) => unreachable.push(format!(
                            "{name}: {}",
                            error.unwrap_or_else(|| "no answer".into())
                        )),
                    }
                }
                Ok::<_, Status>(contention::contention(&answered, unreachable, top))
            },
        )
        .await
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let rpc = rpc_name(&request).to_owned();
        answer(&self.store, request, Access::Register, |caller, message| async move {
            let coordinator = self.coordinator()?;
            let principal = node_principal(&caller)?;
            let binding = coordinator
                .registry
                .register(&message, principal)
                .map_err(|error| match error {
                    RegisterError::NameTaken(message) => Status::already_exists(message),
                    RegisterError::Invalid(message) => Status::invalid_argument(message),
                    RegisterError::NotOwner(refusal) => self.refused(&caller, &rpc, &refusal),
                    RegisterError::Full(message) => Status::resource_exhausted(message),
                })?;
            // The binding holds in memory at once; the store keeps it across a restart.
            if let (Some(binding), Some(log)) = (binding, self.store.database()) {
                let now_ms = crate::store::unix_ms(std::time::SystemTime::now());
                let node = binding.node_id.clone();
                if let Err(error) = log
                    .write(move |store| store.save_node_registration(&binding, now_ms))
                    .await
                {
                    tracing::error!(%error, node, "cannot store a node's registration; it holds until this coordinator restarts");
                }
            }
            Ok::<_, Status>(pb::RegisterResponse {
                heartbeat_interval_ms: u64::try_from(coordinator.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let rpc = rpc_name(&request).to_owned();
        answer(
            &self.store,
            request,
            Access::Register,
            |caller, message| async move {
                let coordinator = self.coordinator()?;
                let principal = node_principal(&caller)?;
                let node_id = &message.node_id;
                match coordinator.registry.heartbeat(node_id, principal) {
                    Ok(true) => Ok(pb::HeartbeatResponse {}),
                    Ok(false) => Err(Status::not_found(format!(
                        "node id {node_id} is not registered here: register again"
                    ))),
                    Err(refusal) => Err(self.refused(&caller, &rpc, &refusal)),
                }
            },
        )
        .await
    }
}

impl ClusterService {
    /// A refused change to another principal's registration: audited, then answered
    /// PERMISSION_DENIED with the reason (which names the node and its owner).
    fn refused(&self, caller: &Caller, rpc: &str, refusal: &AuthzError) -> Status {
        audit_refusal(&self.store, caller, rpc, refusal);
        Status::permission_denied(refusal.to_string())
    }
}

/// The principal a registering node authenticated as (`Access::Register` has checked that
/// it is a TCP principal with the node role).
fn node_principal(caller: &Caller) -> Result<&str, Status> {
    caller
        .remote
        .as_ref()
        .map(|remote| remote.principal.as_str())
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "{caller} may not register: only a principal with the node role registers, over TCP"
            ))
        })
}
