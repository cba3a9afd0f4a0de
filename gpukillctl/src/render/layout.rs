//! Tables that fit the terminal.
//!
//! On a terminal, `list`, `cluster list` and `status` fit their tables to its width, as
//! nvitop does, so that no line wraps: each table has a list of [`Step`]s, tried in order
//! until it fits: drop a column that matters least (ECC before power, power before
//! temperature), or narrow a column of free text (a name, a command line) down to a minimum
//! width, its cells cut with `…`. `--wide`, and any output that is not a terminal (a pipe, a
//! file: scripts and `less -S` get everything, as with `ps`), shows every column whole;
//! `$COLUMNS` sets the width of such output when it is set.
//!
//! Widths are display widths (a CJK character takes two columns), measured after control
//! characters were escaped ([`escape::cell`]).

use super::escape;
use super::table::table;

/// One way to make a table narrower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Leave out the column of this header.
    Drop(&'static str),
    /// Narrow the column of this header, cutting its cells, but not below this many columns
    /// (nor below its header).
    Shrink(&'static str, usize),
}

/// A psql-style table of `header` and `rows` (as [`table`] renders it) no wider than
/// `width` columns when the `steps` allow it; every column whole when `width` is `None`.
pub fn fitted(
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
    steps: &[Step],
    width: Option<usize>,
) -> String {
    let Some(limit) = width else {
        return table(header, rows);
    };
    let rows: Vec<Vec<String>> = rows
        .map(|row| {
            row.iter()
                .map(|cell| escape::cell(cell).into_owned())
                .collect()
        })
        .collect();
    let mut columns: Vec<Column> = header
        .iter()
        .enumerate()
        .map(|(at, name)| Column {
            name,
            at,
            width: rows
                .iter()
                .filter_map(|row| row.get(at))
                .map(|cell| text_width(cell))
                .fold(text_width(name), usize::max),
        })
        .collect();
    for step in steps {
        let total = table_width(&columns);
        if total <= limit {
            break;
        }
        match *step {
            Step::Drop(name) => columns.retain(|column| column.name != name),
            Step::Shrink(name, min) => {
                if let Some(column) = columns.iter_mut().find(|column| column.name == name) {
                    let min = min.max(text_width(column.name));
                    // Never wider than it is: a column already narrower than `min` stays.
                    column.width = column
                        .width
                        .saturating_sub(total - limit)
                        .max(min)
                        .min(column.width);
                }
            }
        }
    }
    let kept: Vec<&str> = columns.iter().map(|column| column.name).collect();
    table(
        &kept,
        rows.iter().map(|row| {
            columns
                .iter()
                .map(|column| {
                    row.get(column.at)
                        .map_or_else(String::new, |cell| cut(cell, column.width))
                })
                .collect()
        }),
    )
}

/// A column being fitted: its header, where its cells are in a row, and its width.
struct Column<'a> {
    name: &'a str,
    at: usize,
    width: usize,
}

/// The width of a psql-style table with these columns: each cell padded by a space on both
/// sides, columns separated by `|` (the `-----+-----` line under the header is that wide).
fn table_width(columns: &[Column<'_>]) -> usize {
    columns.iter().map(|column| column.width + 2).sum::<usize>() + columns.len().saturating_sub(1)
}

/// The display width of `text` (in terminal columns).
pub fn text_width(text: &str) -> usize {
    // Most cells are printable ASCII, one column a byte; the Unicode tables are for the rest.
    if text.bytes().all(|byte| matches!(byte, b' '..=b'~')) {
        return text.len();
    }
    tabled::grid::util::string::get_string_width(text)
}

/// `text` cut to at most `width` display columns, ending in `…` when something was cut.
pub fn cut(text: &str, width: usize) -> String {
    if text_width(text) <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = tabled::grid::util::string::get_char_width(c);
        // Room must remain for the ellipsis.
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// `text` with every line cut to `width` display columns (see [`cut`]).
pub fn cut_lines(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(line) => {
                out.push_str(&cut(line, width));
                out.push('\n');
            }
            None => out.push_str(&cut(line, width)),
        }
    }
    out
}

/// The widest line of `text`, in display columns.
pub fn widest_line(text: &str) -> usize {
    text.lines().map(text_width).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> impl Iterator<Item = Vec<String>> {
        [
            vec![
                "0",
                "NVIDIA A100-SXM4-80GB",
                "3",
                "python train.py --epochs 10",
            ],
            vec!["1", "NVIDIA H100 80GB HBM3", "12", "-"],
        ]
        .into_iter()
        .map(|row| row.into_iter().map(str::to_owned).collect())
    }

    const HEADER: [&str; 4] = ["GPU", "NAME", "PIDS", "COMMAND"];
    const STEPS: [Step; 3] = [
        Step::Shrink("COMMAND", 10),
        Step::Drop("PIDS"),
        Step::Shrink("NAME", 8),
    ];

    #[test]
    fn without_a_width_every_column_is_whole() {
        assert_eq!(
            fitted(&HEADER, rows(), &STEPS, None),
            table(&HEADER, rows())
        );
        let wide = fitted(&HEADER, rows(), &STEPS, Some(1000));
        assert_eq!(wide, table(&HEADER, rows()));
    }

    #[test]
    fn steps_apply_in_order_until_the_table_fits() {
        let full = table(&HEADER, rows());
        let full_width = widest_line(&full);
        assert_eq!(full_width, 66);
        // Five columns too wide: the command loses five.
        let text = fitted(&HEADER, rows(), &STEPS, Some(61));
        assert_eq!(widest_line(&text), 61);
        assert!(text.contains("python train.py --epo…"), "{text}");
        assert!(text.contains("PIDS"), "{text}");
        // Narrower: the command down to 10, then PIDS goes, then the name narrows.
        let text = fitted(&HEADER, rows(), &STEPS, Some(40));
        assert!(widest_line(&text) <= 40, "{text}");
        assert!(!text.contains("PIDS"), "{text}");
        assert!(text.contains("python tr…"), "{text}");
        assert!(text.contains("NVIDIA A100-SXM4-8…"), "{text}");
        // Too narrow for every step: as narrow as the steps allow, never narrower.
        let text = fitted(&HEADER, rows(), &STEPS, Some(10));
        assert_eq!(widest_line(&text), 3 + 2 + 1 + 8 + 2 + 1 + 10 + 2);
    }

    #[test]
    fn the_separator_line_counts_and_columns_stay_aligned() {
        let text = fitted(&HEADER, rows(), &STEPS, Some(50));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("-----+"), "{text}");
        assert!(text_width(lines[1]) <= 50, "{text}");
        let bars = |line: &str| -> Vec<usize> {
            let mut at = 0;
            let mut found = Vec::new();
            for c in line.chars() {
                if c == '|' || c == '+' {
                    found.push(at);
                }
                at += tabled::grid::util::string::get_char_width(c);
            }
            found
        };
        for line in &lines {
            assert_eq!(bars(line), bars(lines[1]), "{text}");
        }
    }

    #[test]
    fn widths_are_display_columns() {
        for text in [
            "",
            "python:4242",
            " ~!",
            "東京",
            "e\u{301}",
            "🦀",
            "\t",
            "a\u{7f}b",
            "ü",
        ] {
            assert_eq!(
                text_width(text),
                tabled::grid::util::string::get_string_width(text),
                "{text:?}"
            );
        }
        assert_eq!(text_width("東京 ok"), 7);
    }

    #[test]
    fn cutting_counts_display_columns_and_ends_in_an_ellipsis() {
        assert_eq!(cut("python", 6), "python");
        assert_eq!(cut("python", 5), "pyth…");
        assert_eq!(cut("東京大学", 5), "東京…");
        assert_eq!(text_width(&cut("東京大学", 4)), 3);
        assert_eq!(cut("abc", 0), "");
        assert_eq!(cut_lines("abcdef\nab\nabcdef", 4), "abc…\nab\nabc…");
    }

    #[test]
    fn control_characters_are_escaped_before_measuring() {
        let rows = [vec!["0".to_owned(), "py\x1b[2Jthon".to_owned()]];
        let text = fitted(&["GPU", "PROC"], rows.into_iter(), &[], Some(80));
        assert!(text.contains("py\\e[2Jthon"), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
