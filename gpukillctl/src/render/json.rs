//! The JSON of `gpukillctl list --output json`, and the encoder of every JSON gpukillctl
//! prints ([`document`], [`compact`]).
//!
//! Field names are those of the original gpukill JSON and must never be renamed (fields may be
//! added). Every struct field is serialized under its Rust name, in declaration order; no
//! serde renames. Every absent value is `null`, never `0` and never omitted.
//!
//! Times: the snapshot's `ts` is RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.250Z`),
//! so watchers can tell ticks of a sub-second poll interval apart; process `start_time` is
//! RFC 3339 UTC with whole seconds (`2024-05-01T09:46:47Z`), with the exact value in
//! `start_time_unix_ms`. A time the daemon left unset (zero) is `null`.

use std::io;

use gpukill_proto::v1::{Gpu, GpuProcess, Snapshot, VendorStatus};
use serde::Serialize;
use serde_json::ser::Formatter;

use super::escape::is_unsafe;
use super::health::HealthJson;
use super::time::{rfc3339_millis, rfc3339_seconds};
use super::{mib, pid_count, process_kind_name, top_process, vendor_name, vendor_state_name};
use crate::error::Error;

/// One snapshot: the top-level JSON document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotJson {
    /// Host name of the node.
    pub host: String,
    /// When the snapshot's tick started, RFC 3339 UTC with milliseconds.
    pub ts: Option<String>,
    /// Snapshot sequence number; gaps mean skipped snapshots.
    pub seq: u64,
    /// Whether the GPU data is older than it should be.
    pub stale: bool,
    /// Why the snapshot is stale.
    pub stale_reason: Option<String>,
    /// The daemon's poll interval, milliseconds.
    pub poll_interval_ms: u64,
    /// Age of the GPU data when the daemon sent it, milliseconds.
    pub age_ms: u64,
    /// One entry per configured vendor backend.
    pub vendors: Vec<VendorJson>,
    /// The GPUs.
    pub gpus: Vec<GpuJson>,
    /// The processes using a GPU, once per GPU they use.
    pub procs: Vec<ProcJson>,
}

/// The state of one vendor backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VendorJson {
    /// `nvidia`, `amd`, `intel` or `apple`.
    pub vendor: &'static str,
    /// `ok`, `error` or `hung`.
    pub state: &'static str,
    /// The library error, or how long a call has been hung.
    pub message: Option<String>,
    /// Driver version, when known.
    pub driver_version: Option<String>,
    /// When the vendor last answered a poll completely, RFC 3339 UTC with milliseconds.
    pub last_success_ts: Option<String>,
    /// The newest CUDA version the driver supports (NVIDIA), when known: `12.4`.
    pub cuda_version: Option<String>,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuJson {
    /// Index on the host, across vendors (NVIDIA's first, in nvidia-smi's order).
    pub gpu_index: u32,
    /// `nvidia`, `amd`, `intel` or `apple`.
    pub vendor: &'static str,
    /// Product name.
    pub name: Option<String>,
    /// Stable identifier.
    pub uuid: Option<String>,
    /// PCI bus id.
    pub pci_bus_id: Option<String>,
    /// Memory in use, whole MiB (rounded down).
    pub mem_used_mb: Option<u64>,
    /// Total memory, whole MiB (rounded down).
    pub mem_total_mb: Option<u64>,
    /// GPU utilization, percent.
    pub util_pct: Option<u32>,
    /// Memory-controller utilization, percent.
    pub mem_util_pct: Option<u32>,
    /// Temperature, degrees Celsius.
    pub temp_c: Option<i32>,
    /// Power draw, watts.
    pub power_w: Option<f64>,
    /// Fan speed, percent.
    pub fan_pct: Option<u32>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<u32>,
    /// Volatile ECC error count.
    pub ecc_volatile: Option<u64>,
    /// Whether MIG mode is enabled.
    pub mig_enabled: Option<bool>,
    /// Whether the GPU can be reset.
    pub reset_supported: Option<bool>,
    /// Why the GPU could not be read this tick.
    pub error: Option<String>,
    /// Index within its vendor (`gpu_index` counts across vendors on a mixed host).
    pub vendor_index: u32,
    /// Memory in use, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Total memory, bytes.
    pub mem_total_bytes: Option<u64>,
    /// AMD: system memory mapped for the GPU (GTT) in use, bytes.
    pub gtt_used_bytes: Option<u64>,
    /// AMD: size of the GTT, bytes.
    pub gtt_total_bytes: Option<u64>,
    /// How many processes use this GPU (of those that matched the filter); `null` when the GPU
    /// could not be read and no process was reported.
    pub pids: Option<u64>,
    /// The process using the most memory on this GPU.
    pub top_proc: Option<ProcJson>,
    /// Its health: state, reasons, error counters, throttling, recent Xids.
    pub health: HealthJson,
}

/// One process on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcJson {
    /// The GPU it runs on.
    pub gpu_index: u32,
    /// Vendor of that GPU.
    pub vendor: &'static str,
    /// Process id.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
    /// User name (or the uid in decimal).
    pub user: String,
    /// Short name (comm).
    pub proc_name: String,
    /// Full command line.
    pub cmdline: String,
    /// GPU memory used, whole MiB (rounded down).
    pub used_mem_mb: Option<u64>,
    /// Share of the GPU's SM time, percent.
    pub sm_util_pct: Option<u32>,
    /// `compute`, `graphics` or `compute+graphics`.
    pub kind: Option<&'static str>,
    /// Start time, RFC 3339 UTC with whole seconds.
    pub start_time: Option<String>,
    /// Start time, milliseconds since the epoch; with `pid` it identifies the process.
    pub start_time_unix_ms: Option<i64>,
    /// Container id, when the process runs in a container.
    pub container: Option<String>,
    /// Container runtime (docker, containerd, cri-o, podman, kubepods).
    pub container_runtime: Option<String>,
    /// Kubernetes pod UID.
    pub pod_uid: Option<String>,
    /// Basename of the executable when it differs from `proc_name`.
    pub exe_name: Option<String>,
    /// GPU memory used, bytes.
    pub used_mem_bytes: Option<u64>,
}

impl SnapshotJson {
    /// The JSON view of `snapshot`.
    pub fn new(snapshot: &Snapshot) -> Self {
        SnapshotJson {
            host: snapshot.host.clone(),
            ts: rfc3339_millis(snapshot.timestamp_unix_ms),
            seq: snapshot.sequence,
            stale: snapshot.stale,
            stale_reason: snapshot.stale_reason.clone(),
            poll_interval_ms: snapshot.poll_interval_ms,
            age_ms: snapshot.age_ms,
            vendors: snapshot.vendors.iter().map(VendorJson::new).collect(),
            gpus: snapshot
                .gpus
                .iter()
                .map(|gpu| GpuJson::new(snapshot, gpu))
                .collect(),
            procs: snapshot.processes.iter().map(ProcJson::new).collect(),
        }
    }
}

impl VendorJson {
    /// The JSON view of one vendor status.
    pub fn new(status: &VendorStatus) -> Self {
        VendorJson {
            vendor: vendor_name(status.vendor),
            state: vendor_state_name(status.state),
            message: status.message.clone(),
            driver_version: status.driver_version.clone(),
            last_success_ts: status.last_success_unix_ms.and_then(rfc3339_millis),
            cuda_version: status.cuda_version.clone(),
        }
    }
}

impl GpuJson {
    /// The JSON view of `gpu`, with its process count and top process from `snapshot`.
    pub fn new(snapshot: &Snapshot, gpu: &Gpu) -> Self {
        GpuJson {
            gpu_index: gpu.index,
            vendor: vendor_name(gpu.vendor),
            name: gpu.name.clone(),
            uuid: gpu.uuid.clone(),
            pci_bus_id: gpu.pci_bus_id.clone(),
            mem_used_mb: gpu.memory_used_bytes.map(mib),
            mem_total_mb: gpu.memory_total_bytes.map(mib),
            util_pct: gpu.utilization_gpu_pct,
            mem_util_pct: gpu.utilization_memory_pct,
            temp_c: gpu.temperature_c,
            power_w: gpu.power_mw.map(|mw| f64::from(mw) / 1000.0),
            fan_pct: gpu.fan_speed_pct,
            sm_clock_mhz: gpu.clock_sm_mhz,
            mem_clock_mhz: gpu.clock_mem_mhz,
            ecc_volatile: gpu.ecc_volatile_errors,
            mig_enabled: gpu.mig_enabled,
            reset_supported: gpu.reset_supported,
            error: gpu.error.clone(),
            vendor_index: gpu.vendor_index,
            mem_used_bytes: gpu.memory_used_bytes,
            mem_total_bytes: gpu.memory_total_bytes,
            gtt_used_bytes: gpu.gtt_used_bytes,
            gtt_total_bytes: gpu.gtt_total_bytes,
            pids: pid_count(snapshot, gpu),
            top_proc: top_process(snapshot, gpu).map(ProcJson::new),
            health: HealthJson::new(gpu.health.as_ref()),
        }
    }
}

impl ProcJson {
    /// The JSON view of one process.
    pub fn new(process: &GpuProcess) -> Self {
        let start = rfc3339_seconds(process.start_time_unix_ms);
        ProcJson {
            gpu_index: process.gpu_index,
            vendor: vendor_name(process.vendor),
            pid: process.pid,
            uid: process.uid,
            user: process.user.clone(),
            proc_name: process.name.clone(),
            cmdline: process.cmdline.clone(),
            used_mem_mb: process.used_memory_bytes.map(mib),
            sm_util_pct: process.sm_utilization_pct,
            kind: process_kind_name(process.kind),
            start_time_unix_ms: start.as_ref().map(|_| process.start_time_unix_ms),
            start_time: start,
            container: process.container.as_ref().map(|c| c.id.clone()),
            container_runtime: process.container.as_ref().map(|c| c.runtime.clone()),
            pod_uid: process.container.as_ref().and_then(|c| c.pod_uid.clone()),
            exe_name: process.exe_name.clone(),
            used_mem_bytes: process.used_memory_bytes,
        }
    }
}

/// `snapshot` as one indented JSON document, ending in a newline.
pub fn pretty(snapshot: &Snapshot) -> Result<String, Error> {
    document(&SnapshotJson::new(snapshot))
}

/// `value` as one indented JSON document, ending in a newline: how every command prints JSON.
pub fn document<T: Serialize>(value: &T) -> Result<String, Error> {
    let mut text = encode(value, TerminalSafe(serde_json::ser::PrettyFormatter::new()))?;
    text.push('\n');
    Ok(text)
}

/// `value` as one line of JSON, without a newline (a JSON-lines record).
pub fn compact<T: Serialize>(value: &T) -> Result<String, Error> {
    encode(value, TerminalSafe(serde_json::ser::CompactFormatter))
}

/// `value` encoded with `formatter`.
fn encode<T: Serialize, F: Formatter>(value: &T, formatter: F) -> Result<String, Error> {
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    value.serialize(&mut serializer).map_err(Error::Json)?;
    // serde_json writes UTF-8 only, and TerminalSafe adds ASCII.
    String::from_utf8(bytes)
        .map_err(|err| Error::Json(serde::ser::Error::custom(format!("not UTF-8: {err}"))))
}

/// A JSON formatter that also writes DEL, the C1 controls and the bidirectional overrides
/// as `\uXXXX` escapes (serde_json escapes only U+0000 to U+001F): the values stay exact for
/// any JSON reader, and JSON printed on a terminal cannot drive it
/// ([`escape`](super::escape)).
struct TerminalSafe<F>(F);

impl<F: Formatter> Formatter for TerminalSafe<F> {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if is_unsafe(c) {
                writer.write_all(&fragment.as_bytes()[start..at])?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    // The layout is the wrapped formatter's.
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_key(writer)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

/// `text`, or `None` when it is empty (the proto's "unset" for a string), so JSON shows `null`.
pub fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// `snapshot` as one compact line of JSON ending in a newline (an NDJSON record).
pub fn line(snapshot: &Snapshot) -> Result<String, Error> {
    let mut text = compact(&SnapshotJson::new(snapshot))?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::escape;
    use crate::testutil;
    use serde_json::{Value, json};

    fn expected_python() -> Value {
        json!({
            "gpu_index": 0,
            "vendor": "nvidia",
            "pid": 4242,
            "uid": 1000,
            "user": "alice",
            "proc_name": "python",
            "cmdline": "python train.py --epochs 10",
            "used_mem_mb": 20480,
            "sm_util_pct": 80,
            "kind": "compute",
            "start_time": "2024-05-01T09:46:47Z",
            "start_time_unix_ms": 1_714_556_807_000_i64,
            "container": null,
            "container_runtime": null,
            "pod_uid": null,
            "exe_name": null,
            "used_mem_bytes": 21474836480_u64
        })
    }

    fn expected() -> Value {
        let unknown = expected_health("unknown", json!([]), json!([]), json!({}));
        let lost = expected_health(
            "lost",
            json!([{
                "severity": "lost",
                "condition": "lost",
                "text": "the GPU has fallen off the bus (GPU_IS_LOST)"
            }]),
            json!([{
                "code": 79,
                "time": "2024-05-01T11:59:00.250Z",
                "time_unix_ms": 1_714_564_740_250_i64,
                "meaning": "GPU has fallen off the bus"
            }]),
            json!({"79": 1}),
        );
        json!({
            "host": "gpu-node-1",
            "ts": "2024-05-01T12:00:00.250Z",
            "seq": 42,
            "stale": false,
            "stale_reason": null,
            "poll_interval_ms": 1000,
            "age_ms": 120,
            "vendors": [{
                "vendor": "nvidia",
                "state": "ok",
                "message": null,
                "driver_version": "550.54.15",
                "last_success_ts": "2024-05-01T12:00:00.250Z",
                "cuda_version": "12.4"
            }],
            "gpus": [
                {
                    "gpu_index": 0,
                    "vendor": "nvidia",
                    "name": "NVIDIA A100-SXM4-80GB",
                    "uuid": "GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a",
                    "pci_bus_id": "00000000:07:00.0",
                    "mem_used_mb": 25600,
                    "mem_total_mb": 81920,
                    "util_pct": 87,
                    "mem_util_pct": 45,
                    "temp_c": null,
                    "power_w": null,
                    "fan_pct": null,
                    "sm_clock_mhz": 1410,
                    "mem_clock_mhz": 1593,
                    "ecc_volatile": 0,
                    "mig_enabled": false,
                    "reset_supported": true,
                    "error": null,
                    "vendor_index": 0,
                    "mem_used_bytes": 26844069888_u64,
                    "mem_total_bytes": 85899345920_u64,
                    "gtt_used_bytes": null,
                    "gtt_total_bytes": null,
                    "pids": 3,
                    "top_proc": expected_python(),
                    "health": unknown
                },
                {
                    "gpu_index": 1,
                    "vendor": "nvidia",
                    "name": "NVIDIA A100-SXM4-80GB",
                    "uuid": "GPU-8e7f6a5b-4c3d-2e1f-0a9b-8c7d6e5f4a3b",
                    "pci_bus_id": "00000000:0F:00.0",
                    "mem_used_mb": null,
                    "mem_total_mb": 81920,
                    "util_pct": null,
                    "mem_util_pct": null,
                    "temp_c": null,
                    "power_w": null,
                    "fan_pct": null,
                    "sm_clock_mhz": null,
                    "mem_clock_mhz": null,
                    "ecc_volatile": null,
                    "mig_enabled": null,
                    "reset_supported": null,
                    "error": "GPU is lost",
                    "vendor_index": 1,
                    "mem_used_bytes": null,
                    "mem_total_bytes": 85899345920_u64,
                    "gtt_used_bytes": null,
                    "gtt_total_bytes": null,
                    "pids": null,
                    "top_proc": null,
                    "health": lost
                }
            ],
            "procs": [
                expected_python(),
                {
                    "gpu_index": 0,
                    "vendor": "nvidia",
                    "pid": 5151,
                    "uid": 1001,
                    "user": "bob",
                    "proc_name": "pt_main_thread",
                    "cmdline": "python3 serve.py --port 8000",
                    "used_mem_mb": 5120,
                    "sm_util_pct": null,
                    "kind": "compute+graphics",
                    "start_time": "2024-05-01T11:55:00Z",
                    "start_time_unix_ms": 1_714_564_500_000_i64,
                    "container": "3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0",
                    "container_runtime": "containerd",
                    "pod_uid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                    "exe_name": "python3.11",
                    "used_mem_bytes": 5368721465_u64
                },
                {
                    "gpu_index": 0,
                    "vendor": "nvidia",
                    "pid": 1789,
                    "uid": 0,
                    "user": "root",
                    "proc_name": "Xorg",
                    "cmdline": "/usr/lib/xorg/Xorg :0",
                    "used_mem_mb": null,
                    "sm_util_pct": null,
                    "kind": "graphics",
                    "start_time": "2024-04-28T06:30:00Z",
                    "start_time_unix_ms": 1_714_285_800_000_i64,
                    "container": null,
                    "container_runtime": null,
                    "pod_uid": null,
                    "exe_name": null,
                    "used_mem_bytes": null
                }
            ]
        })
    }

    /// A GPU's `health` object: every counter null (the fixture reports none).
    fn expected_health(state: &str, reasons: Value, xids: Value, counts: Value) -> Value {
        json!({
            "state": state,
            "reasons": reasons,
            "ecc_sbe_volatile": null,
            "ecc_dbe_volatile": null,
            "ecc_sbe_aggregate": null,
            "ecc_dbe_aggregate": null,
            "retired_sbe": null,
            "retired_dbe": null,
            "retired_pending": null,
            "remapped_correctable": null,
            "remapped_uncorrectable": null,
            "remap_pending": null,
            "remap_failure": null,
            "throttle_reasons": null,
            "throttle": [],
            "pstate": null,
            "pcie_replay": null,
            "ras": [],
            "gpm_graphics_engine_active": null,
            "gpm_sm_active": null,
            "gpm_tensor_active": null,
            "gpm_dram_active": null,
            "recent_xids": xids,
            "xid_counts": counts
        })
    }

    #[test]
    fn the_snapshot_renders_to_the_documented_json() {
        let snapshot = testutil::snapshot();
        let actual: Value =
            serde_json::from_str(&pretty(&snapshot).expect("encode")).expect("valid JSON");
        assert_eq!(actual, expected());
    }

    #[test]
    fn control_characters_stay_exact_and_never_reach_the_terminal_raw() {
        let hostile = "\x1b]0;pwned\x07\x1b[2K\r\n\t \u{7f} \u{85} \u{9b}2J \u{202e}txt \\e";
        let mut snapshot = testutil::snapshot();
        snapshot.processes[0].name = hostile.to_owned();
        snapshot.host = format!("h{hostile}");
        for text in [pretty(&snapshot), line(&snapshot)] {
            let text = text.expect("encode");
            assert!(
                !text.chars().any(|c| c != '\n' && escape::is_unsafe(c)),
                "{text:?}"
            );
            assert!(text.contains("\\u001b]0;pwned\\u0007"), "{text}");
            assert!(
                text.contains("\\u007f \\u0085 \\u009b2J \\u202etxt"),
                "{text}"
            );
            let actual: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(actual["procs"][0]["proc_name"], hostile);
            assert_eq!(actual["host"], format!("h{hostile}"));
            // Everything else is as before.
            let mut expected = expected();
            expected["procs"][0]["proc_name"] = json!(hostile);
            expected["gpus"][0]["top_proc"]["proc_name"] = json!(hostile);
            expected["host"] = json!(format!("h{hostile}"));
            assert_eq!(actual, expected);
        }
        // Keys go through the same encoder.
        let keyed = compact(&std::collections::BTreeMap::from([("k\u{9b}", 1)])).expect("encode");
        assert_eq!(keyed, "{\"k\\u009b\":1}");
    }

    #[test]
    fn watch_lines_are_single_line_json() {
        let snapshot = testutil::snapshot();
        let text = line(&snapshot).expect("encode");
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual, expected());
    }

    #[test]
    fn unset_times_and_kinds_are_null() {
        let snapshot = Snapshot {
            timestamp_unix_ms: 0,
            processes: vec![GpuProcess::default()],
            ..Default::default()
        };
        let actual = serde_json::to_value(SnapshotJson::new(&snapshot)).expect("encode");
        assert_eq!(actual["ts"], Value::Null);
        assert_eq!(actual["procs"][0]["start_time"], Value::Null);
        assert_eq!(actual["procs"][0]["start_time_unix_ms"], Value::Null);
        assert_eq!(actual["procs"][0]["kind"], Value::Null);
        assert_eq!(actual["procs"][0]["vendor"], "unknown");
    }
}
