//! Global state: the loaded scenario, the init refcount, reloading, and the
//! common prologue of every exported function (init check, hang, injected
//! errors).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::codes::{GPU_IS_LOST, INVALID_ARGUMENT, Ret, SUCCESS, UNINITIALIZED, UNKNOWN};
use crate::scenario::{Func, Gpu, Scenario, Ticker};

/// Environment variable naming the scenario file.
pub(crate) const SCENARIO_ENV: &str = "FAKE_NVML_SCENARIO";

/// How long a hanging call sleeps between checks of the scenario.
const HANG_STEP: Duration = Duration::from_millis(10);

/// Identity of one version of the scenario file (from one `stat`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

struct State {
    /// `nvmlInit*` calls minus `nvmlShutdown` calls.
    refcount: u32,
    /// The scenario file of the last successful `nvmlInit*`.
    path: Option<PathBuf>,
    /// The file version `scenario` was parsed from.
    loaded: Option<FileId>,
    /// The last warning printed about a failed reload (printed once each).
    last_warning: Option<String>,
    scenario: Option<Scenario>,
    /// Time of the refcount 0 -> 1 transition (the series time base).
    start: Option<Instant>,
}

static STATE: RwLock<State> = RwLock::new(State {
    refcount: 0,
    path: None,
    loaded: None,
    last_warning: None,
    scenario: None,
    start: None,
});

fn read_state() -> RwLockReadGuard<'static, State> {
    STATE.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_state() -> RwLockWriteGuard<'static, State> {
    STATE.write().unwrap_or_else(PoisonError::into_inner)
}

/// Prints a line to stderr, ignoring failures (never panics).
pub(crate) fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "fake-nvml: {msg}");
}

/// Runs `f`, turning a panic into `NVML_ERROR_UNKNOWN` (no unwinding across FFI).
pub(crate) fn guard(f: impl FnOnce() -> Ret) -> Ret {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(UNKNOWN)
}

/// Opens, `fstat`s, reads and parses the scenario file.
fn load(path: &PathBuf) -> Result<(Scenario, FileId), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let mut text = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    let scenario = Scenario::parse(&text).map_err(|e| format!("invalid scenario: {e}"))?;
    Ok((scenario, FileId::of(&meta)))
}

/// Re-reads the scenario file if its identity (one `stat`) changed.
/// A failed re-read keeps the previous scenario and warns once.
pub(crate) fn maybe_reload() {
    let (path, loaded) = {
        let st = read_state();
        match &st.path {
            Some(p) => (p.clone(), st.loaded),
            None => return,
        }
    };
    let result = match fs::metadata(&path) {
        Ok(meta) if Some(FileId::of(&meta)) == loaded => return,
        Ok(_) => load(&path),
        Err(e) => Err(format!("cannot stat: {e}")),
    };
    let mut st = write_state();
    if st.path.as_ref() != Some(&path) {
        return; // Re-initialised with another file meanwhile.
    }
    match result {
        Ok((scenario, id)) => {
            st.scenario = Some(scenario);
            st.loaded = Some(id);
            st.last_warning = None;
        }
        Err(e) => {
            let msg = format!(
                "cannot reload scenario {}: {e}; keeping the previous one",
                path.display()
            );
            if st.last_warning.as_ref() != Some(&msg) {
                warn(&msg);
                st.last_warning = Some(msg);
            }
        }
    }
}

/// Which GPU's `errors`/`hang` maps apply to a call, or the error to return.
pub(crate) type Target = Result<Option<usize>, Ret>;

/// The common prologue of the exported functions.
///
/// Checks initialisation (unless `need_init` is false), resolves the GPU the
/// call is about with `target`, blocks while the scenario lists the function
/// as hanging (without holding the lock; reloading the scenario every 10 ms
/// step), returns an injected error if any, and finally runs `body` under the
/// read lock.
pub(crate) fn call(
    func: Func,
    need_init: bool,
    target: impl Fn(&Scenario) -> Target,
    body: impl FnOnce(&Scenario, Option<&Gpu>, &Ticker) -> Ret,
) -> Ret {
    loop {
        let st = read_state();
        if need_init && st.refcount == 0 {
            return UNINITIALIZED;
        }
        let Some(sc) = st.scenario.as_ref() else {
            return UNINITIALIZED;
        };
        let gpu = match target(sc) {
            Ok(i) => i.and_then(|i| sc.gpus.get(i)),
            Err(e) => return e,
        };
        let hang = sc.hang | gpu.map_or(0, |g| g.hang);
        if hang & func.bit() != 0 {
            drop(st);
            std::thread::sleep(HANG_STEP);
            maybe_reload();
            continue;
        }
        let top_err = sc.errors[func as usize];
        if top_err != SUCCESS {
            return top_err;
        }
        if let Some(g) = gpu {
            let e = g.errors[func as usize];
            if e != SUCCESS {
                return e;
            }
        }
        let ticker = Ticker {
            start: st.start.unwrap_or_else(Instant::now),
            step_ms: sc.step_ms,
        };
        // A lost GPU keeps its handle; every call on the device fails.
        if let Some(g) = gpu
            && func.is_device()
            && g.lost_at_ms.is_some_and(|at| ticker.elapsed_ms() >= at)
        {
            return GPU_IS_LOST;
        }
        return body(sc, gpu, &ticker);
    }
}

/// A call on no particular GPU.
pub(crate) fn top_call(func: Func, body: impl FnOnce(&Scenario, &Ticker) -> Ret) -> Ret {
    call(func, true, |_| Ok(None), |sc, _, t| body(sc, t))
}

/// Decodes an opaque device handle (`index + 1`) into an index.
pub(crate) fn handle_index(device: nvml_wrapper_sys::bindings::nvmlDevice_t) -> Option<usize> {
    (device as usize).checked_sub(1)
}

/// Encodes a device index as an opaque, non-null handle.
pub(crate) fn index_handle(index: usize) -> nvml_wrapper_sys::bindings::nvmlDevice_t {
    (index + 1) as nvml_wrapper_sys::bindings::nvmlDevice_t
}

/// A call on one device handle; an invalid handle is `INVALID_ARGUMENT`.
pub(crate) fn device_call(
    func: Func,
    device: nvml_wrapper_sys::bindings::nvmlDevice_t,
    body: impl FnOnce(usize, &Gpu, &Ticker) -> Ret,
) -> Ret {
    let Some(index) = handle_index(device) else {
        return INVALID_ARGUMENT;
    };
    call(
        func,
        true,
        |sc| {
            if index < sc.gpus.len() {
                Ok(Some(index))
            } else {
                Err(INVALID_ARGUMENT)
            }
        },
        |_, gpu, t| match gpu {
            Some(g) => body(index, g, t),
            None => INVALID_ARGUMENT,
        },
    )
}

/// `nvmlInit_v2` / `nvmlInitWithFlags`: (re)loads the scenario, then counts
/// one more user.
pub(crate) fn init(func: Func) -> Ret {
    let Some(path) = std::env::var_os(SCENARIO_ENV).map(PathBuf::from) else {
        warn(&format!("{SCENARIO_ENV} is not set; nvmlInit fails"));
        return UNKNOWN;
    };
    match load(&path) {
        Ok((scenario, id)) => {
            let mut st = write_state();
            st.path = Some(path);
            st.scenario = Some(scenario);
            st.loaded = Some(id);
            st.last_warning = None;
        }
        Err(e) => {
            warn(&format!(
                "cannot load scenario {}: {e}; nvmlInit fails",
                path.display()
            ));
            return UNKNOWN;
        }
    }
    let r = call(func, false, |_| Ok(None), |_, _, _| SUCCESS);
    if r != SUCCESS {
        return r;
    }
    let mut st = write_state();
    if st.refcount == 0 {
        st.start = Some(Instant::now());
    }
    st.refcount = st.refcount.saturating_add(1);
    SUCCESS
}

/// `nvmlShutdown`: one user fewer.
pub(crate) fn shutdown() -> Ret {
    let mut st = write_state();
    if st.refcount == 0 {
        return UNINITIALIZED;
    }
    st.refcount -= 1;
    if st.refcount == 0 {
        st.start = None;
    }
    SUCCESS
}
