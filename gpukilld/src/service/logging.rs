//! Where logs go: the journal, with structured fields, when the daemon runs under systemd
//! with its output connected to the journal (`JOURNAL_STREAM`); standard error otherwise,
//! and whenever the journal cannot be reached (it must never keep the daemon from starting),
//! in colour only when standard error is a terminal and `NO_COLOR` is not set.

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
    let stderr = std::io::stderr();
    let ansi = colours(
        std::io::IsTerminal::is_terminal(&stderr),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Whether the log on standard error has colours: only on a terminal (a file, a pipe or a
/// service manager's log gets plain text), and never when `NO_COLOR` is set and not empty
/// (<https://no-color.org>).
fn colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
        assert!(!colours(false, Some(OsStr::new(""))));
    }
}
