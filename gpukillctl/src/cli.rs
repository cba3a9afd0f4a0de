//! The command line: one clap derive tree, one subcommand per module in `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gpukill_proto::v1::Vendor;

/// gpukillctl, the client of the gpukilld GPU daemon.
#[derive(Debug, Parser)]
#[command(
    name = "gpukillctl",
    version,
    about = "Show the GPUs of this node and the processes using them, as gpukilld sees them",
    after_help = "Exit codes:\n  0 ok, 1 error, 2 GPU vendor library failure, 3 invalid arguments,\n  \
                  4 permission denied, 5 unsupported, 6 gpukilld not reachable"
)]
pub struct Cli {
    /// The daemon's socket: a path or unix:///path
    ///
    /// Default: the per-user daemon's socket ($XDG_RUNTIME_DIR/gpukill/gpukilld.sock) if it
    /// exists, else the system daemon's (/run/gpukill/gpukilld.sock).
    #[arg(
        long,
        global = true,
        env = gpukill_proto::SOCKET_ENV,
        hide_env_values = true,
        value_name = "ADDRESS",
        display_order = 100,
        value_parser = parse_address
    )]
    pub socket: Option<Address>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List GPUs and the processes using them (one snapshot, or a live view with --watch).
    List(ListArgs),
    /// Print the versions of gpukillctl and of the gpukilld it talks to.
    Version(VersionArgs),
}

/// Arguments of `gpukillctl list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Also show the process table (GPU, PID, USER, PROC, VRAM_MB, START, CONTAINER)
    #[arg(long)]
    pub details: bool,

    /// Keep the view open, updated with every snapshot the daemon takes (Ctrl-C to stop)
    ///
    /// The daemon pushes each new snapshot (no polling). Tables are redrawn in place on a
    /// terminal; with --output json, each snapshot is one JSON document on its own line.
    #[arg(long)]
    pub watch: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only GPUs (and their processes) of this vendor
    #[arg(long, value_enum, default_value_t = VendorArg::All)]
    pub vendor: VendorArg,

    /// Only processes whose name, command line or user match REGEX
    ///
    /// Rust regex syntax, checked by the daemon. GPUs are always shown; their PIDS and
    /// TOP_PROC count only the matching processes.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Only processes running in a container; shows the process table with RUNTIME and POD
    #[arg(long)]
    pub containers: bool,
}

/// Arguments of `gpukillctl version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// JSON, with the field names of the original gpukill.
    Json,
}

/// The `--vendor` choices; `all` means no vendor filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VendorArg {
    /// NVIDIA GPUs.
    Nvidia,
    /// AMD GPUs.
    Amd,
    /// Intel GPUs.
    Intel,
    /// Apple Silicon GPUs.
    Apple,
    /// Every vendor.
    All,
}

impl From<VendorArg> for Vendor {
    fn from(arg: VendorArg) -> Self {
        match arg {
            VendorArg::Nvidia => Vendor::Nvidia,
            VendorArg::Amd => Vendor::Amd,
            VendorArg::Intel => Vendor::Intel,
            VendorArg::Apple => Vendor::Apple,
            VendorArg::All => Vendor::Unspecified,
        }
    }
}

/// Where the daemon listens, as given by `--socket` or `GPUKILL_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path (given as a path or as `unix:///path`).
    Unix(PathBuf),
    /// An `https://` address of a remote daemon; not supported by this version.
    Https(String),
}

/// Parses a `--socket` value: `unix:///path`, `https://host:port`, or a plain path.
pub fn parse_address(value: &str) -> Result<Address, String> {
    if value.is_empty() {
        return Err("the address is empty".to_owned());
    }
    if let Some(path) = value.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "a unix:// address needs an absolute path (unix:///path), got {value:?}"
            ));
        }
        return Ok(Address::Unix(PathBuf::from(path)));
    }
    if value.starts_with("https://") {
        return Ok(Address::Https(value.to_owned()));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        return Err(format!(
            "unknown address scheme {scheme:?} in {value:?} (use a path, unix:///path or https://)"
        ));
    }
    Ok(Address::Unix(PathBuf::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_snapshot;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What clap prints for `args`: the exact text a user sees for `--help`.
    fn help_for(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(_) => panic!("{args:?} should print help"),
            Err(err) => {
                assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
                // Trailing spaces (clap pads blank lines inside paragraphs) are trimmed, so
                // editors that strip them cannot break the snapshot.
                let text = err.render().to_string();
                text.lines()
                    .map(|line| format!("{}\n", line.trim_end()))
                    .collect()
            }
        }
    }

    #[test]
    fn help_matches_the_snapshot() {
        let help = help_for(&["gpukillctl", "--help"]);
        let rendered = Cli::command().render_long_help().to_string();
        assert_eq!(help.lines().count(), rendered.lines().count());
        assert_snapshot("help.txt", &help);
    }

    #[test]
    fn list_help_matches_the_snapshot() {
        assert_snapshot(
            "list-help.txt",
            &help_for(&["gpukillctl", "list", "--help"]),
        );
    }

    #[test]
    fn version_help_matches_the_snapshot() {
        assert_snapshot(
            "version-help.txt",
            &help_for(&["gpukillctl", "version", "--help"]),
        );
    }

    #[test]
    fn short_help_matches_the_snapshot() {
        assert_snapshot("help-short.txt", &Cli::command().render_help().to_string());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("/run/gpukill/gpukilld.sock"),
            Ok(Address::Unix(PathBuf::from("/run/gpukill/gpukilld.sock")))
        );
        assert_eq!(
            parse_address("unix:///tmp/g.sock"),
            Ok(Address::Unix(PathBuf::from("/tmp/g.sock")))
        );
        assert_eq!(
            parse_address("relative.sock"),
            Ok(Address::Unix(PathBuf::from("relative.sock")))
        );
        assert_eq!(
            parse_address("https://node1:50051"),
            Ok(Address::Https("https://node1:50051".to_owned()))
        );
        assert!(parse_address("").is_err());
        assert!(parse_address("unix://relative").is_err());
        assert!(parse_address("ftp://x").is_err());
    }

    #[test]
    fn list_arguments_parse() {
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "list",
            "--vendor",
            "amd",
            "--filter",
            "python",
            "--containers",
            "-o",
            "json",
            "--socket",
            "unix:///tmp/x.sock",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.socket,
            Some(Address::Unix(PathBuf::from("/tmp/x.sock")))
        );
        let Command::List(args) = cli.command else {
            panic!("expected list");
        };
        assert_eq!(Vendor::from(args.vendor), Vendor::Amd);
        assert_eq!(args.filter.as_deref(), Some("python"));
        assert!(args.containers);
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn vendor_names_match_the_proto_names() {
        for arg in VendorArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            assert_eq!(Vendor::from(*arg).cli_name(), name);
        }
    }
}
