//! `gpukillctl kill` and `gpukillctl reset`: the commands that act on processes and GPUs, each
//! with exactly one selector.

use clap::Args;
use gpukill_proto::v1::kill_request::Target;
use gpukill_proto::v1::reset_request;

use super::OutputFormat;

/// Arguments of `gpukillctl kill`.
#[derive(Debug, Clone, Args)]
pub struct KillArgs {
    /// Which processes: exactly one selector.
    #[command(flatten)]
    pub target: KillTargetArgs,

    /// Kill every match; without it, a selection that matches several processes is only listed
    #[arg(long)]
    pub batch: bool,

    /// Seconds to wait for SIGTERM to take effect, 1 to 3600
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=3600)
    )]
    pub timeout_secs: u32,

    /// Send SIGKILL to what still runs after the timeout; also allows a --pid that is not a
    /// GPU process
    #[arg(long)]
    pub force: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl kill`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct KillTargetArgs {
    /// The process with this PID
    #[arg(long)]
    pub pid: Option<u32>,

    /// The GPU processes whose name or command line match REGEX (Rust regex syntax; list
    /// --filter REGEX --details shows them)
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Every process on GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Every GPU process of this user (a name or a numeric uid)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

impl KillTargetArgs {
    /// The request's selection; `None` only when no selector is set, which clap prevents.
    pub fn target(&self) -> Option<Target> {
        if let Some(pid) = self.pid {
            Some(Target::Pid(pid))
        } else if let Some(filter) = &self.filter {
            Some(Target::Filter(filter.clone()))
        } else if let Some(gpu) = self.gpu {
            Some(Target::GpuIndex(gpu))
        } else {
            self.user.clone().map(Target::User)
        }
    }
}

/// Arguments of `gpukillctl reset`.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Which GPUs: exactly one selector.
    #[command(flatten)]
    pub target: ResetTargetArgs,

    /// Kill the GPU's processes first (SIGTERM, then SIGKILL after 5 s); without it, a GPU
    /// with processes is not reset
    #[arg(long)]
    pub force: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl reset`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct ResetTargetArgs {
    /// The NVIDIA GPU with index N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Every NVIDIA GPU
    #[arg(long)]
    pub all: bool,
}

impl ResetTargetArgs {
    /// The request's selection; `None` only when no selector is set, which clap prevents.
    pub fn target(&self) -> Option<reset_request::Target> {
        if let Some(gpu) = self.gpu {
            Some(reset_request::Target::GpuIndex(gpu))
        } else {
            self.all.then_some(reset_request::Target::All(true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn kill_args(args: &[&str]) -> KillArgs {
        let argv = [&["gpukillctl", "kill"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Kill(args) => args,
            other => panic!("expected kill, got {other:?}"),
        }
    }

    #[test]
    fn kill_needs_exactly_one_selector() {
        let none = usage_error(&["gpukillctl", "kill", "--batch"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let two = usage_error(&["gpukillctl", "kill", "--pid", "7", "--filter", "x"]);
        assert_eq!(two.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&two), 3);
        let twice = usage_error(&["gpukillctl", "kill", "--gpu", "0", "--user", "bob"]);
        assert_eq!(crate::error::clap_exit_code(&twice), 3);
    }

    #[test]
    fn kill_selectors_become_the_request_target() {
        assert_eq!(
            kill_args(&["--pid", "4242"]).target.target(),
            Some(Target::Pid(4242))
        );
        assert_eq!(
            kill_args(&["--filter", "^py"]).target.target(),
            Some(Target::Filter("^py".to_owned()))
        );
        assert_eq!(
            kill_args(&["--gpu", "3"]).target.target(),
            Some(Target::GpuIndex(3))
        );
        assert_eq!(
            kill_args(&["--user", "1001"]).target.target(),
            Some(Target::User("1001".to_owned()))
        );
    }

    #[test]
    fn kill_defaults_and_timeout_range() {
        let args = kill_args(&["--pid", "1"]);
        assert_eq!(args.timeout_secs, 5);
        assert!(!args.batch && !args.force);
        assert_eq!(args.output, OutputFormat::Table);
        assert_eq!(
            kill_args(&["--pid", "1", "--timeout-secs", "3600"]).timeout_secs,
            3600
        );
        for bad in ["0", "3601", "-1", "5s"] {
            let err = usage_error(&["gpukillctl", "kill", "--pid", "1", "--timeout-secs", bad]);
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{bad}");
        }
    }

    fn reset_args(args: &[&str]) -> ResetArgs {
        let argv = [&["gpukillctl", "reset"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Reset(args) => args,
            other => panic!("expected reset, got {other:?}"),
        }
    }

    #[test]
    fn reset_needs_exactly_one_of_gpu_and_all() {
        let none = usage_error(&["gpukillctl", "reset", "--force"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let both = usage_error(&["gpukillctl", "reset", "--gpu", "0", "--all"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let bad = usage_error(&["gpukillctl", "reset", "--gpu", "-1"]);
        assert_eq!(crate::error::clap_exit_code(&bad), 3);
    }

    #[test]
    fn reset_selectors_become_the_request_target() {
        let args = reset_args(&["--gpu", "1", "--force"]);
        assert_eq!(
            args.target.target(),
            Some(reset_request::Target::GpuIndex(1))
        );
        assert!(args.force);
        let args = reset_args(&["--all", "-o", "json"]);
        assert_eq!(args.target.target(), Some(reset_request::Target::All(true)));
        assert!(!args.force);
        assert_eq!(args.output, OutputFormat::Json);
    }
}
