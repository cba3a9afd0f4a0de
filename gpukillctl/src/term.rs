//! The terminal gpukillctl writes to: its size, and the full-screen mode of `list --watch`.
//!
//! `list --watch` on a terminal draws each frame on the alternate screen (as `watch`, `top`
//! and nvitop do, so the shell's screen comes back unchanged afterwards), hides the cursor,
//! and reads keys from standard input without echo or line editing, so `q` quits at once.
//! The terminal keeps generating signals (Ctrl-C is still SIGINT). [`Screen`] undoes all of
//! it when it is dropped: when the watch ends for any reason, an error or a panic included;
//! signals that end the watch (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are caught by the watch loop
//! for that reason, and Ctrl-Z (SIGTSTP) restores the terminal before the process stops and
//! takes it again when the shell continues it ([`Screen::suspend`]).

use std::io::{IsTerminal, Write};
use std::os::fd::RawFd;

/// The size of a terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Characters per line.
    pub columns: usize,
    /// Lines.
    pub rows: usize,
}

/// The size of the terminal `fd` refers to; `None` when it is not a terminal or reports
/// no size (0 x 0, as a serial console may).
pub fn size(fd: RawFd) -> Option<Size> {
    let mut window = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which is valid and
    // exclusively borrowed for the call.
    let done = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut window) };
    (done == 0 && window.ws_col > 0 && window.ws_row > 0).then(|| Size {
        columns: usize::from(window.ws_col),
        rows: usize::from(window.ws_row),
    })
}

/// The terminal size of standard output, when it is a terminal.
pub fn stdout_size() -> Option<Size> {
    size(libc::STDOUT_FILENO)
}

/// The width tables fit on standard output: the terminal's columns (80 when it reports no
/// size); for output that is not a terminal, `$COLUMNS` when set (as `watch` sets it),
/// otherwise no limit.
pub fn output_width(is_tty: bool) -> Option<usize> {
    if is_tty {
        return Some(stdout_size().map_or(80, |size| size.columns));
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.trim().parse::<usize>().ok())
        .filter(|columns| *columns > 0)
}

/// Whether keys can be read from standard input: it is a terminal and this process is in its
/// foreground (a background job that changed the terminal's modes would be stopped).
pub fn keys_available() -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    // SAFETY: plain queries of the calling process and of an open descriptor.
    let (foreground, own) = unsafe { (libc::tcgetpgrp(libc::STDIN_FILENO), libc::getpgrp()) };
    foreground == own
}

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// The full-screen mode of `list --watch`; dropping it restores the terminal.
#[derive(Debug)]
pub struct Screen {
    /// Standard input's modes before, when keys are read.
    saved: Option<libc::termios>,
    /// Whether the screen is taken now (not between [`suspend`](Self::suspend) and
    /// [`resume`](Self::resume)).
    active: bool,
}

impl Screen {
    /// Takes standard output's terminal (alternate screen, no cursor) and, when `keys`,
    /// standard input's (no echo, keys one at a time, signals kept).
    pub fn enter(keys: bool) -> Self {
        let mut screen = Screen {
            saved: None,
            active: false,
        };
        if keys {
            screen.saved = current_modes();
        }
        screen.resume();
        screen
    }

    /// Whether keys are read (standard input is in key-at-a-time mode).
    pub fn reads_keys(&self) -> bool {
        self.saved.is_some()
    }

    /// Gives the terminal back as it was (before the process stops on Ctrl-Z).
    pub fn suspend(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if let Some(saved) = &self.saved {
            set_modes(saved);
        }
        write_stdout(LEAVE);
    }

    /// Takes the terminal again (after [`suspend`](Self::suspend)).
    pub fn resume(&mut self) {
        if self.active {
            return;
        }
        self.active = true;
        if let Some(saved) = &self.saved {
            let mut modes = *saved;
            modes.c_lflag &= !(libc::ICANON | libc::ECHO);
            modes.c_cc[libc::VMIN] = 1;
            modes.c_cc[libc::VTIME] = 0;
            set_modes(&modes);
        }
        write_stdout(ENTER);
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.suspend();
    }
}

/// Standard input's terminal modes, or `None` when they cannot be read.
fn current_modes() -> Option<libc::termios> {
    // SAFETY: all-zero is a valid `termios` (plain integers and arrays), overwritten below.
    let mut modes: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one `termios` through the valid, exclusive pointer.
    let done = unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut modes) };
    (done == 0).then_some(modes)
}

/// Sets standard input's terminal modes once the output written so far is sent.
fn set_modes(modes: &libc::termios) {
    // SAFETY: tcsetattr reads one `termios` through the valid pointer. A failure (the
    // terminal is gone) leaves nothing to restore.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSADRAIN, modes) };
}

/// Writes a control sequence to standard output, ignoring a closed terminal.
fn write_stdout(sequence: &str) {
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(sequence.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Keys typed on standard input, one byte each, read by a thread of their own (a blocking
/// read on the runtime could keep it from shutting down; the thread ends with the process).
pub fn keys() -> tokio::sync::mpsc::Receiver<u8> {
    let (send, receive) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("gpukillctl-keys".to_owned())
        .spawn(move || {
            let mut byte = [0u8; 1];
            loop {
                // SAFETY: read writes at most one byte into the valid, exclusive buffer.
                let read = unsafe { libc::read(libc::STDIN_FILENO, byte.as_mut_ptr().cast(), 1) };
                match read {
                    1 => {
                        if send.blocking_send(byte[0]).is_err() {
                            return;
                        }
                    }
                    // Interrupted by a signal (Ctrl-Z and back): read again.
                    -1 if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted => {}
                    // End of input or an error: no more keys.
                    _ => return,
                }
            }
        });
    // Without the thread there are no keys; Ctrl-C still ends the watch.
    drop(spawned);
    receive
}

/// Whether `key` asks to quit: `q` or `Q`.
pub fn is_quit(key: u8) -> bool {
    matches!(key, b'q' | b'Q')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_not_a_terminal() {
        let file = tempfile::tempfile().expect("temp file");
        assert_eq!(size(std::os::fd::AsRawFd::as_raw_fd(&file)), None);
        assert_eq!(size(-1), None);
    }

    #[test]
    fn q_quits() {
        assert!(is_quit(b'q') && is_quit(b'Q'));
        assert!(!is_quit(b'x') && !is_quit(3));
    }
}
