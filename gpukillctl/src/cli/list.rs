//! `gpukillctl list`: the GPUs of a node and the processes using them.

use clap::Args;

use super::{OutputFormat, VendorArg};

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
        assert!(args.containers);
        assert_eq!(args.output, OutputFormat::Json);
    }
}
