//! The Unix socket: refuse to start when another live daemon owns it, replace a stale file,
//! bind, set the configured mode, then listen.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
