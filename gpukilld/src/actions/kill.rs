//! Killing processes: choosing the targets, and signalling them without ever hitting a
//! process that reused a target's PID.
//!
//! A target is identified by (pid, start time). Before any signal the daemon opens a pidfd
//! and checks that the PID still has that start time; from then on the pidfd pins the
//! process, so SIGTERM and SIGKILL reach it or nothing. All targets are signalled and
//! waited for together from one thread, so 50 stubborn processes take one timeout, not 50.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use regex::Regex;

use crate::actions::protect::Protection;
use crate::authz::Principal;
use crate::procinfo::pidfd::{self, PidFd};
use crate::procinfo::{self, ProcessInfo};
use crate::snapshot::Snapshot;

/// How long to wait for a process to die after SIGKILL before calling it stuck (a process in
/// uninterruptible sleep, e.g. inside a wedged driver call, can outlive SIGKILL).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A process to act on, as identified before any signal.
#[derive(Debug, Clone)]
pub struct Target {
    /// Who it is, including its start time.
    pub info: Arc<ProcessInfo>,
    /// The NVIDIA GPU it was seen on, when it is a GPU process.
    pub gpu_index: Option<u32>,
}

/// What became of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited after SIGTERM.
    Terminated,
    /// Exited after SIGKILL.
    Killed,
    /// Still running when the time was up.
    StillRunning,
    /// Gone (or its PID reused) before any signal.
    AlreadyGone,
    /// The caller may not signal it.
    Denied,
    /// Never signalled, whoever asks.
    Protected,
    /// Listed only; nothing was signalled.
    Matched,
}

impl Outcome {
    /// Lower-case name, as the audit trail and JSON write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Terminated => "terminated",
            Outcome::Killed => "killed",
            Outcome::StillRunning => "still_running",
            Outcome::AlreadyGone => "already_gone",
            Outcome::Denied => "denied",
            Outcome::Protected => "protected",
            Outcome::Matched => "matched",
        }
    }
}

/// A target with its outcome and the reason, in words.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The process.
    pub target: Target,
    /// What happened.
    pub outcome: Outcome,
    /// Why.
    pub reason: String,
}

/// Which processes a kill request is about.
#[derive(Debug, Clone)]
pub enum Selector {
    /// One process.
    Pid(u32),
    /// GPU processes whose name or command line matches.
    Filter(Regex),
    /// Every process on one NVIDIA GPU.
    Gpu(u32),
    /// Every GPU process of one uid.
    User(u32),
}

/// Why the targets of a request could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// No process has that PID.
    #[error("no process has pid {0}")]
    NoSuchPid(u32),
    /// The PID exists but uses no GPU, and force was not given.
    #[error("pid {0} is not using a GPU; only a forced kill signals it anyway")]
    NotAGpuProcess(u32),
    /// The GPU index does not exist.
    #[error("GPU {index} does not exist: this node has NVIDIA GPUs 0 to {last}", last = count.saturating_sub(1))]
    NoSuchGpu {
        /// The index asked for.
        index: u32,
        /// How many GPUs there are.
        count: u32,
    },
    /// Nothing matched a filter, GPU or user selection.
    #[error("no GPU process matches {0}")]
    NoMatch(String),
    /// Reading /proc for a non-GPU target failed.
    #[error("cannot read /proc for pid {pid}")]
    Proc {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Chooses the targets of `selector` in `snapshot`: GPU processes, once per PID (on the
/// first GPU it was seen on). With `force`, a `--pid` that is not a GPU process is read
/// from /proc (blocking: call it off the runtime).
pub fn select(
    snapshot: &Snapshot,
    selector: &Selector,
    force: bool,
    described_as: &str,
) -> Result<Vec<Target>, SelectError> {
    if let Selector::Gpu(index) = selector {
        // Host indices may have a gap where a vendor that had GPUs lost them.
        let count = snapshot.gpus().count() as u32;
        if !snapshot.gpus().any(|(_, gpu)| gpu.index == *index) {
            return Err(SelectError::NoSuchGpu {
                index: *index,
                count,
            });
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for process in snapshot.processes() {
        let slot = process.slot;
        let info = &slot.info;
        let wanted = match selector {
            Selector::Pid(pid) => info.pid == *pid,
            Selector::Filter(regex) => info.matches(regex),
            Selector::Gpu(index) => slot.gpu_index == *index,
            Selector::User(uid) => info.uid == *uid,
        };
        if wanted && !targets.iter().any(|t| t.info.pid == info.pid) {
            targets.push(Target {
                info: Arc::clone(info),
                gpu_index: Some(slot.gpu_index),
            });
        }
    }
    if targets.is_empty() {
        if let Selector::Pid(pid) = selector {
            let mut reader = procinfo::ProcReader::new("/proc")
                .map_err(|source| SelectError::Proc { pid: *pid, source })?;
            let info = match reader.read(*pid) {
                Ok(info) => info,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(SelectError::NoSuchPid(*pid));
                }
                Err(source) => return Err(SelectError::Proc { pid: *pid, source }),
            };
            if !force {
                return Err(SelectError::NotAGpuProcess(*pid));
            }
            targets.push(Target {
                info: Arc::new(info),
                gpu_index: None,
            });
        } else {
            return Err(SelectError::NoMatch(described_as.to_string()));
        }
    }
    targets.sort_by_key(|target| target.info.pid);
    Ok(targets)
}

/// How to kill.
#[derive(Debug, Clone, Copy)]
pub struct KillOptions {
    /// How long SIGTERM has to work.
    pub timeout: Duration,
    /// Whether to follow up with SIGKILL.
    pub force: bool,
}

/// Applies protection, then authorization: the targets that may not be signalled, with
/// why, and those that may. Blocking (it reads /proc and may read the user database). Only
/// [`crate::actions::audit::kill`] signals what it allows, once the decision is recorded.
pub fn decide(
    principal: &Principal,
    protection: &Protection,
    targets: Vec<Target>,
) -> (Vec<Decided>, Vec<Target>) {
    let mut refused = Vec::new();
    let mut allowed = Vec::new();
    for target in targets {
        if let Some(reason) = protection.check(principal, &target.info) {
            refused.push(Decided {
                target,
                outcome: Outcome::Protected,
                reason,
            });
        } else if let Err(reason) = principal.may_signal(target.info.uid, &target.info.user) {
            refused.push(Decided {
                target,
                outcome: Outcome::Denied,
                reason,
            });
        } else {
            allowed.push(target);
        }
    }
    (refused, allowed)
}

/// A target that was verified and pinned by a pidfd.
struct Pinned {
    index: usize,
    handle: Handle,
}

/// How a verified target is signalled.
enum Handle {
    /// Through its pidfd: can never reach another process.
    PidFd(PidFd),
    /// The kernel has no pidfd (before 5.3): kill(2) right after re-checking the start time.
    Pid,
}

/// Signals every target (SIGTERM, then with `force` SIGKILL after the timeout) and waits
/// for them all together. Blocking: run it on a blocking thread. Only [`super::audit`]
/// calls it, after writing the record of the act.
pub(super) fn execute(targets: Vec<Target>, options: KillOptions) -> Vec<Decided> {
    let mut results: Vec<Option<(Outcome, String)>> = vec![None; targets.len()];
    let mut pinned = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        match pin(&target.info) {
            Ok(handle) => pinned.push(Pinned { index, handle }),
            Err(reason) => results[index] = Some((Outcome::AlreadyGone, reason)),
        }
    }

    let mut alive = signal_all(&targets, &mut pinned, Signal::SIGTERM, &mut results);
    let exited = wait(&targets, &alive, options.timeout);
    settle(&mut alive, &exited, Outcome::Terminated, &mut results);

    if options.force && !alive.is_empty() {
        let mut rest = signal_all(&targets, &mut alive, Signal::SIGKILL, &mut results);
        let exited = wait(&targets, &rest, KILL_GRACE);
        settle(&mut rest, &exited, Outcome::Killed, &mut results);
        for pinned in rest {
            results[pinned.index] = Some((
                Outcome::StillRunning,
                format!(
                    "still running {} after SIGKILL (uninterruptible sleep?)",
                    humantime::format_duration(KILL_GRACE)
                ),
            ));
        }
    } else {
        for pinned in alive {
            results[pinned.index] = Some((
                Outcome::StillRunning,
                format!(
                    "still running {} after SIGTERM; a forced kill sends SIGKILL",
                    humantime::format_duration(options.timeout)
                ),
            ));
        }
    }

    targets
        .into_iter()
        .zip(results)
        .map(|(target, result)| {
            let (outcome, reason) = result.unwrap_or((Outcome::StillRunning, String::new()));
            Decided {
                target,
                outcome,
                reason,
            }
        })
        .collect()
}

/// Opens a handle on the target and checks it is still the process we identified.
fn pin(info: &ProcessInfo) -> Result<Handle, String> {
    let handle = match PidFd::open(info.pid) {
        Ok(fd) => Handle::PidFd(fd),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {
            return Err("exited before it was signalled".to_string());
        }
        Err(error) => {
            tracing::debug!(pid = info.pid, %error, "no pidfd; falling back to kill(2)");
            Handle::Pid
        }
    };
    verify(info)?;
    Ok(handle)
}

/// Checks that `info.pid` still belongs to the process that started at `info.start_ticks`.
fn verify(info: &ProcessInfo) -> Result<(), String> {
    match procinfo::read_stat(info.pid) {
        Ok(stat) if stat.start_ticks == info.start_ticks && stat.state != 'Z' => Ok(()),
        Ok(stat) if stat.start_ticks != info.start_ticks => Err(format!(
            "pid {} now belongs to another process (PID reused); nothing was signalled",
            info.pid
        )),
        Ok(_) => Err("exited before it was signalled".to_string()),
        Err(_) => Err("exited before it was signalled".to_string()),
    }
}

/// Sends `signal` to every pinned target; returns those that received it. A target that
/// exited meanwhile is settled with `already_gone` (before SIGTERM) or left to `wait`.
fn signal_all(
    targets: &[Target],
    pinned: &mut Vec<Pinned>,
    signal: Signal,
    results: &mut [Option<(Outcome, String)>],
) -> Vec<Pinned> {
    let mut signalled = Vec::new();
    for entry in pinned.drain(..) {
        let info = &targets[entry.index].info;
        let sent = match &entry.handle {
            Handle::PidFd(fd) => fd.send_signal(signal),
            Handle::Pid => verify(info).map_err(io::Error::other).and_then(|()| {
                let pid = nix::unistd::Pid::from_raw(info.pid as i32);
                nix::sys::signal::kill(pid, signal).map_err(io::Error::from)
            }),
        };
        match sent {
            Ok(()) => signalled.push(entry),
            Err(error) if signal == Signal::SIGTERM => {
                results[entry.index] = Some((
                    Outcome::AlreadyGone,
                    format!("exited before SIGTERM ({error})"),
                ));
            }
            // It exited between the SIGTERM wait and SIGKILL: SIGTERM did it.
            Err(_) => results[entry.index] = Some((Outcome::Terminated, String::new())),
        }
    }
    signalled
}

/// Waits up to `timeout` for the signalled targets to exit; returns which did.
fn wait(targets: &[Target], signalled: &[Pinned], timeout: Duration) -> Vec<bool> {
    let fds: Vec<&PidFd> = signalled
        .iter()
        .filter_map(|entry| match &entry.handle {
            Handle::PidFd(fd) => Some(fd),
            Handle::Pid => None,
        })
        .collect();
    if fds.len() == signalled.len() {
        return pidfd::wait_for_exit(&fds, timeout).unwrap_or_else(|error| {
            tracing::warn!(%error, "waiting on pidfds failed");
            vec![false; signalled.len()]
        });
    }
    // Without pidfds: poll /proc until they are gone or the time is up.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let exited: Vec<bool> = signalled
            .iter()
            .map(|entry| verify(&targets[entry.index].info).is_err())
            .collect();
        if exited.iter().all(|gone| *gone) || std::time::Instant::now() >= deadline {
            return exited;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records `outcome` for the targets that exited, and keeps the rest in `alive`.
fn settle(
    alive: &mut Vec<Pinned>,
    exited: &[bool],
    outcome: Outcome,
    results: &mut [Option<(Outcome, String)>],
) {
    let mut still = Vec::new();
    for (entry, gone) in alive.drain(..).zip(exited) {
        if *gone {
            results[entry.index] = Some((outcome, String::new()));
        } else {
            still.push(entry);
        }
    }
    *alive = still;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Instant;

    fn spawn(script: &str) -> Child {
        Command::new("/bin/sh")
            .args(["-c", script])
            .spawn()
            .expect("spawn")
    }

    fn target(child: &Child) -> Target {
        let mut reader = procinfo::ProcReader::new("/proc").expect("procfs");
        // Give sh a moment to install its trap.
        std::thread::sleep(Duration::from_millis(100));
        Target {
            info: Arc::new(reader.read(child.id()).expect("read")),
            gpu_index: Some(0),
        }
    }

    fn alive(child: &mut Child) -> bool {
        child.try_wait().expect("try_wait").is_none()
    }

    #[test]
    fn sigterm_terminates_a_well_behaved_process() {
        let mut child = spawn("exec sleep 30");
        let results = execute(
            vec![target(&child)],
            KillOptions {
                timeout: Duration::from_secs(5),
                force: false,
            },
        );
        assert_eq!(results[0].outcome, Outcome::Terminated);
        child.wait().expect("reap");
    }

    #[test]
    fn a_process_ignoring_sigterm_is_still_running_without_force_and_killed_with_it() {
        let mut stubborn = spawn("trap '' TERM; while :; do sleep 0.05; done");
        let options = KillOptions {
            timeout: Duration::from_millis(300),
            force: false,
        };
        let results = execute(vec![target(&stubborn)], options);
        assert_eq!(results[0].outcome, Outcome::StillRunning);
        assert!(
            results[0].reason.contains("a forced kill sends SIGKILL"),
            "{}",
            results[0].reason
        );
        assert!(alive(&mut stubborn));
        let results = execute(
            vec![target(&stubborn)],
            KillOptions {
                force: true,
                ..options
            },
        );
        assert_eq!(results[0].outcome, Outcome::Killed);
        stubborn.wait().expect("reap");
    }

    #[test]
    fn a_reused_pid_is_never_signalled() {
        let mut child = spawn("exec sleep 30");
        let mut stale = target(&child);
        // The identity we hold says the process started at another time: as if ours exited
        // and this one got its PID.
        Arc::make_mut(&mut stale.info).start_ticks += 1;
        let results = execute(
            vec![stale],
            KillOptions {
                timeout: Duration::from_secs(1),
                force: true,
            },
        );
        assert_eq!(results[0].outcome, Outcome::AlreadyGone);
        assert!(
            results[0].reason.contains("reused"),
            "{}",
            results[0].reason
        );
        assert!(
            alive(&mut child),
            "the process holding the PID was not signalled"
        );
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    #[test]
    fn fifty_stubborn_processes_take_one_timeout_not_fifty() {
        let mut children: Vec<Child> = (0..50)
            .map(|_| spawn("trap '' TERM; while :; do sleep 0.05; done"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut reader = procinfo::ProcReader::new("/proc").expect("procfs");
        let targets = children
            .iter()
            .map(|child| Target {
                info: Arc::new(reader.read(child.id()).expect("read")),
                gpu_index: None,
            })
            .collect();
        let started = Instant::now();
        let results = execute(
            targets,
            KillOptions {
                timeout: Duration::from_secs(2),
                force: true,
            },
        );
        let elapsed = started.elapsed();
        assert!(results.iter().all(|r| r.outcome == Outcome::Killed));
        assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
        for child in &mut children {
            child.wait().expect("reap");
        }
    }
}
