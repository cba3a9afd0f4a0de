//! gpukilld's command line (in the library so that packaging can render its man page).

use std::path::PathBuf;

use clap::Parser;

use crate::config::{DEFAULT_CONFIG_FILE, Sources};

/// The gpukill daemon: samples the GPUs of this node and serves gpukillctl.
#[derive(Debug, Parser)]
#[command(name = "gpukilld", version, about)]
pub struct Args {
    /// Configuration file [default: /etc/gpukill/gpukilld.toml, if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve on (overrides `socket`; env GPUKILL_SOCKET).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Time between samples, e.g. 500ms, 2s (overrides `poll_interval`).
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// NVML library to load (overrides `[nvidia] library`; env GPUKILL_NVML_LIBRARY).
    #[arg(long, value_name = "PATH")]
    pub nvml_library: Option<PathBuf>,
    /// Queue each hour's usage for upload without sending it (overrides `[upload] offline`).
    #[arg(long)]
    pub offline: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Args {
    /// The configuration sources these arguments name: the file, the environment, and
    /// the options given.
    pub fn sources(&self) -> Sources {
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string());
        let mut cli: Vec<(String, &'static [&'static str], toml::Value)> = Vec::new();
        if let Some(socket) = &self.socket {
            cli.push(("--socket".into(), &["socket"], path(socket)));
        }
        if let Some(interval) = &self.poll_interval {
            cli.push((
                "--poll-interval".into(),
                &["poll_interval"],
                toml::Value::String(interval.clone()),
            ));
        }
        if let Some(library) = &self.nvml_library {
            cli.push((
                "--nvml-library".into(),
                &["nvidia", "library"],
                path(library),
            ));
        }
        if self.offline {
            cli.push((
                "--offline".into(),
                &["upload", "offline"],
                toml::Value::Boolean(true),
            ));
        }
        Sources {
            file: Some(match &self.config {
                Some(file) => (file.clone(), true),
                None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
            }),
            env: std::env::vars().collect(),
            cli,
        }
    }
}
