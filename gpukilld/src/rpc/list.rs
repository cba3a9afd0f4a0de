//! `List`: the latest snapshot, at once. It never waits on a vendor. With
//! `PROCESS_VIEW_SUMMARY`, each GPU's processes in brief instead of the list.

use std::time::SystemTime;

use gpukill_proto::v1 as pb;

use super::convert::{self, Filter, ProcessView};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::Ring;

/// Answers `List` from the latest snapshot in `ring`.
pub fn list(
    ring: &Ring,
    _caller: &Caller,
    request: pb::ListRequest,
) -> Result<pb::ListResponse, RpcError> {
    let filter = Filter::try_from(request.filter)?;
    let view = ProcessView::from(request.process_view);
    let latest = ring.latest();
    Ok(pb::ListResponse {
        snapshot: Some(convert::snapshot_as(
            &latest,
            &filter,
            view,
            SystemTime::now(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::procinfo::{Container, ProcessInfo};
    use crate::snapshot::{Gpu, ProcessKind, ProcessSlot, ProcessTable, Vendor, VendorData};

    fn caller() -> Caller {
        crate::authz::tests::local(1000, 1000)
    }

    /// A process of `user` (uid 1000 for alice, 1001 for bob) on `vendor`'s GPU `gpu`.
    fn slot(vendor: Vendor, gpu: u32, pid: u32, user: &str, name: &str) -> ProcessSlot {
        ProcessSlot {
            vendor,
            gpu_index: gpu,
            kind: ProcessKind::Compute,
            info: Arc::new(ProcessInfo {
                pid,
                start_ticks: u64::from(pid),
                start_time: UNIX_EPOCH + Duration::from_secs(u64::from(pid)),
                uid: if user == "alice" { 1000 } else { 1001 },
                user: Arc::from(user),
                name: name.to_owned(),
                cmdline: format!("{name} --run {pid}"),
                container: (name == "jupyter").then(|| Container {
                    id: "c".repeat(64),
                    runtime: "docker",
                    pod_uid: None,
                }),
                exe_name: None,
            }),
        }
    }

    fn gpu(index: u32, error: Option<&str>) -> Gpu {
        Gpu {
            index,
            name: Some(Arc::from("A100")),
            memory_total_bytes: Some(80 << 30),
            error: error.map(str::to_owned),
            ..Gpu::default()
        }
    }

    /// NVIDIA GPUs 0 (busy: a tie on memory, an unknown reading, a pid twice, two users),
    /// 1 (one process of unknown memory) and 2 (lost, no processes); AMD GPU 3 with one
    /// process whose GPU index NVIDIA also has.
    fn ring() -> Ring {
        let mib = |n: u64| Some(n << 20);
        let nvidia = ProcessTable::new(
            [
                (slot(Vendor::Nvidia, 0, 40, "bob", "train"), mib(512), None),
                (
                    slot(Vendor::Nvidia, 0, 30, "alice", "train"),
                    mib(512),
                    None,
                ),
                (slot(Vendor::Nvidia, 0, 20, "alice", "jupyter"), None, None),
                (slot(Vendor::Nvidia, 0, 50, "bob", "infer"), mib(100), None),
                (slot(Vendor::Nvidia, 0, 50, "bob", "infer"), mib(28), None),
                (
                    slot(Vendor::Nvidia, 1, 60, "alice", "render"),
                    None,
                    Some(3),
                ),
            ],
            &ProcessTable::default(),
        );
        let amd = ProcessTable::new(
            [(slot(Vendor::Amd, 3, 70, "bob", "train"), mib(2048), None)],
            &ProcessTable::default(),
        );
        let mut snapshot = crate::ring::tests::snapshot(9);
        snapshot.data = vec![
            (
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(snapshot.taken_at),
                    gpus: vec![gpu(0, None), gpu(1, None), gpu(2, Some("GPU is lost"))],
                    processes: nvidia,
                }),
            ),
            (
                Vendor::Amd,
                Arc::new(VendorData {
                    taken_at: Some(snapshot.taken_at),
                    gpus: vec![gpu(3, None)],
                    processes: amd,
                }),
            ),
        ];
        Ring::new(2, snapshot)
    }

    /// The answer to List with `filter` and `view`, its age set to 0 (it counts the
    /// milliseconds since the test's snapshot, so two answers may differ there).
    fn ask(ring: &Ring, filter: pb::SnapshotFilter, view: pb::ProcessView) -> pb::Snapshot {
        let answer = list(
            ring,
            &caller(),
            pb::ListRequest {
                filter: Some(filter),
                process_view: view.into(),
            },
        )
        .expect("List")
        .snapshot
        .expect("a snapshot");
        pb::Snapshot {
            age_ms: 0,
            ..answer
        }
    }

    /// (count, memory, top pid) of each GPU's summary.
    fn summaries(snapshot: &pb::Snapshot) -> Vec<(u32, Option<u64>, Option<u32>)> {
        snapshot
            .gpus
            .iter()
            .map(|gpu| {
                let summary = gpu.process_summary.as_ref().expect("a summary");
                (
                    summary.process_count,
                    summary.used_memory_bytes,
                    summary.top_process.as_ref().map(|top| top.pid),
                )
            })
            .collect()
    }

    /// The summaries a reader of the full list works out: distinct pids, the sum of the
    /// known readings, the top process as gpukillctl's `render::top_process` picks it.
    fn counted(snapshot: &pb::Snapshot) -> Vec<(u32, Option<u64>, Option<u32>)> {
        snapshot
            .gpus
            .iter()
            .map(|gpu| {
                let on: Vec<&pb::GpuProcess> = snapshot
                    .processes
                    .iter()
                    .filter(|p| p.vendor == gpu.vendor && p.gpu_index == gpu.index)
                    .collect();
                let mut pids: Vec<u32> = on.iter().map(|p| p.pid).collect();
                pids.sort_unstable();
                pids.dedup();
                let known: Vec<u64> = on.iter().filter_map(|p| p.used_memory_bytes).collect();
                let top = on.iter().min_by(|a, b| {
                    b.used_memory_bytes
                        .cmp(&a.used_memory_bytes)
                        .then(a.pid.cmp(&b.pid))
                });
                (
                    u32::try_from(pids.len()).unwrap(),
                    (!known.is_empty()).then(|| known.iter().sum()),
                    top.map(|p| p.pid),
                )
            })
            .collect()
    }

    #[test]
    fn a_summary_counts_what_the_full_list_holds_under_every_filter() {
        let ring = ring();
        let filters = [
            pb::SnapshotFilter::default(),
            pb::SnapshotFilter {
                user: Some("alice".to_owned()),
                ..Default::default()
            },
            pb::SnapshotFilter {
                user: Some("1001".to_owned()),
                ..Default::default()
            },
            pb::SnapshotFilter {
                process_regex: Some("^train".to_owned()),
                ..Default::default()
            },
            pb::SnapshotFilter {
                containers_only: true,
                ..Default::default()
            },
            pb::SnapshotFilter {
                vendor: pb::Vendor::Amd.into(),
                ..Default::default()
            },
            pb::SnapshotFilter {
                process_regex: Some("nothing matches this".to_owned()),
                ..Default::default()
            },
        ];
        for filter in filters {
            let full = ask(&ring, filter.clone(), pb::ProcessView::Unspecified);
            let listed = ask(&ring, filter.clone(), pb::ProcessView::List);
            assert_eq!(full, listed, "{filter:?}");
            let summary = ask(&ring, filter.clone(), pb::ProcessView::Summary);
            assert!(summary.processes.is_empty(), "{filter:?}");
            assert_eq!(summaries(&summary), counted(&full), "{filter:?}");
            // The rest is the full answer's, GPU for GPU, the summaries aside.
            assert!(full.gpus.iter().all(|gpu| gpu.process_summary.is_none()));
            let mut plain = summary.clone();
            for gpu in &mut plain.gpus {
                gpu.process_summary = None;
            }
            assert_eq!(
                plain,
                pb::Snapshot {
                    processes: Vec::new(),
                    ..full.clone()
                },
                "{filter:?}"
            );
            // The top process is the full list's, field for field.
            for gpu in &summary.gpus {
                let top = gpu
                    .process_summary
                    .as_ref()
                    .and_then(|s| s.top_process.as_ref());
                if let Some(top) = top {
                    assert!(full.processes.contains(top), "{top:?}");
                }
            }
        }
    }

    #[test]
    fn summaries_rank_by_known_memory_then_pid_and_count_pids_once() {
        let ring = ring();
        let mib = |n: u64| Some(n << 20);
        let all = ask(
            &ring,
            pb::SnapshotFilter::default(),
            pb::ProcessView::Summary,
        );
        assert_eq!(
            summaries(&all),
            [
                // Two at 512 MiB: the lower pid; pid 50 twice counts once, its memory twice.
                (4, mib(512 + 512 + 100 + 28), Some(30)),
                // Unknown memory only: still a top process, and no memory sum.
                (1, None, Some(60)),
                // Lost and idle.
                (0, None, None),
                (1, mib(2048), Some(70)),
            ]
        );
        let top = all.gpus[0]
            .process_summary
            .as_ref()
            .and_then(|s| s.top_process.as_ref())
            .expect("a top process");
        assert_eq!((top.user.as_str(), top.name.as_str()), ("alice", "train"));
        // The filter applies before the summary: bob's processes only.
        let bob = ask(
            &ring,
            pb::SnapshotFilter {
                user: Some("bob".to_owned()),
                vendor: pb::Vendor::Nvidia.into(),
                ..Default::default()
            },
            pb::ProcessView::Summary,
        );
        assert_eq!(
            summaries(&bob),
            [
                (2, mib(512 + 128), Some(40)),
                (0, None, None),
                (0, None, None)
            ]
        );
    }

    #[test]
    fn a_view_this_daemon_does_not_know_gets_the_full_list() {
        let ring = ring();
        let answer = list(
            &ring,
            &caller(),
            pb::ListRequest {
                filter: None,
                process_view: 99,
            },
        )
        .expect("List")
        .snapshot
        .expect("a snapshot");
        assert_eq!(answer.processes.len(), 7);
        assert!(answer.gpus.iter().all(|gpu| gpu.process_summary.is_none()));
    }
}
