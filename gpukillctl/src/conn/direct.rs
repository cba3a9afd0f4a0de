//! The connection on the Unix socket: one HTTP/2 connection from hyper, used as it is.
//!
//! tonic's `Channel` puts a buffer task (every request goes through a queue to it) and a
//! reconnect layer in front of the connection. gpukillctl makes one connection per command
//! and never reconnects it (a command that wants to know whether the daemon is gone asks
//! for a new one), so on the Unix socket that machinery only costs start-up time: a task, a
//! hop through its queue and the code to run them. [`Direct`] sends each request straight to
//! hyper and keeps the two things of the channel's stack gpukillctl relies on: the origin
//! (HTTP/2 needs `:scheme` and `:authority`) and the deadline a request carries in
//! `grpc-timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tonic::body::Body;
use tonic::codegen::StdError;
use tonic::codegen::http::uri::{Authority, Scheme};
use tonic::codegen::http::{HeaderMap, Request, Response, Uri};

use super::coalesce::Coalesced;

/// The authority sent on the Unix socket; gpukilld routes nothing on it.
const AUTHORITY: &str = "localhost";

/// A client's HTTP/2 connection to gpukilld on its Unix socket.
#[derive(Debug, Clone)]
pub struct Direct {
    sender: http2::SendRequest<Body>,
}

impl Direct {
    /// Runs the HTTP/2 handshake on `stream` and starts the connection's task.
    pub async fn handshake(stream: UnixStream) -> Result<Self, hyper::Error> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(Coalesced::new(stream)))
            .await?;
        // Ends when the daemon closes the connection or every sender is dropped; its errors
        // reach the callers through their responses.
        tokio::spawn(connection);
        Ok(Direct { sender })
    }
}

impl tower::Service<Request<Body>> for Direct {
    type Response = Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let deadline = grpc_timeout(request.headers());
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(Authority::from_static(AUTHORITY));
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => return Box::pin(std::future::ready(Err(err.into()))),
        }
        let response = self.sender.send_request(request);
        Box::pin(async move {
            let response = match deadline {
                // As tonic's channel does: the deadline ends the wait with the error that
                // tonic turns into CANCELLED "Timeout expired".
                Some(deadline) => tokio::time::timeout(deadline, response)
                    .await
                    .map_err(|_elapsed| tonic::TimeoutExpired(()))??,
                None => response.await?,
            };
            Ok(response.map(Body::new))
        })
    }
}

/// The deadline in a request's `grpc-timeout` header (set by `Request::set_timeout`):
/// at most 8 digits and a unit; `None` when absent or malformed, as tonic reads it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(count * 3600),
        "M" => Duration::from_secs(count * 60),
        "S" => Duration::from_secs(count),
        "m" => Duration::from_millis(count),
        "u" => Duration::from_micros(count),
        "n" => Duration::from_nanos(count),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_what_tonic_writes() {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_secs(10));
        let headers = request.metadata().clone().into_headers();
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_secs(10)));
        for (text, expected) in [
            ("3H", Some(Duration::from_secs(3 * 3600))),
            ("250m", Some(Duration::from_millis(250))),
            ("12345678n", Some(Duration::from_nanos(12_345_678))),
            ("123456789S", None),
            ("S", None),
            ("", None),
            ("10x", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", text.parse().expect("header"));
            assert_eq!(grpc_timeout(&headers), expected, "{text:?}");
        }
    }
}
