//! `Watch`: the latest snapshot, then every new one. A watch stream is polled by the
//! connection itself, only when the client has room for another message (HTTP/2 flow
//! control), so it needs no task and no queue of its own: each poll sends the newest snapshot
//! published since the last message. It ends when the client goes away (the stream is
//! dropped), when the daemon shuts down, or when the ring closes. A watcher that reads too
//! slowly skips the snapshots published in between (counted in Health, and said in the next
//! message's `skipped`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use gpukill_proto::shared::SharedWatchResponse;
use gpukill_proto::v1 as pb;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tonic::Status;

use super::WatchStreamOf;
use super::convert::{self, Filter};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::{Ring, WatcherGuard};
use crate::snapshot::Snapshot;

/// The latest snapshot converted and encoded once for every watcher without a filter (most
/// of them: dashboards, `list --watch`), shared by reference count; a filtered watcher
/// converts and encodes its own.
#[derive(Debug, Default)]
pub struct SharedEncoding {
    /// The sequence number of the snapshot encoded, and its encoding.
    latest: Mutex<Option<(u64, Bytes)>>,
}

impl SharedEncoding {
    /// `snapshot`, unfiltered, as a WatchResponse's encoded field; encoded by the first
    /// watcher that sends it (the others wait for it rather than encode it again).
    fn field(&self, snapshot: &Snapshot) -> Bytes {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((sequence, field)) = latest.as_ref()
            && *sequence == snapshot.sequence
        {
            return field.clone();
        }
        let converted = convert::snapshot(snapshot, &Filter::default(), SystemTime::now());
        let field = SharedWatchResponse::encode_snapshot(&converted);
        *latest = Some((snapshot.sequence, field.clone()));
        field
    }
}

/// Opens a watch stream on `ring` that ends when `stop` turns true; unfiltered watchers share
/// `encoding`.
pub fn watch(
    ring: &Arc<Ring>,
    encoding: &Arc<SharedEncoding>,
    caller: &Caller,
    request: pb::WatchRequest,
    stop: watch::Receiver<bool>,
) -> Result<WatchStreamOf, RpcError> {
    let filter = Filter::try_from(request.filter)?;
    let (updates, guard) = ring.subscribe();
    tracing::debug!(%caller, watchers = ring.watchers(), "watch opened");
    Ok(Box::pin(Watcher {
        next: Some(ring.latest()),
        ring: Arc::clone(ring),
        updates: Some(BroadcastStream::new(updates)),
        stop: WatchStream::new(stop),
        skipped: 0,
        shared: filter.is_everything().then(|| Arc::clone(encoding)),
        filter,
        caller: caller.clone(),
        _guard: guard,
    }))
}

/// One watch stream.
struct Watcher {
    ring: Arc<Ring>,
    /// New snapshots; `None` once the ring has closed.
    updates: Option<BroadcastStream<Arc<Snapshot>>>,
    stop: WatchStream<bool>,
    /// The newest snapshot not sent yet.
    next: Option<Arc<Snapshot>>,
    /// Snapshots skipped since the last message sent.
    skipped: u64,
    /// The shared encoding, for a watcher without a filter.
    shared: Option<Arc<SharedEncoding>>,
    filter: Filter,
    caller: Caller,
    /// Counts this stream as a watcher for as long as it lives.
    _guard: WatcherGuard,
}

impl Watcher {
    /// Records `count` snapshots this watcher will never send.
    fn skip(&mut self, count: u64) {
        self.skipped += count;
        self.ring.record_lag(count);
    }

    fn message(&mut self, snapshot: &Snapshot) -> SharedWatchResponse {
        let field = match &self.shared {
            Some(shared) => shared.field(snapshot),
            None => SharedWatchResponse::encode_snapshot(&convert::snapshot(
                snapshot,
                &self.filter,
                SystemTime::now(),
            )),
        };
        SharedWatchResponse::new(field, std::mem::take(&mut self.skipped))
    }
}

impl Stream for Watcher {
    type Item = Result<SharedWatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The first poll yields the flag as it is; later ones, its changes.
        while let Poll::Ready(stop) = Pin::new(&mut this.stop).poll_next(cx) {
            if stop != Some(false) {
                return Poll::Ready(None);
            }
        }
        // Every snapshot published since the last poll: only the newest is sent.
        while let Some(updates) = this.updates.as_mut() {
            match Pin::new(updates).poll_next(cx) {
                Poll::Ready(Some(Ok(snapshot))) => {
                    if this.next.replace(snapshot).is_some() {
                        this.skip(1);
                    }
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(count)))) => {
                    this.skip(count);
                }
                Poll::Ready(None) => this.updates = None,
                Poll::Pending => break,
            }
        }
        match this.next.take() {
            Some(snapshot) => Poll::Ready(Some(Ok(this.message(&snapshot)))),
            None if this.updates.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        tracing::debug!(caller = %self.caller, "watch closed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::ring::tests::snapshot;

    fn caller() -> Caller {
        crate::authz::tests::local(1000, 1000)
    }

    /// The message as a client reads it.
    fn decoded(message: SharedWatchResponse) -> pb::WatchResponse {
        use prost::Message;
        pb::WatchResponse::decode(message.encode_to_vec().as_slice()).unwrap()
    }

    #[tokio::test]
    async fn unfiltered_watchers_share_one_encoding_and_filtered_ones_get_their_own() {
        let ring = Arc::new(Ring::new(4, snapshot(7)));
        let encoding: Arc<SharedEncoding> = Arc::default();
        let (_stop, stopped) = watch::channel(false);
        let open = |filter: Option<pb::SnapshotFilter>| {
            watch(
                &ring,
                &encoding,
                &caller(),
                pb::WatchRequest { filter },
                stopped.clone(),
            )
            .unwrap()
        };
        let (mut a, mut b) = (open(None), open(Some(pb::SnapshotFilter::default())));
        let mut amd = open(Some(pb::SnapshotFilter {
            vendor: pb::Vendor::Amd.into(),
            ..Default::default()
        }));
        let (a, b) = (
            a.next().await.unwrap().unwrap(),
            b.next().await.unwrap().unwrap(),
        );
        let amd = amd.next().await.unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(decoded(a).snapshot.unwrap().sequence, 7);
        assert_eq!(decoded(amd).snapshot.unwrap().sequence, 7);
        // The same bytes, not equal copies: encoded once.
        let shared = encoding.field(&ring.latest());
        assert_eq!(shared.as_ptr(), encoding.field(&ring.latest()).as_ptr());
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_how_many_snapshots_it_skipped() {
        let ring = Arc::new(Ring::new(4, snapshot(0)));
        let (_stop, stopped) = watch::channel(false);
        let encoding = Arc::default();
        let mut stream = watch(
            &ring,
            &encoding,
            &caller(),
            pb::WatchRequest::default(),
            stopped,
        )
        .unwrap();
        let first = decoded(stream.next().await.unwrap().unwrap());
        assert_eq!(first.snapshot.unwrap().sequence, 0);
        assert_eq!(first.skipped, 0);
        // The client reads nothing while far more snapshots come than the backlog holds.
        for sequence in 1..=100 {
            ring.push(snapshot(sequence));
        }
        let mut received = Vec::new();
        let mut skipped = 0;
        while received.last() != Some(&100) {
            let message = decoded(
                tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .expect("a message")
                    .unwrap()
                    .unwrap(),
            );
            skipped += message.skipped;
            received.push(message.snapshot.unwrap().sequence);
        }
        assert!(skipped > 0, "{received:?}");
        // What it gets next is the newest snapshot, not the oldest one still buffered.
        assert_eq!(received.first(), Some(&100), "{received:?}");
        // Every snapshot is either received or counted as skipped.
        assert_eq!(received.len() as u64 + skipped, 100, "{received:?}");
        assert_eq!(ring.watch_lagged(), skipped);
    }

    #[tokio::test]
    async fn a_watch_ends_at_shutdown_and_uncounts_itself_when_dropped() {
        let ring = Arc::new(Ring::new(4, snapshot(0)));
        let (stop, stopped) = watch::channel(false);
        let encoding = Arc::default();
        let open = || {
            watch(
                &ring,
                &encoding,
                &caller(),
                pb::WatchRequest::default(),
                stopped.clone(),
            )
            .unwrap()
        };
        let (mut ending, dropped) = (open(), open());
        assert_eq!(ring.watchers(), 2);
        drop(dropped);
        assert_eq!(ring.watchers(), 1);
        assert!(ending.next().await.is_some());
        stop.send_replace(true);
        let end = tokio::time::timeout(Duration::from_secs(5), ending.next()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
