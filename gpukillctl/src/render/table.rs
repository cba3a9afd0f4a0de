//! The human tables of `gpukillctl list` (whose rows `cluster list` reuses).
//!
//! Layout, top to bottom:
//! 1. `host  <ts RFC 3339 UTC, seconds>  seq N`, plus `  STALE: <reason>` when stale;
//! 2. the GPU table (the columns of the original gpukill);
//! 3. one `GPU i (name): error: ...` line per GPU that could not be read;
//! 4. one `vendor: state: message` line per vendor whose last poll was not OK;
//! 5. with `--details` or `--containers`, a blank line and the process table.
//!
//! Every absent value is `-`. Tables use tabled's psql style with trailing spaces trimmed.

use gpukill_proto::v1::{Gpu, GpuProcess, Snapshot, VendorState};
use tabled::builder::Builder;
use tabled::settings::Style;

use super::escape;
use super::time::{TimeZone, age, clock, rfc3339_seconds};
use super::{mib, pid_count, top_process, vendor_name, vendor_state_name};

/// The placeholder for an absent value.
pub(crate) const ABSENT: &str = "-";

/// Which tables to show, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOptions {
    /// Show the process table.
    pub details: bool,
    /// Show the process table with the container columns (RUNTIME, POD).
    pub containers: bool,
    /// The time zone of process start times.
    pub tz: TimeZone,
}

/// Renders `snapshot` as text, ending in a newline.
pub fn render(snapshot: &Snapshot, options: &TableOptions) -> String {
    let mut text = header(snapshot);
    text.push_str(&table(
        &GPU_HEADER,
        snapshot.gpus.iter().map(|gpu| gpu_row(snapshot, gpu)),
    ));
    for line in problems(snapshot) {
        text.push_str(&line);
        text.push('\n');
    }
    if options.details || options.containers {
        text.push('\n');
        text.push_str(&table(
            &process_header(options),
            snapshot
                .processes
                .iter()
                .map(|process| process_row(snapshot, process, options)),
        ));
    }
    text
}

/// What is wrong in `snapshot`, one line each (without a newline): `GPU i (name): error: ...`
/// per GPU that could not be read, then `vendor: state: message` per vendor whose last poll
/// was not OK.
pub(crate) fn problems(snapshot: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for gpu in snapshot.gpus.iter().filter(|gpu| gpu.error.is_some()) {
        let name = gpu.name.as_deref().unwrap_or(ABSENT);
        let error = gpu.error.as_deref().unwrap_or_default();
        lines.push(format!("GPU {} ({name}): error: {error}", gpu.index));
    }
    for vendor in &snapshot.vendors {
        if vendor.state == VendorState::Ok as i32 {
            continue;
        }
        let mut line = format!(
            "{}: {}",
            vendor_name(vendor.vendor),
            vendor_state_name(vendor.state)
        );
        if let Some(message) = &vendor.message {
            line.push_str(": ");
            line.push_str(message);
        }
        lines.push(line);
    }
    lines
}

/// The header line.
fn header(snapshot: &Snapshot) -> String {
    let ts = rfc3339_seconds(snapshot.timestamp_unix_ms);
    let mut line = format!(
        "{}  {}  seq {}",
        snapshot.host,
        ts.as_deref().unwrap_or(ABSENT),
        snapshot.sequence
    );
    if snapshot.stale {
        line.push_str("  STALE: ");
        line.push_str(
            snapshot
                .stale_reason
                .as_deref()
                .unwrap_or("no reason given"),
        );
    }
    line.push('\n');
    line
}

/// The columns of the GPU table (those of the original gpukill).
pub(crate) const GPU_HEADER: [&str; 9] = [
    "GPU",
    "NAME",
    "MEM_USED/TOTAL",
    "UTIL(%)",
    "TEMP(°C)",
    "POWER(W)",
    "ECC(volatile)",
    "PIDS",
    "TOP_PROC",
];

/// The GPU table's row for `gpu` of `snapshot`.
pub(crate) fn gpu_row(snapshot: &Snapshot, gpu: &Gpu) -> Vec<String> {
    vec![
        gpu.index.to_string(),
        or_absent(gpu.name.as_deref()),
        format!(
            "{}/{}",
            or_absent(gpu.memory_used_bytes.map(mib)),
            or_absent(gpu.memory_total_bytes.map(mib))
        ),
        or_absent(gpu.utilization_gpu_pct),
        or_absent(gpu.temperature_c),
        or_absent(gpu.power_mw.map(watts)),
        or_absent(gpu.ecc_volatile_errors),
        or_absent(pid_count(snapshot, gpu)),
        or_absent(
            top_process(snapshot, gpu).map(|process| format!("{}:{}", process.name, process.pid)),
        ),
    ]
}

/// The columns of the process table: with `options.containers`, RUNTIME and POD too.
pub(crate) fn process_header(options: &TableOptions) -> Vec<&'static str> {
    let mut header = vec![
        "GPU",
        "PID",
        "USER",
        "PROC",
        "VRAM_MB",
        "START",
        "CONTAINER",
    ];
    if options.containers {
        header.extend(["RUNTIME", "POD"]);
    }
    header
}

/// The process table's row for `process` of `snapshot`.
pub(crate) fn process_row(
    snapshot: &Snapshot,
    process: &GpuProcess,
    options: &TableOptions,
) -> Vec<String> {
    let container = process.container.as_ref();
    let mut row = vec![
        process.gpu_index.to_string(),
        process.pid.to_string(),
        process.user.clone(),
        process.name.clone(),
        or_absent(process.used_memory_bytes.map(mib)),
        start(process, snapshot.timestamp_unix_ms, options.tz),
        or_absent(container.map(|c| c.id.chars().take(12).collect::<String>())),
    ];
    if options.containers {
        row.push(or_absent(container.map(|c| c.runtime.clone())));
        row.push(or_absent(container.and_then(|c| c.pod_uid.clone())));
    }
    row
}

/// `HH:MM:SS (age)`: the start time in `tz` and the age as of the snapshot (not as of now, so
/// the same snapshot always renders the same way).
fn start(process: &GpuProcess, now_ms: i64, tz: TimeZone) -> String {
    match clock(process.start_time_unix_ms, tz) {
        Some(time) => format!(
            "{time} ({})",
            age(now_ms.saturating_sub(process.start_time_unix_ms))
        ),
        None => ABSENT.to_owned(),
    }
}

/// Milliwatts as watts with one decimal, rounded half up: 245_150 -> `245.2`.
fn watts(mw: u32) -> String {
    let tenths = (u64::from(mw) + 50) / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// `value` as text, or `-` when absent.
pub(crate) fn or_absent<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |value| value.to_string())
}

/// `text`, or `-` when it is empty (the proto's "unset" for a string).
pub(crate) fn or_absent_str(text: &str) -> String {
    if text.is_empty() {
        ABSENT.to_owned()
    } else {
        text.to_owned()
    }
}

/// A psql-style table of `header` and `rows`, without trailing spaces, ending in a newline.
///
/// Every cell is escaped ([`escape::cell`]) before the column widths are measured, so a
/// name with control characters can neither drive the terminal nor break the layout.
pub(crate) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut builder = Builder::default();
    builder.push_record(header.iter().map(|cell| escape::cell(cell).into_owned()));
    for row in rows {
        builder.push_record(row.iter().map(|cell| escape::cell(cell).into_owned()));
    }
    let mut table = builder.build();
    table.with(Style::psql());
    let mut text = String::new();
    for line in table.to_string().lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use gpukill_proto::v1::Vendor;

    const PLAIN: TableOptions = TableOptions {
        details: false,
        containers: false,
        tz: TimeZone::Utc,
    };

    #[test]
    fn gpu_table() {
        assert_snapshot("list-table.txt", &render(&testutil::snapshot(), &PLAIN));
    }

    #[test]
    fn details_add_the_process_table() {
        let options = TableOptions {
            details: true,
            ..PLAIN
        };
        assert_snapshot("list-details.txt", &render(&testutil::snapshot(), &options));
    }

    #[test]
    fn containers_add_runtime_and_pod() {
        let options = TableOptions {
            containers: true,
            ..PLAIN
        };
        assert_snapshot(
            "list-containers.txt",
            &render(&testutil::snapshot(), &options),
        );
    }

    #[test]
    fn stale_snapshots_say_why_and_name_the_hung_vendor() {
        assert_snapshot(
            "list-stale.txt",
            &render(&testutil::stale_snapshot(), &PLAIN),
        );
    }

    #[test]
    fn absent_values_are_dashes() {
        let text = render(&testutil::snapshot(), &PLAIN);
        let lost = text
            .lines()
            .find(|line| line.starts_with(" 1 "))
            .expect("a row for GPU 1");
        let cells: Vec<&str> = lost.split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "1",
                "NVIDIA A100-SXM4-80GB",
                "-/81920",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ]
        );
    }

    #[test]
    fn an_empty_snapshot_still_has_headers() {
        let snapshot = Snapshot {
            host: "h".to_owned(),
            ..Default::default()
        };
        let options = TableOptions {
            details: true,
            ..PLAIN
        };
        let expected = [
            "h  -  seq 0",
            " GPU | NAME | MEM_USED/TOTAL | UTIL(%) | TEMP(°C) | POWER(W) | ECC(volatile) | PIDS | TOP_PROC",
            "-----+------+----------------+---------+----------+----------+---------------+------+----------",
            "",
            " GPU | PID | USER | PROC | VRAM_MB | START | CONTAINER",
            "-----+-----+------+------+---------+-------+-----------",
            "",
        ];
        assert_eq!(render(&snapshot, &options), expected.join("\n"));
    }

    #[test]
    fn vendors_without_a_message_print_their_state() {
        let snapshot = Snapshot {
            vendors: vec![gpukill_proto::v1::VendorStatus {
                vendor: Vendor::Amd as i32,
                state: VendorState::Error as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(render(&snapshot, &PLAIN).ends_with("\namd: error\n"));
    }

    /// What a process renamed with prctl(PR_SET_NAME) may hold: set the window title, ring,
    /// erase the line, return to its start.
    const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2K\r";
    /// How a table shows it.
    const SHOWN: &str = "\\e]0;pwned\\x07\\e[2K\\r";

    /// The test snapshot with `name` in a process name (GPU 0's top process), after a
    /// right-to-left override in a user name, and after a C1 CSI in a GPU name.
    fn hostile(name: &str, rlo: &str, csi: &str) -> Snapshot {
        let mut snapshot = testutil::snapshot();
        snapshot.processes[0].name = format!("py{name}");
        snapshot.processes[1].user = format!("bob{rlo}{name}");
        snapshot.gpus[0].name = Some(format!("A100{csi}2J{name}"));
        snapshot
    }

    /// The char columns of the `|` separators of each table line.
    fn separators(line: &str) -> Vec<usize> {
        line.chars()
            .enumerate()
            .filter(|(_, c)| *c == '|')
            .map(|(at, _)| at)
            .collect()
    }

    #[test]
    fn hostile_names_are_escaped_and_the_columns_still_line_up() {
        let options = TableOptions {
            details: true,
            ..PLAIN
        };
        let text = render(&hostile(HOSTILE, "\u{202e}", "\u{9b}"), &options);
        assert!(
            !text.chars().any(|c| c != '\n' && escape::is_unsafe(c)),
            "{text:?}"
        );
        // The very table of names that held the escaped text to begin with: the cells are
        // escaped before the widths are measured, and nothing else changed.
        assert_eq!(
            text,
            render(&hostile(SHOWN, "\\u{202e}", "\\u{9b}"), &options)
        );
        assert!(
            text.contains(&format!("py{SHOWN}:4242")),
            "TOP_PROC: {text}"
        );
        assert!(text.contains(&format!("bob\\u{{202e}}{SHOWN}")), "{text}");
        for block in text.split("\n\n") {
            let rows: Vec<&str> = block.lines().filter(|line| line.contains('|')).collect();
            assert!(rows.len() >= 3, "{block}");
            for row in &rows {
                assert_eq!(separators(row), separators(rows[0]), "{block}");
            }
        }
    }

    #[test]
    fn lines_outside_the_tables_are_left_to_the_output() {
        // The host line and the problem lines are not cells: `Output::write` escapes them.
        let mut snapshot = testutil::stale_snapshot();
        snapshot.stale_reason = Some(format!("hung{HOSTILE}"));
        let text = render(&snapshot, &PLAIN);
        let mut out = crate::Output {
            writer: Vec::new(),
            notes: Vec::new(),
            is_tty: false,
            tz: TimeZone::Utc,
        };
        out.write(&text).expect("write");
        let written = String::from_utf8(out.writer).expect("UTF-8");
        assert!(
            written.contains(&format!("STALE: hung{SHOWN}")),
            "{written}"
        );
        assert!(!written.chars().any(|c| c != '\n' && escape::is_unsafe(c)));
        assert_eq!(written.lines().count(), text.lines().count());
    }

    #[test]
    fn watts_have_one_decimal() {
        assert_eq!(watts(0), "0.0");
        assert_eq!(watts(245_123), "245.1");
        assert_eq!(watts(245_150), "245.2");
        assert_eq!(watts(999), "1.0");
        assert_eq!(watts(u32::MAX), "4294967.3");
    }
}
