//! `Watch`: the latest snapshot, then every new one. A watcher that falls behind skips
//! snapshots (counted in Health); one that disconnects is dropped with its subscription.

use std::sync::Arc;
use std::time::SystemTime;

use gpukill_proto::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::WatchStreamOf;
use super::convert::{self, Filter};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::Ring;

/// Opens a watch stream on `ring`.
pub fn watch(ring: &Arc<Ring>, caller: &Caller, request: pb::WatchRequest) -> Result<WatchStreamOf, RpcError> {
    let filter = Arc::new(Filter::try_from(request.filter)?);
    let (updates, guard) = ring.subscribe();
    let latest = ring.latest();
    tracing::debug!(%caller, watchers = ring.watchers(), "watch opened");
    let lag_ring = Arc::clone(ring);
    let first = tokio_stream::once(Ok(latest));
    let stream = first
        .chain(BroadcastStream::new(updates))
        .filter_map(move |update| match update {
            Ok(snapshot) => Some(snapshot),
            Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                lag_ring.record_lag(skipped);
                None
            }
        })
        .map(move |snapshot| {
            // The guard lives as long as the stream: dropping the stream uncounts the watcher.
            let _ = &guard;
            Ok(convert::snapshot(&snapshot, &filter, SystemTime::now()))
        });
    Ok(Box::pin(stream))
}
