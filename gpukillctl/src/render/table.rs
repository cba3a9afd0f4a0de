//! The human tables of `gpukillctl list` (whose rows `cluster list` reuses).
//!
//! Layout, top to bottom:
//! 1. the header: `host  YYYY-MM-DD HH:MM:SS  sampled 0.1s ago  NVIDIA driver 550.54.15  CUDA
//!    12.4`: the time of the sample in the chosen [`TimeZone`], how old its GPU data was when
//!    gpukilld sent it, and each vendor's driver (with the CUDA version it supports);
//! 2. `STALE: <reason>` when the snapshot is stale;
//! 3. the GPU table: memory in MiB as nvidia-smi shows it, utilization in %, temperature in
//!    °C, power in W, the health state (`-` when unknown);
//! 4. one `GPU i (name): error: ...` line per GPU that could not be read, and one
//!    `GPU i (name): critical: why` per GPU that is not fit for work;
//! 5. one `vendor: state: message` line per vendor whose last poll was not OK;
//! 6. with `--details` or `--containers`, a blank line and the process table, ending with
//!    each process's command line.
//!
//! Every absent value is `-`. Tables are psql-style ([`table`]) with trailing spaces trimmed.
//! With a width ([`TableOptions::width`]), the header and the tables fit it ([`layout`]:
//! the GPU table drops ECC, then power, ..., health last; the process table narrows the
//! command line first); without one, everything is shown whole.

use std::borrow::Cow;

use gpukill_proto::v1::{Gpu, GpuProcess, Snapshot, Vendor, VendorState};

use super::escape;
use super::health::{gpu_state, state_cell, unfit_line};
use super::layout::{self, Step, cut, text_width};
use super::time::{TimeZone, age, clock, date_time};
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
    /// The time zone of the sample time and process start times.
    pub tz: TimeZone,
    /// The width to fit (a terminal's columns); `None`: every column whole (`--wide`, or
    /// output that is not a terminal).
    pub width: Option<usize>,
}

/// How the GPU table narrows to fit: ECC first (a count that is nearly always 0), then the
/// free-text columns down to a readable width, then power and the process count, then the
/// names further, then temperature, health last (a word, and the lines under the table
/// name an unfit GPU anyway). GPU, memory and utilization always stay.
pub(crate) const GPU_STEPS: [Step; 9] = [
    Step::Drop("ECC"),
    Step::Shrink("TOP_PROC", 16),
    Step::Shrink("NAME", 16),
    Step::Drop("POWER"),
    Step::Drop("PIDS"),
    Step::Shrink("TOP_PROC", 10),
    Step::Shrink("NAME", 10),
    Step::Drop("TEMP"),
    Step::Drop("HEALTH"),
];

/// How the process table narrows to fit: the command line takes what is left (as `ps` and
/// nvitop show it), then the pod, the process name and user narrow, then the columns that
/// matter least go. GPU, PID and memory always stay.
pub(crate) const PROCESS_STEPS: [Step; 8] = [
    Step::Shrink("COMMAND", 16),
    Step::Shrink("POD", 13),
    Step::Shrink("PROC", 12),
    Step::Drop("RUNTIME"),
    Step::Drop("COMMAND"),
    Step::Shrink("USER", 8),
    Step::Drop("START"),
    Step::Shrink("CONTAINER", 8),
];

/// Renders `snapshot` as text, ending in a newline.
pub fn render(snapshot: &Snapshot, options: &TableOptions) -> String {
    let mut text = header(snapshot, options);
    text.push_str(&layout::fitted(
        &GPU_HEADER,
        snapshot.gpus.iter().map(|gpu| gpu_row(snapshot, gpu)),
        &GPU_STEPS,
        options.width,
    ));
    for line in problems(snapshot) {
        text.push_str(&line);
        text.push('\n');
    }
    if options.details || options.containers {
        text.push('\n');
        text.push_str(&layout::fitted(
            &process_header(options),
            snapshot
                .processes
                .iter()
                .map(|process| process_row(snapshot, process, options)),
            &PROCESS_STEPS,
            options.width,
        ));
    }
    text
}

/// What is wrong in `snapshot`, one line each (without a newline): per GPU, `GPU i (name):
/// error: ...` when it could not be read and `GPU i (name): critical: why` when it is not fit
/// for work ([`unfit_line`]); then `vendor: state: message` per vendor whose last poll was
/// not OK.
pub(crate) fn problems(snapshot: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for gpu in &snapshot.gpus {
        if let Some(error) = &gpu.error {
            let name = gpu.name.as_deref().unwrap_or(ABSENT);
            lines.push(format!("GPU {} ({name}): error: {error}", gpu.index));
        }
        lines.extend(unfit_line(gpu));
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

/// The header: the host, when the sample was taken and how old it was, the drivers; then a
/// `STALE: ...` line when the snapshot is stale. With a width, the first line keeps what
/// fits, in this order: the host, the time of day, the age, the date, each driver.
fn header(snapshot: &Snapshot, options: &TableOptions) -> String {
    let date = date_time(snapshot.timestamp_unix_ms, options.tz);
    let time = clock(snapshot.timestamp_unix_ms, options.tz);
    let sampled = format!("sampled {} ago", sample_age(snapshot.age_ms));
    let drivers = drivers(snapshot);
    let host = escape::cell(&snapshot.host).into_owned();
    let full: Vec<&str> = [host.as_str()]
        .into_iter()
        .chain(date.as_deref().or(Some(ABSENT)))
        .chain([sampled.as_str()])
        .chain(drivers.iter().map(String::as_str))
        .collect();
    let mut line = full.join("  ");
    if let Some(width) = options.width
        && text_width(&line) > width
    {
        // The date goes first, then the drivers from the last; the host is cut last of all.
        let mut parts: Vec<&str> = [host.as_str()]
            .into_iter()
            .chain(time.as_deref().or(Some(ABSENT)))
            .chain([sampled.as_str()])
            .chain(drivers.iter().map(String::as_str))
            .collect();
        while parts.len() > 3 && text_width(&parts.join("  ")) > width {
            parts.pop();
        }
        line = cut(&parts.join("  "), width);
    }
    line.push('\n');
    if snapshot.stale {
        let why = snapshot
            .stale_reason
            .as_deref()
            .unwrap_or("no reason given");
        line.push_str("STALE: ");
        line.push_str(why);
        line.push('\n');
    }
    line
}

/// How old the GPU data of a snapshot was when gpukilld sent it: tenths of a second below
/// ten seconds (`0.1s`, `3.2s`), then as [`age`] (`42s`, `5m12s`).
fn sample_age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{}.{}s", ms / 1000, ms % 1000 / 100)
    } else {
        age(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

/// Each vendor's driver as the header shows it: `NVIDIA driver 550.54.15  CUDA 12.4`,
/// `AMD driver 6.8.0`; vendors whose driver version is unknown are left out.
fn drivers(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .vendors
        .iter()
        .filter_map(|status| {
            let version = status.driver_version.as_deref()?;
            let name = match Vendor::try_from(status.vendor) {
                Ok(Vendor::Nvidia) => "NVIDIA",
                Ok(Vendor::Amd) => "AMD",
                Ok(Vendor::Intel) => "Intel",
                Ok(Vendor::Apple) => "Apple",
                Ok(Vendor::Unspecified) | Err(_) => "unknown",
            };
            let mut text = escape::cell(&format!("{name} driver {version}")).into_owned();
            if let Some(cuda) = &status.cuda_version {
                text.push_str("  CUDA ");
                text.push_str(&escape::cell(cuda));
            }
            Some(text)
        })
        .collect()
}

/// The columns of the GPU table.
pub(crate) const GPU_HEADER: [&str; 10] = [
    "GPU", "NAME", "MEMORY", "UTIL", "TEMP", "POWER", "ECC", "HEALTH", "PIDS", "TOP_PROC",
];

/// The GPU table's row for `gpu` of `snapshot`.
pub(crate) fn gpu_row(snapshot: &Snapshot, gpu: &Gpu) -> Vec<String> {
    vec![
        gpu.index.to_string(),
        or_absent(gpu.name.as_deref()),
        memory(gpu.memory_used_bytes, gpu.memory_total_bytes),
        or_absent(gpu.utilization_gpu_pct.map(|pct| format!("{pct}%"))),
        or_absent(gpu.temperature_c.map(|c| format!("{c}°C"))),
        or_absent(gpu.power_mw.map(watts)),
        or_absent(gpu.ecc_volatile_errors),
        state_cell(gpu_state(gpu)),
        or_absent(pid_count(snapshot, gpu)),
        or_absent(
            top_process(snapshot, gpu).map(|process| format!("{}:{}", process.name, process.pid)),
        ),
    ]
}

/// A GPU's memory as nvidia-smi shows it, in MiB: `25600 / 81920 MiB`, `- / 81920 MiB`
/// when the use is unknown, `-` when both are.
pub(crate) fn memory(used: Option<u64>, total: Option<u64>) -> String {
    match (used, total) {
        (None, None) => ABSENT.to_owned(),
        (used, total) => format!(
            "{} / {} MiB",
            or_absent(used.map(mib)),
            or_absent(total.map(mib))
        ),
    }
}

/// Memory in whole MiB with its unit (`20480 MiB`), or `-`.
pub(crate) fn mib_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| ABSENT.to_owned(), |bytes| format!("{} MiB", mib(bytes)))
}

/// The columns of the process table: with `options.containers`, RUNTIME and POD too.
pub(crate) fn process_header(options: &TableOptions) -> Vec<&'static str> {
    let mut header = vec!["GPU", "PID", "USER", "PROC", "MEMORY", "START", "CONTAINER"];
    if options.containers {
        header.extend(["RUNTIME", "POD"]);
    }
    header.push("COMMAND");
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
        mib_text(process.used_memory_bytes),
        start(process, snapshot.timestamp_unix_ms, options.tz),
        or_absent(container.map(|c| c.id.chars().take(12).collect::<String>())),
    ];
    if options.containers {
        row.push(or_absent(container.map(|c| c.runtime.clone())));
        row.push(or_absent(container.and_then(|c| c.pod_uid.clone())));
    }
    row.push(or_absent_str(&process.cmdline));
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

/// Milliwatts as whole watts, rounded half up, as nvidia-smi shows them: 245_500 -> `246 W`.
fn watts(mw: u32) -> String {
    format!("{} W", (u64::from(mw) + 500) / 1000)
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

/// A psql-style table of `header` and `rows`, without trailing spaces, ending in a newline:
/// every cell left-aligned with a space on each side, columns separated by `|`, the header
/// underlined with `-` joined by `+`, a row short of cells filled with empty ones.
///
/// Every cell is escaped ([`escape::cell`]) before the column widths are measured, so a
/// name with control characters can neither drive the terminal nor break the layout, and
/// every cell is one line.
///
/// This is tabled's `Style::psql()`, written out: tabled builds a grid configuration for
/// every table, which was most of the client's own work in a cold `gpukillctl list`
/// (docs/performance.md, client start-up); a test checks that both draw the same table.
pub(crate) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let records: Vec<Vec<Cow<'_, str>>> = std::iter::once(
        header
            .iter()
            .map(|cell| escape::cell(cell))
            .collect::<Vec<_>>(),
    )
    .chain(
        rows.iter()
            .map(|row| row.iter().map(|cell| escape::cell(cell)).collect()),
    )
    .collect();
    let cell_widths: Vec<Vec<usize>> = records
        .iter()
        .map(|record| record.iter().map(|cell| text_width(cell)).collect())
        .collect();
    let mut widths = vec![0; records.iter().map(Vec::len).max().unwrap_or(0)];
    for record in &cell_widths {
        for (width, cell) in widths.iter_mut().zip(record) {
            *width = (*width).max(*cell);
        }
    }
    let line_width = widths.iter().map(|width| width + 3).sum::<usize>();
    let mut text = String::with_capacity((records.len() + 1) * (line_width + 1));
    for (at, (record, cell_widths)) in records.iter().zip(&cell_widths).enumerate() {
        let start = text.len();
        for (column, width) in widths.iter().enumerate() {
            if column > 0 {
                text.push('|');
            }
            let cell = record.get(column).map_or("", |cell| cell.as_ref());
            text.push(' ');
            text.push_str(cell);
            let pad = width - cell_widths.get(column).copied().unwrap_or(0) + 1;
            text.extend(std::iter::repeat_n(' ', pad));
        }
        let kept = text[start..].trim_end().len();
        text.truncate(start + kept);
        text.push('\n');
        if at == 0 {
            for (column, width) in widths.iter().enumerate() {
                if column > 0 {
                    text.push('+');
                }
                text.extend(std::iter::repeat_n('-', width + 2));
            }
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use gpukill_proto::v1::{GpuHealth, HealthReason, HealthState, Vendor};

    const PLAIN: TableOptions = TableOptions {
        details: false,
        containers: false,
        tz: TimeZone::Utc,
        width: None,
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
                "- / 81920 MiB",
                "-",
                "-",
                "-",
                "-",
                "lost",
                "-",
                "-"
            ]
        );
    }

    /// [`testutil::snapshot`] with GPU 0's health `state` for `reasons` (severity, text).
    fn with_health(state: HealthState, reasons: &[(HealthState, &str)]) -> Snapshot {
        let mut snapshot = testutil::snapshot();
        snapshot.gpus[0].health = Some(GpuHealth {
            state: state as i32,
            reasons: reasons
                .iter()
                .map(|(severity, text)| HealthReason {
                    severity: *severity as i32,
                    text: (*text).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        snapshot
    }

    /// The HEALTH cell of GPU `index` in `text`.
    fn health_cell(text: &str, index: u32) -> String {
        let header: Vec<&str> = text
            .lines()
            .find(|line| line.starts_with(" GPU "))
            .expect("the GPU table")
            .split('|')
            .map(str::trim)
            .collect();
        let column = header
            .iter()
            .position(|cell| *cell == "HEALTH")
            .expect("a HEALTH column");
        let row = text
            .lines()
            .find(|line| line.starts_with(&format!(" {index} ")))
            .expect("the GPU's row");
        row.split('|')
            .nth(column)
            .expect("a cell")
            .trim()
            .to_owned()
    }

    #[test]
    fn the_health_column_names_the_state_and_an_unfit_gpu_gets_a_line() {
        use HealthState::{Critical, Lost, Ok, Unknown, Unspecified, Warning};
        let xid = "Xid 79 (GPU has fallen off the bus)";
        // Unknown, not assessed, or a GPU without health (the fixture's GPU 0): `-`.
        assert_eq!(health_cell(&render(&testutil::snapshot(), &PLAIN), 0), "-");
        for (state, shown) in [
            (Unspecified, "-"),
            (Unknown, "-"),
            (Ok, "ok"),
            (Warning, "warning"),
            (Critical, "critical"),
            (Lost, "lost"),
        ] {
            let text = render(&with_health(state, &[]), &PLAIN);
            assert_eq!(health_cell(&text, 0), shown, "{text}");
            // GPU 1 is lost, with an error line that says so: no second line.
            assert_eq!(health_cell(&text, 1), "lost", "{text}");
            assert_eq!(text.matches("GPU 1 (").count(), 1, "{text}");
        }
        // A critical GPU: its reasons of that severity under the table, not the warnings.
        let text = render(
            &with_health(
                Critical,
                &[
                    (Critical, xid),
                    (Critical, "1 uncorrectable ECC error"),
                    (Warning, "throttled: hw_thermal"),
                ],
            ),
            &PLAIN,
        );
        let problems: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("GPU "))
            .collect();
        assert_eq!(
            problems,
            [
                "GPU 0 (NVIDIA A100-SXM4-80GB): critical: Xid 79 (GPU has fallen off the bus); \
                 1 uncorrectable ECC error",
                "GPU 1 (NVIDIA A100-SXM4-80GB): error: GPU is lost",
            ]
        );
        // A warning is only the word in its column; a lost GPU without an error gets a line.
        let text = render(&with_health(Warning, &[(Warning, "throttled")]), &PLAIN);
        assert!(!text.contains("GPU 0 ("), "{text}");
        let text = render(&with_health(Lost, &[(Lost, "off the bus")]), &PLAIN);
        assert!(
            text.contains("\nGPU 0 (NVIDIA A100-SXM4-80GB): lost: off the bus\n"),
            "{text}"
        );
        // A state this client does not know yet is named by its number.
        let mut newer = testutil::snapshot();
        newer.gpus[0].health = Some(GpuHealth {
            state: 42,
            ..Default::default()
        });
        assert_eq!(health_cell(&render(&newer, &PLAIN), 0), "unknown(42)");
    }

    #[test]
    fn health_outlasts_temperature_when_the_table_narrows() {
        let snapshot = with_health(HealthState::Critical, &[]);
        let fit = |width| {
            render(
                &snapshot,
                &TableOptions {
                    width: Some(width),
                    ..PLAIN
                },
            )
        };
        // Narrow enough that power, the process count and temperature are gone.
        let text = fit(75);
        let header = text.lines().nth(1).unwrap_or_default();
        assert!(!header.contains("TEMP"), "{text}");
        assert_eq!(health_cell(&text, 0), "critical", "{text}");
        // Narrower still: health goes too, GPU, memory and utilization stay.
        let text = fit(50);
        let header = text.lines().nth(1).unwrap_or_default();
        assert!(!header.contains("HEALTH"), "{text}");
        assert!(
            header.contains("MEMORY") && header.contains("UTIL"),
            "{text}"
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
            "h  -  sampled 0.0s ago",
            " GPU | NAME | MEMORY | UTIL | TEMP | POWER | ECC | HEALTH | PIDS | TOP_PROC",
            "-----+------+--------+------+------+-------+-----+--------+------+----------",
            "",
            " GPU | PID | USER | PROC | MEMORY | START | CONTAINER | COMMAND",
            "-----+-----+------+------+--------+-------+-----------+---------",
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
            width: None,
            keys: false,
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

    /// The table tabled's `Style::psql()` draws, trailing spaces trimmed, as `table` drew
    /// it before it was written out.
    fn tabled_psql(header: &[&str], rows: &[Vec<String>]) -> String {
        use tabled::builder::Builder;
        use tabled::settings::Style;
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

    #[test]
    fn tables_are_the_ones_tabled_draws() {
        let row = |cells: &[&str]| cells.iter().map(|cell| (*cell).to_owned()).collect();
        let cases: Vec<(Vec<&str>, Vec<Vec<String>>)> = vec![
            (vec!["GPU", "NAME"], vec![]),
            (
                vec!["A", "B", "C"],
                vec![row(&["1", "", "3"]), row(&["", "", ""])],
            ),
            (
                vec!["A", "LONG HEADER"],
                vec![row(&["a much longer cell", "x"])],
            ),
            // Short rows, a row longer than the header.
            (vec!["A", "B"], vec![row(&["1"]), row(&["1", "2", "3"])]),
            // Wide and zero-width characters, escapes, trailing spaces in a last cell.
            (
                vec!["NAME", "USER", "NOTE"],
                vec![
                    row(&["训练任务", "bob\u{202e}x", "trailing   "]),
                    row(&["e\u{301}", "🦀 crab", "\u{1b}[2J\t"]),
                    row(&["", "", "  "]),
                ],
            ),
        ];
        for (header, rows) in cases {
            assert_eq!(
                table(&header, rows.clone().into_iter()),
                tabled_psql(&header, &rows),
                "{header:?} {rows:?}"
            );
        }
        let snapshot = testutil::stale_snapshot();
        let options = TableOptions {
            details: true,
            containers: true,
            ..PLAIN
        };
        let rows: Vec<Vec<String>> = snapshot
            .processes
            .iter()
            .map(|process| process_row(&snapshot, process, &options))
            .collect();
        let header = process_header(&options);
        assert_eq!(
            table(&header, rows.clone().into_iter()),
            tabled_psql(&header, &rows)
        );
    }

    #[test]
    fn watts_are_whole_and_memory_is_in_mib() {
        assert_eq!(watts(0), "0 W");
        assert_eq!(watts(245_499), "245 W");
        assert_eq!(watts(245_500), "246 W");
        assert_eq!(watts(u32::MAX), "4294967 W");
        assert_eq!(
            memory(Some(25 * (1 << 30)), Some(80 << 30)),
            "25600 / 81920 MiB"
        );
        assert_eq!(memory(None, Some(80 << 30)), "- / 81920 MiB");
        assert_eq!(memory(None, None), "-");
        assert_eq!(mib_text(Some(5 << 20)), "5 MiB");
        assert_eq!(mib_text(None), "-");
    }

    #[test]
    fn the_header_names_the_drivers_and_the_age_of_the_sample() {
        let mut snapshot = testutil::snapshot();
        snapshot.vendors.push(gpukill_proto::v1::VendorStatus {
            vendor: Vendor::Amd as i32,
            state: VendorState::Ok as i32,
            driver_version: Some("6.8.0".to_owned()),
            ..Default::default()
        });
        let text = render(&snapshot, &PLAIN);
        assert_eq!(
            text.lines().next(),
            Some(
                "gpu-node-1  2024-05-01 12:00:00  sampled 0.1s ago  NVIDIA driver 550.54.15  \
                 CUDA 12.4  AMD driver 6.8.0"
            )
        );
        assert_eq!(sample_age(0), "0.0s");
        assert_eq!(sample_age(9_999), "9.9s");
        assert_eq!(sample_age(42_000), "42s");
        // Narrow: the date goes, then the drivers from the last, then the line is cut.
        let fit = |width| {
            let options = TableOptions {
                width: Some(width),
                ..PLAIN
            };
            render(&snapshot, &options)
                .lines()
                .next()
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(
            fit(80),
            "gpu-node-1  12:00:00  sampled 0.1s ago  NVIDIA driver 550.54.15  CUDA 12.4"
        );
        assert_eq!(fit(40), "gpu-node-1  12:00:00  sampled 0.1s ago");
        assert_eq!(fit(20), "gpu-node-1  12:00:0…");
    }

    #[test]
    fn every_line_fits_a_100_column_terminal() {
        for containers in [false, true] {
            let options = TableOptions {
                details: true,
                containers,
                width: Some(100),
                ..PLAIN
            };
            let text = render(&testutil::stale_snapshot(), &options);
            for line in text.lines() {
                assert!(text_width(line) <= 100, "{line:?} in\n{text}");
            }
            // The GPU table keeps its most telling columns; without the container columns
            // the commands are cut, not lost.
            assert!(text.contains(" MEMORY "), "{text}");
            assert_eq!(text.contains("python train.py"), !containers, "{text}");
        }
        assert_snapshot(
            "list-details-100.txt",
            &render(
                &testutil::stale_snapshot(),
                &TableOptions {
                    details: true,
                    containers: true,
                    width: Some(100),
                    ..PLAIN
                },
            ),
        );
    }
}
