//! gpukillctl, the thin client of gpukilld: one clap subcommand per module in [`cmd`], each
//! making one RPC to the daemon (on its Unix socket, or over https with a token or a client
//! certificate, see [`conn`]) and rendering the answer as a table or JSON (or CSV, for the
//! reports `audit` and `history`).
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same function with
//! an in-memory [`Output`].

pub mod cli;
pub mod cmd;
pub mod conn;
pub mod error;
pub mod render;
pub mod term;

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
    /// Whether `writer` is a terminal; `list --watch` then draws full-screen frames.
    pub is_tty: bool,
    /// The width tables fit ([`term::output_width`]); `None`: no limit.
    pub width: Option<usize>,
    /// Whether keys typed on the terminal reach gpukillctl (standard input is the terminal
    /// and gpukillctl runs in its foreground), so that `q` quits `list --watch`.
    pub keys: bool,
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
            width: term::output_width(is_tty),
            keys: is_tty && term::keys_available(),
            tz: TimeZone::Local,
        }
    }
}

/// Moves the cursor home and clears the screen, so each `list --watch` frame replaces the
/// last: with those of [`term::Screen`], the only control sequences gpukillctl prints on
/// purpose.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

impl<W: Write, E: Write> Output<W, E> {
    /// Writes `text` and flushes, so each watch frame appears whole. Control characters
    /// other than the line feed are shown as escapes ([`render::escape::lines`]): much of
    /// what is printed was written by other users, and none of it may drive the terminal.
    /// JSON passes unchanged (its encoder escapes every control character itself), CSV too
    /// unless a field holds one.
    pub fn write(&mut self, text: &str) -> Result<(), Error> {
        self.write_exact(&render::escape::lines(text))
    }

    /// Writes `text` as it is and flushes: only for output that must stay byte for byte what
    /// gpukilld sent and that does not go to a terminal (`guard export` into a file).
    pub fn write_exact(&mut self, text: &str) -> Result<(), Error> {
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(Error::Output)
    }

    /// Clears the terminal and writes `text` (escaped as by [`write`](Self::write)), in one
    /// write, so a watch frame replaces the last without flicker.
    pub fn redraw(&mut self, text: &str) -> Result<(), Error> {
        let frame = format!("{CLEAR_SCREEN}{}", render::escape::lines(text));
        self.write_exact(&frame)
    }

    /// Writes `line` and a newline to [`notes`](Self::notes), escaped as by
    /// [`write`](Self::write) (notes quote gpukilld's words, e.g. why a reservation ended).
    pub fn note(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.notes, "{}", render::escape::lines(line))
            .and_then(|()| self.notes.flush())
            .map_err(Error::Output)
    }
}

/// Runs the command `cli` names, writing its result to `out`.
///
/// A closed standard output (`gpukillctl list --watch | head`) ends the command successfully.
pub async fn run<W: Write, E: Write>(cli: Cli, out: &mut Output<W, E>) -> Result<(), Error> {
    // The options are checked (and credential files read) once, before any command runs.
    let target = conn::Target::new(&cli.connect);
    let result = match (&cli.command, target) {
        // The client's version is printed even when the options are unusable.
        (cli::Command::Version(args), target) => cmd::version::run(target, args, out).await,
        // No daemon is asked.
        (cli::Command::Completions(args), _) => cmd::completions::run(args, out),
        (cli::Command::Man(args), _) => cmd::man::run(args, out),
        (_, Err(err)) => Err(err),
        (cli::Command::List(args), Ok(target)) => cmd::list::run(&target, args, out).await,
        (cli::Command::Kill(args), Ok(target)) => cmd::kill::run(&target, args, out).await,
        (cli::Command::Reset(args), Ok(target)) => cmd::reset::run(&target, args, out).await,
        (cli::Command::Events(args), Ok(target)) => cmd::events::run(&target, args, out).await,
        (cli::Command::Health(args), Ok(target)) => cmd::health::run(&target, args, out).await,
        (cli::Command::Audit(args), Ok(target)) => cmd::audit::run(&target, args, out).await,
        (cli::Command::History(args), Ok(target)) => cmd::history::run(&target, args, out).await,
        (cli::Command::Collection(command), Ok(target)) => {
            cmd::collection::run(&target, command, out).await
        }
        (cli::Command::Guard(command), Ok(target)) => cmd::guard::run(&target, command, out).await,
        (cli::Command::Uploads(command), Ok(target)) => {
            cmd::uploads::run(&target, command, out).await
        }
        (cli::Command::Cluster(command), Ok(target)) => {
            cmd::cluster::run(&target, command, out).await
        }
        (cli::Command::Reserve(args), Ok(target)) => cmd::reserve::run(&target, args, out).await,
        (cli::Command::Release(args), Ok(target)) => cmd::release::run(&target, args, out).await,
        (cli::Command::Status(args), Ok(target)) => cmd::status::run(&target, args, out).await,
        (cli::Command::Drain(args), Ok(target)) => cmd::drain::drain(&target, args, out).await,
        (cli::Command::Undrain(args), Ok(target)) => cmd::drain::undrain(&target, args, out).await,
        (cli::Command::Run(args), Ok(target)) => cmd::run::run(&target, args, out).await,
    };
    match result {
        Err(Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> Output<Vec<u8>, Vec<u8>> {
        Output {
            writer: Vec::new(),
            notes: Vec::new(),
            is_tty: false,
            width: None,
            keys: false,
            tz: TimeZone::Utc,
        }
    }

    const HOSTILE: &str = "a\x1b]0;pwned\x07\x1b[2K\r\u{9b}\u{202e}\tb\n";
    const SHOWN: &str = "a\\e]0;pwned\\x07\\e[2K\\r\\u{9b}\\u{202e}\\tb\n";

    #[test]
    fn writes_and_notes_escape_control_characters_but_keep_lines() {
        let mut out = output();
        out.write(HOSTILE).expect("write");
        out.note(HOSTILE.trim_end()).expect("note");
        assert_eq!(String::from_utf8(out.writer).expect("UTF-8"), SHOWN);
        assert_eq!(String::from_utf8(out.notes).expect("UTF-8"), SHOWN);
    }

    #[test]
    fn exact_writes_and_redraws() {
        let mut out = output();
        out.write_exact(HOSTILE).expect("write");
        assert_eq!(String::from_utf8(out.writer).expect("UTF-8"), HOSTILE);
        let mut out = output();
        out.redraw(HOSTILE).expect("redraw");
        assert_eq!(
            String::from_utf8(out.writer).expect("UTF-8"),
            format!("\x1b[H\x1b[2J{SHOWN}")
        );
    }

    #[test]
    fn csv_keeps_line_breaks_in_quoted_fields_and_escapes_the_rest() {
        let text = render::csv::csv(
            &["NAME", "NOTE"],
            [vec!["x\x1b[2Jy".to_owned(), "two\nlines\r".to_owned()]].into_iter(),
        );
        let mut out = output();
        out.write(&text).expect("write");
        assert_eq!(
            String::from_utf8(out.writer).expect("UTF-8"),
            "NAME,NOTE\nx\\e[2Jy,\"two\nlines\\r\"\n"
        );
    }
}
