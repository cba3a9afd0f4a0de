//! `gpukillctl list`: the GPUs of a node and the processes using them.

use clap::Args;

use super::{OutputFormat, VendorArg};

/// Arguments of `gpukillctl list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Also show the process table (GPU, PID, USER, PROC, MEMORY, START, CONTAINER, COMMAND)
    #[arg(long)]
    pub details: bool,

    /// Keep the view open, updated with every snapshot the daemon takes (q or Ctrl-C to quit)
    ///
    /// The daemon pushes each new snapshot (no polling). On a terminal, the tables fill the
    /// screen and are redrawn in place until you press q or Ctrl-C (exit 0); with --output
    /// json, or when not a terminal, each snapshot is printed after the last (JSON: one
    /// document on its own line).
    #[arg(long)]
    pub watch: bool,

    /// Show every column, each whole, however wide the terminal
    ///
    /// On a terminal the tables fit its width: the GPU table leaves out ECC, then power, the
    /// process count, temperature and health, and narrows names; the process table narrows
    /// the command line first. Output that is not a terminal is never narrowed (unless
    /// $COLUMNS is set).
    #[arg(long)]
    pub wide: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only GPUs (and their processes) of this vendor
    #[arg(long, value_enum, default_value_t = VendorArg::All)]
    pub vendor: VendorArg,

    /// Only processes whose name or command line match REGEX (as kill --filter selects them)
    ///
    /// Rust regex syntax, checked by the daemon. GPUs are always shown; their PIDS and
    /// TOP_PROC count only the matching processes. `list --filter REGEX --details` shows
    /// exactly the processes `kill --filter REGEX` would kill.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Only processes of this user (a name or a numeric uid, as kill --user selects them)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Only processes running in a container; shows the process table with RUNTIME and POD
    #[arg(long)]
    pub containers: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::conn::Address;
    use clap::Parser;
    use gpukill_proto::v1::Vendor;
    use std::path::PathBuf;

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
            "--user",
            "1000",
            "--wide",
            "-o",
            "json",
            "--socket",
            "unix:///tmp/x.sock",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.connect.socket,
            Some(Address::Unix(PathBuf::from("/tmp/x.sock")))
        );
        let Command::List(args) = cli.command else {
            panic!("expected list");
        };
        assert_eq!(Vendor::from(args.vendor), Vendor::Amd);
        assert_eq!(args.filter.as_deref(), Some("python"));
        assert_eq!(args.user.as_deref(), Some("1000"));
        assert!(args.wide);
        assert!(args.containers);
        assert_eq!(args.output, OutputFormat::Json);
    }
}
