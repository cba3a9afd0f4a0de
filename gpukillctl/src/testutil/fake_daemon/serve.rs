//! Serving a [`FakeDaemon`] on its own runtime: on a Unix socket in a temporary directory, or
//! on TCP (with or without TLS).

use std::path::PathBuf;

use gpukill_proto::v1::cluster_service_server::ClusterServiceServer;
use gpukill_proto::v1::gpu_kill_service_server::GpuKillServiceServer;

use super::{FakeDaemon, Recorder};

/// The router of `daemon`: its GpuKill and Cluster services, each recording the metadata of
/// every request into `daemon.received`.
fn router(
    daemon: FakeDaemon,
    builder: &mut tonic::transport::Server,
) -> tonic::transport::server::Router {
    let recorder = |service| Recorder {
        service,
        received: daemon.received.clone(),
    };
    builder
        .add_service(GpuKillServiceServer::with_interceptor(
            daemon.clone(),
            recorder("GpuKill"),
        ))
        .add_service(ClusterServiceServer::with_interceptor(
            daemon.clone(),
            recorder("Cluster"),
        ))
}

/// A running [`FakeDaemon`] on a socket in a temporary directory. It runs on its own runtime,
/// so dropping it ends the fake daemon and every connection to it, like a crash would.
pub struct Served {
    /// The socket path.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `daemon` on a fresh Unix socket.
pub fn serve(daemon: FakeDaemon) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("gpukilld.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = {
        let _entered = runtime.enter();
        tokio::net::UnixListener::bind(&socket).expect("bind")
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    runtime.spawn(async move {
        let _ = router(daemon, &mut tonic::transport::Server::builder())
            .serve_with_incoming(incoming)
            .await;
    });
    Served {
        socket,
        _dir: dir,
        runtime: Some(runtime),
    }
}

/// A running [`FakeDaemon`] on TCP, on its own runtime like [`Served`].
pub struct ServedTcp {
    /// The address it listens on (127.0.0.1, a free port).
    pub address: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ServedTcp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `daemon` on 127.0.0.1 (a free port): with TLS when `tls` is given, plain HTTP/2
/// otherwise.
pub fn serve_tcp(daemon: FakeDaemon, tls: Option<tonic::transport::ServerTlsConfig>) -> ServedTcp {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = {
        let _entered = runtime.enter();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(std_listener).expect("listener")
    };
    let address = listener.local_addr().expect("address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("server TLS");
    }
    runtime.spawn(async move {
        let _ = router(daemon, &mut builder)
            .serve_with_incoming(incoming)
            .await;
    });
    ServedTcp {
        address,
        runtime: Some(runtime),
    }
}
