//! The Prometheus text exposition (format 0.0.4) of one snapshot and the daemon's counters.
//! Pure: the caller passes the snapshot, the counters and the time, so a scrape never calls
//! a vendor and tests need no daemon.
//!
//! GPU metrics carry dcgm-exporter's names, units and labels (`gpu`, `UUID`, `pci_bus_id`,
//! `device`, `modelName`, `Hostname`), so dashboards made for it work unchanged; a metric a
//! device does not report is absent, never 0. The daemon's own metrics are `gpukill_*`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::exposition::{Exposition, Value};
use super::gpus::{render_gpus, render_processes};
use crate::connections::AdmissionCounters;
use crate::guard::counters::{GuardCounters, RULES, rule_index};
use crate::guard::engine::Status as GuardStatus;
use crate::snapshot::{Snapshot, VendorState};
use crate::store::{DatabaseCounters, HistoryCounters};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The store as the metrics see it.
#[derive(Debug, Clone)]
pub enum StoreState {
    /// The store could not be opened at startup (kill and the guard are off).
    Unavailable,
    /// The store is open; what became of the writes so far.
    Open {
        /// Audit events.
        events: DatabaseCounters,
        /// History batches.
        history: HistoryCounters,
    },
}

/// Everything besides the snapshot that a scrape reports.
#[derive(Debug)]
pub struct Status<'a> {
    /// The time of the scrape (for the snapshot's age and staleness).
    pub now: SystemTime,
    /// Watch streams open now.
    pub watchers: u64,
    /// Snapshots watch streams skipped since start.
    pub watch_lagged: u64,
    /// The store.
    pub store: StoreState,
    /// The guard's status.
    pub guard: &'a GuardStatus,
    /// The guard's decision and kill counters, when the guard keeps them.
    pub guard_counters: Option<&'a GuardCounters>,
    /// Each listener's connection counters, by listener (`unix`, `tcp`, `metrics`, `ingest`).
    pub connections: &'a [(&'static str, Arc<AdmissionCounters>)],
}

/// The exposition of `snapshot` and `status`. `capacity` is a hint for the buffer (the
/// previous exposition's length), so a scrape allocates its text once.
pub fn render(snapshot: &Snapshot, status: &Status<'_>, capacity: usize) -> String {
    let mut out = Exposition {
        text: String::with_capacity(capacity.max(4096)),
    };
    render_gpus(&mut out, snapshot);
    render_processes(&mut out, snapshot);
    render_daemon(&mut out, snapshot, status);
    render_store(&mut out, &status.store);
    render_guard(&mut out, status.guard, status.guard_counters);
    render_connections(&mut out, status.connections);
    out.text
}

fn render_daemon(out: &mut Exposition, snapshot: &Snapshot, status: &Status<'_>) {
    out.family(
        "gpukill_build_info",
        "gauge",
        "The gpukilld version serving these metrics (always 1).",
    )
    .sample("", &[("version", env!("CARGO_PKG_VERSION"))], Value::Int(1));
    out.family(
        "gpukill_ticks_total",
        "counter",
        "Sampling ticks since the daemon started.",
    )
    .sample("", &[], Value::Uint(snapshot.sequence));
    out.family(
        "gpukill_tick_duration_seconds",
        "gauge",
        "How long the latest tick took.",
    )
    .sample("", &[], Value::Seconds(snapshot.tick_duration));
    out.family(
        "gpukill_poll_interval_seconds",
        "gauge",
        "The configured time between ticks.",
    )
    .sample("", &[], Value::Seconds(snapshot.poll_interval));
    let age = status
        .now
        .duration_since(snapshot.data_taken_at())
        .unwrap_or_default();
    out.family(
        "gpukill_snapshot_age_seconds",
        "gauge",
        "Age of the oldest vendor data in the latest snapshot.",
    )
    .sample("", &[], Value::Seconds(age));
    out.family(
        "gpukill_snapshot_stale",
        "gauge",
        "1 when the latest snapshot is stale (a vendor is hung, or no tick completed for two poll intervals).",
    )
    .sample(
        "",
        &[],
        Value::Bool(snapshot.stale_reason(status.now).is_some()),
    );
    let mut up = out.family(
        "gpukill_vendor_up",
        "gauge",
        "1 when the vendor's last poll answered, 0 when it failed or hangs.",
    );
    for vendor in &snapshot.vendors {
        up.sample(
            "",
            &[("vendor", vendor.vendor.name())],
            Value::Bool(vendor.state == VendorState::Ok),
        );
    }
    out.family("gpukill_watchers", "gauge", "Watch streams open now.")
        .sample("", &[], Value::Uint(status.watchers));
    out.family(
        "gpukill_watch_skipped_snapshots_total",
        "counter",
        "Snapshots that slow watch streams skipped.",
    )
    .sample("", &[], Value::Uint(status.watch_lagged));
}

fn render_store(out: &mut Exposition, store: &StoreState) {
    let degraded = match store {
        StoreState::Unavailable => true,
        StoreState::Open { history, .. } => history.last_error.is_some(),
    };
    out.family(
        "gpukill_store_degraded",
        "gauge",
        "1 when the store cannot be written (kills are refused while it cannot be opened).",
    )
    .sample("", &[], Value::Bool(degraded));
    let StoreState::Open { events, history } = store else {
        return;
    };
    let counters: [(&str, &str, u64); 4] = [
        (
            "gpukill_store_events_written_total",
            "Audit events committed to the store.",
            events.written,
        ),
        (
            "gpukill_store_events_dropped_total",
            "Audit events refused because the write queue was full or the writer was gone.",
            events.dropped,
        ),
        (
            "gpukill_store_events_failed_total",
            "Audit events the database rejected.",
            events.failed,
        ),
        (
            "gpukill_store_events_unconfirmed_total",
            "Audit events not confirmed within the timeout (they may still have been written).",
            events.unconfirmed,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help)
            .sample("", &[], Value::Uint(value));
    }
    let history_counters: [(&str, &str, &str, u64); 5] = [
        (
            "gpukill_history_batches_written_total",
            "counter",
            "History intervals written to the store.",
            history.written,
        ),
        (
            "gpukill_history_batches_dropped_total",
            "counter",
            "History intervals dropped because the queue was full (the oldest go first).",
            history.dropped,
        ),
        (
            "gpukill_history_write_failures_total",
            "counter",
            "Failed history write attempts (the interval is kept and retried).",
            history.failed,
        ),
        (
            "gpukill_history_batches_queued",
            "gauge",
            "History intervals waiting to be written.",
            history.queued,
        ),
        (
            "gpukill_history_rollups_total",
            "counter",
            "Closed hours rolled up into the hourly tables.",
            history.hours_rolled_up,
        ),
    ];
    for (name, kind, help, value) in history_counters {
        out.family(name, kind, help)
            .sample("", &[], Value::Uint(value));
    }
}

fn render_connections(out: &mut Exposition, listeners: &[(&'static str, Arc<AdmissionCounters>)]) {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let mut open = out.family(
        "gpukill_connections_open",
        "gauge",
        "Connections a listener holds now.",
    );
    for (listener, counters) in listeners {
        open.sample(
            "",
            &[("listener", listener)],
            Value::Uint(load(&counters.open)),
        );
    }
    let mut refused = out.family(
        "gpukill_connections_refused_total",
        "counter",
        "Connections refused: the caller held its share (per_caller) or every slot was taken (full).",
    );
    for (listener, counters) in listeners {
        for (reason, counter) in [
            ("per_caller", &counters.refused_per_caller),
            ("full", &counters.refused_full),
        ] {
            let labels = [("listener", *listener), ("reason", reason)];
            refused.sample("", &labels, Value::Uint(load(counter)));
        }
    }
    let mut closed = out.family(
        "gpukill_connections_timed_out_total",
        "counter",
        "Connections closed by a deadline (first bytes, silence, a peer not reading), or on the HTTP endpoints given up to a new one.",
    );
    for (listener, counters) in listeners {
        closed.sample(
            "",
            &[("listener", listener)],
            Value::Uint(load(&counters.timed_out)),
        );
    }
}

fn render_guard(out: &mut Exposition, guard: &GuardStatus, counters: Option<&GuardCounters>) {
    out.family(
        "gpukill_guard_policy_loaded",
        "gauge",
        "1 when a guard policy is in force.",
    )
    .sample("", &[], Value::Bool(guard.loaded.is_some()));
    out.family(
        "gpukill_guard_policy_load_failed",
        "gauge",
        "1 when the policy file was last rejected (the previous policy stays in force).",
    )
    .sample("", &[], Value::Bool(guard.load_error.is_some()));
    if guard.loaded.is_some() {
        let mut active = [0u64; RULES.len()];
        for violation in &guard.active {
            active[rule_index(violation.rule)] += 1;
        }
        let mut family = out.family(
            "gpukill_guard_violations_active",
            "gauge",
            "Violations the guard is following now, by rule.",
        );
        for (rule, count) in RULES.iter().zip(active) {
            family.sample("", &[("rule", rule.as_str())], Value::Uint(count));
        }
        out.family(
            "gpukill_guard_recent_kills",
            "gauge",
            "Kills the guard started in the last minute (its rate limit counts these).",
        )
        .sample("", &[], Value::Uint(guard.recent_kills as u64));
    }
    if guard.evaluated_at.is_some() {
        out.family(
            "gpukill_guard_evaluation_duration_seconds",
            "gauge",
            "How long the latest policy evaluation took.",
        )
        .sample("", &[], Value::Seconds(guard.evaluation_time));
    }
    if let Some(counters) = counters {
        let mut family = out.family(
            "gpukill_guard_violations_total",
            "counter",
            "Guard decisions about violations, by rule and outcome (warned, would_act, rate_limited, acting).",
        );
        for (rule, outcome, count) in counters.decisions() {
            family.sample(
                "",
                &[("rule", rule.as_str()), ("outcome", outcome)],
                Value::Uint(count),
            );
        }
        let mut family = out.family(
            "gpukill_guard_kills_total",
            "counter",
            "Processes the guard acted on, by rule and outcome.",
        );
        for (rule, outcome, count) in counters.kills() {
            family.sample(
                "",
                &[("rule", rule.as_str()), ("outcome", outcome)],
                Value::Uint(count),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gpus::MIB;
    use super::*;
    use crate::snapshot::{Gpu, Vendor};
    use std::sync::Arc;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    use crate::procinfo::{Container, ProcessInfo};
    use crate::snapshot::{
        ProcessKind, ProcessSlot, ProcessTable, VendorData, VendorState, VendorStatus,
    };

    fn t(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn full_gpu(index: u32) -> Gpu {
        Gpu {
            index,
            vendor_index: index,
            uuid: Some(Arc::from(format!("GPU-0000000{index}").as_str())),
            name: Some(Arc::from("NVIDIA A100-SXM4-80GB")),
            pci_bus_id: Some(Arc::from(format!("00000000:0{index}:00.0").as_str())),
            memory_used_bytes: Some(1536 * MIB + 5),
            memory_total_bytes: Some(81920 * MIB),
            utilization_gpu_pct: Some(50),
            utilization_memory_pct: Some(20),
            temperature_c: Some(41),
            power_mw: Some(250_500),
            energy_total_mj: Some(1_234_567_890),
            fan_speed_pct: Some(30),
            clock_sm_mhz: Some(1410),
            clock_mem_mhz: Some(1593),
            ecc_volatile_errors: Some(0),
            mig_enabled: Some(false),
            reset_supported: Some(true),
            error: None,
            ..Gpu::default()
        }
    }

    fn process(pid: u32, gpu_index: u32, user: &str, name: &str) -> ProcessSlot {
        ProcessSlot {
            vendor: Vendor::Nvidia,
            gpu_index,
            kind: ProcessKind::Compute,
            info: Arc::new(ProcessInfo {
                pid,
                start_ticks: 1,
                start_time: t(0),
                uid: 1000,
                user: Arc::from(user),
                name: name.to_owned(),
                cmdline: name.to_owned(),
                container: None,
                exe_name: None,
            }),
        }
    }

    fn snapshot(gpus: Vec<Gpu>, processes: ProcessTable) -> Snapshot {
        Snapshot {
            host: Arc::from("node-1"),
            taken_at: t(100),
            sequence: 42,
            vendors: vec![VendorStatus {
                vendor: Vendor::Nvidia,
                state: VendorState::Ok,
                driver_version: Some("550.54.15".into()),
                cuda_version: Some("12.4".into()),
                last_success: Some(t(100)),
            }],
            data: vec![(
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(t(100)),
                    gpus,
                    processes,
                }),
            )],
            tick_duration: Duration::from_micros(750),
            poll_interval: Duration::from_secs(2),
        }
    }

    fn render_at(snapshot: &Snapshot, now: SystemTime, store: StoreState) -> String {
        let guard = GuardStatus::default();
        render(
            snapshot,
            &Status {
                now,
                watchers: 3,
                watch_lagged: 7,
                store,
                guard: &guard,
                guard_counters: None,
                connections: &[],
            },
            0,
        )
    }

    /// The sample lines of family `name` (exact name, not a prefix).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[test]
    fn amd_gpus_have_gpukill_names_with_a_vendor_label_and_no_dcgm_samples() {
        let mut snapshot = snapshot(vec![full_gpu(0)], ProcessTable::default());
        let amd = Gpu {
            index: 1,
            vendor_index: 0,
            uuid: Some(Arc::from("GPU-5e3b1d0a52d0a9b2")),
            name: Some(Arc::from("AMD Instinct MI210")),
            pci_bus_id: Some(Arc::from("0000:03:00.0")),
            utilization_gpu_pct: Some(37),
            gtt_used_bytes: Some(4096),
            ..Gpu::default()
        };
        snapshot.data.push((
            Vendor::Amd,
            Arc::new(VendorData {
                taken_at: Some(t(100)),
                gpus: vec![amd],
                processes: ProcessTable::default(),
            }),
        ));
        let text = render_at(&snapshot, t(100), StoreState::Unavailable);
        assert_eq!(
            samples(&text, "DCGM_FI_DEV_GPU_UTIL"),
            vec![
                "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-00000000\",pci_bus_id=\"00000000:00:00.0\",device=\"nvidia0\",modelName=\"NVIDIA A100-SXM4-80GB\",Hostname=\"node-1\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"} 50"
            ]
        );
        let amd_labels = "gpu=\"1\",UUID=\"GPU-5e3b1d0a52d0a9b2\",pci_bus_id=\"0000:03:00.0\",device=\"amd0\",modelName=\"AMD Instinct MI210\",Hostname=\"node-1\",vendor=\"amd\"";
        assert_eq!(
            samples(&text, "gpukill_gpu_utilization_percent"),
            vec![format!(
                "gpukill_gpu_utilization_percent{{{amd_labels}}} 37"
            )]
        );
        assert_eq!(
            samples(&text, "gpukill_gpu_gtt_used_bytes"),
            vec![format!("gpukill_gpu_gtt_used_bytes{{{amd_labels}}} 4096")]
        );
        assert!(samples(&text, "gpukill_gpu_temperature_celsius").is_empty());
        assert_eq!(
            samples(&text, "gpukill_gpu_up")[1],
            "gpukill_gpu_up{gpu=\"1\",UUID=\"GPU-5e3b1d0a52d0a9b2\",vendor=\"amd\"} 1"
        );
    }

    #[test]
    fn gpu_metrics_have_dcgm_exporter_names_units_and_labels() {
        let text = render_at(
            &snapshot(vec![full_gpu(0)], ProcessTable::default()),
            t(101),
            StoreState::Unavailable,
        );
        let labels = "{gpu=\"0\",UUID=\"GPU-00000000\",pci_bus_id=\"00000000:00:00.0\",device=\"nvidia0\",modelName=\"NVIDIA A100-SXM4-80GB\",Hostname=\"node-1\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"}";
        for (name, value) in [
            ("DCGM_FI_DEV_SM_CLOCK", "1410"),
            ("DCGM_FI_DEV_MEM_CLOCK", "1593"),
            ("DCGM_FI_DEV_GPU_TEMP", "41"),
            ("DCGM_FI_DEV_POWER_USAGE", "250.5"),
            ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "1234567890"),
            ("DCGM_FI_DEV_GPU_UTIL", "50"),
            ("DCGM_FI_DEV_MEM_COPY_UTIL", "20"),
            ("DCGM_FI_DEV_FB_USED", "1536"),
            ("DCGM_FI_DEV_FB_FREE", "80383"),
        ] {
            assert_eq!(
                samples(&text, name),
                vec![format!("{name}{labels} {value}")],
                "{text}"
            );
            let kind = if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(
            samples(&text, "gpukill_gpu_up"),
            vec!["gpukill_gpu_up{gpu=\"0\",UUID=\"GPU-00000000\",vendor=\"nvidia\"} 1"]
        );
    }

    #[test]
    fn health_metrics_have_dcgm_exporter_names_and_xids_are_counted_per_code() {
        use crate::health::{GpuHealth, HealthReading, HealthState, Throttle, Xid};
        let xid = |code| Xid { code, time: t(50) };
        let mut gpu = full_gpu(0);
        gpu.health = Arc::new(GpuHealth {
            state: HealthState::Critical,
            reading: HealthReading {
                throttle: Some(Throttle(Throttle::HW_THERMAL)),
                ecc_dbe_volatile: Some(2),
                remap_failure: Some(true),
                pstate: Some(0),
                ..HealthReading::default()
            },
            recent_xids: vec![xid(13), xid(79)],
            xid_counts: [(13, 1), (79, 1)].into(),
            ..GpuHealth::default()
        });
        let text = render_at(
            &snapshot(vec![gpu], ProcessTable::default()),
            t(101),
            StoreState::Unavailable,
        );
        let labels = "{gpu=\"0\",UUID=\"GPU-00000000\",pci_bus_id=\"00000000:00:00.0\",device=\"nvidia0\",modelName=\"NVIDIA A100-SXM4-80GB\",Hostname=\"node-1\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"}";
        for (name, value) in [
            ("DCGM_FI_DEV_XID_ERRORS", "79"),
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "64"),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "2"),
            ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "1"),
            ("DCGM_FI_DEV_PSTATE", "0"),
        ] {
            assert_eq!(
                samples(&text, name),
                vec![format!("{name}{labels} {value}")],
                "{text}"
            );
        }
        // Not read: absent, never 0.
        for name in ["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_PROF_SM_ACTIVE"] {
            assert!(samples(&text, name).is_empty(), "{name}: {text}");
        }
        let short = "gpu=\"0\",UUID=\"GPU-00000000\",vendor=\"nvidia\"";
        assert_eq!(
            samples(&text, "gpukill_gpu_xid_errors_total"),
            vec![
                format!("gpukill_gpu_xid_errors_total{{{short},xid=\"13\"}} 1"),
                format!("gpukill_gpu_xid_errors_total{{{short},xid=\"79\"}} 1"),
            ]
        );
        assert!(
            samples(&text, "gpukill_gpu_health_state").contains(
                &format!("gpukill_gpu_health_state{{{short},state=\"critical\"}} 1").as_str()
            ),
            "{text}"
        );
        assert!(
            samples(&text, "gpukill_gpu_health_state")
                .contains(&format!("gpukill_gpu_health_state{{{short},state=\"ok\"}} 0").as_str()),
            "{text}"
        );
    }

    #[test]
    fn metrics_a_device_does_not_report_are_absent_not_zero() {
        let mut sparse = full_gpu(1);
        sparse.temperature_c = None;
        sparse.power_mw = None;
        sparse.energy_total_mj = None;
        sparse.memory_total_bytes = None;
        sparse.clock_sm_mhz = None;
        let mut lost = Gpu {
            index: 2,
            uuid: Some(Arc::from("GPU-lost")),
            ..Gpu::default()
        };
        lost.error = Some("GPU is lost".into());
        let text = render_at(
            &snapshot(vec![full_gpu(0), sparse, lost], ProcessTable::default()),
            t(101),
            StoreState::Unavailable,
        );
        assert_eq!(samples(&text, "DCGM_FI_DEV_GPU_UTIL").len(), 2, "{text}");
        assert_eq!(samples(&text, "DCGM_FI_DEV_FB_USED").len(), 2);
        // GPU 1 has used but not total memory: FB_FREE is absent for it.
        for name in [
            "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_SM_CLOCK",
        ] {
            let lines = samples(&text, name);
            assert_eq!(lines.len(), 1, "{name}: {lines:?}");
            assert!(lines[0].contains("gpu=\"0\""), "{name}: {lines:?}");
        }
        // A lost GPU has no metrics, and says so in gpukill_gpu_up.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("DCGM") && l.contains("gpu=\"2\"")),
            "{text}"
        );
        assert!(
            samples(&text, "gpukill_gpu_up")
                .iter()
                .any(|l| l.contains("gpu=\"2\"") && l.ends_with(" 0")),
            "{text}"
        );
        // No GPUs at all: no DCGM family, not even its HELP line.
        let empty = render_at(
            &snapshot(Vec::new(), ProcessTable::default()),
            t(101),
            StoreState::Unavailable,
        );
        assert!(!empty.contains("DCGM"), "{empty}");
        assert!(
            !empty.contains("gpukill_process_gpu_memory_bytes"),
            "{empty}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut gpu = full_gpu(0);
        gpu.name = Some(Arc::from("Weird \"GPU\" \\ model\nline two"));
        let text = render_at(
            &snapshot(vec![gpu], ProcessTable::default()),
            t(101),
            StoreState::Unavailable,
        );
        assert!(
            text.contains("modelName=\"Weird \\\"GPU\\\" \\\\ model\\nline two\""),
            "{text}"
        );
        assert!(text.lines().all(|line| !line.starts_with("line two")));
    }

    #[test]
    fn processes_carry_gpu_uuid_pid_user_name_and_container() {
        let mut in_container = process(20, 1, "bob", "torch\"run");
        Arc::make_mut(&mut in_container.info).container = Some(Container {
            id: "abc123".into(),
            runtime: "docker",
            pod_uid: None,
        });
        let table = ProcessTable::new(
            [
                (
                    process(10, 0, "alice", "python3"),
                    Some(1024 * MIB),
                    Some(37),
                ),
                (in_container, Some(512), None),
                (process(30, 1, "carol", "Xorg"), None, Some(1)),
            ],
            &ProcessTable::default(),
        );
        let text = render_at(
            &snapshot(vec![full_gpu(0), full_gpu(1)], table),
            t(101),
            StoreState::Unavailable,
        );
        assert_eq!(
            samples(&text, "gpukill_process_gpu_memory_bytes"),
            vec![
                "gpukill_process_gpu_memory_bytes{gpu=\"0\",UUID=\"GPU-00000000\",pid=\"10\",user=\"alice\",process=\"python3\",container=\"\"} 1073741824",
                "gpukill_process_gpu_memory_bytes{gpu=\"1\",UUID=\"GPU-00000001\",pid=\"20\",user=\"bob\",process=\"torch\\\"run\",container=\"abc123\"} 512",
            ],
            "{text}"
        );
        assert_eq!(
            samples(&text, "gpukill_process_sm_utilization_percent"),
            vec![
                "gpukill_process_sm_utilization_percent{gpu=\"0\",UUID=\"GPU-00000000\",pid=\"10\",user=\"alice\",process=\"python3\",container=\"\"} 37",
                "gpukill_process_sm_utilization_percent{gpu=\"1\",UUID=\"GPU-00000001\",pid=\"30\",user=\"carol\",process=\"Xorg\",container=\"\"} 1",
            ]
        );
    }

    #[test]
    fn daemon_store_and_guard_metrics() {
        let snap = snapshot(vec![full_gpu(0)], ProcessTable::default());
        let fresh = render_at(
            &snap,
            t(101),
            StoreState::Open {
                events: DatabaseCounters {
                    dropped: 1,
                    failed: 2,
                    unconfirmed: 3,
                    written: 4,
                },
                history: HistoryCounters {
                    queued: 5,
                    dropped: 6,
                    written: 7,
                    failed: 8,
                    hours_rolled_up: 9,
                    last_error: Some("disk I/O error".into()),
                },
            },
        );
        for line in [
            "gpukill_ticks_total 42",
            "gpukill_tick_duration_seconds 0.00075",
            "gpukill_poll_interval_seconds 2",
            "gpukill_snapshot_age_seconds 1",
            "gpukill_snapshot_stale 0",
            "gpukill_vendor_up{vendor=\"nvidia\"} 1",
            "gpukill_watchers 3",
            "gpukill_watch_skipped_snapshots_total 7",
            "gpukill_store_degraded 1",
            "gpukill_store_events_written_total 4",
            "gpukill_store_events_dropped_total 1",
            "gpukill_store_events_failed_total 2",
            "gpukill_store_events_unconfirmed_total 3",
            "gpukill_history_batches_written_total 7",
            "gpukill_history_batches_dropped_total 6",
            "gpukill_history_write_failures_total 8",
            "gpukill_history_batches_queued 5",
            "gpukill_history_rollups_total 9",
            "gpukill_guard_policy_loaded 0",
            "gpukill_guard_policy_load_failed 0",
        ] {
            assert!(
                fresh.lines().any(|l| l == line),
                "missing {line:?} in:\n{fresh}"
            );
        }
        assert!(fresh.contains(&format!(
            "gpukill_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        // No policy: no per-rule gauges (not a row of made-up zeros), no counters given.
        assert!(!fresh.contains("gpukill_guard_violations_active"));
        assert!(!fresh.contains("gpukill_guard_kills_total"));

        let stale = render_at(&snap, t(110), StoreState::Unavailable);
        assert!(stale.contains("\ngpukill_snapshot_stale 1\n"), "{stale}");
        assert!(stale.contains("\ngpukill_snapshot_age_seconds 10\n"));
        assert!(stale.contains("\ngpukill_store_degraded 1\n"));
        assert!(!stale.contains("gpukill_store_events_written_total"));
    }

    #[test]
    fn guard_counters_are_rendered_per_rule_and_outcome() {
        use crate::actions::kill::Outcome;
        use crate::guard::evaluate::Rule;
        let counters = GuardCounters::default();
        counters.record_kill(Rule::Rogue, Outcome::Killed);
        let guard = GuardStatus {
            evaluated_at: Some(t(100)),
            evaluation_time: Duration::from_micros(500),
            ..GuardStatus::default()
        };
        let text = render(
            &snapshot(Vec::new(), ProcessTable::default()),
            &Status {
                now: t(100),
                watchers: 0,
                watch_lagged: 0,
                store: StoreState::Unavailable,
                guard: &guard,
                guard_counters: Some(&counters),
                connections: &[],
            },
            0,
        );
        assert!(text.contains("gpukill_guard_kills_total{rule=\"rogue\",outcome=\"killed\"} 1\n"));
        assert!(text.contains(
            "gpukill_guard_violations_total{rule=\"memory_per_process\",outcome=\"warned\"} 0\n"
        ));
        assert!(text.contains("gpukill_guard_evaluation_duration_seconds 0.0005\n"));
        assert_eq!(
            samples(&text, "gpukill_guard_kills_total").len(),
            crate::guard::counters::RULES.len() * 6
        );
    }

    #[test]
    fn connection_counters_are_rendered_per_listener_and_reason() {
        let unix = Arc::new(AdmissionCounters::default());
        unix.open.store(3, Ordering::Relaxed);
        unix.refused_per_caller.store(1068, Ordering::Relaxed);
        unix.timed_out.store(2, Ordering::Relaxed);
        let listeners = [("unix", unix), ("tcp", Arc::default())];
        let guard = GuardStatus::default();
        let text = render(
            &snapshot(Vec::new(), ProcessTable::default()),
            &Status {
                now: t(100),
                watchers: 0,
                watch_lagged: 0,
                store: StoreState::Unavailable,
                guard: &guard,
                guard_counters: None,
                connections: &listeners,
            },
            0,
        );
        for line in [
            "gpukill_connections_open{listener=\"unix\"} 3\n",
            "gpukill_connections_refused_total{listener=\"unix\",reason=\"per_caller\"} 1068\n",
            "gpukill_connections_refused_total{listener=\"tcp\",reason=\"full\"} 0\n",
            "gpukill_connections_timed_out_total{listener=\"unix\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert_eq!(samples(&text, "gpukill_connections_refused_total").len(), 4);
    }

    #[test]
    fn every_family_has_help_and_type_once_and_no_series_repeats() {
        let table = ProcessTable::new(
            (0..64).map(|pid| (process(pid, pid % 8, "alice", "python3"), Some(1), Some(2))),
            &ProcessTable::default(),
        );
        let text = render_at(
            &snapshot((0..8).map(full_gpu).collect(), table),
            t(101),
            StoreState::Unavailable,
        );
        let mut types = std::collections::HashSet::new();
        let mut series = std::collections::HashSet::new();
        let mut current = String::new();
        let mut help = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = rest.split(' ').next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                assert_eq!(help.as_deref(), Some(name.as_str()), "HELP before TYPE");
                assert!(types.insert(name.clone()), "{name} declared twice");
                current = name;
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(name, current, "{line} outside its family");
                let key = line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line);
                assert!(series.insert(key.to_owned()), "{key} twice");
            }
        }
        assert!(text.ends_with('\n'));
    }
}
