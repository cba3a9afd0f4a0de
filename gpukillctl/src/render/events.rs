//! The table and the JSON of `gpukillctl events`.
//!
//! Table: one row per event, oldest first, columns
//! `TIME, TYPE, CALLER, ACTION, PID, TARGET, GPU, OUTCOME, REASON`: TIME is the date and time
//! in the chosen [`TimeZone`] (local for users, UTC in tests), CALLER `user(uid)` (just `user`
//! for a remote principal, which has no uid) followed by ` via COORDINATOR` when a
//! coordinator forwarded the request (`alice@login1(1000) via coord`), TARGET `user/name`,
//! and `-` for anything absent or empty.
//!
//! JSON: `{"events": [...]}`, each event's `time` RFC 3339 UTC with milliseconds and its
//! `target` the same object as a kill result's target ([`TargetJson`]), or `null`. As in
//! `list`, fields are serialized under their Rust names, in declaration order, and every absent
//! value (including an empty outcome or reason, a remote principal's uid and `via` when no
//! coordinator forwarded the request) is `null`.

use gpukill_proto::v1::{Event, EventsResponse};
use serde::Serialize;

use super::event_type_name;
use super::json::{document, non_empty};
use super::kill::TargetJson;
use super::table::{ABSENT, or_absent, or_absent_str, table};
use super::time::{TimeZone, date_time, rfc3339_millis};
use crate::error::Error;

/// The JSON document of `gpukillctl events --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventsJson {
    /// Matching events, oldest first.
    pub events: Vec<EventJson>,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventJson {
    /// Sequence number in the daemon's store.
    pub id: i64,
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: Option<String>,
    /// When it happened, milliseconds since the epoch.
    pub time_unix_ms: Option<i64>,
    /// `kill`, `reset`, `deny`, `violation`, `policy` or `reservation` (`unknown(N)` for
    /// a type this client does not know).
    pub r#type: String,
    /// The caller's uid, from the kernel (or as the forwarding coordinator vouched for it);
    /// `null` for a remote principal, which has none.
    pub caller_uid: Option<u32>,
    /// The caller's user name.
    pub caller_user: String,
    /// The caller's PID at connect time.
    pub caller_pid: Option<i32>,
    /// How the caller connected: `unix`, `tcp` or `guard`.
    pub transport: String,
    /// What was asked, e.g. `kill --pid 4242 --force`.
    pub action: String,
    /// The process the event is about.
    pub target: Option<TargetJson>,
    /// What happened, e.g. `terminated`, `denied`.
    pub outcome: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The coordinator principal that forwarded the request (the caller is then
    /// `user@host`), or `null`.
    pub via: Option<String>,
}

impl EventsJson {
    /// The JSON view of `response`.
    pub fn new(response: &EventsResponse) -> Self {
        EventsJson {
            events: response.events.iter().map(EventJson::new).collect(),
        }
    }
}

impl EventJson {
    /// The JSON view of one event.
    pub fn new(event: &Event) -> Self {
        let time = rfc3339_millis(event.time_unix_ms);
        EventJson {
            id: event.id,
            time_unix_ms: time.as_ref().map(|_| event.time_unix_ms),
            time,
            r#type: event_type_name(event.r#type).into_owned(),
            caller_uid: caller_uid(event),
            caller_user: event.caller_user.clone(),
            caller_pid: event.caller_pid,
            transport: event.transport.clone(),
            action: event.action.clone(),
            target: event.target.as_ref().map(TargetJson::new),
            outcome: non_empty(&event.outcome),
            reason: non_empty(&event.reason),
            via: event.via.clone(),
        }
    }
}

/// The uid the daemon writes for a caller that has none: a remote principal.
const NO_UID: u32 = u32::MAX;

/// The caller's uid; `None` for a remote principal.
fn caller_uid(event: &Event) -> Option<u32> {
    (event.caller_uid != NO_UID).then_some(event.caller_uid)
}

/// The CALLER cell: `user(uid)`, or `user` without a uid, then ` via COORDINATOR`.
fn caller(event: &Event) -> String {
    let mut text = match caller_uid(event) {
        Some(uid) => format!("{}({uid})", event.caller_user),
        None => event.caller_user.clone(),
    };
    if let Some(via) = &event.via {
        text.push_str(" via ");
        text.push_str(via);
    }
    text
}

/// `response` as one indented JSON document, ending in a newline.
pub fn json(response: &EventsResponse) -> Result<String, Error> {
    document(&EventsJson::new(response))
}

/// `response` as a table with times in `tz`, ending in a newline.
pub fn render(response: &EventsResponse, tz: TimeZone) -> String {
    let header = [
        "TIME", "TYPE", "CALLER", "ACTION", "PID", "TARGET", "GPU", "OUTCOME", "REASON",
    ];
    let rows = response.events.iter().map(|event| {
        let target = event.target.as_ref();
        vec![
            or_absent(date_time(event.time_unix_ms, tz)),
            event_type_name(event.r#type).into_owned(),
            caller(event),
            or_absent_str(&event.action),
            or_absent(target.map(|t| t.pid)),
            target.map_or_else(|| ABSENT.to_owned(), |t| format!("{}/{}", t.user, t.name)),
            or_absent(target.and_then(|t| t.gpu_index)),
            or_absent_str(&event.outcome),
            or_absent_str(&event.reason),
        ]
    });
    table(&header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use serde_json::{Value, json};

    #[test]
    fn events_with_and_without_a_target() {
        assert_snapshot(
            "events-table.txt",
            &render(&testutil::events_response(), TimeZone::Utc),
        );
    }

    #[test]
    fn an_empty_trail_still_has_headers() {
        let text = render(&EventsResponse::default(), TimeZone::Utc);
        assert_eq!(
            text.lines().next(),
            Some(" TIME | TYPE | CALLER | ACTION | PID | TARGET | GPU | OUTCOME | REASON")
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn the_response_renders_to_the_documented_json() {
        let text = json(&testutil::events_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        let expected = json!({
            "events": [
                {
                    "id": 17,
                    "time": "2024-05-01T11:59:58.125Z",
                    "time_unix_ms": 1_714_564_798_125_i64,
                    "type": "kill",
                    "caller_uid": 1000,
                    "caller_user": "alice",
                    "caller_pid": 31337,
                    "transport": "unix",
                    "action": "kill --pid 4242",
                    "target": {
                        "pid": 4242,
                        "start_time": "2024-05-01T09:46:47Z",
                        "start_time_unix_ms": 1_714_556_807_000_i64,
                        "uid": 1000,
                        "user": "alice",
                        "proc_name": "python",
                        "cmdline": "python train.py --epochs 10",
                        "gpu_index": 0
                    },
                    "outcome": "terminated",
                    "reason": null,
                    "via": null
                },
                {
                    "id": 18,
                    "time": "2024-05-01T12:00:00.250Z",
                    "time_unix_ms": 1_714_564_800_250_i64,
                    "type": "deny",
                    "caller_uid": 1001,
                    "caller_user": "bob",
                    "caller_pid": null,
                    "transport": "unix",
                    "action": "reset --gpu 1",
                    "target": null,
                    "outcome": "denied",
                    "reason": "resetting a GPU needs an admin",
                    "via": null
                },
                {
                    "id": 19,
                    "time": "2024-05-01T12:00:01.000Z",
                    "time_unix_ms": 1_714_564_801_000_i64,
                    "type": "kill",
                    "caller_uid": 0,
                    "caller_user": "root",
                    "caller_pid": 1,
                    "transport": "unix",
                    "action": "kill --filter miner --batch",
                    "target": {
                        "pid": 6006,
                        "start_time": "2024-05-01T09:46:47Z",
                        "start_time_unix_ms": 1_714_556_807_000_i64,
                        "uid": 1001,
                        "user": "bob",
                        "proc_name": "xmrig",
                        "cmdline": "./xmrig -o pool",
                        "gpu_index": null
                    },
                    "outcome": "killed",
                    "reason": "still running after 5s; sent SIGKILL",
                    "via": null
                },
                {
                    "id": 20,
                    "time": "2024-05-01T12:00:01.250Z",
                    "time_unix_ms": 1_714_564_801_250_i64,
                    "type": "kill",
                    "caller_uid": 1000,
                    "caller_user": "alice@login1",
                    "caller_pid": null,
                    "transport": "tcp",
                    "action": "kill --pid 4243",
                    "target": {
                        "pid": 4243,
                        "start_time": "2024-05-01T09:46:47Z",
                        "start_time_unix_ms": 1_714_556_807_000_i64,
                        "uid": 1000,
                        "user": "alice",
                        "proc_name": "python",
                        "cmdline": "python --job 4243",
                        "gpu_index": 1
                    },
                    "outcome": "terminated",
                    "reason": null,
                    "via": "coord"
                },
                {
                    "id": 21,
                    "time": "2024-05-01T12:00:02.250Z",
                    "time_unix_ms": 1_714_564_802_250_i64,
                    "type": "deny",
                    "caller_uid": null,
                    "caller_user": "ci-bot",
                    "caller_pid": null,
                    "transport": "tcp",
                    "action": "reset --all",
                    "target": null,
                    "outcome": "denied",
                    "reason": "principal \"ci-bot\" has the reader role",
                    "via": null
                }
            ]
        });
        assert_eq!(actual, expected);
        assert!(text.contains("\n      \"type\": \"kill\",\n"), "{text}");
    }

    #[test]
    fn unset_values_are_null() {
        let response = EventsResponse {
            events: vec![Event::default()],
        };
        let actual = serde_json::to_value(EventsJson::new(&response)).expect("encode");
        let event = &actual["events"][0];
        assert_eq!(event["time"], Value::Null);
        assert_eq!(event["time_unix_ms"], Value::Null);
        assert_eq!(event["caller_pid"], Value::Null);
        assert_eq!(event["target"], Value::Null);
        assert_eq!(event["outcome"], Value::Null);
        assert_eq!(event["reason"], Value::Null);
        assert_eq!(event["via"], Value::Null);
        assert_eq!(event["caller_uid"], 0);
    }

    #[test]
    fn forwarded_callers_name_the_coordinator() {
        let response = testutil::events_response();
        assert_eq!(caller(&response.events[0]), "alice(1000)");
        assert_eq!(caller(&response.events[3]), "alice@login1(1000) via coord");
        assert_eq!(caller(&response.events[4]), "ci-bot");
    }
}
