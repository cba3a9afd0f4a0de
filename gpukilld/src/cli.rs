//! gpukilld's command line, and its man page and completions (in the library so that
//! packaging renders the same files as `gpukilld --man` and `gpukilld --completions`).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use gpukill_manual::{Page, Section, Shell, tagged};

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
    /// Print the shell completion script for gpukilld (bash, zsh, fish, elvish, powershell)
    /// and exit.
    #[arg(long, value_name = "SHELL", value_enum, conflicts_with_all = ["man", "print_config", "check_config"])]
    pub completions: Option<Shell>,
    /// Print the man page gpukilld(8) and exit; with DIR, write DIR/gpukilld.8 instead.
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with_all = ["print_config", "check_config"])]
    pub man: Option<Option<PathBuf>>,
}

/// gpukilld(8): the page clap renders, with its environment, files and relatives.
pub fn man_page() -> std::io::Result<Page> {
    gpukill_manual::page(&Args::command(), "8", &man_sections())
}

/// The completion script of gpukilld for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    gpukill_manual::completion(shell, &Args::command(), "gpukilld")
}

/// What gpukilld(8) says beyond its options: its environment, files and relatives, which
/// clap does not know.
fn man_sections() -> Vec<Section> {
    let environment = [
        tagged(
            gpukill_proto::SOCKET_ENV,
            "The Unix socket to serve on (the socket key).",
        ),
        tagged(
            "GPUKILL_NVML_LIBRARY",
            "The NVML library to load (the library key of [nvidia]).",
        ),
        tagged(
            "GPUKILL_<KEY>, GPUKILL_<SECTION>_<KEY>",
            "Any configuration key; the command line wins over the environment, the \
             environment over the file.",
        ),
        tagged(
            "GPUKILL_LOG",
            "Log filter, e.g. debug or gpukilld=trace. Under systemd the log goes to the \
             journal.",
        ),
        tagged(
            "NO_COLOR",
            "When set and not empty, the log on standard error has no colours (it has them \
             only when standard error is a terminal).",
        ),
    ]
    .concat();
    let files = [
        tagged(
            DEFAULT_CONFIG_FILE,
            "The configuration (every key optional; the packaged file lists the defaults). \
             gpukilld --print-config shows the effective values.",
        ),
        tagged(
            "/etc/gpukill/guard.toml",
            "The guard's policy (the guard_policy key). The guard is off while it does not exist; \
             an example is in /usr/share/doc/gpukill/examples/guard.toml.",
        ),
        tagged(
            gpukill_proto::SYSTEM_SOCKET,
            "The socket of the system daemon.",
        ),
        tagged(
            "/var/lib/gpukill/gpukill.db",
            "The store (in state_dir): history, process sessions and the audit trail.",
        ),
    ]
    .concat();
    vec![
        ("ENVIRONMENT", environment),
        ("FILES", files),
        (
            "SEE ALSO",
            "\\fBgpukillctl\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)".to_owned(),
        ),
    ]
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
