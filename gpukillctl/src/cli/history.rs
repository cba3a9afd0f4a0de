//! `gpukillctl history` and `gpukillctl collection`: stored GPU metrics, for one GPU over time
//! or for every GPU at a moment.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{ReportFormat, TimeArg, parse_duration, parse_time};

/// Arguments of `gpukillctl history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The GPU with index N
    #[arg(long, value_name = "N")]
    pub gpu: u32,

    /// The last N hours
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub hours: u32,

    /// Raw samples, hourly rollups, or auto: raw up to two days, hourly beyond
    #[arg(long, value_enum, default_value_t = ResolutionArg::Auto)]
    pub resolution: ResolutionArg,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

/// The `--resolution` choices of `gpukillctl history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    /// Raw samples for windows up to two days, hourly rollups beyond.
    Auto,
    /// One sample per persist interval.
    Raw,
    /// One row per closed hour.
    Hourly,
}

impl ResolutionArg {
    /// The History request's value.
    pub fn to_proto(self) -> gpukill_proto::v1::Resolution {
        match self {
            ResolutionArg::Auto => gpukill_proto::v1::Resolution::Unspecified,
            ResolutionArg::Raw => gpukill_proto::v1::Resolution::Raw,
            ResolutionArg::Hourly => gpukill_proto::v1::Resolution::Hourly,
        }
    }
}

/// `gpukillctl collection ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum CollectionCommand {
    /// Print each GPU's stored sample nearest to TIME (within --within)
    ///
    /// Fields as gpu_monitor stores them: timestamp, uid (the GPU UUID), pci_bus_id, name,
    /// temperature (°C), memory_used and memory_total (MiB), gpu_utilization and
    /// memory_utilization (%), power_usage (W), fan_speed (%), graphics_clock and
    /// memory_clock (MHz). Values are the means of the persist interval (memory used: its
    /// maximum); graphics_clock is the SM clock.
    Show(CollectionShowArgs),
}

/// Arguments of `gpukillctl collection show`.
#[derive(Debug, Clone, Args)]
pub struct CollectionShowArgs {
    /// The moment: RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (10m)
    #[arg(value_name = "TIME", value_parser = parse_time)]
    pub time: TimeArg,

    /// How far from TIME a sample may be
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub within: Duration,

    /// Only GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Output format
    #[arg(long, value_enum, default_value_t = CollectionFormat::Json)]
    pub format: CollectionFormat,
}

/// The formats of `gpukillctl collection show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CollectionFormat {
    /// A JSON array of objects.
    Json,
    /// CSV with a header row.
    Csv,
}
