//! A fake `libnvidia-ml.so` for testing `gpukilld` without a GPU.
//!
//! It exports the NVML C functions the daemon calls through `nvml-wrapper`
//! and serves them from a JSON *scenario* file named by the environment
//! variable `FAKE_NVML_SCENARIO` (read at `nvmlInit_v2`, re-read when its
//! identity changes: checked on every `nvmlDeviceGetCount_v2` call and on
//! every 10 ms step of a hanging call). See `tests/fake-nvml/README.md` for
//! the scenario format.
//!
//! Every exported function catches panics (returning `NVML_ERROR_UNKNOWN`),
//! so no unwinding crosses the FFI boundary.

// The exported names are NVML's.
#![allow(non_snake_case)]

mod codes;
mod events;
mod gpm;
mod health;
mod scenario;
mod state;

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};

use nvml_wrapper_sys::bindings::{
    nvmlClockType_t, nvmlDevice_t, nvmlEccCounterType_t, nvmlMemory_t, nvmlMemory_v2_t,
    nvmlMemoryErrorType_t, nvmlPciInfo_t, nvmlProcessInfo_t, nvmlProcessUtilizationSample_t,
    nvmlReturn_t, nvmlTemperatureSensors_t, nvmlUtilization_t,
};

use codes::{
    ARGUMENT_VERSION_MISMATCH, INSUFFICIENT_SIZE, INVALID_ARGUMENT, NOT_FOUND, NOT_SUPPORTED, Ret,
    SUCCESS,
};
use scenario::{Func, Gpu, Metric, Process, Ticker};
use state::{call, device_call, guard, index_handle, maybe_reload, top_call};

/// `NVML_VALUE_NOT_AVAILABLE` as an `unsigned long long`.
const VALUE_NOT_AVAILABLE: c_ulonglong = c_ulonglong::MAX;

/// gpuInstanceId / computeInstanceId of a process outside MIG.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

/// `NVML_STRUCT_VERSION(Memory, 2)`.
const MEMORY_V2_VERSION: c_uint = (size_of::<nvmlMemory_v2_t>() as c_uint) | (2 << 24);

// ---------------------------------------------------------------------------
// Output helpers.

/// Writes `v` to `p`; `INVALID_ARGUMENT` if `p` is null.
///
/// # Safety
/// `p` must be null or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Ret {
    if p.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: `p` is non-null and, per this function's contract, writable.
    unsafe { p.write(v) };
    SUCCESS
}

/// Writes the current value of a metric; `NOT_SUPPORTED` if it is absent.
///
/// # Safety
/// `p` must be null or valid for a write of `T`.
unsafe fn put_metric<T: Copy>(p: *mut T, m: Option<&Metric<T>>, t: &Ticker) -> Ret {
    if p.is_null() {
        return INVALID_ARGUMENT;
    }
    match m {
        // SAFETY: `p` is null or writable per this function's contract.
        Some(m) => unsafe { put(p, m.at(t)) },
        None => NOT_SUPPORTED,
    }
}

/// Copies a NUL-terminated string into a caller buffer of `len` bytes.
///
/// # Safety
/// `buf` must be null or valid for writes of `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &CStr) -> Ret {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = s.to_bytes_with_nul();
    if bytes.len() > len as usize {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: `buf` is writable for `len >= bytes.len()` bytes per the
    // contract; a caller buffer cannot overlap our own string.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len()) };
    SUCCESS
}

/// NVML's two-call list protocol: with `*count` below the `n` items needed
/// (or a null buffer) sets `*count = n` and returns `INSUFFICIENT_SIZE`,
/// except that no items at all is `SUCCESS` with `*count = 0`; otherwise
/// writes the items and sets `*count` to the number written.
///
/// # Safety
/// `count` must be null or valid for reads and writes; `buf` must be null or
/// valid for writes of `*count` elements.
unsafe fn put_list<T>(
    count: *mut c_uint,
    buf: *mut T,
    n: usize,
    items: impl Iterator<Item = T>,
) -> Ret {
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: `count` is non-null and readable per the contract.
    let capacity = unsafe { count.read() } as usize;
    let needed = c_uint::try_from(n).unwrap_or(c_uint::MAX);
    if n == 0 {
        // SAFETY: `count` is non-null and writable per the contract.
        unsafe { count.write(0) };
        return SUCCESS;
    }
    if buf.is_null() || capacity < n {
        // SAFETY: as above.
        unsafe { count.write(needed) };
        return INSUFFICIENT_SIZE;
    }
    let mut written: c_uint = 0;
    for (i, item) in items.take(n).enumerate() {
        // SAFETY: `i < n <= *count`, and `buf` holds `*count` elements.
        unsafe { buf.add(i).write(item) };
        written += 1;
    }
    // SAFETY: `count` is non-null and writable per the contract.
    unsafe { count.write(written) };
    SUCCESS
}

/// The process list entry of a process.
fn process_info(p: &Process, t: &Ticker) -> nvmlProcessInfo_t {
    nvmlProcessInfo_t {
        pid: p.pid,
        usedGpuMemory: p
            .used_memory
            .as_ref()
            .map_or(VALUE_NOT_AVAILABLE, |m| m.at(t)),
        gpuInstanceId: NO_INSTANCE,
        computeInstanceId: NO_INSTANCE,
    }
}

/// The running-process calls: the processes of `gpu` selected by `pick`.
///
/// # Safety
/// As [`put_list`].
unsafe fn put_processes(
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
    gpu: &Gpu,
    t: &Ticker,
    pick: fn(&Process) -> bool,
) -> Ret {
    let n = gpu.processes.iter().filter(|p| pick(p)).count();
    let items = gpu
        .processes
        .iter()
        .filter(|p| pick(p))
        .map(|p| process_info(p, t));
    // SAFETY: forwarded contract.
    unsafe { put_list(count, infos, n, items) }
}

// ---------------------------------------------------------------------------
// Library and system functions.

/// Initialises the fake: loads the scenario named by `FAKE_NVML_SCENARIO`
/// (`NVML_ERROR_UNKNOWN` if it is missing or invalid) and counts one user.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(|| state::init(Func::InitV2))
}

/// As [`nvmlInit_v2`]; the flags are ignored.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    guard(|| state::init(Func::InitWithFlags))
}

/// Counts one user fewer (`NVML_ERROR_UNINITIALIZED` if there is none).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    guard(state::shutdown)
}

/// A static description of a return code.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    codes::error_string(result).as_ptr()
}

/// The scenario's `driver_version`.
///
/// # Safety
/// `version` must be null or valid for writes of `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        top_call(Func::SystemGetDriverVersion, |sc, _| {
            // SAFETY: the caller's contract.
            unsafe { put_str(version, length, &sc.driver_version) }
        })
    })
}

/// The scenario's `nvml_version`.
///
/// # Safety
/// `version` must be null or valid for writes of `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        top_call(Func::SystemGetNvmlVersion, |sc, _| {
            // SAFETY: the caller's contract.
            unsafe { put_str(version, length, &sc.nvml_version) }
        })
    })
}

/// The scenario's `cuda_driver_version`.
///
/// # Safety
/// `version` must be null or valid for a write of a `c_int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    guard(|| {
        top_call(Func::SystemGetCudaDriverVersion, |sc, _| {
            // SAFETY: the caller's contract.
            unsafe { put(version, sc.cuda_driver_version) }
        })
    })
}

/// The number of GPUs in the scenario. Re-reads the scenario file first if
/// it changed (one `stat` per call).
///
/// # Safety
/// `device_count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        maybe_reload();
        top_call(Func::DeviceGetCount, |sc, _| {
            let n = c_uint::try_from(sc.gpus.len()).unwrap_or(c_uint::MAX);
            // SAFETY: the caller's contract.
            unsafe { put(device_count, n) }
        })
    })
}

/// The handle of GPU `index` (`INVALID_ARGUMENT` if out of range).
///
/// # Safety
/// `device` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    let index = index as usize;
    guard(|| {
        call(
            Func::GetHandleByIndex,
            true,
            |sc| Ok((index < sc.gpus.len()).then_some(index)),
            |_, gpu, _| match gpu {
                // SAFETY: the caller's contract.
                Some(_) => unsafe { put(device, index_handle(index)) },
                None => INVALID_ARGUMENT,
            },
        )
    })
}

/// The handle of the GPU with this UUID (`NOT_FOUND` if none).
///
/// # Safety
/// `uuid` must be null or a valid NUL-terminated string; `device` must be
/// null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    if uuid.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let wanted = unsafe { CStr::from_ptr(uuid) };
    guard(|| {
        call(
            Func::GetHandleByUuid,
            true,
            |sc| Ok(sc.gpus.iter().position(|g| g.uuid.as_c_str() == wanted)),
            |sc, gpu, _| match gpu {
                Some(g) => {
                    let index = sc
                        .gpus
                        .iter()
                        .position(|h| std::ptr::eq(g, h))
                        .unwrap_or_default();
                    // SAFETY: the caller's contract.
                    unsafe { put(device, index_handle(index)) }
                }
                None => NOT_FOUND,
            },
        )
    })
}

// ---------------------------------------------------------------------------
// Device queries.

/// The index of a device.
///
/// # Safety
/// `index` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetIndex, device, |i, _, _| {
            let i = c_uint::try_from(i).unwrap_or(c_uint::MAX);
            // SAFETY: the caller's contract.
            unsafe { put(index, i) }
        })
    })
}

/// The GPU's `uuid`.
///
/// # Safety
/// `uuid` must be null or valid for writes of `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetUuid, device, |_, g, _| {
            // SAFETY: the caller's contract.
            unsafe { put_str(uuid, length, &g.uuid) }
        })
    })
}

/// The GPU's `name`.
///
/// # Safety
/// `name` must be null or valid for writes of `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetName, device, |_, g, _| {
            // SAFETY: the caller's contract.
            unsafe { put_str(name, length, &g.name) }
        })
    })
}

/// PCI information built from the GPU's `pci_bus_id`.
///
/// # Safety
/// `pci` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetPciInfo, device, |_, g, _| {
            // SAFETY: the caller's contract.
            unsafe { put(pci, g.pci) }
        })
    })
}

/// Total / used / free memory (`NOT_SUPPORTED` without `memory_total_bytes`).
fn memory(g: &Gpu, t: &Ticker) -> Option<(u64, u64, u64)> {
    let total = g.memory_total?;
    let used = g.memory_used.as_ref().map_or(0, |m| m.at(t));
    Some((total, used, total.saturating_sub(used)))
}

/// Memory information, version 2 (the caller sets `version`).
///
/// # Safety
/// `memory` must be null or valid for reads and writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetMemoryInfoV2, device, |_, g, t| {
            if memory.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: non-null and readable per the caller's contract.
            let version = unsafe { (*memory).version };
            if version != MEMORY_V2_VERSION {
                return ARGUMENT_VERSION_MISMATCH;
            }
            let Some((total, used, free)) = self::memory(g, t) else {
                return NOT_SUPPORTED;
            };
            let v = nvmlMemory_v2_t {
                version,
                total,
                reserved: 0,
                free,
                used,
            };
            // SAFETY: the caller's contract.
            unsafe { put(memory, v) }
        })
    })
}

/// Memory information, version 1.
///
/// # Safety
/// `memory` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetMemoryInfo, device, |_, g, t| {
            if memory.is_null() {
                return INVALID_ARGUMENT;
            }
            let Some((total, used, free)) = self::memory(g, t) else {
                return NOT_SUPPORTED;
            };
            // SAFETY: the caller's contract.
            unsafe { put(memory, nvmlMemory_t { total, free, used }) }
        })
    })
}

/// GPU and memory utilisation (`NOT_SUPPORTED` without
/// `utilization_gpu_pct`; memory utilisation defaults to 0).
///
/// # Safety
/// `utilization` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetUtilizationRates, device, |_, g, t| {
            if utilization.is_null() {
                return INVALID_ARGUMENT;
            }
            let Some(gpu) = g.util_gpu.as_ref() else {
                return NOT_SUPPORTED;
            };
            let v = nvmlUtilization_t {
                gpu: gpu.at(t),
                memory: g.util_mem.as_ref().map_or(0, |m| m.at(t)),
            };
            // SAFETY: the caller's contract.
            unsafe { put(utilization, v) }
        })
    })
}

/// `temperature_c` for sensor 0 (GPU); other sensors are `INVALID_ARGUMENT`.
///
/// # Safety
/// `temp` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor_type: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetTemperature, device, |_, g, t| {
            if sensor_type != 0 {
                return INVALID_ARGUMENT;
            }
            // SAFETY: the caller's contract.
            unsafe { put_metric(temp, g.temperature.as_ref(), t) }
        })
    })
}

/// `power_mw`, in milliwatts.
///
/// # Safety
/// `power` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetPowerUsage, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(power, g.power.as_ref(), t) }
        })
    })
}

/// `total_energy_mj`, in millijoules.
///
/// # Safety
/// `energy` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetTotalEnergyConsumption, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(energy, g.total_energy.as_ref(), t) }
        })
    })
}

/// `num_fans` (default 1 with `fan_speed_pct`, 0 without).
///
/// # Safety
/// `num_fans` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumFans(
    device: nvmlDevice_t,
    num_fans: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetNumFans, device, |_, g, _| {
            // SAFETY: the caller's contract.
            unsafe { put(num_fans, g.num_fans) }
        })
    })
}

/// `fan_speed_pct` of fan `fan` (every fan reports the same speed).
///
/// # Safety
/// `speed` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(
    device: nvmlDevice_t,
    fan: c_uint,
    speed: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetFanSpeedV2, device, |_, g, t| {
            if g.fan_speed.is_some() && fan >= g.num_fans {
                return INVALID_ARGUMENT;
            }
            // SAFETY: the caller's contract.
            unsafe { put_metric(speed, g.fan_speed.as_ref(), t) }
        })
    })
}

/// `fan_speed_pct` (of fan 0).
///
/// # Safety
/// `speed` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(
    device: nvmlDevice_t,
    speed: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetFanSpeed, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_metric(speed, g.fan_speed.as_ref(), t) }
        })
    })
}

/// Current clocks in MHz: 0 graphics (`clock_graphics_mhz`, else
/// `clock_sm_mhz`), 1 SM, 2 memory, 3 video.
///
/// # Safety
/// `clock` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    clock_type: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetClockInfo, device, |_, g, t| {
            let m = match clock_type {
                0 => g.clock_graphics.as_ref().or(g.clock_sm.as_ref()),
                1 => g.clock_sm.as_ref(),
                2 => g.clock_mem.as_ref(),
                3 => g.clock_video.as_ref(),
                _ => return INVALID_ARGUMENT,
            };
            // SAFETY: the caller's contract.
            unsafe { put_metric(clock, m, t) }
        })
    })
}

/// ECC error totals: error type 0 corrected / 1 uncorrected; counter type 0
/// volatile (`ecc_volatile_*`) / 1 aggregate (`ecc_aggregate_*`).
///
/// # Safety
/// `ecc_counts` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: nvmlMemoryErrorType_t,
    counter_type: nvmlEccCounterType_t,
    ecc_counts: *mut c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetTotalEccErrors, device, |_, g, t| {
            let m = match (error_type, counter_type) {
                (0, 0) => g.ecc_corrected.as_ref(),
                (1, 0) => g.ecc_uncorrected.as_ref(),
                (0, 1) => g.ecc_aggregate_corrected.as_ref(),
                (1, 1) => g.ecc_aggregate_uncorrected.as_ref(),
                _ => return INVALID_ARGUMENT,
            };
            // SAFETY: the caller's contract.
            unsafe { put_metric(ecc_counts, m, t) }
        })
    })
}

/// MIG mode from `mig_enabled` (current and pending alike).
///
/// # Safety
/// `current_mode` and `pending_mode` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current_mode: *mut c_uint,
    pending_mode: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetMigMode, device, |_, g, _| {
            if current_mode.is_null() || pending_mode.is_null() {
                return INVALID_ARGUMENT;
            }
            let Some(enabled) = g.mig_enabled else {
                return NOT_SUPPORTED;
            };
            // SAFETY: the caller's contract (both pointers checked non-null).
            unsafe {
                put(current_mode, c_uint::from(enabled));
                put(pending_mode, c_uint::from(enabled))
            }
        })
    })
}

/// `multi_gpu_board` as 0 / 1 (default 0).
///
/// # Safety
/// `multi_gpu_bool` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMultiGpuBoard(
    device: nvmlDevice_t,
    multi_gpu_bool: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetMultiGpuBoard, device, |_, g, _| {
            // SAFETY: the caller's contract.
            unsafe { put(multi_gpu_bool, c_uint::from(g.multi_gpu_board)) }
        })
    })
}

/// Processes of kind `compute` or `both`, with NVML's two-call protocol.
///
/// # Safety
/// `info_count` must be null or valid for reads and writes; `infos` must be
/// null or valid for writes of `*info_count` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetComputeProcesses, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_processes(info_count, infos, g, t, |p| p.kind.compute()) }
        })
    })
}

/// Processes of kind `graphics` or `both`, with NVML's two-call protocol.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetGraphicsProcesses, device, |_, g, t| {
            // SAFETY: the caller's contract.
            unsafe { put_processes(info_count, infos, g, t, |p| p.kind.graphics()) }
        })
    })
}

/// Always no MPS processes.
///
/// # Safety
/// As [`nvmlDeviceGetComputeRunningProcesses_v3`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetMpsProcesses, device, |_, _, _| {
            // SAFETY: the caller's contract.
            unsafe { put_list(info_count, infos, 0, std::iter::empty()) }
        })
    })
}

/// One sample per process with `sm_util_pct` (`NOT_SUPPORTED` if none has
/// it), time-stamped now; `last_seen_time_stamp` is ignored.
///
/// # Safety
/// `samples_count` must be null or valid for reads and writes; `utilization`
/// must be null or valid for writes of `*samples_count` elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    samples_count: *mut c_uint,
    _last_seen_time_stamp: c_ulonglong,
) -> nvmlReturn_t {
    guard(|| {
        device_call(Func::GetProcessUtilization, device, |_, g, t| {
            if !g.has_process_util {
                return NOT_SUPPORTED;
            }
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as c_ulonglong);
            let with_util = || g.processes.iter().filter(|p| p.sm_util.is_some());
            let n = with_util().count();
            let items = with_util().map(|p| nvmlProcessUtilizationSample_t {
                pid: p.pid,
                timeStamp: now_us,
                smUtil: p.sm_util.as_ref().map_or(0, |m| m.at(t)),
                memUtil: p.mem_util.as_ref().map_or(0, |m| m.at(t)),
                encUtil: 0,
                decUtil: 0,
            });
            // SAFETY: the caller's contract.
            unsafe { put_list(samples_count, utilization, n, items) }
        })
    })
}
