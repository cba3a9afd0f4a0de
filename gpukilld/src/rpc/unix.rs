//! The Unix socket: refuse to start when another live daemon owns it, replace a stale file,
//! bind, set the configured mode, then listen.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::connections::{AcceptBackoff, Admission, Guarded, PeerUid, Refused, Timeouts};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another daemon answers on the socket.
    #[error(
        "another gpukilld is already listening on {0}; stop it first (systemctl stop gpukilld.service) or choose another --socket"
    )]
    InUse(PathBuf),
    /// The socket's directory could not be created.
    #[error("cannot create the socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    /// bind(2) failed.
    #[error("cannot bind {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// chmod(2) failed.
    #[error("cannot set mode {mode:04o} on {path}")]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// The mode.
        mode: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the daemon's socket at `path` with file mode `mode`.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| SocketError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => {
            use std::os::unix::fs::FileTypeExt;
            if !metadata.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            // A live daemon accepts; a stale file refuses the connection.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    // Bind under a temporary name, set the mode, then rename into place: the socket is
    // never reachable at `path` with the default mode, so a client never sees a transient
    // "permission denied".
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".{}.tmp", std::process::id()));
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(|source| SocketError::Bind {
        path: staging.clone(),
        source,
    })?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(|source| SocketError::Chmod {
            path: path.to_path_buf(),
            mode,
            source,
        })
        .and_then(|()| {
            std::fs::rename(&staging, path).map_err(|source| SocketError::Bind {
                path: path.to_path_buf(),
                source,
            })
        });
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    Ok(listener)
}

/// A served connection of the Unix socket.
pub type UnixConnection = Guarded<UnixStream>;

/// Accepts connections on `listener` until `stop`: each caller (by the uid of its kernel
/// credentials) gets at most its share of `admission`'s slots, and each connection the
/// deadlines of `timeouts`. A refused connection is told why (its requests are answered
/// RESOURCE_EXHAUSTED, naming the limit) and closed; accept(2) failures back off instead of spinning.
pub fn incoming(
    listener: UnixListener,
    admission: Admission<PeerUid>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<UnixConnection, io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    let counters = admission.counters();
    let lingering = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut backoff = AcceptBackoff::new("the Unix socket");
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = listener.accept() => accepted,
            };
            let Some((stream, _)) = backoff.check(accepted).await else {
                continue;
            };
            // Without credentials a connection cannot be attributed: nothing to serve.
            let Ok(credentials) = stream.peer_cred() else {
                continue;
            };
            let uid = credentials.uid();
            match admission.admit(PeerUid(uid), uid == 0) {
                Ok(permit) => {
                    let connection =
                        Guarded::new(stream, timeouts, Some(permit), Some(Arc::clone(&counters)));
                    if sender.send(Ok(connection)).await.is_err() {
                        return;
                    }
                }
                Err(refused) => refuse(stream, &refused, &lingering),
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Refused connections kept open at once while they are told why; more are closed at once.
const LINGERING: usize = 64;

/// How long a refused connection is kept open to be told why.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells a refused gRPC client why before closing: for up to [`LINGER`], every request on
/// the connection is answered with RESOURCE_EXHAUSTED and the refusal (which names the uid,
/// the limit and the setting). At most [`LINGERING`] refused connections are kept open at
/// once; the others are closed at once.
fn refuse(stream: UnixStream, refused: &Refused, lingering: &Arc<AtomicUsize>) {
    if lingering.fetch_add(1, Ordering::Relaxed) >= LINGERING {
        lingering.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let message = refused.to_string();
    let lingering = Arc::clone(lingering);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |_request| {
            let status = tonic::Status::resource_exhausted(message.clone());
            async move { Ok::<_, std::convert::Infallible>(status.into_http::<tonic::body::Body>()) }
        });
        let connection =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(1)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let _ = tokio::time::timeout(LINGER, connection).await;
        lingering.fetch_sub(1, Ordering::Relaxed);
    });
}
