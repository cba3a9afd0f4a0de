//! `gpukillctl uploads ...`: the upload outbox (list, show, retry).

use std::time::SystemTime;

use clap::{Args, Subcommand, ValueEnum};
use gpukill_proto::v1::upload_retry_request;

use super::{OutputFormat, TimeArg, parse_time};

/// The exit codes of `uploads list` and `uploads show`.
const UPLOADS_EXIT_CODES: &str = "Exit codes:\n  \
    0 ok, 3 a bad option (uploads show: no upload of that hour),\n  \
    5 uploads are off on this node ([upload] url unset, not offline),\n  \
    6 gpukilld not reachable";

/// `gpukillctl uploads ...`: the Uploads, UploadShow and UploadRetry RPCs.
#[derive(Debug, Clone, Subcommand)]
pub enum UploadsCommand {
    /// List the hours in the outbox, oldest first, with a count of every hour by status
    ///
    /// One row per hour (the newest --limit hours). HOUR is the start of the hour and the
    /// attempt times are date and time, all in local time (the JSON has them in UTC; HOUR
    /// arguments are RFC 3339 in UTC or a duration ago). STATUS is pending (waiting to be
    /// sent, or to be sent again at NEXT; NEXT is `offline` while gpukilld queues without
    /// sending), delivered (the server stored it and echoed its content hash), parked
    /// (max_attempts failed; kept, not sent again until an admin runs `uploads retry`) or
    /// rejected (the server refused it with a 4xx other than 408 and 429; LAST ERROR says
    /// why). ATTEMPTS counts the sends since the hour was queued or last retried; LAST ERROR
    /// is shortened (`uploads show HOUR` prints it whole); ROWS(GPU/USER) are the payload's
    /// per-GPU and per-user rows; SIZE is the payload's size.
    ///
    /// The line above the table counts the whole outbox by status (not only the rows shown),
    /// the hours dropped because the outbox was full ([upload] max_outbox_hours), and says
    /// where gpukilld sends, or that it is offline. Lines below it say what to do about
    /// parked, rejected and dropped hours.
    #[command(after_help = UPLOADS_EXIT_CODES)]
    List(UploadsListArgs),
    /// Show one hour: its outbox entry, every attempt to send it and, with --payload, what
    /// is sent
    ///
    /// The attempts are listed oldest first: ATTEMPT (numbering starts over after an admin
    /// retry), TIME, HTTP (the status the server answered, `-` when it did not answer),
    /// LATENCY(ms) and ERROR (the server's message or the network error). --payload adds the
    /// payload as sent (JSON, schema gpukill.usage/v1); --output json always has it, as an
    /// object.
    #[command(after_help = UPLOADS_EXIT_CODES)]
    Show(UploadShowArgs),
    /// Send parked or rejected hours again (admins only)
    ///
    /// The hours become pending again and their attempts start over; gpukilld sends them,
    /// oldest first, as soon as the uploader gets to them. Name one parked or rejected HOUR,
    /// or give --all-parked for every parked hour (rejected hours are retried one by one,
    /// once whatever made the server refuse them is fixed). Every retry, refusals included,
    /// is written to the audit trail (gpukillctl events).
    #[command(after_help = "Exit codes:\n  \
        0 the hours are pending again (or, with --all-parked, none was parked),\n  \
        3 no upload of HOUR, or a bad option, 4 not an admin,\n  \
        5 HOUR is pending or delivered (only parked and rejected hours are sent again),\n    \
        or uploads are off on this node, 6 gpukilld not reachable")]
    Retry(UploadRetryArgs),
}

/// Arguments of `gpukillctl uploads list`.
#[derive(Debug, Clone, Args)]
pub struct UploadsListArgs {
    /// Only hours with this status
    #[arg(long, value_name = "STATUS", value_enum)]
    pub status: Option<UploadStatusArg>,

    /// At most N hours, the newest, 1 to 10000
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub limit: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The `--status` choices of `gpukillctl uploads list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UploadStatusArg {
    /// Waiting to be sent, or to be sent again.
    Pending,
    /// Stored by the server, which echoed the content hash.
    Delivered,
    /// max_attempts failed; kept until an admin retries it.
    Parked,
    /// Refused by the server; kept with its message.
    Rejected,
}

impl From<UploadStatusArg> for gpukill_proto::v1::UploadStatus {
    fn from(arg: UploadStatusArg) -> Self {
        match arg {
            UploadStatusArg::Pending => gpukill_proto::v1::UploadStatus::Pending,
            UploadStatusArg::Delivered => gpukill_proto::v1::UploadStatus::Delivered,
            UploadStatusArg::Parked => gpukill_proto::v1::UploadStatus::Parked,
            UploadStatusArg::Rejected => gpukill_proto::v1::UploadStatus::Rejected,
        }
    }
}

/// Arguments of `gpukillctl uploads show`.
#[derive(Debug, Clone, Args)]
pub struct UploadShowArgs {
    /// The hour: any time in it, as RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago
    /// (2h: the hour that was 2 hours ago)
    #[arg(value_name = "HOUR", value_parser = parse_time)]
    pub hour: TimeArg,

    /// Also print the payload, pretty-printed (--output json always has it)
    #[arg(long)]
    pub payload: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl uploads retry`.
#[derive(Debug, Clone, Args)]
pub struct UploadRetryArgs {
    /// What to send again: exactly one of HOUR and --all-parked.
    #[command(flatten)]
    pub target: UploadRetryTargetArgs,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl uploads retry`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct UploadRetryTargetArgs {
    /// The parked or rejected hour to send again: any time in it, as RFC 3339 in UTC
    /// (2024-05-01T12:00:00Z) or a duration ago (2h)
    #[arg(value_name = "HOUR", value_parser = parse_time)]
    pub hour: Option<TimeArg>,

    /// Every parked hour
    #[arg(long)]
    pub all_parked: bool,
}

impl UploadRetryTargetArgs {
    /// The request's target: the start of the hour that holds HOUR (a duration ago counted
    /// back from `now`), or every parked hour; `None` only when neither is set, which clap
    /// prevents.
    pub fn target(&self, now: SystemTime) -> Option<upload_retry_request::Target> {
        if let Some(hour) = self.hour {
            Some(upload_retry_request::Target::HourUnixMs(
                crate::render::uploads::hour_start(hour.unix_ms(now)),
            ))
        } else {
            self.all_parked
                .then_some(upload_retry_request::Target::AllParked(true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::{Duration, UNIX_EPOCH};

    fn uploads_command(args: &[&str]) -> UploadsCommand {
        let argv = [&["gpukillctl", "uploads"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Uploads(command) => command,
            other => panic!("expected uploads, got {other:?}"),
        }
    }

    #[test]
    fn uploads_list_arguments_parse() {
        let UploadsCommand::List(args) = uploads_command(&["list"]) else {
            panic!("expected uploads list");
        };
        assert_eq!((args.status, args.limit), (None, 100));
        assert_eq!(args.output, OutputFormat::Table);
        let UploadsCommand::List(args) = uploads_command(&[
            "list", "--status", "rejected", "--limit", "10000", "-o", "json",
        ]) else {
            panic!("expected uploads list");
        };
        assert_eq!(args.status, Some(UploadStatusArg::Rejected));
        assert_eq!(args.limit, 10_000);
        assert_eq!(args.output, OutputFormat::Json);
        for bad in [
            &["--limit", "0"][..],
            &["--limit", "10001"],
            &["--status", "sent"],
            &["--status", "all"],
        ] {
            let argv = [&["gpukillctl", "uploads", "list"], bad].concat();
            assert_eq!(
                crate::error::clap_exit_code(&usage_error(&argv)),
                3,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upload_status_names_are_the_proto_names() {
        for arg in UploadStatusArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            let status = gpukill_proto::v1::UploadStatus::from(*arg);
            assert_eq!(crate::render::uploads::status_name(status as i32), name);
        }
    }

    #[test]
    fn upload_hours_take_the_time_formats_of_other_commands() {
        let show = |hour: &str| match uploads_command(&["show", hour]) {
            UploadsCommand::Show(args) => args,
            other => panic!("expected uploads show, got {other:?}"),
        };
        let noon = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(show("2024-05-01T12:00:00Z").hour, TimeArg::At(noon));
        assert_eq!(show("2024-05-01 12:00:00").hour, TimeArg::At(noon));
        assert_eq!(show("2h").hour, TimeArg::Ago(Duration::from_secs(2 * 3600)));
        assert_eq!(show("1h 30m").hour, TimeArg::Ago(Duration::from_secs(5400)));
        let args = show("3h");
        assert!(!args.payload);
        for bad in ["yesterday", "5", "2024-05-01", "12:00"] {
            let err = usage_error(&["gpukillctl", "uploads", "show", bad]);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{bad}");
            let text = err.to_string();
            assert!(text.contains(&format!("'{bad}'")), "{text}");
            assert!(text.contains("RFC 3339 in UTC"), "{text}");
        }
        let missing = usage_error(&["gpukillctl", "uploads", "show"]);
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(crate::error::clap_exit_code(&missing), 3);
    }

    #[test]
    fn uploads_retry_needs_exactly_one_of_hour_and_all_parked() {
        let none = usage_error(&["gpukillctl", "uploads", "retry"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let both = usage_error(&["gpukillctl", "uploads", "retry", "2h", "--all-parked"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let bad = usage_error(&["gpukillctl", "uploads", "retry", "soon"]);
        assert_eq!(crate::error::clap_exit_code(&bad), 3);
    }

    #[test]
    fn uploads_retry_targets_the_start_of_the_hour() {
        let retry = |args: &[&str]| match uploads_command(&[&["retry"], args].concat()) {
            UploadsCommand::Retry(args) => args,
            other => panic!("expected uploads retry, got {other:?}"),
        };
        // 2024-05-01T12:00:00.250Z.
        let now = UNIX_EPOCH + Duration::from_millis(1_714_564_800_250);
        let ten = 1_714_557_600_000;
        assert_eq!(
            retry(&["2024-05-01T10:59:59Z"]).target.target(now),
            Some(upload_retry_request::Target::HourUnixMs(ten))
        );
        // 2 hours before 12:00:00.250 is 10:00:00.250, in the 10:00 hour.
        assert_eq!(
            retry(&["2h"]).target.target(now),
            Some(upload_retry_request::Target::HourUnixMs(ten))
        );
        let all = retry(&["--all-parked", "-o", "json"]);
        assert_eq!(
            all.target.target(now),
            Some(upload_retry_request::Target::AllParked(true))
        );
        assert_eq!(all.output, OutputFormat::Json);
    }
}
