//! The health queries: retired pages, remapped rows, clock event (throttle) reasons, the
//! performance state and the PCIe replay counter. (ECC totals are in `lib.rs`.)

use std::ffi::{c_uint, c_ulonglong};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEnableState_t, nvmlPageRetirementCause_t, nvmlPstates_t, nvmlReturn_t,
};

use crate::codes::{INSUFFICIENT_SIZE, INVALID_ARGUMENT, NOT_SUPPORTED, Ret, SUCCESS};
use crate::scenario::{Func, Gpu, Metric, Ticker};
use crate::state::{device_call, guard};
use crate::{put, put_metric};

/// The retired page count of `cause` (0: multiple single-bit errors, 1: a double-bit error).
fn retired_count(g: &Gpu, cause: nvmlPageRetirementCause_t, t: &Ticker) -> Result<usize, Ret> {
    let metric = match cause {
        0 => g.retired_sbe.as_ref(),
        1 => g.retired_dbe.as_ref(),
        _ => return Err(INVALID_ARGUMENT),
    };
    metric.map(|m| m.at(t) as usize).ok_or(NOT_SUPPORTED)
}

/// A made-up, distinct page address per cause and page.
fn page_address(cause: nvmlPageRetirementCause_t, page: usize) -> c_ulonglong {
    (c_ulonglong::from(cause) << 40) | ((page as c_ulonglong + 1) << 12)
}

/// Writes the retired pages of `cause`: NVML's two-call protocol (a `*page_count` below the
/// number of pages, or a null buffer, is `INSUFFICIENT_SIZE` with the count needed; no
/// pages is `SUCCESS` with 0), with time stamps (seconds since the epoch) when asked.
///
/// # Safety
/// `page_count` must be null or valid for reads and writes; `addresses` and `timestamps`
/// null or valid for writes of `*page_count` elements.
unsafe fn put_pages(
    g: &Gpu,
    cause: nvmlPageRetirementCause_t,
    t: &Ticker,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: Option<*mut c_ulonglong>,
) -> Ret {
    if page_count.is_null() {
        return INVALID_ARGUMENT;
    }
    let n = match retired_count(g, cause, t) {
        Ok(n) => n,
        Err(e) => return e,
    };
    // SAFETY: non-null, and readable and writable per the contract.
    let capacity = unsafe { page_count.read() } as usize;
    let needed = c_uint::try_from(n).unwrap_or(c_uint::MAX);
    if n == 0 {
        // SAFETY: as above.
        unsafe { page_count.write(0) };
        return SUCCESS;
    }
    if addresses.is_null() || timestamps.is_some_and(<*mut c_ulonglong>::is_null) || capacity < n {
        // SAFETY: as above.
        unsafe { page_count.write(needed) };
        return INSUFFICIENT_SIZE;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for page in 0..n {
        // SAFETY: `page < n <= *page_count`, and both buffers hold `*page_count` elements.
        unsafe {
            addresses.add(page).write(page_address(cause, page));
            if let Some(timestamps) = timestamps {
                timestamps.add(page).write(now);
            }
        }
    }
    // SAFETY: as above.
    unsafe { page_count.write(needed) };
    SUCCESS
}

/// The pages retired for `cause`: `retired_pages_sbe` (cause 0) or `retired_pages_dbe`
/// (cause 1) of them, made-up addresses.
///
/// # Safety
/// `page_count` must be null or valid for reads and writes; `addresses` null or valid for
/// writes of `*page_count` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetRetiredPages, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_pages(g, cause, t, page_count, addresses, None) }
        })
    })
}

/// As [`nvmlDeviceGetRetiredPages`], with a time stamp per page (now).
///
/// # Safety
/// As [`nvmlDeviceGetRetiredPages`]; `timestamps` like `addresses`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetRetiredPagesV2, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_pages(g, cause, t, page_count, addresses, Some(timestamps)) }
        })
    })
}

/// `retired_pages_pending` as NVML's enable state (1 pending, 0 not).
///
/// # Safety
/// `is_pending` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    device: nvmlDevice_t,
    is_pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetRetiredPagesPendingStatus, device, |_, g, t| {
            if is_pending.is_null() {
                return INVALID_ARGUMENT;
            }
            let Some(pending) = g.retired_pending.as_ref() else {
                return NOT_SUPPORTED;
            };
            // SAFETY: the caller's contract.
            unsafe { put(is_pending, nvmlEnableState_t::from(pending.at(t))) }
        })
    })
}

/// `remapped_rows`: correctable and uncorrectable counts (default 0), pending and failure
/// flags (default false).
///
/// # Safety
/// Every pointer must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: nvmlDevice_t,
    corr_rows: *mut c_uint,
    unc_rows: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetRemappedRows, device, |_, g, t| {
            if corr_rows.is_null()
                || unc_rows.is_null()
                || is_pending.is_null()
                || failure_occurred.is_null()
            {
                return INVALID_ARGUMENT;
            }
            let Some(rows) = g.remapped_rows.as_ref() else {
                return NOT_SUPPORTED;
            };
            let count = |m: &Option<Metric<u32>>| m.as_ref().map_or(0, |m| m.at(t));
            let flag = |m: &Option<Metric<bool>>| c_uint::from(m.as_ref().is_some_and(|m| m.at(t)));
            // SAFETY: the caller's contract (every pointer checked non-null).
            unsafe {
                put(corr_rows, count(&rows.correctable));
                put(unc_rows, count(&rows.uncorrectable));
                put(is_pending, flag(&rows.pending));
                put(failure_occurred, flag(&rows.failure))
            }
        })
    })
}

/// `throttle_reasons`, NVML's clock event reasons bitmask.
///
/// # Safety
/// `reasons` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetClocksEventReasons, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(reasons, g.throttle_reasons.as_ref(), t) }
        })
    })
}

/// The older name of [`nvmlDeviceGetCurrentClocksEventReasons`] (nvml-wrapper 0.13 calls
/// this one).
///
/// # Safety
/// `reasons` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetClocksThrottleReasons, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(reasons, g.throttle_reasons.as_ref(), t) }
        })
    })
}

/// `pstate`: 0 (fastest) to 15, or 32 (unknown).
///
/// # Safety
/// `pstate` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    device: nvmlDevice_t,
    pstate: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetPerformanceState, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(pstate, g.pstate.as_ref(), t) }
        })
    })
}

/// `pcie_replay_counter`.
///
/// # Safety
/// `value` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPcieReplayCounter(
    device: nvmlDevice_t,
    value: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetPcieReplayCounter, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(value, g.pcie_replay.as_ref(), t) }
        })
    })
}
