//! gpukilld under the Windows Service Control Manager (SCM), the counterpart of systemd's
//! notify protocol in gpukilld's `service::supervisor`: [`run`] hands the daemon to the
//! SCM's service thread and reports `START_PENDING`; the daemon reports [`running`] once it
//! serves and [`stopping`] when it begins to stop; a Stop, Shutdown or Preshutdown control
//! turns the daemon's shutdown signal; the daemon's exit code becomes the service's.
//! Outside the SCM both reports do nothing, as sd_notify does without `NOTIFY_SOCKET`.
//!
//! Type-checked for `x86_64-pc-windows-gnu` by `scripts/check-windows`, never run: gpukilld
//! itself does not build on Windows yet (packaging/windows/README.md says what is missing).
//! On every other platform this crate is empty.
#![cfg(windows)]

use std::ffi::OsString;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::{define_windows_service, service_dispatcher};

/// The name gpukilld is installed under (`sc.exe create gpukilld ...`).
pub const SERVICE_NAME: &str = "gpukilld";

/// How long the SCM waits for the start (opening the store, the first sample) before it
/// declares the service hung.
const START_WAIT: Duration = Duration::from_secs(30);

/// How long the SCM waits for the stop (gpukilld's own bound is 5 s).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT`: the process was started from a console, not
/// by the SCM.
const NOT_STARTED_BY_SCM: i32 = 1063;

/// The daemon: runs until its receiver turns `true` and returns the process exit code
/// (0 after a clean stop).
pub type Daemon = Box<dyn FnOnce(watch::Receiver<bool>) -> u8 + Send>;

/// Why the daemon could not be run as a service.
pub enum Error {
    /// The process was not started by the SCM (a console): the daemon comes back, to be run
    /// in the foreground.
    NotAService(Daemon),
    /// The SCM refused the connection.
    Dispatcher(windows_service::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotAService(_) => write!(f, "not started by the Service Control Manager"),
            Error::Dispatcher(error) => {
                write!(f, "cannot connect to the Service Control Manager: {error}")
            }
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotAService(_) => f.write_str("NotAService(..)"),
            Error::Dispatcher(error) => f.debug_tuple("Dispatcher").field(error).finish(),
        }
    }
}

impl std::error::Error for Error {}

/// The daemon, from [`run`] until the SCM's service thread takes it.
static DAEMON: Mutex<Option<Daemon>> = Mutex::new(None);

/// Where status reports go, once the SCM has started the service.
static STATUS: OnceLock<StatusHandle> = OnceLock::new();

/// A service status handle that may be shared between threads.
struct StatusHandle(ServiceStatusHandle);

// SAFETY: a service status handle is a process-wide token that never needs closing;
// SetServiceStatus may be called with it from any thread (the SCM documents no thread
// affinity), and the handle is only ever read after it is set.
unsafe impl Send for StatusHandle {}
// SAFETY: as above; the handle is immutable once stored.
unsafe impl Sync for StatusHandle {}

/// Runs `daemon` as the service [`SERVICE_NAME`]: blocks until the SCM has stopped it.
/// From a console the daemon comes back in [`Error::NotAService`].
pub fn run(daemon: Daemon) -> Result<(), Error> {
    *DAEMON.lock().unwrap_or_else(PoisonError::into_inner) = Some(daemon);
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => Ok(()),
        Err(windows_service::Error::Winapi(error))
            if error.raw_os_error() == Some(NOT_STARTED_BY_SCM) =>
        {
            let daemon = DAEMON.lock().unwrap_or_else(PoisonError::into_inner).take();
            match daemon {
                Some(daemon) => Err(Error::NotAService(daemon)),
                None => Ok(()),
            }
        }
        Err(error) => Err(Error::Dispatcher(error)),
    }
}

/// Reports `SERVICE_RUNNING`: the daemon serves. Does nothing outside the SCM.
pub fn running() {
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        Duration::ZERO,
        ServiceExitCode::NO_ERROR,
    );
}

/// Reports `SERVICE_STOP_PENDING`: the daemon is stopping. Does nothing outside the SCM.
pub fn stopping() {
    report(
        ServiceState::StopPending,
        ServiceControlAccept::empty(),
        STOP_WAIT,
        ServiceExitCode::NO_ERROR,
    );
}

fn report(
    state: ServiceState,
    controls_accepted: ServiceControlAccept,
    wait_hint: Duration,
    exit_code: ServiceExitCode,
) {
    let Some(handle) = STATUS.get() else {
        return;
    };
    // A pending state carries a checkpoint; the others must carry 0.
    let checkpoint = u32::from(wait_hint != Duration::ZERO);
    let status = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint,
        wait_hint,
        process_id: None,
    };
    // The SCM only refuses a malformed status; there is no one else to tell.
    let _ = handle.0.set_service_status(status);
}

define_windows_service!(ffi_service_main, service_main);

/// The SCM's service thread: registers the control handler, reports the start, runs the
/// daemon and reports its exit.
fn service_main(_arguments: Vec<OsString>) {
    let Some(daemon) = DAEMON.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return;
    };
    let (stop, stop_requested) = watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            stop.send_replace(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else {
        // Without a status handle the SCM cannot be told anything; it times the start out.
        return;
    };
    let _ = STATUS.set(StatusHandle(handle));
    report(
        ServiceState::StartPending,
        ServiceControlAccept::empty(),
        START_WAIT,
        ServiceExitCode::NO_ERROR,
    );
    let code = daemon(stop_requested);
    let exit_code = match code {
        0 => ServiceExitCode::NO_ERROR,
        code => ServiceExitCode::ServiceSpecific(code.into()),
    };
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        Duration::ZERO,
        exit_code,
    );
}
