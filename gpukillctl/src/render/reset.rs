//! The tables and the JSON of `gpukillctl reset`.
//!
//! Table: one row per GPU, columns `GPU, PCI_BUS_ID, OUTCOME, REASON`, `-` for an empty bus id
//! or reason. When `--force` killed processes, a blank line and kill's table of them follow
//! (`PID, USER, NAME, GPU, OUTCOME, REASON`), every GPU's in index order.
//!
//! JSON: `{"results": [...]}`, each result `gpu_index`, `pci_bus_id`, `outcome` (`reset` or
//! `failed`), `reason` and `killed`, the latter holding the same objects as kill's `results`
//! ([`KillResultJson`]). As in `list` and `kill`, fields are serialized under their Rust names,
//! in declaration order, and every absent value (an empty bus id or reason) is `null`.

use gpukill_proto::v1::{ResetResponse, ResetResult};
use serde::Serialize;

use super::json::{document, non_empty};
use super::kill::{KillResultJson, results_table};
use super::reset_outcome_name;
use super::table::{or_absent_str, table};
use crate::error::Error;

/// The JSON document of `gpukillctl reset --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResetJson {
    /// One entry per GPU, in index order.
    pub results: Vec<ResetResultJson>,
}

/// What became of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResetResultJson {
    /// The GPU's index.
    pub gpu_index: u32,
    /// Its PCI bus id, as passed to nvidia-smi; `null` when the daemon sent none.
    pub pci_bus_id: Option<String>,
    /// `reset` or `failed`; `unknown` for a value this client does not know.
    pub outcome: &'static str,
    /// Why, or what nvidia-smi said; `null` when the daemon gave no reason.
    pub reason: Option<String>,
    /// The processes killed first (with `--force`), as `kill` reports them.
    pub killed: Vec<KillResultJson>,
}

impl ResetJson {
    /// The JSON view of `response`.
    pub fn new(response: &ResetResponse) -> Self {
        ResetJson {
            results: response.results.iter().map(ResetResultJson::new).collect(),
        }
    }
}

impl ResetResultJson {
    /// The JSON view of one result.
    pub fn new(result: &ResetResult) -> Self {
        ResetResultJson {
            gpu_index: result.gpu_index,
            pci_bus_id: non_empty(&result.pci_bus_id),
            outcome: reset_outcome_name(result.outcome),
            reason: non_empty(&result.reason),
            killed: result.killed.iter().map(KillResultJson::new).collect(),
        }
    }
}

/// `response` as one indented JSON document, ending in a newline.
pub fn json(response: &ResetResponse) -> Result<String, Error> {
    document(&ResetJson::new(response))
}

/// `response` as tables, ending in a newline: the GPUs, then the killed processes if any.
pub fn render(response: &ResetResponse) -> String {
    let header = ["GPU", "PCI_BUS_ID", "OUTCOME", "REASON"];
    let rows = response.results.iter().map(|result| {
        vec![
            result.gpu_index.to_string(),
            or_absent_str(&result.pci_bus_id),
            reset_outcome_name(result.outcome).to_owned(),
            or_absent_str(&result.reason),
        ]
    });
    let mut text = table(&header, rows);
    if response
        .results
        .iter()
        .any(|result| !result.killed.is_empty())
    {
        text.push('\n');
        text.push_str(&results_table(
            response.results.iter().flat_map(|result| &result.killed),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};
    use serde_json::{Value, json};

    #[test]
    fn gpus_then_killed_processes() {
        let text = render(&testutil::reset_response());
        assert_snapshot("reset-table.txt", &text);
    }

    #[test]
    fn without_killed_processes_there_is_one_table() {
        let mut response = testutil::reset_response();
        response.results[0].killed.clear();
        let text = render(&response);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains("PID"), "{text}");
        assert_eq!(
            render(&ResetResponse::default()),
            " GPU | PCI_BUS_ID | OUTCOME | REASON\n\
             -----+------------+---------+--------\n"
        );
    }

    #[test]
    fn the_response_renders_to_the_documented_json() {
        let text = json(&testutil::reset_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        let expected = json!({
            "results": [
                {
                    "gpu_index": 0,
                    "pci_bus_id": "00000000:07:00.0",
                    "outcome": "reset",
                    "reason": null,
                    "killed": [{
                        "pid": 4242,
                        "start_time": "2024-05-01T09:46:47Z",
                        "start_time_unix_ms": 1_714_556_807_000_i64,
                        "uid": 1000,
                        "user": "alice",
                        "proc_name": "python",
                        "cmdline": "python --job 4242",
                        "gpu_index": 0,
                        "outcome": "terminated",
                        "reason": null
                    }]
                },
                {
                    "gpu_index": 1,
                    "pci_bus_id": "00000000:0F:00.0",
                    "outcome": "failed",
                    "reason": "nvidia-smi exited with status 255: GPU 00000000:0F:00.0 is lost",
                    "killed": []
                }
            ]
        });
        assert_eq!(actual, expected);
        // Field order is part of the format.
        let keys: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("      \""))
            .take(5)
            .map(|line| line.trim().split('"').nth(1).expect("a key"))
            .collect();
        assert_eq!(
            keys,
            ["gpu_index", "pci_bus_id", "outcome", "reason", "killed"]
        );
    }

    #[test]
    fn unset_values_are_null_or_unknown() {
        let response = ResetResponse {
            results: vec![ResetResult::default()],
        };
        let actual = serde_json::to_value(ResetJson::new(&response)).expect("encode");
        let result = &actual["results"][0];
        assert_eq!(result["pci_bus_id"], Value::Null);
        assert_eq!(result["reason"], Value::Null);
        assert_eq!(result["outcome"], "unknown");
        assert_eq!(result["killed"], json!([]));
        let text = render(&response);
        assert!(
            text.ends_with(" 0   | -          | unknown | -\n"),
            "{text}"
        );
    }
}
