//! The tower layer in front of the gRPC services that sees every request first: TCP
//! authentication and cluster forwarding are each an [`Intercept`] that lets a request
//! through (perhaps changed) or answers it itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;

/// The rpc a request calls, as logs and audit events name it: `List` for the GpuKill
/// service, `Cluster.List` for another; taken from the request's path by
/// [`InterceptService`], which every listener runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcName(pub String);

impl RpcName {
    /// The name of the rpc at `path` (`/gpukill.v1.GpuKillService/List` is `List`,
    /// `/gpukill.v1.ClusterService/Register` is `Cluster.Register`).
    pub fn of(path: &str) -> Self {
        let path = path.trim_start_matches('/');
        let (service, method) = path.rsplit_once('/').unwrap_or(("", path));
        let service = service.rsplit('.').next().unwrap_or(service);
        match service.strip_suffix("Service").unwrap_or(service) {
            "" | "GpuKill" => RpcName(method.to_owned()),
            service => RpcName(format!("{service}.{method}")),
        }
    }
}

/// A boxed, sendable response future.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// What an [`Intercept`] does with a request.
// The request is moved once per call; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Intercepted {
    /// Let it through to the services.
    Pass(http::Request<Body>),
    /// Answer it here (an error status, or another daemon's answer).
    Answer(BoxFuture<http::Response<Body>, Infallible>),
}

/// Decides, before any service sees a request, whether it goes through.
pub trait Intercept: Send + Sync + 'static {
    /// What to do with `request`.
    fn intercept(self: Arc<Self>, request: http::Request<Body>) -> Intercepted;
}

/// The layer of an [`Intercept`].
pub struct InterceptLayer<I> {
    intercept: Arc<I>,
}

impl<I> InterceptLayer<I> {
    /// A layer running `intercept` on every request.
    pub fn new(intercept: Arc<I>) -> Self {
        Self { intercept }
    }
}

impl<I> Clone for InterceptLayer<I> {
    fn clone(&self) -> Self {
        Self {
            intercept: Arc::clone(&self.intercept),
        }
    }
}

impl<S, I> tower::Layer<S> for InterceptLayer<I> {
    type Service = InterceptService<S, I>;

    fn layer(&self, inner: S) -> InterceptService<S, I> {
        InterceptService {
            inner,
            intercept: Arc::clone(&self.intercept),
        }
    }
}

/// [`InterceptLayer`]'s service.
pub struct InterceptService<S, I> {
    inner: S,
    intercept: Arc<I>,
}

impl<S: Clone, I> Clone for InterceptService<S, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            intercept: Arc::clone(&self.intercept),
        }
    }
}

impl<S, I> tower::Service<http::Request<Body>> for InterceptService<S, I>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    I: Intercept,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if request.extensions().get::<RpcName>().is_none() {
            let name = RpcName::of(request.uri().path());
            request.extensions_mut().insert(name);
        }
        match Arc::clone(&self.intercept).intercept(request) {
            Intercepted::Pass(request) => {
                // tower's rule: the service polled ready is the one that takes the call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Intercepted::Answer(answer) => Box::pin(async move {
                let Ok(response) = answer.await;
                Ok(response)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RpcName;

    #[test]
    fn rpcs_are_named_by_their_path() {
        assert_eq!(RpcName::of("/gpukill.v1.GpuKillService/List").0, "List");
        assert_eq!(
            RpcName::of("/gpukill.v1.ClusterService/Register").0,
            "Cluster.Register"
        );
        assert_eq!(
            RpcName::of("/grpc.health.v1.Health/Check").0,
            "Health.Check"
        );
        assert_eq!(RpcName::of("/odd").0, "odd");
    }
}
