//! The gRPC services on TCP (`[tcp] listen`): TLS with optional client certificates
//! (rustls), and a layer that authenticates every request before any handler sees it — a
//! bearer token or the client certificate names a principal, `[tcp.principals]` gives its
//! role — and puts the [`Remote`] it found in the request's extensions for
//! [`crate::authz::caller`]. Refusals are audit events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::Connected;

use super::layer::{Intercept, Intercepted};
use crate::authz::tokens::{TokenFileError, Tokens};
use crate::authz::{self, AuthzError, Caller, Forwarded, Remote, Role};
use crate::config::TcpConfig;
use crate::connections::{AcceptBackoff, Admission, Guarded, PeerAddress, Timeouts};
use crate::store::StoreHandle;
use crate::tls::{TlsError, server_config};

/// Metadata a coordinator sets on a forwarded request: the user name of the caller it
/// verified, as it is (it may hold `@` or anything else a principal name holds; it is never
/// split).
pub const CALLER_USER_HEADER: &str = "gpukill-caller-user";
/// The forwarded caller's host (the coordinator's node name).
pub const CALLER_HOST_HEADER: &str = "gpukill-caller-host";
/// The single `user@host` field older coordinators sent. It is ambiguous (principal
/// `4343@lab.example` read as user `4343`), so a node refuses it and a coordinator strips it.
pub const LEGACY_CALLER_HEADER: &str = "gpukill-caller";
/// The forwarded caller's uid on its host.
pub const CALLER_UID_HEADER: &str = "gpukill-caller-uid";
/// The forwarded caller's role: admin, user or reader.
pub const CALLER_ROLE_HEADER: &str = "gpukill-caller-role";

/// The longest forwarded user or host name accepted, in bytes.
const MAX_CALLER_FIELD: usize = 256;

/// The principal of unauthenticated callers on an insecure loopback listener.
pub const ANONYMOUS: &str = "anonymous";

/// Why the TCP listener cannot start. Each names the file or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// A certificate, key or CA cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token file is unusable.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// The address cannot be bound.
    #[error("cannot listen on {address} (tcp.listen)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The rustls server configuration of `[tcp]`, when it has TLS.
fn server_tls(config: &TcpConfig) -> Result<Option<Arc<rustls::ServerConfig>>, TcpError> {
    let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
        return Ok(None);
    };
    let client_ca = config.client_ca.as_deref();
    let tls = server_config("tcp", cert, key, client_ca, config.tokens.is_some(), b"h2")?;
    Ok(Some(tls))
}

/// Who a TCP connection is, as far as the connection itself says: its address and the
/// client certificate chain the TLS handshake verified.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub address: Option<SocketAddr>,
    /// The verified client certificate chain, leaf first.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted TCP connection, in clear (insecure loopback) or TLS.
pub enum Connection {
    /// No TLS.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Connection::Plain(stream) => PeerInfo {
                address: stream.peer_addr().ok(),
                certificates: None,
            },
            Connection::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                PeerInfo {
                    address: tcp.peer_addr().ok(),
                    certificates: session.peer_certificates().map(|chain| {
                        Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())
                    }),
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// The bound TCP listener, its TLS and its authenticator, ready to serve.
pub struct TcpListenerSetup {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks every request.
    pub authenticator: Arc<Authenticator>,
}

impl TcpListenerSetup {
    /// Reads the certificates and the token file and binds `[tcp] listen` (validation has
    /// checked that the combination is allowed).
    pub async fn bind(
        config: &TcpConfig,
        address: SocketAddr,
        store: StoreHandle,
    ) -> Result<TcpListenerSetup, TcpError> {
        let tls = server_tls(config)?.map(tokio_rustls::TlsAcceptor::from);
        let tokens = config.tokens.as_deref().map(Tokens::load).transpose()?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| TcpError::Bind { address, source })?;
        let authenticator = Arc::new(Authenticator {
            tokens,
            insecure_role: config.insecure_loopback.then_some(config.insecure_role),
            principals: config.principals.clone(),
            store,
        });
        Ok(TcpListenerSetup {
            listener,
            tls,
            authenticator,
        })
    }

    /// The bound address (the port, when `listen` asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop`, doing TLS handshakes concurrently (each within
    /// `timeouts.first_bytes`), and yields the connections that completed one. Each client
    /// address gets at most its share of `admission`'s slots (a handshake in progress holds
    /// one); a refused connection is closed at once. accept(2) failures back off.
    pub fn incoming(
        self,
        admission: Admission<PeerAddress>,
        timeouts: Timeouts,
        mut stop: watch::Receiver<bool>,
    ) -> (
        Arc<Authenticator>,
        tokio_stream::wrappers::ReceiverStream<Result<TcpConnection, std::io::Error>>,
    ) {
        let (sender, receiver) = mpsc::channel(64);
        let TcpListenerSetup {
            listener,
            tls,
            authenticator,
        } = self;
        let audit = Arc::clone(&authenticator);
        let counters = admission.counters();
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::new("the TCP listener");
            loop {
                let accepted = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    accepted = listener.accept() => accepted,
                };
                let Some((stream, address)) = backoff.check(accepted).await else {
                    continue;
                };
                let Ok(permit) = admission.admit(PeerAddress(address.ip()), false) else {
                    // Closed before any byte: TLS has not begun, so there is no way to say why
                    // that the client would read; the daemon's log and metrics say it.
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counters = Arc::clone(&counters);
                let Some(acceptor) = tls.clone() else {
                    let connection = Connection::Plain(stream);
                    let guarded = Guarded::new(connection, timeouts, Some(permit), Some(counters));
                    if sender.send(Ok(guarded)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let sender = sender.clone();
                let audit = Arc::clone(&audit);
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(timeouts.first_bytes, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let connection = Connection::Tls(Box::new(stream));
                            let guarded =
                                Guarded::new(connection, timeouts, Some(permit), Some(counters));
                            let _ = sender.send(Ok(guarded)).await;
                        }
                        Ok(Err(error)) => audit.handshake_failed(address, &error),
                        Err(_) => {
                            counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%address, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        (
            authenticator,
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )
    }
}

/// A served TCP connection.
pub type TcpConnection = Guarded<Connection>;

/// Decides who a TCP request comes from.
pub struct Authenticator {
    tokens: Option<Tokens>,
    /// The role of unauthenticated callers, on an insecure loopback listener only.
    insecure_role: Option<Role>,
    principals: BTreeMap<String, Role>,
    store: StoreHandle,
}

/// Why a request was refused before any handler saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, a wrong token, or a principal that is not in `[tcp.principals]`.
    Unauthenticated(String),
    /// A principal presented forwarding metadata without the coordinator role, or the
    /// metadata is malformed.
    Forbidden(String),
}

impl Authenticator {
    /// The principal and role of a request with `headers` on a connection `peer`.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: &PeerInfo,
    ) -> Result<Remote, Refusal> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Refusal::Unauthenticated(
                            "the authorization header is not \"Bearer TOKEN\"".into(),
                        )
                    })
            })
            .transpose()?;
        let principal = match bearer {
            // A token, when presented, decides (and must be right, certificate or not).
            Some(token) => match &self.tokens {
                Some(tokens) => tokens.principal(token).map(str::to_string).ok_or_else(|| {
                    Refusal::Unauthenticated("the bearer token is not valid".into())
                })?,
                None => {
                    return Err(Refusal::Unauthenticated(
                        "this daemon takes no bearer tokens (tcp.tokens is not set)".into(),
                    ));
                }
            },
            None => match peer.certificates.as_ref().and_then(|chain| chain.first()) {
                Some(leaf) => authz::certs::principal(leaf).ok_or_else(|| {
                    Refusal::Unauthenticated(
                        "the client certificate names no principal (no common name or DNS name)"
                            .into(),
                    )
                })?,
                None => match self.insecure_role {
                    Some(_) => ANONYMOUS.to_string(),
                    None => {
                        return Err(Refusal::Unauthenticated(
                            "no credentials: present a client certificate or a bearer token".into(),
                        ));
                    }
                },
            },
        };
        let role = match (self.principals.get(&principal), self.insecure_role) {
            (Some(role), _) => *role,
            (None, Some(role)) if principal == ANONYMOUS => role,
            (None, _) => {
                return Err(Refusal::Unauthenticated(format!(
                    "principal {principal:?} is not in [tcp.principals]"
                )));
            }
        };
        let forwarded = forwarded_caller(headers, &principal, role)?;
        Ok(Remote {
            principal,
            role,
            forwarded,
            address: peer.address,
        })
    }

    /// Writes a refusal to the audit trail and the log.
    fn refused(&self, peer: &PeerInfo, path: &str, refusal: &Refusal) {
        let (Refusal::Unauthenticated(reason) | Refusal::Forbidden(reason)) = refusal;
        let caller = Caller::remote(Remote {
            principal: peer
                .address
                .map_or_else(|| "unknown".to_string(), |address| address.to_string()),
            role: Role::Reader,
            forwarded: None,
            address: peer.address,
        });
        let error = AuthzError::Forbidden {
            who: caller.to_string(),
            what: path.to_string(),
            why: reason.clone(),
        };
        super::audit_refusal(&self.store, &caller, path, &error);
    }

    /// A TLS handshake that failed on the client's certificate is a refused caller too.
    fn handshake_failed(&self, address: SocketAddr, error: &std::io::Error) {
        let certificate = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
            });
        if !certificate {
            tracing::debug!(%address, %error, "TLS handshake failed");
            return;
        }
        let peer = PeerInfo {
            address: Some(address),
            certificates: None,
        };
        self.refused(
            &peer,
            "TLS handshake",
            &Refusal::Unauthenticated(format!("client certificate refused: {error}")),
        );
    }
}

/// The caller a coordinator forwards for, from the request's metadata: user, host, uid and
/// role, each in its own field, so no principal name can be read as another user. Only a
/// coordinator may name one; anyone else naming one is refused.
fn forwarded_caller(
    headers: &http::HeaderMap,
    principal: &str,
    role: Role,
) -> Result<Option<Forwarded>, Refusal> {
    let header = |name: &str| headers.get(name).map(|value| value.to_str().unwrap_or(""));
    let named = [
        CALLER_USER_HEADER,
        CALLER_HOST_HEADER,
        CALLER_UID_HEADER,
        CALLER_ROLE_HEADER,
        LEGACY_CALLER_HEADER,
    ]
    .into_iter()
    .filter(|name| headers.contains_key(*name))
    .collect::<Vec<_>>();
    if named.is_empty() {
        return Ok(None);
    }
    if role != Role::Coordinator {
        return Err(Refusal::Forbidden(format!(
            "principal {principal:?} ({}) named a caller ({}); only the coordinator role may forward requests",
            role.name(),
            named.join(", ")
        )));
    }
    let malformed =
        |what: String| Refusal::Forbidden(format!("malformed forwarded caller: {what}"));
    if let Some(legacy) = header(LEGACY_CALLER_HEADER) {
        return Err(malformed(format!(
            "{LEGACY_CALLER_HEADER}: {legacy:?} (user@host in one field) is refused because it is ambiguous; the coordinator must send {CALLER_USER_HEADER} and {CALLER_HOST_HEADER} (upgrade it to this gpukilld's version)"
        )));
    }
    let field = |name: &'static str| {
        let value = header(name).unwrap_or("");
        if value.is_empty() || value.len() > MAX_CALLER_FIELD {
            return Err(malformed(format!(
                "{name} {value:?} must be 1 to {MAX_CALLER_FIELD} visible ASCII characters"
            )));
        }
        Ok(value.to_string())
    };
    let user = field(CALLER_USER_HEADER)?;
    let host = field(CALLER_HOST_HEADER)?;
    let uid = header(CALLER_UID_HEADER);
    let uid = uid
        .and_then(|uid| uid.parse::<u32>().ok())
        .ok_or_else(|| malformed(format!("{CALLER_UID_HEADER} {uid:?} is not a uid")))?;
    let caller_role = header(CALLER_ROLE_HEADER);
    let caller_role = caller_role
        .and_then(Role::from_name)
        .filter(|role| matches!(role, Role::Admin | Role::User | Role::Reader))
        .ok_or_else(|| {
            malformed(format!(
                "{CALLER_ROLE_HEADER} {caller_role:?} is not admin, user or reader"
            ))
        })?;
    Ok(Some(Forwarded {
        user,
        host,
        uid,
        role: caller_role,
    }))
}

/// Every request on the TCP listener is authenticated before any service sees it: the
/// [`Remote`] found goes into the request's extensions; a refusal is answered here.
impl Intercept for Authenticator {
    fn intercept(self: Arc<Self>, mut request: http::Request<Body>) -> Intercepted {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or(PeerInfo {
                address: None,
                certificates: None,
            });
        match self.authenticate(request.headers(), &peer) {
            Ok(remote) => {
                request.extensions_mut().insert(remote);
                Intercepted::Pass(request)
            }
            Err(refusal) => {
                self.refused(&peer, request.uri().path(), &refusal);
                let status = match refusal {
                    Refusal::Unauthenticated(reason) => tonic::Status::unauthenticated(reason),
                    Refusal::Forbidden(reason) => tonic::Status::permission_denied(reason),
                };
                Intercepted::Answer(Box::pin(std::future::ready(Ok(status.into_http()))))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn authenticator(tokens: Option<&str>, insecure: Option<Role>) -> Authenticator {
        Authenticator {
            tokens: tokens.map(|text| Tokens::parse(text).unwrap()),
            insecure_role: insecure,
            principals: BTreeMap::from([
                ("coord".to_string(), Role::Coordinator),
                ("ops".to_string(), Role::Admin),
            ]),
            store: crate::store::StoreHandle::unavailable("no store in this test".into()),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    const NO_PEER: PeerInfo = PeerInfo {
        address: None,
        certificates: None,
    };

    #[test]
    fn tokens_name_principals_and_roles_come_from_the_configuration() {
        let auth = authenticator(
            Some(
                "coord 0123456789abcdef0123\nops fedcba9876543210fedc\nstranger aaaaaaaaaaaaaaaaaaaa\n",
            ),
            None,
        );
        let ops = auth
            .authenticate(
                &headers(&[("authorization", "Bearer fedcba9876543210fedc")]),
                &NO_PEER,
            )
            .unwrap();
        assert_eq!((ops.principal.as_str(), ops.role), ("ops", Role::Admin));
        let wrong = auth.authenticate(&headers(&[("authorization", "Bearer nope")]), &NO_PEER);
        assert!(matches!(wrong, Err(Refusal::Unauthenticated(r)) if r.contains("not valid")));
        let none = auth.authenticate(&headers(&[]), &NO_PEER);
        assert!(matches!(none, Err(Refusal::Unauthenticated(r)) if r.contains("no credentials")));
        let unknown = auth.authenticate(
            &headers(&[("authorization", "Bearer aaaaaaaaaaaaaaaaaaaa")]),
            &NO_PEER,
        );
        assert!(
            matches!(unknown, Err(Refusal::Unauthenticated(r)) if r.contains("\"stranger\" is not in [tcp.principals]"))
        );
    }

    #[test]
    fn only_a_coordinator_may_name_a_caller() {
        let auth = authenticator(
            Some("coord 0123456789abcdef0123\nops fedcba9876543210fedc\n"),
            None,
        );
        let forwarded = [
            (CALLER_USER_HEADER, "alice"),
            (CALLER_HOST_HEADER, "login1"),
            (CALLER_UID_HEADER, "1000"),
            (CALLER_ROLE_HEADER, "user"),
        ];
        let mut with_token = forwarded.to_vec();
        with_token.push(("authorization", "Bearer 0123456789abcdef0123"));
        let remote = auth.authenticate(&headers(&with_token), &NO_PEER).unwrap();
        let caller = remote.forwarded.unwrap();
        assert_eq!(
            (
                caller.user.as_str(),
                caller.host.as_str(),
                caller.uid,
                caller.role
            ),
            ("alice", "login1", 1000, Role::User)
        );
        let mut impostor = forwarded.to_vec();
        impostor.push(("authorization", "Bearer fedcba9876543210fedc"));
        let refused = auth.authenticate(&headers(&impostor), &NO_PEER);
        assert!(
            matches!(refused, Err(Refusal::Forbidden(r)) if r.contains("only the coordinator role"))
        );
        let mut bad_role = with_token.clone();
        bad_role[3] = (CALLER_ROLE_HEADER, "coordinator");
        assert!(matches!(
            auth.authenticate(&headers(&bad_role), &NO_PEER),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn a_forwarded_user_name_with_at_signs_stays_one_name() {
        let auth = authenticator(Some("coord 0123456789abcdef0123\n"), None);
        let token = ("authorization", "Bearer 0123456789abcdef0123");
        let remote = auth
            .authenticate(
                &headers(&[
                    token,
                    (CALLER_USER_HEADER, "4343@lab.example"),
                    (CALLER_HOST_HEADER, "coord"),
                    (CALLER_UID_HEADER, "4294967295"),
                    (CALLER_ROLE_HEADER, "user"),
                ]),
                &NO_PEER,
            )
            .unwrap();
        let forwarded = remote.forwarded.clone().unwrap();
        assert_eq!(
            (forwarded.user.as_str(), forwarded.host.as_str()),
            ("4343@lab.example", "coord")
        );
        assert_eq!(remote.user_name(), "4343@lab.example");
        // The old single field is refused, not split.
        let legacy = auth.authenticate(
            &headers(&[
                token,
                (LEGACY_CALLER_HEADER, "4343@lab.example@coord"),
                (CALLER_UID_HEADER, "0"),
                (CALLER_ROLE_HEADER, "user"),
            ]),
            &NO_PEER,
        );
        assert!(
            matches!(&legacy, Err(Refusal::Forbidden(r)) if r.contains("ambiguous") && r.contains(CALLER_USER_HEADER)),
            "{legacy:?}"
        );
        // A missing or empty field is named.
        for (missing, pairs) in [
            (
                CALLER_HOST_HEADER,
                vec![
                    token,
                    (CALLER_USER_HEADER, "alice"),
                    (CALLER_UID_HEADER, "1"),
                    (CALLER_ROLE_HEADER, "user"),
                ],
            ),
            (
                CALLER_USER_HEADER,
                vec![
                    token,
                    (CALLER_USER_HEADER, ""),
                    (CALLER_HOST_HEADER, "coord"),
                    (CALLER_UID_HEADER, "1"),
                    (CALLER_ROLE_HEADER, "user"),
                ],
            ),
        ] {
            let refused = auth.authenticate(&headers(&pairs), &NO_PEER);
            assert!(
                matches!(&refused, Err(Refusal::Forbidden(r)) if r.contains(missing)),
                "{refused:?}"
            );
        }
        // Any one forwarding field from a non-coordinator is refused.
        let auth = authenticator(Some("ops fedcba9876543210fedc\n"), None);
        let refused = auth.authenticate(
            &headers(&[
                ("authorization", "Bearer fedcba9876543210fedc"),
                (CALLER_HOST_HEADER, "coord"),
            ]),
            &NO_PEER,
        );
        assert!(
            matches!(&refused, Err(Refusal::Forbidden(r)) if r.contains("only the coordinator role")),
            "{refused:?}"
        );
    }

    #[test]
    fn insecure_loopback_callers_are_anonymous_with_the_configured_role() {
        let auth = authenticator(None, Some(Role::Reader));
        let anonymous = auth.authenticate(&headers(&[]), &NO_PEER).unwrap();
        assert_eq!(
            (anonymous.principal.as_str(), anonymous.role),
            (ANONYMOUS, Role::Reader)
        );
    }
}
