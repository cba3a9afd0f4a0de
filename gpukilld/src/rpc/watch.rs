//! `Watch`: the latest snapshot, then every new one. Each watcher is a small task that
//! ends when the client goes away, when the daemon shuts down, or when the ring closes. A
//! watcher that falls behind skips snapshots (counted in Health, and said in the next
//! message's `skipped`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use gpukill_proto::shared::SharedWatchResponse;
use gpukill_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::WatchStreamOf;
use super::convert::{self, Filter};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::Ring;
use crate::snapshot::Snapshot;

/// Converted snapshots waiting for a slow client; beyond this the watcher skips snapshots.
const SEND_BUFFER: usize = 2;

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
    mut stop: watch::Receiver<bool>,
) -> Result<WatchStreamOf, RpcError> {
    let filter = Filter::try_from(request.filter)?;
    let (mut updates, guard) = ring.subscribe();
    let mut next = Some(ring.latest());
    let ring = Arc::clone(ring);
    let shared = filter.is_everything().then(|| Arc::clone(encoding));
    let (sender, receiver) = mpsc::channel(SEND_BUFFER);
    tracing::debug!(%caller, watchers = ring.watchers(), "watch opened");
    let caller = caller.clone();
    tokio::spawn(async move {
        // Counted as a watcher for as long as this task runs.
        let _guard = guard;
        // Snapshots skipped since the last message sent.
        let mut skipped = 0;
        loop {
            if let Some(snapshot) = next.take() {
                let field = match &shared {
                    Some(shared) => shared.field(&snapshot),
                    None => SharedWatchResponse::encode_snapshot(&convert::snapshot(
                        &snapshot,
                        &filter,
                        SystemTime::now(),
                    )),
                };
                let message = SharedWatchResponse::new(field, std::mem::take(&mut skipped));
                tokio::select! {
                    sent = sender.send(Ok(message)) => if sent.is_err() { break },
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
            tokio::select! {
                update = updates.recv() => match update {
                    Ok(snapshot) => next = Some(snapshot),
                    Err(RecvError::Lagged(lagged)) => {
                        ring.record_lag(lagged);
                        skipped += lagged;
                    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::authz::Transport;
    use crate::ring::tests::snapshot;

    fn caller() -> Caller {
        Caller {
            uid: 1000,
            gid: 1000,
            pid: None,
            transport: Transport::Local,
            remote: None,
        }
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
        // Every snapshot is either received or counted as skipped.
        assert_eq!(received.len() as u64 + skipped, 100, "{received:?}");
        assert_eq!(ring.watch_lagged(), skipped);
    }
}
