//! GPU reservations: who holds which GPU until when, handing GPUs out, and noticing GPUs
//! used by someone who does not hold them.
//!
//! [`Reservations`] is the one authority on this host. Its state lives in memory behind one
//! lock, so deciding which GPUs a request gets and taking them is atomic; every change is
//! queued to the store (the rows and their audit events in one transaction) under the same
//! lock, so the store sees changes in the order they happened, and reservations survive a
//! restart. A `run` reservation lives while its client's stream does (the rpc layer tells
//! [`Reservations::end_run`]) and while heartbeats come; [`Reservations::tick`] ends manual
//! reservations at their time and runs whose client went silent.
//!
//! This file holds the types, loading and the views (status, misuse); the rest, by job:
//! `grant` (choosing and taking GPUs), `release` (ending reservations), `queue` (the
//! first-come-first-served queue of `run --wait`), `runs` (run leases: heartbeats, detach
//! and resume), `timers` (the tick that ends expired reservations and silent runs), `drain`
//! (admins' drains: GPUs kept from reserve and run until undrained), `messages` (refusals
//! in words, audit events).

pub mod allocate;
mod drain;
mod grant;
mod messages;
mod queue;
mod release;
mod runs;
mod timers;
pub mod usage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot, watch};

use crate::config::ReservationsConfig;
use crate::ring::Ring;
use crate::snapshot::Snapshot;
use crate::store::{
    Database, DrainRow, EventCaller, LeaseKind, ReservationRow, StoreError, unix_ms,
};
use allocate::UseMarks;
use messages::holder_caller;
use usage::{Assessment, GpuRef, GpuState};

pub use drain::{DRAIN_REASON_LIMIT, Drained, Undrained};
pub use queue::Queued;
pub use timers::run_timers;
pub(crate) use timers::stopped;

/// Why a reservation request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    /// Reservations belong to users of this host.
    #[error(
        "reservations are made on the node itself: run gpukillctl there (a remote or forwarded caller has no user on this host)"
    )]
    NotLocal,
    /// A count of 0, or more GPUs than the node has.
    #[error("{asked} GPUs asked for: this node has {gpus} GPUs; ask for 1 to {gpus}")]
    BadCount {
        /// What was asked.
        asked: u32,
        /// GPUs on the node.
        gpus: usize,
    },
    /// A GPU index that does not exist.
    #[error("no GPU {index} on this node: {} (gpukillctl list shows them)", gpu_range(*.gpus))]
    NoSuchGpu {
        /// The index asked for.
        index: u32,
        /// GPUs on the node.
        gpus: usize,
    },
    /// A GPU named twice.
    #[error("GPU {0} is named twice")]
    Duplicate(u32),
    /// A duration of 0 or beyond the maximum.
    #[error(
        "a duration of {given} is out of range: use more than 0 and at most {max} ([reservations] max_duration)"
    )]
    BadDuration {
        /// As given.
        given: String,
        /// The maximum.
        max: String,
    },
    /// The GPUs asked for are not free.
    #[error("{0}")]
    Busy(String),
    /// The caller may not release this reservation.
    #[error(
        "GPU {gpu} is reserved by {holder}: only {holder} or an admin may release it; nothing was released"
    )]
    NotHolder {
        /// The GPU.
        gpu: u32,
        /// Who holds it.
        holder: String,
    },
    /// A run reservation to resume that does not exist (any more) or is not the caller's.
    #[error(
        "no run reservation {0} of yours is waiting to be resumed (it ended, or another client holds it)"
    )]
    NoSuchRun(i64),
    /// A drain reason longer than [`DRAIN_REASON_LIMIT`].
    #[error(
        "a drain reason of {0} bytes is too long: say why in at most {DRAIN_REASON_LIMIT} bytes"
    )]
    DrainReasonTooLong(usize),
    /// The store refused the change; nothing changed.
    #[error("the store did not record the change, so it was undone")]
    Store(#[source] StoreError),
    /// The caller, or everyone together, has as many requests waiting as may wait.
    #[error(
        "{who} already {waiting} waiting in the queue, the most allowed ({setting} = {limit}); wait for one to be served or end one (Ctrl-C its gpukillctl run)"
    )]
    QueueFull {
        /// "user alice has" or "everyone together have".
        who: String,
        /// How many wait.
        waiting: usize,
        /// The setting that limits it.
        setting: &'static str,
        /// Its value.
        limit: usize,
    },
}

/// `its GPUs are 0 to 3`, for errors naming a GPU that does not exist.
fn gpu_range(gpus: usize) -> String {
    match gpus {
        0 => "it has no GPUs".to_owned(),
        1 => "its only GPU is 0".to_owned(),
        n => format!("its GPUs are 0 to {}", n - 1),
    }
}

/// The longest note (`reserve --note`) or command (`run`) kept, in bytes: the rest is
/// dropped and marked with `…`, so that no request makes the daemon hold or answer more.
pub const NOTE_LIMIT: usize = 1024;

/// Waiting requests a status answer lists, first in line first; it says how many wait.
pub const STATUS_QUEUE_LIMIT: usize = 100;

/// `text` cut to at most [`NOTE_LIMIT`] bytes (at a character boundary), marked with `…`
/// when cut. A cut note is a new string of its own size: the long one is freed.
pub fn clip_note(text: String) -> String {
    const MARK: &str = "…";
    if text.len() <= NOTE_LIMIT {
        return text;
    }
    let mut end = NOTE_LIMIT - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut clipped = String::with_capacity(end + MARK.len());
    clipped.push_str(&text[..end]);
    clipped.push_str(MARK);
    clipped
}

/// Who asks, as the kernel identified them.
#[derive(Debug, Clone)]
pub struct Requester {
    /// Their uid.
    pub uid: u32,
    /// Their user name.
    pub user: String,
    /// Whether they may release anyone's reservation.
    pub admin: bool,
    /// How events name them.
    pub caller: EventCaller,
}

/// What a request wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Any N GPUs (the daemon picks).
    Count(u32),
    /// These GPU indices exactly.
    Gpus(Vec<u32>),
}

/// A request for GPUs.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Which GPUs.
    pub want: Want,
    /// run or manual.
    pub kind: LeaseKind,
    /// A manual reservation's duration (`None`: the default); a run's timeout (`None`: none).
    pub duration: Option<Duration>,
    /// The note (manual) or the command (run).
    pub note: String,
    /// The `gpukillctl` process asking.
    pub client_pid: Option<i32>,
}

/// GPUs handed out.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The reservation id.
    pub lease: i64,
    /// The GPUs, in vendor and index order.
    pub gpus: Vec<GpuRef>,
    /// When it ends on its own.
    pub expires_ms: Option<i64>,
    /// The environment a command runs with on them.
    pub environment: BTreeMap<String, String>,
}

/// A request waiting for GPUs.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Its place-independent id.
    pub id: u64,
    /// Who waits.
    pub uid: u32,
    /// Their name.
    pub user: String,
    /// How many GPUs.
    pub count: u32,
    /// Since when, ms.
    pub since_ms: i64,
    /// The command it will run.
    pub command: String,
}

/// Every GPU's state and the queue, at one moment.
#[derive(Debug, Clone)]
pub struct Status {
    /// Every GPU.
    pub gpus: Vec<Assessment>,
    /// Which run reservations have their client connected, by id.
    pub attached: HashMap<i64, bool>,
    /// The first [`STATUS_QUEUE_LIMIT`] waiting requests, first in line first.
    pub queue: Vec<Ticket>,
    /// How many requests wait in all.
    pub queue_total: usize,
    /// Memory above which a GPU counts as used.
    pub threshold: u64,
    /// When.
    pub now_ms: i64,
    /// Whether anyone has reserved a GPU here: a reservation was made (one held now, or
    /// one the store still remembers) or a request waits for one.
    pub used: bool,
}

/// A run reservation's link to its client.
struct RunLease {
    /// Whether a client's stream holds it now.
    attached: bool,
    /// When it ends without a heartbeat (or a resume after a restart).
    deadline: Instant,
    /// Who events name for its end.
    caller: EventCaller,
    /// Set to why it ended when it ends without its client.
    ended: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct State {
    held: Vec<ReservationRow>,
    /// The GPUs admins drained, by GPU key.
    drains: Vec<DrainRow>,
    runs: HashMap<i64, RunLease>,
    marks: UseMarks,
    last_lease: i64,
    queue: VecDeque<Ticket>,
    next_ticket: u64,
}

impl State {
    /// The (lease, GPU key) of every held row of `lease`.
    fn lease_keys(&self, lease: i64) -> Vec<(i64, String)> {
        self.held
            .iter()
            .filter(|row| row.lease == lease)
            .map(|row| (row.lease, row.gpu_key.clone()))
            .collect()
    }
}

/// GPU `index` among the `assessed` GPUs, or why there is none.
fn assessment_of(assessed: &[Assessment], index: u32) -> Result<&Assessment, ReservationError> {
    assessed
        .iter()
        .find(|a| a.gpu.index == index)
        .ok_or(ReservationError::NoSuchGpu {
            index,
            gpus: assessed.len(),
        })
}

/// The reservations, or why there are none (they are kept in the store, which could not be
/// opened).
pub type ReservationsHandle = Result<Arc<Reservations>, String>;

/// The reservations of this host.
pub struct Reservations {
    config: ReservationsConfig,
    /// Whether a GPU whose health is critical or lost is kept from reserve and run
    /// (`[health] on_critical = "drain"`).
    drain_unhealthy: bool,
    log: Arc<Database>,
    ring: Arc<Ring>,
    state: Mutex<State>,
    /// Woken when GPUs may have become free (a release, an expiry, a new snapshot while
    /// requests wait, a waiter leaving).
    changed: Notify,
}

/// The answer of a store write queued under the lock.
type Pending = oneshot::Receiver<Result<(), StoreError>>;

impl Reservations {
    /// Loads the reservations held when the daemon last stopped. A run reservation comes
    /// back detached: its client has `heartbeat_timeout` to resume it.
    pub async fn load(
        config: ReservationsConfig,
        drain_unhealthy: bool,
        log: Arc<Database>,
        ring: Arc<Ring>,
    ) -> Result<Self, StoreError> {
        let (held, marks, drains) = log
            .read(|store| {
                Ok((
                    store.held_reservations()?,
                    store.reservation_marks()?,
                    store.drains()?,
                ))
            })
            .await?;
        let deadline = Instant::now() + config.heartbeat_timeout;
        let mut runs = HashMap::new();
        for row in held.iter().filter(|row| row.kind == LeaseKind::Run) {
            runs.entry(row.lease).or_insert_with(|| RunLease {
                attached: false,
                deadline,
                caller: holder_caller(row),
                ended: watch::channel(None).0,
            });
        }
        if !held.is_empty() {
            tracing::info!(
                gpus = held.len(),
                runs = runs.len(),
                "reservations held before the restart are back"
            );
        }
        for drain in &drains {
            tracing::info!(
                gpu = drain.gpu_index,
                key = %drain.gpu_key,
                by = %drain.user,
                reason = %drain.reason,
                "GPU drained before the restart: not handed out until undrained"
            );
        }
        let state = State {
            held,
            drains,
            runs,
            marks: UseMarks {
                last_used: marks.last_held,
                last_released: marks.last_released,
            },
            last_lease: marks.last_lease,
            ..State::default()
        };
        Ok(Reservations {
            config,
            drain_unhealthy,
            log,
            ring,
            state: Mutex::new(state),
            changed: Notify::new(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ReservationsConfig {
        &self.config
    }

    /// Every GPU of `snapshot` against the reservations held and the drains of `state`.
    fn assess(&self, snapshot: &Snapshot, state: &State) -> Vec<Assessment> {
        usage::assess(
            snapshot,
            &state.held,
            &state.drains,
            self.config.unreserved_threshold,
            self.drain_unhealthy,
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A future that completes at the next change that may free GPUs. Create it before
    /// checking, so a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Every GPU's state now and the queue.
    pub fn status(&self) -> Status {
        let snapshot = self.ring.latest();
        let state = self.lock();
        Status {
            gpus: self.assess(&snapshot, &state),
            attached: state
                .runs
                .iter()
                .map(|(lease, run)| (*lease, run.attached))
                .collect(),
            queue: state
                .queue
                .iter()
                .take(STATUS_QUEUE_LIMIT)
                .cloned()
                .collect(),
            queue_total: state.queue.len(),
            threshold: self.config.unreserved_threshold,
            now_ms: unix_ms(SystemTime::now()),
            used: state.last_lease > 0 || !state.queue.is_empty(),
        }
    }

    /// The GPUs of `snapshot` used by someone who does not hold them (for the guard).
    pub fn misuse(&self, snapshot: &Snapshot) -> Vec<Assessment> {
        let state = self.lock();
        self.assess(snapshot, &state)
            .into_iter()
            .filter(|a| matches!(a.state, GpuState::UnreservedUse | GpuState::WrongUser))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::evaluate::tests::snapshot_at;

    pub(super) async fn reservations() -> Arc<Reservations> {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let ring = Arc::new(Ring::new(4, snapshot_at(0, &[])));
        Arc::new(
            Reservations::load(ReservationsConfig::default(), true, log, ring)
                .await
                .unwrap(),
        )
    }

    pub(super) fn requester(uid: u32, admin: bool) -> Requester {
        Requester {
            uid,
            user: format!("u{uid}"),
            admin,
            caller: EventCaller {
                uid,
                user: format!("u{uid}"),
                pid: None,
                transport: "unix".into(),
                via: None,
            },
        }
    }

    pub(super) fn request(kind: LeaseKind, want: Want) -> LeaseRequest {
        LeaseRequest {
            want,
            kind,
            duration: None,
            note: String::new(),
            client_pid: None,
        }
    }

    #[test]
    fn long_notes_are_clipped_at_a_character_boundary_into_a_small_string() {
        assert_eq!(clip_note("short".to_owned()), "short");
        let long = "é".repeat(2000);
        let clipped = clip_note(long);
        assert!(clipped.len() <= NOTE_LIMIT, "{}", clipped.len());
        assert!(clipped.ends_with('…'));
        assert!(clipped.capacity() <= NOTE_LIMIT);
        assert!(clipped.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
