//! What the tower layers in front of the gRPC services (TCP authentication, cluster
//! forwarding) share.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable response future.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Calls `inner`, which was polled ready, with `request`, and leaves a clone in its place:
/// tower's rule is that the service polled ready is the one that takes the call.
pub fn call_ready<S, R>(inner: &mut S, request: R) -> S::Future
where
    S: tower::Service<R> + Clone,
{
    let clone = inner.clone();
    let mut ready = std::mem::replace(inner, clone);
    ready.call(request)
}
