//! Finding and connecting to gpukilld: on its Unix socket (the kernel tells the daemon who
//! you are), or over TCP, `https://HOST:PORT` with a bearer token and/or a client
//! certificate (`http://` on loopback only).
//!
//! [`Target::new`] turns the global options into a checked target once, before any command
//! runs: every usage problem (a credential with a Unix socket, https without `--ca`, a file
//! that cannot be read) is found there. Commands then get their clients from [`connect`] and
//! [`connect_cluster`], whose [`RequestMetadata`] interceptor puts the credentials (and, for
//! GpuKill requests, the `gpukill-node` to forward to) on every request, so no command adds
//! metadata itself.
//!
//! On a Unix socket, gpukillctl first checks who serves it ([`peer`]): root, the caller, or
//! the configured daemon user; anyone else gets nothing.

mod address;
mod args;
mod channel;
mod coalesce;
mod credentials;
mod direct;
pub mod peer;
mod reasons;
mod target;
mod transport;

use std::time::Duration;

use gpukill_proto::v1::cluster_service_client::ClusterServiceClient as GeneratedClusterClient;
use gpukill_proto::v1::gpu_kill_service_client::GpuKillServiceClient;
use tonic::service::interceptor::InterceptedService;

pub use address::{Address, RemoteAddress, is_loopback, parse_address, parse_node_name};
pub use args::{CA_ENV, CERT_ENV, ConnectArgs, KEY_ENV, NODE_ENV, TOKEN_FILE_ENV};
pub(crate) use reasons::io_reason;
pub use target::Target;
pub use transport::{RequestMetadata, Transport};

use crate::error::Error;

/// How long connecting to the socket (including the HTTP/2 handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to a remote gpukilld (TCP, TLS and HTTP/2 handshakes) may take.
pub const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a unary RPC may take. The daemon answers from memory, so this is generous.
/// Streaming RPCs (Watch) have no deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata that asks a coordinator to forward a GpuKill request to a node.
pub const NODE_HEADER: &str = "gpukill-node";

/// The largest Cluster answer accepted: one snapshot per node, for up to about a thousand
/// nodes (tonic's default of 4 MiB holds a few hundred).
const CLUSTER_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

/// A connected client of the gpukill API.
pub type Client = GpuKillServiceClient<InterceptedService<Transport, RequestMetadata>>;

/// A connected client of a coordinator's Cluster service.
pub type ClusterServiceClient =
    GeneratedClusterClient<InterceptedService<Transport, RequestMetadata>>;

/// Connects to the GpuKill service of `target`.
pub async fn connect(target: &Target) -> Result<Client, Error> {
    let channel = target.channel().await?;
    Ok(GpuKillServiceClient::with_interceptor(
        channel,
        target.gpukill.clone(),
    ))
}

/// Connects to the Cluster service of `target` (a coordinator).
pub async fn connect_cluster(target: &Target) -> Result<ClusterServiceClient, Error> {
    let channel = target.channel().await?;
    Ok(
        GeneratedClusterClient::with_interceptor(channel, target.cluster.clone())
            .max_decoding_message_size(CLUSTER_MESSAGE_LIMIT),
    )
}

/// After a stream broke: [`Error::ConnectionLost`] (or [`Error::ConnectionLostRemote`]) when
/// `target` now refuses a new connection, i.e. the daemon is gone; `None` when it answers.
pub async fn connection_lost(target: &Target) -> Option<Error> {
    match target.channel().await {
        Ok(_) => None,
        Err(Error::Unreachable { socket, reason }) => {
            Some(Error::ConnectionLost { socket, reason })
        }
        Err(Error::UnreachableRemote {
            address, reason, ..
        }) => Some(Error::ConnectionLostRemote { address, reason }),
        Err(other) => Some(other),
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

#[cfg(test)]
mod tests {
    use crate::testutil::{FakeDaemon, run_argv, serve, serve_tcp};

    #[tokio::test]
    async fn a_coordinator_that_does_not_know_the_node_exits_3_and_a_down_node_6() {
        for (status, code) in [
            (
                tonic::Status::not_found(
                    "no node named \"n9\" (gpukillctl cluster nodes lists them)",
                ),
                3,
            ),
            (
                tonic::Status::unavailable("node n3 is down: no heartbeat for 45s"),
                6,
            ),
        ] {
            let message = status.message().to_owned();
            let served = serve(FakeDaemon {
                list: Some(Err(status)),
                ..Default::default()
            });
            let socket = served.socket.to_str().expect("UTF-8");
            let (result, text, _) = run_argv(&["--socket", socket, "--node", "n9", "list"]).await;
            let err = result.expect_err("refused");
            assert_eq!(err.exit_code(), code, "{err}");
            assert!(err.to_string().ends_with(&message), "{err}");
            assert_eq!(text, "");
        }
    }

    #[tokio::test]
    async fn unauthenticated_exits_4_with_what_to_check() {
        let served = serve_tcp(
            FakeDaemon {
                list: Some(Err(tonic::Status::unauthenticated(
                    "the bearer token is not valid",
                ))),
                ..Default::default()
            },
            None,
        );
        let url = format!("http://{}", served.address);
        let (result, _, _) = run_argv(&["--addr", &url, "list"]).await;
        let err = result.expect_err("refused");
        assert_eq!(err.exit_code(), 4);
        assert_eq!(
            err.to_string(),
            "List failed (Unauthenticated): the bearer token is not valid (gpukilld did not \
             accept your credentials: check --token-file, or --cert and --key)"
        );
    }
}
