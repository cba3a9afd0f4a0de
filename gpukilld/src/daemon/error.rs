//! The errors that stop the daemon, and the exit code of each.

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The Unix socket could not be set up.
    #[error(transparent)]
    Socket(#[from] crate::rpc::unix::SocketError),
    /// /proc could not be read.
    #[error("cannot read /proc")]
    Procfs(#[source] std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The metrics endpoint could not listen on its address.
    #[error("cannot listen for metrics on {address} ([metrics] listen)")]
    Metrics {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket systemd passed cannot be used.
    #[error("cannot use the socket passed by the service manager")]
    Activation(#[source] std::io::Error),
    /// The TCP listener cannot start (its certificates, its token file, its address).
    #[error(transparent)]
    Tcp(#[from] crate::rpc::tcp::TcpError),
    /// The cluster credentials or a node address cannot be used.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::client::ClientError),
    /// The upload credentials cannot be used.
    #[error(transparent)]
    Upload(#[from] crate::upload::client::ClientError),
    /// The ingest endpoint cannot start.
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    /// A background task panicked and could not be restarted (systemd starts the daemon
    /// again).
    #[error(transparent)]
    Task(#[from] crate::service::tasks::TaskFailed),
}

impl Error {
    /// The process exit code for this error: 3 when the configuration (or a file it names:
    /// a certificate, a key, a token file) is at fault, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        use gpukill_proto::exit_code::{ERROR, INVALID_ARGUMENT};
        match self {
            Error::Config(_) | Error::Cluster(_) | Error::Upload(_) => INVALID_ARGUMENT,
            Error::Tcp(crate::rpc::tcp::TcpError::Bind { .. })
            | Error::Ingest(
                crate::ingest::IngestError::Bind { .. } | crate::ingest::IngestError::Store(_),
            ) => ERROR,
            Error::Ingest(_) => INVALID_ARGUMENT,
            Error::Tcp(_) => INVALID_ARGUMENT,
            Error::Socket(_)
            | Error::Procfs(_)
            | Error::Thread(_)
            | Error::Serve(_)
            | Error::Metrics { .. }
            | Error::Activation(_)
            | Error::Task(_) => ERROR,
        }
    }
}
