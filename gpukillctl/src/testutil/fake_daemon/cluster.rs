//! The fake daemon's Cluster service (a coordinator's): Nodes, List and Contention answer
//! what the test set; Register and Heartbeat are not served.

use gpukill_proto::v1::cluster_server::Cluster;
use gpukill_proto::v1::{
    ClusterContentionRequest, ClusterContentionResponse, ClusterListRequest, ClusterListResponse,
    ClusterNodesRequest, ClusterNodesResponse, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse,
};
use tonic::{Request, Response, Status};

use super::FakeDaemon;

#[tonic::async_trait]
impl Cluster for FakeDaemon {
    async fn nodes(
        &self,
        _request: Request<ClusterNodesRequest>,
    ) -> Result<Response<ClusterNodesResponse>, Status> {
        match self.cluster_nodes.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Nodes")),
        }
    }

    async fn list(
        &self,
        request: Request<ClusterListRequest>,
    ) -> Result<Response<ClusterListResponse>, Status> {
        if let Ok(mut requests) = self.cluster_list_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.cluster_list.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("List")),
        }
    }

    async fn contention(
        &self,
        request: Request<ClusterContentionRequest>,
    ) -> Result<Response<ClusterContentionResponse>, Status> {
        if let Ok(mut requests) = self.cluster_contention_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.cluster_contention.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Contention")),
        }
    }

    async fn register(
        &self,
        _request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Err(Status::unimplemented("Register"))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("Heartbeat"))
    }
}
