//! Test fixtures: hand-built answers (a snapshot, a kill, a reset, an audit trail, sessions,
//! a usage summary, metrics history, the upload outbox, reservations), snapshot files,
//! and an in-process fake daemon (with a scripted Run stream).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpukill_proto::v1::cluster_server::{Cluster, ClusterServer};
use gpukill_proto::v1::gpu_kill_server::{GpuKill, GpuKillServer};
use gpukill_proto::v1::{
    ClusterContentionRequest, ClusterContentionResponse, ClusterGpu, ClusterListRequest,
    ClusterListResponse, ClusterNodesRequest, ClusterNodesResponse, ClusterUser, Container, Event,
    EventsRequest, EventsResponse, Gpu, GpuProcess, GpuReservation, GpuSample, GpuUsage,
    GuardPolicyRequest, GuardPolicyResponse, GuardStatusRequest, GuardStatusResponse,
    GuardTestRequest, GuardTestResponse, GuardUpdateRequest, GuardUpdateResponse, GuardViolation,
    HealthRequest, HealthResponse, HeartbeatRequest, HeartbeatResponse, HistoryRequest,
    HistoryResponse, ImportAuditRequest, ImportAuditResponse, KillOutcome, KillRequest,
    KillResponse, KillResult, KillTarget, ListRequest, ListResponse, MisusingProcess, Node,
    NodeSnapshot, NodeState, ProcessKind, ProcessUsage, RegisterRequest, RegisterResponse,
    ReleaseRequest, ReleaseResponse, Reservation, ReservationKind, ReservationState,
    ReservationsRequest, ReservationsResponse, ReserveRequest, ReserveResponse, ReservedGpu,
    ResetOutcome, ResetRequest, ResetResponse, ResetResult, Resolution, RogueFinding, RogueRequest,
    RogueResponse, RunMessage, RunUpdate, SendAttempt, Session, SessionsRequest, SessionsResponse,
    Snapshot, SnapshotFilter, SummaryRequest, SummaryResponse, UploadEntry, UploadRetryRequest,
    UploadRetryResponse, UploadShowRequest, UploadShowResponse, UploadStatus, UploadSummary,
    UploadsRequest, UploadsResponse, UserUsage, Vendor, VendorState, VendorStatus, VersionRequest,
    VersionResponse, WaitingRequest, WatchRequest,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// 2024-05-01T12:00:00.250Z, the snapshot's tick.
pub const NOW_MS: i64 = 1_714_564_800_250;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// Two NVIDIA GPUs: GPU 0 without temperature, power or fan; GPU 1 lost (error set). Three
/// processes on GPU 0: alice's python (the largest), bob's server in a Kubernetes container,
/// and root's Xorg whose memory is unknown.
pub fn snapshot() -> Snapshot {
    Snapshot {
        host: "gpu-node-1".to_owned(),
        timestamp_unix_ms: NOW_MS,
        sequence: 42,
        vendors: vec![VendorStatus {
            vendor: Vendor::Nvidia as i32,
            state: VendorState::Ok as i32,
            message: None,
            driver_version: Some("550.54.15".to_owned()),
            last_success_unix_ms: Some(NOW_MS),
        }],
        stale: false,
        stale_reason: None,
        age_ms: 120,
        gpus: vec![
            Gpu {
                index: 0,
                vendor: Vendor::Nvidia as i32,
                uuid: Some("GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a".to_owned()),
                name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
                pci_bus_id: Some("00000000:07:00.0".to_owned()),
                memory_used_bytes: Some(25 * GIB + MIB / 2),
                memory_total_bytes: Some(80 * GIB),
                utilization_gpu_pct: Some(87),
                utilization_memory_pct: Some(45),
                temperature_c: None,
                power_mw: None,
                fan_speed_pct: None,
                clock_sm_mhz: Some(1410),
                clock_mem_mhz: Some(1593),
                ecc_volatile_errors: Some(0),
                mig_enabled: Some(false),
                reset_supported: Some(true),
                error: None,
                ..Default::default()
            },
            Gpu {
                index: 1,
                vendor_index: 1,
                vendor: Vendor::Nvidia as i32,
                uuid: Some("GPU-8e7f6a5b-4c3d-2e1f-0a9b-8c7d6e5f4a3b".to_owned()),
                name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
                pci_bus_id: Some("00000000:0F:00.0".to_owned()),
                memory_total_bytes: Some(80 * GIB),
                error: Some("GPU is lost".to_owned()),
                ..Default::default()
            },
        ],
        processes: vec![
            GpuProcess {
                gpu_index: 0,
                vendor: Vendor::Nvidia as i32,
                pid: 4242,
                // 2h13m13s before the tick.
                start_time_unix_ms: 1_714_556_807_000,
                uid: 1000,
                user: "alice".to_owned(),
                name: "python".to_owned(),
                cmdline: "python train.py --epochs 10".to_owned(),
                used_memory_bytes: Some(20 * GIB),
                sm_utilization_pct: Some(80),
                kind: ProcessKind::Compute as i32,
                container: None,
                exe_name: None,
            },
            GpuProcess {
                gpu_index: 0,
                vendor: Vendor::Nvidia as i32,
                pid: 5151,
                start_time_unix_ms: 1_714_564_500_000,
                uid: 1001,
                user: "bob".to_owned(),
                name: "pt_main_thread".to_owned(),
                cmdline: "python3 serve.py --port 8000".to_owned(),
                used_memory_bytes: Some(5 * GIB + 12345),
                sm_utilization_pct: None,
                kind: ProcessKind::ComputeAndGraphics as i32,
                container: Some(Container {
                    id: "3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"
                        .to_owned(),
                    runtime: "containerd".to_owned(),
                    pod_uid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".to_owned()),
                }),
                exe_name: Some("python3.11".to_owned()),
            },
            GpuProcess {
                gpu_index: 0,
                vendor: Vendor::Nvidia as i32,
                pid: 1789,
                start_time_unix_ms: 1_714_285_800_000,
                uid: 0,
                user: "root".to_owned(),
                name: "Xorg".to_owned(),
                cmdline: "/usr/lib/xorg/Xorg :0".to_owned(),
                used_memory_bytes: None,
                sm_utilization_pct: None,
                kind: ProcessKind::Graphics as i32,
                container: None,
                exe_name: None,
            },
        ],
        tick_duration_us: 850,
        poll_interval_ms: 1000,
    }
}

/// [`snapshot`] as served while NVML is hung: stale, the vendor hung, and GPU 0 showing its
/// last values (including temperature and power).
pub fn stale_snapshot() -> Snapshot {
    let mut snapshot = snapshot();
    snapshot.stale = true;
    snapshot.stale_reason = Some("nvidia backend hung".to_owned());
    snapshot.age_ms = 3200;
    snapshot.vendors[0].state = VendorState::Hung as i32;
    snapshot.vendors[0].message = Some("NVML call has not returned for 3.2s".to_owned());
    snapshot.gpus[0].temperature_c = Some(64);
    snapshot.gpus[0].power_mw = Some(245_123);
    snapshot
}

/// A kill target started at 2024-05-01T09:46:47Z, with command line `<name> --job <pid>`;
/// alice is uid 1000, everyone else 1001.
fn kill_target(pid: u32, user: &str, name: &str, gpu_index: Option<u32>) -> KillTarget {
    KillTarget {
        pid,
        start_time_unix_ms: 1_714_556_807_000,
        uid: if user == "alice" { 1000 } else { 1001 },
        user: user.to_owned(),
        name: name.to_owned(),
        cmdline: format!("{name} --job {pid}"),
        gpu_index,
    }
}

/// One result of every outcome, in PID order, as alice (not an admin) might get them; bob's
/// sshd is not a GPU process (no GPU index).
pub fn kill_response() -> KillResponse {
    let result = |target: KillTarget, outcome: KillOutcome, reason: &str| KillResult {
        target: Some(target),
        outcome: outcome as i32,
        reason: reason.to_owned(),
    };
    KillResponse {
        results: vec![
            result(
                kill_target(4242, "alice", "python", Some(0)),
                KillOutcome::Terminated,
                "",
            ),
            result(
                kill_target(4243, "alice", "python", Some(0)),
                KillOutcome::Killed,
                "still running after 5s; sent SIGKILL",
            ),
            result(
                kill_target(4244, "alice", "python", Some(1)),
                KillOutcome::StillRunning,
                "still running after 5s",
            ),
            result(
                kill_target(4245, "alice", "python", Some(1)),
                KillOutcome::AlreadyGone,
                "",
            ),
            result(
                kill_target(5151, "bob", "serve", Some(0)),
                KillOutcome::Denied,
                "owned by bob; you are alice",
            ),
            result(
                kill_target(5152, "bob", "sshd", None),
                KillOutcome::Protected,
                "protected process pattern ^sshd$",
            ),
            result(
                kill_target(5153, "bob", "serve", Some(2)),
                KillOutcome::Matched,
                "",
            ),
        ],
        needs_batch: false,
    }
}

/// `reset --all --force` on the two GPUs of [`snapshot`]: GPU 0 reset after its python was
/// terminated; GPU 1 failed, with what nvidia-smi said.
pub fn reset_response() -> ResetResponse {
    ResetResponse {
        results: vec![
            ResetResult {
                gpu_index: 0,
                pci_bus_id: "00000000:07:00.0".to_owned(),
                outcome: ResetOutcome::Reset as i32,
                reason: String::new(),
                killed: vec![KillResult {
                    target: Some(kill_target(4242, "alice", "python", Some(0))),
                    outcome: KillOutcome::Terminated as i32,
                    reason: String::new(),
                }],
            },
            ResetResult {
                gpu_index: 1,
                pci_bus_id: "00000000:0F:00.0".to_owned(),
                outcome: ResetOutcome::Failed as i32,
                reason: "nvidia-smi exited with status 255: GPU 00000000:0F:00.0 is lost"
                    .to_owned(),
                killed: Vec::new(),
            },
        ],
    }
}

/// Five audit events, oldest first: alice's kill of her python on GPU 0, bob's refused GPU
/// reset (no target, no caller PID), root's kill of a miner that is not on a GPU, alice's
/// kill forwarded from login1 by the coordinator `coord` (over TCP), and a refused reset by
/// the remote principal `ci-bot` (no uid).
pub fn events_response() -> EventsResponse {
    EventsResponse {
        events: vec![
            Event {
                id: 17,
                time_unix_ms: NOW_MS - 2125,
                r#type: "kill".to_owned(),
                caller_uid: 1000,
                caller_user: "alice".to_owned(),
                caller_pid: Some(31337),
                transport: "unix".to_owned(),
                action: "kill --pid 4242".to_owned(),
                target: Some(KillTarget {
                    cmdline: "python train.py --epochs 10".to_owned(),
                    ..kill_target(4242, "alice", "python", Some(0))
                }),
                outcome: "terminated".to_owned(),
                reason: String::new(),
                via: None,
            },
            Event {
                id: 18,
                time_unix_ms: NOW_MS,
                r#type: "deny".to_owned(),
                caller_uid: 1001,
                caller_user: "bob".to_owned(),
                caller_pid: None,
                transport: "unix".to_owned(),
                action: "reset --gpu 1".to_owned(),
                target: None,
                outcome: "denied".to_owned(),
                reason: "resetting a GPU needs an admin".to_owned(),
                via: None,
            },
            Event {
                id: 19,
                time_unix_ms: NOW_MS + 750,
                r#type: "kill".to_owned(),
                caller_uid: 0,
                caller_user: "root".to_owned(),
                caller_pid: Some(1),
                transport: "unix".to_owned(),
                action: "kill --filter miner --batch".to_owned(),
                target: Some(KillTarget {
                    cmdline: "./xmrig -o pool".to_owned(),
                    ..kill_target(6006, "bob", "xmrig", None)
                }),
                outcome: "killed".to_owned(),
                reason: "still running after 5s; sent SIGKILL".to_owned(),
                via: None,
            },
            Event {
                id: 20,
                time_unix_ms: NOW_MS + 1000,
                r#type: "kill".to_owned(),
                caller_uid: 1000,
                caller_user: "alice@login1".to_owned(),
                caller_pid: None,
                transport: "tcp".to_owned(),
                action: "kill --pid 4243".to_owned(),
                target: Some(kill_target(4243, "alice", "python", Some(1))),
                outcome: "terminated".to_owned(),
                reason: String::new(),
                via: Some("coord".to_owned()),
            },
            Event {
                id: 21,
                time_unix_ms: NOW_MS + 2000,
                r#type: "deny".to_owned(),
                caller_uid: u32::MAX,
                caller_user: "ci-bot".to_owned(),
                caller_pid: None,
                transport: "tcp".to_owned(),
                action: "reset --all".to_owned(),
                target: None,
                outcome: "denied".to_owned(),
                reason: "principal \"ci-bot\" has the reader role".to_owned(),
                via: None,
            },
        ],
    }
}

/// Two sessions, most recently seen first: alice's python on GPU 0 (every value known) and
/// bob's server on GPU 1 in a container, with a command line that needs CSV quoting and
/// neither peak memory nor utilization known.
pub fn sessions_response() -> SessionsResponse {
    SessionsResponse {
        sessions: vec![
            Session {
                pid: 4242,
                start_time_unix_ms: 1_714_556_807_000,
                gpu_index: 0,
                first_seen_unix_ms: 1_714_556_810_000,
                last_seen_unix_ms: NOW_MS,
                uid: 1000,
                user: "alice".to_owned(),
                name: "python".to_owned(),
                cmdline: "python train.py --epochs 10".to_owned(),
                container_id: None,
                peak_memory_bytes: Some(20 * GIB),
                gpu_seconds: 7990.25,
                memory_gib_hours: 40.5,
                util_seconds: Some(6000.0),
            },
            Session {
                pid: 5151,
                start_time_unix_ms: 1_714_564_500_000,
                gpu_index: 1,
                first_seen_unix_ms: 1_714_564_500_500,
                last_seen_unix_ms: 1_714_564_790_000,
                uid: 1001,
                user: "bob".to_owned(),
                name: "pt_main_thread".to_owned(),
                cmdline: "python3 serve.py --name \"a,b\"".to_owned(),
                container_id: Some(
                    "3f4e5d6c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0".to_owned(),
                ),
                peak_memory_bytes: None,
                gpu_seconds: 0.5,
                memory_gib_hours: 0.25,
                util_seconds: None,
            },
        ],
    }
}

/// A summary: two users, two processes (bob's without peak memory), GPU 0 with utilization
/// and GPU 1 without, and GPU hours in hours 9 and 12 of the day.
pub fn summary_response() -> SummaryResponse {
    let mut hours = vec![0.0; 24];
    hours[9] = 1.5;
    hours[12] = 1.25;
    SummaryResponse {
        top_users: vec![
            UserUsage {
                user: "alice".to_owned(),
                uid: 1000,
                gpu_hours: 2.25,
                memory_gib_hours: 40.5,
                sessions: 3,
            },
            UserUsage {
                user: "bob".to_owned(),
                uid: 1001,
                gpu_hours: 0.5,
                memory_gib_hours: 0.25,
                sessions: 1,
            },
        ],
        top_processes: vec![
            ProcessUsage {
                name: "python".to_owned(),
                user: "alice".to_owned(),
                gpu_hours: 2.25,
                peak_memory_bytes: Some(20 * GIB),
            },
            ProcessUsage {
                name: "pt_main_thread".to_owned(),
                user: "bob".to_owned(),
                gpu_hours: 0.5,
                peak_memory_bytes: None,
            },
        ],
        gpus: vec![
            GpuUsage {
                gpu_index: 0,
                samples: 1440,
                util_mean: Some(87.5),
                util_max: Some(100),
            },
            GpuUsage {
                gpu_index: 1,
                samples: 2,
                util_mean: None,
                util_max: None,
            },
        ],
        hour_of_day_gpu_hours: hours,
        reservations: vec![gpukill_proto::v1::UserReservations {
            user: "alice".into(),
            uid: 1000,
            reserved_gpu_hours: 16.5,
            run_gpu_hours: 0.5,
            reservations: 3,
        }],
    }
}

/// Two samples of GPU 0, oldest first: one with every metric, one with none known and a name
/// that needs CSV quoting.
pub fn history_response() -> HistoryResponse {
    HistoryResponse {
        samples: vec![
            GpuSample {
                time_unix_ms: NOW_MS - 10_250,
                gpu_index: 0,
                uuid: Some("GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a".to_owned()),
                name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
                ticks: 10,
                util_mean: Some(87.5),
                util_max: Some(99),
                mem_util_mean: Some(45.0),
                mem_used_max_bytes: Some(25 * GIB),
                mem_total_bytes: Some(80 * GIB),
                temp_mean: Some(64.25),
                temp_max: Some(66),
                power_mean_mw: Some(245_123.5),
                power_max_mw: Some(250_000),
                pci_bus_id: Some("00000000:17:00.0".to_owned()),
                fan_mean_pct: Some(35.0),
                sm_clock_mean_mhz: Some(1410.0),
                mem_clock_mean_mhz: Some(1593.0),
                samples: 1,
                ..Default::default()
            },
            GpuSample {
                time_unix_ms: NOW_MS - 250,
                gpu_index: 0,
                name: Some("A100, \"SXM4\"".to_owned()),
                ticks: 3,
                samples: 1,
                ..Default::default()
            },
        ],
        resolution: Resolution::Raw.into(),
    }
}

/// A violation of alice's memory limit by pid 4242 on GPU 1.
pub fn guard_violation() -> GuardViolation {
    GuardViolation {
        rule: "memory_per_process".to_owned(),
        policy: "[[user]] alice".to_owned(),
        description: "memory_per_process: pid 4242 (python3, alice) on GPU 1 24.0 GiB, limit 20.0 GiB ([[user]] alice)".to_owned(),
        measured: (24 * GIB) as f64,
        limit: (20 * GIB) as f64,
        unit: "bytes".to_owned(),
        over: true,
        offenders: vec![KillTarget {
            pid: 4242,
            start_time_unix_ms: NOW_MS - 3_600_000,
            uid: 1000,
            user: "alice".to_owned(),
            name: "python3".to_owned(),
            cmdline: "python3 train.py".to_owned(),
            gpu_index: Some(1),
        }],
        would: String::new(),
    }
}

/// A GuardStatus answer: a hard-mode policy with one violation and one rule not evaluable.
pub fn guard_status_response() -> GuardStatusResponse {
    GuardStatusResponse {
        policy_path: "/etc/gpukill/guard.toml".to_owned(),
        loaded: true,
        load_error: Some("/etc/gpukill/guard.toml, line 7: invalid size \"lots\"".to_owned()),
        enabled: true,
        mode: "hard".to_owned(),
        loaded_at_unix_ms: NOW_MS - 60_000,
        grace_ms: 30_000,
        min_duration_ms: 10_000,
        users: 2,
        groups: 1,
        gpus: 1,
        windows: 1,
        active_windows: vec!["nights".to_owned()],
        violations: vec![guard_violation()],
        not_evaluable: vec!["GPU 2 reports no per-process utilization: the max_utilization_pct of [defaults] cannot be evaluated there".to_owned()],
        kills_last_minute: 1,
        max_kills_per_minute: 10,
        evaluated_at_unix_ms: NOW_MS,
        evaluation_us: 85,
    }
}

/// A GuardTest answer with the violation and what would happen.
pub fn guard_test_response() -> GuardTestResponse {
    GuardTestResponse {
        mode: "hard".to_owned(),
        violations: vec![GuardViolation {
            would: "kill once it has lasted 10s".to_owned(),
            ..guard_violation()
        }],
        not_evaluable: Vec::new(),
    }
}

/// A Rogue answer: the first session of [`sessions_response`] as a renamed miner.
pub fn rogue_response() -> RogueResponse {
    RogueResponse {
        findings: vec![RogueFinding {
            session: sessions_response().sessions.into_iter().next(),
            score: 100,
            level: "critical".to_owned(),
            reasons: vec![
                "argv[0] xmrig is a known miner (+80)".to_owned(),
                "renamed binary: argv[0] xmrig is a known miner but comm is python3 (+20)"
                    .to_owned(),
            ],
        }],
    }
}

/// A History answer at hourly resolution: two hours of GPU 1, the second without power.
pub fn hourly_history_response() -> HistoryResponse {
    let hour = NOW_MS - NOW_MS.rem_euclid(3_600_000) - 2 * 3_600_000;
    let full = GpuSample {
        time_unix_ms: hour,
        gpu_index: 1,
        samples: 360,
        util_mean: Some(71.25),
        util_min: Some(12),
        util_max: Some(100),
        mem_used_mean_bytes: Some(20.5 * GIB as f64),
        mem_used_max_bytes: Some(30 * GIB),
        temp_mean: Some(61.5),
        temp_max: Some(70),
        power_mean_mw: Some(251_000.0),
        power_max_mw: Some(300_000),
        energy_wh: Some(251.0),
        ..Default::default()
    };
    HistoryResponse {
        samples: vec![
            full.clone(),
            GpuSample {
                time_unix_ms: hour + 3_600_000,
                power_mean_mw: None,
                power_max_mw: None,
                energy_wh: None,
                samples: 180,
                ..full
            },
        ],
        resolution: Resolution::Hourly.into(),
    }
}

/// The id of node n1.
pub const N1_ID: &str = "5f0c1e2d3b4a69788796a5b4c3d2e1f0";

/// The four nodes of the test cluster: n1 (configured, up), n2 (registered, up), n3
/// (registered, down: its heartbeats stopped) and n4 (configured, not asked yet).
pub fn cluster_nodes() -> Vec<Node> {
    vec![
        Node {
            name: "n1".to_owned(),
            node_id: Some(N1_ID.to_owned()),
            address: "https://n1.example:7443".to_owned(),
            source: "static".to_owned(),
            state: NodeState::Up as i32,
            last_seen_unix_ms: Some(NOW_MS - 2000),
            error: None,
        },
        Node {
            name: "n2".to_owned(),
            node_id: Some("0a1b2c3d4e5f60718293a4b5c6d7e8f9".to_owned()),
            address: "https://10.0.0.12:7443".to_owned(),
            source: "registered".to_owned(),
            state: NodeState::Up as i32,
            last_seen_unix_ms: Some(NOW_MS - 4500),
            error: None,
        },
        Node {
            name: "n3".to_owned(),
            node_id: Some("ffeeddccbbaa99887766554433221100".to_owned()),
            address: "https://10.0.0.13:7443".to_owned(),
            source: "registered".to_owned(),
            state: NodeState::Down as i32,
            last_seen_unix_ms: Some(NOW_MS - 45_000),
            error: Some("no heartbeat for 45s".to_owned()),
        },
        Node {
            name: "n4".to_owned(),
            node_id: None,
            address: "https://n4.example:7443".to_owned(),
            source: "static".to_owned(),
            state: NodeState::Unknown as i32,
            last_seen_unix_ms: None,
            error: None,
        },
    ]
}

/// What `cluster nodes` gets: [`cluster_nodes`].
pub fn cluster_nodes_response() -> ClusterNodesResponse {
    ClusterNodesResponse {
        nodes: cluster_nodes(),
    }
}

/// An idle node's snapshot: one H100 with nothing on it.
pub fn idle_snapshot() -> Snapshot {
    Snapshot {
        host: "gpu-node-2".to_owned(),
        timestamp_unix_ms: NOW_MS - 400,
        sequence: 7,
        vendors: snapshot().vendors,
        age_ms: 80,
        gpus: vec![Gpu {
            index: 0,
            vendor: Vendor::Nvidia as i32,
            uuid: Some("GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".to_owned()),
            name: Some("NVIDIA H100 80GB HBM3".to_owned()),
            pci_bus_id: Some("00000000:1B:00.0".to_owned()),
            memory_used_bytes: Some(MIB / 2),
            memory_total_bytes: Some(80 * GIB),
            utilization_gpu_pct: Some(0),
            temperature_c: Some(31),
            power_mw: Some(69_870),
            ecc_volatile_errors: Some(0),
            ..Default::default()
        }],
        processes: Vec::new(),
        tick_duration_us: 400,
        poll_interval_ms: 1000,
        ..Default::default()
    }
}

/// `cluster list` over [`cluster_nodes`]: n1 answers with [`snapshot`], n2 with
/// [`idle_snapshot`]; n3 is down (not asked), n4 missed the 1 s deadline.
pub fn cluster_list_response() -> ClusterListResponse {
    let nodes = cluster_nodes();
    ClusterListResponse {
        nodes: vec![
            NodeSnapshot {
                node: Some(nodes[0].clone()),
                snapshot: Some(snapshot()),
                error: None,
                latency_us: 1250,
            },
            NodeSnapshot {
                node: Some(nodes[1].clone()),
                snapshot: Some(idle_snapshot()),
                error: None,
                latency_us: 2875,
            },
            NodeSnapshot {
                node: Some(nodes[2].clone()),
                snapshot: None,
                error: Some("down: no heartbeat for 45s".to_owned()),
                latency_us: 0,
            },
            NodeSnapshot {
                node: Some(Node {
                    state: NodeState::Down as i32,
                    ..nodes[3].clone()
                }),
                snapshot: None,
                error: Some("deadline exceeded after 1s".to_owned()),
                latency_us: 1_000_000,
            },
        ],
        deadline_ms: 1000,
    }
}

/// `cluster contention`: alice fills n1's GPU 0, bob's process sits idle on n1's GPU 1,
/// n2's GPU 0 is free (its utilization unknown), n3 is down.
pub fn cluster_contention_response() -> ClusterContentionResponse {
    let alice = ClusterUser {
        user: "alice".to_owned(),
        memory_bytes: 78 * GIB,
        sm_utilization_pct: 95,
        gpus: 1,
        processes: 2,
        nodes: vec!["n1".to_owned()],
    };
    let bob = ClusterUser {
        user: "bob".to_owned(),
        memory_bytes: 20 * GIB,
        sm_utilization_pct: 0,
        gpus: 1,
        processes: 1,
        nodes: vec!["n1".to_owned()],
    };
    ClusterContentionResponse {
        busy: vec![ClusterGpu {
            node: "n1".to_owned(),
            index: 0,
            name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
            utilization_pct: Some(97),
            memory_used_bytes: Some(78 * GIB),
            memory_total_bytes: Some(80 * GIB),
            users: vec!["alice".to_owned()],
        }],
        free: vec![ClusterGpu {
            node: "n2".to_owned(),
            index: 0,
            name: Some("NVIDIA H100 80GB HBM3".to_owned()),
            utilization_pct: None,
            memory_used_bytes: Some(MIB / 2),
            memory_total_bytes: Some(80 * GIB),
            users: Vec::new(),
        }],
        idle: vec![ClusterGpu {
            node: "n1".to_owned(),
            index: 1,
            name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
            utilization_pct: Some(0),
            memory_used_bytes: Some(20 * GIB),
            memory_total_bytes: Some(80 * GIB),
            users: vec!["bob".to_owned()],
        }],
        top_by_memory: vec![alice.clone(), bob.clone()],
        top_by_utilization: vec![alice, bob],
        suggestions: vec![
            "n2 GPU 0 (NVIDIA H100 80GB HBM3) is free".to_owned(),
            "bob holds 20 GiB on n1 GPU 1 and does nothing: ask bob, or gpukillctl --node n1 kill --user bob".to_owned(),
        ],
        unreachable: vec!["n3: down: no heartbeat for 45s".to_owned()],
    }
}

/// The hour of 2024-05-01 starting at `hour` o'clock UTC, milliseconds since the epoch.
const fn may_first(hour: i64) -> i64 {
    1_714_521_600_000 + hour * 3_600_000
}

/// The payload of the 10:00 hour of [`uploads_response`], compact as gpukilld sends it
/// (schema gpukill.usage/v1): one GPU, two users (bob's peak memory unknown).
pub const UPLOAD_PAYLOAD: &str = concat!(
    r#"{"schema":"gpukill.usage/v1","node_id":"5f0c1e2d3b4a69788796a5b4c3d2e1f0","#,
    r#""node_name":"gpu-node-1","hour_unix_ms":1714557600000,"hour":"2024-05-01T10:00:00Z","#,
    r#""gpus":[{"gpu_index":0,"samples":360,"util_mean_pct":41.5,"util_min_pct":3,"#,
    r#""util_max_pct":97,"mem_used_mean_bytes":8100000000.0,"mem_used_max_bytes":8589934592,"#,
    r#""temp_mean_c":55.2,"temp_max_c":61,"power_mean_w":250.1,"power_max_w":300.0,"#,
    r#""energy_wh":250.1}],"users":[{"gpu_index":0,"user":"alice","uid":1000,"#,
    r#""gpu_seconds":3000.0,"memory_gib_hours":3.3,"peak_memory_bytes":4294967296,"#,
    r#""processes":2},{"gpu_index":0,"user":"bob","uid":1001,"gpu_seconds":600.5,"#,
    r#""memory_gib_hours":0.25,"peak_memory_bytes":null,"processes":1}]}"#
);

/// The pending 10:00 hour: sent twice (connection refused, then a 503), next attempt set.
fn pending_upload() -> UploadEntry {
    UploadEntry {
        hour_unix_ms: may_first(10),
        status: UploadStatus::Pending as i32,
        attempts: 2,
        first_attempt_unix_ms: Some(may_first(11) + 5_100),
        last_attempt_unix_ms: Some(may_first(11) + 7_350),
        last_error: Some("HTTP 503: upstream busy, try again later".to_owned()),
        next_attempt_unix_ms: Some(may_first(11) + 67_000),
        sha256: "e3b98a4da31a127d4bde6e43033f66ba274cab0eb7eb1c70ec41402bf6273dd8".to_owned(),
        payload_bytes: UPLOAD_PAYLOAD.len() as u64,
        delivered_unix_ms: None,
        created_unix_ms: may_first(11) + 5_000,
        gpu_rows: 1,
        user_rows: 2,
    }
}

/// The outbox on 2024-05-01 at noon, oldest hour first: 07:00 delivered at the first
/// attempt; 08:00 rejected by the server (a message too long for the table); 09:00 parked
/// after 10 attempts; 10:00 pending after two failed attempts; 11:00 pending, never sent.
/// Three hours were dropped before; uploads go to central.example.
pub fn uploads_response() -> UploadsResponse {
    UploadsResponse {
        entries: vec![
            UploadEntry {
                hour_unix_ms: may_first(7),
                status: UploadStatus::Delivered as i32,
                attempts: 1,
                first_attempt_unix_ms: Some(may_first(8) + 5_120),
                last_attempt_unix_ms: Some(may_first(8) + 5_120),
                last_error: None,
                next_attempt_unix_ms: None,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                    .to_owned(),
                payload_bytes: 1843,
                delivered_unix_ms: Some(may_first(8) + 5_480),
                created_unix_ms: may_first(8) + 5_000,
                gpu_rows: 2,
                user_rows: 3,
            },
            UploadEntry {
                hour_unix_ms: may_first(8),
                status: UploadStatus::Rejected as i32,
                attempts: 1,
                first_attempt_unix_ms: Some(may_first(9) + 5_200),
                last_attempt_unix_ms: Some(may_first(9) + 5_200),
                last_error: Some(
                    "HTTP 400: payload rejected: node 5f0c1e2d3b4a69788796a5b4c3d2e1f0 is not \
                     registered on this server"
                        .to_owned(),
                ),
                next_attempt_unix_ms: None,
                sha256: "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
                    .to_owned(),
                payload_bytes: 2210,
                delivered_unix_ms: None,
                created_unix_ms: may_first(9) + 5_000,
                gpu_rows: 2,
                user_rows: 4,
            },
            UploadEntry {
                hour_unix_ms: may_first(9),
                status: UploadStatus::Parked as i32,
                attempts: 10,
                first_attempt_unix_ms: Some(may_first(10) + 5_300),
                last_attempt_unix_ms: Some(may_first(11) - 1_138_000),
                last_error: Some("no answer within 30s".to_owned()),
                next_attempt_unix_ms: None,
                sha256: "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"
                    .to_owned(),
                payload_bytes: 1790,
                delivered_unix_ms: None,
                created_unix_ms: may_first(10) + 5_000,
                gpu_rows: 2,
                user_rows: 2,
            },
            pending_upload(),
            UploadEntry {
                hour_unix_ms: may_first(11),
                status: UploadStatus::Pending as i32,
                attempts: 0,
                first_attempt_unix_ms: None,
                last_attempt_unix_ms: None,
                last_error: None,
                next_attempt_unix_ms: None,
                sha256: "7d865e959b2466918c9863afca942d0fb89d7c9ac0c99bafc3749504ded97730"
                    .to_owned(),
                payload_bytes: 1650,
                delivered_unix_ms: None,
                created_unix_ms: may_first(12) + 100,
                gpu_rows: 2,
                user_rows: 1,
            },
        ],
        summary: Some(UploadSummary {
            pending: 2,
            delivered: 1,
            parked: 1,
            rejected: 1,
            dropped_total: 3,
            offline: false,
            url: Some("https://central.example:9402/api/v1/usage".to_owned()),
        }),
    }
}

/// The 10:00 hour of [`uploads_response`] in detail: its two attempts (no answer, then a
/// 503) and its payload.
pub fn upload_show_response() -> UploadShowResponse {
    UploadShowResponse {
        entry: Some(pending_upload()),
        attempts: vec![
            SendAttempt {
                attempt: 1,
                time_unix_ms: may_first(11) + 5_100,
                http_status: None,
                error: Some(
                    "cannot connect to central.example:9402: Connection refused (os error 111)"
                        .to_owned(),
                ),
                latency_ms: 3,
            },
            SendAttempt {
                attempt: 2,
                time_unix_ms: may_first(11) + 7_350,
                http_status: Some(503),
                error: Some("HTTP 503: upstream busy, try again later".to_owned()),
                latency_ms: 85,
            },
        ],
        payload_json: UPLOAD_PAYLOAD.to_owned(),
    }
}

/// A GPU of a reservation: nvidia, with the UUID `GPU-<index>` and no name.
pub fn reserved_gpu(index: u32) -> ReservedGpu {
    ReservedGpu {
        index,
        uuid: Some(format!("GPU-{index}")),
        vendor: Vendor::Nvidia as i32,
        name: None,
    }
}

/// Reservation 17 of GPU 0 (UUID and name known) and GPU 3 (neither), for 8 hours from
/// [`NOW_MS`].
pub fn reserve_response() -> ReserveResponse {
    ReserveResponse {
        reservation_id: 17,
        gpus: vec![
            ReservedGpu {
                index: 0,
                uuid: Some("GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a".to_owned()),
                vendor: Vendor::Nvidia as i32,
                name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
            },
            ReservedGpu {
                index: 3,
                uuid: None,
                vendor: Vendor::Nvidia as i32,
                name: None,
            },
        ],
        expires_unix_ms: NOW_MS + 8 * 3_600_000,
    }
}

/// Alice's manual reservation 11 of GPU 2 (09:00 to 17:00, with a note) and her run
/// reservation 12 of GPU 3 (since 11:58:59.250, no timeout).
pub fn release_response() -> ReleaseResponse {
    ReleaseResponse {
        released: vec![
            Reservation {
                id: 11,
                gpu: Some(reserved_gpu(2)),
                user: "alice".to_owned(),
                uid: 1000,
                kind: ReservationKind::Manual as i32,
                start_unix_ms: 1_714_554_000_000,
                expires_unix_ms: Some(1_714_582_800_000),
                note: "thesis runs".to_owned(),
                client_pid: None,
                attached: false,
            },
            Reservation {
                id: 12,
                gpu: Some(reserved_gpu(3)),
                user: "alice".to_owned(),
                uid: 1000,
                kind: ReservationKind::Run as i32,
                start_unix_ms: NOW_MS - 61_000,
                expires_unix_ms: None,
                note: "python train.py".to_owned(),
                client_pid: Some(999),
                attached: true,
            },
        ],
    }
}

/// A run reservation of GPU `index` by `user`, held for `held_ms` before [`NOW_MS`].
fn run_reservation(id: i64, index: u32, user: &str, held_ms: i64) -> Reservation {
    Reservation {
        id,
        gpu: Some(reserved_gpu(index)),
        user: user.to_owned(),
        uid: 1000 + index,
        kind: ReservationKind::Run as i32,
        start_unix_ms: NOW_MS - held_ms,
        expires_unix_ms: None,
        note: "python train.py".to_owned(),
        client_pid: None,
        attached: true,
    }
}

/// A process of `user` using a GPU it does not hold.
fn misusing(pid: u32, user: &str, name: &str, used: Option<u64>) -> MisusingProcess {
    MisusingProcess {
        pid,
        user: user.to_owned(),
        uid: if user == "bob" { 1001 } else { 1003 },
        name: name.to_owned(),
        used_memory_bytes: used,
    }
}

/// Seven GPUs as of [`NOW_MS`]: 0 available; 1 alice's run (pid 1234, 1h2m); 2 carol's manual
/// reservation with a note (5m3s, 3h5m left); 3 used unreserved by bob (two processes, one of
/// unknown memory) and dave; 4 alice's manual reservation used by bob; 5 erin's run whose
/// client is disconnected and 6 frank's run (pid 77), both with 59m47s left. Two requests
/// wait.
pub fn reservations_response() -> ReservationsResponse {
    let gpu =
        |index: u32, state: ReservationState, reservation: Option<Reservation>| GpuReservation {
            gpu: Some(reserved_gpu(index)),
            state: state as i32,
            reservation,
            misuse: Vec::new(),
        };
    let mut available = gpu(0, ReservationState::Available, None);
    available.gpu = Some(ReservedGpu {
        name: Some("NVIDIA A100-SXM4-80GB".to_owned()),
        ..reserved_gpu(0)
    });
    let alice = Reservation {
        client_pid: Some(1234),
        ..run_reservation(21, 1, "alice", (3600 + 120 + 5) * 1000)
    };
    let carol = Reservation {
        kind: ReservationKind::Manual as i32,
        expires_unix_ms: Some(NOW_MS + (3 * 3600 + 5 * 60 + 30) * 1000),
        note: "thesis runs".to_owned(),
        ..run_reservation(22, 2, "carol", 303_000)
    };
    let mut unreserved = gpu(3, ReservationState::UnreservedUse, None);
    unreserved.misuse = vec![
        misusing(123, "bob", "python", Some(10 * GIB)),
        misusing(124, "bob", "train", None),
        misusing(9, "dave", "x", Some(GIB + GIB / 2)),
    ];
    let mut wrong = gpu(
        4,
        ReservationState::WrongUser,
        Some(Reservation {
            kind: ReservationKind::Manual as i32,
            ..run_reservation(23, 4, "alice", 600_000)
        }),
    );
    wrong.misuse = vec![misusing(123, "bob", "python", Some(10 * GIB))];
    let erin = Reservation {
        attached: false,
        expires_unix_ms: Some(NOW_MS + 3_587_000),
        ..run_reservation(24, 5, "erin", 12_000)
    };
    let frank = Reservation {
        client_pid: Some(77),
        expires_unix_ms: Some(NOW_MS + 3_587_000),
        ..run_reservation(25, 6, "frank", 12_000)
    };
    ReservationsResponse {
        gpus: vec![
            available,
            gpu(1, ReservationState::Reserved, Some(alice)),
            gpu(2, ReservationState::Reserved, Some(carol)),
            unreserved,
            wrong,
            gpu(5, ReservationState::Reserved, Some(erin)),
            gpu(6, ReservationState::Reserved, Some(frank)),
        ],
        queue: vec![
            WaitingRequest {
                user: "gina".to_owned(),
                uid: 1007,
                count: 2,
                since_unix_ms: NOW_MS - 300_000,
                command: "python train.py --gpus 2".to_owned(),
            },
            WaitingRequest {
                user: "henry".to_owned(),
                uid: 1008,
                count: 1,
                since_unix_ms: NOW_MS - 12_000,
                command: "./bench.sh".to_owned(),
            },
        ],
        unreserved_threshold_bytes: GIB,
        now_unix_ms: NOW_MS,
        queue_total: 2,
    }
}

/// Compares `actual` with `tests/snapshots/<name>`. With `UPDATE_SNAPSHOTS=1` in the
/// environment it (re)writes the file instead.
#[track_caller]
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (run with UPDATE_SNAPSHOTS=1 to accept the new output)\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// A fake gpukilld serving fixed answers, recording the requests it got.
#[derive(Debug, Clone, Default)]
pub struct FakeDaemon {
    /// What List answers, or the status it fails with.
    pub list: Option<Result<Snapshot, Status>>,
    /// What Watch streams, item by item; the stream then ends, or stays open when
    /// `watch_stays_open` is set.
    pub watch: Vec<Result<Snapshot, Status>>,
    /// Keep the Watch stream open after its items (a live daemon between ticks).
    pub watch_stays_open: bool,
    /// What Version answers; `None` fails with UNIMPLEMENTED.
    pub version: Option<VersionResponse>,
    /// What Kill answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub kill: Option<Result<KillResponse, Status>>,
    /// What Events answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub events: Option<Result<EventsResponse, Status>>,
    /// What Reset answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub reset: Option<Result<ResetResponse, Status>>,
    /// What Sessions answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub sessions: Option<Result<SessionsResponse, Status>>,
    /// What History answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub history: Option<Result<HistoryResponse, Status>>,
    /// What Summary answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub summary: Option<Result<SummaryResponse, Status>>,
    /// What ImportAudit answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub import_audit: Option<Result<ImportAuditResponse, Status>>,
    /// What GuardStatus answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub guard_status: Option<Result<GuardStatusResponse, Status>>,
    /// What GuardTest answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub guard_test: Option<Result<GuardTestResponse, Status>>,
    /// What Rogue answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub rogue: Option<Result<RogueResponse, Status>>,
    /// Every Rogue request received.
    pub rogue_requests: Arc<Mutex<Vec<RogueRequest>>>,
    /// What GuardPolicy answers; `None` fails with UNIMPLEMENTED.
    pub guard_policy: Option<Result<GuardPolicyResponse, Status>>,
    /// What GuardUpdate answers; `None` fails with UNIMPLEMENTED.
    pub guard_update: Option<Result<GuardUpdateResponse, Status>>,
    /// Every GuardUpdate request received.
    pub guard_update_requests: Arc<Mutex<Vec<GuardUpdateRequest>>>,
    /// The filters of every List and Watch request received.
    pub filters: Arc<Mutex<Vec<SnapshotFilter>>>,
    /// Every Kill request received, with the deadline the client set.
    pub kill_requests: Arc<Mutex<Vec<ReceivedKill>>>,
    /// Every Events request received.
    pub events_requests: Arc<Mutex<Vec<EventsRequest>>>,
    /// Every Reset request received, with the deadline the client set.
    pub reset_requests: Arc<Mutex<Vec<ReceivedReset>>>,
    /// Every Sessions request received.
    pub sessions_requests: Arc<Mutex<Vec<SessionsRequest>>>,
    /// Every History request received.
    pub history_requests: Arc<Mutex<Vec<HistoryRequest>>>,
    /// Every Summary request received.
    pub summary_requests: Arc<Mutex<Vec<SummaryRequest>>>,
    /// Every ImportAudit request received.
    pub import_requests: Arc<Mutex<Vec<ImportAuditRequest>>>,
    /// What Uploads answers; `None` fails with UNIMPLEMENTED.
    pub uploads: Option<Result<UploadsResponse, Status>>,
    /// What UploadShow answers; `None` fails with UNIMPLEMENTED.
    pub upload_show: Option<Result<UploadShowResponse, Status>>,
    /// What UploadRetry answers; `None` fails with UNIMPLEMENTED.
    pub upload_retry: Option<Result<UploadRetryResponse, Status>>,
    /// Every Uploads request received.
    pub uploads_requests: Arc<Mutex<Vec<UploadsRequest>>>,
    /// Every UploadShow request received.
    pub upload_show_requests: Arc<Mutex<Vec<UploadShowRequest>>>,
    /// Every UploadRetry request received.
    pub upload_retry_requests: Arc<Mutex<Vec<UploadRetryRequest>>>,
    /// What Cluster.Nodes answers; `None` fails with UNIMPLEMENTED.
    pub cluster_nodes: Option<Result<ClusterNodesResponse, Status>>,
    /// What Cluster.List answers; `None` fails with UNIMPLEMENTED.
    pub cluster_list: Option<Result<ClusterListResponse, Status>>,
    /// What Cluster.Contention answers; `None` fails with UNIMPLEMENTED.
    pub cluster_contention: Option<Result<ClusterContentionResponse, Status>>,
    /// Every Cluster.List request received.
    pub cluster_list_requests: Arc<Mutex<Vec<ClusterListRequest>>>,
    /// Every Cluster.Contention request received.
    pub cluster_contention_requests: Arc<Mutex<Vec<ClusterContentionRequest>>>,
    /// The credentials and node metadata of every request received, in order.
    pub received: Arc<Mutex<Vec<ReceivedMetadata>>>,
    /// What Reserve answers; `None` fails with UNIMPLEMENTED.
    pub reserve: Option<Result<ReserveResponse, Status>>,
    /// Every Reserve request received.
    pub reserve_requests: Arc<Mutex<Vec<ReserveRequest>>>,
    /// What Release answers; `None` fails with UNIMPLEMENTED.
    pub release: Option<Result<ReleaseResponse, Status>>,
    /// Every Release request received.
    pub release_requests: Arc<Mutex<Vec<ReleaseRequest>>>,
    /// What Reservations answers; `None` fails with UNIMPLEMENTED.
    pub reservations: Option<Result<ReservationsResponse, Status>>,
    /// What each Run call does, in the order of the calls; a call beyond them fails with
    /// UNIMPLEMENTED.
    pub run: Vec<RunScript>,
    /// What each Run call received, one list per call, in the order of the calls.
    pub run_received: Arc<Mutex<Vec<Vec<RunReceived>>>>,
}

/// What the fake daemon does in one Run call: once the client's first message is in, it
/// sends `updates` (an error ends the stream there); it then keeps the stream open until the
/// client ends its side, and ends its own.
#[derive(Debug, Clone, Default)]
pub struct RunScript {
    /// The updates sent after the first message, in order.
    pub updates: Vec<Result<RunUpdate, Status>>,
}

/// What the fake daemon received on one Run stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RunReceived {
    /// A message.
    Message(RunMessage),
    /// The client ended its stream.
    End,
    /// The stream broke, with the error.
    Broken(String),
}

/// The metadata of one request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMetadata {
    /// `GpuKill` or `Cluster`.
    pub service: &'static str,
    /// The `authorization` value, if any.
    pub authorization: Option<String>,
    /// The `gpukill-node` value, if any.
    pub node: Option<String>,
}

/// Records the metadata of every request of one service into `received`.
#[derive(Clone)]
struct Recorder {
    service: &'static str,
    received: Arc<Mutex<Vec<ReceivedMetadata>>>,
}

impl tonic::service::Interceptor for Recorder {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let metadata = ReceivedMetadata {
            service: self.service,
            authorization: value("authorization"),
            node: value(crate::conn::NODE_HEADER),
        };
        if let Ok(mut received) = self.received.lock() {
            received.push(metadata);
        }
        Ok(request)
    }
}

/// A Kill request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedKill {
    /// The request message.
    pub request: KillRequest,
    /// The deadline the client set (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
}

/// A Reset request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedReset {
    /// The request message.
    pub request: ResetRequest,
    /// The deadline the client set (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
}

impl FakeDaemon {
    fn record(&self, filter: Option<SnapshotFilter>) {
        if let Ok(mut filters) = self.filters.lock() {
            filters.push(filter.unwrap_or_default());
        }
    }
}

/// The deadline a request carries in its `grpc-timeout` header (e.g. `35000m`), if any.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl GpuKill for FakeDaemon {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.record(request.into_inner().filter);
        match self.list.clone() {
            Some(Ok(snapshot)) => Ok(Response::new(ListResponse {
                snapshot: Some(snapshot),
            })),
            Some(Err(status)) => Err(status),
            None => Err(Status::unimplemented("List")),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.record(request.into_inner().filter);
        let items = tokio_stream::iter(self.watch.clone());
        if self.watch_stays_open {
            Ok(Response::new(Box::pin(
                items.chain(tokio_stream::pending()),
            )))
        } else {
            Ok(Response::new(Box::pin(items)))
        }
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Err(Status::unimplemented("Health"))
    }

    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        self.version
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::unimplemented("Version"))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<KillResponse>, Status> {
        let deadline = grpc_timeout(&request);
        if let Ok(mut requests) = self.kill_requests.lock() {
            requests.push(ReceivedKill {
                request: request.into_inner(),
                deadline,
            });
        }
        match self.kill.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Kill")),
        }
    }

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventsResponse>, Status> {
        if let Ok(mut requests) = self.events_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.events.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Events")),
        }
    }

    async fn sessions(
        &self,
        request: Request<SessionsRequest>,
    ) -> Result<Response<SessionsResponse>, Status> {
        if let Ok(mut requests) = self.sessions_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.sessions.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Sessions")),
        }
    }

    async fn summary(
        &self,
        request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        if let Ok(mut requests) = self.summary_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.summary.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Summary")),
        }
    }

    async fn import_audit(
        &self,
        request: Request<ImportAuditRequest>,
    ) -> Result<Response<ImportAuditResponse>, Status> {
        if let Ok(mut requests) = self.import_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.import_audit.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("ImportAudit")),
        }
    }

    async fn guard_status(
        &self,
        _request: Request<GuardStatusRequest>,
    ) -> Result<Response<GuardStatusResponse>, Status> {
        match self.guard_status.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardStatus")),
        }
    }

    async fn guard_test(
        &self,
        _request: Request<GuardTestRequest>,
    ) -> Result<Response<GuardTestResponse>, Status> {
        match self.guard_test.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardTest")),
        }
    }

    async fn guard_policy(
        &self,
        _request: Request<GuardPolicyRequest>,
    ) -> Result<Response<GuardPolicyResponse>, Status> {
        match self.guard_policy.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardPolicy")),
        }
    }

    async fn guard_update(
        &self,
        request: Request<GuardUpdateRequest>,
    ) -> Result<Response<GuardUpdateResponse>, Status> {
        if let Ok(mut requests) = self.guard_update_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.guard_update.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("GuardUpdate")),
        }
    }

    async fn rogue(
        &self,
        request: Request<RogueRequest>,
    ) -> Result<Response<RogueResponse>, Status> {
        if let Ok(mut requests) = self.rogue_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.rogue.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Rogue")),
        }
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        if let Ok(mut requests) = self.history_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.history.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("History")),
        }
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        let deadline = grpc_timeout(&request);
        if let Ok(mut requests) = self.reset_requests.lock() {
            requests.push(ReceivedReset {
                request: request.into_inner(),
                deadline,
            });
        }
        match self.reset.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reset")),
        }
    }

    async fn uploads(
        &self,
        request: Request<UploadsRequest>,
    ) -> Result<Response<UploadsResponse>, Status> {
        if let Ok(mut requests) = self.uploads_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.uploads.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Uploads")),
        }
    }

    async fn upload_show(
        &self,
        request: Request<UploadShowRequest>,
    ) -> Result<Response<UploadShowResponse>, Status> {
        if let Ok(mut requests) = self.upload_show_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.upload_show.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("UploadShow")),
        }
    }

    async fn upload_retry(
        &self,
        request: Request<UploadRetryRequest>,
    ) -> Result<Response<UploadRetryResponse>, Status> {
        if let Ok(mut requests) = self.upload_retry_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.upload_retry.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("UploadRetry")),
        }
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        if let Ok(mut requests) = self.reserve_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.reserve.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reserve")),
        }
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        if let Ok(mut requests) = self.release_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.release.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Release")),
        }
    }

    async fn reservations(
        &self,
        _request: Request<ReservationsRequest>,
    ) -> Result<Response<ReservationsResponse>, Status> {
        match self.reservations.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Reservations")),
        }
    }

    type RunStream = Pin<Box<dyn Stream<Item = Result<RunUpdate, Status>> + Send>>;

    async fn run(
        &self,
        request: Request<tonic::Streaming<RunMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let call = {
            let mut received = self
                .run_received
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            received.push(Vec::new());
            received.len() - 1
        };
        let Some(script) = self.run.get(call).cloned() else {
            return Err(Status::unimplemented("Run"));
        };
        let received = self.run_received.clone();
        let record = move |event: RunReceived| {
            if let Ok(mut received) = received.lock() {
                received[call].push(event);
            }
        };
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut script = Some(script.updates);
            loop {
                let event = match inbound.message().await {
                    Ok(Some(message)) => RunReceived::Message(message),
                    Ok(None) => RunReceived::End,
                    Err(status) => RunReceived::Broken(status.to_string()),
                };
                let last = !matches!(event, RunReceived::Message(_));
                record(event);
                for update in script.take().unwrap_or_default() {
                    let is_error = update.is_err();
                    if sender.send(update).await.is_err() || is_error {
                        break;
                    }
                }
                if last {
                    // The client's side is over: end ours (the sender is dropped).
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

#[tonic::async_trait]
impl Cluster for FakeDaemon {
    async fn nodes(
        &self,
        _request: Request<ClusterNodesRequest>,
    ) -> Result<Response<ClusterNodesResponse>, Status> {
        match self.cluster_nodes.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Nodes")),
        }
    }

    async fn list(
        &self,
        request: Request<ClusterListRequest>,
    ) -> Result<Response<ClusterListResponse>, Status> {
        if let Ok(mut requests) = self.cluster_list_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.cluster_list.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("List")),
        }
    }

    async fn contention(
        &self,
        request: Request<ClusterContentionRequest>,
    ) -> Result<Response<ClusterContentionResponse>, Status> {
        if let Ok(mut requests) = self.cluster_contention_requests.lock() {
            requests.push(request.into_inner());
        }
        match self.cluster_contention.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unimplemented("Contention")),
        }
    }

    async fn register(
        &self,
        _request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Err(Status::unimplemented("Register"))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("Heartbeat"))
    }
}

/// The router of `daemon`: its GpuKill and Cluster services, each recording the metadata of
/// every request into `daemon.received`.
fn router(
    daemon: FakeDaemon,
    builder: &mut tonic::transport::Server,
) -> tonic::transport::server::Router {
    let recorder = |service| Recorder {
        service,
        received: daemon.received.clone(),
    };
    builder
        .add_service(GpuKillServer::with_interceptor(
            daemon.clone(),
            recorder("GpuKill"),
        ))
        .add_service(ClusterServer::with_interceptor(
            daemon.clone(),
            recorder("Cluster"),
        ))
}

/// A running [`FakeDaemon`] on a socket in a temporary directory. It runs on its own runtime,
/// so dropping it ends the fake daemon and every connection to it, like a crash would.
pub struct Served {
    /// The socket path.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `daemon` on a fresh Unix socket.
pub fn serve(daemon: FakeDaemon) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gpukilld.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = {
        let _entered = runtime.enter();
        tokio::net::UnixListener::bind(&socket).expect("bind")
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    runtime.spawn(async move {
        let _ = router(daemon, &mut tonic::transport::Server::builder())
            .serve_with_incoming(incoming)
            .await;
    });
    Served {
        socket,
        _dir: dir,
        runtime: Some(runtime),
    }
}

/// A running [`FakeDaemon`] on TCP, on its own runtime like [`Served`].
pub struct ServedTcp {
    /// The address it listens on (127.0.0.1, a free port).
    pub address: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ServedTcp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `daemon` on 127.0.0.1 (a free port): with TLS when `tls` is given, plain HTTP/2
/// otherwise.
pub fn serve_tcp(daemon: FakeDaemon, tls: Option<tonic::transport::ServerTlsConfig>) -> ServedTcp {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = {
        let _entered = runtime.enter();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(std_listener).expect("listener")
    };
    let address = listener.local_addr().expect("address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("server TLS");
    }
    runtime.spawn(async move {
        let _ = router(daemon, &mut builder)
            .serve_with_incoming(incoming)
            .await;
    });
    ServedTcp {
        address,
        runtime: Some(runtime),
    }
}

/// Runs `gpukillctl --socket SOCKET ARGS...` in process; returns the result, standard
/// output and the notes written to standard error.
pub async fn run_cli(socket: &Path, args: &[&str]) -> (Result<(), crate::Error>, String, String) {
    let socket = socket.to_str().expect("UTF-8 path");
    let argv: Vec<&str> = ["--socket", socket]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run_argv(&argv).await
}

/// Runs `gpukillctl ARGS...` in process; returns the result, standard output and the notes
/// written to standard error.
pub async fn run_argv(args: &[&str]) -> (Result<(), crate::Error>, String, String) {
    use clap::Parser;
    let argv = std::iter::once("gpukillctl").chain(args.iter().copied());
    let cli = crate::Cli::try_parse_from(argv).expect("valid arguments");
    let mut out = crate::Output {
        writer: Vec::new(),
        notes: Vec::new(),
        is_tty: false,
        tz: crate::TimeZone::Utc,
    };
    let result = crate::run(cli, &mut out).await;
    (
        result,
        String::from_utf8(out.writer).expect("UTF-8 output"),
        String::from_utf8(out.notes).expect("UTF-8 notes"),
    )
}

/// Milliseconds since the Unix epoch of a time after it.
pub fn millis(time: std::time::SystemTime) -> i64 {
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    i64::try_from(ms).expect("fits")
}
