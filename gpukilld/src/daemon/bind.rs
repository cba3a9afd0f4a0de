//! Start-up stage 2, bind: every listener, before anything is served — ingest, TCP and
//! metrics first, so a taken port stops the start before the socket file is created, then
//! the Unix socket (or the one systemd passed).

use std::path::PathBuf;

use super::Error;
use super::configure::{Configured, host_name};
use crate::config::Config;
use crate::rpc::tcp::TcpListenerSetup;
use crate::{ingest, metrics, rpc, service};

/// The daemon's bound listeners.
pub(super) struct Bound {
    /// The upload ingest endpoint, when `[ingest]` is on.
    pub ingest: Option<ingest::Ingest>,
    /// The TCP gRPC listener, when `[tcp] listen` is set.
    pub tcp: Option<TcpListenerSetup>,
    /// The metrics endpoint, when `[metrics] listen` is set.
    pub metrics: Option<metrics::Listener>,
    /// The Unix socket.
    pub unix: tokio::net::UnixListener,
    /// Its file, removed at exit when the daemon made it.
    pub socket: SocketFile,
}

/// The Unix socket's file.
pub(super) struct SocketFile {
    /// Where it is.
    pub path: PathBuf,
    /// Whether the daemon made it (a socket systemd passed is systemd's: left in place).
    owned: bool,
}

impl SocketFile {
    /// Removes the socket file, if the daemon made it.
    pub fn remove(&self) {
        if self.owned
            && let Err(error) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(socket = %self.path.display(), %error, "cannot remove socket");
        }
    }
}

/// Binds every listener `config` asks for.
pub(super) async fn bind(config: &Config, configured: &Configured) -> Result<Bound, Error> {
    let store = &configured.kill_context.store;
    let ingest = match config.ingest.enabled {
        true => Some(
            ingest::Ingest::bind(&config.ingest, &config.state_dir, store.database().cloned())
                .await?,
        ),
        false => None,
    };
    let tcp = match config.tcp.listen_addr() {
        Some(address) => Some(TcpListenerSetup::bind(&config.tcp, address, store.clone()).await?),
        None => None,
    };
    let metrics = match config.metrics.listen_addr() {
        Some(address) => Some(
            metrics::bind(address)
                .await
                .map_err(|source| Error::Metrics { address, source })?,
        ),
        None => None,
    };
    let path = configured.socket_path.clone();
    let (unix, owned) =
        match service::activation::inherited_listener().map_err(Error::Activation)? {
            Some(inherited) => {
                tracing::info!("serving on the socket passed by the service manager");
                let listener =
                    tokio::net::UnixListener::from_std(inherited).map_err(Error::Activation)?;
                (listener, false)
            }
            None => (rpc::unix::bind(&path, config.socket_mode.0)?, true),
        };
    Ok(Bound {
        ingest,
        tcp,
        metrics,
        unix,
        socket: SocketFile { path, owned },
    })
}

/// Where a coordinator reaches this node: `[cluster] advertise`, else the TCP listener's
/// port on this host's name (`https://`), or its loopback address on an insecure loopback
/// listener (`http://`). `None` without a TCP listener.
pub(super) fn advertised_address(
    config: &Config,
    tcp: Option<&TcpListenerSetup>,
) -> Option<String> {
    if let Some(address) = &config.cluster.advertise {
        return Some(address.clone());
    }
    let bound = tcp?.local_addr().ok()?;
    Some(if config.tcp.tls() {
        format!("https://{}:{}", host_name(), bound.port())
    } else {
        format!("http://{bound}")
    })
}
