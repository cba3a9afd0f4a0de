//! `Watch`: the latest snapshot, then every new one. Each watcher is a small task that
//! ends when the client goes away, when the daemon shuts down, or when the ring closes. A
//! watcher that falls behind skips snapshots (counted in Health).

use std::sync::Arc;
use std::time::SystemTime;

use gpukill_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::WatchStreamOf;
use super::convert::{self, Filter};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::Ring;

/// Converted snapshots waiting for a slow client; beyond this the watcher skips snapshots.
const SEND_BUFFER: usize = 2;

/// Opens a watch stream on `ring` that ends when `stop` turns true.
pub fn watch(
    ring: &Arc<Ring>,
    caller: &Caller,
    request: pb::WatchRequest,
    mut stop: watch::Receiver<bool>,
) -> Result<WatchStreamOf, RpcError> {
    let filter = Filter::try_from(request.filter)?;
    let (mut updates, guard) = ring.subscribe();
    let mut next = Some(ring.latest());
    let ring = Arc::clone(ring);
    let (sender, receiver) = mpsc::channel(SEND_BUFFER);
    tracing::debug!(%caller, watchers = ring.watchers(), "watch opened");
    let caller = caller.clone();
    tokio::spawn(async move {
        // Counted as a watcher for as long as this task runs.
        let _guard = guard;
        loop {
            if let Some(snapshot) = next.take() {
                let message = convert::snapshot(&snapshot, &filter, SystemTime::now());
                tokio::select! {
                    sent = sender.send(Ok(message)) => if sent.is_err() { break },
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
            tokio::select! {
                update = updates.recv() => match update {
                    Ok(snapshot) => next = Some(snapshot),
                    Err(RecvError::Lagged(skipped)) => ring.record_lag(skipped),
                    Err(RecvError::Closed) => break,
                },
                _ = sender.closed() => break,
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!(%caller, "watch closed");
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}
