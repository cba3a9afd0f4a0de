//! The tables, text and JSON of `gpukillctl uploads list|show|retry`.
//!
//! `uploads list` (table): first the outbox at a glance,
//! `outbox: P pending, D delivered, K parked, R rejected, N dropped; sending to URL` (or
//! `offline: queued, not sent`), then one row per hour, oldest first, columns
//! `HOUR, STATUS, ATTEMPTS, FIRST ATTEMPT, LAST ATTEMPT, NEXT, LAST ERROR, ROWS(GPU/USER),
//! SIZE`, then a line per thing an operator should act on (parked, rejected or dropped
//! hours). HOUR is the hour's start (`YYYY-MM-DD HH:MM`) and the attempt times are date and
//! time, all in the chosen [`TimeZone`]; NEXT of a pending hour is `offline` while gpukilld
//! is offline (it sends nothing then, whatever time is set); LAST ERROR is cut to
//! [`ERROR_WIDTH`] characters; `-` for anything absent.
//!
//! `uploads show` (text): the entry's fields one per line, then the attempts
//! (`ATTEMPT, TIME, HTTP, LATENCY(ms), ERROR`, errors whole), then with `--payload` the
//! payload pretty-printed in the order it was sent.
//!
//! JSON: `{"summary": {...}, "entries": [...]}` for `list` ([`UploadsJson`]); for `show`
//! `{"entry": {...}, "attempts": [...], "payload": {...}}`, the entry the same object as in
//! `list` and the payload a JSON object with its fields in the order sent ([`ShowJson`],
//! [`Payload`]); for `retry` `{"requeued_hours": [...]}` ([`RetryJson`]). Every time is given twice, RFC 3339 in UTC (`hour` with seconds, the
//! others with milliseconds) and as milliseconds since the epoch (`..._unix_ms`); absent
//! values are `null`.

use gpukill_proto::v1::{
    SendAttempt, UploadEntry, UploadRetryResponse, UploadShowResponse, UploadStatus, UploadSummary,
    UploadsResponse,
};
use serde::{Serialize, Serializer};

use super::json::{document, non_empty};
use super::table::{or_absent, table};
use super::time::{TimeZone, date_minutes, date_time, rfc3339_millis, rfc3339_seconds};
use crate::error::Error;

/// The most characters of LAST ERROR `uploads list` shows; `uploads show` has it whole.
pub const ERROR_WIDTH: usize = 40;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the hour that holds `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The status as JSON and tables name it: `pending`, `delivered`, `parked` or `rejected` (the
/// proto names in lower case); `unknown` for an unset or unknown value.
pub fn status_name(status: i32) -> &'static str {
    match UploadStatus::try_from(status) {
        Ok(UploadStatus::Pending) => "pending",
        Ok(UploadStatus::Delivered) => "delivered",
        Ok(UploadStatus::Parked) => "parked",
        Ok(UploadStatus::Rejected) => "rejected",
        Ok(UploadStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// The JSON document of `gpukillctl uploads list --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadsJson {
    /// The whole outbox at a glance.
    pub summary: SummaryJson,
    /// The hours listed, oldest first.
    pub entries: Vec<EntryJson>,
}

/// The outbox at a glance: hours per status, over the whole outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryJson {
    /// Hours waiting to be sent, or to be sent again.
    pub pending: u64,
    /// Delivered hours still kept.
    pub delivered: u64,
    /// Hours parked after max_attempts failed sends.
    pub parked: u64,
    /// Hours the server refused.
    pub rejected: u64,
    /// Hours dropped because the outbox was full, since the store was created.
    pub dropped_total: u64,
    /// Whether gpukilld queues without sending.
    pub offline: bool,
    /// Where gpukilld sends.
    pub url: Option<String>,
}

/// One hour in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryJson {
    /// The hour's start, RFC 3339 UTC with seconds.
    pub hour: Option<String>,
    /// The hour's start, milliseconds since the epoch (what the daemon keys the hour by).
    pub hour_unix_ms: i64,
    /// `pending`, `delivered`, `parked` or `rejected`.
    pub status: &'static str,
    /// Sends since the hour was queued or last retried by an admin.
    pub attempts: u32,
    /// When it was first sent.
    pub first_attempt: Option<String>,
    /// When it was first sent, milliseconds since the epoch.
    pub first_attempt_unix_ms: Option<i64>,
    /// When it was last sent.
    pub last_attempt: Option<String>,
    /// When it was last sent, milliseconds since the epoch.
    pub last_attempt_unix_ms: Option<i64>,
    /// When a pending hour is sent next.
    pub next_attempt: Option<String>,
    /// When a pending hour is sent next, milliseconds since the epoch.
    pub next_attempt_unix_ms: Option<i64>,
    /// Why the last send failed, whole.
    pub last_error: Option<String>,
    /// SHA-256 of the payload, hex.
    pub sha256: Option<String>,
    /// The payload's size, bytes.
    pub payload_bytes: u64,
    /// When the server confirmed it.
    pub delivered: Option<String>,
    /// When the server confirmed it, milliseconds since the epoch.
    pub delivered_unix_ms: Option<i64>,
    /// When the hour was rolled up and queued.
    pub created: Option<String>,
    /// When the hour was rolled up and queued, milliseconds since the epoch.
    pub created_unix_ms: Option<i64>,
    /// Per-GPU rows in the payload.
    pub gpu_rows: u32,
    /// Per-user rows in the payload.
    pub user_rows: u32,
}

/// One attempt to send an hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptJson {
    /// 1 for the first (numbering starts over after an admin retry).
    pub attempt: u32,
    /// When it was made, RFC 3339 UTC with milliseconds.
    pub time: Option<String>,
    /// When it was made, milliseconds since the epoch.
    pub time_unix_ms: Option<i64>,
    /// The HTTP status the server answered; `null` when it did not answer.
    pub http_status: Option<u32>,
    /// What went wrong; `null` for a delivery.
    pub error: Option<String>,
    /// How long it took, milliseconds.
    pub latency_ms: u64,
}

/// The JSON document of `gpukillctl uploads show --output json`: the entry (the same object
/// as in `uploads list`), its attempts and the payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShowJson {
    /// The hour's outbox entry.
    pub entry: EntryJson,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptJson>,
    /// The payload as sent (schema gpukill.usage/v1), as a JSON value.
    pub payload: Payload,
}

/// The JSON document of `gpukillctl uploads retry --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryJson {
    /// The hours that are pending again, oldest first.
    pub requeued_hours: Vec<HourJson>,
}

/// An hour, as RFC 3339 and as milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourJson {
    /// The hour's start, RFC 3339 UTC with seconds.
    pub hour: Option<String>,
    /// The hour's start, milliseconds since the epoch.
    pub hour_unix_ms: i64,
}

/// A time as RFC 3339 UTC with milliseconds and as milliseconds since the epoch; both `None`
/// for an unset (or unusable) time.
fn time_pair(ms: Option<i64>) -> (Option<String>, Option<i64>) {
    let text = ms.and_then(rfc3339_millis);
    let ms = text.as_ref().and(ms);
    (text, ms)
}

impl SummaryJson {
    /// The JSON view of `summary`.
    pub fn new(summary: &UploadSummary) -> Self {
        SummaryJson {
            pending: summary.pending,
            delivered: summary.delivered,
            parked: summary.parked,
            rejected: summary.rejected,
            dropped_total: summary.dropped_total,
            offline: summary.offline,
            url: summary.url.clone().filter(|url| !url.is_empty()),
        }
    }
}

impl EntryJson {
    /// The JSON view of one entry.
    pub fn new(entry: &UploadEntry) -> Self {
        let (first_attempt, first_attempt_unix_ms) = time_pair(entry.first_attempt_unix_ms);
        let (last_attempt, last_attempt_unix_ms) = time_pair(entry.last_attempt_unix_ms);
        let (next_attempt, next_attempt_unix_ms) = time_pair(entry.next_attempt_unix_ms);
        let (delivered, delivered_unix_ms) = time_pair(entry.delivered_unix_ms);
        let (created, created_unix_ms) = time_pair(Some(entry.created_unix_ms));
        EntryJson {
            hour: rfc3339_seconds(entry.hour_unix_ms),
            hour_unix_ms: entry.hour_unix_ms,
            status: status_name(entry.status),
            attempts: entry.attempts,
            first_attempt,
            first_attempt_unix_ms,
            last_attempt,
            last_attempt_unix_ms,
            next_attempt,
            next_attempt_unix_ms,
            last_error: entry.last_error.clone().filter(|error| !error.is_empty()),
            sha256: non_empty(&entry.sha256),
            payload_bytes: entry.payload_bytes,
            delivered,
            delivered_unix_ms,
            created,
            created_unix_ms,
            gpu_rows: entry.gpu_rows,
            user_rows: entry.user_rows,
        }
    }
}

impl AttemptJson {
    /// The JSON view of one attempt.
    pub fn new(attempt: &SendAttempt) -> Self {
        let (time, time_unix_ms) = time_pair(Some(attempt.time_unix_ms));
        AttemptJson {
            attempt: attempt.attempt,
            time,
            time_unix_ms,
            http_status: attempt.http_status,
            error: attempt.error.clone().filter(|error| !error.is_empty()),
            latency_ms: attempt.latency_ms,
        }
    }
}

impl HourJson {
    /// The JSON view of the hour starting at `ms`.
    pub fn new(ms: i64) -> Self {
        HourJson {
            hour: rfc3339_seconds(ms),
            hour_unix_ms: ms,
        }
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn list_json(response: &UploadsResponse, summary: &UploadSummary) -> Result<String, Error> {
    document(&UploadsJson {
        summary: SummaryJson::new(summary),
        entries: response.entries.iter().map(EntryJson::new).collect(),
    })
}

/// `response` as one indented JSON document, ending in a newline; fails when the payload
/// gpukilld sent is not JSON.
pub fn show_json(response: &UploadShowResponse, entry: &UploadEntry) -> Result<String, Error> {
    document(&ShowJson {
        entry: EntryJson::new(entry),
        attempts: response.attempts.iter().map(AttemptJson::new).collect(),
        payload: payload(response, entry)?,
    })
}

/// `response` as one indented JSON document, ending in a newline.
pub fn retry_json(response: &UploadRetryResponse) -> Result<String, Error> {
    document(&RetryJson {
        requeued_hours: response
            .requeued_hours
            .iter()
            .map(|ms| HourJson::new(*ms))
            .collect(),
    })
}

/// The payload of `response`, parsed; [`Error::BadPayload`] when it is not JSON.
fn payload(response: &UploadShowResponse, entry: &UploadEntry) -> Result<Payload, Error> {
    Payload::parse(&response.payload_json).map_err(|source| Error::BadPayload {
        hour: rfc3339_seconds(entry.hour_unix_ms).unwrap_or_else(|| entry.hour_unix_ms.to_string()),
        source,
    })
}

/// The first line of `uploads list`: the hours per status, the drops, where hours go.
pub fn summary_line(summary: &UploadSummary) -> String {
    let mut line = format!(
        "outbox: {} pending, {} delivered, {} parked, {} rejected, {} dropped",
        summary.pending, summary.delivered, summary.parked, summary.rejected, summary.dropped_total
    );
    let url = summary.url.as_deref().filter(|url| !url.is_empty());
    match (summary.offline, url) {
        (true, Some(url)) => line.push_str(&format!("; offline: queued, not sent to {url}")),
        (true, None) => line.push_str("; offline: queued, not sent"),
        (false, Some(url)) => line.push_str(&format!("; sending to {url}")),
        (false, None) => {}
    }
    line.push('\n');
    line
}

/// What an operator should do about `summary`, one line each: parked hours to retry,
/// rejected hours to look at, dropped hours that are gone.
pub fn advice(summary: &UploadSummary) -> Vec<String> {
    let hours_are = |n: u64| {
        if n == 1 {
            "1 hour is".to_owned()
        } else {
            format!("{n} hours are")
        }
    };
    let mut lines = Vec::new();
    if summary.parked > 0 {
        lines.push(format!(
            "{} parked after too many failed sends: an admin sends {} again with \
             `gpukillctl uploads retry --all-parked`",
            hours_are(summary.parked),
            if summary.parked == 1 { "it" } else { "them" }
        ));
    }
    if summary.rejected > 0 {
        lines.push(format!(
            "{} rejected by the server: `gpukillctl uploads show HOUR` says why; once that is \
             fixed, an admin sends {} again with `gpukillctl uploads retry HOUR`",
            hours_are(summary.rejected),
            if summary.rejected == 1 { "it" } else { "each" }
        ));
    }
    if summary.dropped_total > 0 {
        lines.push(format!(
            "{} dropped because the outbox was full ([upload] max_outbox_hours); dropped \
             hours are not sent",
            if summary.dropped_total == 1 {
                "1 hour was".to_owned()
            } else {
                format!("{} hours were", summary.dropped_total)
            }
        ));
    }
    lines
}

/// The columns of the `uploads list` table.
const LIST_HEADER: [&str; 9] = [
    "HOUR",
    "STATUS",
    "ATTEMPTS",
    "FIRST ATTEMPT",
    "LAST ATTEMPT",
    "NEXT",
    "LAST ERROR",
    "ROWS(GPU/USER)",
    "SIZE",
];

/// `response` (whose summary is `summary`) as the `uploads list` text, times in `tz`,
/// ending in a newline.
pub fn render_list(response: &UploadsResponse, summary: &UploadSummary, tz: TimeZone) -> String {
    let at = |ms: Option<i64>| or_absent(ms.and_then(|ms| date_time(ms, tz)));
    let mut text = summary_line(summary);
    let rows = response.entries.iter().map(|entry| {
        vec![
            or_absent(date_minutes(entry.hour_unix_ms, tz)),
            status_name(entry.status).to_owned(),
            entry.attempts.to_string(),
            at(entry.first_attempt_unix_ms),
            at(entry.last_attempt_unix_ms),
            next(entry, summary, tz),
            or_absent(entry.last_error.as_deref().and_then(shorten)),
            format!("{}/{}", entry.gpu_rows, entry.user_rows),
            size(entry.payload_bytes),
        ]
    });
    text.push_str(&table(&LIST_HEADER, rows));
    for line in advice(summary) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The NEXT cell: when a pending hour is sent next, or `offline` while gpukilld sends
/// nothing.
fn next(entry: &UploadEntry, summary: &UploadSummary, tz: TimeZone) -> String {
    if summary.offline && entry.status == UploadStatus::Pending as i32 {
        return "offline".to_owned();
    }
    or_absent(entry.next_attempt_unix_ms.and_then(|ms| date_time(ms, tz)))
}

/// `error` on one line (whitespace runs as one space), cut to [`ERROR_WIDTH`] characters
/// with `…`; `None` when it is empty.
pub fn shorten(error: &str) -> Option<String> {
    let words: Vec<&str> = error.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let line = words.join(" ");
    if line.chars().count() <= ERROR_WIDTH {
        return Some(line);
    }
    let mut cut: String = line.chars().take(ERROR_WIDTH - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    Some(cut)
}

/// A payload size: `812 B`, `1.8 KiB`, `2.4 MiB` (one decimal, rounded half up).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale: u64 = 1024;
    while unit + 1 < UNITS.len() && bytes >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    let tenths = (u128::from(bytes) * 10 + u128::from(scale) / 2) / u128::from(scale);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// `row` or `rows`.
fn rows(n: u32) -> &'static str {
    if n == 1 { "row" } else { "rows" }
}

/// [`size`], followed by the exact count when it is rounded: `1.8 KiB (1843 bytes)`.
fn exact_size(bytes: u64) -> String {
    if bytes < 1024 {
        size(bytes)
    } else {
        format!("{} ({bytes} bytes)", size(bytes))
    }
}

/// The `uploads show` text of `response` (whose entry is `entry`), times in `tz`: the entry,
/// its attempts and, with `with_payload`, the payload. Ends in a newline; fails only when
/// the payload is asked for and is not JSON.
pub fn render_show(
    response: &UploadShowResponse,
    entry: &UploadEntry,
    tz: TimeZone,
    with_payload: bool,
) -> Result<String, Error> {
    let at = |ms: Option<i64>| or_absent(ms.and_then(|ms| date_time(ms, tz)));
    let hour = match (
        date_minutes(entry.hour_unix_ms, tz),
        rfc3339_seconds(entry.hour_unix_ms),
    ) {
        (Some(local), Some(utc)) => format!("{local} ({utc})"),
        _ => entry.hour_unix_ms.to_string(),
    };
    let fields = [
        ("hour", hour),
        ("status", status_name(entry.status).to_owned()),
        ("attempts", entry.attempts.to_string()),
        ("first attempt", at(entry.first_attempt_unix_ms)),
        ("last attempt", at(entry.last_attempt_unix_ms)),
        ("next attempt", at(entry.next_attempt_unix_ms)),
        (
            "last error",
            or_absent(entry.last_error.as_deref().filter(|e| !e.is_empty())),
        ),
        ("delivered", at(entry.delivered_unix_ms)),
        ("queued", at(Some(entry.created_unix_ms))),
        (
            "rows",
            format!(
                "{} GPU {}, {} user {}",
                entry.gpu_rows,
                rows(entry.gpu_rows),
                entry.user_rows,
                rows(entry.user_rows)
            ),
        ),
        ("size", exact_size(entry.payload_bytes)),
        ("sha256", or_absent(non_empty(&entry.sha256))),
    ];
    let mut text = String::new();
    for (label, value) in fields {
        text.push_str(&format!("{:<15}{value}\n", format!("{label}:")));
    }
    text.push('\n');
    if response.attempts.is_empty() {
        text.push_str("no attempts yet\n");
    } else {
        let header = ["ATTEMPT", "TIME", "HTTP", "LATENCY(ms)", "ERROR"];
        let rows = response.attempts.iter().map(|attempt| {
            vec![
                attempt.attempt.to_string(),
                at(Some(attempt.time_unix_ms)),
                or_absent(attempt.http_status),
                attempt.latency_ms.to_string(),
                or_absent(attempt.error.as_deref().filter(|e| !e.is_empty())),
            ]
        });
        text.push_str(&table(&header, rows));
    }
    if with_payload {
        let payload = payload(response, entry)?;
        text.push_str("\npayload:\n");
        text.push_str(&document(&payload)?);
    }
    Ok(text)
}

/// The `uploads retry` text of `response`, hours in `tz`: `requeued 1 hour: H` or
/// `requeued N hours: H1, H2, ...`, or `nothing to retry: no hour is parked` when none was.
pub fn render_retry(response: &UploadRetryResponse, tz: TimeZone) -> String {
    let hours: Vec<String> = response
        .requeued_hours
        .iter()
        .map(|ms| date_minutes(*ms, tz).unwrap_or_else(|| ms.to_string()))
        .collect();
    match hours.len() {
        0 => "nothing to retry: no hour is parked\n".to_owned(),
        1 => format!("requeued 1 hour: {}\n", hours[0]),
        n => format!("requeued {n} hours: {}\n", hours.join(", ")),
    }
}

/// A payload as gpukilld sent it: JSON text, checked to parse, that serializes (pretty or
/// compact) with its fields in the order sent, duplicates included, where a
/// `serde_json::Value` would sort them. serde-transcode streams the text into the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// `text`, checked to be one JSON value; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Payload, serde_json::Error> {
        // A full parse (not `IgnoredAny`, which skips number range checks), so that whatever
        // parses here also transcodes.
        serde_json::from_str::<serde_json::Value>(text)?;
        Ok(Payload(text.to_owned()))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = serde_json::Deserializer::from_str(&self.0);
        serde_transcode::transcode(&mut text, serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use serde_json::{Value, json};

    fn summary() -> UploadSummary {
        testutil::uploads_response().summary.expect("a summary")
    }

    #[test]
    fn the_list_table() {
        assert_snapshot(
            "uploads-list.txt",
            &render_list(&testutil::uploads_response(), &summary(), TimeZone::Utc),
        );
    }

    #[test]
    fn an_empty_outbox_still_has_headers_and_no_advice() {
        let summary = UploadSummary {
            url: Some("https://central.example:9402/api/v1/usage".to_owned()),
            ..Default::default()
        };
        let text = render_list(&UploadsResponse::default(), &summary, TimeZone::Utc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "outbox: 0 pending, 0 delivered, 0 parked, 0 rejected, 0 dropped; sending to \
             https://central.example:9402/api/v1/usage"
        );
        assert_eq!(
            lines[1],
            " HOUR | STATUS | ATTEMPTS | FIRST ATTEMPT | LAST ATTEMPT | NEXT | LAST ERROR | \
             ROWS(GPU/USER) | SIZE"
        );
    }

    #[test]
    fn pending_hours_of_an_offline_daemon_are_not_sent_next() {
        let response = testutil::uploads_response();
        let summary = UploadSummary {
            offline: true,
            ..summary()
        };
        let text = render_list(&response, &summary, TimeZone::Utc);
        let next: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with(" 2024"))
            .map(|line| line.split('|').nth(5).expect("NEXT").trim())
            .collect();
        assert_eq!(next, ["-", "-", "-", "offline", "offline"]);
        // The JSON keeps the daemon's time: `summary.offline` says it does not apply.
        let json: Value =
            serde_json::from_str(&list_json(&response, &summary).expect("encode")).expect("JSON");
        assert_eq!(
            json["entries"][3]["next_attempt"],
            "2024-05-01T11:01:07.000Z"
        );
    }

    #[test]
    fn the_summary_line_says_where_hours_go() {
        let mut summary = summary();
        assert!(
            summary_line(&summary)
                .ends_with("; sending to https://central.example:9402/api/v1/usage\n")
        );
        summary.offline = true;
        assert!(summary_line(&summary).ends_with(
            "; offline: queued, not sent to https://central.example:9402/api/v1/usage\n"
        ));
        summary.url = None;
        assert!(summary_line(&summary).ends_with("dropped; offline: queued, not sent\n"));
    }

    #[test]
    fn advice_counts_in_words() {
        let one = UploadSummary {
            parked: 1,
            rejected: 1,
            dropped_total: 1,
            ..Default::default()
        };
        assert_eq!(
            advice(&one),
            [
                "1 hour is parked after too many failed sends: an admin sends it again with \
                 `gpukillctl uploads retry --all-parked`",
                "1 hour is rejected by the server: `gpukillctl uploads show HOUR` says why; \
                 once that is fixed, an admin sends it again with `gpukillctl uploads retry \
                 HOUR`",
                "1 hour was dropped because the outbox was full ([upload] max_outbox_hours); \
                 dropped hours are not sent",
            ]
        );
        let many = UploadSummary {
            parked: 3,
            rejected: 2,
            dropped_total: 40,
            ..Default::default()
        };
        let lines = advice(&many);
        assert!(lines[0].starts_with("3 hours are parked"), "{}", lines[0]);
        assert!(lines[0].contains("sends them again"), "{}", lines[0]);
        assert!(lines[1].starts_with("2 hours are rejected"), "{}", lines[1]);
        assert!(
            lines[2].starts_with("40 hours were dropped"),
            "{}",
            lines[2]
        );
        assert!(advice(&UploadSummary::default()).is_empty());
    }

    #[test]
    fn errors_are_shortened_to_one_line() {
        assert_eq!(shorten(""), None);
        assert_eq!(shorten(" \n "), None);
        assert_eq!(
            shorten("HTTP 503:\n  busy").as_deref(),
            Some("HTTP 503: busy")
        );
        let long = "x".repeat(ERROR_WIDTH);
        assert_eq!(shorten(&long), Some(long.clone()));
        let longer = format!("{long}y");
        let cut = shorten(&longer).expect("text");
        assert_eq!(cut.chars().count(), ERROR_WIDTH);
        assert!(cut.ends_with("x…"), "{cut}");
        // Multi-byte characters are cut whole, and no space is left before the ellipsis.
        let wide = format!("{} ééé", "é".repeat(ERROR_WIDTH - 2));
        let cut = shorten(&wide).expect("text");
        assert!(cut.ends_with("é…"), "{cut}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1843), "1.8 KiB");
        assert_eq!(size(1024 * 1024 - 1), "1024.0 KiB");
        assert_eq!(size(5 * 1024 * 1024 / 2), "2.5 MiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(size(u64::MAX), "17179869184.0 GiB");
    }

    #[test]
    fn status_names_are_the_proto_names_in_lower_case() {
        for value in 1..=4 {
            let status = UploadStatus::try_from(value).expect("known status");
            let proto = status.as_str_name().trim_start_matches("UPLOAD_STATUS_");
            assert_eq!(status_name(value), proto.to_lowercase());
        }
        assert_eq!(status_name(0), "unknown");
        assert_eq!(status_name(99), "unknown");
    }

    #[test]
    fn hours_start_on_the_hour() {
        let noon = 1_714_564_800_000;
        assert_eq!(hour_start(noon), noon);
        assert_eq!(hour_start(noon + HOUR_MS - 1), noon);
        assert_eq!(hour_start(-1), -HOUR_MS);
    }

    #[test]
    fn the_list_json() {
        let response = testutil::uploads_response();
        let text = list_json(&response, &summary()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            actual["summary"],
            json!({
                "pending": 2,
                "delivered": 1,
                "parked": 1,
                "rejected": 1,
                "dropped_total": 3,
                "offline": false,
                "url": "https://central.example:9402/api/v1/usage"
            })
        );
        let entries = actual["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 5);
        assert_eq!(
            entries[0],
            json!({
                "hour": "2024-05-01T07:00:00Z",
                "hour_unix_ms": 1_714_546_800_000_i64,
                "status": "delivered",
                "attempts": 1,
                "first_attempt": "2024-05-01T08:00:05.120Z",
                "first_attempt_unix_ms": 1_714_550_405_120_i64,
                "last_attempt": "2024-05-01T08:00:05.120Z",
                "last_attempt_unix_ms": 1_714_550_405_120_i64,
                "next_attempt": null,
                "next_attempt_unix_ms": null,
                "last_error": null,
                "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "payload_bytes": 1843,
                "delivered": "2024-05-01T08:00:05.480Z",
                "delivered_unix_ms": 1_714_550_405_480_i64,
                "created": "2024-05-01T08:00:05.000Z",
                "created_unix_ms": 1_714_550_405_000_i64,
                "gpu_rows": 2,
                "user_rows": 3
            })
        );
        // The pending hour that was never sent: attempt times and the error are null.
        let waiting = &entries[4];
        assert_eq!(waiting["status"], "pending");
        assert_eq!(waiting["attempts"], 0);
        assert_eq!(waiting["first_attempt"], Value::Null);
        assert_eq!(waiting["last_attempt_unix_ms"], Value::Null);
        assert_eq!(waiting["last_error"], Value::Null);
        // Errors are whole in JSON.
        assert_eq!(
            entries[1]["last_error"],
            response.entries[1].last_error.clone().expect("an error")
        );
        // Field names are stable: scripts read them.
        let names: Vec<&str> = entries[0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names.len(), 19);
        assert!(text.contains("\"summary\": {\n"), "{text}");
        assert!(
            text.find("\"summary\"") < text.find("\"entries\""),
            "{text}"
        );
    }

    #[test]
    fn unset_values_are_null() {
        let actual = serde_json::to_value(EntryJson::new(&UploadEntry::default())).expect("JSON");
        for name in [
            "hour",
            "first_attempt",
            "first_attempt_unix_ms",
            "next_attempt",
            "last_error",
            "sha256",
            "delivered",
            "created",
            "created_unix_ms",
        ] {
            assert_eq!(actual[name], Value::Null, "{name}");
        }
        assert_eq!(actual["status"], "unknown");
        let summary = SummaryJson::new(&UploadSummary {
            url: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(summary.url, None);
    }

    #[test]
    fn the_show_text() {
        let response = testutil::upload_show_response();
        let entry = response.entry.clone().expect("an entry");
        assert_snapshot(
            "uploads-show.txt",
            &render_show(&response, &entry, TimeZone::Utc, false).expect("render"),
        );
        assert_snapshot(
            "uploads-show-payload.txt",
            &render_show(&response, &entry, TimeZone::Utc, true).expect("render"),
        );
    }

    #[test]
    fn an_hour_never_sent_has_no_attempts_yet() {
        let entry = testutil::uploads_response().entries[4].clone();
        let response = UploadShowResponse {
            entry: Some(entry.clone()),
            attempts: Vec::new(),
            payload_json: "{}".to_owned(),
        };
        let text = render_show(&response, &entry, TimeZone::Utc, false).expect("render");
        assert!(text.ends_with("\n\nno attempts yet\n"), "{text}");
        assert!(text.contains("\nlast error:    -\n"), "{text}");
    }

    #[test]
    fn the_show_json_has_the_entry_the_attempts_and_the_payload_in_order() {
        let response = testutil::upload_show_response();
        let entry = response.entry.clone().expect("an entry");
        let text = show_json(&response, &entry).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("JSON");
        let names: Vec<&str> = actual
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // The entry is the same object `uploads list` has.
        assert_eq!(
            actual["entry"],
            serde_json::to_value(EntryJson::new(&entry)).expect("JSON")
        );
        assert_eq!(actual["entry"]["hour"], "2024-05-01T10:00:00Z");
        assert_eq!(actual["entry"]["status"], "pending");
        assert_eq!(actual["entry"]["attempts"], 2);
        assert_eq!(actual["entry"]["next_attempt"], "2024-05-01T11:01:07.000Z");
        assert_eq!(
            actual["attempts"],
            json!([
                {
                    "attempt": 1,
                    "time": "2024-05-01T11:00:05.100Z",
                    "time_unix_ms": 1_714_561_205_100_i64,
                    "http_status": null,
                    "error": "cannot connect to central.example:9402: Connection refused (os error 111)",
                    "latency_ms": 3
                },
                {
                    "attempt": 2,
                    "time": "2024-05-01T11:00:07.350Z",
                    "time_unix_ms": 1_714_561_207_350_i64,
                    "http_status": 503,
                    "error": "HTTP 503: upstream busy, try again later",
                    "latency_ms": 85
                }
            ])
        );
        let payload: Value =
            serde_json::from_str(&response.payload_json).expect("the fixture is JSON");
        assert_eq!(actual["payload"], payload);
        assert!(actual["payload"].is_object());
        // The payload keeps the order it was sent in: schema first, users last.
        let schema = text.find("\"schema\"").expect("schema");
        let gpus = text.find("\"gpus\"").expect("gpus");
        let users = text.find("\"users\"").expect("users");
        assert!(schema < gpus && gpus < users, "{text}");
        // The entry first, then the attempts, the payload last.
        let attempts = text.find("\"attempts\": [").expect("attempts");
        assert!(text.find("\"entry\"") < Some(attempts), "{text}");
        assert!(attempts < schema, "{text}");
    }

    #[test]
    fn a_payload_that_is_not_json_is_an_error_naming_the_hour() {
        let mut response = testutil::upload_show_response();
        response.payload_json = "{\"schema\": ".to_owned();
        let entry = response.entry.clone().expect("an entry");
        let err = show_json(&response, &entry).expect_err("not JSON");
        assert_eq!(err.exit_code(), 1);
        assert!(
            err.to_string()
                .starts_with("gpukilld sent the payload of the hour 2024-05-01T10:00:00Z"),
            "{err}"
        );
        // Without --payload the text does not need it.
        assert!(render_show(&response, &entry, TimeZone::Utc, false).is_ok());
        assert!(render_show(&response, &entry, TimeZone::Utc, true).is_err());
    }

    #[test]
    fn the_show_json_is_pinned_byte_for_byte() {
        let response = testutil::upload_show_response();
        let entry = response.entry.clone().expect("an entry");
        assert_snapshot(
            "uploads-show.json",
            &show_json(&response, &entry).expect("encode"),
        );
    }

    #[test]
    fn payloads_print_in_the_order_and_with_the_values_sent() {
        // Duplicate and unsorted keys, numbers in every form serde_json reads (negative zero,
        // exponents, past u64), escapes, empty and nested containers.
        let sent = r#"{"z":1,"a":{"b":[],"a":{}},"z":2,"n":[-0,-0.0,1e2,1.5E-3,-9223372036854775808,18446744073709551616],"s":"\u00e9\n\"","t":[[null]]}"#;
        let mut response = testutil::upload_show_response();
        response.payload_json = sent.to_owned();
        let entry = response.entry.clone().expect("an entry");
        let expected = r#"{
  "z": 1,
  "a": {
    "b": [],
    "a": {}
  },
  "z": 2,
  "n": [
    -0.0,
    -0.0,
    100.0,
    0.0015,
    -9223372036854775808,
    1.8446744073709552e+19
  ],
  "s": "é\n\"",
  "t": [
    [
      null
    ]
  ]
}
"#;
        let text = render_show(&response, &entry, TimeZone::Utc, true).expect("render");
        assert!(text.ends_with(&format!("\npayload:\n{expected}")), "{text}");
        let json = show_json(&response, &entry).expect("encode");
        let indented = expected.trim_end().replace('\n', "\n  ");
        assert!(
            json.ends_with(&format!("\"payload\": {indented}\n}}\n")),
            "{json}"
        );
    }

    #[test]
    fn a_bad_payload_says_what_is_wrong_and_where() {
        let mut response = testutil::upload_show_response();
        let entry = response.entry.clone().expect("an entry");
        for (sent, reason) in [
            (
                "{\"schema\": ",
                "EOF while parsing a value at line 1 column 11",
            ),
            ("{} x", "trailing characters at line 1 column 4"),
            ("[1e400]", "number out of range at line 1 column 6"),
            ("{\"a\" 1}", "expected `:` at line 1 column 6"),
            ("", "EOF while parsing a value at line 1 column 0"),
        ] {
            response.payload_json = sent.to_owned();
            let err = show_json(&response, &entry).expect_err(sent);
            assert_eq!(
                crate::error::format_chain(&err),
                format!(
                    "gpukillctl: error: gpukilld sent the payload of the hour \
                     2024-05-01T10:00:00Z as text that is not JSON\n  caused by: {reason}\n"
                ),
                "{sent}"
            );
        }
    }

    #[test]
    fn payloads_read_and_write_every_kind_of_value() {
        let text = r#"{"z":1,"a":[true,false,null,-5,2.5,18446744073709551615,"s\u00e9"],"m":{}}"#;
        let value = Payload::parse(text).expect("JSON");
        assert_eq!(
            serde_json::to_string(&value).expect("encode"),
            r#"{"z":1,"a":[true,false,null,-5,2.5,18446744073709551615,"sé"],"m":{}}"#
        );
        assert!(Payload::parse("{\"a\":").is_err());
    }

    #[test]
    fn retry_text_and_json() {
        let none = UploadRetryResponse::default();
        assert_eq!(
            render_retry(&none, TimeZone::Utc),
            "nothing to retry: no hour is parked\n"
        );
        let one = UploadRetryResponse {
            requeued_hours: vec![1_714_550_400_000],
        };
        assert_eq!(
            render_retry(&one, TimeZone::Utc),
            "requeued 1 hour: 2024-05-01 08:00\n"
        );
        let two = UploadRetryResponse {
            requeued_hours: vec![1_714_550_400_000, 1_714_554_000_000],
        };
        assert_eq!(
            render_retry(&two, TimeZone::Utc),
            "requeued 2 hours: 2024-05-01 08:00, 2024-05-01 09:00\n"
        );
        let actual: Value = serde_json::from_str(&retry_json(&two).expect("encode")).expect("JSON");
        assert_eq!(
            actual,
            json!({"requeued_hours": [
                {"hour": "2024-05-01T08:00:00Z", "hour_unix_ms": 1_714_550_400_000_i64},
                {"hour": "2024-05-01T09:00:00Z", "hour_unix_ms": 1_714_554_000_000_i64}
            ]})
        );
        let actual: Value =
            serde_json::from_str(&retry_json(&none).expect("encode")).expect("JSON");
        assert_eq!(actual, json!({"requeued_hours": []}));
    }
}
