//! The reload task: each SIGHUP checks the configuration again (a bad one is rejected and
//! the running one stays) and reloads the guard policy; settings that need a restart are
//! named.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::LoadConfig;
use crate::config::Config;
use crate::errors;
use crate::guard::engine::Guard;
use crate::service::supervisor;
use crate::service::tasks::{OnPanic, Tasks};

/// A SIGHUP stream, shared so that a restarted loop reads the same stream.
type Signals<S> = Arc<tokio::sync::Mutex<S>>;

/// Spawns the reload loop under `tasks`; it ends when the daemon stops.
pub(super) fn spawn<S>(
    tasks: &Tasks,
    reload: S,
    load_config: LoadConfig,
    running: Config,
    guard: Arc<Guard>,
    stopped: watch::Receiver<bool>,
) where
    S: tokio_stream::Stream<Item = ()> + Send + Unpin + 'static,
{
    let reload: Signals<S> = Arc::new(tokio::sync::Mutex::new(reload));
    tasks.spawn("reload", OnPanic::Restart, move || {
        let (reload, load_config) = (Arc::clone(&reload), Arc::clone(&load_config));
        let (guard, running, mut stopped) = (Arc::clone(&guard), running.clone(), stopped.clone());
        async move {
            let mut reload = reload.lock().await;
            loop {
                let signal = tokio::select! {
                    _ = stopped.wait_for(|stopped| *stopped) => return,
                    signal = reload.next() => signal,
                };
                if signal.is_none() {
                    // No more signals: wait for the stop.
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                    return;
                }
                reload_once(&load_config, &running, &guard).await;
            }
        }
    });
}

/// One SIGHUP: check the configuration, reload the guard policy, tell systemd.
async fn reload_once(load_config: &LoadConfig, running: &Config, guard: &Guard) {
    supervisor::reloading();
    let load = Arc::clone(load_config);
    let status = match tokio::task::spawn_blocking(move || load()).await {
        Ok(Ok(new)) => {
            let changed = running.changed_keys(&new);
            if changed.is_empty() {
                tracing::info!("SIGHUP: configuration unchanged; reloading the guard policy");
            } else {
                tracing::warn!(
                    changed = %changed.join(", "),
                    "SIGHUP: the configuration is valid; these settings take effect at the next restart"
                );
            }
            guard.request_reload();
            "reloaded".to_owned()
        }
        Ok(Err(error)) => {
            tracing::error!(
                error = %errors::chain(&error),
                "SIGHUP: the new configuration is invalid; the running one stays"
            );
            format!("reload rejected: {}", errors::chain(&error))
        }
        Err(_) => "reload failed".to_owned(),
    };
    supervisor::reloaded(&status);
}
