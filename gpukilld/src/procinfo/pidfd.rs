//! Process file descriptors (pidfd, Linux 5.3+): a handle on one process that never refers
//! to another one, even after its PID is reused. Holding one per known GPU process lets a
//! tick learn which of them exited with a single poll(2) instead of re-reading /proc.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};

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

/// For each pidfd, whether its process has exited (a pidfd polls readable then), all in
/// one non-blocking poll(2).
pub fn exited(fds: &[&PidFd]) -> io::Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd.0.as_fd(), PollFlags::POLLIN))
        .collect();
    nix::poll::poll(&mut polls, PollTimeout::ZERO)?;
    Ok(polls
        .iter()
        .map(|poll| poll.revents().is_some_and(|events| !events.is_empty()))
        .collect())
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
        assert_eq!(exited(&[&fd]).expect("poll"), vec![false]);
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(exited(&[&fd]).expect("poll"), vec![true]);
    }

    #[test]
    fn a_missing_process_has_no_pidfd() {
        assert!(PidFd::open(999_999_999).is_err());
    }
}
