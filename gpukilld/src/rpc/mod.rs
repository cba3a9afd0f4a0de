//! The gpukill gRPC service. Each rpc lives in its own module and is a thin adapter:
//! attribute the caller, parse the request, call the core, convert the answer.

pub mod convert;
pub mod error;
mod events;
mod guard;
mod guard_update;
mod health;
mod history;
pub mod import;
pub mod kill;
mod list;
pub mod reset;
mod rogue;
mod sessions;
pub mod summary;
pub mod unix;
mod version;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::gpu_kill_server::{GpuKill, GpuKillServer};
use tokio::sync::watch as channel;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::authz::{self, Caller};
use crate::ring::Ring;

/// The stream type of `Watch`.
pub type WatchStreamOf = Pin<Box<dyn Stream<Item = Result<pb::Snapshot, Status>> + Send + 'static>>;

/// What the handlers share.
pub struct Service {
    ring: Arc<Ring>,
    started: Instant,
    stop: channel::Receiver<bool>,
    kill: Arc<kill::KillContext>,
    guard: Arc<crate::guard::engine::Guard>,
    reset: reset::ResetConfig,
}

impl Service {
    /// A service over the snapshots in `ring`, killing with `kill`, reporting on `guard`
    /// and resetting with `reset`; its streams end when `stop` turns true.
    pub fn new(
        ring: Arc<Ring>,
        stop: channel::Receiver<bool>,
        kill: Arc<kill::KillContext>,
        guard: Arc<crate::guard::engine::Guard>,
        reset: reset::ResetConfig,
    ) -> Self {
        Self {
            ring,
            started: Instant::now(),
            stop,
            kill,
            guard,
            reset,
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> GpuKillServer<Self> {
        GpuKillServer::new(self)
    }
}

/// Attributes a request and logs who made it.
fn attribute<T>(request: &Request<T>, rpc: &'static str) -> Result<Caller, Status> {
    let caller = authz::caller(request).map_err(error::RpcError::from)?;
    tracing::debug!(rpc, uid = caller.uid, gid = caller.gid, pid = ?caller.pid, "request");
    Ok(caller)
}

#[tonic::async_trait]
impl GpuKill for Service {
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = attribute(&request, "List")?;
        list::list(&self.ring, &caller, request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    type WatchStream = WatchStreamOf;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = attribute(&request, "Watch")?;
        watch::watch(&self.ring, &caller, request.into_inner(), self.stop.clone())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        attribute(&request, "Health")?;
        Ok(Response::new(
            health::health(&self.ring, &self.kill.events, self.started).await,
        ))
    }

    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        attribute(&request, "Version")?;
        Ok(Response::new(version::version(&self.ring)))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let caller = attribute(&request, "Kill")?;
        kill::kill(&self.ring, &self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        attribute(&request, "Events")?;
        events::events(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn sessions(
        &self,
        request: Request<pb::SessionsRequest>,
    ) -> Result<Response<pb::SessionsResponse>, Status> {
        attribute(&request, "Sessions")?;
        sessions::sessions(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn summary(
        &self,
        request: Request<pb::SummaryRequest>,
    ) -> Result<Response<pb::SummaryResponse>, Status> {
        attribute(&request, "Summary")?;
        summary::summary(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        attribute(&request, "History")?;
        history::history(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn import_audit(
        &self,
        request: Request<pb::ImportAuditRequest>,
    ) -> Result<Response<pb::ImportAuditResponse>, Status> {
        let caller = attribute(&request, "ImportAudit")?;
        import::import_audit(&self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_status(
        &self,
        request: Request<pb::GuardStatusRequest>,
    ) -> Result<Response<pb::GuardStatusResponse>, Status> {
        attribute(&request, "GuardStatus")?;
        Ok(Response::new(guard::status(&self.guard)))
    }

    async fn guard_test(
        &self,
        request: Request<pb::GuardTestRequest>,
    ) -> Result<Response<pb::GuardTestResponse>, Status> {
        attribute(&request, "GuardTest")?;
        guard::test(&self.guard, &self.ring)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_policy(
        &self,
        request: Request<pb::GuardPolicyRequest>,
    ) -> Result<Response<pb::GuardPolicyResponse>, Status> {
        attribute(&request, "GuardPolicy")?;
        guard_update::policy(&self.guard)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_update(
        &self,
        request: Request<pb::GuardUpdateRequest>,
    ) -> Result<Response<pb::GuardUpdateResponse>, Status> {
        let caller = attribute(&request, "GuardUpdate")?;
        guard_update::update(&self.guard, &self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn rogue(
        &self,
        request: Request<pb::RogueRequest>,
    ) -> Result<Response<pb::RogueResponse>, Status> {
        attribute(&request, "Rogue")?;
        rogue::rogue(&self.kill.events, &self.guard, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let caller = attribute(&request, "Reset")?;
        reset::reset(
            &self.ring,
            &self.kill,
            &self.reset,
            caller,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }
}
