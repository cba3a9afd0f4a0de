//! Logging a burst once: a flood can make a listener refuse thousands of connections a
//! second, and each refusal must be counted but not logged.

use std::time::{Duration, Instant};

/// How often a listener logs one burst of refusals or accept failures.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts events and says when to log them: at most once per period, with the count since
/// the last log.
#[derive(Debug)]
pub struct Bursts {
    every: Duration,
    last_logged: Option<Instant>,
    since: u64,
}

impl Default for Bursts {
    /// Logs at most once per [`LOG_EVERY`].
    fn default() -> Self {
        Self::new(LOG_EVERY)
    }
}

impl Bursts {
    /// Logs at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last_logged: None,
            since: 0,
        }
    }

    /// Counts one event; `Some(n)` when it is time to log, `n` events since the last log.
    pub fn count(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_logged_then_one_line_per_period_with_the_count() {
        let mut bursts = Bursts::new(Duration::from_millis(50));
        assert_eq!(bursts.count(), Some(1));
        assert_eq!(bursts.count(), None);
        assert_eq!(bursts.count(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(bursts.count(), Some(3));
    }
}
