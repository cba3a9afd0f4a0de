//! What an upload may say. Every field of `gpukill.usage/v1` has a valid range, and a
//! payload with one value outside it is refused whole (HTTP 400 naming the field and the
//! value) before anything is stored: a node cannot make the central server keep, or bill
//! for, an hour no GPU could have had. The ranges are wide enough for every GPU a node can
//! hold (and any configuration of its poll and persist intervals), narrow enough that
//! `u64::MAX`, negative counters, 250 % utilization or a 10,000 °C GPU never land.
//!
//! The checks run on the parsed JSON before it becomes a [`Payload`], so that a value the
//! typed struct could not even hold (a negative `gpu_index`, a `samples` beyond `i64`) is
//! refused with its field's name too, not only with serde's line and column.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::is_node_id;
use crate::usage_payload::{Payload, SCHEMA};

/// One hour, in milliseconds.
const HOUR_MS: i64 = 3_600_000;
/// GPU indices on a node are below this (no node holds a thousand GPUs).
pub const MAX_GPUS: i128 = 1024;
/// The most memory a GPU can hold, bytes: 16 TiB, over fifty times today's largest (288 GB).
pub const MAX_MEMORY_BYTES: i128 = 1 << 44;
/// The most power a GPU can draw, watts: ten times today's largest packages.
pub const MAX_POWER_W: f64 = 10_000.0;
/// The temperatures a working GPU can report, °C: nothing colder runs, nothing hotter
/// survives.
pub const TEMP_RANGE_C: (i128, i128) = (-50, 150);
/// Stored samples of one GPU in one hour: one per millisecond, the node store's resolution.
pub const MAX_SAMPLES: i128 = HOUR_MS as i128;
/// Processes (sessions) of one user on one GPU in one hour: one every 3.6 ms.
pub const MAX_PROCESSES: i128 = 1_000_000;
/// GPU seconds one process can add to one hour: the hour, plus one poll interval (at most
/// an hour) that a node counts for the tick that saw it, spread over its span.
pub const MAX_SECONDS_PER_PROCESS: f64 = 7_200.0;
/// The longest node or user name, bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// How far ahead of this server's clock an hour may start (a node's clock may run ahead).
pub const MAX_AHEAD_MS: i64 = HOUR_MS;
/// The largest uid a user can have: `(uid_t) -1` means "no uid" to the kernel.
const MAX_UID: i128 = u32::MAX as i128 - 1;

/// A payload the server will not store: the field (a JSON path such as
/// `gpus[2].util_mean_pct`), its value as sent, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {rule}")]
pub struct Invalid {
    /// The field, as a JSON path.
    pub field: String,
    /// Its value, as JSON (cut short).
    pub value: String,
    /// What is wrong and what is allowed.
    pub rule: String,
}

impl Invalid {
    fn new(field: impl Into<String>, value: &Value, rule: impl Into<String>) -> Invalid {
        let mut value = value.to_string();
        if value.len() > 80 {
            let mut end = 80;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            value.push('…');
        }
        Invalid {
            field: field.into(),
            value,
            rule: rule.into(),
        }
    }
}

/// A whole number or a real one.
#[derive(Clone, Copy)]
enum Kind {
    Whole(i128, i128),
    Real(f64, f64),
}

/// A numeric field of a row: its name, its range, and what the range means.
struct Rule {
    field: &'static str,
    kind: Kind,
    /// Whether it may be `null` or absent (a metric the GPU does not report).
    optional: bool,
    meaning: &'static str,
}

const fn whole(
    field: &'static str,
    min: i128,
    max: i128,
    optional: bool,
    meaning: &'static str,
) -> Rule {
    Rule {
        field,
        kind: Kind::Whole(min, max),
        optional,
        meaning,
    }
}

const fn real(
    field: &'static str,
    min: f64,
    max: f64,
    optional: bool,
    meaning: &'static str,
) -> Rule {
    Rule {
        field,
        kind: Kind::Real(min, max),
        optional,
        meaning,
    }
}

const PERCENT: &str = "a percentage";
const MEMORY: &str = "bytes (at most 16 TiB)";
const TEMPERATURE: &str = "°C";
const POWER: &str = "watts (at most 10 kW)";

/// The numbers of a `gpus[]` row.
const GPU_RULES: &[Rule] = &[
    whole("gpu_index", 0, MAX_GPUS - 1, false, "a GPU index"),
    whole(
        "samples",
        1,
        MAX_SAMPLES,
        false,
        "stored samples in one hour",
    ),
    real("util_mean_pct", 0.0, 100.0, true, PERCENT),
    whole("util_min_pct", 0, 100, true, PERCENT),
    whole("util_max_pct", 0, 100, true, PERCENT),
    real(
        "mem_used_mean_bytes",
        0.0,
        MAX_MEMORY_BYTES as f64,
        true,
        MEMORY,
    ),
    whole("mem_used_max_bytes", 0, MAX_MEMORY_BYTES, true, MEMORY),
    real(
        "temp_mean_c",
        TEMP_RANGE_C.0 as f64,
        TEMP_RANGE_C.1 as f64,
        true,
        TEMPERATURE,
    ),
    whole(
        "temp_max_c",
        TEMP_RANGE_C.0,
        TEMP_RANGE_C.1,
        true,
        TEMPERATURE,
    ),
    real("power_mean_w", 0.0, MAX_POWER_W, true, POWER),
    real("power_max_w", 0.0, MAX_POWER_W, true, POWER),
    // An hour at the most power, plus the whole persist interval a node counts for a short
    // first or last one.
    real(
        "energy_wh",
        0.0,
        2.0 * MAX_POWER_W,
        true,
        "watt-hours in one hour (at most 20 kWh)",
    ),
];

/// The numbers of a `users[]` row (`gpu_seconds` and `memory_gib_hours` are also bounded
/// by `processes`, below).
const USER_RULES: &[Rule] = &[
    whole("gpu_index", 0, MAX_GPUS - 1, false, "a GPU index"),
    whole("uid", 0, MAX_UID, false, "a uid (4294967295 is no uid)"),
    real("gpu_seconds", 0.0, f64::MAX, false, "seconds"),
    real("memory_gib_hours", 0.0, f64::MAX, false, "GiB-hours"),
    whole("peak_memory_bytes", 0, MAX_MEMORY_BYTES, true, MEMORY),
    whole(
        "processes",
        1,
        MAX_PROCESSES,
        false,
        "processes in one hour",
    ),
];

/// Checks every field of `value` (an upload body, parsed) against its range, then reads it
/// as a [`Payload`]. `now_ms` is this server's clock (an hour may not start more than
/// [`MAX_AHEAD_MS`] after it).
pub fn payload(value: Value, now_ms: i64) -> Result<Payload, Invalid> {
    let Value::Object(object) = &value else {
        return Err(Invalid::new(
            "(body)",
            &value,
            format!("must be a {SCHEMA} object"),
        ));
    };
    if let Some(schema) = object.get("schema")
        && schema.as_str() != Some(SCHEMA)
    {
        return Err(Invalid::new(
            "schema",
            schema,
            format!("is not supported: this server takes {SCHEMA}"),
        ));
    }
    if let Some(id) = object.get("node_id")
        && !id.as_str().is_some_and(is_node_id)
    {
        return Err(Invalid::new(
            "node_id",
            id,
            "must be the node's id: 32 lower-case hex digits (<state_dir>/node-id on the node)",
        ));
    }
    if let Some(name) = object.get("node_name") {
        name_rule("node_name", name)?;
    }
    if let Some(hour) = object.get("hour_unix_ms") {
        hour_rule(hour, now_ms)?;
    }
    for (list, rules) in [("gpus", GPU_RULES), ("users", USER_RULES)] {
        let Some(rows) = object.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (at, row) in rows.iter().enumerate() {
            let Some(row) = row.as_object() else {
                continue;
            };
            for rule in rules {
                check(
                    &format!("{list}[{at}].{}", rule.field),
                    row.get(rule.field),
                    rule,
                )?;
            }
            if list == "users"
                && let Some(user) = row.get("user")
            {
                name_rule(&format!("users[{at}].user"), user)?;
            }
        }
    }
    let payload: Payload = serde_json::from_value(value).map_err(|error| Invalid {
        field: "(body)".into(),
        value: "…".into(),
        rule: format!("is not a {SCHEMA} payload: {error}"),
    })?;
    rows_rule(&payload)?;
    Ok(payload)
}

fn check(field: &str, value: Option<&Value>, rule: &Rule) -> Result<(), Invalid> {
    let value = match value {
        None | Some(Value::Null) if rule.optional => return Ok(()),
        // serde names a missing field.
        None => return Ok(()),
        Some(value) => value,
    };
    let meaning = rule.meaning;
    match rule.kind {
        Kind::Whole(min, max) => {
            let number = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from));
            match number {
                Some(number) if (min..=max).contains(&number) => Ok(()),
                Some(_) => Err(Invalid::new(
                    field,
                    value,
                    format!("must be from {min} to {max} ({meaning})"),
                )),
                None => Err(Invalid::new(
                    field,
                    value,
                    format!("must be a whole number from {min} to {max} ({meaning})"),
                )),
            }
        }
        Kind::Real(min, max) => {
            let range = if max == f64::MAX {
                format!("at least {min}")
            } else {
                format!("from {min} to {max}")
            };
            match value.as_f64() {
                Some(number) if number.is_finite() && (min..=max).contains(&number) => Ok(()),
                _ => Err(Invalid::new(
                    field,
                    value,
                    format!("must be a finite number {range} ({meaning})"),
                )),
            }
        }
    }
}

fn name_rule(field: &str, value: &Value) -> Result<(), Invalid> {
    let Some(name) = value.as_str() else {
        // serde names a value that is not a string.
        return Ok(());
    };
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Invalid::new(
            field,
            value,
            format!("must be 1 to {MAX_NAME_BYTES} bytes long"),
        ));
    }
    if let Some(control) = name.chars().find(|c| c.is_control()) {
        // It is shown in tables and CSV, where a control character rewrites a terminal.
        return Err(Invalid::new(
            field,
            value,
            format!(
                "must not contain control characters (it has U+{:04X})",
                u32::from(control)
            ),
        ));
    }
    Ok(())
}

fn hour_rule(value: &Value, now_ms: i64) -> Result<(), Invalid> {
    let latest = now_ms.saturating_add(MAX_AHEAD_MS);
    match value.as_i64() {
        Some(hour) if hour < 0 || hour % HOUR_MS != 0 => Err(Invalid::new(
            "hour_unix_ms",
            value,
            format!("must be the start of an hour: a multiple of {HOUR_MS}, not negative"),
        )),
        Some(hour) if hour > latest => Err(Invalid::new(
            "hour_unix_ms",
            value,
            format!(
                "starts after this server's clock plus an hour ({latest}): an hour is sent once it has ended; check the node's clock"
            ),
        )),
        Some(_) => Ok(()),
        None => Err(Invalid::new(
            "hour_unix_ms",
            value,
            "must be a whole number of milliseconds since the Unix epoch",
        )),
    }
}

/// One row per GPU and per (GPU, uid): a second one would replace the first in the store;
/// a user's seconds and memory within what its processes could have had.
fn rows_rule(payload: &Payload) -> Result<(), Invalid> {
    let mut gpus = BTreeMap::new();
    for (at, gpu) in payload.gpus.iter().enumerate() {
        if let Some(first) = gpus.insert(gpu.gpu_index, at) {
            return Err(Invalid::new(
                format!("gpus[{at}].gpu_index"),
                &Value::from(gpu.gpu_index),
                format!("repeats gpus[{first}]: send one row per GPU"),
            ));
        }
    }
    let mut users = BTreeMap::new();
    for (at, user) in payload.users.iter().enumerate() {
        if let Some(first) = users.insert((user.gpu_index, user.uid), at) {
            return Err(Invalid::new(
                format!("users[{at}].uid"),
                &Value::from(user.uid),
                format!(
                    "repeats users[{first}] on GPU {}: send one row per GPU and uid",
                    user.gpu_index
                ),
            ));
        }
        // Bounded by the rules above, so the product is exact in f64.
        let processes = user.processes as f64;
        let most_seconds = processes * MAX_SECONDS_PER_PROCESS;
        if user.gpu_seconds > most_seconds {
            return Err(Invalid::new(
                format!("users[{at}].gpu_seconds"),
                &Value::from(user.gpu_seconds),
                format!(
                    "is more than {processes} process(es) can have in one hour: at most {most_seconds} ({MAX_SECONDS_PER_PROCESS} s per process: the hour and one poll interval)"
                ),
            ));
        }
        let most_gib_hours = processes * 2.0 * (MAX_MEMORY_BYTES as f64) / f64::from(1u32 << 30);
        if user.memory_gib_hours > most_gib_hours {
            return Err(Invalid::new(
                format!("users[{at}].memory_gib_hours"),
                &Value::from(user.memory_gib_hours),
                format!(
                    "is more than {processes} process(es) can hold in one hour: at most {most_gib_hours} (16 TiB for the hour and one poll interval, per process)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_763_791_200_000;
    const HOUR: i64 = NOW - HOUR_MS;

    /// A valid payload, as a node sends it.
    fn valid() -> Value {
        json!({
            "schema": SCHEMA,
            "node_id": "5f0c1e2d3b4a69788796a5b4c3d2e1f0",
            "node_name": "gpu-07",
            "hour_unix_ms": HOUR,
            "hour": "2025-11-22T05:00:00Z",
            "gpus": [{"gpu_index": 0, "samples": 360, "util_mean_pct": 41.5, "util_min_pct": 3,
                      "util_max_pct": 97, "mem_used_mean_bytes": 8.1e9,
                      "mem_used_max_bytes": 8_589_934_592_u64, "temp_mean_c": 55.2,
                      "temp_max_c": 61, "power_mean_w": 250.1, "power_max_w": 300.0,
                      "energy_wh": 250.1},
                     {"gpu_index": 1, "samples": 360, "util_mean_pct": null,
                      "util_min_pct": null, "util_max_pct": null, "mem_used_mean_bytes": null,
                      "mem_used_max_bytes": null, "temp_mean_c": null, "temp_max_c": null,
                      "power_mean_w": null, "power_max_w": null, "energy_wh": null}],
            "users": [{"gpu_index": 0, "user": "alice", "uid": 1000, "gpu_seconds": 3000.0,
                       "memory_gib_hours": 3.3, "peak_memory_bytes": 4_294_967_296_u64,
                       "processes": 2}]
        })
    }

    /// `valid()` with `pointer` (a JSON pointer) set to `value`.
    fn with(pointer: &str, value: Value) -> Value {
        let mut payload = valid();
        *payload.pointer_mut(pointer).unwrap() = value;
        payload
    }

    fn refused(payload: Value) -> Invalid {
        super::payload(payload, NOW).unwrap_err()
    }

    #[test]
    fn a_node_s_own_payload_passes() {
        let payload = payload(valid(), NOW).unwrap();
        assert_eq!(payload.gpus.len(), 2);
        assert_eq!(payload.users[0].processes, 2);
        // The edges of each range are valid values.
        for (pointer, value) in [
            ("/gpus/0/util_mean_pct", json!(100.0)),
            ("/gpus/0/util_max_pct", json!(0)),
            ("/gpus/0/temp_max_c", json!(-50)),
            ("/gpus/0/temp_mean_c", json!(150.0)),
            ("/gpus/0/gpu_index", json!(1023)),
            ("/gpus/0/mem_used_max_bytes", json!(1_u64 << 44)),
            ("/users/0/gpu_seconds", json!(14_400.0)),
            ("/users/0/uid", json!(4_294_967_294_u64)),
            ("/hour_unix_ms", json!(NOW)),
            ("/hour_unix_ms", json!(0)),
        ] {
            assert!(
                super::payload(with(pointer, value.clone()), NOW).is_ok(),
                "{pointer} = {value}"
            );
        }
    }

    #[test]
    fn each_impossible_value_is_named_with_its_field() {
        for (pointer, value, field) in [
            (
                "/gpus/0/util_mean_pct",
                json!(-1.0),
                "gpus[0].util_mean_pct",
            ),
            (
                "/gpus/0/util_mean_pct",
                json!(100.5),
                "gpus[0].util_mean_pct",
            ),
            ("/gpus/0/util_max_pct", json!(250), "gpus[0].util_max_pct"),
            ("/gpus/0/util_min_pct", json!(-3), "gpus[0].util_min_pct"),
            ("/gpus/0/temp_max_c", json!(10_000), "gpus[0].temp_max_c"),
            ("/gpus/0/temp_mean_c", json!(-273.2), "gpus[0].temp_mean_c"),
            ("/gpus/0/power_mean_w", json!(-5.0), "gpus[0].power_mean_w"),
            ("/gpus/0/power_max_w", json!(1e9), "gpus[0].power_max_w"),
            ("/gpus/0/energy_wh", json!(1e12), "gpus[0].energy_wh"),
            (
                "/gpus/0/mem_used_max_bytes",
                json!(u64::MAX),
                "gpus[0].mem_used_max_bytes",
            ),
            (
                "/gpus/0/mem_used_mean_bytes",
                json!(-1.0),
                "gpus[0].mem_used_mean_bytes",
            ),
            ("/gpus/1/samples", json!(u64::MAX), "gpus[1].samples"),
            ("/gpus/1/samples", json!(0), "gpus[1].samples"),
            ("/gpus/1/gpu_index", json!(1024), "gpus[1].gpu_index"),
            ("/gpus/1/gpu_index", json!(-1), "gpus[1].gpu_index"),
            ("/gpus/1/gpu_index", json!(1.5), "gpus[1].gpu_index"),
            (
                "/users/0/gpu_index",
                json!(4_000_000_000_u64),
                "users[0].gpu_index",
            ),
            ("/users/0/gpu_seconds", json!(-1.0), "users[0].gpu_seconds"),
            (
                "/users/0/gpu_seconds",
                json!(14_400.5),
                "users[0].gpu_seconds",
            ),
            (
                "/users/0/memory_gib_hours",
                json!(-0.5),
                "users[0].memory_gib_hours",
            ),
            (
                "/users/0/memory_gib_hours",
                json!(1e15),
                "users[0].memory_gib_hours",
            ),
            (
                "/users/0/peak_memory_bytes",
                json!(u64::MAX),
                "users[0].peak_memory_bytes",
            ),
            ("/users/0/processes", json!(u64::MAX), "users[0].processes"),
            ("/users/0/processes", json!(0), "users[0].processes"),
            ("/users/0/uid", json!(4_294_967_295_u64), "users[0].uid"),
            ("/users/0/uid", json!(-1), "users[0].uid"),
            ("/users/0/user", json!(""), "users[0].user"),
            (
                "/users/0/user",
                json!("a\u{1b}]0;pwned\u{7}"),
                "users[0].user",
            ),
            ("/node_id", json!(""), "node_id"),
            ("/node_id", json!("../../etc"), "node_id"),
            (
                "/node_id",
                json!("5F0C1E2D3B4A69788796A5B4C3D2E1F0"),
                "node_id",
            ),
            ("/node_name", json!(""), "node_name"),
            ("/node_name", json!("x".repeat(257)), "node_name"),
            ("/hour_unix_ms", json!(HOUR + 1), "hour_unix_ms"),
            ("/hour_unix_ms", json!(-HOUR_MS), "hour_unix_ms"),
            ("/hour_unix_ms", json!(NOW + 2 * HOUR_MS), "hour_unix_ms"),
            ("/hour_unix_ms", json!(u64::MAX), "hour_unix_ms"),
            ("/schema", json!("gpukill.usage/v2"), "schema"),
        ] {
            let invalid = refused(with(pointer, value.clone()));
            assert_eq!(invalid.field, field, "{pointer} = {value}: {invalid}");
            let message = invalid.to_string();
            assert!(message.starts_with(&format!("{field} = ")), "{message}");
            assert!(
                message.contains(&value.to_string().chars().take(20).collect::<String>()),
                "the value is named: {message}"
            );
        }
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        // JSON cannot carry NaN or infinities (serde_json refuses them and numbers beyond
        // f64); a `Value` built in code can hold neither either, so the check is the
        // range: the largest finite number is refused as well.
        let invalid = refused(with("/gpus/0/util_mean_pct", json!(f64::MAX)));
        assert_eq!(invalid.field, "gpus[0].util_mean_pct");
        assert!(serde_json::from_str::<Value>(r#"{"x": 1e400}"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"{"x": NaN}"#).is_err());
    }

    #[test]
    fn a_row_twice_is_refused() {
        let mut payload = valid();
        let first = payload["gpus"][0].clone();
        payload["gpus"].as_array_mut().unwrap().push(first);
        let invalid = refused(payload);
        assert_eq!(invalid.field, "gpus[2].gpu_index");
        assert!(invalid.rule.contains("gpus[0]"), "{invalid}");

        let mut payload = valid();
        let first = payload["users"][0].clone();
        payload["users"].as_array_mut().unwrap().push(first);
        assert_eq!(refused(payload).field, "users[1].uid");
    }

    #[test]
    fn a_payload_that_is_not_one_is_refused_by_serde_s_message() {
        let mut payload = valid();
        payload.as_object_mut().unwrap().remove("node_name");
        let invalid = refused(payload);
        assert!(
            invalid.rule.contains("missing field `node_name`"),
            "{invalid}"
        );
        let invalid = refused(with("/users/0/user", json!(42)));
        assert!(invalid.rule.contains("invalid type"), "{invalid}");
        assert_eq!(refused(json!([1, 2])).field, "(body)");
        let mut payload = valid();
        payload["extra"] = json!(1);
        assert!(refused(payload).rule.contains("unknown field `extra`"));
    }
}
