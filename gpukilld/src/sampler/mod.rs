//! The poll loop: every `poll_interval`, ask each vendor backend (on its own thread) for its
//! GPUs, ask /proc (on its own thread) about exactly the PIDs the vendors reported, and
//! publish one immutable [`Snapshot`] to the ring.

pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::backends::{Backend, GpuReading, Reading};
use crate::procinfo::{ProcReader, ProcessInfo};
use crate::ring::Ring;
use crate::snapshot::{
    ProcessSlot, ProcessTable, Snapshot, Vendor, VendorData, VendorProcess, VendorState,
    VendorStatus,
};
use worker::{Outcome, Worker};

type ProcLookup = Worker<Vec<u32>, HashMap<u32, Arc<ProcessInfo>>>;

/// Timing of the poll loop.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time between ticks.
    pub poll_interval: Duration,
    /// How long a tick waits for a vendor (or /proc) before publishing stale data.
    pub call_timeout: Duration,
}

/// One vendor's part of the snapshot.
struct VendorSlot {
    vendor: Vendor,
    data: Arc<VendorData>,
    status: VendorStatus,
    /// Whether the vendor has devices on this host (see [`Reading::Absent`]).
    present: bool,
    /// The most GPUs this vendor has had since the daemon started: the next vendor's
    /// host-wide indices start after them, so they do not shift when this vendor fails.
    most_gpus: u32,
}

/// A backend's thread and the vendor slots it answers for.
struct BackendWorker {
    worker: Worker<(), Vec<Reading>>,
    slots: Vec<usize>,
}

/// The sampler: owns the backends' threads and produces snapshots.
pub struct Sampler {
    host: Arc<str>,
    timing: Timing,
    workers: Vec<BackendWorker>,
    /// Ordered by vendor (NVIDIA, AMD, Intel, Apple): the order of host-wide GPU indices.
    slots: Vec<VendorSlot>,
    procs: ProcLookup,
    sequence: u64,
}

impl Sampler {
    /// Starts one thread per backend and one for /proc reads.
    pub fn new(
        host: Arc<str>,
        timing: Timing,
        backends: Vec<Box<dyn Backend>>,
        proc_reader: ProcReader,
    ) -> std::io::Result<Self> {
        let mut vendors: Vec<Vendor> = backends.iter().flat_map(|b| b.vendors()).collect();
        vendors.sort();
        vendors.dedup();
        let slots: Vec<VendorSlot> = vendors
            .iter()
            .map(|&vendor| VendorSlot {
                vendor,
                data: Arc::new(VendorData::default()),
                status: VendorStatus {
                    vendor,
                    state: VendorState::Error("not polled yet".to_string()),
                    driver_version: None,
                    cuda_version: None,
                    last_success: None,
                },
                present: true,
                most_gpus: 0,
            })
            .collect();
        let mut workers = Vec::with_capacity(backends.len());
        for mut backend in backends {
            let answers = backend.vendors();
            let name = answers
                .iter()
                .map(|vendor| vendor.name())
                .collect::<Vec<_>>()
                .join("-");
            let worker = Worker::spawn(format!("gpukill-{name}"), move |()| backend.poll())?;
            let positions = answers
                .iter()
                .filter_map(|vendor| vendors.iter().position(|v| v == vendor))
                .collect();
            workers.push(BackendWorker {
                worker,
                slots: positions,
            });
        }
        let mut proc_reader = proc_reader;
        let procs = Worker::spawn("gpukill-procinfo", move |pids: Vec<u32>| {
            proc_reader.lookup(&pids)
        })?;
        Ok(Self {
            host,
            timing,
            workers,
            slots,
            procs,
            sequence: 0,
        })
    }

    /// Runs one tick and returns its snapshot.
    pub async fn tick(&mut self) -> Snapshot {
        let started = Instant::now();
        let taken_at = SystemTime::now();
        let deadline = started + self.timing.call_timeout;
        for backend in &mut self.workers {
            backend.worker.submit(|| ());
        }
        let mut fresh: Vec<(usize, Vec<GpuReading>)> = Vec::new();
        for backend in &mut self.workers {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut readings = match backend.worker.wait(remaining).await {
                Outcome::Done(readings) => readings.into_iter(),
                Outcome::Pending { since } => {
                    for &position in &backend.slots {
                        self.slots[position].record(Outcome::Pending { since }, taken_at);
                    }
                    continue;
                }
                Outcome::Failed => Vec::new().into_iter(),
            };
            for &position in &backend.slots {
                // A backend that panicked (or answered fewer vendors) fails the rest.
                let outcome = readings.next().map_or(Outcome::Failed, Outcome::Done);
                if let Some(gpus) = self.slots[position].record(outcome, taken_at) {
                    fresh.push((position, gpus));
                }
            }
        }
        self.number_gpus(&mut fresh);
        self.join_processes(fresh, taken_at, deadline).await;
        self.sequence += 1;
        let present = || self.slots.iter().filter(|slot| slot.present);
        Snapshot {
            host: Arc::clone(&self.host),
            taken_at,
            sequence: self.sequence,
            vendors: present().map(|slot| slot.status.clone()).collect(),
            data: present()
                .map(|slot| (slot.vendor, Arc::clone(&slot.data)))
                .collect(),
            tick_duration: started.elapsed(),
            poll_interval: self.timing.poll_interval,
        }
    }

    /// Gives each fresh GPU its host-wide index: the vendor's own index, after the GPUs
    /// of the vendors before it (as many as each has had at most).
    fn number_gpus(&mut self, fresh: &mut [(usize, Vec<GpuReading>)]) {
        for (position, gpus) in fresh.iter() {
            let count = gpus.iter().map(|g| g.gpu.index + 1).max().unwrap_or(0);
            let slot = &mut self.slots[*position];
            slot.most_gpus = slot.most_gpus.max(count);
        }
        for (position, gpus) in fresh.iter_mut() {
            let offset: u32 = self.slots[..*position].iter().map(|s| s.most_gpus).sum();
            for reading in gpus.iter_mut() {
                reading.gpu.vendor_index = reading.gpu.index;
                reading.gpu.index = offset + reading.gpu.vendor_index;
            }
        }
    }

    /// Joins fresh vendor readings with /proc and stores them as the vendors' new data.
    async fn join_processes(
        &mut self,
        fresh: Vec<(usize, Vec<GpuReading>)>,
        taken_at: SystemTime,
        deadline: Instant,
    ) {
        if fresh.is_empty() {
            return;
        }
        let pids: Vec<u32> = fresh
            .iter()
            .flat_map(|(_, gpus)| gpus.iter())
            .flat_map(|gpu| gpu.processes.iter().map(|p| p.pid))
            .collect();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let infos = match self.procs.call(|| pids, remaining.max(MIN_PROC_WAIT)).await {
            Outcome::Done(infos) => Some(infos),
            Outcome::Pending { .. } | Outcome::Failed => {
                tracing::warn!("reading /proc did not finish in time; keeping last processes");
                None
            }
        };
        for (position, gpus) in fresh {
            let slot = &mut self.slots[position];
            let processes = match &infos {
                Some(infos) => {
                    ProcessTable::new(join(slot.vendor, &gpus, infos), &slot.data.processes)
                }
                None => slot.data.processes.clone(),
            };
            slot.data = Arc::new(VendorData {
                taken_at: Some(taken_at),
                gpus: gpus.into_iter().map(|reading| reading.gpu).collect(),
                processes,
            });
        }
    }

    /// Runs ticks every poll interval, publishing to `ring`, until `shutdown` turns true.
    pub async fn run(mut self, ring: Arc<Ring>, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.timing.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval fires at once; the caller already took that tick.
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let snapshot = self.tick().await;
            ring.push(snapshot);
        }
        tracing::debug!("sampler stopped");
    }
}

/// Reading /proc for a few hundred PIDs takes milliseconds; even when a vendor used up the
/// tick's budget, give it this long.
const MIN_PROC_WAIT: Duration = Duration::from_millis(200);

/// Pairs each process a vendor reported with what /proc says of it.
fn join<'a>(
    vendor: Vendor,
    gpus: &'a [GpuReading],
    infos: &'a HashMap<u32, Arc<ProcessInfo>>,
) -> impl Iterator<Item = (ProcessSlot, Option<u64>, Option<u32>)> + 'a {
    gpus.iter().flat_map(move |reading| {
        reading
            .processes
            .iter()
            .filter_map(move |process: &VendorProcess| {
                // A process that exited between the vendor call and /proc is dropped.
                let info = infos.get(&process.pid)?;
                let slot = ProcessSlot {
                    vendor,
                    gpu_index: reading.gpu.index,
                    kind: process.kind,
                    info: Arc::clone(info),
                };
                Some((slot, process.used_memory_bytes, process.sm_utilization_pct))
            })
    })
}

impl VendorSlot {
    /// Records how the vendor's poll went; returns its GPUs when it answered.
    fn record(
        &mut self,
        outcome: Outcome<Reading>,
        taken_at: SystemTime,
    ) -> Option<Vec<GpuReading>> {
        self.present = true;
        let failure = match outcome {
            Outcome::Done(Reading::Ok {
                driver_version,
                cuda_version,
                gpus,
            }) => {
                self.status.state = VendorState::Ok;
                self.status.driver_version = driver_version;
                self.status.cuda_version = cuda_version;
                self.status.last_success = Some(taken_at);
                return Some(gpus);
            }
            Outcome::Done(Reading::Absent) => {
                self.present = false;
                self.status.state = VendorState::Ok;
                self.status.last_success = Some(taken_at);
                None
            }
            Outcome::Done(Reading::Failed(message)) => Some(message),
            Outcome::Failed => Some(format!("{} backend panicked", self.vendor.name())),
            Outcome::Pending { since } => {
                if !matches!(self.status.state, VendorState::Hung { .. }) {
                    tracing::warn!(vendor = self.vendor.name(), "vendor call is hung");
                }
                self.status.state = VendorState::Hung { since };
                return None;
            }
        };
        if let Some(message) = failure {
            self.status.state = VendorState::Error(message);
        }
        self.data = Arc::new(VendorData {
            taken_at: Some(taken_at),
            ..VendorData::default()
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Gpu;
    use std::sync::Mutex;

    /// A backend that answers from a shared script: per call, one reading per vendor.
    struct Scripted {
        vendors: Vec<Vendor>,
        next: Arc<Mutex<Vec<Reading>>>,
    }

    impl Backend for Scripted {
        fn vendors(&self) -> Vec<Vendor> {
            self.vendors.clone()
        }
        fn poll(&mut self) -> Vec<Reading> {
            self.next
                .lock()
                .map(|next| next.clone())
                .unwrap_or_default()
        }
    }

    fn gpus(count: u32) -> Reading {
        Reading::Ok {
            driver_version: None,
            cuda_version: None,
            gpus: (0..count)
                .map(|index| GpuReading {
                    gpu: Gpu {
                        index,
                        ..Gpu::default()
                    },
                    processes: Vec::new(),
                    ..GpuReading::default()
                })
                .collect(),
        }
    }

    fn numbering(snapshot: &Snapshot) -> Vec<(Vendor, u32, u32)> {
        snapshot
            .gpus()
            .map(|(vendor, gpu)| (vendor, gpu.index, gpu.vendor_index))
            .collect()
    }

    #[tokio::test]
    async fn gpus_are_numbered_across_vendors_and_keep_their_index_when_one_fails() {
        let nvidia = Arc::new(Mutex::new(vec![gpus(2)]));
        let drm = Arc::new(Mutex::new(vec![gpus(1), Reading::Absent]));
        let backends: Vec<Box<dyn Backend>> = vec![
            // Given in the other order: the numbering follows the vendor, not the backend.
            Box::new(Scripted {
                vendors: vec![Vendor::Amd, Vendor::Intel],
                next: Arc::clone(&drm),
            }),
            Box::new(Scripted {
                vendors: vec![Vendor::Nvidia],
                next: Arc::clone(&nvidia),
            }),
        ];
        let timing = Timing {
            poll_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
        };
        let mut sampler = Sampler::new(
            Arc::from("host"),
            timing,
            backends,
            ProcReader::new("/proc").expect("procfs"),
        )
        .expect("sampler");
        let first = sampler.tick().await;
        assert_eq!(
            numbering(&first),
            vec![
                (Vendor::Nvidia, 0, 0),
                (Vendor::Nvidia, 1, 1),
                (Vendor::Amd, 2, 0)
            ]
        );
        // Intel has no device: no status, no data.
        let vendors: Vec<Vendor> = first.vendors.iter().map(|s| s.vendor).collect();
        assert_eq!(vendors, vec![Vendor::Nvidia, Vendor::Amd]);

        // NVML fails: AMD's GPU keeps index 2, so a reservation or `kill --gpu 2` still
        // means the same GPU.
        *nvidia.lock().expect("lock") = vec![Reading::Failed("driver gone".into())];
        let second = sampler.tick().await;
        assert_eq!(numbering(&second), vec![(Vendor::Amd, 2, 0)]);
        assert_eq!(
            second.vendors[0].state,
            VendorState::Error("driver gone".into())
        );
    }
}
