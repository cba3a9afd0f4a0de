//! `gpukillctl reserve`, `release`, `status` and `run`: reserving GPUs of this node.

use std::time::Duration;

use clap::Args;

use super::{OutputFormat, parse_positive_duration};

/// The exit codes of `reserve`, `release` and `status`.
pub(super) const RESERVATIONS_EXIT_CODES: &str = "Exit codes:\n  \
    0 ok, 3 a bad option (no such GPU, a bad duration), 4 not allowed (release: someone\n  \
    else's reservation), 5 not on this host's socket (reservations are local),\n  \
    6 gpukilld not reachable, 7 the GPUs asked for are busy (reserve)";

/// Arguments of `gpukillctl reserve`.
#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    /// How many GPUs (gpukilld picks them); default 1
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "gpu_ids",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpus: Option<u32>,

    /// These GPUs exactly, by index, e.g. 0,3
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub gpu_ids: Vec<u32>,

    /// For how long, e.g. 30m, 4h, 2d (default: gpukilld's, 8h)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// A note shown in `gpukillctl status`, e.g. what the GPUs are for
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl release`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// Only the reservations on these GPUs, by index, e.g. 0,3 (default: every reservation
    /// you made with `gpukillctl reserve`)
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub gpu_ids: Vec<u32>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Show every column whole, however wide the terminal (on a terminal, DETAILS and then
    /// STATUS are narrowed to fit it)
    #[arg(long)]
    pub wide: bool,
}

/// Arguments of `gpukillctl run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// How many GPUs
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpus: u32,

    /// End the reservation after this long, e.g. 2h; the command is then stopped (exit 124)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,

    /// Fail at once when the GPUs are not free (exit 7) instead of waiting in the queue
    #[arg(long, conflicts_with = "wait")]
    pub nonblock: bool,

    /// Wait in the queue at most this long, e.g. 10m (default: as long as it takes)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub wait: Option<Duration>,

    /// The command and its arguments (put `--` before them when they start with `-`)
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command, millis};
    use clap::Parser;

    fn reserve_args(args: &[&str]) -> ReserveArgs {
        let argv = [&["gpukillctl", "reserve"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Reserve(args) => args,
            other => panic!("expected reserve, got {other:?}"),
        }
    }

    #[test]
    fn reserve_takes_a_count_or_ids_and_a_duration() {
        let args = reserve_args(&[]);
        assert_eq!(
            (args.gpus, args.gpu_ids.len(), args.duration),
            (None, 0, None)
        );
        let args = reserve_args(&["--gpu-ids", "0,3", "--duration", "4h", "--note", "x"]);
        assert_eq!(args.gpu_ids, [0, 3]);
        assert_eq!(args.duration, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(args.note.as_deref(), Some("x"));
        assert_eq!(reserve_args(&["--gpus", "2", "-o", "json"]).gpus, Some(2));
        let both = usage_error(&["gpukillctl", "reserve", "--gpus", "2", "--gpu-ids", "1"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        for bad in [
            &["--gpus", "0"][..],
            &["--gpu-ids", "a"],
            &["--duration", "0s"],
        ] {
            let argv = [&["gpukillctl", "reserve"], bad].concat();
            assert_eq!(
                crate::error::clap_exit_code(&usage_error(&argv)),
                3,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_and_bad_durations_are_usage_errors_naming_the_value() {
        for (option, value) in [
            ("--duration", "0s"),
            ("--duration", "soon"),
            ("--timeout", "0"),
            ("--wait", "0m"),
        ] {
            let command = if option == "--duration" {
                "reserve"
            } else {
                "run"
            };
            let mut argv = vec!["gpukillctl", command, option, value];
            if command == "run" {
                argv.push("true");
            }
            let err = usage_error(&argv);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            assert_eq!(crate::error::clap_exit_code(&err), 3);
            let text = err.to_string();
            assert!(
                text.contains(&format!("invalid value '{value}' for '{option}")),
                "{text}"
            );
        }
        assert_eq!(millis(None), 0);
        assert_eq!(millis(Some(Duration::from_micros(1))), 1);
        assert_eq!(millis(Some(Duration::from_secs(2))), 2000);
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = [&["gpukillctl", "run"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Run(args) => args,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn run_takes_the_command_after_its_options() {
        let args = run_args(&["python", "-u", "train.py", "--gpus", "8"]);
        assert_eq!(args.command, ["python", "-u", "train.py", "--gpus", "8"]);
        assert_eq!(args.gpus, 1);
        assert!(!args.nonblock);
        assert_eq!((args.timeout, args.wait), (None, None));
        let args = run_args(&["--gpus", "2", "--timeout", "2h", "--nonblock", "--", "-x"]);
        assert_eq!(args.command, ["-x"]);
        assert_eq!(args.gpus, 2);
        assert!(args.nonblock);
        assert_eq!(args.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(
            run_args(&["--wait", "10m", "true"]).wait,
            Some(Duration::from_secs(600))
        );
        let both = usage_error(&["gpukillctl", "run", "--nonblock", "--wait", "1m", "true"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let none = usage_error(&["gpukillctl", "run", "--gpus", "2"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
    }

    #[test]
    fn release_and_status_parse() {
        let cli = Cli::try_parse_from(["gpukillctl", "release", "--gpu-ids", "1,2", "-o", "json"])
            .expect("valid arguments");
        let Command::Release(args) = cli.command else {
            panic!("expected release");
        };
        assert_eq!(args.gpu_ids, [1, 2]);
        assert_eq!(args.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["gpukillctl", "status"]).expect("valid arguments");
        let Command::Status(args) = cli.command else {
            panic!("expected status");
        };
        assert_eq!(args.output, OutputFormat::Table);
    }
}
