//! The running guard: loads the policy file (at start, on SIGHUP, and whenever the file
//! changes), evaluates every snapshot the sampler publishes, and acts through the same kill
//! path as `gpukillctl kill`. Every warning, "would act", held-back kill and kill is written
//! to the audit trail and logged.
//!
//! Evaluation runs on the guard's own task and takes a few microseconds per process; file
//! reads, group lookups and kills (which wait for processes to exit) run on the blocking
//! pool, so a slow one never delays the next evaluation.
//!
//! This module holds the guard's shared state ([`Guard`]: the policy in force, the status,
//! the reload flag) and the changes made through it. Its parts: `file` reads, checks and
//! writes the policy file; `run` is the evaluation loop; `respond` acts on its decisions.

mod file;
mod respond;
mod run;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

pub use run::run;

use super::clock;
use super::counters::GuardCounters;
use super::edit::{self, Change};
use super::evaluate::{self, Evaluation, UtilHistory, Violation};
use super::notify::NotifyConfig;
use super::policy::{CompiledPolicy, unix_group_members};
use crate::actions::protect::Protection;
use crate::authz::{Caller, Principal, Transport};
use crate::reservations::usage::Assessment;
use crate::snapshot::Snapshot;
use file::{load_file, stamp, write_atomically};

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

    /// The policy's `[notify]`, when a policy is loaded (its webhook also receives GPU health
    /// events, whether or not the guard is enabled).
    pub fn notify_config(&self) -> Option<NotifyConfig> {
        let status = self.lock();
        let loaded = status.loaded.as_ref()?;
        Some(loaded.policy.policy.notify.clone())
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
