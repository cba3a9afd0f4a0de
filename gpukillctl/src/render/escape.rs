//! Text from gpukilld made safe to print on a terminal.
//!
//! Much of what gpukillctl prints was chosen by some user of the machine: a process name set
//! with `prctl(PR_SET_NAME)`, a command line, a reservation note, a user name on another
//! node, and the daemon's error messages that echo them. Printed raw, their control
//! characters would drive the terminal of whoever reads them, often root's: set the window
//! title (`ESC ] 0 ; ... BEL`), write the clipboard (OSC 52), erase or overwrite a line
//! (`ESC [ 2 K`, `CR`), and bidirectional overrides reorder what a line seems to say.
//!
//! Every character that can do that is shown as a visible escape instead:
//!
//! | character | shown as |
//! | --- | --- |
//! | tab, line feed, carriage return, escape | `\t`, `\n`, `\r`, `\e` |
//! | any other C0 control (U+0000 to U+001F) and DEL (U+007F) | `\xHH`, e.g. `\x07` |
//! | C1 controls (U+0080 to U+009F) | `\u{HH}`, e.g. `\u{9b}` |
//! | bidirectional embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069) | `\u{HHHH}`, e.g. `\u{202e}` |
//!
//! A backslash is printed as itself, not doubled: names and patterns with backslashes (a
//! guard regex such as `python\d+`) read as they are written, at the price that a name
//! holding the two characters `\e` looks like one holding an escape. `--output json` shows
//! every value exactly.
//!
//! [`cell`] escapes everything above (a table cell is one line); [`lines`] keeps the line
//! feed, for whole outputs and messages made of several lines. `Output::write`,
//! `Output::note` and the error printer pass everything through [`lines`], and the table
//! renderer passes each cell through [`cell`] before measuring column widths.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character and bidirectional override shown as an escape.
pub fn cell(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// `text` with every control character other than the line feed, and every bidirectional
/// override, shown as an escape: for text made of lines.
pub fn lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// Whether `c` is a bidirectional embedding, override or isolate (the "Trojan Source"
/// characters, CVE-2021-42574), which reorder how a line is displayed.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` may not reach a terminal as it is: a C0 or C1 control or DEL (Unicode's
/// category Cc), or a bidirectional override.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

fn escape(text: &str, keep_line_feeds: bool) -> Cow<'_, str> {
    let escaped = |c: char| is_unsafe(c) && !(keep_line_feeds && c == '\n');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !escaped(c) {
            out.push(c);
            continue;
        }
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            // Writing to a String cannot fail.
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in [
            "",
            "python3",
            "alice's run: GPU 2",
            "nœud 東京 😀",
            "C:\\path\\e",
        ] {
            assert!(
                matches!(cell(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
            assert!(
                matches!(lines(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
        assert!(matches!(lines("a\nb\n"), Cow::Borrowed("a\nb\n")));
    }

    #[test]
    fn terminal_attacks_become_visible_escapes() {
        // Window title, clipboard write (OSC 52), line erasure, carriage return.
        assert_eq!(
            cell("\x1b]0;pwned\x07\x1b[2K\rok"),
            "\\e]0;pwned\\x07\\e[2K\\rok"
        );
        assert_eq!(
            cell("\x1b]52;c;cm0gLXJmIH4=\x1b\\"),
            "\\e]52;c;cm0gLXJmIH4=\\e\\"
        );
        assert_eq!(cell("a\tb\nc"), "a\\tb\\nc");
        assert_eq!(cell("\0\x01\x1f\x7f"), "\\x00\\x01\\x1f\\x7f");
    }

    #[test]
    fn every_c0_c1_and_del_is_escaped_and_nothing_else_in_latin_1() {
        for code in 0u32..=0xff {
            let c = char::from_u32(code).expect("Latin-1");
            let text = c.to_string();
            let escaped = cell(&text);
            let control = code < 0x20 || (0x7f..=0x9f).contains(&code);
            assert_eq!(escaped != text, control, "U+{code:04X}");
            assert!(!escaped.chars().any(is_unsafe), "U+{code:04X}: {escaped:?}");
        }
        assert_eq!(cell("\u{80}\u{9b}\u{9f}"), "\\u{80}\\u{9b}\\u{9f}");
    }

    #[test]
    fn bidi_overrides_and_isolates_are_escaped() {
        assert_eq!(
            cell("safe\u{202e}txt.exe\u{2066}x\u{2069}"),
            "safe\\u{202e}txt.exe\\u{2066}x\\u{2069}"
        );
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert!(is_bidi_control(c));
            assert_eq!(cell(&c.to_string()), format!("\\u{{{:x}}}", u32::from(c)));
        }
        // Neighbours that do not reorder anything stay.
        for c in ['\u{2029}', '\u{202f}', '\u{2065}', '\u{206a}'] {
            assert!(!is_bidi_control(c), "{c:?}");
        }
    }

    #[test]
    fn lines_keep_the_line_feed_only() {
        assert_eq!(lines("one\ntwo\r\n\x1b[2J"), "one\ntwo\\r\n\\e[2J");
        assert_eq!(cell("one\ntwo"), "one\\ntwo");
    }

    #[test]
    fn a_backslash_stays_as_it_is() {
        assert_eq!(cell("python\\d+ \\e"), "python\\d+ \\e");
        assert_eq!(cell("\\\x1b"), "\\\\e");
    }
}
