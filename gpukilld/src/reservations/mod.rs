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

pub mod allocate;
pub mod usage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot, watch};

use crate::config::ReservationsConfig;
use crate::ring::Ring;
use crate::snapshot::{Snapshot, Vendor};
use crate::store::{
    Database, EventCaller, EventKind, LeaseKind, NewEvent, ReservationRow, StoreError, rfc3339_ms,
    unix_ms,
};
use allocate::UseMarks;
use usage::{Assessment, GpuRef, GpuState};

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
    #[error("no GPU {0} on this node (gpukillctl list shows the GPUs)")]
    NoSuchGpu(u32),
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
    /// The store refused the change; nothing changed.
    #[error("the store did not record the reservation, so it was undone")]
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

    /// Requests ahead of queued `ticket` (of every queued one for a request not queued).
    fn ahead_of(&self, ticket: Option<u64>) -> usize {
        match ticket {
            Some(id) => self.queue.iter().position(|t| t.id == id).unwrap_or(0),
            None => self.queue.len(),
        }
    }
}

/// The reservations, or why there are none (they are kept in the store, which could not be
/// opened).
pub type ReservationsHandle = Result<Arc<Reservations>, String>;

/// The reservations of this host.
pub struct Reservations {
    config: ReservationsConfig,
    log: Arc<Database>,
    ring: Arc<Ring>,
    state: Mutex<State>,
    /// Woken when GPUs may have become free (a release, an expiry, a new snapshot while
    /// requests wait, a waiter leaving).
    changed: Notify,
}

/// The answer of a store write queued under the lock.
type Pending = oneshot::Receiver<Result<(), StoreError>>;

/// The user name events give the daemon's own changes (expiry).
pub const DAEMON_USER: &str = "gpukilld";

impl Reservations {
    /// Loads the reservations held when the daemon last stopped. A run reservation comes
    /// back detached: its client has `heartbeat_timeout` to resume it.
    pub async fn load(
        config: ReservationsConfig,
        log: Arc<Database>,
        ring: Arc<Ring>,
    ) -> Result<Self, StoreError> {
        let (held, marks) = log
            .read(|store| Ok((store.held_reservations()?, store.reservation_marks()?)))
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
        let state = State {
            held,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A future that completes at the next change that may free GPUs. Create it before
    /// checking, so a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Reserves GPUs now (`gpukillctl reserve`, and `run` without waiting). Refused while
    /// requests wait in the queue: first come, first served.
    pub async fn reserve(
        &self,
        requester: &Requester,
        request: &LeaseRequest,
    ) -> Result<Grant, ReservationError> {
        let (grant, pending) = self
            .grant(requester, request, None)?
            .ok_or_else(|| ReservationError::Busy("the GPUs asked for are not free".to_owned()))?;
        self.settle(grant, pending).await
    }

    /// Puts a request in the queue; it is served by [`serve_ticket`](Self::serve_ticket)
    /// when it is first and its GPUs are free. Dropping the ticket leaves the queue. Refused
    /// when the requester has `max_queued_per_user` requests waiting, or everyone together
    /// `max_queued`.
    pub fn enqueue(
        self: &Arc<Self>,
        requester: &Requester,
        count: u32,
        command: &str,
    ) -> Result<Queued, ReservationError> {
        let mut state = self.lock();
        let mine = state
            .queue
            .iter()
            .filter(|t| t.uid == requester.uid)
            .count();
        if mine >= self.config.max_queued_per_user {
            return Err(ReservationError::QueueFull {
                who: format!("user {} has", requester.user),
                waiting: mine,
                setting: "[reservations] max_queued_per_user",
                limit: self.config.max_queued_per_user,
            });
        }
        if state.queue.len() >= self.config.max_queued {
            return Err(ReservationError::QueueFull {
                who: "everyone together have".to_owned(),
                waiting: state.queue.len(),
                setting: "[reservations] max_queued",
                limit: self.config.max_queued,
            });
        }
        state.next_ticket += 1;
        let ticket = Ticket {
            id: state.next_ticket,
            uid: requester.uid,
            user: requester.user.clone(),
            count,
            since_ms: unix_ms(SystemTime::now()),
            command: clip_note(command.to_owned()),
        };
        let id = ticket.id;
        state.queue.push_back(ticket);
        Ok(Queued {
            reservations: Arc::clone(self),
            id,
        })
    }

    /// Serves a queued request if it is first in line and its GPUs are free: `Ok(None)`
    /// while it waits, with how many requests are ahead.
    pub async fn serve_ticket(
        &self,
        queued: &Queued,
        requester: &Requester,
        request: &LeaseRequest,
    ) -> Result<Result<Grant, usize>, ReservationError> {
        match self.grant(requester, request, Some(queued.id))? {
            Some((grant, pending)) => self.settle(grant, pending).await.map(Ok),
            None => Ok(Err(self.lock().ahead_of(Some(queued.id)))),
        }
    }

    /// Waits for a grant's store write; undoes the grant when it failed.
    async fn settle(&self, grant: Grant, pending: Pending) -> Result<Grant, ReservationError> {
        match self.log.confirm(pending).await {
            Ok(()) => Ok(grant),
            Err(error) => {
                tracing::error!(lease = grant.lease, %error, "a reservation was not stored; undone");
                let mut state = self.lock();
                state.held.retain(|row| row.lease != grant.lease);
                state.runs.remove(&grant.lease);
                drop(state);
                self.changed.notify_waiters();
                Err(ReservationError::Store(error))
            }
        }
    }

    /// Decides and takes GPUs under the lock, and queues the store write. `Ok(None)`: a
    /// queued request must wait (not first, or its GPUs are not free); a direct request
    /// that cannot be served gets `Busy`.
    fn grant(
        &self,
        requester: &Requester,
        request: &LeaseRequest,
        ticket: Option<u64>,
    ) -> Result<Option<(Grant, Pending)>, ReservationError> {
        let snapshot = self.ring.latest();
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let expires_ms = self.expiry(request, now_ms)?;
        let mut state = self.lock();
        let assessed = usage::assess(&snapshot, &state.held, self.config.unreserved_threshold);
        let chosen = match &request.want {
            Want::Count(count) => {
                if *count == 0 || *count as usize > assessed.len() {
                    return Err(ReservationError::BadCount {
                        asked: *count,
                        gpus: assessed.len(),
                    });
                }
                let ahead = state.ahead_of(ticket);
                let free: Vec<GpuRef> = assessed
                    .iter()
                    .filter(|a| a.state == GpuState::Available)
                    .map(|a| a.gpu.clone())
                    .collect();
                if ahead > 0 || free.len() < *count as usize {
                    if ticket.is_some() {
                        return Ok(None);
                    }
                    return Err(ReservationError::Busy(busy_message(
                        *count, &free, &assessed, ahead, now_ms,
                    )));
                }
                let mut ordered = allocate::order(free, requester.uid, &state.marks);
                ordered.truncate(*count as usize);
                ordered.sort_by_key(|gpu| (gpu.vendor, gpu.index));
                ordered
            }
            Want::Gpus(indices) => {
                let mut chosen = Vec::new();
                let mut refusals = Vec::new();
                for index in indices {
                    let assessment = assessed
                        .iter()
                        .find(|a| a.gpu.index == *index)
                        .ok_or(ReservationError::NoSuchGpu(*index))?;
                    if chosen.iter().any(|gpu: &GpuRef| gpu.index == *index) {
                        return Err(ReservationError::Duplicate(*index));
                    }
                    if assessment.state != GpuState::Available {
                        refusals.push(describe(assessment, now_ms));
                    }
                    chosen.push(assessment.gpu.clone());
                }
                if !state.queue.is_empty() && ticket.is_none() {
                    refusals.push(format!(
                        "{} requests wait ahead in the queue (first come, first served)",
                        state.queue.len()
                    ));
                }
                if !refusals.is_empty() {
                    return Err(ReservationError::Busy(format!(
                        "not reserved: {}",
                        refusals.join("; ")
                    )));
                }
                chosen.sort_by_key(|gpu| (gpu.vendor, gpu.index));
                chosen
            }
        };
        state.last_lease += 1;
        let lease = state.last_lease;
        let note = clip_note(request.note.clone());
        let rows: Vec<ReservationRow> = chosen
            .iter()
            .map(|gpu| ReservationRow {
                lease,
                gpu_key: gpu.key.clone(),
                gpu_index: gpu.index,
                uid: requester.uid,
                user: requester.user.clone(),
                kind: request.kind,
                start_ms: now_ms,
                expires_ms,
                note: note.clone(),
                client_pid: request.client_pid,
                end_ms: None,
                end_reason: None,
            })
            .collect();
        let reason = match (request.kind, expires_ms) {
            (LeaseKind::Manual, Some(until)) => {
                format!("manual until {}{}", rfc3339_ms(until), note_suffix(&note))
            }
            (_, Some(until)) => format!("run until {}: {note}", rfc3339_ms(until)),
            (_, None) => format!("run: {note}"),
        };
        let events: Vec<NewEvent> = rows
            .iter()
            .map(|row| {
                event(
                    now,
                    &requester.caller,
                    "reserve",
                    row.gpu_index,
                    "ok",
                    &reason,
                )
            })
            .collect();
        let stored = rows.clone();
        let pending = self
            .log
            .submit_write(move |store| store.insert_reservations(&stored, &events))
            .map_err(ReservationError::Store)?;
        state.held.extend(rows);
        if request.kind == LeaseKind::Run {
            state.runs.insert(
                lease,
                RunLease {
                    attached: true,
                    deadline: Instant::now() + self.config.heartbeat_timeout,
                    caller: requester.caller.clone(),
                    ended: watch::channel(None).0,
                },
            );
        }
        if let Some(id) = ticket {
            state.queue.retain(|t| t.id != id);
        }
        for gpu in &chosen {
            state
                .marks
                .last_used
                .insert((requester.uid, gpu.key.clone()), now_ms);
        }
        let grant = Grant {
            lease,
            environment: allocate::environment(&chosen, &host_vendors(&snapshot)),
            gpus: chosen,
            expires_ms,
        };
        Ok(Some((grant, pending)))
    }

    /// When a request's reservation ends on its own.
    fn expiry(&self, request: &LeaseRequest, now_ms: i64) -> Result<Option<i64>, ReservationError> {
        let duration = match (request.kind, request.duration) {
            (LeaseKind::Manual, None) => self.config.default_duration,
            (LeaseKind::Run, None) => return Ok(None),
            (_, Some(duration)) => duration,
        };
        if duration.is_zero() || duration > self.config.max_duration {
            return Err(ReservationError::BadDuration {
                given: humantime::format_duration(duration).to_string(),
                max: humantime::format_duration(self.config.max_duration).to_string(),
            });
        }
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Ok(Some(now_ms.saturating_add(ms)))
    }

    /// Ends reservations: with `indices` empty, every manual reservation of the requester;
    /// else the reservations on those GPUs (the requester's own; an admin's: anyone's).
    /// All or nothing: one GPU the requester may not release refuses the whole request.
    pub async fn release(
        &self,
        requester: &Requester,
        indices: &[u32],
    ) -> Result<Vec<ReservationRow>, ReservationError> {
        let snapshot = self.ring.latest();
        let (ended, pending) = {
            let mut state = self.lock();
            let chosen: Vec<(i64, String)> = if indices.is_empty() {
                state
                    .held
                    .iter()
                    .filter(|row| row.uid == requester.uid && row.kind == LeaseKind::Manual)
                    .map(|row| (row.lease, row.gpu_key.clone()))
                    .collect()
            } else {
                let gpus: Vec<GpuRef> = snapshot.gpus().map(|(v, g)| GpuRef::of(v, g)).collect();
                let mut chosen = Vec::new();
                for index in indices {
                    let key = match gpus.iter().find(|gpu| gpu.index == *index) {
                        Some(gpu) => gpu.key.clone(),
                        None => {
                            // A reserved GPU that no longer shows (lost) can still be released.
                            match state.held.iter().find(|row| row.gpu_index == *index) {
                                Some(row) => row.gpu_key.clone(),
                                None => return Err(ReservationError::NoSuchGpu(*index)),
                            }
                        }
                    };
                    let Some(row) = state.held.iter().find(|row| row.gpu_key == key) else {
                        continue;
                    };
                    if row.uid != requester.uid && !requester.admin {
                        return Err(ReservationError::NotHolder {
                            gpu: *index,
                            holder: row.user.clone(),
                        });
                    }
                    chosen.push((row.lease, key));
                }
                chosen
            };
            let reason = format!("released by {}", requester.user);
            self.end_locked(&mut state, &chosen, &requester.caller, "release", &reason)
        };
        if let Some(pending) = pending {
            self.changed.notify_waiters();
            if let Err(error) = self.log.confirm(pending).await {
                tracing::error!(%error, "a release was not stored; it holds until the daemon restarts");
            }
        }
        Ok(ended)
    }

    /// Ends the held rows `which` under the lock: marks the GPUs released, tells a run's
    /// client when its reservation ended without it, and queues the rows' end and one event
    /// per GPU. Returns the rows ended and the write's answer (`None` when nothing ended).
    fn end_locked(
        &self,
        state: &mut State,
        which: &[(i64, String)],
        caller: &EventCaller,
        verb: &str,
        reason: &str,
    ) -> (Vec<ReservationRow>, Option<Pending>) {
        let now = SystemTime::now();
        let now_ms = unix_ms(now);
        let (ended, kept): (Vec<ReservationRow>, Vec<ReservationRow>) =
            std::mem::take(&mut state.held)
                .into_iter()
                .partition(|row| {
                    which
                        .iter()
                        .any(|(l, k)| *l == row.lease && *k == row.gpu_key)
                });
        state.held = kept;
        if ended.is_empty() {
            return (ended, None);
        }
        let mut events = Vec::with_capacity(ended.len());
        for row in &ended {
            state
                .marks
                .last_used
                .insert((row.uid, row.gpu_key.clone()), now_ms);
            state
                .marks
                .last_released
                .insert(row.gpu_key.clone(), now_ms);
            let detail = format!(
                "{}; {}'s {} reservation since {}",
                reason,
                row.user,
                row.kind.as_str(),
                rfc3339_ms(row.start_ms)
            );
            events.push(event(
                now,
                caller,
                verb,
                row.gpu_index,
                outcome(verb),
                &detail,
            ));
            if row.kind == LeaseKind::Run
                && !state.held.iter().any(|other| other.lease == row.lease)
                && let Some(run) = state.runs.remove(&row.lease)
            {
                run.ended.send_replace(Some(reason.to_owned()));
            }
        }
        tracing::info!(
            gpus = ?ended.iter().map(|r| r.gpu_index).collect::<Vec<_>>(),
            holder = %ended[0].user,
            verb,
            reason,
            "reservation ended"
        );
        let keys: Vec<(i64, String)> = ended
            .iter()
            .map(|row| (row.lease, row.gpu_key.clone()))
            .collect();
        let reason = reason.to_owned();
        let pending = self
            .log
            .submit_write(move |store| store.end_reservations(&keys, now_ms, &reason, &events));
        match pending {
            Ok(pending) => (ended, Some(pending)),
            Err(error) => {
                tracing::error!(%error, "the end of a reservation could not be queued for the store");
                (ended, None)
            }
        }
    }

    /// A run's client is alive: its reservation holds for another heartbeat timeout.
    pub fn heartbeat(&self, lease: i64) {
        if let Some(run) = self.lock().runs.get_mut(&lease) {
            run.deadline = Instant::now() + self.config.heartbeat_timeout;
        }
    }

    /// A run's client stream ended (the command exited, the client died or was stopped):
    /// its reservation ends now.
    pub async fn end_run(&self, lease: i64, why: &str) {
        let pending = {
            let mut state = self.lock();
            let Some(run) = state.runs.get(&lease) else {
                return;
            };
            let caller = run.caller.clone();
            let which = state.lease_keys(lease);
            self.end_locked(&mut state, &which, &caller, "release", why)
                .1
        };
        self.changed.notify_waiters();
        if let Some(pending) = pending
            && let Err(error) = self.log.confirm(pending).await
        {
            tracing::error!(%error, lease, "the end of a run reservation was not stored");
        }
    }

    /// A run's client lost its stream while the daemon keeps running it (it may come back
    /// through [`resume`](Self::resume) within the heartbeat timeout).
    pub fn detach(&self, lease: i64) {
        if let Some(run) = self.lock().runs.get_mut(&lease) {
            run.attached = false;
        }
    }

    /// Takes over a detached run reservation of the requester (its client reconnecting after
    /// a daemon restart).
    pub fn resume(
        &self,
        requester: &Requester,
        lease: i64,
    ) -> Result<(Grant, watch::Receiver<Option<String>>), ReservationError> {
        let snapshot = self.ring.latest();
        let mut state = self.lock();
        let rows: Vec<&ReservationRow> =
            state.held.iter().filter(|row| row.lease == lease).collect();
        let owned = rows
            .first()
            .is_some_and(|row| row.uid == requester.uid && row.kind == LeaseKind::Run);
        let gpus: Vec<GpuRef> = rows
            .iter()
            .map(|row| {
                snapshot
                    .gpus()
                    .map(|(vendor, gpu)| GpuRef::of(vendor, gpu))
                    .find(|gpu| gpu.key == row.gpu_key)
                    .unwrap_or_else(|| GpuRef {
                        key: row.gpu_key.clone(),
                        index: row.gpu_index,
                        vendor_index: row.gpu_index,
                        uuid: None,
                        vendor: Vendor::Nvidia,
                        name: None,
                    })
            })
            .collect();
        let expires_ms = rows.first().and_then(|row| row.expires_ms);
        let timeout = self.config.heartbeat_timeout;
        let run = state
            .runs
            .get_mut(&lease)
            .filter(|run| owned && !run.attached)
            .ok_or(ReservationError::NoSuchRun(lease))?;
        run.attached = true;
        run.deadline = Instant::now() + timeout;
        let ended = run.ended.subscribe();
        tracing::info!(lease, user = %requester.user, "run reservation resumed by its client");
        Ok((
            Grant {
                lease,
                environment: allocate::environment(&gpus, &host_vendors(&snapshot)),
                gpus,
                expires_ms,
            },
            ended,
        ))
    }

    /// Why a run reservation ended without its client, when it does.
    pub fn run_ended(&self, lease: i64) -> Option<watch::Receiver<Option<String>>> {
        self.lock()
            .runs
            .get(&lease)
            .map(|run| run.ended.subscribe())
    }

    /// Ends manual reservations whose time came and runs whose client went silent, and
    /// notes who uses which GPU now (for the allocation order). Called every tick.
    pub async fn tick(&self) {
        let snapshot = self.ring.latest();
        let now_ms = unix_ms(SystemTime::now());
        let instant = Instant::now();
        let daemon = daemon_caller();
        let mut pending = Vec::new();
        let waiting = {
            let mut state = self.lock();
            let keys: HashMap<(Vendor, u32), String> = snapshot
                .gpus()
                .map(|(vendor, gpu)| ((vendor, gpu.index), GpuRef::of(vendor, gpu).key))
                .collect();
            for process in snapshot.processes() {
                let slot = process.slot;
                if let Some(key) = keys.get(&(slot.vendor, slot.gpu_index)) {
                    state
                        .marks
                        .last_used
                        .insert((slot.info.uid, key.clone()), now_ms);
                }
            }
            let expired: Vec<(i64, String)> = state
                .held
                .iter()
                .filter(|row| row.expires_ms.is_some_and(|at| at <= now_ms))
                .map(|row| (row.lease, row.gpu_key.clone()))
                .collect();
            if !expired.is_empty() {
                let reason = "expired at the end of its time";
                pending.push(
                    self.end_locked(&mut state, &expired, &daemon, "expire", reason)
                        .1,
                );
            }
            let lapsed: Vec<(i64, bool)> = state
                .runs
                .iter()
                .filter(|(_, run)| run.deadline <= instant)
                .map(|(lease, run)| (*lease, run.attached))
                .collect();
            for (lease, attached) in lapsed {
                let which = state.lease_keys(lease);
                let reason = if attached {
                    format!(
                        "no heartbeat from gpukillctl run for {}",
                        humantime::format_duration(self.config.heartbeat_timeout)
                    )
                } else {
                    format!(
                        "gpukillctl run did not reconnect within {} of the daemon's restart",
                        humantime::format_duration(self.config.heartbeat_timeout)
                    )
                };
                pending.push(
                    self.end_locked(&mut state, &which, &daemon, "expire", &reason)
                        .1,
                );
                state.runs.remove(&lease);
            }
            !state.queue.is_empty()
        };
        let changed = pending.iter().any(Option::is_some);
        if changed || waiting {
            self.changed.notify_waiters();
        }
        for pending in pending.into_iter().flatten() {
            if let Err(error) = self.log.confirm(pending).await {
                tracing::error!(%error, "the end of a reservation was not stored");
            }
        }
    }

    /// Every GPU's state now and the queue.
    pub fn status(&self) -> Status {
        let snapshot = self.ring.latest();
        let state = self.lock();
        Status {
            gpus: usage::assess(&snapshot, &state.held, self.config.unreserved_threshold),
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
        usage::assess(snapshot, &state.held, self.config.unreserved_threshold)
            .into_iter()
            .filter(|a| matches!(a.state, GpuState::UnreservedUse | GpuState::WrongUser))
            .collect()
    }
}

/// A place in the queue; dropping it leaves the queue (the client gave up or went away).
pub struct Queued {
    reservations: Arc<Reservations>,
    id: u64,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.reservations.lock().queue.retain(|t| t.id != self.id);
        self.reservations.changed.notify_waiters();
    }
}

/// Ends expired reservations and silent runs every `tick` until `stop` turns true.
pub async fn run_timers(reservations: Arc<Reservations>, mut stop: watch::Receiver<bool>) {
    let tick = reservations
        .config
        .heartbeat_interval
        .min(Duration::from_millis(500));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = interval.tick() => reservations.tick().await,
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone), holding no borrow of it.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn host_vendors(snapshot: &Snapshot) -> Vec<Vendor> {
    let mut vendors: Vec<Vendor> = snapshot.gpus().map(|(vendor, _)| vendor).collect();
    vendors.dedup();
    vendors
}

fn event(
    time: SystemTime,
    caller: &EventCaller,
    verb: &str,
    gpu: u32,
    outcome: &str,
    reason: &str,
) -> NewEvent {
    NewEvent {
        time,
        kind: EventKind::Reservation,
        caller: caller.clone(),
        action: format!("{verb} GPU {gpu}"),
        target: None,
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
    }
}

fn outcome(verb: &str) -> &'static str {
    match verb {
        "expire" => "expired",
        _ => "released",
    }
}

/// The daemon itself, as events name it for expiries.
fn daemon_caller() -> EventCaller {
    EventCaller {
        uid: nix::unistd::geteuid().as_raw(),
        user: DAEMON_USER.to_owned(),
        pid: i32::try_from(std::process::id()).ok(),
        transport: "daemon".to_owned(),
        via: None,
    }
}

/// A run reservation's holder, for events after a restart.
fn holder_caller(row: &ReservationRow) -> EventCaller {
    EventCaller {
        uid: row.uid,
        user: row.user.clone(),
        pid: row.client_pid,
        transport: "unix".to_owned(),
        via: None,
    }
}

fn note_suffix(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(": {note}")
    }
}

/// One GPU's state in words, for refusals.
fn describe(assessment: &Assessment, now_ms: i64) -> String {
    let index = assessment.gpu.index;
    let by = |misuse: &[usage::Misuse]| {
        let mut users: Vec<&str> = misuse.iter().map(|m| &*m.info.user).collect();
        users.dedup();
        users.join(", ")
    };
    match (&assessment.holder, assessment.state) {
        (Some(holder), _) => {
            let until = holder
                .expires_ms
                .map(|at| format!(" for {} more", remaining(at, now_ms)))
                .unwrap_or_default();
            format!(
                "GPU {index} is reserved by {} ({}){until}",
                holder.user,
                holder.kind.as_str()
            )
        }
        (None, GpuState::UnreservedUse) => {
            format!(
                "GPU {index} is in use without a reservation by {}",
                by(&assessment.misuse)
            )
        }
        (None, _) => format!("GPU {index} is available"),
    }
}

fn remaining(at_ms: i64, now_ms: i64) -> String {
    let seconds = u64::try_from((at_ms - now_ms).max(0) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn busy_message(
    count: u32,
    free: &[GpuRef],
    assessed: &[Assessment],
    ahead: usize,
    now_ms: i64,
) -> String {
    if ahead > 0 && free.len() >= count as usize {
        return format!(
            "{ahead} requests wait ahead for GPUs (first come, first served): wait in the queue too, or see the reservation status"
        );
    }
    let taken: Vec<String> = assessed
        .iter()
        .filter(|a| a.state != GpuState::Available)
        .map(|a| describe(a, now_ms))
        .collect();
    format!(
        "{count} GPUs asked for, {} available: {} (the reservation status shows them; a request that waits is queued)",
        free.len(),
        taken.join("; ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::guard::evaluate::tests::snapshot_at;

    async fn reservations() -> Arc<Reservations> {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let ring = Arc::new(Ring::new(4, snapshot_at(0, &[])));
        Arc::new(
            Reservations::load(ReservationsConfig::default(), log, ring)
                .await
                .unwrap(),
        )
    }

    fn requester(uid: u32, admin: bool) -> Requester {
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

    fn request(kind: LeaseKind, want: Want) -> LeaseRequest {
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
    #[tokio::test]
    async fn queued_requests_are_served_first_come_first_served() {
        let reservations = reservations().await;
        let (alice, bob, carol) = (
            requester(1000, false),
            requester(2000, false),
            requester(3000, false),
        );
        let manual = |count| request(LeaseKind::Manual, Want::Count(count));
        let run = |count| request(LeaseKind::Run, Want::Count(count));
        assert!(!reservations.status().used, "nobody has reserved yet");
        reservations.reserve(&alice, &manual(3)).await.unwrap();
        assert!(reservations.status().used);
        let bob_waits = reservations.enqueue(&bob, 2, "b").unwrap();
        let carol_waits = reservations.enqueue(&carol, 1, "c").unwrap();
        // One GPU is free, but Bob is first in line: Carol waits behind him.
        let (run1, run2) = (run(1), run(2));
        let served = reservations.serve_ticket(&carol_waits, &carol, &run1);
        assert!(matches!(served.await.unwrap(), Err(1)));
        let direct = reservations.reserve(&carol, &manual(1)).await;
        assert!(
            matches!(direct, Err(ReservationError::Busy(_))),
            "{direct:?}"
        );
        let served = reservations.serve_ticket(&bob_waits, &bob, &run2);
        assert!(matches!(served.await.unwrap(), Err(0)));
        // Alice releases: Bob, then Carol.
        assert_eq!(reservations.release(&alice, &[]).await.unwrap().len(), 3);
        let bobs = reservations.serve_ticket(&bob_waits, &bob, &run2);
        let bobs = bobs.await.unwrap().unwrap();
        drop(bob_waits);
        let carols = reservations.serve_ticket(&carol_waits, &carol, &run1);
        let carols = carols.await.unwrap().unwrap();
        let mut all: Vec<u32> = bobs
            .gpus
            .iter()
            .chain(&carols.gpus)
            .map(|g| g.index)
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3);
        drop(carol_waits);
        assert!(reservations.status().queue.is_empty());
        // Alice's were released; a fresh start still finds them in the store.
        let reloaded = Reservations::load(
            ReservationsConfig::default(),
            Arc::clone(&reservations.log),
            Arc::clone(&reservations.ring),
        )
        .await
        .unwrap();
        assert!(reloaded.status().used, "the store remembers them");
    }

    #[tokio::test]
    async fn a_release_naming_another_users_gpu_releases_nothing_unless_admin() {
        let reservations = reservations().await;
        let (alice, bob) = (requester(1000, false), requester(2000, false));
        let gpus = |indices: &[u32]| request(LeaseKind::Manual, Want::Gpus(indices.to_vec()));
        reservations.reserve(&alice, &gpus(&[0])).await.unwrap();
        reservations.reserve(&bob, &gpus(&[1])).await.unwrap();
        let refused = reservations.release(&bob, &[1, 0]).await;
        assert!(
            matches!(refused, Err(ReservationError::NotHolder { gpu: 0, .. })),
            "{refused:?}"
        );
        let held = |r: &Reservations| {
            r.status()
                .gpus
                .iter()
                .filter(|a| a.holder.is_some())
                .count()
        };
        assert_eq!(held(&reservations), 2, "nothing was released");
        let taken = reservations.reserve(&bob, &gpus(&[0, 2])).await;
        assert!(
            matches!(taken, Err(ReservationError::Busy(ref m)) if m.contains("GPU 0 is reserved by u1000"))
        );
        assert!(matches!(
            reservations.reserve(&bob, &gpus(&[9])).await,
            Err(ReservationError::NoSuchGpu(9))
        ));
        let admin = requester(0, true);
        assert_eq!(
            reservations.release(&admin, &[0, 1]).await.unwrap().len(),
            2
        );
        assert_eq!(held(&reservations), 0);
    }
}
