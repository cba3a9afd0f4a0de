//! The command of `gpukillctl run`: starting it, passing signals on to it, stopping it, and
//! its exit status as a shell reports it.
//!
//! The command runs in gpukillctl's own process group with the terminal inherited, so a
//! terminal's Ctrl-C (SIGINT) and Ctrl-\ (SIGQUIT) reach it directly. gpukillctl listens for
//! those too, so that it outlives them and keeps the reservation until the command exits; it
//! passes them on only when the terminal did not deliver them to the command already
//! ([`terminal_delivers`]). SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are always passed on.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::task::Poll;

use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The exit status of a command that cannot be run because it is not found, as a shell's.
pub const NOT_FOUND_EXIT: i32 = 127;

/// The exit status of a command that is found but cannot be run, as a shell's.
pub const NOT_EXECUTABLE_EXIT: i32 = 126;

/// The signals gpukillctl listens for while the command runs, and passes on.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGINT,
    libc::SIGQUIT,
];

/// The signals to pass on, listened for: gpukillctl no longer dies of any of them.
pub struct Signals {
    streams: Vec<(libc::c_int, Signal)>,
}

impl Signals {
    /// Starts listening for [`FORWARDED`]; from here on, these signals no longer end
    /// gpukillctl.
    pub fn listen() -> std::io::Result<Self> {
        let streams = FORWARDED
            .into_iter()
            .map(|number| signal(SignalKind::from_raw(number)).map(|stream| (number, stream)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// The next signal received (its number).
    pub async fn recv(&mut self) -> libc::c_int {
        poll_fn(|cx| {
            for (number, stream) in &mut self.streams {
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return Poll::Ready(*number);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Whether `number`, received by gpukillctl, should be passed on to the command: always,
/// except SIGINT and SIGQUIT when the terminal delivered them to the command already.
pub fn should_forward(number: libc::c_int) -> bool {
    match number {
        libc::SIGINT | libc::SIGQUIT => !terminal_delivers(),
        _ => true,
    }
}

/// Whether the terminal sends its SIGINT and SIGQUIT to the command itself: standard input
/// is a terminal whose foreground process group is gpukillctl's (and so the command's).
fn terminal_delivers() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take no pointers and only read process state;
    // tcgetpgrp on a descriptor that is not a terminal fails with -1, which never equals a
    // process group id.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Starts `command` (program and arguments) with `environment` (checked by
/// [`super::environment::check`]) added to gpukillctl's own, standard input, output and
/// error inherited, in gpukillctl's process group.
pub fn spawn(command: &[String], environment: &BTreeMap<String, String>) -> std::io::Result<Child> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command"))?;
    Command::new(program)
        .args(arguments)
        .envs(environment)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The exit status for a command that could not be started: 127 when it is not found, 126
/// otherwise (not executable, a directory, ...), as a shell's.
pub fn spawn_exit_code(err: &std::io::Error) -> i32 {
    if err.kind() == std::io::ErrorKind::NotFound {
        NOT_FOUND_EXIT
    } else {
        NOT_EXECUTABLE_EXIT
    }
}

/// Sends signal `number` to `child`, unless it has been waited for already (its pid may
/// belong to another process by then).
pub fn send(child: &Child, number: libc::c_int) {
    let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill takes no pointers; `pid` is our child, not yet reaped, so it names no
    // other process. A failure (the child exited meanwhile) leaves nothing to do.
    unsafe {
        libc::kill(pid, number);
    }
}

/// The exit status gpukillctl passes on for `status`, as a shell reports it: the command's
/// code, or 128+N when signal N killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    #[tokio::test]
    async fn statuses_are_reported_as_a_shell_does() {
        async fn status(script: &str) -> i32 {
            let mut child = spawn(&shell(script), &BTreeMap::new()).expect("spawn");
            exit_code(child.wait().await.expect("wait"))
        }
        assert_eq!(status("exit 0").await, 0);
        assert_eq!(status("exit 3").await, 3);
        assert_eq!(status("kill -9 $$").await, 137);
        assert_eq!(status("kill -TERM $$").await, 143);
    }

    #[tokio::test]
    async fn the_environment_is_added() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("env");
        let environment = BTreeMap::from([("GPUKILL_TEST_VALUE".to_owned(), "42".to_owned())]);
        let script = format!("echo \"$GPUKILL_TEST_VALUE $HOME\" > '{}'", file.display());
        let mut child = spawn(&shell(&script), &environment).expect("spawn");
        assert_eq!(exit_code(child.wait().await.expect("wait")), 0);
        let seen = std::fs::read_to_string(&file).expect("read");
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(seen, format!("42 {home}\n"));
    }

    #[tokio::test]
    async fn commands_that_cannot_start_exit_like_in_a_shell() {
        let missing = spawn(&["/nonexistent/gpukill-test".to_owned()], &BTreeMap::new())
            .expect_err("not found");
        assert_eq!(spawn_exit_code(&missing), 127);
        let directory = spawn(&["/".to_owned()], &BTreeMap::new()).expect_err("not executable");
        assert_eq!(spawn_exit_code(&directory), 126);
    }

    #[test]
    fn signals_other_than_the_terminals_are_always_passed_on() {
        for number in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
            assert!(should_forward(number), "{number}");
        }
        // Under a test runner standard input is not the terminal's foreground, or not a
        // terminal at all: whatever it is, the answer follows it.
        assert_eq!(should_forward(libc::SIGINT), !terminal_delivers());
    }
}
