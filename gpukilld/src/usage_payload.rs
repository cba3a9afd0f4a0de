//! The upload payload, schema `gpukill.usage/v1`: one node's usage of one closed hour, as
//! the node's hourly rollups have it. The node sends it as JSON; the ingest side parses it
//! with the same types. Field names are part of the contract (docs/uploads.md): add
//! fields, never rename them.

use serde::{Deserialize, Serialize};

/// The header that carries the payload's SHA-256 (hex), both ways.
pub const CONTENT_SHA256: &str = "content-sha256";
/// The header that carries `node_id:hour_unix_ms`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The schema name and version every payload carries.
pub const SCHEMA: &str = "gpukill.usage/v1";

/// One node's hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The node's stable id (32 hex digits).
    pub node_id: String,
    /// The node's name.
    pub node_name: String,
    /// The hour's start, milliseconds since the Unix epoch (a multiple of 3,600,000).
    pub hour_unix_ms: i64,
    /// The hour's start, RFC 3339 (UTC), for people reading it.
    pub hour: String,
    /// One row per GPU with samples in the hour.
    pub gpus: Vec<GpuHour>,
    /// One row per GPU and user with processes in the hour.
    pub users: Vec<UserHour>,
}

/// A GPU's hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuHour {
    /// The GPU's index on the node.
    pub gpu_index: u32,
    /// Stored samples (persist intervals) in the hour.
    pub samples: u64,
    /// Mean utilization, percent.
    pub util_mean_pct: Option<f64>,
    /// Lowest interval mean utilization, percent.
    pub util_min_pct: Option<u32>,
    /// Highest utilization, percent.
    pub util_max_pct: Option<u32>,
    /// Mean memory in use, bytes.
    pub mem_used_mean_bytes: Option<f64>,
    /// Most memory in use, bytes.
    pub mem_used_max_bytes: Option<u64>,
    /// Mean temperature, °C.
    pub temp_mean_c: Option<f64>,
    /// Highest temperature, °C.
    pub temp_max_c: Option<i64>,
    /// Mean power, watts.
    pub power_mean_w: Option<f64>,
    /// Highest power, watts.
    pub power_max_w: Option<f64>,
    /// Energy, watt-hours.
    pub energy_wh: Option<f64>,
}

/// A user's hour on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserHour {
    /// The GPU's index on the node.
    pub gpu_index: u32,
    /// The user's name on the node.
    pub user: String,
    /// The user's uid on the node.
    pub uid: u32,
    /// Process time on the GPU in the hour, seconds (processes summed).
    pub gpu_seconds: f64,
    /// GPU memory held over the hour, GiB-hours.
    pub memory_gib_hours: f64,
    /// The largest process peak memory, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Processes (sessions) in the hour.
    pub processes: u64,
}

impl Payload {
    /// The idempotency key of this payload: `node_id:hour_unix_ms`.
    pub fn key(&self) -> String {
        idempotency_key(&self.node_id, self.hour_unix_ms)
    }

    /// The payload as JSON bytes, as sent and hashed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `node_id:hour_unix_ms`.
pub fn idempotency_key(node_id: &str, hour_unix_ms: i64) -> String {
    format!("{node_id}:{hour_unix_ms}")
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
