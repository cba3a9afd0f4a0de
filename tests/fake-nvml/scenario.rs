//! The scenario file: its JSON schema (`Raw*` types, parsed with serde) and
//! the validated, pre-computed form the exported functions serve from.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::time::Instant;

use nvml_wrapper_sys::bindings::nvmlPciInfo_t;
use serde::Deserialize;

use crate::codes::error_code_by_name;

/// Which `errors` / `hang` map may name a function.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Scope {
    /// Non-device function: named in the top-level maps; covered by the top-level `"*"`.
    Top,
    /// Handle lookup: named in the top-level maps (covered by the top-level `"*"`),
    /// and also by explicit name (never by `"*"`) in the maps of the GPU it selects.
    Handle,
    /// Per-device function: named in a GPU's maps; covered by that GPU's `"*"`.
    Device,
}

macro_rules! funcs {
    ($($variant:ident = $name:literal, $scope:ident;)*) => {
        /// Every exported function that `errors` and `hang` can name.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub(crate) enum Func {
            $($variant,)*
        }

        /// `(function, exported name, scope)`, indexed by `Func as usize`.
        pub(crate) const FUNCS: &[(Func, &str, Scope)] = &[
            $((Func::$variant, $name, Scope::$scope),)*
        ];
    };
}

funcs! {
    InitV2 = "nvmlInit_v2", Top;
    InitWithFlags = "nvmlInitWithFlags", Top;
    SystemGetDriverVersion = "nvmlSystemGetDriverVersion", Top;
    SystemGetNvmlVersion = "nvmlSystemGetNVMLVersion", Top;
    SystemGetCudaDriverVersion = "nvmlSystemGetCudaDriverVersion_v2", Top;
    DeviceGetCount = "nvmlDeviceGetCount_v2", Top;
    GetHandleByIndex = "nvmlDeviceGetHandleByIndex_v2", Handle;
    GetHandleByUuid = "nvmlDeviceGetHandleByUUID", Handle;
    GetIndex = "nvmlDeviceGetIndex", Device;
    GetUuid = "nvmlDeviceGetUUID", Device;
    GetName = "nvmlDeviceGetName", Device;
    GetPciInfo = "nvmlDeviceGetPciInfo_v3", Device;
    GetMemoryInfoV2 = "nvmlDeviceGetMemoryInfo_v2", Device;
    GetMemoryInfo = "nvmlDeviceGetMemoryInfo", Device;
    GetUtilizationRates = "nvmlDeviceGetUtilizationRates", Device;
    GetTemperature = "nvmlDeviceGetTemperature", Device;
    GetPowerUsage = "nvmlDeviceGetPowerUsage", Device;
    GetTotalEnergyConsumption = "nvmlDeviceGetTotalEnergyConsumption", Device;
    GetNumFans = "nvmlDeviceGetNumFans", Device;
    GetFanSpeedV2 = "nvmlDeviceGetFanSpeed_v2", Device;
    GetFanSpeed = "nvmlDeviceGetFanSpeed", Device;
    GetClockInfo = "nvmlDeviceGetClockInfo", Device;
    GetTotalEccErrors = "nvmlDeviceGetTotalEccErrors", Device;
    GetMigMode = "nvmlDeviceGetMigMode", Device;
    GetMultiGpuBoard = "nvmlDeviceGetMultiGpuBoard", Device;
    GetComputeProcesses = "nvmlDeviceGetComputeRunningProcesses_v3", Device;
    GetGraphicsProcesses = "nvmlDeviceGetGraphicsRunningProcesses_v3", Device;
    GetMpsProcesses = "nvmlDeviceGetMPSComputeRunningProcesses_v3", Device;
    GetProcessUtilization = "nvmlDeviceGetProcessUtilization", Device;
    GetRetiredPages = "nvmlDeviceGetRetiredPages", Device;
    GetRetiredPagesV2 = "nvmlDeviceGetRetiredPages_v2", Device;
    GetRetiredPagesPendingStatus = "nvmlDeviceGetRetiredPagesPendingStatus", Device;
    GetRemappedRows = "nvmlDeviceGetRemappedRows", Device;
    GetClocksEventReasons = "nvmlDeviceGetCurrentClocksEventReasons", Device;
    GetClocksThrottleReasons = "nvmlDeviceGetCurrentClocksThrottleReasons", Device;
    GetPerformanceState = "nvmlDeviceGetPerformanceState", Device;
    GetPcieReplayCounter = "nvmlDeviceGetPcieReplayCounter", Device;
    EventSetCreate = "nvmlEventSetCreate", Top;
    EventSetWait = "nvmlEventSetWait_v2", Top;
    GetSupportedEventTypes = "nvmlDeviceGetSupportedEventTypes", Device;
    RegisterEvents = "nvmlDeviceRegisterEvents", Device;
    GpmSampleAlloc = "nvmlGpmSampleAlloc", Top;
    GpmMetricsGet = "nvmlGpmMetricsGet", Top;
    GpmQueryDeviceSupport = "nvmlGpmQueryDeviceSupport", Device;
    GpmSampleGet = "nvmlGpmSampleGet", Device;
}

/// Number of functions in [`FUNCS`].
pub(crate) const N_FUNCS: usize = FUNCS.len();

// The table must be in declaration order (it is indexed by `Func as usize`),
// and the hang set is a `u64` bit mask.
const _: () = {
    assert!(N_FUNCS <= 64);
    let mut i = 0;
    while i < N_FUNCS {
        assert!(FUNCS[i].0 as usize == i);
        i += 1;
    }
};

impl Func {
    /// Whether the function is about one device (a lost GPU fails it).
    pub(crate) fn is_device(self) -> bool {
        FUNCS[self as usize].2 == Scope::Device
    }

    /// The bit of this function in a hang mask.
    pub(crate) const fn bit(self) -> u64 {
        1 << (self as usize)
    }

    /// The exported name.
    #[cfg(test)]
    pub(crate) fn name(self) -> &'static str {
        FUNCS[self as usize].1
    }
}

/// A metric: one value, or a series that advances one element per `step_ms`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum Metric<T> {
    /// A constant value.
    One(T),
    /// A cycling time series (never empty once validated).
    Series(Vec<T>),
}

/// The time base of the series: time since the first `nvmlInit`.
pub(crate) struct Ticker {
    /// When NVML was first initialised (refcount 0 -> 1).
    pub(crate) start: Instant,
    /// Milliseconds per series element (>= 1).
    pub(crate) step_ms: u64,
}

impl Ticker {
    /// Milliseconds since init.
    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl<T: Copy> Metric<T> {
    /// The current value.
    pub(crate) fn at(&self, ticker: &Ticker) -> T {
        match self {
            Metric::One(v) => *v,
            Metric::Series(vs) => {
                let len = vs.len().max(1) as u128;
                let step = ticker.step_ms.max(1) as u128;
                let i = (ticker.start.elapsed().as_millis() / step) % len;
                // `i < len`, and an empty series is rejected at parse time.
                match vs.get(i as usize) {
                    Some(v) => *v,
                    None => unreachable_metric(),
                }
            }
        }
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        match self {
            Metric::Series(vs) if vs.is_empty() => Err(format!("{what}: empty series")),
            _ => Ok(()),
        }
    }
}

#[cold]
fn unreachable_metric<T>() -> T {
    // Validation guarantees series are non-empty; a panic here is caught by
    // the `catch_unwind` guard around every exported function.
    panic!("fake-nvml: empty metric series")
}

/// Which process lists a process appears in.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProcKind {
    /// `nvmlDeviceGetComputeRunningProcesses_v3` only.
    #[default]
    Compute,
    /// `nvmlDeviceGetGraphicsRunningProcesses_v3` only.
    Graphics,
    /// Both lists.
    Both,
}

impl ProcKind {
    pub(crate) fn compute(self) -> bool {
        matches!(self, ProcKind::Compute | ProcKind::Both)
    }

    pub(crate) fn graphics(self) -> bool {
        matches!(self, ProcKind::Graphics | ProcKind::Both)
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    driver_version: Option<String>,
    nvml_version: Option<String>,
    cuda_driver_version: Option<i32>,
    step_ms: Option<u64>,
    #[serde(default)]
    errors: BTreeMap<String, String>,
    #[serde(default)]
    hang: Vec<String>,
    #[serde(default)]
    gpus: Vec<RawGpu>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    uuid: Option<String>,
    name: Option<String>,
    pci_bus_id: Option<String>,
    pci_device_id: Option<u32>,
    pci_subsystem_id: Option<u32>,
    memory_total_bytes: Option<u64>,
    memory_used_bytes: Option<Metric<u64>>,
    utilization_gpu_pct: Option<Metric<u32>>,
    utilization_memory_pct: Option<Metric<u32>>,
    temperature_c: Option<Metric<u32>>,
    power_mw: Option<Metric<u32>>,
    total_energy_mj: Option<Metric<u64>>,
    fan_speed_pct: Option<Metric<u32>>,
    num_fans: Option<u32>,
    clock_graphics_mhz: Option<Metric<u32>>,
    clock_sm_mhz: Option<Metric<u32>>,
    clock_mem_mhz: Option<Metric<u32>>,
    clock_video_mhz: Option<Metric<u32>>,
    ecc_volatile_corrected: Option<Metric<u64>>,
    ecc_volatile_uncorrected: Option<Metric<u64>>,
    ecc_aggregate_corrected: Option<Metric<u64>>,
    ecc_aggregate_uncorrected: Option<Metric<u64>>,
    retired_pages_sbe: Option<Metric<u32>>,
    retired_pages_dbe: Option<Metric<u32>>,
    retired_pages_pending: Option<Metric<bool>>,
    remapped_rows: Option<RawRemappedRows>,
    throttle_reasons: Option<Metric<u64>>,
    pstate: Option<Metric<u32>>,
    pcie_replay_counter: Option<Metric<u32>>,
    lost_at_ms: Option<u64>,
    event_types: Option<Vec<EventKind>>,
    events: Option<Vec<RawEvent>>,
    gpm: Option<RawGpm>,
    mig_enabled: Option<bool>,
    multi_gpu_board: Option<bool>,
    #[serde(default)]
    processes: Vec<RawProcess>,
    #[serde(default)]
    errors: BTreeMap<String, String>,
    #[serde(default)]
    hang: Vec<String>,
}

/// `remapped_rows`: what `nvmlDeviceGetRemappedRows` answers.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawRemappedRows {
    correctable: Option<Metric<u32>>,
    uncorrectable: Option<Metric<u32>>,
    pending: Option<Metric<bool>>,
    failure: Option<Metric<bool>>,
}

/// One entry of `events`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at_ms: u64,
    #[serde(rename = "type")]
    kind: EventKind,
    data: Option<u64>,
}

/// `gpm`: GPM metrics in percent (NVML's unit), one key per metric served.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawGpm {
    graphics_pct: Option<Metric<f64>>,
    sm_pct: Option<Metric<f64>>,
    tensor_pct: Option<Metric<f64>>,
    dram_pct: Option<Metric<f64>>,
}

/// An NVML event type, as scenarios name it.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// `nvmlEventTypeSingleBitEccError`.
    SingleBitEcc,
    /// `nvmlEventTypeDoubleBitEccError`.
    DoubleBitEcc,
    /// `nvmlEventTypePState`.
    Pstate,
    /// `nvmlEventTypeXidCriticalError`.
    Xid,
    /// `nvmlEventTypeClock`.
    Clock,
}

impl EventKind {
    /// Every type, in bit order.
    const ALL: [EventKind; 5] = [
        EventKind::SingleBitEcc,
        EventKind::DoubleBitEcc,
        EventKind::Pstate,
        EventKind::Xid,
        EventKind::Clock,
    ];

    /// NVML's bit for the type.
    pub(crate) fn bit(self) -> u64 {
        match self {
            EventKind::SingleBitEcc => 0x1,
            EventKind::DoubleBitEcc => 0x2,
            EventKind::Pstate => 0x4,
            EventKind::Xid => 0x8,
            EventKind::Clock => 0x10,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    pid: u32,
    #[serde(default)]
    used_memory_bytes: Option<Metric<u64>>,
    #[serde(default)]
    kind: ProcKind,
    sm_util_pct: Option<Metric<u32>>,
    mem_util_pct: Option<Metric<u32>>,
}

/// A validated scenario.
#[derive(Debug)]
pub(crate) struct Scenario {
    pub(crate) driver_version: CString,
    pub(crate) nvml_version: CString,
    /// NVML's encoding, 1000 * major + 10 * minor (12040 is CUDA 12.4).
    pub(crate) cuda_driver_version: i32,
    pub(crate) step_ms: u64,
    /// Error code per function (0 = none), `"*"` already expanded.
    pub(crate) errors: [u32; N_FUNCS],
    /// Hang mask (`Func::bit`), `"*"` already expanded.
    pub(crate) hang: u64,
    pub(crate) gpus: Vec<Gpu>,
}

/// A validated GPU.
#[derive(Debug)]
pub(crate) struct Gpu {
    pub(crate) uuid: CString,
    pub(crate) name: CString,
    pub(crate) pci: nvmlPciInfo_t,
    pub(crate) memory_total: Option<u64>,
    pub(crate) memory_used: Option<Metric<u64>>,
    pub(crate) util_gpu: Option<Metric<u32>>,
    pub(crate) util_mem: Option<Metric<u32>>,
    pub(crate) temperature: Option<Metric<u32>>,
    pub(crate) power: Option<Metric<u32>>,
    /// Energy since the driver loaded, millijoules.
    pub(crate) total_energy: Option<Metric<u64>>,
    pub(crate) fan_speed: Option<Metric<u32>>,
    pub(crate) num_fans: u32,
    pub(crate) clock_graphics: Option<Metric<u32>>,
    pub(crate) clock_sm: Option<Metric<u32>>,
    pub(crate) clock_mem: Option<Metric<u32>>,
    pub(crate) clock_video: Option<Metric<u32>>,
    pub(crate) ecc_corrected: Option<Metric<u64>>,
    pub(crate) ecc_uncorrected: Option<Metric<u64>>,
    pub(crate) ecc_aggregate_corrected: Option<Metric<u64>>,
    pub(crate) ecc_aggregate_uncorrected: Option<Metric<u64>>,
    /// Pages retired after multiple single-bit errors (cause 0).
    pub(crate) retired_sbe: Option<Metric<u32>>,
    /// Pages retired after a double-bit error (cause 1).
    pub(crate) retired_dbe: Option<Metric<u32>>,
    pub(crate) retired_pending: Option<Metric<bool>>,
    pub(crate) remapped_rows: Option<RemappedRows>,
    /// Clock event (throttle) reasons bitmask.
    pub(crate) throttle_reasons: Option<Metric<u64>>,
    pub(crate) pstate: Option<Metric<u32>>,
    pub(crate) pcie_replay: Option<Metric<u32>>,
    /// From this many milliseconds after init, every call on the device is GPU_IS_LOST.
    pub(crate) lost_at_ms: Option<u64>,
    /// The event types the GPU supports (`None`: the event API is NOT_SUPPORTED).
    pub(crate) event_mask: Option<u64>,
    /// Its events, by time.
    pub(crate) events: Vec<Event>,
    pub(crate) gpm: Option<Gpm>,
    pub(crate) mig_enabled: Option<bool>,
    pub(crate) multi_gpu_board: bool,
    pub(crate) processes: Vec<Process>,
    /// Whether any process has `sm_util_pct` (else ProcessUtilization is NOT_SUPPORTED).
    pub(crate) has_process_util: bool,
    pub(crate) errors: [u32; N_FUNCS],
    pub(crate) hang: u64,
}

/// What `nvmlDeviceGetRemappedRows` answers (absent members are 0 / false).
#[derive(Debug)]
pub(crate) struct RemappedRows {
    pub(crate) correctable: Option<Metric<u32>>,
    pub(crate) uncorrectable: Option<Metric<u32>>,
    pub(crate) pending: Option<Metric<bool>>,
    pub(crate) failure: Option<Metric<bool>>,
}

/// One event of a GPU. Identified by (GPU, time, type, data): an event set delivers each
/// once, so re-reading an unchanged scenario delivers nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Event {
    /// Milliseconds after init at which it happens.
    pub(crate) at_ms: u64,
    pub(crate) kind: EventKind,
    /// The Xid code for `xid`; else 0 unless given.
    pub(crate) data: u64,
}

/// GPM metrics in percent; an absent one is NOT_SUPPORTED in `nvmlGpmMetricsGet`.
#[derive(Debug)]
pub(crate) struct Gpm {
    pub(crate) graphics: Option<Metric<f64>>,
    pub(crate) sm: Option<Metric<f64>>,
    pub(crate) tensor: Option<Metric<f64>>,
    pub(crate) dram: Option<Metric<f64>>,
}

/// A validated process.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) used_memory: Option<Metric<u64>>,
    pub(crate) kind: ProcKind,
    pub(crate) sm_util: Option<Metric<u32>>,
    pub(crate) mem_util: Option<Metric<u32>>,
}

fn lookup_func(name: &str) -> Option<(Func, Scope)> {
    FUNCS
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|&(f, _, s)| (f, s))
}

fn scope_ok(scope: Scope, top_level: bool) -> bool {
    match scope {
        Scope::Top => top_level,
        Scope::Device => !top_level,
        Scope::Handle => true,
    }
}

/// Whether `"*"` in a map of this level covers a function of `scope`.
fn star_covers(scope: Scope, top_level: bool) -> bool {
    match scope {
        Scope::Top | Scope::Handle => top_level,
        Scope::Device => !top_level,
    }
}

fn parse_errors(
    map: &BTreeMap<String, String>,
    top_level: bool,
    ctx: &str,
) -> Result<[u32; N_FUNCS], String> {
    let mut out = [0u32; N_FUNCS];
    let code_of = |key: &str, v: &str| {
        error_code_by_name(v)
            .ok_or_else(|| format!("{ctx}errors[{key:?}]: unknown error name {v:?}"))
    };
    if let Some(v) = map.get("*") {
        let code = code_of("*", v)?;
        for &(f, _, s) in FUNCS {
            if star_covers(s, top_level) {
                out[f as usize] = code;
            }
        }
    }
    for (k, v) in map {
        if k == "*" {
            continue;
        }
        let code = code_of(k, v)?;
        match lookup_func(k) {
            Some((f, s)) if scope_ok(s, top_level) => out[f as usize] = code,
            Some(_) => {
                return Err(format!(
                    "{ctx}errors: {k:?} is a {} function and cannot be listed here",
                    if top_level {
                        "per-device"
                    } else {
                        "non-device"
                    }
                ));
            }
            None => return Err(format!("{ctx}errors: unknown function name {k:?}")),
        }
    }
    Ok(out)
}

fn parse_hang(list: &[String], top_level: bool, ctx: &str) -> Result<u64, String> {
    let mut mask = 0u64;
    for k in list {
        if k == "*" {
            for &(f, _, s) in FUNCS {
                if star_covers(s, top_level) {
                    mask |= f.bit();
                }
            }
            continue;
        }
        match lookup_func(k) {
            Some((f, s)) if scope_ok(s, top_level) => mask |= f.bit(),
            Some(_) => {
                return Err(format!(
                    "{ctx}hang: {k:?} is a {} function and cannot be listed here",
                    if top_level {
                        "per-device"
                    } else {
                        "non-device"
                    }
                ));
            }
            None => return Err(format!("{ctx}hang: unknown function name {k:?}")),
        }
    }
    Ok(mask)
}

fn cstring(s: String, what: &str, max_len: usize) -> Result<CString, String> {
    if s.len() > max_len {
        return Err(format!("{what}: longer than {max_len} bytes"));
    }
    CString::new(s).map_err(|_| format!("{what}: contains a NUL byte"))
}

/// Parses `DOMAIN:BUS:DEVICE.FUNCTION` (hex, any number of digits; the
/// values must fit PCI: bus <= 0xFF, device <= 0x1F, function <= 7).
fn parse_pci(bus_id: &str) -> Option<(u32, u32, u32, u32)> {
    let (domain, rest) = bus_id.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, max: u32| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().filter(|&v| v <= max)
    };
    Some((
        hex(domain, u32::MAX)?,
        hex(bus, 0xFF)?,
        hex(device, 0x1F)?,
        hex(function, 7)?,
    ))
}

fn fill_c_chars(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as c_char;
    }
}

fn build_pci(
    bus_id: &str,
    device_id: u32,
    subsystem_id: u32,
    ctx: &str,
) -> Result<nvmlPciInfo_t, String> {
    let (domain, bus, device, function) = parse_pci(bus_id).ok_or_else(|| {
        format!(
            "{ctx}pci_bus_id {bus_id:?}: expected DOMAIN:BUS:DEVICE.FUNCTION in hex \
             (bus <= FF, device <= 1F, function <= 7)"
        )
    })?;
    let mut pci = nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain,
        bus,
        device,
        pciDeviceId: device_id,
        pciSubSystemId: subsystem_id,
        busId: [0; 32],
    };
    if bus_id.len() >= pci.busId.len() {
        return Err(format!("{ctx}pci_bus_id {bus_id:?}: too long"));
    }
    fill_c_chars(&mut pci.busId, bus_id);
    let legacy = format!(
        "{:04X}:{bus:02X}:{device:02X}.{function:X}",
        domain & 0xffff
    );
    fill_c_chars(&mut pci.busIdLegacy, &legacy);
    Ok(pci)
}

impl Scenario {
    /// Parses and validates a scenario file's contents.
    pub(crate) fn parse(text: &[u8]) -> Result<Scenario, String> {
        let raw: RawScenario = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let step_ms = raw.step_ms.unwrap_or(1000);
        if step_ms == 0 {
            return Err("step_ms must be at least 1".into());
        }
        let mut gpus = Vec::with_capacity(raw.gpus.len());
        for (i, g) in raw.gpus.into_iter().enumerate() {
            gpus.push(Gpu::from_raw(i, g)?);
        }
        Ok(Scenario {
            driver_version: cstring(
                raw.driver_version.unwrap_or_else(|| "550.54.15".into()),
                "driver_version",
                79,
            )?,
            nvml_version: cstring(
                raw.nvml_version.unwrap_or_else(|| "12.550.54.15".into()),
                "nvml_version",
                79,
            )?,
            cuda_driver_version: raw.cuda_driver_version.unwrap_or(12040),
            step_ms,
            errors: parse_errors(&raw.errors, true, "")?,
            hang: parse_hang(&raw.hang, true, "")?,
            gpus,
        })
    }
}

impl Gpu {
    fn from_raw(index: usize, g: RawGpu) -> Result<Gpu, String> {
        let ctx = format!("gpus[{index}].");
        let uuid = g
            .uuid
            .unwrap_or_else(|| format!("GPU-00000000-0000-4000-8000-{index:012x}"));
        let name = g.name.unwrap_or_else(|| "NVIDIA Fake GPU".into());
        let bus_id = g
            .pci_bus_id
            .unwrap_or_else(|| format!("00000000:{:02X}:00.0", (index + 1) & 0xff));
        let pci = build_pci(
            &bus_id,
            g.pci_device_id.unwrap_or(0),
            g.pci_subsystem_id.unwrap_or(0),
            &ctx,
        )?;

        let metrics64 = [
            (&g.memory_used_bytes, "memory_used_bytes"),
            (&g.ecc_volatile_corrected, "ecc_volatile_corrected"),
            (&g.ecc_volatile_uncorrected, "ecc_volatile_uncorrected"),
            (&g.total_energy_mj, "total_energy_mj"),
            (&g.ecc_aggregate_corrected, "ecc_aggregate_corrected"),
            (&g.ecc_aggregate_uncorrected, "ecc_aggregate_uncorrected"),
            (&g.throttle_reasons, "throttle_reasons"),
        ];
        for (m, what) in metrics64 {
            if let Some(m) = m {
                m.validate(&format!("{ctx}{what}"))?;
            }
        }
        let metrics32 = [
            (&g.utilization_gpu_pct, "utilization_gpu_pct"),
            (&g.utilization_memory_pct, "utilization_memory_pct"),
            (&g.temperature_c, "temperature_c"),
            (&g.power_mw, "power_mw"),
            (&g.fan_speed_pct, "fan_speed_pct"),
            (&g.clock_graphics_mhz, "clock_graphics_mhz"),
            (&g.clock_sm_mhz, "clock_sm_mhz"),
            (&g.clock_mem_mhz, "clock_mem_mhz"),
            (&g.clock_video_mhz, "clock_video_mhz"),
            (&g.retired_pages_sbe, "retired_pages_sbe"),
            (&g.retired_pages_dbe, "retired_pages_dbe"),
            (&g.pstate, "pstate"),
            (&g.pcie_replay_counter, "pcie_replay_counter"),
        ];
        for (m, what) in metrics32 {
            if let Some(m) = m {
                m.validate(&format!("{ctx}{what}"))?;
            }
        }

        if let Some(m) = &g.retired_pages_pending {
            m.validate(&format!("{ctx}retired_pages_pending"))?;
        }
        if let Some(pstate) = &g.pstate {
            let values = match pstate {
                Metric::One(v) => std::slice::from_ref(v),
                Metric::Series(vs) => vs.as_slice(),
            };
            if let Some(bad) = values.iter().find(|&&v| v > 15 && v != 32) {
                return Err(format!(
                    "{ctx}pstate: {bad} is not a performance state (0-15, or 32 for unknown)"
                ));
            }
        }
        let remapped_rows = match g.remapped_rows {
            None => None,
            Some(r) => {
                for (m, what) in [
                    (&r.correctable, "correctable"),
                    (&r.uncorrectable, "uncorrectable"),
                ] {
                    if let Some(m) = m {
                        m.validate(&format!("{ctx}remapped_rows.{what}"))?;
                    }
                }
                for (m, what) in [(&r.pending, "pending"), (&r.failure, "failure")] {
                    if let Some(m) = m {
                        m.validate(&format!("{ctx}remapped_rows.{what}"))?;
                    }
                }
                Some(RemappedRows {
                    correctable: r.correctable,
                    uncorrectable: r.uncorrectable,
                    pending: r.pending,
                    failure: r.failure,
                })
            }
        };
        let gpm = match g.gpm {
            None => None,
            Some(m) => {
                for (metric, what) in [
                    (&m.graphics_pct, "graphics_pct"),
                    (&m.sm_pct, "sm_pct"),
                    (&m.tensor_pct, "tensor_pct"),
                    (&m.dram_pct, "dram_pct"),
                ] {
                    if let Some(metric) = metric {
                        metric.validate(&format!("{ctx}gpm.{what}"))?;
                    }
                }
                Some(Gpm {
                    graphics: m.graphics_pct,
                    sm: m.sm_pct,
                    tensor: m.tensor_pct,
                    dram: m.dram_pct,
                })
            }
        };
        let mut events = Vec::new();
        for (j, e) in g.events.iter().flatten().enumerate() {
            let data = match (e.kind, e.data) {
                (EventKind::Xid, None) => {
                    return Err(format!(
                        "{ctx}events[{j}]: an xid event needs its code in data"
                    ));
                }
                (_, data) => data.unwrap_or(0),
            };
            events.push(Event {
                at_ms: e.at_ms,
                kind: e.kind,
                data,
            });
        }
        events.sort();
        events.dedup();
        let event_mask = match (&g.event_types, &g.events) {
            (Some(types), _) => Some(types.iter().fold(0, |mask, kind| mask | kind.bit())),
            (None, Some(_)) => Some(
                EventKind::ALL
                    .iter()
                    .fold(0, |mask, kind| mask | kind.bit()),
            ),
            (None, None) => None,
        };
        if let Some(mask) = event_mask
            && let Some(e) = events.iter().find(|e| mask & e.kind.bit() == 0)
        {
            return Err(format!(
                "{ctx}events: a {:?} event on a GPU whose event_types do not include it",
                e.kind
            ));
        }

        let mut processes = Vec::with_capacity(g.processes.len());
        for (j, p) in g.processes.into_iter().enumerate() {
            let pctx = format!("{ctx}processes[{j}]");
            if let Some(m) = &p.used_memory_bytes {
                m.validate(&format!("{pctx}.used_memory_bytes"))?;
            }
            if let Some(m) = &p.sm_util_pct {
                m.validate(&format!("{pctx}.sm_util_pct"))?;
            }
            if let Some(m) = &p.mem_util_pct {
                m.validate(&format!("{pctx}.mem_util_pct"))?;
            }
            processes.push(Process {
                pid: p.pid,
                used_memory: p.used_memory_bytes,
                kind: p.kind,
                sm_util: p.sm_util_pct,
                mem_util: p.mem_util_pct,
            });
        }
        let has_process_util = processes.iter().any(|p| p.sm_util.is_some());

        let num_fans = match (&g.fan_speed_pct, g.num_fans) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(0)) => {
                return Err(format!(
                    "{ctx}num_fans must be at least 1 when fan_speed_pct is set"
                ));
            }
            (Some(_), Some(n)) => n,
        };

        Ok(Gpu {
            uuid: cstring(uuid, &format!("{ctx}uuid"), 95)?,
            name: cstring(name, &format!("{ctx}name"), 95)?,
            pci,
            memory_total: g.memory_total_bytes,
            memory_used: g.memory_used_bytes,
            util_gpu: g.utilization_gpu_pct,
            util_mem: g.utilization_memory_pct,
            temperature: g.temperature_c,
            power: g.power_mw,
            total_energy: g.total_energy_mj,
            fan_speed: g.fan_speed_pct,
            num_fans,
            clock_graphics: g.clock_graphics_mhz,
            clock_sm: g.clock_sm_mhz,
            clock_mem: g.clock_mem_mhz,
            clock_video: g.clock_video_mhz,
            ecc_corrected: g.ecc_volatile_corrected,
            ecc_uncorrected: g.ecc_volatile_uncorrected,
            ecc_aggregate_corrected: g.ecc_aggregate_corrected,
            ecc_aggregate_uncorrected: g.ecc_aggregate_uncorrected,
            retired_sbe: g.retired_pages_sbe,
            retired_dbe: g.retired_pages_dbe,
            retired_pending: g.retired_pages_pending,
            remapped_rows,
            throttle_reasons: g.throttle_reasons,
            pstate: g.pstate,
            pcie_replay: g.pcie_replay_counter,
            lost_at_ms: g.lost_at_ms,
            event_mask,
            events,
            gpm,
            mig_enabled: g.mig_enabled,
            multi_gpu_board: g.multi_gpu_board.unwrap_or(false),
            processes,
            has_process_util,
            errors: parse_errors(&g.errors, false, &ctx)?,
            hang: parse_hang(&g.hang, false, &ctx)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let text = br#"{
          "driver_version": "550.54.15",
          "nvml_version": "12.550.54.15",
          "cuda_driver_version": 12020,
          "step_ms": 1000,
          "errors": {"nvmlDeviceGetCount_v2": "UNKNOWN"},
          "hang": ["nvmlDeviceGetCount_v2"],
          "gpus": [{
            "uuid": "GPU-6f3c1f0e-0000-4000-8000-000000000000",
            "name": "NVIDIA A100-SXM4-80GB",
            "pci_bus_id": "00000000:07:00.0",
            "memory_total_bytes": 85899345920,
            "memory_used_bytes": 1073741824,
            "utilization_gpu_pct": 50,
            "utilization_memory_pct": [20, 30, 40],
            "temperature_c": 40,
            "power_mw": 250000,
            "fan_speed_pct": 30,
            "clock_sm_mhz": 1410,
            "clock_mem_mhz": 1593,
            "ecc_volatile_corrected": 0,
            "ecc_volatile_uncorrected": 0,
            "mig_enabled": false,
            "multi_gpu_board": false,
            "processes": [
              {"pid": 1234, "used_memory_bytes": 536870912, "kind": "compute", "sm_util_pct": 30, "mem_util_pct": 10},
              {"pid": 1240, "used_memory_bytes": null, "kind": "both"}
            ],
            "errors": {"nvmlDeviceGetTemperature": "NOT_SUPPORTED"},
            "hang": ["nvmlDeviceGetPowerUsage"]
          }]
        }"#;
        let sc = Scenario::parse(text).expect("parses");
        assert_eq!(sc.cuda_driver_version, 12020);
        assert_eq!(sc.errors[Func::DeviceGetCount as usize], 999);
        assert_eq!(sc.hang, Func::DeviceGetCount.bit());
        let g = &sc.gpus[0];
        assert_eq!(g.errors[Func::GetTemperature as usize], 3);
        assert_eq!(g.hang, Func::GetPowerUsage.bit());
        assert_eq!((g.pci.domain, g.pci.bus, g.pci.device), (0, 7, 0));
        assert!(g.has_process_util);
        assert_eq!(g.num_fans, 1);
        assert!(g.processes[1].used_memory.is_none());
        assert_eq!(g.processes[1].kind, ProcKind::Both);
    }

    #[test]
    fn star_expansion_respects_scope() {
        let sc = Scenario::parse(
            br#"{"errors": {"*": "UNKNOWN"}, "hang": ["*"],
                 "gpus": [{"errors": {"*": "GPU_IS_LOST"}, "hang": ["*"]}]}"#,
        )
        .expect("parses");
        for &(f, name, scope) in FUNCS {
            assert_eq!(f.name(), name);
            let top = sc.errors[f as usize] != 0;
            let dev = sc.gpus[0].errors[f as usize] != 0;
            assert_eq!(top, scope != Scope::Device, "{name}");
            assert_eq!(dev, scope == Scope::Device, "{name}");
            assert_eq!(sc.hang & f.bit() != 0, top, "{name}");
            assert_eq!(sc.gpus[0].hang & f.bit() != 0, dev, "{name}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &br#"{"errors": {"nvmlDeviceGetCount_v2": "BOGUS"}}"#[..],
            br#"{"errors": {"nvmlDeviceGetTemperature": "UNKNOWN"}}"#,
            br#"{"gpus": [{"errors": {"nvmlDeviceGetCount_v2": "UNKNOWN"}}]}"#,
            br#"{"gpus": [{"hang": ["nvmlDeviceGetTemprature"]}]}"#,
            br#"{"gpus": [{"temperature": 40}]}"#,
            br#"{"gpus": [{"temperature_c": []}]}"#,
            br#"{"gpus": [{"pci_bus_id": "07:00"}]}"#,
            br#"{"step_ms": 0}"#,
            br#"{"gpus": [{"processes": [{"pid": 1, "kind": "mps"}]}]}"#,
            b"not json",
        ] {
            assert!(
                Scenario::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn handle_lookup_allowed_per_gpu_but_not_by_star() {
        let sc = Scenario::parse(
            br#"{"gpus": [{"errors": {"nvmlDeviceGetHandleByIndex_v2": "GPU_IS_LOST"}}, {"errors": {"*": "GPU_IS_LOST"}}]}"#,
        )
        .expect("parses");
        assert_eq!(sc.gpus[0].errors[Func::GetHandleByIndex as usize], 15);
        assert_eq!(sc.gpus[1].errors[Func::GetHandleByIndex as usize], 0);
    }

    #[test]
    fn pci_bus_id_digits_are_lenient_but_values_checked() {
        let sc = Scenario::parse(
            br#"{"gpus": [{"pci_bus_id": "00000000:010:00.0"}, {"pci_bus_id": "0001:C1:1F.7"}]}"#,
        )
        .expect("parses");
        let p = &sc.gpus[0].pci;
        assert_eq!((p.domain, p.bus, p.device), (0, 0x10, 0));
        let legacy: Vec<u8> = p
            .busIdLegacy
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        assert_eq!(legacy, b"0000:10:00.0");
        let p = &sc.gpus[1].pci;
        assert_eq!((p.domain, p.bus, p.device), (1, 0xC1, 0x1F));
        for bad in [
            "0000:100:00.0",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:0x1:00.0",
        ] {
            let text = format!(r#"{{"gpus": [{{"pci_bus_id": "{bad}"}}]}}"#);
            assert!(Scenario::parse(text.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_keys_parse_and_absent_stays_absent() {
        let sc = Scenario::parse(
            br#"{"gpus": [{
              "ecc_aggregate_corrected": 3, "ecc_aggregate_uncorrected": [0, 1],
              "retired_pages_sbe": 2, "retired_pages_dbe": 1, "retired_pages_pending": [false, true],
              "remapped_rows": {"uncorrectable": 1, "failure": true},
              "throttle_reasons": 64, "pstate": [0, 32], "pcie_replay_counter": 9,
              "lost_at_ms": 1500,
              "events": [{"at_ms": 20, "type": "xid", "data": 79}, {"at_ms": 10, "type": "double_bit_ecc"},
                         {"at_ms": 10, "type": "double_bit_ecc"}],
              "gpm": {"sm_pct": 40.5}
            }, {"event_types": ["xid"]}, {}]}"#,
        )
        .expect("parses");
        let g = &sc.gpus[0];
        assert!(g.ecc_aggregate_corrected.is_some() && g.ecc_corrected.is_none());
        let rows = g.remapped_rows.as_ref().expect("remapped rows");
        assert!(rows.correctable.is_none() && rows.failure.is_some());
        assert_eq!(g.lost_at_ms, Some(1500));
        assert_eq!(
            g.event_mask,
            Some(0x1f),
            "every type when only events are given"
        );
        let events: Vec<(u64, EventKind, u64)> =
            g.events.iter().map(|e| (e.at_ms, e.kind, e.data)).collect();
        assert_eq!(
            events,
            [(10, EventKind::DoubleBitEcc, 0), (20, EventKind::Xid, 79)],
            "sorted by time, duplicates one event"
        );
        let gpm = g.gpm.as_ref().expect("gpm");
        assert!(gpm.sm.is_some() && gpm.graphics.is_none());
        assert_eq!(sc.gpus[1].event_mask, Some(0x8));
        assert!(sc.gpus[1].events.is_empty());
        let plain = &sc.gpus[2];
        assert!(plain.event_mask.is_none() && plain.gpm.is_none());
        assert!(plain.throttle_reasons.is_none() && plain.remapped_rows.is_none());
        assert!(plain.lost_at_ms.is_none());
    }

    #[test]
    fn rejects_bad_health_keys() {
        for bad in [
            &br#"{"gpus": [{"pstate": 16}]}"#[..],
            br#"{"gpus": [{"events": [{"at_ms": 0, "type": "xid"}]}]}"#,
            br#"{"gpus": [{"events": [{"at_ms": 0, "type": "fire"}]}]}"#,
            br#"{"gpus": [{"event_types": ["xid"], "events": [{"at_ms": 0, "type": "clock"}]}]}"#,
            br#"{"gpus": [{"remapped_rows": {"spare": 1}}]}"#,
            br#"{"gpus": [{"gpm": {"sm": 40}}]}"#,
            br#"{"gpus": [{"retired_pages_sbe": []}]}"#,
        ] {
            assert!(
                Scenario::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn series_cycles() {
        let m: Metric<u32> = Metric::Series(vec![1, 2, 3]);
        let t = Ticker {
            start: Instant::now() - std::time::Duration::from_millis(4500),
            step_ms: 1000,
        };
        assert_eq!(m.at(&t), 2);
    }
}
