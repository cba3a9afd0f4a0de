//! Uploading each closed hour's usage to a central server, store-and-forward: the store
//! queues an hour's payload in its outbox in the same transaction as the hour's rollup
//! (`store::outbox`); the uploader sends the oldest due entry, records every attempt, and
//! marks an entry delivered only when the server echoes the content hash it stored. Failures
//! back off exponentially with full jitter; a 4xx other than 408/429 rejects the entry; after
//! `max_attempts` failures it is parked. `payload` is the wire format, shared with `ingest`.

pub mod client;
/// The wire format, shared with the ingest side and the store's outbox.
pub use crate::usage_payload as payload;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::store::{AttemptResult, Database, OutboxStatus, unix_ms};
use client::{Answer, UploadClient};

/// The longest the uploader sleeps before looking for new hours.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Retry timing and limits.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first retry's ceiling.
    pub retry_min: Duration,
    /// The longest wait.
    pub retry_max: Duration,
    /// Attempts before an entry is parked.
    pub max_attempts: u32,
}

/// The wait before attempt `attempts + 1` after `attempts` failures: uniformly random in
/// `[0, min(retry_max, retry_min * 2^(attempts-1))]` ("full jitter").
pub fn backoff(policy: &Policy, attempts: u32, random: u64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(31);
    let ceiling = policy
        .retry_min
        .saturating_mul(1u32 << exponent)
        .min(policy.retry_max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % millis.saturating_add(1))
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // No system randomness: a clock-derived value still spreads retries.
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos().into());
    }
    u64::from_le_bytes(bytes)
}

/// Sends due outbox entries, oldest first, until `stop`.
pub async fn run(
    log: Arc<Database>,
    mut client: UploadClient,
    policy: Policy,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(url = client.url(), "uploading hourly usage");
    let mut last_store_error: Option<String> = None;
    loop {
        let now = unix_ms(SystemTime::now());
        let wait = match log.read(move |store| store.outbox_due(now)).await {
            Ok((Some(due), _)) => {
                last_store_error = None;
                let key = payload::idempotency_key(&due.node_id, due.entry.hour_ms);
                let started = Instant::now();
                let answer = client.send(&due.payload, &due.entry.sha256, &key).await;
                let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let attempt_ms = unix_ms(SystemTime::now());
                let attempts = due.entry.attempts + 1;
                let result = match &answer {
                    Answer::Stored { status } => AttemptResult::Delivered {
                        http_status: *status,
                    },
                    Answer::Refused { status, error } => AttemptResult::Rejected {
                        http_status: *status,
                        error: error.clone(),
                    },
                    Answer::Retry { status, error } => AttemptResult::Failed {
                        http_status: *status,
                        error: error.clone(),
                        next_attempt_ms: attempt_ms.saturating_add(
                            i64::try_from(backoff(&policy, attempts, random()).as_millis())
                                .unwrap_or(i64::MAX),
                        ),
                    },
                };
                let hour = due.entry.hour_ms;
                let max_attempts = policy.max_attempts;
                let recorded = log
                    .write(move |store| {
                        store.outbox_record(hour, attempt_ms, latency_ms, &result, max_attempts)
                    })
                    .await;
                match (&answer, recorded) {
                    (_, Err(error)) => {
                        tracing::warn!(hour_ms = hour, error = %crate::errors::chain(&error), "cannot record an upload attempt");
                        IDLE_POLL
                    }
                    (Answer::Stored { .. }, Ok(_)) => {
                        tracing::debug!(hour_ms = hour, attempts, latency_ms, "hour delivered");
                        Duration::ZERO
                    }
                    (Answer::Refused { error, .. }, Ok(_)) => {
                        tracing::warn!(hour_ms = hour, %error, "the server rejected the hour: kept as rejected");
                        Duration::ZERO
                    }
                    (Answer::Retry { error, .. }, Ok(Some(OutboxStatus::Parked))) => {
                        tracing::error!(hour_ms = hour, attempts, %error, "upload failed {attempts} times: parked (gpukillctl uploads retry)");
                        Duration::ZERO
                    }
                    (Answer::Retry { error, .. }, Ok(_)) => {
                        tracing::info!(hour_ms = hour, attempts, %error, "upload failed; will retry");
                        Duration::ZERO
                    }
                }
            }
            Ok((None, next)) => {
                last_store_error = None;
                next.map_or(IDLE_POLL, |next| {
                    Duration::from_millis(u64::try_from(next.saturating_sub(now)).unwrap_or(0))
                        .min(IDLE_POLL)
                })
            }
            Err(error) => {
                let message = crate::errors::chain(&error);
                if last_store_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "cannot read the upload outbox; will retry");
                    last_store_error = Some(message);
                }
                IDLE_POLL
            }
        };
        if wait.is_zero() {
            if *stop.borrow() {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let policy = Policy {
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            max_attempts: 10,
        };
        assert_eq!(backoff(&policy, 1, 0), Duration::ZERO);
        assert_eq!(backoff(&policy, 1, 1000), Duration::from_secs(1));
        assert_eq!(backoff(&policy, 1, 1001), Duration::ZERO);
        assert_eq!(backoff(&policy, 4, 8000), Duration::from_secs(8));
        assert!(backoff(&policy, 4, 8001) < Duration::from_secs(8));
        assert_eq!(
            backoff(&policy, 30, u64::MAX % 3_600_001),
            Duration::from_millis(u64::MAX % 3_600_001)
        );
        assert!(backoff(&policy, 30, u64::MAX) <= Duration::from_secs(3600));
    }
}
