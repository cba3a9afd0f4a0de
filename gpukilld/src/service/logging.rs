//! Where logs go: the journal, with structured fields, when the daemon runs under systemd
//! with its output connected to the journal (`JOURNAL_STREAM`); standard error otherwise,
//! and whenever the journal cannot be reached (it must never keep the daemon from starting).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global logger. `GPUKILL_LOG` filters (default `info`).
pub fn init() {
    let filter =
        || EnvFilter::try_from_env("GPUKILL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    #[cfg(unix)]
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(journal.with_syslog_identifier("gpukilld".to_owned()))
                    .init();
                return;
            }
            Err(error) => {
                eprintln!("gpukilld: cannot log to the journal ({error}); logging to stderr")
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .init();
}
