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
pub mod layer;
pub(crate) mod list;
pub mod reservations;
pub mod reset;
mod rogue;
mod run;
mod sessions;
pub mod summary;
pub mod tcp;
pub mod unix;
pub mod uploads;
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

use crate::authz::{self, Access, AuthzError, Caller, Principal};
use crate::node::NodeIdentity;
use crate::ring::Ring;
use crate::store::{EventCaller, EventKind, NewEvent};
use error::RpcError;

/// The stream type of `Watch`.
pub type WatchStreamOf = Pin<Box<dyn Stream<Item = Result<pb::Snapshot, Status>> + Send + 'static>>;

/// What the handlers share.
pub struct Service {
    ring: Arc<Ring>,
    started: Instant,
    stop: channel::Receiver<bool>,
    kill: Arc<kill::KillContext>,
    guard: Arc<crate::guard::engine::Guard>,
    reset: crate::actions::reset::ResetTools,
    node: Arc<NodeIdentity>,
    uploads: uploads::UploadSettings,
    reservations: reservations::ReservationsHandle,
}

impl Service {
    /// A service over the snapshots in `ring`, killing with `kill`, reporting on `guard`
    /// and resetting with `reset`; its streams end when `stop` turns true.
    #[allow(clippy::too_many_arguments)] // one per shared part; the rpcs take them apart
    pub fn new(
        ring: Arc<Ring>,
        stop: channel::Receiver<bool>,
        kill: Arc<kill::KillContext>,
        guard: Arc<crate::guard::engine::Guard>,
        reset: crate::actions::reset::ResetTools,
        node: Arc<NodeIdentity>,
        uploads: uploads::UploadSettings,
        reservations: reservations::ReservationsHandle,
    ) -> Self {
        Self {
            ring,
            started: Instant::now(),
            stop,
            kill,
            guard,
            reset,
            node,
            uploads,
            reservations,
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> GpuKillServer<Self> {
        GpuKillServer::new(self)
    }
}

/// Attributes a request, checks that the caller's role allows `access`, and logs who made
/// it. A refusal is written to the audit trail.
pub(crate) fn attribute<T>(
    request: &Request<T>,
    rpc: &'static str,
    access: Access,
    events: &kill::EventsHandle,
) -> Result<Caller, Status> {
    let caller = authz::caller(request).map_err(error::RpcError::from)?;
    tracing::debug!(rpc, %caller, "request");
    if let Err(refusal) = caller.check(access, rpc) {
        audit_refusal(events, &caller, rpc, &refusal);
        return Err(error::RpcError::from(refusal).into());
    }
    Ok(caller)
}

/// Looks `caller` up in the user database, off the runtime (NSS may block).
pub(crate) async fn principal(caller: Caller, admin_group: &str) -> Result<Principal, RpcError> {
    let admin_group = admin_group.to_owned();
    tokio::task::spawn_blocking(move || Principal::resolve(caller, &admin_group))
        .await
        .map_err(|_| RpcError::Internal("the user lookup panicked"))
}

/// The admin gate of an rpc ([`Principal::require_admin`]): a non-admin's request is
/// refused, and the refusal is written to the audit trail as a `deny` event of `action`.
pub(crate) async fn admin_only(
    events: &crate::store::EventLog,
    principal: &Principal,
    admin_group: &str,
    action: &str,
    what: &str,
) -> Result<(), RpcError> {
    let Err(reason) = principal.require_admin(what, admin_group) else {
        return Ok(());
    };
    let denied = NewEvent {
        time: std::time::SystemTime::now(),
        kind: EventKind::Deny,
        caller: crate::actions::event_caller(principal),
        action: action.to_owned(),
        target: None,
        outcome: "denied".to_owned(),
        reason: reason.clone(),
    };
    if let Err(error) = events.record(vec![denied]).await {
        tracing::error!(%error, action, "cannot record a refused request");
    }
    Err(RpcError::NotAdmin(reason))
}

/// Writes a refused request to the audit trail (in the background: a refusal never waits
/// on the store) and logs it.
pub(crate) fn audit_refusal(
    events: &kill::EventsHandle,
    caller: &Caller,
    rpc: &str,
    refusal: &AuthzError,
) {
    tracing::warn!(rpc, %caller, %refusal, "request refused");
    let Ok(log) = events else {
        return;
    };
    let remote = caller.remote.as_ref();
    let event = NewEvent {
        time: std::time::SystemTime::now(),
        kind: EventKind::Deny,
        caller: EventCaller {
            uid: caller.uid,
            user: remote.map_or_else(|| caller.uid.to_string(), |r| r.principal.clone()),
            pid: caller.pid,
            transport: caller.transport.name().to_owned(),
            via: None,
        },
        action: rpc.to_owned(),
        target: None,
        outcome: "denied".to_owned(),
        reason: refusal.to_string(),
    };
    let log = Arc::clone(log);
    tokio::spawn(async move {
        if let Err(error) = log.record(vec![event]).await {
            tracing::error!(%error, "cannot record a refused request");
        }
    });
}

#[tonic::async_trait]
impl GpuKill for Service {
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = attribute(&request, "List", Access::Read, &self.kill.events)?;
        list::list(&self.ring, &caller, request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    type WatchStream = WatchStreamOf;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = attribute(&request, "Watch", Access::Read, &self.kill.events)?;
        watch::watch(&self.ring, &caller, request.into_inner(), self.stop.clone())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        attribute(&request, "Health", Access::Read, &self.kill.events)?;
        Ok(Response::new(
            health::health(&self.ring, &self.kill, &self.uploads, self.started).await,
        ))
    }

    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        attribute(&request, "Version", Access::Read, &self.kill.events)?;
        Ok(Response::new(version::version(&self.ring, &self.node)))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let caller = attribute(&request, "Kill", Access::Act, &self.kill.events)?;
        kill::kill(&self.ring, &self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        attribute(&request, "Events", Access::Read, &self.kill.events)?;
        events::events(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn sessions(
        &self,
        request: Request<pb::SessionsRequest>,
    ) -> Result<Response<pb::SessionsResponse>, Status> {
        attribute(&request, "Sessions", Access::Read, &self.kill.events)?;
        sessions::sessions(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn summary(
        &self,
        request: Request<pb::SummaryRequest>,
    ) -> Result<Response<pb::SummaryResponse>, Status> {
        attribute(&request, "Summary", Access::Read, &self.kill.events)?;
        summary::summary(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        attribute(&request, "History", Access::Read, &self.kill.events)?;
        history::history(&self.kill.events, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn import_audit(
        &self,
        request: Request<pb::ImportAuditRequest>,
    ) -> Result<Response<pb::ImportAuditResponse>, Status> {
        let caller = attribute(&request, "ImportAudit", Access::Act, &self.kill.events)?;
        import::import_audit(&self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_status(
        &self,
        request: Request<pb::GuardStatusRequest>,
    ) -> Result<Response<pb::GuardStatusResponse>, Status> {
        attribute(&request, "GuardStatus", Access::Read, &self.kill.events)?;
        Ok(Response::new(guard::status(&self.guard)))
    }

    async fn guard_test(
        &self,
        request: Request<pb::GuardTestRequest>,
    ) -> Result<Response<pb::GuardTestResponse>, Status> {
        attribute(&request, "GuardTest", Access::Read, &self.kill.events)?;
        let reservations = self.reservations.as_ref().ok().map(|r| &**r);
        guard::test(&self.guard, &self.ring, reservations)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_policy(
        &self,
        request: Request<pb::GuardPolicyRequest>,
    ) -> Result<Response<pb::GuardPolicyResponse>, Status> {
        let caller = attribute(&request, "GuardPolicy", Access::Read, &self.kill.events)?;
        guard_update::policy(&self.guard, &self.kill, caller)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn guard_update(
        &self,
        request: Request<pb::GuardUpdateRequest>,
    ) -> Result<Response<pb::GuardUpdateResponse>, Status> {
        let caller = attribute(&request, "GuardUpdate", Access::Act, &self.kill.events)?;
        guard_update::update(&self.guard, &self.kill, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn rogue(
        &self,
        request: Request<pb::RogueRequest>,
    ) -> Result<Response<pb::RogueResponse>, Status> {
        attribute(&request, "Rogue", Access::Read, &self.kill.events)?;
        rogue::rogue(&self.kill.events, &self.guard, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn uploads(
        &self,
        request: Request<pb::UploadsRequest>,
    ) -> Result<Response<pb::UploadsResponse>, Status> {
        attribute(&request, "Uploads", Access::Read, &self.kill.events)?;
        uploads::list(&self.kill.events, &self.uploads, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn upload_show(
        &self,
        request: Request<pb::UploadShowRequest>,
    ) -> Result<Response<pb::UploadShowResponse>, Status> {
        attribute(&request, "UploadShow", Access::Read, &self.kill.events)?;
        uploads::show(&self.kill.events, &self.uploads, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn upload_retry(
        &self,
        request: Request<pb::UploadRetryRequest>,
    ) -> Result<Response<pb::UploadRetryResponse>, Status> {
        let caller = attribute(&request, "UploadRetry", Access::Act, &self.kill.events)?;
        uploads::retry(
            &self.kill.events,
            &self.uploads,
            &self.kill.admin_group,
            caller,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let caller = attribute(&request, "Reserve", Access::Act, &self.kill.events)?;
        let answer = async {
            let reservations = reservations::available(&self.reservations)?;
            let requester = reservations::requester(caller, &self.kill.admin_group).await?;
            reservations::reserve(reservations, requester, request.into_inner()).await
        };
        answer.await.map(Response::new).map_err(Status::from)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = attribute(&request, "Release", Access::Act, &self.kill.events)?;
        let answer = async {
            let reservations = reservations::available(&self.reservations)?;
            let requester = reservations::requester(caller, &self.kill.admin_group).await?;
            reservations::release(reservations, requester, request.into_inner()).await
        };
        answer.await.map(Response::new).map_err(Status::from)
    }

    async fn reservations(
        &self,
        request: Request<pb::ReservationsRequest>,
    ) -> Result<Response<pb::ReservationsResponse>, Status> {
        attribute(&request, "Reservations", Access::Read, &self.kill.events)?;
        reservations::available(&self.reservations)
            .map(|reservations| Response::new(reservations::status(reservations)))
            .map_err(Status::from)
    }

    type RunStream = run::RunStream;

    async fn run(
        &self,
        request: Request<tonic::Streaming<pb::RunMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let caller = attribute(&request, "Run", Access::Act, &self.kill.events)?;
        let answer = async {
            let reservations = Arc::clone(reservations::available(&self.reservations)?);
            let requester = reservations::requester(caller, &self.kill.admin_group).await?;
            run::run(
                reservations,
                requester,
                request.into_inner(),
                self.stop.clone(),
            )
            .await
        };
        answer.await.map(Response::new).map_err(Status::from)
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let caller = attribute(&request, "Reset", Access::Act, &self.kill.events)?;
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
