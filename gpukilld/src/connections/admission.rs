//! Connection slots: one caller (a uid, a client address) may hold at most `per_key`
//! connections of a listener, and all callers together at most `total`, so that no caller
//! can take the daemon's file descriptors or memory away from the others. A privileged
//! caller (root on the Unix socket) may use a small reserve above `total`, so an admin can
//! still look while someone floods.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Bursts;

/// Connections above `total` that a privileged caller may still open.
pub const PRIVILEGED_RESERVE: usize = 16;

/// A caller of the Unix socket, as connection slots count it: the uid of its kernel
/// credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerUid(pub u32);

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.0)
    }
}

/// A TCP client, as connection slots count it: its IP address (any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddress(pub std::net::IpAddr);

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {}", self.0)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The caller holds its share already.
    #[error(
        "{key} holds {limit} connections to {listener}, the most one caller may ({setting}); close some (other gpukillctl watch or run sessions) and retry"
    )]
    PerCaller {
        /// The listener.
        listener: &'static str,
        /// The caller (`uid 1000`, `address 10.0.0.5`).
        key: String,
        /// The share.
        limit: usize,
        /// The setting that sets it.
        setting: &'static str,
    },
    /// Every connection slot is taken.
    #[error(
        "{listener} holds {limit} connections, the most it serves at once ({setting}); retry shortly"
    )]
    Full {
        /// The listener.
        listener: &'static str,
        /// The limit.
        limit: usize,
        /// The setting that sets it.
        setting: &'static str,
    },
}

/// Counters a listener's admission keeps (for metrics and health).
#[derive(Debug, Default)]
pub struct AdmissionCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused because their caller held its share.
    pub refused_per_caller: AtomicU64,
    /// Connections refused because every slot was taken.
    pub refused_full: AtomicU64,
    /// Connections closed by a deadline (first bytes, silence, a peer not reading).
    pub timed_out: AtomicU64,
}

struct State<K> {
    by_key: HashMap<K, usize>,
    total: usize,
    refusals: Bursts,
}

struct Shared<K> {
    listener: &'static str,
    per_key: usize,
    per_key_setting: &'static str,
    total: usize,
    total_setting: &'static str,
    state: Mutex<State<K>>,
    counters: Arc<AdmissionCounters>,
}

/// The connection slots of one listener.
pub struct Admission<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Admission<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Limits of one listener, with the names of the settings that set them (for the refusal).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one caller may hold.
    pub per_caller: usize,
    /// Its setting, e.g. `[limits] connections_per_uid`.
    pub per_caller_setting: &'static str,
    /// Connections all callers may hold together.
    pub total: usize,
    /// Its setting.
    pub total_setting: &'static str,
}

impl<K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static> Admission<K> {
    /// Slots for `listener` (named in refusals and logs).
    pub fn new(listener: &'static str, limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                listener,
                per_key: limits.per_caller.max(1),
                per_key_setting: limits.per_caller_setting,
                total: limits.total.max(1),
                total_setting: limits.total_setting,
                state: Mutex::new(State {
                    by_key: HashMap::new(),
                    total: 0,
                    refusals: Bursts::default(),
                }),
                counters: Arc::new(AdmissionCounters::default()),
            }),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Arc<AdmissionCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// Takes a slot for `key`, or says why not (counted, and logged once per burst). A
    /// `privileged` caller may use [`PRIVILEGED_RESERVE`] slots above the total.
    pub fn admit(&self, key: K, privileged: bool) -> Result<Permit, Refused> {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        let held = state.by_key.get(&key).copied().unwrap_or(0);
        let total_limit = if privileged {
            shared.total + PRIVILEGED_RESERVE
        } else {
            shared.total
        };
        let refusal = if held >= shared.per_key {
            shared
                .counters
                .refused_per_caller
                .fetch_add(1, Ordering::Relaxed);
            Some(Refused::PerCaller {
                listener: shared.listener,
                key: key.to_string(),
                limit: shared.per_key,
                setting: shared.per_key_setting,
            })
        } else if state.total >= total_limit {
            shared.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            Some(Refused::Full {
                listener: shared.listener,
                limit: shared.total,
                setting: shared.total_setting,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if let Some(refused) = state.refusals.count() {
                tracing::warn!(refused, "connection refused: {refusal}");
            }
            return Err(refusal);
        }
        *state.by_key.entry(key.clone()).or_insert(0) += 1;
        state.total += 1;
        shared.counters.open.fetch_add(1, Ordering::Relaxed);
        drop(state);
        let shared = Arc::clone(&self.shared);
        Ok(Permit {
            release: Some(Box::new(move || shared.release(&key))),
        })
    }

    /// Connections `key` holds now.
    #[cfg(test)]
    fn held(&self, key: &K) -> usize {
        lock(&self.shared.state)
            .by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<K: Hash + Eq> Shared<K> {
    /// Gives `key`'s slot back.
    fn release(&self, key: &K) {
        let mut state = lock(&self.state);
        if let Some(held) = state.by_key.get_mut(key) {
            *held -= 1;
            if *held == 0 {
                state.by_key.remove(key);
            }
        }
        state.total = state.total.saturating_sub(1);
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection slot; dropping it gives the slot back.
pub struct Permit {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while counting leaves consistent enough counts: keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_caller: usize, total: usize) -> Admission<u32> {
        Admission::new(
            "the test socket",
            Limits {
                per_caller,
                per_caller_setting: "[limits] connections_per_uid",
                total,
                total_setting: "[limits] max_connections",
            },
        )
    }

    #[test]
    fn one_caller_gets_its_share_and_no_more() {
        let slots = admission(2, 10);
        let first = slots.admit(1000, false).unwrap();
        let _second = slots.admit(1000, false).unwrap();
        let refused = slots.admit(1000, false).unwrap_err();
        assert!(
            refused.to_string().contains("uid")
                || refused.to_string().contains("1000 holds 2 connections"),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("connections_per_uid"),
            "{refused}"
        );
        // Another caller is not affected.
        let _other = slots.admit(1001, false).unwrap();
        drop(first);
        let _again = slots.admit(1000, false).unwrap();
        let counters = slots.counters();
        assert_eq!(counters.refused_per_caller.load(Ordering::Relaxed), 1);
        assert_eq!(counters.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_total_is_shared_and_root_has_a_reserve() {
        let slots = admission(100, 3);
        let held: Vec<Permit> = (0..3).map(|uid| slots.admit(uid, false).unwrap()).collect();
        let refused = slots.admit(7, false).unwrap_err();
        assert!(
            matches!(refused, Refused::Full { limit: 3, .. }),
            "{refused}"
        );
        let root: Vec<Permit> = (0..PRIVILEGED_RESERVE)
            .map(|_| slots.admit(0, true).unwrap())
            .collect();
        assert!(slots.admit(0, true).is_err());
        drop(root);
        drop(held);
        assert_eq!(slots.counters().open.load(Ordering::Relaxed), 0);
        assert_eq!(slots.held(&0), 0);
    }
}
