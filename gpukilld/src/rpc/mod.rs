//! The gpukill gRPC service. Each rpc lives in its own module and is a thin adapter:
//! attribute the caller, parse the request, call the core, convert the answer.

pub mod convert;
mod drain;
pub mod error;
mod events;
mod gpu_health;
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
pub mod standard;
pub mod summary;
pub mod tcp;
pub mod unix;
pub mod uploads;
mod version;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use gpukill_proto::shared::SharedWatchResponse;
use gpukill_proto::v1 as pb;
use gpukill_proto::v1_shared_server::gpu_kill_service_server::{
    GpuKillService, GpuKillServiceServer,
};
use tokio::sync::watch as channel;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::authz::{self, Access, AuthzError, Caller, Principal};
use crate::node::NodeIdentity;
use crate::ring::Ring;
use crate::store::{EventCaller, EventKind, NewEvent};
use error::RpcError;

/// The stream type of `Watch`.
pub type WatchStreamOf =
    Pin<Box<dyn Stream<Item = Result<SharedWatchResponse, Status>> + Send + 'static>>;

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
    reservations: crate::reservations::ReservationsHandle,
    /// The latest snapshot encoded once for every unfiltered watcher.
    watch_encoding: Arc<watch::SharedEncoding>,
    /// The GPUs' health assessment (HealthClear acknowledges in it).
    health: Arc<std::sync::Mutex<crate::health::Tracker>>,
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
        reservations: crate::reservations::ReservationsHandle,
        health: Arc<std::sync::Mutex<crate::health::Tracker>>,
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
            watch_encoding: Arc::default(),
            health,
        }
    }

    /// The reservations, and who asks of them (a local user, from the kernel's credentials).
    async fn reservations_for(
        &self,
        caller: Caller,
    ) -> Result<
        (
            Arc<crate::reservations::Reservations>,
            crate::reservations::Requester,
        ),
        RpcError,
    > {
        let reservations = Arc::clone(reservations::available(&self.reservations)?);
        let requester = reservations::requester(caller, &self.kill.admin_group).await?;
        Ok((reservations, requester))
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> GpuKillServiceServer<Self> {
        GpuKillServiceServer::new(self)
    }
}

/// Attributes a request, checks that the caller's role allows `access`, and logs who made
/// it, naming the rpc by its path ([`layer::RpcName`]). A refusal is written to the audit
/// trail.
pub(crate) fn attribute<T>(
    request: &Request<T>,
    access: Access,
    store: &crate::store::StoreHandle,
) -> Result<Caller, Status> {
    let rpc = rpc_name(request);
    let caller = authz::caller(request).map_err(error::RpcError::from)?;
    tracing::debug!(rpc, %caller, "request");
    if let Err(refusal) = caller.check(access, rpc) {
        audit_refusal(store, &caller, rpc, &refusal);
        return Err(error::RpcError::from(refusal).into());
    }
    Ok(caller)
}

/// The rpc's name, from its path ([`layer::RpcName`]): `Kill`, `Cluster.Register`.
pub(crate) fn rpc_name<T>(request: &Request<T>) -> &str {
    request
        .extensions()
        .get::<layer::RpcName>()
        .map_or("an rpc", |name| name.0.as_str())
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
    events: &crate::store::Database,
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
    store: &crate::store::StoreHandle,
    caller: &Caller,
    rpc: &str,
    refusal: &AuthzError,
) {
    tracing::warn!(rpc, %caller, %refusal, "request refused");
    let Some(log) = store.database() else {
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

/// The shell every rpc shares: attribute the request and check that the caller's role
/// allows `access` ([`attribute`], which names the rpc from its path), run `handle` with the
/// caller and the message, and answer (an error through its one mapping to a gRPC code).
pub(crate) async fn answer<T, R, E, Fut>(
    store: &crate::store::StoreHandle,
    request: Request<T>,
    access: Access,
    handle: impl FnOnce(Caller, T) -> Fut,
) -> Result<Response<R>, Status>
where
    Fut: std::future::Future<Output = Result<R, E>>,
    E: Into<Status>,
{
    let caller = attribute(&request, access, store)?;
    handle(caller, request.into_inner())
        .await
        .map(Response::new)
        .map_err(Into::into)
}

#[tonic::async_trait]
impl GpuKillService for Service {
    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        answer(
            &self.kill.store,
            request,
            Access::Read,
            |caller, message| async move { list::list(&self.ring, &caller, message) },
        )
        .await
    }

    type WatchStream = WatchStreamOf;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        answer(
            &self.kill.store,
            request,
            Access::Read,
            |caller, message| async move {
                watch::watch(
                    &self.ring,
                    &self.watch_encoding,
                    &caller,
                    message,
                    self.stop.clone(),
                )
            },
        )
        .await
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, _| async move {
            Ok::<_, RpcError>(
                health::health(&self.ring, &self.kill, &self.uploads, self.started).await,
            )
        })
        .await
    }

    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, _| async move {
            Ok::<_, RpcError>(version::version(&self.ring, &self.node))
        })
        .await
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            kill::kill(&self.ring, &self.kill, caller, message)
        })
        .await
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            events::events(&self.kill.store, message)
        })
        .await
    }

    async fn sessions(
        &self,
        request: Request<pb::SessionsRequest>,
    ) -> Result<Response<pb::SessionsResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            sessions::sessions(&self.kill.store, message)
        })
        .await
    }

    async fn summary(
        &self,
        request: Request<pb::SummaryRequest>,
    ) -> Result<Response<pb::SummaryResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            summary::summary(&self.kill.store, message)
        })
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            history::history(&self.kill.store, message)
        })
        .await
    }

    async fn import_audit(
        &self,
        request: Request<pb::ImportAuditRequest>,
    ) -> Result<Response<pb::ImportAuditResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            import::import_audit(&self.kill, caller, message)
        })
        .await
    }

    async fn guard_status(
        &self,
        request: Request<pb::GuardStatusRequest>,
    ) -> Result<Response<pb::GuardStatusResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, _| async move {
            Ok::<_, RpcError>(guard::status(&self.guard))
        })
        .await
    }

    async fn guard_test(
        &self,
        request: Request<pb::GuardTestRequest>,
    ) -> Result<Response<pb::GuardTestResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, _| async move {
            let reservations = self.reservations.as_ref().ok().map(|r| &**r);
            guard::test(&self.guard, &self.ring, reservations).await
        })
        .await
    }

    async fn guard_policy(
        &self,
        request: Request<pb::GuardPolicyRequest>,
    ) -> Result<Response<pb::GuardPolicyResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |caller, _| {
            guard_update::policy(&self.guard, &self.kill, caller)
        })
        .await
    }

    async fn guard_update(
        &self,
        request: Request<pb::GuardUpdateRequest>,
    ) -> Result<Response<pb::GuardUpdateResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            guard_update::update(&self.guard, &self.kill, caller, message)
        })
        .await
    }

    async fn health_clear(
        &self,
        request: Request<pb::HealthClearRequest>,
    ) -> Result<Response<pb::HealthClearResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            gpu_health::clear(&self.ring, &self.health, &self.kill, caller, message)
        })
        .await
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            drain::drain(&self.reservations, &self.kill, caller, message)
        })
        .await
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            drain::undrain(&self.reservations, &self.kill, caller, message)
        })
        .await
    }

    async fn rogue(
        &self,
        request: Request<pb::RogueRequest>,
    ) -> Result<Response<pb::RogueResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            rogue::rogue(&self.kill.store, &self.guard, message)
        })
        .await
    }

    async fn uploads(
        &self,
        request: Request<pb::UploadsRequest>,
    ) -> Result<Response<pb::UploadsResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            uploads::list(&self.kill.store, &self.uploads, message)
        })
        .await
    }

    async fn upload_show(
        &self,
        request: Request<pb::UploadShowRequest>,
    ) -> Result<Response<pb::UploadShowResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, message| {
            uploads::show(&self.kill.store, &self.uploads, message)
        })
        .await
    }

    async fn upload_retry(
        &self,
        request: Request<pb::UploadRetryRequest>,
    ) -> Result<Response<pb::UploadRetryResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            uploads::retry(
                &self.kill.store,
                &self.uploads,
                &self.kill.admin_group,
                caller,
                message,
            )
        })
        .await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        answer(
            &self.kill.store,
            request,
            Access::Act,
            |caller, message| async move {
                let (reservations, requester) = self.reservations_for(caller).await?;
                reservations::reserve(&reservations, requester, message).await
            },
        )
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        answer(
            &self.kill.store,
            request,
            Access::Act,
            |caller, message| async move {
                let (reservations, requester) = self.reservations_for(caller).await?;
                reservations::release(&reservations, requester, message).await
            },
        )
        .await
    }

    async fn reservations(
        &self,
        request: Request<pb::ReservationsRequest>,
    ) -> Result<Response<pb::ReservationsResponse>, Status> {
        answer(&self.kill.store, request, Access::Read, |_, _| async move {
            reservations::available(&self.reservations).map(|held| reservations::status(held))
        })
        .await
    }

    type RunStream = run::RunStream;

    async fn run(
        &self,
        request: Request<tonic::Streaming<pb::RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        answer(
            &self.kill.store,
            request,
            Access::Act,
            |caller, inbound| async move {
                let (reservations, requester) = self.reservations_for(caller).await?;
                run::run(reservations, requester, inbound, self.stop.clone()).await
            },
        )
        .await
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        answer(&self.kill.store, request, Access::Act, |caller, message| {
            reset::reset(
                &self.ring,
                &self.kill,
                &self.reset,
                &self.health,
                caller,
                message,
            )
        })
        .await
    }
}
