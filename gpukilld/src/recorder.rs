//! Turns the stream of snapshots into history rows: one row per GPU per `persist_interval`
//! (means over the ticks in it, and maxima, so peaks between rows are not lost) and one
//! update per process session (pid, start time, GPU) with what the interval added to it.
//! Pure bookkeeping: the store writes the batches.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::snapshot::Snapshot;
use crate::store::{GpuSampleRow, HistoryBatch, SessionUpdate, unix_ms};

/// Sum, count and maximum of one metric over an interval.
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    sum: f64,
    count: u32,
    max: Option<f64>,
}

impl Stat {
    fn add(&mut self, value: Option<f64>) {
        if let Some(value) = value {
            self.sum += value;
            self.count += 1;
            self.max = Some(self.max.map_or(value, |max| max.max(value)));
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / f64::from(self.count))
    }
}

#[derive(Debug, Default)]
struct GpuAccumulator {
    uuid: Option<String>,
    pci_bus_id: Option<String>,
    name: Option<String>,
    ticks: u32,
    util: Stat,
    mem_util: Stat,
    mem_used: Stat,
    mem_total: Option<u64>,
    temp: Stat,
    power: Stat,
    fan: Stat,
    sm_clock: Stat,
    mem_clock: Stat,
}

#[derive(Debug)]
struct SessionAccumulator {
    update: SessionUpdate,
}

type SessionKey = (u32, i64, u32);

/// Aggregates snapshots into persist intervals aligned on multiples of the interval.
#[derive(Debug)]
pub struct Recorder {
    interval_ms: i64,
    current: Option<i64>,
    gpus: BTreeMap<u32, GpuAccumulator>,
    sessions: HashMap<SessionKey, SessionAccumulator>,
    /// The last snapshot counted: one seen twice is counted once.
    last_sequence: Option<u64>,
}

impl Recorder {
    /// A recorder writing one row per `persist_interval`.
    pub fn new(persist_interval: Duration) -> Self {
        Self {
            interval_ms: i64::try_from(persist_interval.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            current: None,
            gpus: BTreeMap::new(),
            sessions: HashMap::new(),
            last_sequence: None,
        }
    }

    /// Adds one snapshot. Returns the previous interval's batch when this snapshot starts a
    /// new interval. Data a hung vendor repeats from an earlier tick is not counted again.
    pub fn push(&mut self, snapshot: &Snapshot) -> Option<HistoryBatch> {
        if self
            .last_sequence
            .is_some_and(|last| snapshot.sequence <= last)
        {
            return None;
        }
        self.last_sequence = Some(snapshot.sequence);
        let now_ms = unix_ms(snapshot.taken_at);
        let interval = now_ms - now_ms.rem_euclid(self.interval_ms);
        let finished = match self.current {
            Some(current) if current != interval => self.flush(),
            _ => None,
        };
        self.current = Some(interval);
        let tick_seconds = snapshot.poll_interval.as_secs_f64();
        for (_, data) in &snapshot.data {
            // GPU indices are host-wide (across vendors), so they key the rows on their own.
            if data.taken_at != Some(snapshot.taken_at) {
                continue;
            }
            for gpu in &data.gpus {
                let acc = self.gpus.entry(gpu.index).or_default();
                acc.uuid = gpu.uuid.as_deref().map(str::to_string).or(acc.uuid.take());
                acc.pci_bus_id = gpu
                    .pci_bus_id
                    .as_deref()
                    .map(str::to_string)
                    .or(acc.pci_bus_id.take());
                acc.name = gpu.name.as_deref().map(str::to_string).or(acc.name.take());
                acc.ticks += 1;
                acc.util.add(gpu.utilization_gpu_pct.map(f64::from));
                acc.mem_util.add(gpu.utilization_memory_pct.map(f64::from));
                acc.mem_used.add(gpu.memory_used_bytes.map(|b| b as f64));
                acc.mem_total = gpu.memory_total_bytes.or(acc.mem_total);
                acc.temp.add(gpu.temperature_c.map(f64::from));
                acc.power.add(gpu.power_mw.map(f64::from));
                acc.fan.add(gpu.fan_speed_pct.map(f64::from));
                acc.sm_clock.add(gpu.clock_sm_mhz.map(f64::from));
                acc.mem_clock.add(gpu.clock_mem_mhz.map(f64::from));
            }
            for process in data.processes.iter() {
                let info = &process.slot.info;
                let start_ms = unix_ms(info.start_time);
                let key = (info.pid, start_ms, process.slot.gpu_index);
                let memory = process.used_memory_bytes;
                let utilization = process.sm_utilization_pct;
                let acc = self
                    .sessions
                    .entry(key)
                    .or_insert_with(|| SessionAccumulator {
                        update: SessionUpdate {
                            pid: info.pid,
                            start_time_ms: start_ms,
                            gpu_index: process.slot.gpu_index,
                            first_seen_ms: now_ms,
                            last_seen_ms: now_ms,
                            uid: info.uid,
                            user: info.user.to_string(),
                            name: info.name.clone(),
                            cmdline: info.cmdline.clone(),
                            container_id: info.container.as_ref().map(|c| c.id.clone()),
                            container_runtime: info
                                .container
                                .as_ref()
                                .map(|c| c.runtime.to_string()),
                            pod_uid: info.container.as_ref().and_then(|c| c.pod_uid.clone()),
                            peak_memory_bytes: None,
                            memory_byte_seconds: 0.0,
                            gpu_seconds: 0.0,
                            util_seconds: None,
                        },
                    });
                let update = &mut acc.update;
                update.last_seen_ms = now_ms;
                update.gpu_seconds += tick_seconds;
                if let Some(bytes) = memory {
                    update.peak_memory_bytes =
                        Some(update.peak_memory_bytes.map_or(bytes, |p| p.max(bytes)));
                    update.memory_byte_seconds += bytes as f64 * tick_seconds;
                }
                if let Some(pct) = utilization {
                    *update.util_seconds.get_or_insert(0.0) +=
                        f64::from(pct) / 100.0 * tick_seconds;
                }
            }
        }
        finished
    }

    /// Ends the current interval and returns its batch (at shutdown, or when the next
    /// interval starts). `None` when nothing was recorded.
    pub fn flush(&mut self) -> Option<HistoryBatch> {
        let interval = self.current.take()?;
        let samples: Vec<GpuSampleRow> = std::mem::take(&mut self.gpus)
            .into_iter()
            .map(|(index, acc)| GpuSampleRow {
                time_ms: interval,
                gpu_index: index,
                uuid: acc.uuid,
                pci_bus_id: acc.pci_bus_id,
                name: acc.name,
                ticks: acc.ticks,
                util_mean: acc.util.mean(),
                util_max: acc.util.max.map(|v| v as u32),
                mem_util_mean: acc.mem_util.mean(),
                mem_used_max: acc.mem_used.max.map(|v| v as u64),
                mem_total: acc.mem_total,
                temp_mean: acc.temp.mean(),
                temp_max: acc.temp.max.map(|v| v as i32),
                power_mean_mw: acc.power.mean(),
                power_max_mw: acc.power.max.map(|v| v as u32),
                fan_mean: acc.fan.mean(),
                sm_clock_mean: acc.sm_clock.mean(),
                mem_clock_mean: acc.mem_clock.mean(),
            })
            .collect();
        let mut sessions: Vec<SessionUpdate> = std::mem::take(&mut self.sessions)
            .into_values()
            .map(|acc| acc.update)
            .collect();
        sessions.sort_by_key(|s| (s.gpu_index, s.pid, s.start_time_ms));
        (!samples.is_empty() || !sessions.is_empty()).then_some(HistoryBatch { samples, sessions })
    }
}

/// Feeds every snapshot of `ring` to `recorder` and hands finished intervals to the store,
/// until `stop` turns true (then the open interval is handed over too).
pub async fn run(
    mut recorder: Recorder,
    ring: std::sync::Arc<crate::ring::Ring>,
    store: std::sync::Arc<crate::store::Database>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut updates = ring.updates();
    // The snapshot published before we subscribed (the daemon's first tick) counts too; the
    // recorder skips it if it also arrives through `updates`.
    if let Some(batch) = recorder.push(&ring.latest()) {
        store.record_history(batch);
    }
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(snapshot) => {
                    if let Some(batch) = recorder.push(&snapshot) {
                        store.record_history(batch);
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    ring.record_lag(skipped);
                    tracing::warn!(skipped, "history recorder fell behind; ticks not recorded");
                }
                Err(RecvError::Closed) => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    if let Some(batch) = recorder.flush() {
        store.record_history(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procinfo::ProcessInfo;
    use crate::snapshot::{Gpu, ProcessKind, ProcessSlot, ProcessTable, Vendor, VendorData};
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    const START: u64 = 1_700_000_000_000; // a multiple of 10 s, in ms

    fn info() -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid: 4242,
            start_ticks: 7,
            start_time: UNIX_EPOCH + Duration::from_millis(START - 60_000),
            uid: 1000,
            user: Arc::from("alice"),
            name: "python3".into(),
            cmdline: "python3 train.py".into(),
            container: None,
            exe_name: None,
        })
    }

    /// A snapshot at START + offset_ms with GPU 0 at `util`% and one process using `mib`.
    fn snapshot(
        offset_ms: u64,
        util: u32,
        temp: Option<i32>,
        mib: u64,
        sm: Option<u32>,
    ) -> Snapshot {
        let taken_at = UNIX_EPOCH + Duration::from_millis(START + offset_ms);
        let slot = ProcessSlot {
            vendor: Vendor::Nvidia,
            gpu_index: 0,
            kind: ProcessKind::Compute,
            info: info(),
        };
        let processes = ProcessTable::new([(slot, Some(mib << 20), sm)], &ProcessTable::default());
        Snapshot {
            host: Arc::from("node"),
            taken_at,
            sequence: offset_ms,
            vendors: Vec::new(),
            data: vec![(
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(taken_at),
                    gpus: vec![Gpu {
                        index: 0,
                        uuid: Some(Arc::from("GPU-0")),
                        utilization_gpu_pct: Some(util),
                        temperature_c: temp,
                        memory_used_bytes: Some(mib << 20),
                        memory_total_bytes: Some(80 << 30),
                        ..Gpu::default()
                    }],
                    processes,
                }),
            )],
            tick_duration: Duration::ZERO,
            poll_interval: Duration::from_secs(2),
        }
    }

    #[test]
    fn means_and_maxima_over_an_interval_are_exact() {
        let mut recorder = Recorder::new(Duration::from_secs(10));
        let ticks = [
            (0, 10, Some(40), 100, Some(50)),
            (2_000, 30, None, 300, None),
            (4_000, 95, Some(44), 200, Some(10)),
        ];
        for (offset, util, temp, mib, sm) in ticks {
            assert_eq!(recorder.push(&snapshot(offset, util, temp, mib, sm)), None);
        }
        // The first tick of the next interval closes this one.
        let batch = recorder
            .push(&snapshot(10_000, 0, None, 0, None))
            .expect("closed interval");
        let row = &batch.samples[0];
        assert_eq!(row.time_ms, START as i64);
        assert_eq!(row.ticks, 3);
        assert_eq!(row.util_mean, Some(45.0));
        assert_eq!(row.util_max, Some(95));
        assert_eq!(
            row.temp_mean,
            Some(42.0),
            "absent readings are not counted as 0"
        );
        assert_eq!(row.temp_max, Some(44));
        assert_eq!(row.mem_used_max, Some(300 << 20));
        assert_eq!(row.power_mean_mw, None);

        let session = &batch.sessions[0];
        assert_eq!((session.pid, session.gpu_index), (4242, 0));
        assert_eq!(session.first_seen_ms, START as i64);
        assert_eq!(session.last_seen_ms, START as i64 + 4_000);
        assert_eq!(session.gpu_seconds, 6.0);
        assert_eq!(session.peak_memory_bytes, Some(300 << 20));
        assert_eq!(
            session.memory_byte_seconds,
            ((100 + 300 + 200) << 20) as f64 * 2.0
        );
        assert_eq!(session.util_seconds, Some((0.5 + 0.1) * 2.0));

        let last = recorder.flush().expect("the open interval");
        assert_eq!(last.samples[0].time_ms, START as i64 + 10_000);
        assert_eq!(recorder.flush(), None);
    }

    #[test]
    fn a_snapshot_seen_twice_is_counted_once() {
        let mut recorder = Recorder::new(Duration::from_secs(10));
        let tick = snapshot(0, 50, Some(40), 100, None);
        recorder.push(&tick);
        recorder.push(&tick);
        let batch = recorder.flush().expect("batch");
        assert_eq!(batch.samples[0].ticks, 1);
        assert_eq!(batch.sessions[0].gpu_seconds, 2.0);
    }

    #[test]
    fn data_repeated_by_a_hung_vendor_is_not_counted_again() {
        let mut recorder = Recorder::new(Duration::from_secs(10));
        let fresh = snapshot(0, 50, Some(40), 100, None);
        recorder.push(&fresh);
        let mut stale = snapshot(2_000, 99, Some(99), 999, None);
        stale.data = fresh.data.clone();
        recorder.push(&stale);
        let batch = recorder.flush().expect("batch");
        assert_eq!(batch.samples[0].ticks, 1);
        assert_eq!(batch.samples[0].util_max, Some(50));
        assert_eq!(batch.sessions[0].gpu_seconds, 2.0);
    }
}
