//! The event API: event sets, registration, and `nvmlEventSetWait_v2` delivering the
//! scenario's `events` once each to every set that registered their GPU and type.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{c_uint, c_ulonglong};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlEventData_t, nvmlEventSet_t, nvmlReturn_t};

use crate::codes::{INVALID_ARGUMENT, NOT_SUPPORTED, Ret, SUCCESS, TIMEOUT};
use crate::put;
use crate::scenario::{Event, Func, Scenario, Ticker};
use crate::state::{call, device_call, guard, index_handle, maybe_reload};

/// The longest a waiting call sleeps between looks at the scenario file (a rewritten file
/// may add an event due now); it wakes for an event due sooner.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Not an NVML code: "nothing due yet", inside [`nvmlEventSetWait_v2`] only.
const NOTHING_YET: Ret = Ret::MAX;

/// One event set.
#[derive(Default)]
struct Set {
    /// Per GPU index, the event types registered.
    registered: BTreeMap<usize, u64>,
    /// The events delivered so far: (GPU index, event).
    delivered: HashSet<(usize, Event)>,
}

/// The live event sets by handle (`id` cast to a pointer); ids are never reused.
struct Sets {
    next: usize,
    sets: BTreeMap<usize, Set>,
}

static SETS: Mutex<Sets> = Mutex::new(Sets {
    next: 1,
    sets: BTreeMap::new(),
});

fn sets() -> MutexGuard<'static, Sets> {
    SETS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new, empty event set.
///
/// # Safety
/// `set` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| {
        call(
            Func::EventSetCreate,
            true,
            |_| Ok(None),
            |_, _, _| {
                if set.is_null() {
                    return INVALID_ARGUMENT;
                }
                let mut sets = sets();
                let id = sets.next;
                sets.next += 1;
                sets.sets.insert(id, Set::default());
                // SAFETY: the caller's contract.
                unsafe { put(set, id as nvmlEventSet_t) }
            },
        )
    })
}

/// Frees an event set (`INVALID_ARGUMENT` for one that is not live). Never affected by
/// `errors` or `hang`, and works after shutdown, as `nvmlShutdown` does.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| match sets().sets.remove(&(set as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_ARGUMENT,
    })
}

/// The GPU's event types: `event_types`, or every type when only `events` is given;
/// `NOT_SUPPORTED` with neither.
///
/// # Safety
/// `event_types` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    event_types: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetSupportedEventTypes, device, |_, g, _| {
            if event_types.is_null() {
                return INVALID_ARGUMENT;
            }
            match g.event_mask {
                // SAFETY: the caller's contract.
                Some(mask) => unsafe { put(event_types, mask) },
                None => NOT_SUPPORTED,
            }
        })
    })
}

/// Registers the GPU's `event_types` in `set`: `NOT_SUPPORTED` when the GPU has no event
/// support or lacks one of the types, `INVALID_ARGUMENT` for a set that is not live.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    event_types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::RegisterEvents, device, |index, g, _| {
            let Some(mask) = g.event_mask else {
                return NOT_SUPPORTED;
            };
            if event_types & !mask != 0 {
                return NOT_SUPPORTED;
            }
            let mut sets = sets();
            let Some(set) = sets.sets.get_mut(&(set as usize)) else {
                return INVALID_ARGUMENT;
            };
            *set.registered.entry(index).or_default() |= event_types;
            SUCCESS
        })
    })
}

/// The earliest due event of `set` not yet delivered, marked delivered; else how many
/// milliseconds until the next one is due, if any is to come.
fn next_event(sc: &Scenario, set: &mut Set, t: &Ticker) -> Result<(usize, Event), Option<u64>> {
    let now = t.elapsed_ms();
    let next = set
        .registered
        .iter()
        .filter_map(|(&index, &mask)| Some((index, mask, sc.gpus.get(index)?)))
        .flat_map(|(index, mask, g)| {
            g.events
                .iter()
                .filter(move |e| mask & e.kind.bit() != 0)
                .map(move |e| (index, *e))
        })
        .filter(|key| !set.delivered.contains(key))
        .min_by_key(|(index, e)| (e.at_ms, *index));
    match next {
        Some(key) if key.1.at_ms <= now => {
            set.delivered.insert(key);
            Ok(key)
        }
        Some((_, later)) => Err(Some(later.at_ms - now)),
        None => Err(None),
    }
}

/// Waits up to `timeoutms` for the next due event of the set (events are due from `at_ms`
/// after init; each is delivered once per set, however late the set registered), waking
/// when the next one is due and at least every 50 ms to re-read a changed scenario file;
/// `TIMEOUT` when none came.
///
/// # Safety
/// `data` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> nvmlReturn_t {
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeoutms));
    guard(|| {
        loop {
            maybe_reload();
            let mut next_due = None;
            let r = call(
                Func::EventSetWait,
                true,
                |_| Ok(None),
                |sc, _, t| {
                    if data.is_null() {
                        return INVALID_ARGUMENT;
                    }
                    let mut sets = sets();
                    let Some(set) = sets.sets.get_mut(&(set as usize)) else {
                        return INVALID_ARGUMENT;
                    };
                    let (index, event) = match next_event(sc, set, t) {
                        Ok(event) => event,
                        Err(due) => {
                            next_due = due;
                            return NOTHING_YET;
                        }
                    };
                    let v = nvmlEventData_t {
                        device: index_handle(index),
                        eventType: event.kind.bit(),
                        eventData: event.data,
                        gpuInstanceId: 0xFFFF_FFFF,
                        computeInstanceId: 0xFFFF_FFFF,
                    };
                    // SAFETY: the caller's contract.
                    unsafe { put(data, v) }
                },
            );
            if r != NOTHING_YET {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return TIMEOUT;
            }
            let until_due = next_due.map_or(WAIT_STEP, Duration::from_millis);
            std::thread::sleep(left.min(WAIT_STEP).min(until_due));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_events_of_registered_types_come_once_earliest_first() {
        let sc = Scenario::parse(
            br#"{"gpus": [
              {"events": [{"at_ms": 20, "type": "xid", "data": 13}, {"at_ms": 0, "type": "xid", "data": 79},
                          {"at_ms": 5, "type": "pstate"}, {"at_ms": 60000, "type": "xid", "data": 48}]},
              {"events": [{"at_ms": 10, "type": "xid", "data": 31}]},
              {"events": [{"at_ms": 0, "type": "xid", "data": 94}]}
            ]}"#,
        )
        .expect("parses");
        let t = Ticker {
            start: Instant::now() - Duration::from_millis(50),
            step_ms: 1000,
        };
        let mut set = Set::default();
        set.registered.insert(0, 0x8);
        set.registered.insert(1, 0x8 | 0x4);
        let mut seen = Vec::new();
        let next_due = loop {
            match next_event(&sc, &mut set, &t) {
                Ok((index, event)) => seen.push((index, event.data)),
                Err(due) => break due,
            }
        };
        // GPU 0's pstate event is not registered, its 60 s Xid not due, GPU 2 not in the set.
        assert_eq!(seen, [(0, 79), (1, 31), (0, 13)]);
        let next_due = next_due.expect("the 60 s Xid is to come");
        assert!((59_000..=60_000).contains(&next_due), "{next_due}");
    }
}
