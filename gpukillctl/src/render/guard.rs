//! The tables and JSON of `gpukillctl guard status` and `gpukillctl guard test`.
//!
//! Status: the policy (file, when loaded, load error), its mode and timings, its entries and
//! active windows, the kill rate, then one row per violation being followed
//! (`RULE, POLICY, VALUE, LIMIT, OVER, PROCESSES`) and the rules that cannot be evaluated.
//! Test: the same rows with `WOULD`, what the guard would do about each now.
//!
//! JSON: the response's fields under their proto names; each violation's offenders as
//! kill targets ([`TargetJson`]).

use gpukill_proto::v1::{GuardStatusResponse, GuardTestResponse, GuardUnit, GuardViolation};
use serde::Serialize;

use super::json::document;
use super::kill::TargetJson;
use super::table::{ABSENT, table};
use super::time::{TimeZone, date_time, rfc3339_millis};
use super::{guard_mode_name, guard_rule_name, guard_unit_name};
use crate::error::Error;

/// The JSON of one violation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViolationJson {
    /// The rule.
    pub rule: String,
    /// The table that set the limit.
    pub policy: String,
    /// One line for people.
    pub description: String,
    /// The value, in `unit`.
    pub measured: f64,
    /// The limit, in `unit`.
    pub limit: f64,
    /// bytes, percent, seconds, count, gpu or score.
    pub unit: String,
    /// Whether the value is over the limit now.
    pub over: bool,
    /// The processes acting would stop.
    pub offenders: Vec<TargetJson>,
    /// `guard test` only: what the guard would do.
    pub would: Option<String>,
}

impl ViolationJson {
    fn new(violation: &GuardViolation) -> Self {
        ViolationJson {
            rule: guard_rule_name(violation.rule).into_owned(),
            policy: violation.policy.clone(),
            description: violation.description.clone(),
            measured: violation.measured,
            limit: violation.limit,
            unit: guard_unit_name(violation.unit).into_owned(),
            over: violation.over,
            offenders: violation.offenders.iter().map(TargetJson::new).collect(),
            would: (!violation.would.is_empty()).then(|| violation.would.clone()),
        }
    }
}

/// The JSON of `guard status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusJson {
    /// The policy file.
    pub policy_path: String,
    /// Whether a policy is loaded.
    pub loaded: bool,
    /// Why the last load failed.
    pub load_error: Option<String>,
    /// The policy's `enabled`.
    pub enabled: bool,
    /// dry-run, soft or hard; null when no policy is loaded.
    pub mode: Option<String>,
    /// When the policy was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// Soft mode's grace, ms.
    pub grace_ms: u64,
    /// Hard mode's minimum duration, ms.
    pub min_duration_ms: u64,
    /// [[user]] entries.
    pub users: u32,
    /// [[group]] entries.
    pub groups: u32,
    /// [[gpu]] entries.
    pub gpus: u32,
    /// [[window]] entries.
    pub windows: u32,
    /// Windows active now.
    pub active_windows: Vec<String>,
    /// Violations being followed.
    pub violations: Vec<ViolationJson>,
    /// Rules that cannot be evaluated.
    pub not_evaluable: Vec<String>,
    /// Kills in the last minute.
    pub kills_last_minute: u32,
    /// The most kills per minute.
    pub max_kills_per_minute: u32,
    /// When the last evaluation ran, RFC 3339.
    pub evaluated_at: Option<String>,
    /// How long it took, microseconds.
    pub evaluation_us: u64,
}

/// The JSON of `guard test`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestJson {
    /// The mode of the policy in force.
    pub mode: String,
    /// The violations, each with `would`.
    pub violations: Vec<ViolationJson>,
    /// Rules that cannot be evaluated.
    pub not_evaluable: Vec<String>,
}

/// `response` as one JSON document.
pub fn status_json(response: &GuardStatusResponse) -> Result<String, Error> {
    let time = |ms: i64| (ms != 0).then(|| rfc3339_millis(ms)).flatten();
    document(&StatusJson {
        policy_path: response.policy_path.clone(),
        loaded: response.loaded,
        load_error: response.load_error.clone(),
        enabled: response.enabled,
        mode: response
            .loaded
            .then(|| guard_mode_name(response.mode).into_owned()),
        loaded_at: time(response.loaded_at_unix_ms),
        grace_ms: response.grace_ms,
        min_duration_ms: response.min_duration_ms,
        users: response.users,
        groups: response.groups,
        gpus: response.gpus,
        windows: response.windows,
        active_windows: response.active_windows.clone(),
        violations: response.violations.iter().map(ViolationJson::new).collect(),
        not_evaluable: response.not_evaluable.clone(),
        kills_last_minute: response.kills_last_minute,
        max_kills_per_minute: response.max_kills_per_minute,
        evaluated_at: time(response.evaluated_at_unix_ms),
        evaluation_us: response.evaluation_us,
    })
}

/// `response` as one JSON document.
pub fn test_json(response: &GuardTestResponse) -> Result<String, Error> {
    document(&TestJson {
        mode: guard_mode_name(response.mode).into_owned(),
        violations: response.violations.iter().map(ViolationJson::new).collect(),
        not_evaluable: response.not_evaluable.clone(),
    })
}

/// `response` as text, times in `tz`.
pub fn render_status(response: &GuardStatusResponse, tz: TimeZone) -> String {
    let at = |ms: i64| date_time(ms, tz).unwrap_or_else(|| ABSENT.to_owned());
    let mut text = String::new();
    if !response.loaded {
        text.push_str(&format!(
            "guard: off (no policy loaded from {})\n",
            response.policy_path
        ));
    } else {
        text.push_str(&format!(
            "policy:     {} (loaded {})\n",
            response.policy_path,
            at(response.loaded_at_unix_ms)
        ));
        let human =
            |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
        text.push_str(&format!(
            "guard:      {}, mode {} (grace {}, min_duration {})\n",
            if response.enabled {
                "enabled"
            } else {
                "disabled"
            },
            guard_mode_name(response.mode),
            human(response.grace_ms),
            human(response.min_duration_ms)
        ));
        let windows = if response.active_windows.is_empty() {
            "none active".to_owned()
        } else {
            format!("active: {}", response.active_windows.join(", "))
        };
        text.push_str(&format!(
            "entries:    {} users, {} groups, {} GPUs, {} windows ({windows})\n",
            response.users, response.groups, response.gpus, response.windows
        ));
        text.push_str(&format!(
            "kills:      {} in the last minute (at most {})\n",
            response.kills_last_minute, response.max_kills_per_minute
        ));
        if response.evaluated_at_unix_ms != 0 {
            text.push_str(&format!(
                "evaluated:  {} in {} us\n",
                at(response.evaluated_at_unix_ms),
                response.evaluation_us
            ));
        }
    }
    if let Some(error) = &response.load_error {
        text.push_str(&format!(
            "load error: {error} (the previous policy stays in force)\n"
        ));
    }
    text.push('\n');
    text.push_str(&violations_table(&response.violations, false));
    not_evaluable(&mut text, &response.not_evaluable);
    text
}

/// `response` as text.
pub fn render_test(response: &GuardTestResponse) -> String {
    let mut text = format!("mode: {}\n\n", guard_mode_name(response.mode));
    text.push_str(&violations_table(&response.violations, true));
    not_evaluable(&mut text, &response.not_evaluable);
    text
}

fn not_evaluable(text: &mut String, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    text.push_str("\nnot evaluable:\n");
    for line in lines {
        text.push_str(&format!("  {line}\n"));
    }
}

fn violations_table(violations: &[GuardViolation], with_would: bool) -> String {
    if violations.is_empty() {
        return "no violations\n".to_owned();
    }
    let mut header = vec!["RULE", "POLICY", "VALUE", "LIMIT", "OVER", "PROCESSES"];
    if with_would {
        header.push("WOULD");
    }
    let rows = violations.iter().map(|v| {
        let processes: Vec<String> = v
            .offenders
            .iter()
            .map(|o| {
                let gpu = o.gpu_index.map(|g| format!("@{g}")).unwrap_or_default();
                format!("{}({} {}){gpu}", o.pid, o.user, o.name)
            })
            .collect();
        let mut row = vec![
            guard_rule_name(v.rule).into_owned(),
            v.policy.clone(),
            value(v.measured, v.unit()),
            if v.unit() == GuardUnit::Gpu {
                ABSENT.to_owned()
            } else {
                value(v.limit, v.unit())
            },
            if v.over { "yes" } else { "band" }.to_owned(),
            if processes.is_empty() {
                ABSENT.to_owned()
            } else {
                processes.join(" ")
            },
        ];
        if with_would {
            row.push(v.would.clone());
        }
        row
    });
    table(&header, rows)
}

/// A value in `unit` for people; a plain number in a unit this client does not know
/// (prost reads an unknown number as unspecified).
fn value(value: f64, unit: GuardUnit) -> String {
    match unit {
        GuardUnit::Bytes => format!("{:.1}GiB", value / (1u64 << 30) as f64),
        GuardUnit::Percent => format!("{value:.1}%"),
        GuardUnit::Seconds => {
            humantime::format_duration(std::time::Duration::from_secs(value as u64)).to_string()
        }
        GuardUnit::Gpu => format!("GPU {value:.0}"),
        GuardUnit::Count | GuardUnit::Score | GuardUnit::Unspecified => format!("{value:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, assert_snapshot};

    #[test]
    fn status_and_test_tables() {
        assert_snapshot(
            "guard-status.txt",
            &render_status(&testutil::guard_status_response(), TimeZone::Utc),
        );
        assert_snapshot(
            "guard-test.txt",
            &render_test(&testutil::guard_test_response()),
        );
        let json: serde_json::Value =
            serde_json::from_str(&status_json(&testutil::guard_status_response()).expect("encode"))
                .expect("JSON");
        assert_eq!(json["mode"], "hard");
        assert_eq!(json["violations"][0]["offenders"][0]["pid"], 4242);
        assert_eq!(json["violations"][0]["would"], serde_json::Value::Null);
        let off = GuardStatusResponse {
            policy_path: "/etc/gpukill/guard.toml".into(),
            ..Default::default()
        };
        assert!(
            render_status(&off, TimeZone::Utc)
                .starts_with("guard: off (no policy loaded from /etc/gpukill/guard.toml)\n")
        );
    }
}
