//! Run: a `gpukillctl run` client's stream. The first message asks for GPUs (or resumes a
//! reservation after a daemon restart); the daemon answers Queued while the request waits
//! and Granted when the GPUs are the client's. The reservation lives while the client's
//! stream does: its end or break releases it at once, silence for the heartbeat timeout
//! releases it at the next tick. A daemon that stops keeps it for the client to resume.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::error::RpcError;
use super::reservations::reserved_gpu;
use crate::reservations::{
    Grant, LeaseRequest, Queued, Requester, ReservationError, Reservations, Want, stopped,
};
use crate::store::LeaseKind;

/// The stream type of `Run`.
pub type RunStream = Pin<Box<dyn Stream<Item = Result<pb::RunResponse, Status>> + Send + 'static>>;

/// Updates queued to a client at most (it reads them as they come; a few suffice).
const UPDATES: usize = 8;

/// Starts a run session: reads the first message (a client that sends none within the
/// heartbeat timeout is refused), answers what can be answered at once (a bad request, a
/// busy node with `--nonblock`), and serves the rest from a task.
pub async fn run(
    reservations: Arc<Reservations>,
    requester: Requester,
    mut inbound: Streaming<pb::RunRequest>,
    stop: watch::Receiver<bool>,
) -> Result<RunStream, RpcError> {
    let timeout = reservations.config().heartbeat_timeout;
    let first = match tokio::time::timeout(timeout, inbound.message()).await {
        Ok(Ok(Some(message))) => message.message,
        Ok(Err(status)) => return Err(RpcError::Inbound(status)),
        _ => None,
    };
    let (updates, stream) = mpsc::channel(UPDATES);
    let session = Session {
        reservations,
        requester,
        inbound,
        updates,
        stop,
    };
    match first {
        Some(pb::run_request::Message::Start(start)) => session.start(start).await?,
        Some(pb::run_request::Message::Resume(resume)) => session.resume(resume.reservation_id)?,
        _ => return Err(RpcError::BadRunStart),
    }
    Ok(Box::pin(ReceiverStream::new(stream)))
}

struct Session {
    reservations: Arc<Reservations>,
    requester: Requester,
    inbound: Streaming<pb::RunRequest>,
    updates: mpsc::Sender<Result<pb::RunResponse, Status>>,
    stop: watch::Receiver<bool>,
}

impl Session {
    async fn start(self, start: pb::RunStart) -> Result<(), RpcError> {
        let request = LeaseRequest {
            want: Want::Count(start.count.max(1)),
            kind: LeaseKind::Run,
            duration: (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms)),
            // Clipped at once: a queued session holds its request while it waits.
            note: crate::reservations::clip_note(start.command.clone()),
            client_pid: self.requester.caller.pid,
        };
        match self.reservations.reserve(&self.requester, &request).await {
            Ok(grant) => {
                let ended = self.reservations.run_ended(grant.lease);
                tokio::spawn(self.hold(grant, ended));
                Ok(())
            }
            Err(ReservationError::Busy(_)) if start.wait => {
                let wait = (start.wait_ms > 0).then(|| Duration::from_millis(start.wait_ms));
                let Want::Count(count) = request.want else {
                    return Err(RpcError::BadRunStart);
                };
                // Refused here, before the stream is answered, when the queue is full.
                let queued = self
                    .reservations
                    .enqueue(&self.requester, count, &request.note)?;
                tokio::spawn(self.queue(queued, count, request, wait));
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn resume(self, lease: i64) -> Result<(), RpcError> {
        let (grant, ended) = self.reservations.resume(&self.requester, lease)?;
        tokio::spawn(self.hold(grant, Some(ended)));
        Ok(())
    }

    /// Waits in the queue, first come first served, telling the client its place when it
    /// changes; leaves the queue when the client goes, the wait runs out or the daemon
    /// stops.
    async fn queue(
        mut self,
        queued: Queued,
        count: u32,
        request: LeaseRequest,
        wait: Option<Duration>,
    ) {
        let give_up = wait.map(|wait| tokio::time::Instant::now() + wait);
        let mut told = None;
        let grant = loop {
            let changed = self.reservations.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ahead = match self
                .reservations
                .serve_ticket(&queued, &self.requester, &request)
                .await
            {
                Ok(Ok(grant)) => break grant,
                Ok(Err(ahead)) => ahead,
                Err(error) => {
                    let _ = self.updates.send(Err(RpcError::from(error).into())).await;
                    return;
                }
            };
            if told != Some(ahead) {
                told = Some(ahead);
                let update = pb::run_response::Update::Queued(pb::RunQueued {
                    ahead: u32::try_from(ahead).unwrap_or(u32::MAX),
                });
                if send(&self.updates, update).await.is_err() {
                    return;
                }
            }
            let deadline = async {
                match give_up {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut changed => {}
                // A snapshot may have freed a GPU in use without a reservation.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = deadline => {
                    let waited = humantime::format_duration(wait.unwrap_or_default());
                    let error = ReservationError::Busy(format!(
                        "waited {waited} for {count} GPUs; none came free in time (gpukillctl status shows who holds them)"
                    ));
                    let _ = self.updates.send(Err(RpcError::from(error).into())).await;
                    return;
                }
                message = self.inbound.message() => match message {
                    Ok(Some(_)) => {}
                    // The client went away while waiting: it leaves the queue (drop).
                    _ => return,
                },
                () = stopped(&mut self.stop) => {
                    let _ = self.updates.send(Err(Status::unavailable("gpukilld is stopping; run again"))).await;
                    return;
                }
            }
        };
        drop(queued);
        let ended = self.reservations.run_ended(grant.lease);
        self.hold(grant, ended).await;
    }

    /// Holds a granted reservation while the client's stream lives.
    async fn hold(mut self, grant: Grant, ended: Option<watch::Receiver<Option<String>>>) {
        let lease = grant.lease;
        let config = self.reservations.config();
        let granted = pb::RunGranted {
            reservation_id: lease,
            gpus: grant.gpus.iter().map(reserved_gpu).collect(),
            environment: grant.environment.into_iter().collect(),
            heartbeat_interval_ms: millis(config.heartbeat_interval),
            heartbeat_timeout_ms: millis(config.heartbeat_timeout),
            expires_unix_ms: grant.expires_ms,
        };
        let Some(mut ended) = ended else {
            // It ended between the grant and now.
            return;
        };
        if send(&self.updates, pb::run_response::Update::Granted(granted))
            .await
            .is_err()
        {
            self.reservations
                .end_run(lease, "gpukillctl run went away before its first heartbeat")
                .await;
            return;
        }
        let stopping = self.stop.clone();
        loop {
            tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(_)) => self.reservations.heartbeat(lease),
                    Ok(None) => {
                        self.reservations.end_run(lease, "the command ended").await;
                        return;
                    }
                    Err(status) => {
                        if *stopping.borrow() {
                            self.reservations.detach(lease);
                            return;
                        }
                        let why = format!("gpukillctl run went away ({})", status.message());
                        self.reservations.end_run(lease, &why).await;
                        return;
                    }
                },
                changed = ended.changed() => {
                    let reason = ended.borrow().clone();
                    if changed.is_err() || reason.is_some() {
                        let reason = reason.unwrap_or_else(|| "the reservation ended".to_owned());
                        let _ = send(&self.updates, pb::run_response::Update::Ended(pb::RunEnded { reason })).await;
                        return;
                    }
                }
                () = stopped(&mut self.stop) => {
                    // The reservation stays for the client to resume after the restart.
                    self.reservations.detach(lease);
                    let _ = self.updates.send(Err(Status::unavailable(
                        "gpukilld is stopping; resume the reservation when it is back",
                    ))).await;
                    return;
                }
            }
        }
    }
}

async fn send(
    updates: &mpsc::Sender<Result<pb::RunResponse, Status>>,
    update: pb::run_response::Update,
) -> Result<(), ()> {
    updates
        .send(Ok(pb::RunResponse {
            update: Some(update),
        }))
        .await
        .map_err(|_| ())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
