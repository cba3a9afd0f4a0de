//! `gpukillctl guard ...`: the guard's status, violations, mode and policy.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{OutputFormat, parse_duration};

/// `gpukillctl guard ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GuardCommand {
    /// The policy in force, its mode, and the violations being followed
    Status(GuardOutputArgs),
    /// Evaluate the policy against the current snapshot without acting, and say what the
    /// guard would do about each violation
    Test(GuardOutputArgs),
    /// The violations the guard recorded (warnings, dry-run "would act", held-back kills);
    /// its kills are in `gpukillctl events --type kill`
    Violations(GuardViolationsArgs),
    /// Turn the guard on (admins only)
    Enable,
    /// Turn the guard off: it stops evaluating and acting (admins only)
    Disable,
    /// Set what the guard does about violations (admins only)
    Mode {
        /// dry-run: record only; soft: warn, act after the grace; hard: act after
        /// min_duration
        #[arg(value_enum)]
        mode: GuardModeArg,
    },
    /// Show or change the policy's entries
    #[command(subcommand)]
    Policy(GuardPolicyCommand),
    /// Print the policy file (to save it or move it to another node)
    Export,
    /// Replace the policy with FILE, checked first; an invalid file changes nothing
    /// (admins only)
    Import {
        /// The policy file to load (`-` for standard input)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// The guard's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuardModeArg {
    /// Record what would be done; never act.
    DryRun,
    /// Warn, then act if the violation outlasts the grace.
    Soft,
    /// Act once the violation has lasted min_duration.
    Hard,
}

impl From<GuardModeArg> for gpukill_proto::v1::GuardMode {
    fn from(arg: GuardModeArg) -> Self {
        use gpukill_proto::v1::GuardMode as Pb;
        match arg {
            GuardModeArg::DryRun => Pb::DryRun,
            GuardModeArg::Soft => Pb::Soft,
            GuardModeArg::Hard => Pb::Hard,
        }
    }
}

/// `gpukillctl guard policy ...`: changes are for admins; the daemon edits the file
/// (keeping its comments), checks it as a whole, writes it atomically and loads it.
#[derive(Debug, Clone, Subcommand)]
pub enum GuardPolicyCommand {
    /// Print the policy file
    Show,
    /// Add limits for a user (or replace that user's entry)
    AddUser(UserLimitsArgs),
    /// Remove a user's entry
    RemoveUser {
        /// The user name (or uid) of the entry
        name: String,
    },
    /// Add a group with aggregate limits (or replace it)
    AddGroup(GroupLimitsArgs),
    /// Remove a group's entry
    RemoveGroup {
        /// The group's name in the policy
        name: String,
    },
    /// Add rules for a GPU (or replace them)
    AddGpu(GpuRulesArgs),
    /// Remove a GPU's entry
    RemoveGpu {
        /// The GPU index
        index: u32,
    },
}

/// The limits of `guard policy add-user`.
#[derive(Debug, Clone, Args)]
pub struct UserLimitsArgs {
    /// The user name, or a numeric uid
    pub name: String,
    /// GPU memory one process may use, e.g. 20GiB
    #[arg(long, value_name = "SIZE")]
    pub max_memory_per_process: Option<String>,
    /// GPU memory all the user's processes may use together
    #[arg(long, value_name = "SIZE")]
    pub max_memory_total: Option<String>,
    /// Mean SM utilization of one process over --utilization-window, percent
    #[arg(long, value_name = "PCT")]
    pub max_utilization_pct: Option<f64>,
    /// The window of --max-utilization-pct (default 5m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub utilization_window: Option<Duration>,
    /// How long one process may run, e.g. 24h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// GPU processes at once
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u32>,
    /// The only GPUs the user may use, e.g. 0,1
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub allowed_gpus: Option<Vec<u32>>,
    /// GPUs the user may not use
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub blocked_gpus: Option<Vec<u32>>,
}

/// The limits of `guard policy add-group`.
#[derive(Debug, Clone, Args)]
pub struct GroupLimitsArgs {
    /// The group's name in the policy (`@NAME` in user lists)
    pub name: String,
    /// Members from this Unix group
    #[arg(long, value_name = "GROUP")]
    pub unix_group: Option<String>,
    /// Listed members (user names or uids)
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub members: Vec<String>,
    /// GPU memory of all the members' processes together
    #[arg(long, value_name = "SIZE")]
    pub max_memory_total: Option<String>,
    /// Sum of the members' processes' mean SM utilization (200 = two GPUs' worth)
    #[arg(long, value_name = "PCT")]
    pub max_utilization_pct: Option<f64>,
    /// GPU processes of all members at once
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u32>,
}

/// The rules of `guard policy add-gpu`.
#[derive(Debug, Clone, Args)]
pub struct GpuRulesArgs {
    /// The GPU index
    pub index: u32,
    /// Only these users (names, uids or @group) may use it
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub allowed_users: Option<Vec<String>>,
    /// These users may not
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub blocked_users: Vec<String>,
    /// GPU memory one process may use on it
    #[arg(long, value_name = "SIZE")]
    pub max_memory_per_process: Option<String>,
    /// Memory at the top of the GPU nobody may use
    #[arg(long, value_name = "SIZE")]
    pub reserved_memory: Option<String>,
}

/// The output option of `guard status` and `guard test`.
#[derive(Debug, Clone, Args)]
pub struct GuardOutputArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl guard violations`.
#[derive(Debug, Clone, Args)]
pub struct GuardViolationsArgs {
    /// Only violations of the last DURATION, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// At most N, the newest
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub limit: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `guard mode` takes is what `guard status` shows.
    #[test]
    fn mode_names_are_the_output_names() {
        for arg in GuardModeArg::value_variants() {
            let value = arg.to_possible_value().expect("visible value");
            let sent = gpukill_proto::v1::GuardMode::from(*arg) as i32;
            assert_eq!(crate::render::guard_mode_name(sent), value.get_name());
        }
    }
}
