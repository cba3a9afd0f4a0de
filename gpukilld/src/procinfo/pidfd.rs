//! Process file descriptors (pidfd, Linux 5.3+): a handle on one process that never refers
//! to another one, even after its PID is reused. Holding one per known GPU process, in an
//! epoll set, lets a tick learn which of them exited with one epoll_wait(2) instead of
//! re-reading /proc.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// A pidfd.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`. Fails when the process does not exist, when the kernel has
    /// no pidfd_open (before 5.3), or when the daemon is out of file descriptors.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new file
        // descriptor or -1; it reads or writes no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "fd out of range"))?;
        // SAFETY: `fd` was just returned by pidfd_open, is open, and nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl PidFd {
    /// Sends `signal` to exactly this process (pidfd_send_signal(2)); it can never reach a
    /// process that reused the PID. Fails with ESRCH once the process has exited.
    pub fn send_signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) takes an fd we own (alive for this call), a signal
        // number, a null siginfo pointer (allowed: the kernel fills in a default) and flags 0.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// An epoll set of pidfds, each tagged with its PID: which of the processes exited, in one
/// call whose cost grows with the exits rather than with the processes watched (a poll(2) of
/// 512 pidfds each tick cost more than the rest of an idle tick's process bookkeeping). A
/// pidfd leaves the set when it is closed.
#[derive(Debug)]
pub struct ExitWatch(Epoll);

impl ExitWatch {
    /// An empty set.
    pub fn new() -> io::Result<ExitWatch> {
        Ok(ExitWatch(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?))
    }

    /// Watches `fd`, the pidfd of `pid`, until it is closed.
    pub fn add(&self, fd: &PidFd, pid: u32) -> io::Result<()> {
        Ok(self
            .0
            .add(&fd.0, EpollEvent::new(EpollFlags::EPOLLIN, u64::from(pid)))?)
    }

    /// The PIDs whose processes have exited, among at most `watched` pidfds in the set;
    /// does not wait. An exited process stays in the answer until its pidfd is closed.
    pub fn exited(&self, watched: usize) -> io::Result<Vec<u32>> {
        let mut events = vec![EpollEvent::empty(); watched.max(1)];
        let ready = loop {
            match self.0.wait(&mut events, EpollTimeout::ZERO) {
                Err(nix::errno::Errno::EINTR) => continue,
                ready => break ready?,
            }
        };
        Ok(events[..ready]
            .iter()
            .filter_map(|event| u32::try_from(event.data()).ok())
            .collect())
    }
}

/// Waits until every process in `fds` has exited or `timeout` has passed, whichever is
/// first; returns for each whether it exited. One thread waits for all of them.
pub fn wait_for_exit(fds: &[&PidFd], timeout: std::time::Duration) -> io::Result<Vec<bool>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut done = vec![false; fds.len()];
    loop {
        let waiting: Vec<usize> = (0..fds.len()).filter(|i| !done[*i]).collect();
        if waiting.is_empty() {
            return Ok(done);
        }
        let mut polls: Vec<PollFd<'_>> = waiting
            .iter()
            .map(|i| PollFd::new(fds[*i].0.as_fd(), PollFlags::POLLIN))
            .collect();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        match nix::poll::poll(
            &mut polls,
            PollTimeout::try_from(left_ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
        for (poll, index) in polls.iter().zip(&waiting) {
            if poll.revents().is_some_and(|events| !events.is_empty()) {
                done[*index] = true;
            }
        }
        if left.is_zero() {
            return Ok(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = PidFd::open(child.id()).expect("pidfd_open");
        assert_eq!(
            wait_for_exit(&[&fd], std::time::Duration::ZERO).expect("poll"),
            vec![false]
        );
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(
            wait_for_exit(&[&fd], std::time::Duration::ZERO).expect("poll"),
            vec![true]
        );
    }

    #[test]
    fn a_signal_reaches_the_process_and_the_wait_sees_it_exit() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = PidFd::open(child.id()).expect("pidfd_open");
        let started = std::time::Instant::now();
        assert_eq!(
            wait_for_exit(&[&fd], std::time::Duration::from_millis(100)).expect("poll"),
            vec![false]
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
        fd.send_signal(nix::sys::signal::Signal::SIGTERM)
            .expect("signal");
        assert_eq!(
            wait_for_exit(&[&fd], std::time::Duration::from_secs(5)).expect("poll"),
            vec![true]
        );
        child.wait().expect("reap");
        assert!(fd.send_signal(nix::sys::signal::Signal::SIGTERM).is_err());
    }

    #[test]
    fn the_exit_watch_names_the_processes_that_exited_until_their_pidfds_close() {
        let spawn = || {
            std::process::Command::new("/bin/sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep")
        };
        let (mut ending, mut staying) = (spawn(), spawn());
        let watch = ExitWatch::new().expect("epoll");
        let ending_fd = PidFd::open(ending.id()).expect("pidfd_open");
        let staying_fd = PidFd::open(staying.id()).expect("pidfd_open");
        watch.add(&ending_fd, ending.id()).expect("add");
        watch.add(&staying_fd, staying.id()).expect("add");
        assert_eq!(watch.exited(2).expect("wait"), Vec::<u32>::new());
        ending.kill().expect("kill");
        ending.wait().expect("reap");
        assert_eq!(watch.exited(2).expect("wait"), vec![ending.id()]);
        assert_eq!(watch.exited(2).expect("wait"), vec![ending.id()]);
        drop(ending_fd);
        assert_eq!(watch.exited(2).expect("wait"), Vec::<u32>::new());
        staying.kill().expect("kill");
        staying.wait().expect("reap");
    }

    #[test]
    fn a_missing_process_has_no_pidfd() {
        assert!(PidFd::open(999_999_999).is_err());
    }
}
