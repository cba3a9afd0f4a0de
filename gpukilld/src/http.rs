//! Serving one HTTP/1.1 connection of the daemon's small HTTP endpoints (metrics, ingest):
//! a header read timeout, deadlines on silence and on a client that does not read, a slot
//! policy that keeps probes answering while every slot is taken, and a graceful end (after
//! the current response) once the daemon stops.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::sync::{Notify, watch};

use crate::connections::{Activity, AdmissionCounters, Bursts, Timeouts};

/// How long a connection may take to send a request's headers (idle keep-alive included).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadlines of an HTTP endpoint's connection under `limits`: a request within
/// `handshake_timeout` of connecting (after TLS, which has the same deadline), never silent
/// longer than the header timeout (or `idle_timeout`, if shorter), and an answer read within
/// `write_timeout`.
pub fn timeouts(limits: &crate::config::LimitsConfig) -> Timeouts {
    Timeouts {
        first_bytes: limits.handshake_timeout,
        idle: HEADER_TIMEOUT.min(limits.idle_timeout),
        write: limits.write_timeout,
    }
}

/// The connection slots of an HTTP endpoint. When every slot is taken, a new connection
/// takes the slot of the connection that has waited longest on its client (one that does
/// not read its answers, or sits idle between requests), which is closed; only when every
/// connection is busy answering is the new one refused. So clients that pipeline requests
/// and never read cannot keep `/healthz` from answering.
pub struct Slots {
    listener: &'static str,
    capacity: usize,
    state: Arc<Mutex<SlotsState>>,
    counters: Arc<AdmissionCounters>,
}

struct SlotsState {
    next_id: u64,
    held: Vec<Held>,
    refusals: Bursts,
}

struct Held {
    id: u64,
    activity: Arc<Activity>,
    evict: Arc<Notify>,
}

/// A connection's slot: its activity (which the connection's I/O reports into) and the
/// signal that it was evicted. Dropping it frees the slot.
pub struct Slot {
    id: u64,
    state: Arc<Mutex<SlotsState>>,
    counters: Arc<AdmissionCounters>,
    /// Where the connection reports waiting on its client.
    pub activity: Arc<Activity>,
    /// Notified when a new connection took this one's slot.
    pub evicted: Arc<Notify>,
}

impl Slots {
    /// `capacity` slots of `listener` (named in the log).
    pub fn new(listener: &'static str, capacity: usize) -> Self {
        Self {
            listener,
            capacity: capacity.max(1),
            state: Arc::new(Mutex::new(SlotsState {
                next_id: 0,
                held: Vec::new(),
                refusals: Bursts::default(),
            })),
            counters: Arc::new(AdmissionCounters::default()),
        }
    }

    /// The counters (open, refused, evicted as `timed_out`).
    pub fn counters(&self) -> Arc<AdmissionCounters> {
        Arc::clone(&self.counters)
    }

    /// A slot for a new connection, evicting the connection that has waited longest on its
    /// client when all are taken; `None` when every connection is busy answering.
    pub fn take(&self) -> Option<Slot> {
        let mut state = lock(&self.state);
        if state.held.len() >= self.capacity {
            let longest = state
                .held
                .iter()
                .enumerate()
                .filter_map(|(at, held)| held.activity.waiting_for().map(|waited| (waited, at)))
                .max();
            match longest {
                Some((waited, at)) => {
                    let evicted = state.held.swap_remove(at);
                    // notify_one keeps the signal for a connection not waiting on it yet.
                    evicted.evict.notify_one();
                    self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        listener = self.listener,
                        waited = %humantime::format_duration(waited),
                        "all connection slots taken: closing the one that waited longest on its client"
                    );
                }
                None => {
                    self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                    if let Some(refused) = state.refusals.count() {
                        tracing::warn!(
                            listener = self.listener,
                            refused,
                            "connection refused: all {} connections are busy answering",
                            self.capacity
                        );
                    }
                    return None;
                }
            }
        }
        state.next_id += 1;
        let slot = Slot {
            id: state.next_id,
            state: Arc::clone(&self.state),
            counters: Arc::clone(&self.counters),
            activity: Activity::new(),
            evicted: Arc::new(Notify::new()),
        };
        state.held.push(Held {
            id: slot.id,
            activity: Arc::clone(&slot.activity),
            evict: Arc::clone(&slot.evicted),
        });
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(at) = state.held.iter().position(|held| held.id == self.id) {
            state.held.swap_remove(at);
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock(mutex: &Mutex<SlotsState>) -> MutexGuard<'_, SlotsState> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The answer to a connection refused because every slot is busy: written without waiting,
/// then the connection is closed.
pub const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nContent-Length: 55\r\nConnection: close\r\n\r\nevery connection slot is busy answering; retry shortly\n";

/// Serves `service` on `io` until the client is done, `stop` turns true, or `evicted` is
/// notified (its slot went to a new connection); `endpoint` names the endpoint in the debug
/// log of a connection that ends with an error.
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    evicted: Option<Arc<Notify>>,
    endpoint: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let stopping = async move {
        // The watch guard is dropped here, before the connection is awaited.
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let evicted = async move {
        match evicted {
            Some(evicted) => evicted.notified().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = evicted => return,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, endpoint, "connection ended with an error");
    }
}
