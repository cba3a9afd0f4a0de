//! GPM (GPU Performance Monitoring, Hopper and newer): support, samples and metrics for a
//! scenario GPU with `gpm`. A metric's value is its scenario value (percent) at the time
//! of `nvmlGpmMetricsGet`; the fake does not difference the two samples.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlGpmMetricsGet_t, nvmlGpmSample_t, nvmlGpmSupport_t, nvmlReturn_t,
};

use crate::codes::{ARGUMENT_VERSION_MISMATCH, INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS};
use crate::put;
use crate::scenario::{Func, Gpm, Metric, Ticker};
use crate::state::{call, device_call, guard};

/// `NVML_GPM_SUPPORT_VERSION` and `NVML_GPM_METRICS_GET_VERSION`.
const GPM_VERSION: u32 = 1;

/// NVML's GPM metric ids the fake serves: graphics, SM, any tensor, DRAM bandwidth.
const GRAPHICS_UTIL: u32 = 1;
const SM_UTIL: u32 = 2;
const ANY_TENSOR_UTIL: u32 = 5;
const DRAM_BW_UTIL: u32 = 10;

/// The live samples by handle (`id` cast to a pointer): the GPU each was last filled
/// from, if any. Ids are never reused.
struct Samples {
    next: usize,
    samples: BTreeMap<usize, Option<usize>>,
}

static SAMPLES: Mutex<Samples> = Mutex::new(Samples {
    next: 1,
    samples: BTreeMap::new(),
});

fn samples() -> MutexGuard<'static, Samples> {
    SAMPLES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the GPU supports GPM: `SUCCESS`, with `isSupportedDevice` 1 for a GPU with
/// `gpm` and 0 for one without (as NVML answers on a GPU older than Hopper).
///
/// # Safety
/// `support` must be null or valid for reads and writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    device: nvmlDevice_t,
    support: *mut nvmlGpmSupport_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GpmQueryDeviceSupport, device, |_, g, _| {
            if support.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: non-null and readable per the caller's contract.
            let version = unsafe { (*support).version };
            if version != GPM_VERSION {
                return ARGUMENT_VERSION_MISMATCH;
            }
            let v = nvmlGpmSupport_t {
                version,
                isSupportedDevice: u32::from(g.gpm.is_some()),
            };
            // SAFETY: the caller's contract.
            unsafe { put(support, v) }
        })
    })
}

/// A new, empty sample.
///
/// # Safety
/// `sample` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(sample: *mut nvmlGpmSample_t) -> nvmlReturn_t {
    guard(|| {
        call(
            Func::GpmSampleAlloc,
            true,
            |_| Ok(None),
            |_, _, _| {
                if sample.is_null() {
                    return INVALID_ARGUMENT;
                }
                let mut samples = samples();
                let id = samples.next;
                samples.next += 1;
                samples.samples.insert(id, None);
                // SAFETY: the caller's contract.
                unsafe { put(sample, id as nvmlGpmSample_t) }
            },
        )
    })
}

/// Frees a sample (`INVALID_ARGUMENT` for one that is not live). Never affected by
/// `errors` or `hang`, and works after shutdown.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleFree(sample: nvmlGpmSample_t) -> nvmlReturn_t {
    guard(|| match samples().samples.remove(&(sample as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_ARGUMENT,
    })
}

/// Fills a sample from the GPU (`NOT_SUPPORTED` without `gpm`).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleGet(device: nvmlDevice_t, sample: nvmlGpmSample_t) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GpmSampleGet, device, |index, g, _| {
            if g.gpm.is_none() {
                return NOT_SUPPORTED;
            }
            match samples().samples.get_mut(&(sample as usize)) {
                Some(filled) => {
                    *filled = Some(index);
                    SUCCESS
                }
                None => INVALID_ARGUMENT,
            }
        })
    })
}

/// One metric's value, or its per-metric return code.
fn metric_value(gpm: &Gpm, id: u32, t: &Ticker) -> Result<f64, nvmlReturn_t> {
    let metric: Option<&Metric<f64>> = match id {
        GRAPHICS_UTIL => gpm.graphics.as_ref(),
        SM_UTIL => gpm.sm.as_ref(),
        ANY_TENSOR_UTIL => gpm.tensor.as_ref(),
        DRAM_BW_UTIL => gpm.dram.as_ref(),
        _ => None,
    };
    metric.map(|m| m.at(t)).ok_or(NOT_SUPPORTED)
}

/// The requested metrics between two samples of the same GPU: each one's scenario value
/// now, `NOT_SUPPORTED` in its own return code for a metric the scenario lacks.
///
/// # Safety
/// `metrics_get` must be null or valid for reads and writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmMetricsGet(metrics_get: *mut nvmlGpmMetricsGet_t) -> nvmlReturn_t {
    guard(|| {
        call(
            Func::GpmMetricsGet,
            true,
            |_| Ok(None),
            |sc, _, t| {
                if metrics_get.is_null() {
                    return INVALID_ARGUMENT;
                }
                // SAFETY: non-null and valid for reads and writes per the caller's contract.
                let request = unsafe { &mut *metrics_get };
                if request.version != GPM_VERSION {
                    return ARGUMENT_VERSION_MISMATCH;
                }
                let gpu = {
                    let samples = samples();
                    let first = samples.samples.get(&(request.sample1 as usize)).copied();
                    let second = samples.samples.get(&(request.sample2 as usize)).copied();
                    match (first, second) {
                        (Some(Some(a)), Some(Some(b))) if a == b => a,
                        _ => return INVALID_ARGUMENT,
                    }
                };
                let Some(gpm) = sc.gpus.get(gpu).and_then(|g| g.gpm.as_ref()) else {
                    return NOT_SUPPORTED;
                };
                let count = request.numMetrics as usize;
                if count > request.metrics.len() {
                    return INVALID_ARGUMENT;
                }
                for metric in &mut request.metrics[..count] {
                    match metric_value(gpm, metric.metricId, t) {
                        Ok(value) => {
                            metric.value = value;
                            metric.nvmlReturn = SUCCESS;
                        }
                        Err(code) => metric.nvmlReturn = code,
                    }
                    metric.metricInfo.shortName = std::ptr::null_mut();
                    metric.metricInfo.longName = std::ptr::null_mut();
                    metric.metricInfo.unit = std::ptr::null_mut();
                }
                SUCCESS
            },
        )
    })
}
