//! `gpukillctl health`: the arguments.

use clap::{Args, Subcommand};

use super::OutputFormat;

/// Arguments of `gpukillctl health`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HealthArgs {
    /// Clear a GPU's critical health instead of showing it.
    #[command(subcommand)]
    pub action: Option<HealthAction>,

    /// Only this GPU (its index, as in `gpukillctl list`)
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// What `gpukillctl health` can do besides showing.
#[derive(Debug, Clone, Subcommand)]
pub enum HealthAction {
    /// Clear a GPU's critical health (admins only; recorded in the audit trail).
    ///
    /// A GPU that threw a serious Xid or uncorrectable errors stays critical (and is not
    /// handed out by reserve and run) until an admin clears it or it is reset: what it shows
    /// now is acknowledged, and only new errors make it critical again.
    Clear(HealthClearArgs),
}

/// Arguments of `gpukillctl health clear`.
#[derive(Debug, Clone, Args)]
pub struct HealthClearArgs {
    /// The GPU (its index)
    #[arg(long, value_name = "N")]
    pub gpu: u32,
}
