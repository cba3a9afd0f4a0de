//! The table and the JSON of `gpukillctl kill`.
//!
//! Table: one row per result, columns `PID, USER, NAME, GPU, OUTCOME, REASON`, the outcome in
//! words (`still running`), `-` for an absent GPU or an empty reason.
//!
//! JSON: `{"needs_batch": bool, "results": [...]}`, each result the target's fields
//! ([`TargetJson`], shared with `events`) followed by `outcome` (the proto name in lower case,
//! `still_running`) and `reason`. As in `list`, fields are serialized under their Rust names,
//! in declaration order, and every absent value is `null`; an empty reason is `null` too.

use gpukill_proto::v1::{KillResponse, KillResult, KillTarget};
use serde::Serialize;

use super::json::{document, non_empty};
use super::kill_outcome_name;
use super::kill_outcome_words;
use super::table::{or_absent, or_absent_str, table};
use super::time::rfc3339_seconds;
use crate::error::Error;

/// The JSON document of `gpukillctl kill --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillJson {
    /// True when several processes matched and nothing was signalled (no `--batch`).
    pub needs_batch: bool,
    /// One entry per target, in PID order.
    pub results: Vec<KillResultJson>,
}

/// What became of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillResultJson {
    /// The process, as identified before any signal.
    #[serde(flatten)]
    pub target: TargetJson,
    /// `terminated`, `killed`, `still_running`, `already_gone`, `denied`, `protected` or
    /// `matched`; `unknown` for a value this client does not know.
    pub outcome: &'static str,
    /// Why, in words; `null` when the daemon gave no reason.
    pub reason: Option<String>,
}

/// A process a kill (or an audit event) is about. The same fields as `list`'s processes
/// where they overlap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetJson {
    /// Process id.
    pub pid: u32,
    /// Start time, RFC 3339 UTC with whole seconds.
    pub start_time: Option<String>,
    /// Start time, milliseconds since the epoch; with `pid` it identifies the process.
    pub start_time_unix_ms: Option<i64>,
    /// Real uid.
    pub uid: u32,
    /// User name (or the uid in decimal).
    pub user: String,
    /// Short name (comm).
    pub proc_name: String,
    /// Full command line.
    pub cmdline: String,
    /// The GPU it was on; `null` when it is not a GPU process.
    pub gpu_index: Option<u32>,
}

impl KillJson {
    /// The JSON view of `response`.
    pub fn new(response: &KillResponse) -> Self {
        KillJson {
            needs_batch: response.needs_batch,
            results: response.results.iter().map(KillResultJson::new).collect(),
        }
    }
}

impl KillResultJson {
    /// The JSON view of one result; a result without a target (which the daemon never sends)
    /// shows an empty target.
    pub fn new(result: &KillResult) -> Self {
        KillResultJson {
            target: TargetJson::new(result.target.as_ref().unwrap_or(&KillTarget::default())),
            outcome: kill_outcome_name(result.outcome),
            reason: non_empty(&result.reason),
        }
    }
}

impl TargetJson {
    /// The JSON view of one target.
    pub fn new(target: &KillTarget) -> Self {
        let start = rfc3339_seconds(target.start_time_unix_ms);
        TargetJson {
            pid: target.pid,
            start_time_unix_ms: start.as_ref().map(|_| target.start_time_unix_ms),
            start_time: start,
            uid: target.uid,
            user: target.user.clone(),
            proc_name: target.name.clone(),
            cmdline: target.cmdline.clone(),
            gpu_index: target.gpu_index,
        }
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn json(response: &KillResponse) -> Result<String, Error> {
    document(&KillJson::new(response))
}

/// `response` as a table, ending in a newline.
pub fn render(response: &KillResponse) -> String {
    results_table(&response.results)
}

/// The table of kill results, `PID, USER, NAME, GPU, OUTCOME, REASON`, ending in a newline.
/// Shared with `reset`, whose `--force` kills processes first.
pub fn results_table<'a>(results: impl IntoIterator<Item = &'a KillResult>) -> String {
    let header = ["PID", "USER", "NAME", "GPU", "OUTCOME", "REASON"];
    let rows = results.into_iter().map(|result| {
        let target = result.target.clone().unwrap_or_default();
        vec![
            target.pid.to_string(),
            target.user,
            target.name,
            or_absent(target.gpu_index),
            kill_outcome_words(result.outcome).to_owned(),
            or_absent_str(&result.reason),
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
    fn every_outcome_in_words() {
        assert_snapshot("kill-table.txt", &render(&testutil::kill_response()));
    }

    #[test]
    fn an_empty_answer_still_has_headers() {
        assert_eq!(
            render(&KillResponse::default()),
            " PID | USER | NAME | GPU | OUTCOME | REASON\n\
             -----+------+------+-----+---------+--------\n"
        );
    }

    fn target(pid: u32, user: &str, name: &str, gpu: Option<u32>) -> Value {
        json!({
            "pid": pid,
            "start_time": "2024-05-01T09:46:47Z",
            "start_time_unix_ms": 1_714_556_807_000_i64,
            "uid": if user == "alice" { 1000 } else { 1001 },
            "user": user,
            "proc_name": name,
            "cmdline": format!("{name} --job {pid}"),
            "gpu_index": gpu,
        })
    }

    fn result(target: Value, outcome: &str, reason: Option<&str>) -> Value {
        let mut value = target;
        value["outcome"] = json!(outcome);
        value["reason"] = json!(reason);
        value
    }

    #[test]
    fn the_response_renders_to_the_documented_json() {
        let text = json(&testutil::kill_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        let expected = json!({
            "needs_batch": false,
            "results": [
                result(target(4242, "alice", "python", Some(0)), "terminated", None),
                result(
                    target(4243, "alice", "python", Some(0)),
                    "killed",
                    Some("still running after 5s; sent SIGKILL")
                ),
                result(
                    target(4244, "alice", "python", Some(1)),
                    "still_running",
                    Some("still running after 5s")
                ),
                result(target(4245, "alice", "python", Some(1)), "already_gone", None),
                result(
                    target(5151, "bob", "serve", Some(0)),
                    "denied",
                    Some("owned by bob; you are alice")
                ),
                result(
                    target(5152, "bob", "sshd", None),
                    "protected",
                    Some("protected process pattern ^sshd$")
                ),
                result(target(5153, "bob", "serve", Some(2)), "matched", None),
            ]
        });
        assert_eq!(actual, expected);
        // Field order is part of the format: the target's fields, then outcome and reason.
        let keys: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("      \""))
            .take(10)
            .map(|line| line.trim().split('"').nth(1).expect("a key"))
            .collect();
        assert_eq!(
            keys,
            [
                "pid",
                "start_time",
                "start_time_unix_ms",
                "uid",
                "user",
                "proc_name",
                "cmdline",
                "gpu_index",
                "outcome",
                "reason"
            ]
        );
    }

    #[test]
    fn unset_times_and_outcomes_are_null_or_unknown() {
        let response = KillResponse {
            results: vec![KillResult::default()],
            needs_batch: true,
        };
        let actual = serde_json::to_value(KillJson::new(&response)).expect("encode");
        assert_eq!(actual["needs_batch"], true);
        let result = &actual["results"][0];
        assert_eq!(result["start_time"], Value::Null);
        assert_eq!(result["start_time_unix_ms"], Value::Null);
        assert_eq!(result["gpu_index"], Value::Null);
        assert_eq!(result["reason"], Value::Null);
        assert_eq!(result["outcome"], "unknown");
    }
}
