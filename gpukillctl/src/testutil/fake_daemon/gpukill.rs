//! The fake daemon's GpuKill service: each rpc records its request and answers what the test
//! set, or UNIMPLEMENTED.

use std::pin::Pin;

use gpukill_proto::v1::gpu_kill_service_server::GpuKillService;
use gpukill_proto::v1::{
    DrainRequest, DrainResponse, EventsRequest, EventsResponse, GuardPolicyRequest,
    GuardPolicyResponse, GuardStatusRequest, GuardStatusResponse, GuardTestRequest,
    GuardTestResponse, GuardUpdateRequest, GuardUpdateResponse, HealthRequest, HealthResponse,
    HistoryRequest, HistoryResponse, ImportAuditRequest, ImportAuditResponse, KillRequest,
    KillResponse, ListRequest, ListResponse, ProcessView, ReleaseRequest, ReleaseResponse,
    ReservationsRequest, ReservationsResponse, ReserveRequest, ReserveResponse, ResetRequest,
    ResetResponse, RogueRequest, RogueResponse, RunRequest, RunResponse, SessionsRequest,
    SessionsResponse, SummaryRequest, SummaryResponse, UndrainRequest, UndrainResponse,
    UploadRetryRequest, UploadRetryResponse, UploadShowRequest, UploadShowResponse, UploadsRequest,
    UploadsResponse, VersionRequest, VersionResponse, WatchRequest, WatchResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{FakeDaemon, ReceivedKill, ReceivedReset, RunReceived, grpc_timeout};

#[tonic::async_trait]
impl GpuKillService for FakeDaemon {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        self.record(request.filter.clone());
        let view = request.process_view();
        if let Ok(mut views) = self.list_views.lock() {
            views.push(view);
        }
        match self.list.clone() {
            // As gpukilld does; without `list_summarizes`, as a daemon that predates summaries.
            Some(Ok(snapshot)) if self.list_summarizes && view == ProcessView::Summary => {
                Ok(Response::new(ListResponse {
                    snapshot: Some(crate::testutil::summarized(&snapshot)),
                }))
            }
            Some(Ok(snapshot)) => Ok(Response::new(ListResponse {
                snapshot: Some(snapshot),
            })),
            Some(Err(status)) => Err(status),
            None => Err(Status::unimplemented("List")),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.record(request.into_inner().filter);
        let items = tokio_stream::iter(self.watch.clone().into_iter().map(|item| {
            item.map(|snapshot| WatchResponse {
                snapshot: Some(snapshot),
                skipped: 0,
            })
        }));
        if self.watch_stays_open {
            Ok(Response::new(Box::pin(
                items.chain(tokio_stream::pending()),
            )))
        } else {
            Ok(Response::new(Box::pin(items)))
        }
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Err(Status::unimplemented("Health"))
    }

    async fn health_clear(
        &self,
        _request: Request<gpukill_proto::v1::HealthClearRequest>,
    ) -> Result<Response<gpukill_proto::v1::HealthClearResponse>, Status> {
        Err(Status::unimplemented("HealthClear"))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        if let Ok(mut requests) = self.drain_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.drain.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Drain")),
        }
    }

    async fn undrain(
        &self,
        request: Request<UndrainRequest>,
    ) -> Result<Response<UndrainResponse>, Status> {
        if let Ok(mut requests) = self.undrain_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.undrain.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Undrain")),
        }
    }

    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        self.version
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::unimplemented("Version"))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<KillResponse>, Status> {
        let deadline = grpc_timeout(&request);
        if let Ok(mut requests) = self.kill_requests.lock() {
            requests.push(ReceivedKill {
                request: request.into_inner(),
                deadline,
            });
        }
        match self.kill.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Kill")),
        }
    }

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventsResponse>, Status> {
        if let Ok(mut requests) = self.events_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.events.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Events")),
        }
    }

    async fn sessions(
        &self,
        request: Request<SessionsRequest>,
    ) -> Result<Response<SessionsResponse>, Status> {
        if let Ok(mut requests) = self.sessions_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.sessions.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Sessions")),
        }
    }

    async fn summary(
        &self,
        request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        if let Ok(mut requests) = self.summary_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.summary.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Summary")),
        }
    }

    async fn import_audit(
        &self,
        request: Request<ImportAuditRequest>,
    ) -> Result<Response<ImportAuditResponse>, Status> {
        if let Ok(mut requests) = self.import_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.import_audit.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("ImportAudit")),
        }
    }

    async fn guard_status(
        &self,
        _request: Request<GuardStatusRequest>,
    ) -> Result<Response<GuardStatusResponse>, Status> {
        match self.guard_status.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardStatus")),
        }
    }

    async fn guard_test(
        &self,
        _request: Request<GuardTestRequest>,
    ) -> Result<Response<GuardTestResponse>, Status> {
        match self.guard_test.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardTest")),
        }
    }

    async fn guard_policy(
        &self,
        _request: Request<GuardPolicyRequest>,
    ) -> Result<Response<GuardPolicyResponse>, Status> {
        match self.guard_policy.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardPolicy")),
        }
    }

    async fn guard_update(
        &self,
        request: Request<GuardUpdateRequest>,
    ) -> Result<Response<GuardUpdateResponse>, Status> {
        if let Ok(mut requests) = self.guard_update_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.guard_update.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardUpdate")),
        }
    }

    async fn rogue(
        &self,
        request: Request<RogueRequest>,
    ) -> Result<Response<RogueResponse>, Status> {
        if let Ok(mut requests) = self.rogue_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.rogue.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Rogue")),
        }
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        if let Ok(mut requests) = self.history_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.history.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("History")),
        }
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        let deadline = grpc_timeout(&request);
        if let Ok(mut requests) = self.reset_requests.lock() {
            requests.push(ReceivedReset {
                request: request.into_inner(),
                deadline,
            });
        }
        match self.reset.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reset")),
        }
    }

    async fn uploads(
        &self,
        request: Request<UploadsRequest>,
    ) -> Result<Response<UploadsResponse>, Status> {
        if let Ok(mut requests) = self.uploads_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.uploads.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Uploads")),
        }
    }

    async fn upload_show(
        &self,
        request: Request<UploadShowRequest>,
    ) -> Result<Response<UploadShowResponse>, Status> {
        if let Ok(mut requests) = self.upload_show_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.upload_show.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("UploadShow")),
        }
    }

    async fn upload_retry(
        &self,
        request: Request<UploadRetryRequest>,
    ) -> Result<Response<UploadRetryResponse>, Status> {
        if let Ok(mut requests) = self.upload_retry_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.upload_retry.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("UploadRetry")),
        }
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        if let Ok(mut requests) = self.reserve_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.reserve.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reserve")),
        }
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        if let Ok(mut requests) = self.release_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.release.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Release")),
        }
    }

    async fn reservations(
        &self,
        _request: Request<ReservationsRequest>,
    ) -> Result<Response<ReservationsResponse>, Status> {
        match self.reservations.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reservations")),
        }
    }

    type RunStream = Pin<Box<dyn Stream<Item = Result<RunResponse, Status>> + Send>>;

    async fn run(
        &self,
        request: Request<tonic::Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let call = {
            let mut received = self
                .run_received
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            received.push(Vec::new());
            received.len() - 1
        };
        let Some(script) = self.run.get(call).cloned() else {
            return Err(Status::unimplemented("Run"));
        };
        let received = self.run_received.clone();
        let record = move |event: RunReceived| {
            if let Ok(mut received) = received.lock() {
                received[call].push(event);
            }
        };
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut script = Some(script.updates);
            loop {
                let event = match inbound.message().await {
                    Ok(Some(message)) => RunReceived::Message(message),
                    Ok(None) => RunReceived::End,
                    Err(status) => RunReceived::Broken(status.to_string()),
                };
                let last = !matches!(event, RunReceived::Message(_));
                record(event);
                for update in script.take().unwrap_or_default() {
                    let is_error = update.is_err();
                    if sender.send(update).await.is_err() || is_error {
                        break;
                    }
                }
                if last {
                    // The client's side is over: end ours (the sender is dropped).
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
