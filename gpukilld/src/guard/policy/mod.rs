//! The guard policy file (`guard.toml`): its schema, parsing and validation.
//!
//! ```toml
//! enabled = true
//! mode = "soft"                 # dry-run | soft | hard
//! grace = "30s"                 # soft: warn, then act if the violation outlasts this
//! min_duration = "10s"          # hard: act once the violation has lasted this long
//! kill_timeout = "5s"           # SIGTERM, then SIGKILL after this
//! max_kills_per_minute = 10     # for the whole node
//! hysteresis_pct = 5            # a violation ends once the value is 5 % under its limit
//! protected_users = ["backup"]  # never acted on (added to the daemon's own protections)
//! protected_processes = ["^sshd$"]
//!
//! [defaults]                    # users without a [[user]] entry
//! max_memory_per_process = "40GiB"
//!
//! [[user]]
//! name = "alice"                # a user name or a numeric uid
//! max_memory_per_process = "20GiB"
//! max_memory_total = "60GiB"
//! max_utilization_pct = 90      # a process's mean SM utilization over utilization_window
//! utilization_window = "10m"
//! max_duration = "24h"          # how long one process may run
//! max_processes = 4             # GPU processes at once
//! allowed_gpus = [0, 1]
//! blocked_gpus = [3]
//!
//! [[group]]
//! name = "students"
//! unix_group = "students"       # members from the group database,
//! members = ["bob"]             # and/or listed
//! max_memory_total = "80GiB"    # summed over the members' processes
//! max_utilization_pct = 200     # summed: 200 = two GPUs' worth
//! max_processes = 6
//!
//! [[gpu]]
//! index = 3
//! allowed_users = ["alice", "@students"]   # @name: a [[group]] of this file, else a Unix group
//! blocked_users = ["mallory"]
//! max_memory_per_process = "10GiB"
//! reserved_memory = "8GiB"      # nobody may use the last 8 GiB of this GPU
//!
//! [[window]]                    # local time; overrides the user limits while active
//! name = "nights"
//! days = ["mon", "tue", "wed", "thu", "fri"]   # the day the window starts (default: all)
//! start = "22:00"
//! end = "06:00"                 # before start: the window crosses midnight
//! applies_to = ["@students"]    # default: everyone
//! max_memory_per_process = "70GiB"
//!
//! [rogue]                       # miner/abuse scoring (see guard::rogue); always reported
//! whitelist = { users = ["ci-bot"] }
//!
//! [notify]
//! webhook = "http://127.0.0.1:9000/gpukill"   # a JSON POST per violation and action
//! webhook_timeout = "5s"
//! webhook_retries = 3
//! terminals = true              # warn the offending user on their terminals
//!
//! [reservation]                 # GPUs used without a reservation or by the wrong user;
//! enforce = true                # always reported, acted on only with enforce = true
//! ```
//!
//! With `rogue_act_at = "high"` (top level) the guard also acts on processes whose rogue
//! score reaches that risk level, as on any other violation; without it findings are only
//! reported (`guard status`, `guard test`, `audit --rogue`).
//!
//! A user's effective limits: `[defaults]`, each field replaced by the user's `[[user]]`
//! entry where it sets one, then by every active `[[window]]` that applies to the user (in
//! file order). Errors name the line of the offending table and what is wrong; nothing of a
//! file that fails is used.

mod compiled;
mod parse;
mod schema;

pub use crate::units::{Bytes, LocalTime, TimeOfDay, Weekday, parse_bytes};
pub use compiled::{CompiledPolicy, Members, RogueIdentities};
pub use parse::{PolicyError, unix_group_members};
pub use schema::{
    DEFAULT_UTILIZATION_WINDOW, GpuPolicy, GroupPolicy, Limits, Mode, Policy, ReservationRule,
    TimeWindow, UserPolicy,
};

/// What the tests of the policy's parts share.
#[cfg(test)]
mod testutil {
    use super::{CompiledPolicy, LocalTime, PolicyError, Weekday};

    pub(super) const GIB: u64 = 1 << 30;

    fn no_groups(_: &str) -> Option<Vec<String>> {
        None
    }

    pub(super) fn parse(text: &str) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::parse(text, Some("guard.toml"), &no_groups)
    }

    pub(super) fn at(weekday: Weekday, hour: u16, minute: u16) -> LocalTime {
        LocalTime {
            weekday,
            minute: hour * 60 + minute,
        }
    }
}
