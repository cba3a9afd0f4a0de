//! gpukillctl, the thin client of gpukilld: one clap subcommand per module in [`cmd`], each
//! making one RPC over the daemon's Unix socket and rendering the answer as a table or JSON.
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
pub struct Output<W> {
    /// Where results go.
    pub writer: W,
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
            is_tty,
            tz: TimeZone::Local,
        }
    }
}

impl<W: Write> Output<W> {
    /// Writes `text` and flushes, so each watch frame appears whole.
    pub fn write(&mut self, text: &str) -> Result<(), Error> {
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(Error::Output)
    }
}

/// Runs the command `cli` names, writing its result to `out`.
///
/// A closed standard output (`gpukillctl list --watch | head`) ends the command successfully.
pub async fn run<W: Write>(cli: Cli, out: &mut Output<W>) -> Result<(), Error> {
    let address = cli.socket.as_ref();
    let result = match &cli.command {
        cli::Command::List(args) => cmd::list::run(address, args, out).await,
        cli::Command::Version(args) => cmd::version::run(address, args, out).await,
    };
    match result {
        Err(Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
