//! The history queue: one batch per persist interval, handed over by the recorder without
//! waiting and written by the writer thread in order. Bounded: when too many wait (a stalled
//! disk), the oldest is dropped and counted; a failed write keeps its batch for the next try.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::writer::Request;
use super::{Database, lock};
use crate::store::{GpuSampleRow, OutboxOptions, Retention, SessionUpdate, Store};

/// History batches that may wait for the writer (at the default 10 s interval, 10 minutes of
/// a stalled disk); beyond that the oldest is dropped and counted.
const HISTORY_CAPACITY: usize = 64;

/// One persist interval of metrics history: the store writes it in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryBatch {
    /// One row per GPU.
    pub samples: Vec<GpuSampleRow>,
    /// One update per process session.
    pub sessions: Vec<SessionUpdate>,
}

/// How the store keeps metrics history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Time covered by one sample row (the rollup weighs rows by it).
    pub persist_interval: Duration,
    /// How long each kind of data is kept; pruned once an hour.
    pub retention: Retention,
    /// Queue each rolled-up hour for upload, when uploads are configured.
    pub outbox: Option<OutboxOptions>,
    /// How long delivered uploads are kept.
    pub delivered_retention: Duration,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            persist_interval: Duration::from_secs(10),
            retention: Retention::default(),
            outbox: None,
            delivered_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// What became of the history batches handed to the store since start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryCounters {
    /// Batches waiting to be written.
    pub queued: u64,
    /// Batches dropped because the queue was full (the oldest go first).
    pub dropped: u64,
    /// Batches written.
    pub written: u64,
    /// Write attempts that failed (the batch is kept and retried).
    pub failed: u64,
    /// Hours rolled up into gpu_hourly and user_hourly.
    pub hours_rolled_up: u64,
    /// The error of the last write attempt, when it failed: the store is degraded.
    pub last_error: Option<String>,
}

/// The history batches waiting for the writer thread, shared with it.
#[derive(Debug, Default)]
pub(super) struct HistoryQueue {
    batches: Mutex<VecDeque<HistoryBatch>>,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    pub(super) hours_rolled_up: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl HistoryQueue {
    pub(super) fn batches(&self) -> MutexGuard<'_, VecDeque<HistoryBatch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

impl Database {
    /// Queues one persist interval of history without waiting. When too many wait (a
    /// stalled disk), the oldest is dropped and counted.
    pub fn record_history(&self, batch: HistoryBatch) {
        {
            let mut batches = self.history.batches();
            if batches.len() >= HISTORY_CAPACITY {
                batches.pop_front();
                let dropped = self.history.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(dropped, "history queue full: dropped the oldest interval");
            }
            batches.push_back(batch);
        }
        // A full audit queue only delays the nudge: the writer also polls.
        let _ = self.requests.try_send(Request::History);
    }

    /// What became of the history batches so far.
    pub fn history_counters(&self) -> HistoryCounters {
        HistoryCounters {
            queued: self.history.batches().len() as u64,
            dropped: self.history.dropped.load(Ordering::Relaxed),
            written: self.history.written.load(Ordering::Relaxed),
            failed: self.history.failed.load(Ordering::Relaxed),
            hours_rolled_up: self.history.hours_rolled_up.load(Ordering::Relaxed),
            last_error: self.history.last_error(),
        }
    }
}

/// Writes the queued history batches, oldest first; false when one failed. A failed write
/// keeps its batch at the front for the next attempt (the store is degraded until one
/// succeeds).
pub(super) fn write_history(store: &Mutex<Store>, history: &HistoryQueue) -> bool {
    loop {
        let Some(batch) = history.batches().pop_front() else {
            return true;
        };
        let written = catch_unwind(AssertUnwindSafe(|| {
            lock(store).write_history(&batch.samples, &batch.sessions)
        }));
        match written {
            Ok(Ok(())) => {
                history.written.fetch_add(1, Ordering::Relaxed);
                if history.last_error().is_some() {
                    tracing::info!("the store is writable again");
                }
                history.set_error(None);
            }
            Ok(Err(error)) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                let message = crate::errors::chain(&error);
                // Retried every poll while it fails: log a change of error, not every attempt.
                if history.last_error().as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "cannot write history; will retry");
                }
                history.set_error(Some(message));
                let mut batches = history.batches();
                if batches.len() < HISTORY_CAPACITY {
                    batches.push_front(batch);
                } else {
                    history.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
            Err(_) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                history.set_error(Some("the history writer panicked".to_string()));
                return false;
            }
        }
    }
}
