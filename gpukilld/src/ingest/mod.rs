//! The receiving side of uploads (`[ingest] enabled`): `POST /api/v1/usage` stores a node's
//! hour (schema `gpukill.usage/v1`) and echoes the content hash it stored; a repeated
//! delivery is a no-op that answers the same hash. `GET /api/v1/usage` returns the stored
//! rows as JSON or CSV. Every request needs a bearer token from `[ingest] tokens`, whose
//! principal `[ingest.principals]` binds to what it may do (`access`): a node uploads and
//! reads only the node ids it is bound to, a reader reads all and uploads nothing; a
//! refusal is HTTP 403 and an audit event. Every upload is checked field by field
//! (`validate`) before anything is stored. HTTP/1.1 over hyper, TLS (rustls) when
//! `[ingest] cert` is set.

pub mod access;
pub mod store;
pub mod validate;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authz::tokens::{TokenFileError, Tokens};
use crate::config::{IngestConfig, parse_address};
use crate::connections::{
    AcceptBackoff, Admission, AdmissionCounters, Guarded, Limits, PeerAddress,
};
use crate::store::{Database, EventCaller, EventKind, NewEvent};
use crate::usage_payload::{CONTENT_SHA256, IDEMPOTENCY_KEY};
use crate::usage_payload::{SCHEMA, sha256_hex};
use access::{Access, Denied, ReadScope};
use store::{IngestStore, Query, Received};

/// The path of the API.
pub const PATH: &str = "/api/v1/usage";
/// The largest payload accepted.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Why the ingest endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The token file is unusable.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The database cannot be opened.
    #[error(transparent)]
    Store(#[from] store::IngestStoreError),
    /// The address cannot be bound.
    #[error("cannot listen on {address} (ingest.listen)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The endpoint, bound and ready to serve.
pub struct Ingest {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    /// Its connection slots: [`CONNECTIONS_PER_ADDRESS`] per address, [`MAX_CONNECTIONS`]
    /// in all.
    admission: Admission<PeerAddress>,
}

struct State {
    tokens: Tokens,
    access: Access,
    store: Mutex<IngestStore>,
    /// The daemon's audit trail, where refusals go; `None` when the store cannot be opened
    /// (refusals are then only logged: refusing needs no record, acting would).
    events: Option<Arc<Database>>,
}

impl Ingest {
    /// Reads the tokens and certificate, opens `<state_dir>/ingest.db` and binds. Refusals
    /// are written to `events`.
    pub async fn bind(
        config: &IngestConfig,
        state_dir: &std::path::Path,
        events: Option<Arc<Database>>,
    ) -> Result<Ingest, IngestError> {
        let tokens = Tokens::load(config.tokens.as_deref().unwrap_or(std::path::Path::new("")))?;
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config("ingest", cert, key, None, false, b"http/1.1")?,
            )),
            _ => None,
        };
        let store = IngestStore::open(&state_dir.join("ingest.db"))?;
        // Validation has parsed it.
        let address =
            parse_address(&config.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9402)));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| IngestError::Bind { address, source })?;
        Ok(Ingest {
            listener,
            tls,
            state: Arc::new(State {
                tokens,
                access: Access::new(&config.principals),
                store: Mutex::new(store),
                events,
            }),
            admission: Admission::new(
                "the ingest endpoint",
                Limits {
                    per_caller: CONNECTIONS_PER_ADDRESS,
                    per_caller_setting: "fixed; docs/limits.md",
                    total: MAX_CONNECTIONS,
                    total_setting: "fixed; docs/limits.md",
                },
            ),
        })
    }

    /// Its connection counters (for the metrics endpoint).
    pub fn connection_counters(&self) -> Arc<AdmissionCounters> {
        self.admission.counters()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop`: each client address holds at most
    /// [`CONNECTIONS_PER_ADDRESS`] connections (a TLS handshake in progress included), all
    /// together at most [`MAX_CONNECTIONS`]; a handshake and each connection have deadlines
    /// (`timeouts`, from [`crate::http::timeouts`]); accept(2) failures back off.
    pub async fn serve(
        self,
        timeouts: crate::connections::Timeouts,
        mut stop: watch::Receiver<bool>,
    ) {
        let counters = self.admission.counters();
        let mut backoff = AcceptBackoff::new("the ingest endpoint");
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = self.listener.accept() => accepted,
            };
            let Some((stream, address)) = backoff.check(accepted).await else {
                continue;
            };
            let Ok(permit) = self.admission.admit(PeerAddress(address.ip()), false) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&self.state);
            let tls = self.tls.clone();
            let stop = stop.clone();
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(timeouts.first_bytes, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                let io =
                                    Guarded::new(stream, timeouts, Some(permit), Some(counters));
                                serve_connection(TokioIo::new(io), state, stop).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "ingest: TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(%address, "ingest: TLS handshake timed out"),
                        }
                    }
                    None => {
                        let io = Guarded::new(stream, timeouts, Some(permit), Some(counters));
                        serve_connection(TokioIo::new(io), state, stop).await;
                    }
                }
            });
        }
    }
}

/// Connections one client address may hold (a node uploads on one; a reader or two).
pub const CONNECTIONS_PER_ADDRESS: usize = 8;
/// Connections of the ingest endpoint together.
pub const MAX_CONNECTIONS: usize = 512;

async fn serve_connection<T>(io: T, state: Arc<State>, stop: watch::Receiver<bool>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    crate::http::serve_connection(io, service, stop, None, "ingest").await;
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.into() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn respond(state: &Arc<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, format!("no such path: use {PATH}"));
    }
    let principal = match request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| state.tokens.principal(token.trim()))
    {
        Some(principal) => principal.to_string(),
        None => {
            return text(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer TOKEN)",
            );
        }
    };
    match *request.method() {
        Method::POST => receive(state, request, principal).await,
        Method::GET => query(state, &request, &principal).await,
        _ => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use POST or GET");
            response
                .headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, POST"));
            response
        }
    }
}

async fn receive(
    state: &Arc<State>,
    request: Request<Incoming>,
    principal: String,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let (declared, key) = (header(CONTENT_SHA256), header(IDEMPOTENCY_KEY));
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body (at most {MAX_BODY} bytes): {error}"),
            );
        }
    };
    // Who may upload for which node comes first, so that a refused attempt is audited
    // whatever else is wrong with it.
    let value = serde_json::from_slice::<serde_json::Value>(&body);
    let node_id = value
        .as_ref()
        .ok()
        .and_then(|value| value.get("node_id"))
        .and_then(serde_json::Value::as_str);
    if let Err(denied) = state.access.may_upload(&principal, node_id) {
        return deny(state, &principal, "ingest upload", denied).await;
    }
    let sha256 = sha256_hex(&body);
    if let Some(declared) = &declared
        && !declared.eq_ignore_ascii_case(&sha256)
    {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "{CONTENT_SHA256} {declared} does not match the body, whose SHA-256 is {sha256}"
            ),
        );
    }
    let value = match value {
        Ok(value) => value,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the body is not a {SCHEMA} payload: {error}"),
            );
        }
    };
    let now = crate::store::unix_ms(std::time::SystemTime::now());
    let payload = match validate::payload(value, now) {
        Ok(payload) => payload,
        Err(invalid) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the upload is refused, nothing was stored: {invalid}"),
            );
        }
    };
    match &key {
        Some(key) if *key == payload.key() => {}
        Some(key) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "{IDEMPOTENCY_KEY} {key} does not match the payload's {}",
                    payload.key()
                ),
            );
        }
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{IDEMPOTENCY_KEY} is required: node_id:hour_unix_ms"),
            );
        }
    }
    let state = Arc::clone(state);
    let hash = sha256.clone();
    let stored = tokio::task::spawn_blocking(move || {
        state
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .receive(&payload, &hash, &principal, now)
    })
    .await;
    match stored {
        Ok(Ok(received)) => {
            let (rows, duplicate) = match received {
                Received::Stored { rows } => (rows, false),
                Received::Duplicate => (0, true),
            };
            let mut response = json(&serde_json::json!({
                "sha256": sha256,
                "rows": rows,
                "duplicate": duplicate,
            }));
            if let Ok(value) = HeaderValue::from_str(&sha256) {
                response.headers_mut().insert(CONTENT_SHA256, value);
            }
            response
        }
        Ok(Err(error)) => {
            tracing::error!(error = %crate::errors::chain(&error), "ingest: cannot store an upload");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store it now; retry later",
            )
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "the store write failed"),
    }
}

/// Parses a `since`/`until` value: RFC 3339 or milliseconds since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .map(crate::store::unix_ms)
        .map_err(|error| format!("{text:?} is not a time ({error}): use RFC 3339 or milliseconds"))
}

/// Refuses `principal` (HTTP 403 with the reason) and writes the refusal to the audit
/// trail first, so that the trail has it by the time the caller reads the answer.
async fn deny(
    state: &State,
    principal: &str,
    action: &str,
    denied: Denied,
) -> Response<Full<Bytes>> {
    let reason = denied.to_string();
    tracing::warn!(principal, action, %reason, "ingest: request refused");
    if let Some(log) = &state.events {
        let event = NewEvent {
            time: std::time::SystemTime::now(),
            kind: EventKind::Deny,
            caller: EventCaller {
                uid: crate::authz::NO_UID,
                user: principal.to_string(),
                pid: None,
                transport: "ingest".to_string(),
                via: None,
            },
            action: action.to_string(),
            target: None,
            outcome: "denied".to_string(),
            reason: reason.clone(),
        };
        if let Err(error) = log.record(vec![event]).await {
            tracing::error!(%error, "ingest: cannot record a refused request");
        }
    }
    text(StatusCode::FORBIDDEN, reason)
}

async fn query(
    state: &Arc<State>,
    request: &Request<Incoming>,
    principal: &str,
) -> Response<Full<Bytes>> {
    let mut filter = Query::default();
    let mut csv = false;
    let mut rows = "users".to_string();
    for pair in request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        let parsed = match name {
            "since" => parse_time(&value).map(|ms| filter.since_ms = Some(ms)),
            "until" => parse_time(&value).map(|ms| filter.until_ms = Some(ms)),
            "node" => {
                filter.node = Some(value);
                Ok(())
            }
            "user" => {
                filter.user = Some(value);
                Ok(())
            }
            "format" => match value.as_str() {
                "json" => Ok(()),
                "csv" => {
                    csv = true;
                    Ok(())
                }
                other => Err(format!("format {other:?}: use json or csv")),
            },
            "rows" => match value.as_str() {
                "users" | "gpus" => {
                    rows = value;
                    Ok(())
                }
                other => Err(format!("rows {other:?}: use users or gpus")),
            },
            other => Err(format!(
                "unknown parameter {other:?}: use since, until, node, user, format, rows"
            )),
        };
        if let Err(message) = parsed {
            return text(StatusCode::BAD_REQUEST, message);
        }
    }
    match state.access.may_read(principal, filter.node.as_deref()) {
        Ok(ReadScope::All) => {}
        Ok(ReadScope::Nodes(nodes)) => filter.nodes = Some(nodes),
        Err(denied) => return deny(state, principal, "ingest read", denied).await,
    }
    let state = Arc::clone(state);
    let found = tokio::task::spawn_blocking(move || {
        state
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .query(&filter)
    })
    .await;
    let (gpus, users) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::errors::chain(&error),
            );
        }
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "the query failed"),
    };
    if !csv {
        return json(&serde_json::json!({"gpus": gpus, "users": users}));
    }
    let mut out = String::new();
    if rows == "gpus" {
        out.push_str("node_id,node_name,hour_unix_ms,gpu_index,samples,util_mean_pct,util_max_pct,mem_used_max_bytes,power_mean_w,energy_wh\n");
        for g in gpus {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                g.node_id,
                csv_field(&g.node_name),
                g.hour_unix_ms,
                g.gpu_index,
                g.samples,
                opt(g.util_mean_pct),
                opt(g.util_max_pct),
                opt(g.mem_used_max_bytes),
                opt(g.power_mean_w),
                opt(g.energy_wh)
            ));
        }
    } else {
        out.push_str("node_id,node_name,hour_unix_ms,gpu_index,user,uid,gpu_seconds,memory_gib_hours,peak_memory_bytes,processes\n");
        for u in users {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                u.node_id,
                csv_field(&u.node_name),
                u.hour_unix_ms,
                u.gpu_index,
                csv_field(&u.user),
                u.uid,
                u.gpu_seconds,
                u.memory_gib_hours,
                opt(u.peak_memory_bytes),
                u.processes
            ));
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    response
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            percent_decode("2026-11-22T05%3A00%3A00Z"),
            "2026-11-22T05:00:00Z"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(parse_time("3600000"), Ok(3_600_000));
        assert_eq!(parse_time("1970-01-01T01:00:00Z"), Ok(3_600_000));
        assert!(parse_time("yesterday").is_err());
    }
}
