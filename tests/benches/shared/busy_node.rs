//! The busy node the spine and Watch benchmarks measure: 8 GPUs x 64 processes on the fake
//! NVML, with every health reading, and the daemon's CPU time per tick.

use std::time::Duration;

use gpukill_proto::v1 as pb;
use serde_json::{Value, json};

use super::support::measure::cpu_ns;
use super::support::{self, Daemon, MIB, Target};

/// GPUs of the node.
pub const GPUS: u32 = 8;
/// Processes on each.
pub const PROCS_PER_GPU: usize = 64;
/// The fake NVML scenario of the node, `targets` being its processes (`GPUS` x
/// `PROCS_PER_GPU`); with `changing`, every process's memory and SM% change each 100 ms tick.
pub fn scenario(targets: &[Target], changing: bool) -> Value {
    let gpus: Vec<Value> = (0..GPUS)
        .map(|gpu| {
            let processes: Vec<Value> = targets
                [gpu as usize * PROCS_PER_GPU..(gpu as usize + 1) * PROCS_PER_GPU]
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    let base = (64 + i as u64) * MIB;
                    let (memory, sm): (Value, Value) = if changing {
                        // New values every 100 ms tick: nothing is shared between snapshots.
                        (
                            json!((0..10).map(|step| base + step * MIB).collect::<Vec<_>>()),
                            json!(
                                (0..10)
                                    .map(|step| (i + step as usize) % 100)
                                    .collect::<Vec<_>>()
                            ),
                        )
                    } else {
                        (json!(base), json!(i % 100))
                    };
                    json!({"pid": target.pid(), "used_memory_bytes": memory,
                           "kind": "compute", "sm_util_pct": sm})
                })
                .collect();
            let mut value = support::full_gpu(gpu, json!(processes));
            value["utilization_gpu_pct"] = json!([10, 20, 30, 40, 50, 60, 70, 80, 90, 99]);
            if with_health() {
                add_health(&mut value);
            }
            value
        })
        .collect();
    json!({"step_ms": 100, "gpus": gpus})
}

/// Whether the node's GPUs have health readings: yes, unless `GPUKILL_BENCH_HEALTH=off`
/// (to measure their cost, or to run against a fake NVML from before them).
fn with_health() -> bool {
    std::env::var("GPUKILL_BENCH_HEALTH").map_or(true, |value| value != "off")
}

/// Every NVIDIA health reading on a GPU of the node, as on a Hopper GPU: ECC counters,
/// retired pages and remapped rows (read every tenth poll), throttle reasons, performance
/// state and PCIe replays (every poll), GPM (two samples a poll apart), and event support
/// (the event thread waits on them, no events come).
fn add_health(gpu: &mut Value) {
    gpu["ecc_aggregate_corrected"] = json!(12);
    gpu["ecc_aggregate_uncorrected"] = json!(0);
    gpu["retired_pages_sbe"] = json!(0);
    gpu["retired_pages_dbe"] = json!(0);
    gpu["retired_pages_pending"] = json!(false);
    gpu["remapped_rows"] =
        json!({"correctable": 1, "uncorrectable": 0, "pending": false, "failure": false});
    gpu["throttle_reasons"] = json!([0, 0, 4, 4, 0, 0, 0, 0, 0, 0]);
    gpu["pstate"] = json!(0);
    gpu["pcie_replay_counter"] = json!(0);
    gpu["gpm"] =
        json!({"graphics_pct": [40, 60], "sm_pct": [35, 55], "tensor_pct": 20, "dram_pct": 30});
    gpu["events"] = json!([]);
}

/// The daemon's Health.
pub async fn health(daemon: &Daemon) -> pb::HealthResponse {
    daemon
        .client()
        .await
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner()
}

/// Daemon CPU per tick over `ticks` ticks, in ms.
pub async fn cpu_per_tick(daemon: &Daemon, ticks: u64) -> f64 {
    let start_seq = health(daemon).await.latest_sequence;
    let start_cpu = cpu_ns(daemon.pid());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seq = health(daemon).await.latest_sequence;
        if seq >= start_seq + ticks {
            let cpu = cpu_ns(daemon.pid()) - start_cpu;
            return cpu as f64 / (seq - start_seq) as f64 / 1e6;
        }
    }
}
