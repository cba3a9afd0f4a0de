//! The Prometheus endpoint (`[metrics] listen`): `/metrics` in the text exposition format,
//! rendered from the latest snapshot and the daemon's counters (a scrape never calls a
//! vendor), `/healthz` (the process serves) and `/readyz` (the latest snapshot is fresh).
//! HTTP/1.1 over hyper on a loopback TCP address; configuration refuses any other address
//! until gpukilld authenticates HTTP clients.

mod exposition;
mod gpus;
mod health;
pub mod render;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connections::{AcceptBackoff, AdmissionCounters, Guarded};
use crate::guard::counters::GuardCounters;
use crate::guard::engine::Guard;
use crate::ring::Ring;

/// Connections served at once. Scrapers and probes are few; when all are taken, the one
/// that waited longest on its client gives its slot to the new one (`http::Slots`).
pub const MAX_CONNECTIONS: usize = 16;
const TEXT: &str = "text/plain; charset=utf-8";

/// What the endpoint reports on.
pub struct Sources {
    /// The snapshots.
    pub ring: Arc<Ring>,
    /// The store, or why it could not be opened.
    pub store: crate::store::StoreHandle,
    /// The guard's status.
    pub guard: Arc<Guard>,
    /// The guard's decision and kill counters, when it keeps them.
    pub guard_counters: Option<Arc<GuardCounters>>,
    /// The other listeners' connection counters, by listener (`unix`, `tcp`, `ingest`); the
    /// endpoint adds its own (`metrics`).
    pub connections: Vec<(&'static str, Arc<AdmissionCounters>)>,
}

/// A bound endpoint, not yet serving: bound early, so a taken port stops the daemon before
/// it starts anything else.
pub struct Listener {
    listener: TcpListener,
    address: SocketAddr,
}

/// Binds `address` (port 0: any free port; [`Listener::local_addr`] says which).
pub async fn bind(address: SocketAddr) -> std::io::Result<Listener> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    Ok(Listener { listener, address })
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `stop` turns true, then ends every connection after its current
    /// response.
    pub async fn serve(
        self,
        sources: Sources,
        timeouts: crate::connections::Timeouts,
        mut stop: watch::Receiver<bool>,
    ) {
        let slots = crate::http::Slots::new("the metrics endpoint", MAX_CONNECTIONS);
        let mut sources = sources;
        sources.connections.push(("metrics", slots.counters()));
        let endpoint = Arc::new(Endpoint {
            sources,
            last_len: AtomicUsize::new(0),
        });
        let mut backoff = AcceptBackoff::new("the metrics endpoint");
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = self.listener.accept() => accepted,
            };
            let Some((stream, _)) = backoff.check(accepted).await else {
                continue;
            };
            let Some(slot) = slots.take() else {
                let _ = stream.try_write(crate::http::BUSY_RESPONSE);
                continue;
            };
            // Headers and body go out as separate writes: without this, Nagle holds the body
            // for the client's delayed ACK (40 ms) on keep-alive connections.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "metrics endpoint: cannot set TCP_NODELAY");
            }
            let endpoint = Arc::clone(&endpoint);
            let stop = stop.clone();
            tokio::spawn(async move {
                let evicted = Arc::clone(&slot.evicted);
                let io = Guarded::new(stream, timeouts, None, None)
                    .with_activity(Arc::clone(&slot.activity));
                let service = service_fn(move |request| {
                    let response = endpoint.respond(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                crate::http::serve_connection(
                    TokioIo::new(io),
                    service,
                    stop,
                    Some(evicted),
                    "metrics",
                )
                .await;
                drop(slot);
            });
        }
    }
}

/// The endpoint's state, shared by its connections.
struct Endpoint {
    sources: Sources,
    /// Length of the last exposition, to size the next one's buffer.
    last_len: AtomicUsize,
}

impl Endpoint {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        // hyper sends no body in answer to HEAD, only the headers GET would get.
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "only GET and HEAD\n".into(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => text(StatusCode::OK, render::CONTENT_TYPE, self.metrics()),
            "/healthz" => text(StatusCode::OK, TEXT, "ok\n".into()),
            "/readyz" => match self.sources.ring.latest().stale_reason(SystemTime::now()) {
                None => text(StatusCode::OK, TEXT, "ready\n".into()),
                Some(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: the latest snapshot is stale: {reason}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: the endpoints are /metrics, /healthz and /readyz\n".into(),
            ),
        }
    }

    fn metrics(&self) -> String {
        let sources = &self.sources;
        let snapshot = sources.ring.latest();
        let guard = sources.guard.status();
        let store = match sources.store.database() {
            Some(log) => render::StoreState::Open {
                events: log.counters(),
                history: log.history_counters(),
            },
            None => render::StoreState::Unavailable,
        };
        let status = render::Status {
            now: SystemTime::now(),
            watchers: sources.ring.watchers(),
            watch_lagged: sources.ring.watch_lagged(),
            store,
            guard: &guard,
            guard_counters: sources.guard_counters.as_deref(),
            connections: &sources.connections,
        };
        // A little room over the last length: the process table may have grown.
        let hint = self.last_len.load(Ordering::Relaxed);
        let body = render::render(&snapshot, &status, hint + hint / 8);
        self.last_len.store(body.len(), Ordering::Relaxed);
        body
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Snapshot, Vendor, VendorData, VendorState, VendorStatus};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn snapshot(taken_at: SystemTime) -> Snapshot {
        Snapshot {
            host: Arc::from("node-1"),
            taken_at,
            sequence: 1,
            vendors: vec![VendorStatus {
                vendor: Vendor::Nvidia,
                state: VendorState::Ok,
                driver_version: None,
                cuda_version: None,
                last_success: Some(taken_at),
            }],
            data: vec![(
                Vendor::Nvidia,
                Arc::new(VendorData {
                    taken_at: Some(taken_at),
                    ..VendorData::default()
                }),
            )],
            tick_duration: Duration::from_millis(1),
            poll_interval: Duration::from_secs(2),
        }
    }

    /// Serves a ring whose latest snapshot was taken at `taken_at`; returns the address and
    /// the stop switch.
    async fn serve(taken_at: SystemTime) -> (SocketAddr, watch::Sender<bool>) {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr();
        let (stop, stopped) = watch::channel(false);
        let sources = Sources {
            ring: Arc::new(Ring::new(10, snapshot(taken_at))),
            store: crate::store::StoreHandle::unavailable("no store in this test".into()),
            guard: Arc::new(Guard::new(
                "/nonexistent/guard.toml".into(),
                None,
                Vec::new(),
            )),
            guard_counters: None,
            connections: Vec::new(),
        };
        tokio::spawn(listener.serve(
            sources,
            crate::http::timeouts(&crate::config::LimitsConfig::default()),
            stopped,
        ));
        (address, stop)
    }

    /// One HTTP/1.1 request with `Connection: close`; the whole response as text.
    async fn request(address: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream
            .write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn endpoints_methods_and_stop() {
        let (address, stop) = serve(SystemTime::now()).await;
        let metrics = request(address, "GET", "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(metrics.contains("\r\n\r\n# HELP "), "{metrics}");
        assert!(
            metrics.contains("\ngpukill_store_degraded 1\n"),
            "{metrics}"
        );

        let head = request(address, "HEAD", "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

        let healthz = request(address, "GET", "/healthz").await;
        assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n") && healthz.ends_with("\r\n\r\nok\n"));
        let readyz = request(address, "GET", "/readyz?verbose=1").await;
        assert!(readyz.starts_with("HTTP/1.1 200 OK\r\n") && readyz.ends_with("ready\n"));

        let missing = request(address, "GET", "/").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = request(address, "POST", "/metrics").await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");

        // An idle keep-alive connection does not hold the stop up.
        let idle = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stop.send(true).expect("stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "the listener is closed once stopped"
        );
        drop(idle);
    }

    #[tokio::test]
    async fn readyz_says_why_a_stale_snapshot_is_not_ready() {
        let (address, _stop) = serve(SystemTime::now() - Duration::from_secs(60)).await;
        let readyz = request(address, "GET", "/readyz").await;
        assert!(
            readyz.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{readyz}"
        );
        assert!(
            readyz.contains("not ready: the latest snapshot is stale: no tick completed for"),
            "{readyz}"
        );
        let healthz = request(address, "GET", "/healthz").await;
        assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");
    }
}
