//! The fake daemon's Cluster service (a coordinator's): Nodes, List and Contention answer
//! what the test set; Register and Heartbeat are not served.

use gpukill_proto::v1::cluster_service_server::ClusterService;
use gpukill_proto::v1::{
    ContentionRequest, ContentionResponse, HeartbeatRequest, HeartbeatResponse, ListAllRequest,
    ListAllResponse, NodesRequest, NodesResponse, RegisterRequest, RegisterResponse,
};
use tonic::{Request, Response, Status};

use super::FakeDaemon;

#[tonic::async_trait]
impl ClusterService for FakeDaemon {
    async fn nodes(
        &self,
        _request: Request<NodesRequest>,
    ) -> Result<Response<NodesResponse>, Status> {
        match self.cluster_nodes.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Nodes")),
        }
    }

    async fn list_all(
        &self,
        request: Request<ListAllRequest>,
    ) -> Result<Response<ListAllResponse>, Status> {
        if let Ok(mut requests) = self.cluster_list_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.cluster_list.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("ListAll")),
        }
    }

    async fn contention(
        &self,
        request: Request<ContentionRequest>,
    ) -> Result<Response<ContentionResponse>, Status> {
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
