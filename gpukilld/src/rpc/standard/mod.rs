//! The standard gRPC services that stock clients and tools know, next to gpukill's own:
//! health checking (`grpc.health.v1.Health`, for `grpc_health_probe`, Kubernetes probes
//! and load balancers) and server reflection (`grpc.reflection.v1` and `v1alpha`, for
//! `grpcurl` and clients that build requests from the daemon's own descriptors).
//!
//! Both are reads, under the rule every gpukill read keeps ([`super::attribute`] with
//! [`Access::Read`]): any local caller on the Unix socket, and on TCP only principals that
//! the authenticator layer let through and whose role may read (a refusal is audited like
//! any other). Their streams end when the daemon stops, with `UNAVAILABLE`, so that a
//! watcher never holds the graceful shutdown open.

pub mod health;
pub mod reflection;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};

use crate::authz::Access;
use crate::store::StoreHandle;

/// Adds health checking (its statuses set through `statuses`) and reflection (of the
/// gpukill contract, the health service and reflection itself) to `routes`, each behind
/// the read check and ending its streams when `stopped` turns true; requests larger than
/// `request_limit` bytes are refused. Reflection that cannot be built (the compiled-in
/// descriptors do not decode: a build fault) is left out and logged, and the daemon serves on.
pub fn add(
    routes: Routes,
    statuses: &health::Statuses,
    store: &StoreHandle,
    stopped: &watch::Receiver<bool>,
    request_limit: usize,
) -> Routes {
    let reads = Reads {
        store: store.clone(),
    };
    let health = statuses.server().max_decoding_message_size(request_limit);
    let routes = routes.add_service(guard(health, stopped, &reads));
    match reflection::servers(request_limit) {
        Ok((v1, v1alpha)) => routes
            .add_service(guard(v1, stopped, &reads))
            .add_service(guard(v1alpha, stopped, &reads)),
        Err(error) => {
            tracing::error!(%error, "server reflection is off: the compiled-in descriptors do not load");
            routes
        }
    }
}

/// `service` behind the read check, its streams ending when `stopped` turns true.
fn guard<S>(
    service: S,
    stopped: &watch::Receiver<bool>,
    reads: &Reads,
) -> InterceptedService<EndOnStop<S>, Reads> {
    InterceptedService::new(EndOnStop::new(service, stopped), reads.clone())
}

/// The read check in front of a standard service: the same attribution, role check and
/// audited refusal as every gpukill read.
#[derive(Clone)]
struct Reads {
    store: StoreHandle,
}

impl Interceptor for Reads {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        super::attribute(&request, Access::Read, &self.store)?;
        Ok(request)
    }
}

/// A gRPC service whose streams end when the daemon stops: what the service has ready is
/// still sent, then the response ends with `UNAVAILABLE` ("gpukilld is stopping") and the
/// request as if the client had finished.
#[derive(Clone)]
pub struct EndOnStop<S> {
    inner: S,
    stopped: watch::Receiver<bool>,
}

impl<S> EndOnStop<S> {
    /// `inner`, its responses ending when `stopped` turns true.
    pub fn new(inner: S, stopped: &watch::Receiver<bool>) -> Self {
        Self {
            inner,
            stopped: stopped.clone(),
        }
    }
}

impl<S: NamedService> NamedService for EndOnStop<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for EndOnStop<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The request side ends too: a handler reading a client stream (reflection's) then
        // lets go of it, and the HTTP/2 stream can close.
        let request = request.map(|body| UntilStopped::wrap(body, &self.stopped, End::Quietly));
        let answer = self.inner.call(request);
        let stopped = self.stopped.clone();
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| UntilStopped::wrap(body, &stopped, End::Unavailable)))
        })
    }
}

/// How a body that the stop cuts short ends.
#[derive(Clone, Copy)]
enum End {
    /// As if the client had finished sending (a request).
    Quietly,
    /// With `UNAVAILABLE` trailers (a response).
    Unavailable,
}

/// A body that ends once `stop` completes, between two of its frames (never inside one).
struct UntilStopped {
    inner: Body,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    end: End,
    ended: bool,
}

impl UntilStopped {
    /// `inner`, ending as `end` says when `stopped` turns true (or its sender goes).
    fn wrap(inner: Body, stopped: &watch::Receiver<bool>, end: End) -> Body {
        let mut stopped = stopped.clone();
        let stop = Box::pin(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        });
        Body::new(UntilStopped {
            inner,
            stop,
            end,
            ended: false,
        })
    }
}

impl HttpBody for UntilStopped {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What the service has ready goes first (a last NOT_SERVING, say).
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.ended = true;
            }
            return Poll::Ready(frame);
        }
        if self.stop.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.ended = true;
        if let End::Quietly = self.end {
            return Poll::Ready(None);
        }
        let mut trailers = http::HeaderMap::new();
        let stopping = tonic::Status::unavailable("gpukilld is stopping");
        Poll::Ready(Some(match stopping.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(status) => Err(status),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            // It may end sooner: no exact size.
            SizeHint::new()
        }
    }
}
