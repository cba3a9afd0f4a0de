//! When accept(2) fails — most often `EMFILE`, out of file descriptors — the listener waits
//! a little longer each time instead of spinning, and says so once per burst. At start the
//! daemon raises its soft `RLIMIT_NOFILE` to the hard limit, so the connection caps, not
//! the descriptor limit, are what a flood meets.

use std::io;
use std::time::Duration;

use super::Bursts;

/// The first wait after a failed accept(2).
const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait.
const LONGEST_WAIT: Duration = Duration::from_secs(1);
/// The backoff of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    wait: Duration,
    failures: Bursts,
}

impl AcceptBackoff {
    /// The backoff of `listener` (named in the log).
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            wait: FIRST_WAIT,
            failures: Bursts::default(),
        }
    }

    /// What accept(2) gave: the connection, or `None` after waiting out a failure (logged
    /// once per burst), so the loop tries again.
    pub async fn check<T>(&mut self, accepted: io::Result<T>) -> Option<T> {
        match accepted {
            Ok(connection) => {
                self.succeeded();
                Some(connection)
            }
            Err(error) => {
                tokio::time::sleep(self.failed(&error)).await;
                None
            }
        }
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.wait = FIRST_WAIT;
    }

    /// Accept failed with `error`: logs it (once per burst, with the count) and returns how
    /// long to wait before the next accept.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        if let Some(failures) = self.failures.count() {
            let hint = if error.raw_os_error() == Some(libc::EMFILE)
                || error.raw_os_error() == Some(libc::ENFILE)
            {
                " (out of file descriptors: raise LimitNOFILE= or lower [limits] max_connections)"
            } else {
                ""
            };
            tracing::error!(
                listener = self.listener,
                failures,
                "cannot accept connections: {error}{hint}; retrying with backoff"
            );
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        wait
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_a_second_and_reset_on_success() {
        let mut backoff = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<Duration> = (0..9).map(|_| backoff.failed(&emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile), Duration::from_millis(10));
    }
}
