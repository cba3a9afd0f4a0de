//! The poll loop: every `poll_interval`, ask each vendor backend (on its own thread) for its
//! GPUs, ask /proc (on its own thread) about exactly the PIDs the vendors reported, and
//! publish one immutable [`Snapshot`] to the ring.

pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::procinfo::{ProcReader, ProcessInfo};
use crate::ring::Ring;
use crate::snapshot::{
    ProcessSlot, ProcessTable, Snapshot, Vendor, VendorData, VendorProcess, VendorState,
    VendorStatus,
};
use crate::vendor::{Backend, GpuReading, Reading};
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

struct BackendSlot {
    vendor: Vendor,
    worker: Worker<(), Reading>,
    data: Arc<VendorData>,
    status: VendorStatus,
}

/// The sampler: owns the backends' threads and produces snapshots.
pub struct Sampler {
    host: Arc<str>,
    timing: Timing,
    slots: Vec<BackendSlot>,
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
        let mut slots = Vec::with_capacity(backends.len());
        for mut backend in backends {
            let vendor = backend.vendor();
            let worker = Worker::spawn(format!("gpukill-{}", vendor.name()), move |()| {
                backend.poll()
            })?;
            slots.push(BackendSlot {
                vendor,
                worker,
                data: Arc::new(VendorData::default()),
                status: VendorStatus {
                    vendor,
                    state: VendorState::Error("not polled yet".to_string()),
                    driver_version: None,
                    last_success: None,
                },
            });
        }
        let mut proc_reader = proc_reader;
        let procs = Worker::spawn("gpukill-procinfo", move |pids: Vec<u32>| {
            proc_reader.lookup(&pids)
        })?;
        Ok(Self {
            host,
            timing,
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
        for slot in &mut self.slots {
            slot.worker.submit(|| ());
        }
        let mut fresh: Vec<(usize, Vec<GpuReading>)> = Vec::new();
        for (position, slot) in self.slots.iter_mut().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match slot.worker.wait(remaining).await {
                Outcome::Done(Reading::Ok {
                    driver_version,
                    gpus,
                }) => {
                    slot.status.state = VendorState::Ok;
                    slot.status.driver_version = driver_version;
                    slot.status.last_success = Some(taken_at);
                    fresh.push((position, gpus));
                }
                Outcome::Done(Reading::Failed(message)) => {
                    slot.status.state = VendorState::Error(message);
                    slot.data = Arc::new(VendorData {
                        taken_at: Some(taken_at),
                        ..VendorData::default()
                    });
                }
                Outcome::Failed => {
                    slot.status.state =
                        VendorState::Error(format!("{} backend panicked", slot.vendor.name()));
                    slot.data = Arc::new(VendorData {
                        taken_at: Some(taken_at),
                        ..VendorData::default()
                    });
                }
                Outcome::Pending { since } => {
                    if !matches!(slot.status.state, VendorState::Hung { .. }) {
                        tracing::warn!(vendor = slot.vendor.name(), "vendor call is hung");
                    }
                    slot.status.state = VendorState::Hung { since };
                }
            }
        }
        self.join_processes(fresh, taken_at, deadline).await;
        self.sequence += 1;
        Snapshot {
            host: Arc::clone(&self.host),
            taken_at,
            sequence: self.sequence,
            vendors: self.slots.iter().map(|slot| slot.status.clone()).collect(),
            data: self
                .slots
                .iter()
                .map(|slot| (slot.vendor, Arc::clone(&slot.data)))
                .collect(),
            tick_duration: started.elapsed(),
            poll_interval: self.timing.poll_interval,
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
