//! Serving one HTTP/1.1 connection of the daemon's small HTTP endpoints (metrics, ingest):
//! a header read timeout, and a graceful end (after the current response) once the daemon
//! stops.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::sync::watch;

/// How long a connection may take to send a request's headers (idle keep-alive included).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `service` on `io` until the client is done or `stop` turns true; `endpoint` names
/// the endpoint in the debug log of a connection that ends with an error.
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    endpoint: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let stopping = async move {
        // The watch guard is dropped here, before the connection is awaited.
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, endpoint, "connection ended with an error");
    }
}
