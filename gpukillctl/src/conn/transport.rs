//! The connection every client is built on: a [`Transport`] that names the address when a TCP
//! connection breaks, and the [`RequestMetadata`] put on every request.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

use super::NODE_HEADER;
use super::direct::Direct;
use super::reasons::innermost;

/// A connection to gpukilld. Over TCP, a connection that breaks under a call becomes an
/// UNAVAILABLE status naming the address and what to check (with TLS 1.3, a server that
/// refuses the client certificate says so only by closing the connection after the
/// handshake); on the Unix socket, errors pass through as hyper reports them.
#[derive(Debug, Clone)]
pub struct Transport {
    pub(super) link: Link,
}

/// What carries the requests.
#[derive(Debug, Clone)]
pub(super) enum Link {
    /// The Unix socket: one HTTP/2 connection, without tonic's channel around it.
    Unix(Direct),
    /// TCP (and TLS): tonic's channel, and what to say when the connection breaks.
    Remote(Channel, Arc<Broken>),
}

/// What a broken TCP connection is reported with.
#[derive(Debug)]
pub(super) struct Broken {
    /// The address, `https://host:port`.
    pub(super) address: String,
    /// What to check, after the reason.
    pub(super) hint: String,
}

impl Transport {
    /// The status for the transport error `err` over TCP: UNAVAILABLE naming the address.
    fn error(broken: &Broken, err: tonic::transport::Error) -> tonic::codegen::StdError {
        Box::new(tonic::Status::unavailable(format!(
            "the connection to gpukilld at {} broke: {} ({})",
            broken.address,
            innermost(&err),
            broken.hint
        )))
    }
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Transport {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match &mut self.link {
            Link::Unix(direct) => direct.poll_ready(cx),
            Link::Remote(channel, broken) => channel
                .poll_ready(cx)
                .map_err(|err| Transport::error(broken, err)),
        }
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        match &mut self.link {
            Link::Unix(direct) => direct.call(request),
            Link::Remote(channel, broken) => {
                let broken = broken.clone();
                let call = channel.call(request);
                Box::pin(async move { call.await.map_err(|err| Transport::error(&broken, err)) })
            }
        }
    }
}

/// The metadata every request carries: the bearer token, and the node a coordinator should
/// forward it to. The token is marked sensitive, so it never shows in debug output.
#[derive(Debug, Clone, Default)]
pub struct RequestMetadata {
    pub(super) authorization: Option<MetadataValue<Ascii>>,
    pub(super) node: Option<MetadataValue<Ascii>>,
}

impl Interceptor for RequestMetadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        if let Some(node) = &self.node {
            metadata.insert(NODE_HEADER, node.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::pki::file;
    use crate::testutil::{self, FakeDaemon, ReceivedMetadata, run_argv, serve, serve_tcp};

    #[tokio::test]
    async fn every_request_carries_the_token_and_gpukill_requests_the_node() {
        let daemon = FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            version: Some(gpukill_proto::v1::VersionResponse::default()),
            cluster_nodes: Some(Ok(testutil::cluster_nodes_response())),
            ..Default::default()
        };
        let received = daemon.received.clone();
        let served = serve_tcp(daemon, None);
        let dir = tempfile::tempdir().expect("temp dir");
        let token = file(&dir, "token", "s3cret\n");
        let url = format!("http://{}", served.address);
        let base = [
            "--addr",
            url.as_str(),
            "--token-file",
            &token,
            "--node",
            "n2",
        ];
        for command in [&["list"][..], &["version"], &["cluster", "nodes"]] {
            let (result, _, _) = run_argv(&[&base[..], command].concat()).await;
            result.expect("the fake daemon answers");
        }
        let received = received.lock().expect("lock").clone();
        let gpukill = |node: &str| ReceivedMetadata {
            service: "GpuKill",
            authorization: Some("Bearer s3cret".to_owned()),
            node: Some(node.to_owned()),
        };
        assert_eq!(
            received,
            [
                gpukill("n2"),
                gpukill("n2"),
                ReceivedMetadata {
                    service: "Cluster",
                    authorization: Some("Bearer s3cret".to_owned()),
                    node: None,
                }
            ]
        );
    }

    #[tokio::test]
    async fn the_unix_socket_carries_the_node_and_no_token() {
        let daemon = FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            ..Default::default()
        };
        let received = daemon.received.clone();
        let served = serve(daemon);
        let socket = served.socket.to_str().expect("UTF-8");
        let (result, _, _) = run_argv(&["--socket", socket, "--node", "gpu-07", "list"]).await;
        result.expect("list");
        let (result, _, _) = run_argv(&["--socket", socket, "list"]).await;
        result.expect("list");
        let received = received.lock().expect("lock").clone();
        assert_eq!(
            received,
            [
                ReceivedMetadata {
                    service: "GpuKill",
                    authorization: None,
                    node: Some("gpu-07".to_owned()),
                },
                ReceivedMetadata {
                    service: "GpuKill",
                    authorization: None,
                    node: None,
                }
            ]
        );
    }
}
