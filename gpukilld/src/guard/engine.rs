//! The running guard: loads the policy file (at start, on SIGHUP, and whenever the file
//! changes), evaluates every snapshot the sampler publishes, and acts through the same kill
//! path as `gpukillctl kill`. Every warning, "would act", held-back kill and kill is written
//! to the audit trail and logged.
//!
//! Evaluation runs on the guard's own task and takes a few microseconds per process; file
//! reads, group lookups and kills (which wait for processes to exit) run on the blocking
//! pool, so a slow one never delays the next evaluation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};

use super::clock;
use super::counters::GuardCounters;
use super::edit::{self, Change};
use super::evaluate::{self, Evaluation, UtilHistory, Violation};
use super::notify::{self, Notice, NoticeProcess, Notifier};
use super::policy::{CompiledPolicy, LocalTime, Mode, unix_group_members};
use super::tracker::{Decision, Tracker};
use crate::actions::audit;
use crate::actions::kill::{KillOptions, Outcome, Target};
use crate::actions::protect::Protection;
use crate::authz::{Caller, Principal, Transport};
use crate::procinfo::ProcessInfo;
use crate::reservations::Reservations;
use crate::reservations::usage::Assessment;
use crate::ring::Ring;
use crate::snapshot::Snapshot;
use crate::store::{Database, EventKind, EventTarget, NewEvent};

/// The name the guard acts under in the audit trail.
pub const GUARD_USER: &str = "gpukilld-guard";

/// A policy that loaded, with what acting on it needs.
#[derive(Debug)]
pub struct Loaded {
    /// The checked policy.
    pub policy: CompiledPolicy,
    /// The daemon's protections plus the policy's (root's processes are protected unless
    /// `protected_users` says otherwise).
    pub protection: Protection,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// What the guard reports about itself.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The policy in force, if one loaded.
    pub loaded: Option<Arc<Loaded>>,
    /// Why the file could not be (re)loaded last time, if it could not; the previous policy
    /// stays in force.
    pub load_error: Option<String>,
    /// The violations being followed.
    pub active: Vec<Violation>,
    /// Rules that cannot be evaluated, and why.
    pub not_evaluable: Vec<String>,
    /// Kills started in the last minute.
    pub recent_kills: usize,
    /// When the last evaluation ran.
    pub evaluated_at: Option<SystemTime>,
    /// How long it took.
    pub evaluation_time: Duration,
}

/// The guard's shared state: the status for RPCs, the reload flag for SIGHUP.
#[derive(Debug)]
pub struct Guard {
    path: PathBuf,
    daemon_users: Option<Vec<String>>,
    daemon_processes: Vec<String>,
    status: Mutex<Status>,
    reload: AtomicBool,
    /// The policy file's modification time and length when it was last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Held while a change is written, so two changes do not interleave.
    writing: Mutex<()>,
    /// Decisions and kills since start, per rule (for the metrics endpoint).
    counters: Arc<GuardCounters>,
}

/// Why a change to the policy was not made.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The change does not apply (an entry that is not there, a fragment that is not TOML).
    #[error("{0}")]
    Edit(String),
    /// The policy after the change would not be valid; the file is unchanged.
    #[error("the changed policy is invalid, nothing was written: {0}")]
    Invalid(String),
    /// The file could not be read or written.
    #[error("cannot write the policy file {}: {source}", path.display())]
    Io {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl Guard {
    /// A guard for the policy file at `path`, with the daemon's own protections.
    pub fn new(
        path: PathBuf,
        protected_users: Option<Vec<String>>,
        protected_processes: Vec<String>,
    ) -> Self {
        Guard {
            path,
            daemon_users: protected_users,
            daemon_processes: protected_processes,
            status: Mutex::new(Status::default()),
            reload: AtomicBool::new(false),
            stamp: Mutex::new(None),
            writing: Mutex::new(()),
            counters: Arc::default(),
        }
    }

    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decisions and kills since start, per rule.
    pub fn counters(&self) -> Arc<GuardCounters> {
        Arc::clone(&self.counters)
    }

    /// Asks for the policy file to be read again before the next evaluation (SIGHUP).
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::Relaxed);
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and checks the policy file (blocking: file and group database). A missing file
    /// is no policy; a bad one keeps the previous policy and records the error.
    pub fn load(&self) {
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp(&self.path);
        let result = load_file(
            &self.path,
            self.daemon_users.as_ref(),
            &self.daemon_processes,
        );
        let mut status = self.lock();
        match result {
            Ok(loaded) => {
                if let Some(loaded) = &loaded {
                    tracing::info!(
                        policy = %self.path.display(),
                        mode = loaded.policy.policy.mode.as_str(),
                        enabled = loaded.policy.policy.enabled,
                        users = loaded.policy.policy.users.len(),
                        groups = loaded.policy.policy.groups.len(),
                        gpus = loaded.policy.policy.gpus.len(),
                        windows = loaded.policy.policy.windows.len(),
                        "guard policy loaded"
                    );
                } else {
                    tracing::info!(policy = %self.path.display(), "no guard policy file: the guard is off");
                }
                status.loaded = loaded.map(Arc::new);
                status.load_error = None;
            }
            Err(error) => {
                tracing::error!(
                    policy = %self.path.display(),
                    %error,
                    "guard policy rejected; the previous policy stays in force"
                );
                status.load_error = Some(error);
            }
        }
    }

    /// The policy file's text ("" when there is none). Blocking.
    pub fn text(&self) -> Result<String, UpdateError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(UpdateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Applies `change` to the policy file: edits its text (keeping comments), checks the
    /// result as a whole, writes it atomically (a temporary file renamed over it) and loads
    /// it. Returns what changed. A change that fails writes nothing. Blocking. The caller
    /// checks that the requester is an admin.
    pub fn update(&self, change: &Change) -> Result<String, UpdateError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.text()?;
        let (text, summary) = edit::apply(&current, change).map_err(UpdateError::Edit)?;
        let origin = self.path.display().to_string();
        CompiledPolicy::parse(&text, Some(&origin), &unix_group_members)
            .map_err(|error| UpdateError::Invalid(error.to_string()))?;
        write_atomically(&self.path, &text)?;
        self.load();
        Ok(summary)
    }

    /// Evaluates the loaded policy against `snapshot` without acting (`gpukillctl guard
    /// test`), with the reservations' `misuse` of it: the violations and what the mode would
    /// do about each now.
    pub fn test(
        &self,
        snapshot: &Snapshot,
        misuse: &[Assessment],
    ) -> Option<(Arc<Loaded>, Evaluation)> {
        let loaded = self.lock().loaded.clone()?;
        let mut history = UtilHistory::default();
        history.record(snapshot, Duration::from_secs(3600));
        let mut evaluation = evaluate::evaluate(
            &loaded.policy,
            snapshot,
            &history,
            clock::local_time(snapshot.taken_at),
        );
        evaluation
            .violations
            .extend(evaluate::reservation_findings(&loaded.policy, misuse));
        Some((loaded, evaluation))
    }
}

/// The file's policy; `Ok(None)` when there is no file.
fn load_file(
    path: &Path,
    daemon_users: Option<&Vec<String>>,
    daemon_processes: &[String],
) -> Result<Option<Loaded>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let origin = path.display().to_string();
    let policy = CompiledPolicy::parse(&text, Some(&origin), &unix_group_members)
        .map_err(|error| error.to_string())?;
    let mut users = daemon_users
        .cloned()
        .unwrap_or_else(|| vec!["root".to_owned()]);
    users.extend(policy.policy.protected_users.iter().cloned());
    let mut patterns = daemon_processes.to_vec();
    patterns.extend(policy.policy.protected_processes.iter().cloned());
    let protection = Protection::new(Some(users), &patterns).map_err(|error| error.to_string())?;
    Ok(Some(Loaded {
        policy,
        protection,
        loaded_at: SystemTime::now(),
    }))
}

/// Writes `text` to `path` through a temporary file in the same directory, flushed to disk,
/// then renamed over it: a reader (or a crash) sees the old file or the new one, never half.
fn write_atomically(path: &Path, text: &str) -> Result<(), UpdateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { path, source }
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temporary)
        .map_err(io(&temporary))?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(UpdateError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
    Ok(())
}

/// The file's modification time and length, to notice a change.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Evaluates every snapshot of `ring` until `stop` turns true, acting through `events`
/// (nothing is killed without an audit trail).
pub async fn run(
    guard: Arc<Guard>,
    ring: Arc<Ring>,
    events: Arc<Database>,
    reservations: Option<Arc<Reservations>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut updates = ring.updates();
    let mut tracker = Tracker::default();
    let mut history = UtilHistory::default();
    let principal = guard_principal();
    let responder = Arc::new(Responder {
        counters: guard.counters(),
        principal: principal.clone(),
        events: Arc::clone(&events),
        notifier: Notifier::start(),
        host: snapshot_host(&ring),
    });
    // Whether each offender (pid, start ticks) is protected, and why: checked once per
    // process (it reads /proc), forgotten when the process no longer offends.
    let mut protected: HashMap<(u32, u64), Option<String>> = HashMap::new();
    loop {
        let snapshot = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            update = updates.recv() => match update {
                Ok(snapshot) => snapshot,
                Err(broadcast::error::RecvError::Lagged(_)) => ring.latest(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let path = guard.path.clone();
        let now_stamp = tokio::task::spawn_blocking(move || stamp(&path))
            .await
            .ok()
            .flatten();
        let changed = now_stamp != *guard.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if changed || guard.reload.swap(false, Ordering::Relaxed) {
            let loading = Arc::clone(&guard);
            let _ = tokio::task::spawn_blocking(move || loading.load()).await;
            protected.clear();
        }
        let Some(loaded) = guard.lock().loaded.clone() else {
            continue;
        };
        let policy = &loaded.policy.policy;
        if !policy.enabled {
            let mut status = guard.lock();
            status.active.clear();
            status.not_evaluable.clear();
            continue;
        }
        let started = std::time::Instant::now();
        history.record(&snapshot, longest_window(&loaded.policy));
        let local: LocalTime = clock::local_time(snapshot.taken_at);
        let mut evaluation = evaluate::evaluate(&loaded.policy, &snapshot, &history, local);
        if let Some(reservations) = &reservations {
            let misuse = reservations.misuse(&snapshot);
            evaluation
                .violations
                .extend(evaluate::reservation_findings(&loaded.policy, &misuse));
        }
        let evaluation_time = started.elapsed();
        mark_protected(
            &mut evaluation.violations,
            &mut protected,
            &loaded,
            &principal,
        )
        .await;
        let active = evaluation.violations.clone();
        let decisions = tracker.update(policy, evaluation.violations, snapshot.taken_at);
        {
            let mut status = guard.lock();
            status.active = active;
            status.not_evaluable = evaluation.not_evaluable;
            status.recent_kills = tracker.recent_kills();
            status.evaluated_at = Some(snapshot.taken_at);
            status.evaluation_time = evaluation_time;
        }
        for decision in decisions {
            respond(decision, &loaded, &responder).await;
        }
    }
}

/// Fills in each offender's protection from `cache`, checking (on the blocking pool) those
/// not seen before.
async fn mark_protected(
    violations: &mut [Violation],
    cache: &mut HashMap<(u32, u64), Option<String>>,
    loaded: &Arc<Loaded>,
    principal: &Principal,
) {
    let offending: HashSet<(u32, u64)> = violations
        .iter()
        .flat_map(|v| v.offenders.iter().map(|o| (o.info.pid, o.info.start_ticks)))
        .collect();
    cache.retain(|key, _| offending.contains(key));
    let unknown: Vec<Arc<crate::procinfo::ProcessInfo>> = violations
        .iter()
        .flat_map(|v| v.offenders.iter())
        .filter(|o| !cache.contains_key(&(o.info.pid, o.info.start_ticks)))
        .map(|o| Arc::clone(&o.info))
        .collect();
    if !unknown.is_empty() {
        let (loaded, principal) = (Arc::clone(loaded), principal.clone());
        let checked = tokio::task::spawn_blocking(move || {
            unknown
                .into_iter()
                .map(|info| {
                    let reason = loaded.protection.check(&principal, &info);
                    ((info.pid, info.start_ticks), reason)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        cache.extend(checked);
    }
    for offender in violations.iter_mut().flat_map(|v| v.offenders.iter_mut()) {
        offender.protected = cache
            .get(&(offender.info.pid, offender.info.start_ticks))
            .cloned()
            .flatten();
    }
}

/// The node's name, as the snapshots carry it.
fn snapshot_host(ring: &Ring) -> String {
    ring.latest().host.to_string()
}

/// How far back utilization must be kept for the policy's windows.
fn longest_window(policy: &CompiledPolicy) -> Duration {
    let p = &policy.policy;
    std::iter::once(p.defaults.window())
        .chain(p.users.iter().map(|u| u.limits.window()))
        .chain(p.windows.iter().map(|w| w.limits.window()))
        .chain(p.groups.iter().filter_map(|g| g.utilization_window))
        // The rogue model's sustained-utilization signal needs its window too.
        .chain(std::iter::once(p.rogue.high_util_window))
        .max()
        .unwrap_or(super::policy::DEFAULT_UTILIZATION_WINDOW)
}

/// The principal the guard acts as: the daemon itself, an admin.
pub fn guard_principal() -> Principal {
    Principal {
        caller: Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: i32::try_from(std::process::id()).ok(),
            transport: Transport::Guard,
            remote: None,
        },
        user: GUARD_USER.to_owned(),
        admin: true,
    }
}

/// What responding to a decision needs.
struct Responder {
    counters: Arc<GuardCounters>,
    principal: Principal,
    events: Arc<Database>,
    notifier: Notifier,
    host: String,
}

impl Responder {
    /// The webhook notice of `violation` with `outcome`, about `processes`.
    fn notice(
        &self,
        mode: Mode,
        violation: &Violation,
        outcome: &str,
        processes: &[&ProcessInfo],
        gpu: &[u32],
    ) -> Notice {
        Notice {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            host: self.host.clone(),
            mode: mode.as_str().to_owned(),
            rule: violation.rule.as_str().to_owned(),
            policy: violation.policy.clone(),
            outcome: outcome.to_owned(),
            description: violation.describe(),
            measured: violation.measured,
            limit: violation.limit,
            unit: crate::guard::evaluate::unit_name(violation.unit).to_owned(),
            processes: processes
                .iter()
                .zip(gpu)
                .map(|(info, gpu_index)| NoticeProcess {
                    pid: info.pid,
                    uid: info.uid,
                    user: info.user.to_string(),
                    name: info.name.clone(),
                    gpu_index: *gpu_index,
                })
                .collect(),
        }
    }
}

/// Writes `message` on the terminals of each of `users` (on the blocking pool).
fn tell(users: Vec<(u32, String)>) {
    if users.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for (uid, message) in users {
            let told = notify::tell_user(uid, &message);
            tracing::debug!(uid, terminals = told.len(), "guard message written");
        }
    });
}

/// Logs, records and announces one decision; for `Act`, kills on the blocking pool and
/// records and announces each outcome, without holding up the next evaluation.
async fn respond(decision: Decision, loaded: &Arc<Loaded>, responder: &Arc<Responder>) {
    let policy = &loaded.policy.policy;
    let mode = policy.mode;
    let (violation, outcome) = match &decision {
        Decision::Warn(v) => (v, "warned"),
        Decision::WouldAct(v) => (v, "would_act"),
        Decision::RateLimited(v) => (v, "rate_limited"),
        Decision::Act(v) => (v, "acting"),
    };
    responder.counters.record_decision(&decision);
    let description = violation.describe();
    tracing::warn!(
        rule = violation.rule.as_str(),
        policy = %violation.policy,
        measured = violation.measured,
        limit = violation.limit,
        mode = mode.as_str(),
        outcome,
        "guard: {description}"
    );
    let action = format!("guard {}: {}", mode.as_str(), violation.rule.as_str());
    let caller = event_caller(&responder.principal);
    let event = |target: Option<EventTarget>| NewEvent {
        time: SystemTime::now(),
        kind: EventKind::Violation,
        caller: caller.clone(),
        action: action.clone(),
        target,
        outcome: outcome.to_owned(),
        reason: description.clone(),
    };
    let mut batch: Vec<NewEvent> = violation
        .offenders
        .iter()
        .map(|offender| event(Some(event_target(&offender.info, Some(offender.gpu_index)))))
        .collect();
    if batch.is_empty() {
        // A violation with no process to act on (a GPU over its reserve from memory no
        // process accounts for): recorded without a target.
        batch.push(event(None));
    }
    if let Err(error) = responder.events.record(batch).await {
        tracing::error!(%error, "cannot record a guard violation");
    }
    let infos: Vec<&ProcessInfo> = violation
        .offenders
        .iter()
        .map(|o| o.info.as_ref())
        .collect();
    let gpus: Vec<u32> = violation.offenders.iter().map(|o| o.gpu_index).collect();
    responder.notifier.send(
        &policy.notify,
        responder.notice(mode, violation, outcome, &infos, &gpus),
    );
    if policy.notify.terminals && matches!(decision, Decision::Warn(_)) {
        let grace = humantime::format_duration(policy.grace);
        tell(
            violation
                .offenders
                .iter()
                .filter(|o| o.protected.is_none())
                .map(|o| {
                    (
                        o.info.uid,
                        format!(
                            "your process {} ({}) on GPU {} breaks the GPU policy: {description}. It will be killed in {grace} unless that changes.",
                            o.info.pid, o.info.name, o.gpu_index
                        ),
                    )
                })
                .collect(),
        );
    }
    let Decision::Act(violation) = decision else {
        return;
    };
    debug_assert!(mode != Mode::DryRun);
    let targets: Vec<Target> = violation
        .offenders
        .iter()
        .map(|offender| Target {
            info: Arc::clone(&offender.info),
            gpu_index: Some(offender.gpu_index),
        })
        .collect();
    let options = KillOptions {
        timeout: policy.kill_timeout,
        force: true,
    };
    let (loaded, responder) = (Arc::clone(loaded), Arc::clone(responder));
    tokio::spawn(async move {
        let request = audit::Request {
            principal: &responder.principal,
            action: &action,
            context: Some(&description),
            refused: EventKind::Kill,
        };
        let pids: Vec<u32> = targets.iter().map(|target| target.info.pid).collect();
        let killed = audit::kill(
            &responder.events,
            request,
            loaded.protection.clone(),
            targets,
            options,
        )
        .await;
        let decided = match killed {
            Ok(decided) => decided,
            Err(error) => {
                // No record, no kill; the store counts the events it could not write, and
                // Health reports the store's state.
                tracing::error!(
                    rule = violation.rule.as_str(),
                    ?pids,
                    error = %crate::errors::chain(&error),
                    "guard: not killing"
                );
                return;
            }
        };
        let notify = &loaded.policy.policy.notify;
        let mut messages = Vec::new();
        for decided in &decided {
            responder
                .counters
                .record_kill(violation.rule, decided.outcome);
            let info = &decided.target.info;
            let gpu = decided.target.gpu_index.unwrap_or_default();
            tracing::warn!(
                pid = info.pid,
                user = %info.user,
                outcome = decided.outcome.as_str(),
                "guard acted: {}", decided.reason
            );
            responder.notifier.send(
                notify,
                responder.notice(
                    mode,
                    &violation,
                    decided.outcome.as_str(),
                    &[info.as_ref()],
                    &[gpu],
                ),
            );
            if notify.terminals && matches!(decided.outcome, Outcome::Terminated | Outcome::Killed)
            {
                messages.push((
                    info.uid,
                    format!(
                        "your process {} ({}) on GPU {gpu} was killed by the GPU policy: {description}",
                        info.pid, info.name
                    ),
                ));
            }
        }
        tell(messages);
    });
}

use crate::actions::{event_caller, event_target};
