//! `gpukillctl drain` and `undrain`: an admin keeps a GPU from reserve and run, and gives it
//! back.

use clap::Args;

use super::OutputFormat;

/// The exit codes of `drain` and `undrain`.
pub(super) const DRAIN_EXIT_CODES: &str = "Exit codes:\n  \
    0 done (or nothing to do: already drained, not drained), 3 no such GPU or a reason\n  \
    over 500 bytes, 4 not an admin, 5 a gpukilld without drains, 6 gpukilld not reachable";

/// Arguments of `gpukillctl drain`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// The GPU (its index, as in `gpukillctl list`)
    #[arg(long, value_name = "N")]
    pub gpu: u32,

    /// Why, shown to users in `gpukillctl status` and when reserve refuses them (at most 500
    /// bytes)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl undrain`.
#[derive(Debug, Clone, Args)]
pub struct UndrainArgs {
    /// The GPU (its index, as in `gpukillctl list`)
    #[arg(long, value_name = "N")]
    pub gpu: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn drain_takes_a_gpu_and_a_reason_undrain_a_gpu() {
        let cli = Cli::try_parse_from(["gpukillctl", "drain", "--gpu", "2", "--reason", "fan"])
            .expect("valid arguments");
        let Command::Drain(args) = cli.command else {
            panic!("expected drain");
        };
        assert_eq!((args.gpu, args.reason.as_deref()), (2, Some("fan")));
        assert_eq!(args.output, OutputFormat::Table);
        let cli = Cli::try_parse_from(["gpukillctl", "undrain", "--gpu", "2", "-o", "json"])
            .expect("valid arguments");
        let Command::Undrain(args) = cli.command else {
            panic!("expected undrain");
        };
        assert_eq!((args.gpu, args.output), (2, OutputFormat::Json));
        for bad in [
            &["drain"][..],
            &["drain", "--gpu", "x"],
            &["undrain", "--gpu", "-1"],
            &["undrain", "--gpu", "1", "--reason", "r"],
        ] {
            let argv = [&["gpukillctl"], bad].concat();
            assert_eq!(
                crate::error::clap_exit_code(&usage_error(&argv)),
                3,
                "{bad:?}"
            );
        }
    }
}
