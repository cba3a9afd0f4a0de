//! The table, JSON and CSV of `gpukillctl audit` (the Sessions RPC).
//!
//! Table: one row per session, most recently seen first, columns
//! `USER, PID, PROC, GPU, START, LAST_SEEN, GPU_HOURS, PEAK_MB, MEM_GIB_H, CONTAINER`: START is
//! the process start time and LAST_SEEN the last time it was seen on the GPU, both date and
//! time in the chosen [`TimeZone`]; GPU_HOURS and MEM_GIB_H with two decimals; PEAK_MB whole
//! MiB; CONTAINER the first 12 characters of the id; `-` for anything absent.
//!
//! JSON: `{"sessions": [...]}` with the fields of [`SessionJson`], times both RFC 3339 UTC and
//! milliseconds, absent values `null`. CSV: the same fields in the same order under a header
//! row, absent values empty.
//!
//! `--summary` (the Summary RPC) has a table and JSON only. Table: four tables under the
//! titles `TOP USERS` (USER, UID, GPU_HOURS, MEM_GIB_H, SESSIONS), `TOP PROCESSES` (PROC,
//! USER, GPU_HOURS, PEAK_MB), `GPUS` (GPU, SAMPLES, UTIL_MEAN, UTIL_MAX) and
//! `HOUR OF DAY (UTC)` (HOUR, GPU_HOURS; 24 rows), then `RESERVATIONS` (USER, UID,
//! RESERVED_GPU_H, RUN_GPU_H, RESERVATIONS: GPU time each user held reserved), hours with two
//! decimals, utilization in percent with one. JSON: [`SummaryJson`], absent values `null`.

use gpukill_proto::v1::{
    GpuUsage, ProcessUsage, RogueResponse, Session, SessionsResponse, SummaryResponse,
    UserReservations, UserUsage,
};
use serde::Serialize;

use super::csv::{csv as csv_table, or_empty};
use super::json::document;
use super::table::{ABSENT, or_absent, or_absent_str, table};
use super::time::{TimeZone, date_time, rfc3339_millis, span};
use super::{mib, rogue_level_name};
use crate::error::Error;

/// Seconds per hour.
const HOUR_SECS: f64 = 3600.0;

/// The JSON document of `gpukillctl audit --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditJson {
    /// Matching sessions, most recently seen first.
    pub sessions: Vec<SessionJson>,
}

/// One process session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionJson {
    /// The owner's user name.
    pub user: String,
    /// The owner's uid.
    pub uid: u32,
    /// The PID.
    pub pid: u32,
    /// The process name.
    pub proc_name: String,
    /// The command line.
    pub cmdline: String,
    /// The GPU it ran on.
    pub gpu_index: u32,
    /// The process start time, RFC 3339 UTC with milliseconds.
    pub start_time: Option<String>,
    /// The process start time, milliseconds since the epoch.
    pub start_time_unix_ms: i64,
    /// First seen on the GPU, RFC 3339 UTC with milliseconds.
    pub first_seen: Option<String>,
    /// First seen on the GPU, milliseconds since the epoch.
    pub first_seen_unix_ms: i64,
    /// Last seen on the GPU, RFC 3339 UTC with milliseconds.
    pub last_seen: Option<String>,
    /// Last seen on the GPU, milliseconds since the epoch.
    pub last_seen_unix_ms: i64,
    /// Time on the GPU, seconds.
    pub gpu_seconds: f64,
    /// Most GPU memory used, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// GPU memory over time, GiB-hours.
    pub memory_gib_hours: f64,
    /// SM utilization / 100 × seconds.
    pub util_seconds: Option<f64>,
    /// The container it ran in.
    pub container_id: Option<String>,
}

/// The CSV header: the JSON field names, in order.
const CSV_HEADER: [&str; 17] = [
    "user",
    "uid",
    "pid",
    "proc_name",
    "cmdline",
    "gpu_index",
    "start_time",
    "start_time_unix_ms",
    "first_seen",
    "first_seen_unix_ms",
    "last_seen",
    "last_seen_unix_ms",
    "gpu_seconds",
    "peak_memory_bytes",
    "memory_gib_hours",
    "util_seconds",
    "container_id",
];

impl AuditJson {
    /// The JSON view of `response`.
    pub fn new(response: &SessionsResponse) -> Self {
        AuditJson {
            sessions: response.sessions.iter().map(SessionJson::new).collect(),
        }
    }
}

impl SessionJson {
    /// The JSON view of one session.
    pub fn new(session: &Session) -> Self {
        SessionJson {
            user: session.user.clone(),
            uid: session.uid,
            pid: session.pid,
            proc_name: session.name.clone(),
            cmdline: session.cmdline.clone(),
            gpu_index: session.gpu_index,
            start_time: rfc3339_millis(session.start_time_unix_ms),
            start_time_unix_ms: session.start_time_unix_ms,
            first_seen: rfc3339_millis(session.first_seen_unix_ms),
            first_seen_unix_ms: session.first_seen_unix_ms,
            last_seen: rfc3339_millis(session.last_seen_unix_ms),
            last_seen_unix_ms: session.last_seen_unix_ms,
            gpu_seconds: session.gpu_seconds,
            peak_memory_bytes: session.peak_memory_bytes,
            memory_gib_hours: session.memory_gib_hours,
            util_seconds: session.util_seconds,
            container_id: session.container_id.clone(),
        }
    }

    /// The CSV row, in [`CSV_HEADER`] order.
    fn csv_row(self) -> Vec<String> {
        vec![
            self.user,
            self.uid.to_string(),
            self.pid.to_string(),
            self.proc_name,
            self.cmdline,
            self.gpu_index.to_string(),
            or_empty(self.start_time),
            self.start_time_unix_ms.to_string(),
            or_empty(self.first_seen),
            self.first_seen_unix_ms.to_string(),
            or_empty(self.last_seen),
            self.last_seen_unix_ms.to_string(),
            self.gpu_seconds.to_string(),
            or_empty(self.peak_memory_bytes),
            self.memory_gib_hours.to_string(),
            or_empty(self.util_seconds),
            or_empty(self.container_id),
        ]
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn json(response: &SessionsResponse) -> Result<String, Error> {
    document(&AuditJson::new(response))
}

/// `response` as CSV with a header row.
pub fn csv(response: &SessionsResponse) -> String {
    let rows = response
        .sessions
        .iter()
        .map(|session| SessionJson::new(session).csv_row());
    csv_table(&CSV_HEADER, rows)
}

/// `response` as a table with times in `tz`, ending in a newline.
pub fn render(response: &SessionsResponse, tz: TimeZone) -> String {
    let header = [
        "USER",
        "PID",
        "PROC",
        "GPU",
        "START",
        "LAST_SEEN",
        "GPU_HOURS",
        "PEAK_MB",
        "MEM_GIB_H",
        "CONTAINER",
    ];
    let rows = response.sessions.iter().map(|session| {
        vec![
            or_absent_str(&session.user),
            session.pid.to_string(),
            or_absent_str(&session.name),
            session.gpu_index.to_string(),
            or_absent(date_time(session.start_time_unix_ms, tz)),
            or_absent(date_time(session.last_seen_unix_ms, tz)),
            format!("{:.2}", session.gpu_seconds / HOUR_SECS),
            or_absent(session.peak_memory_bytes.map(mib)),
            format!("{:.2}", session.memory_gib_hours),
            or_absent(
                session
                    .container_id
                    .as_ref()
                    .map(|id| id.chars().take(12).collect::<String>()),
            ),
        ]
    });
    table(&header, rows)
}

/// The time window a summary covers, as asked for: milliseconds since the epoch, the end
/// excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The start.
    pub since_unix_ms: i64,
    /// The end (excluded).
    pub until_unix_ms: i64,
}

/// The JSON document of `gpukillctl audit --summary --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryJson {
    /// The start of the window, RFC 3339 UTC with milliseconds.
    pub since: Option<String>,
    /// The start of the window, milliseconds since the epoch.
    pub since_unix_ms: i64,
    /// The end of the window (excluded), RFC 3339 UTC with milliseconds.
    pub until: Option<String>,
    /// The end of the window, milliseconds since the epoch.
    pub until_unix_ms: i64,
    /// The users with the most GPU hours, most first.
    pub top_users: Vec<UserJson>,
    /// The processes (name and user) with the most GPU hours, most first.
    pub top_processes: Vec<ProcessJson>,
    /// Every GPU with samples in the window, in index order.
    pub gpus: Vec<GpuJson>,
    /// GPU hours by UTC hour of day, 24 entries from 00:00.
    pub hour_of_day_gpu_hours: Vec<f64>,
    /// GPU time held reserved per user, most first.
    pub reservations: Vec<ReservationsJson>,
}

/// One user's reservations over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReservationsJson {
    /// The holder's user name.
    pub user: String,
    /// The uid.
    pub uid: u32,
    /// GPU time held, run and manual reservations, hours.
    pub reserved_gpu_hours: f64,
    /// Of which by `gpukillctl run`, hours.
    pub run_gpu_hours: f64,
    /// Reservations overlapping the window.
    pub reservations: u32,
}

/// One user's usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserJson {
    /// The user name.
    pub user: String,
    /// The uid.
    pub uid: u32,
    /// Time on a GPU, hours.
    pub gpu_hours: f64,
    /// GPU memory over time, GiB-hours.
    pub memory_gib_hours: f64,
    /// How many sessions.
    pub sessions: u32,
}

/// One process name's usage, per user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessJson {
    /// The process name.
    pub proc_name: String,
    /// The owner's user name.
    pub user: String,
    /// Time on a GPU, hours.
    pub gpu_hours: f64,
    /// Most GPU memory used by any of its sessions, bytes.
    pub peak_memory_bytes: Option<u64>,
}

/// One GPU's utilization.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuJson {
    /// The GPU's index.
    pub gpu_index: u32,
    /// Metrics samples in the window.
    pub samples: u32,
    /// Tick-weighted mean SM utilization, percent.
    pub util_mean: Option<f64>,
    /// Highest SM utilization, percent.
    pub util_max: Option<u32>,
}

impl SummaryJson {
    /// The JSON view of `response`, the summary of `window`.
    pub fn new(response: &SummaryResponse, window: Window) -> Self {
        SummaryJson {
            since: rfc3339_millis(window.since_unix_ms),
            since_unix_ms: window.since_unix_ms,
            until: rfc3339_millis(window.until_unix_ms),
            until_unix_ms: window.until_unix_ms,
            top_users: response
                .top_users
                .iter()
                .map(|user: &UserUsage| UserJson {
                    user: user.user.clone(),
                    uid: user.uid,
                    gpu_hours: user.gpu_hours,
                    memory_gib_hours: user.memory_gib_hours,
                    sessions: user.sessions,
                })
                .collect(),
            top_processes: response
                .top_processes
                .iter()
                .map(|process: &ProcessUsage| ProcessJson {
                    proc_name: process.name.clone(),
                    user: process.user.clone(),
                    gpu_hours: process.gpu_hours,
                    peak_memory_bytes: process.peak_memory_bytes,
                })
                .collect(),
            gpus: response
                .gpus
                .iter()
                .map(|gpu: &GpuUsage| GpuJson {
                    gpu_index: gpu.gpu_index,
                    samples: gpu.samples,
                    util_mean: gpu.util_mean,
                    util_max: gpu.util_max,
                })
                .collect(),
            hour_of_day_gpu_hours: response.hour_of_day_gpu_hours.clone(),
            reservations: response
                .reservations
                .iter()
                .map(|held: &UserReservations| ReservationsJson {
                    user: held.user.clone(),
                    uid: held.uid,
                    reserved_gpu_hours: held.reserved_gpu_hours,
                    run_gpu_hours: held.run_gpu_hours,
                    reservations: held.reservations,
                })
                .collect(),
        }
    }
}

/// The summary `response` of `window` as one indented JSON document, ending in a newline.
pub fn summary_json(response: &SummaryResponse, window: Window) -> Result<String, Error> {
    document(&SummaryJson::new(response, window))
}

/// The window line of a summary: `WINDOW 2024-05-01 10:00:00 to 2024-05-01 12:00:00 (2h)`,
/// the times in `tz` (UTC says so), the end excluded.
fn window_line(window: Window, tz: TimeZone) -> String {
    let at = |ms| date_time(ms, tz).unwrap_or_else(|| ABSENT.to_owned());
    format!(
        "WINDOW {} to {}{} ({})\n",
        at(window.since_unix_ms),
        at(window.until_unix_ms),
        if tz == TimeZone::Utc { " UTC" } else { "" },
        span(window.until_unix_ms.saturating_sub(window.since_unix_ms))
    )
}

/// The summary `response` of `window`: the window's line, then five titled tables
/// separated by blank lines, ending in a newline.
pub fn render_summary(response: &SummaryResponse, window: Window, tz: TimeZone) -> String {
    let users = table(
        &["USER", "UID", "GPU_HOURS", "MEM_GIB_H", "SESSIONS"],
        response.top_users.iter().map(|user| {
            vec![
                or_absent_str(&user.user),
                user.uid.to_string(),
                format!("{:.2}", user.gpu_hours),
                format!("{:.2}", user.memory_gib_hours),
                user.sessions.to_string(),
            ]
        }),
    );
    let processes = table(
        &["PROC", "USER", "GPU_HOURS", "PEAK_MB"],
        response.top_processes.iter().map(|process| {
            vec![
                or_absent_str(&process.name),
                or_absent_str(&process.user),
                format!("{:.2}", process.gpu_hours),
                or_absent(process.peak_memory_bytes.map(mib)),
            ]
        }),
    );
    let gpus = table(
        &["GPU", "SAMPLES", "UTIL_MEAN", "UTIL_MAX"],
        response.gpus.iter().map(|gpu| {
            vec![
                gpu.gpu_index.to_string(),
                gpu.samples.to_string(),
                or_absent(gpu.util_mean.map(|util| format!("{util:.1}%"))),
                or_absent(gpu.util_max.map(|util| format!("{util}%"))),
            ]
        }),
    );
    let hours = table(
        &["HOUR", "GPU_HOURS"],
        response
            .hour_of_day_gpu_hours
            .iter()
            .enumerate()
            .map(|(hour, gpu_hours)| vec![format!("{hour:02}:00"), format!("{gpu_hours:.2}")]),
    );
    let reservations = table(
        &["USER", "UID", "RESERVED_GPU_H", "RUN_GPU_H", "RESERVATIONS"],
        response.reservations.iter().map(|held| {
            vec![
                or_absent_str(&held.user),
                held.uid.to_string(),
                format!("{:.2}", held.reserved_gpu_hours),
                format!("{:.2}", held.run_gpu_hours),
                held.reservations.to_string(),
            ]
        }),
    );
    format!(
        "{}\nTOP USERS\n{users}\nTOP PROCESSES\n{processes}\nGPUS\n{gpus}\nHOUR OF DAY (UTC)\n{hours}\nRESERVATIONS\n{reservations}",
        window_line(window, tz)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use serde_json::{Value, json};

    #[test]
    fn sessions_table() {
        assert_snapshot(
            "audit-table.txt",
            &render(&testutil::sessions_response(), TimeZone::Utc),
        );
    }

    #[test]
    fn the_response_renders_to_the_documented_json() {
        let text = json(&testutil::sessions_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            actual["sessions"][0],
            json!({
                "user": "alice",
                "uid": 1000,
                "pid": 4242,
                "proc_name": "python",
                "cmdline": "python train.py --epochs 10",
                "gpu_index": 0,
                "start_time": "2024-05-01T09:46:47.000Z",
                "start_time_unix_ms": 1_714_556_807_000_i64,
                "first_seen": "2024-05-01T09:46:50.000Z",
                "first_seen_unix_ms": 1_714_556_810_000_i64,
                "last_seen": "2024-05-01T12:00:00.250Z",
                "last_seen_unix_ms": 1_714_564_800_250_i64,
                "gpu_seconds": 7990.25,
                "peak_memory_bytes": 21_474_836_480_u64,
                "memory_gib_hours": 40.5,
                "util_seconds": 6000.0,
                "container_id": null
            })
        );
        let bob = &actual["sessions"][1];
        assert_eq!(bob["peak_memory_bytes"], Value::Null);
        assert_eq!(bob["util_seconds"], Value::Null);
        assert_eq!(
            bob["container_id"],
            "3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"
        );
        let keys: Vec<&str> = CSV_HEADER.to_vec();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        let mut json_keys: Vec<&str> = actual["sessions"][0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        json_keys.sort_unstable();
        assert_eq!(json_keys, sorted_keys, "CSV and JSON have the same fields");
    }

    #[test]
    fn csv_has_a_header_and_quotes_what_needs_it() {
        let text = csv(&testutil::sessions_response());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert_eq!(
            lines[1],
            "alice,1000,4242,python,python train.py --epochs 10,0,\
             2024-05-01T09:46:47.000Z,1714556807000,2024-05-01T09:46:50.000Z,1714556810000,\
             2024-05-01T12:00:00.250Z,1714564800250,7990.25,21474836480,40.5,6000,"
        );
        assert!(
            lines[2].starts_with(
                "bob,1001,5151,pt_main_thread,\"python3 serve.py --name \"\"a,b\"\"\",1,"
            ),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with(
                ",0.5,,0.25,,3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"
            ),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn summary_table() {
        assert_snapshot(
            "audit-summary-table.txt",
            &render_summary(&testutil::summary_response(), WINDOW, TimeZone::Utc),
        );
    }

    /// The two hours before the fixtures' noon.
    const WINDOW: Window = Window {
        since_unix_ms: testutil::NOW_MS - 2 * 3_600_000,
        until_unix_ms: testutil::NOW_MS,
    };

    #[test]
    fn the_summary_says_which_window_it_covers() {
        let text = render_summary(&testutil::summary_response(), WINDOW, TimeZone::Utc);
        assert_eq!(
            text.lines().next(),
            Some("WINDOW 2024-05-01 10:00:00 to 2024-05-01 12:00:00 UTC (2h)")
        );
        let local = render_summary(&testutil::summary_response(), WINDOW, TimeZone::Local);
        assert!(local.starts_with("WINDOW "), "{local}");
        assert!(
            local
                .lines()
                .next()
                .is_some_and(|line| line.ends_with(" (2h)"))
        );
    }

    #[test]
    fn the_summary_renders_to_the_documented_json() {
        let text = summary_json(&testutil::summary_response(), WINDOW).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual["since"], "2024-05-01T10:00:00.250Z");
        assert_eq!(actual["until_unix_ms"], testutil::NOW_MS);
        assert_eq!(
            actual["top_users"][0],
            json!({
                "user": "alice",
                "uid": 1000,
                "gpu_hours": 2.25,
                "memory_gib_hours": 40.5,
                "sessions": 3
            })
        );
        assert_eq!(
            actual["top_processes"][1],
            json!({
                "proc_name": "pt_main_thread",
                "user": "bob",
                "gpu_hours": 0.5,
                "peak_memory_bytes": null
            })
        );
        assert_eq!(
            actual["gpus"][1],
            json!({"gpu_index": 1, "samples": 2, "util_mean": null, "util_max": null})
        );
        assert_eq!(actual["gpus"][0]["util_mean"], 87.5);
        let hours = actual["hour_of_day_gpu_hours"].as_array().expect("array");
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[9], 1.5);
        let empty = summary_json(&SummaryResponse::default(), WINDOW).expect("encode");
        assert_eq!(
            empty,
            "{\n  \"since\": \"2024-05-01T10:00:00.250Z\",\n  \"since_unix_ms\": 1714557600250,\n  \
             \"until\": \"2024-05-01T12:00:00.250Z\",\n  \"until_unix_ms\": 1714564800250,\n  \
             \"top_users\": [],\n  \"top_processes\": [],\n  \"gpus\": [],\n  \
             \"hour_of_day_gpu_hours\": [],\n  \"reservations\": []\n}\n"
        );
    }

    #[test]
    fn an_empty_answer_still_has_headers() {
        let empty = SessionsResponse::default();
        assert_eq!(render(&empty, TimeZone::Utc).lines().count(), 2);
        assert_eq!(csv(&empty), format!("{}\n", CSV_HEADER.join(",")));
        assert_eq!(json(&empty).expect("encode"), "{\n  \"sessions\": []\n}\n");
    }
}

/// The JSON of `gpukillctl audit --rogue --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RogueJson {
    /// Findings, highest score first.
    pub findings: Vec<RogueFindingJson>,
}

/// One rogue finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RogueFindingJson {
    /// Score, 0 to 100.
    pub score: u32,
    /// low, medium, high or critical.
    pub level: String,
    /// One line per signal.
    pub reasons: Vec<String>,
    /// The session, as `audit` shows it.
    pub session: Option<SessionJson>,
}

/// `response` as one JSON document.
pub fn rogue_json(response: &RogueResponse) -> Result<String, Error> {
    document(&RogueJson {
        findings: response
            .findings
            .iter()
            .map(|finding| RogueFindingJson {
                score: finding.score,
                level: rogue_level_name(finding.level).into_owned(),
                reasons: finding.reasons.clone(),
                session: finding.session.as_ref().map(SessionJson::new),
            })
            .collect(),
    })
}

/// `response` as a table: `SCORE, LEVEL, USER, PID, PROC, GPU, LAST_SEEN, REASONS`.
pub fn render_rogue(response: &RogueResponse, tz: TimeZone) -> String {
    if response.findings.is_empty() {
        return "no rogue findings in the window\n".to_owned();
    }
    let header = [
        "SCORE",
        "LEVEL",
        "USER",
        "PID",
        "PROC",
        "GPU",
        "LAST_SEEN",
        "REASONS",
    ];
    let rows = response.findings.iter().map(|finding| {
        let session = finding.session.clone().unwrap_or_default();
        vec![
            finding.score.to_string(),
            rogue_level_name(finding.level).into_owned(),
            session.user.clone(),
            session.pid.to_string(),
            session.name.clone(),
            session.gpu_index.to_string(),
            or_absent(date_time(session.last_seen_unix_ms, tz)),
            finding.reasons.join("; "),
        ]
    });
    table(&header, rows)
}
