//! The NVML event thread of one NVML session: it registers every GPU's supported Xid,
//! ECC, clock and performance-state events in one event set and waits on it (at most
//! [`WAIT_MS`] at a time, so a stop is seen promptly), putting each Xid and ECC event in a
//! bounded per-GPU queue that the next poll drains. It never runs on the sampler's thread,
//! and a poll only takes the queue's lock for as long as a swap takes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::event::EventData;
use nvml_wrapper::{EventSet, Nvml};

use crate::health::{Xid, xid};

/// The longest one wait on the event set lasts: the thread sees a stop within this.
pub const WAIT_MS: u32 = 250;

/// Xids kept per GPU between two polls; beyond, the oldest are dropped and counted.
pub const XID_QUEUE: usize = 1024;

/// How long dropping the thread waits for it to end before leaving it behind.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The thread's name (as `/proc/self/task/*/comm` shows it).
pub const THREAD_NAME: &str = "gpukill-nvmlevt";

/// The event types registered, where the GPU supports them.
fn wanted() -> EventTypes {
    EventTypes::CRITICAL_XID_ERROR
        | EventTypes::SINGLE_BIT_ECC_ERROR
        | EventTypes::DOUBLE_BIT_ECC_ERROR
        | EventTypes::CLOCK_CHANGE
        | EventTypes::PSTATE_CHANGE
}

/// What one GPU's events left for the next poll.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Xids, oldest first.
    pub(super) xids: Vec<Xid>,
    /// An ECC event came: its counters moved.
    pub(super) ecc: bool,
}

#[derive(Debug, Default)]
struct Queue {
    xids: VecDeque<Xid>,
    ecc: bool,
}

/// The events waiting for the next poll, per NVML GPU index.
#[derive(Debug, Default)]
pub(super) struct EventQueues {
    gpus: Mutex<BTreeMap<u32, Queue>>,
    dropped: AtomicU64,
}

impl EventQueues {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Queue>> {
        self.gpus.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an Xid of GPU `index`; a full queue drops its oldest (counted). Returns
    /// whether one was dropped.
    fn push_xid(&self, index: u32, xid: Xid) -> bool {
        let mut gpus = self.lock();
        let queue = gpus.entry(index).or_default();
        let full = queue.xids.len() >= XID_QUEUE;
        if full {
            queue.xids.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.xids.push_back(xid);
        full
    }

    fn mark_ecc(&self, index: u32) {
        self.lock().entry(index).or_default().ecc = true;
    }

    /// Takes what GPU `index`'s events left since the last call.
    pub(super) fn take(&self, index: u32) -> Pending {
        let queue = self.lock().remove(&index).unwrap_or_default();
        Pending {
            xids: queue.xids.into(),
            ecc: queue.ecc,
        }
    }

    /// Xids dropped because a GPU's queue was full, since the session started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The running event thread; dropping it stops it.
pub(super) struct EventThread {
    stop: Arc<AtomicBool>,
    /// Disconnected when the thread ends.
    ended: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl EventThread {
    /// Starts the thread on `nvml`, filling `queues`. `None` (logged) when the thread
    /// cannot be started; a session with no events at all ends its thread at once.
    pub(super) fn start(nvml: Arc<Nvml>, queues: Arc<EventQueues>) -> Option<EventThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ended_tx, ended) = mpsc::channel::<()>();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(THREAD_NAME.to_string())
                .spawn(move || {
                    // Dropped when the thread ends, however it ends.
                    let _ended = ended_tx;
                    run(&nvml, &queues, &stop);
                })
        };
        match thread {
            Ok(thread) => Some(EventThread {
                stop,
                ended,
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::warn!("cannot start the NVML event thread: {error}; no Xid events");
                None
            }
        }
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match self.ended.recv_timeout(STOP_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                "the NVML event thread did not stop within {STOP_WAIT:?} (a hung NVML call?); leaving it"
            ),
            _ => {
                if let Some(thread) = self.thread.take() {
                    // It has ended: the join does not block.
                    let _ = thread.join();
                }
            }
        }
    }
}

/// The thread: register, then wait for events until stopped.
fn run(nvml: &Nvml, queues: &EventQueues, stop: &AtomicBool) {
    let Some((set, gpus)) = register(nvml) else {
        return;
    };
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        match set.wait(WAIT_MS) {
            Ok(event) => {
                failing = false;
                deliver(&event, &gpus, queues);
            }
            Err(NvmlError::Timeout) => failing = false,
            Err(error) => {
                if !failing {
                    tracing::debug!("waiting for NVML events failed: {error}; retrying");
                }
                failing = true;
                std::thread::sleep(Duration::from_millis(u64::from(WAIT_MS)));
            }
        }
    }
}

/// One event into the queues.
fn deliver(event: &EventData<'_>, gpus: &HashMap<usize, u32>, queues: &EventQueues) {
    // SAFETY: the handle is only compared with the handles of registered devices, never
    // used to call NVML or to build a device.
    let handle = unsafe { event.device.handle() } as usize;
    let Some(index) = gpus
        .get(&handle)
        .copied()
        .or_else(|| event.device.index().ok())
    else {
        return;
    };
    if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
        let code = match event.event_data {
            Some(XidError::Value(code)) => code,
            Some(XidError::Unknown) | None => 999,
        };
        tracing::info!(
            gpu = index,
            xid = code,
            "NVIDIA GPU {index} reported Xid {code}: {}",
            xid::meaning(code)
        );
        let xid = Xid {
            code,
            time: SystemTime::now(),
        };
        if queues.push_xid(index, xid) {
            let dropped = queues.dropped();
            // Once per thousand: a storm must not become a storm of log lines.
            if dropped % 1000 == 1 {
                tracing::warn!(
                    gpu = index,
                    "NVIDIA GPU {index}: more than {XID_QUEUE} Xids between two polls; {dropped} oldest dropped so far"
                );
            }
        }
    }
    if event
        .event_type
        .intersects(EventTypes::SINGLE_BIT_ECC_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR)
    {
        queues.mark_ecc(index);
    }
}

/// One event set with every GPU's supported wanted types; the GPUs' handles to their
/// indices. `None` (logged at debug) when no GPU has events or the set cannot be made.
fn register(nvml: &Nvml) -> Option<(EventSet<'_>, HashMap<usize, u32>)> {
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(error) => {
            tracing::debug!("NVML events: cannot count GPUs: {error}; no events");
            return None;
        }
    };
    let mut gpus: Vec<(u32, EventTypes)> = (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            match device.supported_event_types() {
                Ok(types) => {
                    let types = types & wanted();
                    (!types.is_empty()).then_some((index, types))
                }
                Err(NvmlError::NotSupported) => None,
                Err(error) => {
                    tracing::debug!("NVML events: GPU {index}: {error}; no events for it");
                    None
                }
            }
        })
        .collect();
    if gpus.is_empty() {
        tracing::debug!("no NVIDIA GPU supports NVML events");
        return None;
    }
    // A failed registration frees the set (nvml-wrapper's rule): start over without the
    // GPU that failed. At most one round per GPU.
    loop {
        match register_all(nvml, &gpus) {
            Ok(registered) => return Some(registered),
            Err(Failure::Set(error)) => {
                tracing::debug!("cannot create an NVML event set: {error}; no events");
                return None;
            }
            Err(Failure::Gpu(position, error)) => {
                let (index, _) = gpus.remove(position);
                tracing::debug!("NVML events: cannot register GPU {index}: {error}");
                if gpus.is_empty() {
                    return None;
                }
            }
        }
    }
}

enum Failure {
    Set(NvmlError),
    Gpu(usize, NvmlError),
}

fn register_all<'nvml>(
    nvml: &'nvml Nvml,
    gpus: &[(u32, EventTypes)],
) -> Result<(EventSet<'nvml>, HashMap<usize, u32>), Failure> {
    let mut set = nvml.create_event_set().map_err(Failure::Set)?;
    let mut handles = HashMap::new();
    for (position, &(index, types)) in gpus.iter().enumerate() {
        let device = nvml
            .device_by_index(index)
            .map_err(|error| Failure::Gpu(position, error))?;
        set = device
            .register_events(types, set)
            .map_err(|error| Failure::Gpu(position, error.error))?;
        // SAFETY: the handle is only kept to compare with events' devices.
        handles.insert(unsafe { device.handle() } as usize, index);
    }
    Ok((set, handles))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(code: u64) -> Xid {
        Xid {
            code,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_poll_takes_a_gpus_xids_in_order_once() {
        let queues = EventQueues::default();
        queues.push_xid(1, xid(13));
        queues.push_xid(1, xid(79));
        queues.push_xid(0, xid(48));
        queues.mark_ecc(0);
        let one = queues.take(1);
        assert_eq!(
            one.xids.iter().map(|x| x.code).collect::<Vec<_>>(),
            [13, 79]
        );
        assert!(!one.ecc);
        assert!(queues.take(1).xids.is_empty());
        let zero = queues.take(0);
        assert_eq!(zero.xids.len(), 1);
        assert!(zero.ecc);
        assert!(!queues.take(0).ecc);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let queues = EventQueues::default();
        for code in 0..(XID_QUEUE as u64 + 5) {
            queues.push_xid(2, xid(code));
        }
        assert_eq!(queues.dropped(), 5);
        let pending = queues.take(2);
        assert_eq!(pending.xids.len(), XID_QUEUE);
        assert_eq!(pending.xids[0].code, 5);
    }
}
