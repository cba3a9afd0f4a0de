//! The daemon's life, in stages: [`configure`] (the sampler and its backends, this node,
//! the store, the kill context, the connection slots), [`bind`] (every listener, before
//! anything is served), [`start`] (the first sample, then every background task in one
//! supervised set), [`serve`] (gRPC on the Unix socket and TCP until shutdown), and the shut
//! down (every task waited for, the store flushed, the socket removed).

mod bind;
mod configure;
mod error;
mod reload;
mod serve;
mod start;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;

use crate::config::{self, Config};
use crate::service::tasks::Tasks;

/// How long stopping waits for the store to write what is queued.
const STORE_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The least time stopping waits for the background tasks to end (the sampler may be
/// waiting on a hung vendor: twice `vendor_timeout` when that is longer).
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment facts the daemon's defaults depend on.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Effective uid of the daemon.
    pub euid: u32,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl Environment {
    /// Reads the environment of this process.
    pub fn current() -> Self {
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        }
    }
}

/// A fresh load of the configuration (from the same file, environment and options), for a
/// reload.
pub type LoadConfig = Arc<dyn Fn() -> Result<Config, config::ConfigError> + Send + Sync>;

/// Runs the daemon until `shutdown` completes: bind the socket (or take the one systemd
/// passed), take the first sample, tell systemd it is ready, serve; then stop every task,
/// write what the store has queued and remove the socket. Each item of `reload` (SIGHUP)
/// checks the configuration again with `load_config` (a bad one is rejected and the running
/// one stays) and reloads the guard policy. A background task that fails for good stops the
/// daemon as a signal would, and `run` then returns its error.
pub async fn run(
    config: Config,
    environment: Environment,
    shutdown: impl Future<Output = ()> + Send,
    reload: impl tokio_stream::Stream<Item = ()> + Send + Unpin + 'static,
    load_config: LoadConfig,
) -> Result<(), Error> {
    let tasks = Tasks::default();
    let shutdown = tasks.or_failure(shutdown);
    let configured = configure::configure(&config, &environment, &tasks)?;
    let mut bound = bind::bind(&config, &configured).await?;
    let running =
        match start::start(&config, configured, &mut bound, &tasks, reload, load_config).await {
            Ok(running) => running,
            Err(error) => {
                // The cluster credentials are read after the socket is bound: do not leave it.
                bound.socket.remove();
                return Err(error);
            }
        };
    tracing::info!(
        socket = %bound.socket.path.display(),
        poll_interval = %humantime::format_duration(config.poll_interval),
        ring_capacity = config.ring_capacity(),
        "gpukilld {} serving",
        env!("CARGO_PKG_VERSION")
    );
    let served = serve::serve(
        &config,
        &running,
        bound.tcp.take(),
        bound.unix,
        &tasks,
        shutdown,
    )
    .await;

    let still_running = tasks
        .stop(TASKS_STOP_TIMEOUT.max(config.vendor_timeout * 2))
        .await;
    if !still_running.is_empty() {
        tracing::warn!(tasks = %still_running.join(", "), "exiting while these tasks still run");
    }
    if let Some(log) = running.kill_context.store.database() {
        // Everything queued (the last interval, the last audit events) is written before exit.
        if let Err(error) = log.flush(STORE_FLUSH_TIMEOUT).await {
            tracing::error!(%error, "the store did not finish writing before exit");
        }
    }
    bound.socket.remove();
    served.map_err(Error::Serve)?;
    match tasks.failure() {
        Some(failure) => Err(Error::Task(failure)),
        None => Ok(()),
    }
}
