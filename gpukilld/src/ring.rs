//! The last N snapshots in memory, the latest one, and a broadcast for watchers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::snapshot::Snapshot;

/// How many snapshots a slow watcher may fall behind before it skips some.
const WATCH_BACKLOG: usize = 16;

/// The in-memory ring of recent snapshots.
pub struct Ring {
    capacity: usize,
    snapshots: Mutex<VecDeque<Arc<Snapshot>>>,
    latest: watch::Sender<Arc<Snapshot>>,
    updates: broadcast::Sender<Arc<Snapshot>>,
    watchers: AtomicU64,
    watch_lagged: AtomicU64,
}

impl Ring {
    /// A ring of `capacity` snapshots (at least 1) whose latest is `first`.
    pub fn new(capacity: usize, first: Snapshot) -> Self {
        let first = Arc::new(first);
        let (updates, _) = broadcast::channel(WATCH_BACKLOG);
        Self {
            capacity: capacity.max(1),
            snapshots: Mutex::new(VecDeque::from([Arc::clone(&first)])),
            latest: watch::Sender::new(first),
            updates,
            watchers: AtomicU64::new(0),
            watch_lagged: AtomicU64::new(0),
        }
    }

    /// Publishes a new snapshot: it becomes the latest, joins the ring (evicting the oldest)
    /// and is sent to every watcher.
    pub fn push(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        {
            let mut snapshots = self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if snapshots.len() == self.capacity {
                snapshots.pop_front();
            }
            snapshots.push_back(Arc::clone(&snapshot));
        }
        self.latest.send_replace(Arc::clone(&snapshot));
        // No receivers is fine: nobody is watching.
        let _ = self.updates.send(snapshot);
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.borrow())
    }

    /// Subscribes a watcher to every new snapshot. The returned guard counts the watcher
    /// until it is dropped.
    pub fn subscribe(self: &Arc<Self>) -> (broadcast::Receiver<Arc<Snapshot>>, WatcherGuard) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        (
            self.updates.subscribe(),
            WatcherGuard {
                ring: Arc::clone(self),
            },
        )
    }

    /// Every new snapshot, for the daemon's own consumers (not counted as a watcher).
    pub fn updates(&self) -> broadcast::Receiver<Arc<Snapshot>> {
        self.updates.subscribe()
    }

    /// Records that a watcher skipped `count` snapshots.
    pub fn record_lag(&self, count: u64) {
        self.watch_lagged.fetch_add(count, Ordering::Relaxed);
    }

    /// Watchers now subscribed.
    pub fn watchers(&self) -> u64 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Snapshots watchers skipped since start.
    pub fn watch_lagged(&self) -> u64 {
        self.watch_lagged.load(Ordering::Relaxed)
    }

    /// Snapshots held and the capacity.
    pub fn len_and_capacity(&self) -> (usize, usize) {
        let len = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        (len, self.capacity)
    }

    /// A copy of the ring's contents, oldest first.
    pub fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshots.iter().cloned().collect()
    }

    /// Median and maximum tick duration over the ring.
    pub fn tick_durations(&self) -> (Duration, Duration) {
        let mut durations: Vec<Duration> =
            self.snapshots().iter().map(|s| s.tick_duration).collect();
        durations.sort_unstable();
        let median = durations
            .get(durations.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = durations.last().copied().unwrap_or_default();
        (median, max)
    }
}

/// Counts one open watcher; dropping it (when the client goes away) uncounts it.
pub struct WatcherGuard {
    ring: Arc<Ring>,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.ring.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::SystemTime;

    /// An empty snapshot numbered `sequence`.
    pub(crate) fn snapshot(sequence: u64) -> Snapshot {
        Snapshot {
            host: Arc::from("test"),
            taken_at: SystemTime::now(),
            sequence,
            vendors: Vec::new(),
            data: Vec::new(),
            tick_duration: Duration::from_micros(sequence),
            poll_interval: Duration::from_secs(2),
        }
    }

    #[test]
    fn keeps_the_last_capacity_snapshots() {
        let ring = Ring::new(3, snapshot(0));
        for sequence in 1..=5 {
            ring.push(snapshot(sequence));
        }
        let kept: Vec<u64> = ring.snapshots().iter().map(|s| s.sequence).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        assert_eq!(ring.latest().sequence, 5);
        assert_eq!(
            ring.tick_durations(),
            (Duration::from_micros(4), Duration::from_micros(5))
        );
    }

    #[tokio::test]
    async fn watchers_receive_new_snapshots_and_are_uncounted_on_drop() {
        let ring = Arc::new(Ring::new(4, snapshot(0)));
        let (mut updates, guard) = ring.subscribe();
        assert_eq!(ring.watchers(), 1);
        ring.push(snapshot(1));
        assert_eq!(updates.recv().await.expect("update").sequence, 1);
        drop(guard);
        assert_eq!(ring.watchers(), 0);
    }
}
