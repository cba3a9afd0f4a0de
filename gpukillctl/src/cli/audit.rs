//! `gpukillctl events` and `gpukillctl audit`: the audit trail, and the process sessions of a
//! time window (listed, summarized, scored as rogue, exported or imported).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};

use super::{OutputFormat, ReportFormat, TimeArg, parse_duration, parse_time, window};

/// Arguments of `gpukillctl events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only events of the last DURATION, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only events of this type
    #[arg(long = "type", value_name = "TYPE", value_enum)]
    pub event_type: Option<EventType>,

    /// At most N events, the newest
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

/// The `--type` choices of `gpukillctl events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Processes signalled.
    Kill,
    /// GPUs reset.
    Reset,
    /// Requests refused.
    Deny,
    /// Guard policy violations (warnings, dry-run "would act", rate-limited kills).
    Violation,
    /// Guard policy changes made through the API (and refused ones).
    Policy,
    /// GPU reservations made and ended (released, expired, a run's client gone).
    Reservation,
    /// GPU health: state changes, Xid errors, admins clearing a GPU.
    Health,
}

impl From<EventType> for gpukill_proto::v1::EventType {
    fn from(arg: EventType) -> Self {
        use gpukill_proto::v1::EventType as Pb;
        match arg {
            EventType::Kill => Pb::Kill,
            EventType::Reset => Pb::Reset,
            EventType::Deny => Pb::Deny,
            EventType::Violation => Pb::Violation,
            EventType::Policy => Pb::Policy,
            EventType::Reservation => Pb::Reservation,
            EventType::Health => Pb::Health,
        }
    }
}

/// Arguments of `gpukillctl audit`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Export or import instead of showing sessions.
    #[command(subcommand)]
    pub action: Option<AuditAction>,

    /// Only sessions of this user (a user name or a numeric uid)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Only processes whose name or command line match REGEX (Rust regex syntax)
    #[arg(long, value_name = "REGEX")]
    pub process: Option<String>,

    /// Only sessions on GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// The time window.
    #[command(flatten)]
    pub window: WindowArgs,

    /// Output format (--summary: table or json)
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,

    /// Summarize the window instead of listing sessions
    ///
    /// Top users and processes by GPU hours (sessions overlapping the window count whole),
    /// per-GPU utilization (tick-weighted mean and max of the metrics samples) and GPU hours
    /// by UTC hour of day (each session's GPU time spread evenly over its span). Not with
    /// --user, --process, --gpu or --output csv.
    #[arg(long, conflicts_with_all = ["user", "process", "gpu"])]
    pub summary: bool,

    /// List the window's sessions that score as miners or abuse instead
    ///
    /// Each session is scored with the guard's rogue model (the policy's [rogue] settings, or
    /// the defaults): known miner names, miner command lines, renamed binaries (by argv[0];
    /// history has no exe names), sustained high utilization, long runs, unusual hours.
    /// Highest score first. Not with --summary, --user, --process, --gpu or --output csv.
    #[arg(long, conflicts_with_all = ["summary", "user", "process", "gpu"])]
    pub rogue: bool,

    /// With --rogue: only findings at or above this risk level
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = RiskLevelArg::Low, requires = "rogue")]
    pub min_level: RiskLevelArg,

    /// With --summary: at most N top users and N top processes
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        requires = "summary",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub top: u32,
}

/// A time window: the last `--hours`, or `--since` to `--until`.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// The window: the last N hours
    #[arg(
        long,
        value_name = "N",
        default_value_t = 24,
        conflicts_with_all = ["since", "until"],
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub hours: u32,

    /// The window's start: RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeArg>,

    /// The window's end (default: now), like --since
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "since")]
    pub until: Option<TimeArg>,
}

impl WindowArgs {
    /// The window in milliseconds since the epoch, counted back from `now`.
    pub fn unix_ms(&self, now: SystemTime) -> (i64, i64) {
        window(self.hours, self.since, self.until, now)
    }
}

/// `gpukillctl audit export` and `gpukillctl audit import`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditAction {
    /// Write the window's history as JSON lines in the original gpukill audit record format
    ///
    /// One record per GPU sample (pid null: utilization, memory used, temperature and power
    /// of the persist interval) and one per process session (at its first sighting, with its
    /// peak memory), oldest first. gpukill tools and `gpukillctl audit import` read it.
    Export(AuditExportArgs),
    /// Load an original gpukill audit.jsonl into gpukilld's history (admins only)
    ///
    /// GPU records become samples, process records become process sessions. Lines that are
    /// not valid records are counted and reported with their line numbers; the others are
    /// imported. Records imported before are skipped, so importing a file again (or a longer
    /// version of it) adds nothing twice. Records older than the store keeps are skipped.
    #[command(after_help = "Exit codes:
          0 every line was imported (or had been before), 1 some lines were bad (the rest
          were imported), 3 the file cannot be read, 4 not an admin")]
    Import(AuditImportArgs),
}

/// Arguments of `gpukillctl audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditExportArgs {
    /// The record format
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,

    /// Only GPU N and its processes
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// The time window.
    #[command(flatten)]
    pub window: WindowArgs,
}

/// The formats of `gpukillctl audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines in the original gpukill audit record format.
    Jsonl,
}

/// Arguments of `gpukillctl audit import`.
#[derive(Debug, Clone, Args)]
pub struct AuditImportArgs {
    /// The gpukill audit.jsonl to load (`-` for standard input)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Risk levels of rogue findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RiskLevelArg {
    /// Score 20 or more by default.
    Low,
    /// 40 or more.
    Medium,
    /// 60 or more.
    High,
    /// 80 or more.
    Critical,
}

impl From<RiskLevelArg> for gpukill_proto::v1::RogueLevel {
    fn from(arg: RiskLevelArg) -> Self {
        use gpukill_proto::v1::RogueLevel as Pb;
        match arg {
            RiskLevelArg::Low => Pb::Low,
            RiskLevelArg::Medium => Pb::Medium,
            RiskLevelArg::High => Pb::High,
            RiskLevelArg::Critical => Pb::Critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::UNIX_EPOCH;

    fn audit_args(args: &[&str]) -> AuditArgs {
        let argv = [&["gpukillctl", "audit"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Audit(args) => args,
            other => panic!("expected audit, got {other:?}"),
        }
    }

    #[test]
    fn audit_windows_parse() {
        let args = audit_args(&[]);
        assert_eq!(
            (args.window.hours, args.window.since, args.window.until),
            (24, None, None)
        );
        assert_eq!(args.output, ReportFormat::Table);
        let args = audit_args(&[
            "--since",
            "2024-05-01T12:00:00Z",
            "--until",
            "2h",
            "-o",
            "csv",
        ]);
        let noon = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(args.window.since, Some(TimeArg::At(noon)));
        assert_eq!(
            args.window.until,
            Some(TimeArg::Ago(Duration::from_secs(7200)))
        );
        assert_eq!(args.output, ReportFormat::Csv);
        let both = usage_error(&["gpukillctl", "audit", "--hours", "2", "--since", "1h"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let alone = usage_error(&["gpukillctl", "audit", "--until", "1h"]);
        assert_eq!(crate::error::clap_exit_code(&alone), 3);
        let bad = usage_error(&["gpukillctl", "audit", "--since", "yesterday"]);
        assert_eq!(bad.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(bad.to_string().contains("'yesterday'"), "{bad}");
    }

    #[test]
    fn events_arguments_parse() {
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "events",
            "--since",
            "7d",
            "--type",
            "deny",
            "--limit",
            "20",
            "-o",
            "json",
        ])
        .expect("valid arguments");
        let Command::Events(args) = cli.command else {
            panic!("expected events");
        };
        assert_eq!(args.since, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(args.event_type, Some(EventType::Deny));
        assert_eq!(args.limit, 20);
        assert_eq!(args.output, OutputFormat::Json);
        let Command::Events(args) = Cli::try_parse_from(["gpukillctl", "events"])
            .expect("valid arguments")
            .command
        else {
            panic!("expected events");
        };
        assert_eq!((args.since, args.event_type, args.limit), (None, None, 100));
    }

    #[test]
    fn a_bad_duration_is_a_usage_error_naming_the_value() {
        let err = usage_error(&["gpukillctl", "events", "--since", "5 parsecs"]);
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(crate::error::clap_exit_code(&err), 3);
        let text = err.to_string();
        assert!(
            text.contains("invalid value '5 parsecs' for '--since <DURATION>'"),
            "{text}"
        );
    }

    /// What `--type` and `--min-level` take is what the output shows.
    #[test]
    fn event_type_and_level_names_are_the_output_names() {
        fn name(arg: &impl ValueEnum) -> String {
            let value = arg.to_possible_value().expect("visible value");
            value.get_name().to_owned()
        }
        for arg in EventType::value_variants() {
            let sent = gpukill_proto::v1::EventType::from(*arg) as i32;
            assert_eq!(crate::render::event_type_name(sent), name(arg));
        }
        for arg in RiskLevelArg::value_variants() {
            let sent = gpukill_proto::v1::RogueLevel::from(*arg) as i32;
            assert_eq!(crate::render::rogue_level_name(sent), name(arg));
        }
    }
}
