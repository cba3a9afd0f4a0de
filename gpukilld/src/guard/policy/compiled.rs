//! The compiled policy: the checked file with its regexes compiled, its groups' members
//! resolved and its entries indexed, and the questions the evaluator asks of it (who is
//! named by a list, which limits are in force for a user now, which windows are open).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use regex::Regex;

use super::schema::{Limits, Policy, UserPolicy};
use crate::guard::rogue::{Identity, RogueScorer};
use crate::units::LocalTime;

/// A checked policy, ready to evaluate: the parsed file with its regexes compiled and its
/// groups' members resolved.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The policy as written.
    pub policy: Policy,
    /// `protected_processes`, compiled.
    pub protected_patterns: Vec<Regex>,
    /// Each `[[group]]`'s members (user names and uids as written, plus the Unix group's).
    pub group_members: Vec<Members>,
    /// `[rogue]`, compiled.
    pub rogue: RogueScorer,
    /// `[[group]]` index by name.
    groups_by_name: HashMap<String, usize>,
    /// Unix groups named `@name` in user lists that are not `[[group]]`s, resolved at load.
    unix_groups: HashMap<String, Members>,
    /// `[[user]]` index by name, and by uid for numeric names.
    users_by_name: HashMap<String, usize>,
    users_by_uid: HashMap<u32, usize>,
    /// The rogue identity of each process scored so far (pid, start ticks): it does not
    /// change while the process runs, and is forgotten with the policy.
    pub rogue_identities: RogueIdentities,
}

/// The rogue identity of each process scored so far, by (pid, start ticks).
pub type RogueIdentities = Arc<Mutex<HashMap<(u32, u64), Arc<Identity>>>>;

/// A set of users: names, and uids for the entries that are numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    names: HashSet<String>,
    uids: HashSet<u32>,
}

impl Members {
    /// The users `entries` names: user names, and uids for the entries that are numbers.
    pub(super) fn new(entries: impl IntoIterator<Item = String>) -> Members {
        let mut members = Members::default();
        for entry in entries {
            if let Ok(uid) = entry.parse::<u32>() {
                members.uids.insert(uid);
            }
            members.names.insert(entry);
        }
        members
    }

    /// Whether `user` (by name) or `uid` is one of them. No allocation: this runs for every
    /// process on every tick.
    pub fn contains(&self, user: &str, uid: u32) -> bool {
        self.uids.contains(&uid) || self.names.contains(user)
    }
}

impl CompiledPolicy {
    /// The compiled form of `policy`, checked by [`CompiledPolicy::parse`], with what it
    /// compiled and resolved: indexes its `[[group]]` and `[[user]]` entries.
    pub(super) fn new(
        policy: Policy,
        protected_patterns: Vec<Regex>,
        group_members: Vec<Members>,
        rogue: RogueScorer,
        unix_groups: HashMap<String, Members>,
    ) -> CompiledPolicy {
        let groups_by_name: HashMap<String, usize> = policy
            .groups
            .iter()
            .enumerate()
            .map(|(n, group)| (group.name.clone(), n))
            .collect();
        let mut users_by_name = HashMap::new();
        let mut users_by_uid = HashMap::new();
        for (n, user) in policy.users.iter().enumerate() {
            users_by_name.insert(user.name.clone(), n);
            if let Ok(uid) = user.name.parse::<u32>() {
                users_by_uid.insert(uid, n);
            }
        }
        CompiledPolicy {
            policy,
            protected_patterns,
            group_members,
            rogue,
            groups_by_name,
            unix_groups,
            users_by_name,
            users_by_uid,
            rogue_identities: Arc::default(),
        }
    }

    /// Whether `user` (name) / `uid` is one of `names`: a user name, a uid in decimal, or
    /// `@group` (a `[[group]]` of this policy, else a Unix group resolved by
    /// `unix_group_members`).
    pub fn names_user(&self, names: &[String], user: &str, uid: u32) -> bool {
        names.iter().any(|name| match name.strip_prefix('@') {
            Some(group) => match self.groups_by_name.get(group) {
                Some(n) => self.is_member(*n, user, uid),
                None => self
                    .unix_groups
                    .get(group)
                    .is_some_and(|members| members.contains(user, uid)),
            },
            None => name == user || name.parse::<u32>() == Ok(uid),
        })
    }

    /// Whether `user` / `uid` is a member of `[[group]]` number `n`.
    pub fn is_member(&self, n: usize, user: &str, uid: u32) -> bool {
        self.group_members
            .get(n)
            .is_some_and(|members| members.contains(user, uid))
    }

    /// The `[[user]]` entry of `user` / `uid`, if there is one (by name first).
    pub fn user_entry(&self, user: &str, uid: u32) -> Option<&UserPolicy> {
        self.users_by_name
            .get(user)
            .or_else(|| self.users_by_uid.get(&uid))
            .and_then(|n| self.policy.users.get(*n))
    }

    /// The limits in force for `user` / `uid` at `now`.
    pub fn limits_for(&self, user: &str, uid: u32, now: LocalTime) -> Limits {
        let mut limits = self.policy.defaults.clone();
        if let Some(entry) = self.user_entry(user, uid) {
            limits = limits.overridden_by(&entry.limits);
        }
        for window in &self.policy.windows {
            if window.contains(now)
                && (window.applies_to.is_empty() || self.names_user(&window.applies_to, user, uid))
            {
                limits = limits.overridden_by(&window.limits);
            }
        }
        limits
    }

    /// Names of the windows active at `now`.
    pub fn active_windows(&self, now: LocalTime) -> Vec<&str> {
        self.policy
            .windows
            .iter()
            .filter(|window| window.contains(now))
            .map(|window| window.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testutil::{GIB, at, parse};
    use super::super::{Bytes, Mode, Weekday};

    const EXAMPLE: &str = r#"
mode = "hard"
min_duration = "2s"

[defaults]
max_memory_per_process = "40GiB"
max_duration = "24h"

[[user]]
name = "alice"
max_memory_per_process = "20GiB"
max_processes = 2

[[group]]
name = "students"
members = ["bob", "1005"]
max_memory_total = 85899345920

[[gpu]]
index = 3
allowed_users = ["alice", "@students"]
reserved_memory = "8GiB"

[[window]]
name = "nights"
days = ["fri"]
start = "22:00"
end = "06:00"
applies_to = ["@students"]
max_memory_per_process = "70GiB"
"#;

    #[test]
    fn the_example_parses_and_merges_limits() {
        let compiled = parse(EXAMPLE).unwrap();
        let policy = &compiled.policy;
        assert_eq!(policy.mode, Mode::Hard);
        assert_eq!(policy.min_duration, Duration::from_secs(2));
        assert_eq!(policy.grace, Duration::from_secs(30));
        let noon = at(Weekday::Wed, 12, 0);
        let alice = compiled.limits_for("alice", 1000, noon);
        assert_eq!(alice.max_memory_per_process, Some(Bytes(20 * GIB)));
        assert_eq!(alice.max_duration, Some(Duration::from_secs(86_400)));
        assert_eq!(alice.max_processes, Some(2));
        let carol = compiled.limits_for("carol", 1002, noon);
        assert_eq!(carol.max_memory_per_process, Some(Bytes(40 * GIB)));
        assert_eq!(carol.max_processes, None);
        assert!(compiled.names_user(&["@students".into()], "bob", 1004));
        assert!(compiled.names_user(&["@students".into()], "dave", 1005));
        assert!(!compiled.names_user(&["@students".into()], "carol", 1002));
        assert!(compiled.names_user(&["1002".into()], "carol", 1002));
    }

    #[test]
    fn a_window_crossing_midnight_covers_the_next_morning() {
        let compiled = parse(EXAMPLE).unwrap();
        let limit = |time| {
            compiled
                .limits_for("bob", 1004, time)
                .max_memory_per_process
                .unwrap()
                .0
                / GIB
        };
        // Friday's window: Friday 22:00 to Saturday 06:00.
        assert_eq!(limit(at(Weekday::Fri, 21, 59)), 40);
        assert_eq!(limit(at(Weekday::Fri, 22, 0)), 70);
        assert_eq!(limit(at(Weekday::Sat, 5, 59)), 70);
        assert_eq!(limit(at(Weekday::Sat, 6, 0)), 40);
        // Thursday's night is not in the window; Friday morning belongs to Thursday's.
        assert_eq!(limit(at(Weekday::Fri, 1, 0)), 40);
        assert_eq!(limit(at(Weekday::Sat, 23, 0)), 40);
        // Not a student: the window does not apply.
        let alice = compiled.limits_for("alice", 1000, at(Weekday::Fri, 23, 0));
        assert_eq!(alice.max_memory_per_process, Some(Bytes(20 * GIB)));
        assert_eq!(compiled.active_windows(at(Weekday::Sat, 1, 0)), ["nights"]);
    }
}
