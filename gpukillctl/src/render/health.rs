//! `gpukillctl health`: each GPU's health state, its reasons, error counters, throttling and
//! recent Xids, as a table or JSON; and the `health` object of `list --output json`.
//!
//! JSON field names follow the daemon's (docs/health.md); every counter a GPU does not
//! report is `null`, never `0`.

use std::collections::BTreeMap;

use gpukill_proto::v1::{Gpu, GpuHealth, HealthCondition, HealthState};
use serde::Serialize;

use super::escape;
use super::table::{ABSENT, or_absent, table};
use super::time::{TimeZone, date_time};
use super::{enum_name, vendor_name};

/// A GPU's health state by name: `unknown`, `ok`, `warning`, `critical` or `lost`.
pub fn state_name(value: i32) -> std::borrow::Cow<'static, str> {
    enum_name(value, |state| match state {
        HealthState::Unspecified => None,
        HealthState::Unknown => Some("unknown"),
        HealthState::Ok => Some("ok"),
        HealthState::Warning => Some("warning"),
        HealthState::Critical => Some("critical"),
        HealthState::Lost => Some("lost"),
    })
}

/// The HEALTH cell of `list`, `cluster list` and `cluster contention`: the state's name
/// ([`state_name`]), `-` when it is unknown or unset (a daemon that does not assess health).
pub(crate) fn state_cell(state: i32) -> String {
    if state == HealthState::Unspecified as i32 || state == HealthState::Unknown as i32 {
        ABSENT.to_owned()
    } else {
        state_name(state).into_owned()
    }
}

/// The state of `gpu`'s health; unset when the daemon sends none.
pub(crate) fn gpu_state(gpu: &Gpu) -> i32 {
    gpu.health
        .as_ref()
        .map_or(HealthState::Unspecified as i32, |health| health.state)
}

/// The line under the GPU table for a GPU that is not fit for work (critical or lost),
/// without a newline: `GPU 1 (NAME): critical: Xid 79 (GPU has fallen off the bus)`, its
/// reasons of that severity `; `-joined. `None` for any other GPU, and for a lost GPU whose
/// error line already says so.
pub(crate) fn unfit_line(gpu: &Gpu) -> Option<String> {
    let health = gpu.health.as_ref()?;
    let state = health.state();
    if !state.is_unfit() || (state == HealthState::Lost && gpu.error.is_some()) {
        return None;
    }
    let mut line = format!(
        "GPU {} ({}): {}",
        gpu.index,
        gpu.name.as_deref().unwrap_or(ABSENT),
        state_name(health.state)
    );
    let mut reasons = health
        .reasons
        .iter()
        .filter(|reason| reason.severity >= health.state);
    if let Some(first) = reasons.next() {
        line.push_str(": ");
        line.push_str(&first.text);
        for reason in reasons {
            line.push_str("; ");
            line.push_str(&reason.text);
        }
    }
    Some(line)
}

fn condition_name(value: i32) -> std::borrow::Cow<'static, str> {
    enum_name(value, |condition| match condition {
        HealthCondition::Unspecified => None,
        HealthCondition::Lost => Some("lost"),
        HealthCondition::Xid => Some("xid"),
        HealthCondition::EccUncorrectable => Some("ecc_uncorrectable"),
        HealthCondition::RemappedUncorrectable => Some("remapped_uncorrectable"),
        HealthCondition::RemapFailure => Some("remap_failure"),
        HealthCondition::RasUncorrectable => Some("ras_uncorrectable"),
        HealthCondition::Throttle => Some("throttle"),
        HealthCondition::CorrectableErrors => Some("correctable_errors"),
        HealthCondition::RetirementPending => Some("retirement_pending"),
        HealthCondition::RemapPending => Some("remap_pending"),
    })
}

/// The `health` object of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthJson {
    /// `unknown`, `ok`, `warning`, `critical` or `lost`.
    pub state: String,
    /// Why, worst first.
    pub reasons: Vec<ReasonJson>,
    /// Single-bit (corrected) ECC errors since the driver loaded.
    pub ecc_sbe_volatile: Option<u64>,
    /// Double-bit (uncorrected) ECC errors since the driver loaded.
    pub ecc_dbe_volatile: Option<u64>,
    /// Single-bit ECC errors over the GPU's life.
    pub ecc_sbe_aggregate: Option<u64>,
    /// Double-bit ECC errors over the GPU's life.
    pub ecc_dbe_aggregate: Option<u64>,
    /// Pages retired after single-bit errors.
    pub retired_sbe: Option<u64>,
    /// Pages retired after double-bit errors.
    pub retired_dbe: Option<u64>,
    /// A page retirement waits for a reset or driver reload.
    pub retired_pending: Option<bool>,
    /// Rows remapped after correctable errors.
    pub remapped_correctable: Option<u64>,
    /// Rows remapped after uncorrectable errors.
    pub remapped_uncorrectable: Option<u64>,
    /// A row remap waits for a GPU reset.
    pub remap_pending: Option<bool>,
    /// A row could not be remapped.
    pub remap_failure: Option<bool>,
    /// NVML's clock event reasons bitmask.
    pub throttle_reasons: Option<u64>,
    /// The same reasons by name.
    pub throttle: Vec<String>,
    /// Performance state, 0 (fastest) to 15.
    pub pstate: Option<u32>,
    /// PCIe replays since the driver loaded.
    pub pcie_replay: Option<u64>,
    /// AMD RAS counts per block.
    pub ras: Vec<RasJson>,
    /// GPM: graphics engine active, 0 to 1.
    pub gpm_graphics_engine_active: Option<f64>,
    /// GPM: SM active, 0 to 1.
    pub gpm_sm_active: Option<f64>,
    /// GPM: tensor pipes active, 0 to 1.
    pub gpm_tensor_active: Option<f64>,
    /// GPM: memory interface active, 0 to 1.
    pub gpm_dram_active: Option<f64>,
    /// The most recent Xids, oldest first.
    pub recent_xids: Vec<XidJson>,
    /// Xids since gpukilld started, per code (as a string key).
    pub xid_counts: BTreeMap<String, u64>,
}

/// One reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonJson {
    /// The state it calls for.
    pub severity: String,
    /// What it is about: `xid`, `ecc_uncorrectable`, `throttle`, ...
    pub condition: String,
    /// One line for people.
    pub text: String,
}

/// One block's RAS counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RasJson {
    /// The block: umc, gfx, sdma, ...
    pub block: String,
    /// Correctable errors.
    pub correctable: Option<u64>,
    /// Uncorrectable errors.
    pub uncorrectable: Option<u64>,
}

/// One Xid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XidJson {
    /// The Xid code.
    pub code: u64,
    /// When gpukilld received it, RFC 3339 UTC with milliseconds.
    pub time: Option<String>,
    /// The same time, milliseconds since the epoch.
    pub time_unix_ms: i64,
    /// A short meaning of the code.
    pub meaning: String,
}

/// A GPU of `gpukillctl health --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuHealthJson {
    /// Index on the host, as in `list`.
    pub gpu_index: u32,
    /// `nvidia`, `amd` or `intel`.
    pub vendor: &'static str,
    /// Stable identifier.
    pub uuid: Option<String>,
    /// Product name.
    pub name: Option<String>,
    /// Its health.
    #[serde(flatten)]
    pub health: HealthJson,
}

impl HealthJson {
    /// The JSON of `health`; a daemon that sends none gives state `unknown`.
    pub fn new(health: Option<&GpuHealth>) -> Self {
        let default = GpuHealth::default();
        let health = health.unwrap_or(&default);
        HealthJson {
            // Unset (a daemon that does not assess health) is `unknown` too.
            state: state_name(health.state).into_owned(),
            reasons: health
                .reasons
                .iter()
                .map(|reason| ReasonJson {
                    severity: state_name(reason.severity).into_owned(),
                    condition: condition_name(reason.condition).into_owned(),
                    text: reason.text.clone(),
                })
                .collect(),
            ecc_sbe_volatile: health.ecc_sbe_volatile,
            ecc_dbe_volatile: health.ecc_dbe_volatile,
            ecc_sbe_aggregate: health.ecc_sbe_aggregate,
            ecc_dbe_aggregate: health.ecc_dbe_aggregate,
            retired_sbe: health.retired_sbe,
            retired_dbe: health.retired_dbe,
            retired_pending: health.retired_pending,
            remapped_correctable: health.remapped_correctable,
            remapped_uncorrectable: health.remapped_uncorrectable,
            remap_pending: health.remap_pending,
            remap_failure: health.remap_failure,
            throttle_reasons: health.throttle_reasons,
            throttle: health.throttle.clone(),
            pstate: health.pstate,
            pcie_replay: health.pcie_replay,
            ras: health
                .ras
                .iter()
                .map(|block| RasJson {
                    block: block.block.clone(),
                    correctable: block.correctable,
                    uncorrectable: block.uncorrectable,
                })
                .collect(),
            gpm_graphics_engine_active: health.gpm_graphics_engine_active,
            gpm_sm_active: health.gpm_sm_active,
            gpm_tensor_active: health.gpm_tensor_active,
            gpm_dram_active: health.gpm_dram_active,
            recent_xids: health
                .recent_xids
                .iter()
                .map(|xid| XidJson {
                    code: xid.code,
                    time: super::time::rfc3339_millis(xid.time_unix_ms),
                    time_unix_ms: xid.time_unix_ms,
                    meaning: xid.meaning.clone(),
                })
                .collect(),
            xid_counts: health
                .xid_counts
                .iter()
                .map(|count| (count.code.to_string(), count.count))
                .collect(),
        }
    }
}

impl GpuHealthJson {
    /// The JSON of one GPU's health.
    pub fn new(gpu: &Gpu) -> Self {
        GpuHealthJson {
            gpu_index: gpu.index,
            vendor: vendor_name(gpu.vendor),
            uuid: gpu.uuid.clone(),
            name: gpu.name.clone(),
            health: HealthJson::new(gpu.health.as_ref()),
        }
    }
}

/// The table of `gpukillctl health`: one row per GPU (state and its worst reason), then one
/// line per further reason and per recent Xid.
pub fn render(gpus: &[&Gpu], tz: TimeZone) -> String {
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for gpu in gpus {
        let health = HealthJson::new(gpu.health.as_ref());
        rows.push(vec![
            gpu.index.to_string(),
            or_absent(gpu.name.as_deref()),
            health.state.to_uppercase(),
            or_absent(health.reasons.first().map(|reason| &reason.text)),
        ]);
        for reason in health.reasons.iter().skip(1) {
            details.push(format!("GPU {}: {}", gpu.index, escape::cell(&reason.text)));
        }
        for xid in &health.recent_xids {
            details.push(format!(
                "GPU {}: Xid {} at {}: {}",
                gpu.index,
                xid.code,
                or_absent(date_time(xid.time_unix_ms, tz)),
                escape::cell(&xid.meaning)
            ));
        }
    }
    let mut text = table(&["GPU", "NAME", "STATE", "REASON"], rows.into_iter());
    if !details.is_empty() {
        text.push('\n');
        for line in details {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    #[test]
    fn the_table_shows_each_state_its_worst_reason_then_the_rest_and_the_xids() {
        let snapshot = testutil::snapshot();
        let gpus: Vec<&Gpu> = snapshot.gpus.iter().collect();
        assert_eq!(
            render(&gpus, TimeZone::Utc),
            " GPU | NAME                  | STATE   | REASON\n\
             -----+-----------------------+---------+----------------------------------------------\n\
             \u{20}0   | NVIDIA A100-SXM4-80GB | UNKNOWN | -\n\
             \u{20}1   | NVIDIA A100-SXM4-80GB | LOST    | the GPU has fallen off the bus (GPU_IS_LOST)\n\
             \n\
             GPU 1: Xid 79 at 2024-05-01 11:59:00: GPU has fallen off the bus\n"
        );
    }

    #[test]
    fn json_names_states_and_keeps_absent_counters_null() {
        let snapshot = testutil::snapshot();
        let rows: Vec<GpuHealthJson> = snapshot.gpus.iter().map(GpuHealthJson::new).collect();
        let value = serde_json::to_value(&rows).expect("json");
        assert_eq!(value[1]["gpu_index"], 1);
        assert_eq!(value[1]["state"], "lost");
        assert_eq!(value[1]["reasons"][0]["condition"], "lost");
        assert_eq!(value[1]["recent_xids"][0]["code"], 79);
        assert_eq!(value[1]["xid_counts"]["79"], 1);
        assert_eq!(value[0]["state"], "unknown");
        assert!(value[0]["ecc_dbe_volatile"].is_null());
        assert_eq!(state_name(99), "unknown(99)");
    }
}
