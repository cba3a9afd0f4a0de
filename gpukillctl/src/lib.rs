//! gpukillctl, the thin client of gpukilld: one clap subcommand per module in [`cmd`], each
//! making one RPC over the daemon's Unix socket and rendering the answer as a table or JSON (or CSV, for the
//! reports `audit` and `history`).
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same function with
//! an in-memory [`Output`].

pub mod cli;
pub mod cmd;
pub mod conn;
pub mod error;
pub mod render;

#[cfg(test)]
mod testutil;

use std::io::{IsTerminal, Write};

pub use cli::Cli;
pub use error::Error;
pub use render::time::TimeZone;

/// Where and how commands write their results.
#[derive(Debug)]
pub struct Output<W, E = std::io::Stderr> {
    /// Where results go.
    pub writer: W,
    /// Where notes about the results go (standard error), so they never mix into a table or
    /// JSON that a script reads, e.g. kill's "nothing was killed" line. Errors are not
    /// written here: `main` prints them.
    pub notes: E,
    /// Whether `writer` is a terminal; `list --watch` then redraws in place.
    pub is_tty: bool,
    /// The time zone of times shown in tables.
    pub tz: TimeZone,
}

impl Output<std::io::Stdout> {
    /// Standard output, with local times.
    pub fn stdout() -> Self {
        let writer = std::io::stdout();
        let is_tty = writer.is_terminal();
        Output {
            writer,
            notes: std::io::stderr(),
            is_tty,
            tz: TimeZone::Local,
        }
    }
}

impl<W: Write, E: Write> Output<W, E> {
    /// Writes `text` and flushes, so each watch frame appears whole.
    pub fn write(&mut self, text: &str) -> Result<(), Error> {
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(Error::Output)
    }

    /// Writes `line` and a newline to [`notes`](Self::notes).
    pub fn note(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.notes, "{line}")
            .and_then(|()| self.notes.flush())
            .map_err(Error::Output)
    }
}

/// Runs the command `cli` names, writing its result to `out`.
///
/// A closed standard output (`gpukillctl list --watch | head`) ends the command successfully.
pub async fn run<W: Write, E: Write>(cli: Cli, out: &mut Output<W, E>) -> Result<(), Error> {
    let address = cli.socket.as_ref();
    let result = match &cli.command {
        cli::Command::List(args) => cmd::list::run(address, args, out).await,
        cli::Command::Kill(args) => cmd::kill::run(address, args, out).await,
        cli::Command::Reset(args) => cmd::reset::run(address, args, out).await,
        cli::Command::Events(args) => cmd::events::run(address, args, out).await,
        cli::Command::Audit(args) => cmd::audit::run(address, args, out).await,
        cli::Command::History(args) => cmd::history::run(address, args, out).await,
        cli::Command::Collection(command) => cmd::collection::run(address, command, out).await,
        cli::Command::Guard(command) => cmd::guard::run(address, command, out).await,
        cli::Command::Version(args) => cmd::version::run(address, args, out).await,
    };
    match result {
        Err(Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
