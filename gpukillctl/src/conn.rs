//! Finding and connecting to gpukilld.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpukill_proto::v1::gpu_kill_client::GpuKillClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::cli::Address;
use crate::error::Error;

/// How long connecting to the socket (including the HTTP/2 handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a unary RPC may take. The daemon answers from memory, so this is generous.
/// Streaming RPCs (Watch) have no deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client of the gpukill API.
pub type Client = GpuKillClient<Channel>;

/// The socket to use: the `--socket`/`GPUKILL_SOCKET` address when given, otherwise
/// [`gpukill_proto::client_socket_path`] for this user.
pub fn socket_path(address: Option<&Address>) -> Result<PathBuf, Error> {
    match address {
        Some(Address::Unix(path)) => Ok(path.clone()),
        Some(Address::Https(address)) => Err(Error::UnsupportedAddress {
            address: address.clone(),
        }),
        None => {
            // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
            let euid = unsafe { libc::geteuid() };
            let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            Ok(gpukill_proto::client_socket_path(
                euid,
                runtime_dir.as_deref(),
            ))
        }
    }
}

/// Connects to the daemon on the Unix socket at `path`, failing with
/// [`Error::Unreachable`] (naming the socket and the systemd unit) when nobody answers.
pub async fn connect(path: &Path) -> Result<Client, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        socket: path.to_path_buf(),
        reason,
    };
    // The URI is required by tonic but unused: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(CONNECT_TIMEOUT);
    let socket = path.to_path_buf();
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    }));
    // The endpoint's connect timeout covers connect(2) only; this one also covers a daemon
    // that accepts but never completes the HTTP/2 handshake.
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(channel)) => Ok(GpuKillClient::new(channel)),
        Ok(Err(err)) => Err(unreachable(connect_reason(&err))),
        Err(_elapsed) => Err(unreachable(format!(
            "no answer within {}",
            humantime::format_duration(CONNECT_TIMEOUT)
        ))),
    }
}

/// Wraps a unary request message with [`REQUEST_TIMEOUT`].
pub fn unary<T>(message: T) -> tonic::Request<T> {
    unary_with_timeout(message, REQUEST_TIMEOUT)
}

/// Wraps a unary request message with a deadline of `timeout`, for an RPC that waits on
/// purpose (Kill waits for its targets to exit).
pub fn unary_with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The most useful words for why a connection failed: the OS error (without its
/// "(os error N)" suffix) when there is one, otherwise the innermost error message.
fn connect_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return format!(
                    "no answer within {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                );
            }
            let text = io.to_string();
            return match io.raw_os_error() {
                Some(code) => text
                    .strip_suffix(&format!(" (os error {code})"))
                    .unwrap_or(&text)
                    .to_owned(),
                None => text,
            };
        }
        innermost = cause.to_string();
        current = cause.source();
    }
    innermost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_exit_code_6() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gpukilld.sock");
        let err = connect(&path).await.expect_err("nothing listens there");
        assert_eq!(err.exit_code(), 6);
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "cannot reach gpukilld at {}: No such file or directory (is gpukilld.service \
                 running? try: systemctl status gpukilld.service, or pass --socket / \
                 GPUKILL_SOCKET)",
                path.display()
            )
        );
        // One line: the chain printer adds no "caused by" lines to this error.
        assert_eq!(crate::error::format_chain(&err).lines().count(), 1);
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_unreachable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gpukilld.sock");
        // Bind and drop: the file stays, nobody accepts.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = connect(&path).await.expect_err("nothing listens there");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string()
                .contains(": Connection refused (is gpukilld.service"),
            "{err}"
        );
    }

    #[test]
    fn explicit_addresses_win_and_https_is_unsupported() {
        let path = PathBuf::from("/tmp/x.sock");
        assert_eq!(
            socket_path(Some(&Address::Unix(path.clone()))).expect("path"),
            path
        );
        let err = socket_path(Some(&Address::Https("https://node1".to_owned())))
            .expect_err("unsupported");
        assert_eq!(err.exit_code(), 5);
    }
}
