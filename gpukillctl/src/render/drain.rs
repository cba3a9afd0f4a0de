//! The text and JSON of `gpukillctl drain` and `undrain` (the Drain and Undrain RPCs), and
//! the drain as `status` shows it.
//!
//! `drain` (text): `GPU 2 drained: reserve and run no longer hand it out (reason: fan
//! noise)`, then, when someone holds it, `alice's manual reservation on it runs on: a drain
//! ends no reservation and kills nothing`; or `GPU 2 was already drained by alice since
//! DATE TIME: REASON; nothing changed`.
//!
//! `undrain` (text): `GPU 2 undrained: reserve and run hand it out again (drained by alice
//! since DATE TIME: REASON)`, or `GPU 2 was not drained; nothing changed`.
//!
//! `status`: `DRAINED by alice 2h0m ago: REASON` ([`drained_text`]).
//!
//! JSON: the GPU's fields (as in `status`), then `drain` (`by`, `uid`, `reason` (`null` when
//! none was given), `since`, `since_unix_ms`), and `already_drained` and `reservation` for
//! `drain`, `was_drained` for `undrain`.

use gpukill_proto::v1::{DrainResponse, GpuDrain, UndrainResponse};
use serde::Serialize;

use super::json::{document, non_empty};
use super::reservations::{GpuJson, ReservationJson, kind_name};
use super::table::ABSENT;
use super::time::{TimeZone, age, date_time, rfc3339_millis};
use crate::error::Error;

/// `: REASON`, or nothing when no reason was given.
fn reason_suffix(drain: &GpuDrain) -> String {
    if drain.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", drain.reason)
    }
}

/// `by alice since DATE TIME: REASON` (no reason: nothing after the time).
fn by_since(drain: &GpuDrain, tz: TimeZone) -> String {
    let since = date_time(drain.since_unix_ms, tz).unwrap_or_else(|| ABSENT.to_owned());
    format!("by {} since {since}{}", drain.by, reason_suffix(drain))
}

/// The STATUS words of a drained GPU: `DRAINED by alice 2h ago: REASON`, the time as of
/// `now_ms`.
pub fn drained_text(drain: &GpuDrain, now_ms: i64) -> String {
    let ago = age(now_ms.saturating_sub(drain.since_unix_ms));
    format!("DRAINED by {} {ago} ago{}", drain.by, reason_suffix(drain))
}

/// The lines of `gpukillctl drain`.
pub fn render_drain(response: &DrainResponse, tz: TimeZone) -> String {
    let index = response.gpu.as_ref().map_or(0, |gpu| gpu.index);
    let drain = response.drain.clone().unwrap_or_default();
    if response.already_drained {
        return format!(
            "GPU {index} was already drained {}; nothing changed\n",
            by_since(&drain, tz)
        );
    }
    let reason = if drain.reason.is_empty() {
        String::new()
    } else {
        format!(" (reason: {})", drain.reason)
    };
    let mut text = format!("GPU {index} drained: reserve and run no longer hand it out{reason}\n");
    if let Some(reservation) = &response.reservation {
        text.push_str(&format!(
            "{}'s {} reservation on it runs on: a drain ends no reservation and kills nothing\n",
            reservation.user,
            kind_name(reservation.kind)
        ));
    }
    text
}

/// The line of `gpukillctl undrain`.
pub fn render_undrain(response: &UndrainResponse, tz: TimeZone) -> String {
    let index = response.gpu.as_ref().map_or(0, |gpu| gpu.index);
    match response.drain.as_ref().filter(|_| response.was_drained) {
        Some(drain) => format!(
            "GPU {index} undrained: reserve and run hand it out again (drained {})\n",
            by_since(drain, tz)
        ),
        None => format!("GPU {index} was not drained; nothing changed\n"),
    }
}

/// A drain in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainJson {
    /// The admin who drained the GPU.
    pub by: String,
    /// Their uid; `null` for a remote principal, which has none.
    pub uid: Option<u32>,
    /// Why; `null` when not said.
    pub reason: Option<String>,
    /// Since when, RFC 3339 UTC with milliseconds.
    pub since: Option<String>,
    /// Since when, milliseconds since the epoch.
    pub since_unix_ms: i64,
}

impl DrainJson {
    /// The JSON view of `drain`.
    pub fn new(drain: &GpuDrain) -> Self {
        DrainJson {
            by: drain.by.clone(),
            uid: drain.uid,
            reason: non_empty(&drain.reason),
            since: rfc3339_millis(drain.since_unix_ms),
            since_unix_ms: drain.since_unix_ms,
        }
    }
}

/// The JSON document of `gpukillctl drain --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainedJson {
    /// The GPU.
    #[serde(flatten)]
    pub gpu: GpuJson,
    /// The drain in force (the earlier one when it was already drained).
    pub drain: Option<DrainJson>,
    /// The GPU was drained already; nothing changed.
    pub already_drained: bool,
    /// The reservation held on the GPU, which the drain leaves running.
    pub reservation: Option<ReservationJson>,
}

/// The JSON document of `gpukillctl undrain --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UndrainedJson {
    /// The GPU.
    #[serde(flatten)]
    pub gpu: GpuJson,
    /// Whether it was drained; false: nothing changed.
    pub was_drained: bool,
    /// The drain that ended.
    pub drain: Option<DrainJson>,
}

/// `response` of Drain as one indented JSON document, ending in a newline.
pub fn drain_json(response: &DrainResponse) -> Result<String, Error> {
    document(&DrainedJson {
        gpu: GpuJson::new(response.gpu.as_ref()),
        drain: response.drain.as_ref().map(DrainJson::new),
        already_drained: response.already_drained,
        reservation: response.reservation.as_ref().map(ReservationJson::new),
    })
}

/// `response` of Undrain as one indented JSON document, ending in a newline.
pub fn undrain_json(response: &UndrainResponse) -> Result<String, Error> {
    document(&UndrainedJson {
        gpu: GpuJson::new(response.gpu.as_ref()),
        was_drained: response.was_drained,
        drain: response.drain.as_ref().map(DrainJson::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, NOW_MS};
    use serde_json::{Value, json};

    #[test]
    fn drain_says_what_changed_and_that_the_reservation_runs_on() {
        let response = testutil::drain_response();
        assert_eq!(
            render_drain(&response, TimeZone::Utc),
            "GPU 2 drained: reserve and run no longer hand it out (reason: fan noise)\n\
             alice's manual reservation on it runs on: a drain ends no reservation and kills \
             nothing\n"
        );
        let again = DrainResponse {
            already_drained: true,
            reservation: None,
            ..testutil::drain_response()
        };
        assert_eq!(
            render_drain(&again, TimeZone::Utc),
            "GPU 2 was already drained by root since 2024-05-01 10:00:00: fan noise; nothing \
             changed\n"
        );
        let bare = DrainResponse {
            reservation: None,
            drain: Some(GpuDrain {
                reason: String::new(),
                ..testutil::gpu_drain()
            }),
            ..testutil::drain_response()
        };
        assert_eq!(
            render_drain(&bare, TimeZone::Utc),
            "GPU 2 drained: reserve and run no longer hand it out\n"
        );
    }

    #[test]
    fn undrain_names_the_drain_that_ended_or_says_there_was_none() {
        let response = testutil::undrain_response();
        assert_eq!(
            render_undrain(&response, TimeZone::Utc),
            "GPU 2 undrained: reserve and run hand it out again (drained by root since \
             2024-05-01 10:00:00: fan noise)\n"
        );
        let none = UndrainResponse {
            was_drained: false,
            drain: None,
            ..response
        };
        assert_eq!(
            render_undrain(&none, TimeZone::Utc),
            "GPU 2 was not drained; nothing changed\n"
        );
    }

    #[test]
    fn drained_text_counts_from_now() {
        assert_eq!(
            drained_text(&testutil::gpu_drain(), NOW_MS),
            "DRAINED by root 2h0m ago: fan noise"
        );
        let bare = GpuDrain {
            reason: String::new(),
            ..testutil::gpu_drain()
        };
        assert_eq!(drained_text(&bare, NOW_MS), "DRAINED by root 2h0m ago");
    }

    #[test]
    fn the_json_has_the_gpu_the_drain_and_what_changed() {
        let text = drain_json(&testutil::drain_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual["gpu_index"], 2);
        assert_eq!(
            actual["drain"],
            json!({
                "by": "root",
                "uid": 0,
                "reason": "fan noise",
                "since": "2024-05-01T10:00:00.250Z",
                "since_unix_ms": NOW_MS - 7_200_000,
            })
        );
        assert_eq!(actual["already_drained"], false);
        assert_eq!(actual["reservation"]["user"], "alice");
        let text = undrain_json(&UndrainResponse {
            was_drained: false,
            drain: None,
            ..testutil::undrain_response()
        })
        .expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual["was_drained"], false);
        assert_eq!(actual["drain"], Value::Null);
        assert_eq!(actual["gpu_index"], 2);
    }
}
