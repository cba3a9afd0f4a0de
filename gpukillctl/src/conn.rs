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

pub mod peer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1::cluster_client::ClusterClient as GeneratedClusterClient;
use gpukill_proto::v1::gpu_kill_client::GpuKillClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::{
    Address, CA_ENV, CERT_ENV, ConnectArgs, KEY_ENV, NODE_ENV, RemoteAddress, TOKEN_FILE_ENV,
};
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
pub type Client = GpuKillClient<InterceptedService<Transport, RequestMetadata>>;

/// A connected client of a coordinator's Cluster service.
pub type ClusterClient = GeneratedClusterClient<InterceptedService<Transport, RequestMetadata>>;

/// A connection to gpukilld. Over TCP, a connection that breaks under a call becomes an
/// UNAVAILABLE status naming the address and what to check (with TLS 1.3, a server that
/// refuses the client certificate says so only by closing the connection after the
/// handshake); on the Unix socket, errors pass through as tonic reports them.
#[derive(Debug, Clone)]
pub struct Transport {
    channel: Channel,
    /// For a TCP target: what to say when the connection breaks.
    broken: Option<Arc<Broken>>,
}

/// What a broken TCP connection is reported with.
#[derive(Debug)]
struct Broken {
    /// The address, `https://host:port`.
    address: String,
    /// What to check, after the reason.
    hint: String,
}

impl Transport {
    /// The status for the transport error `err`: UNAVAILABLE naming the address over TCP.
    fn error(broken: Option<&Broken>, err: tonic::transport::Error) -> tonic::codegen::StdError {
        match broken {
            None => Box::new(err),
            Some(broken) => Box::new(tonic::Status::unavailable(format!(
                "the connection to gpukilld at {} broke: {} ({})",
                broken.address,
                innermost(&err),
                broken.hint
            ))),
        }
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
        let broken = self.broken.clone();
        self.channel
            .poll_ready(cx)
            .map_err(|err| Transport::error(broken.as_deref(), err))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let broken = self.broken.clone();
        let call = self.channel.call(request);
        Box::pin(async move {
            call.await
                .map_err(|err| Transport::error(broken.as_deref(), err))
        })
    }
}

/// The metadata every request carries: the bearer token, and the node a coordinator should
/// forward it to. The token is marked sensitive, so it never shows in debug output.
#[derive(Debug, Clone, Default)]
pub struct RequestMetadata {
    authorization: Option<MetadataValue<Ascii>>,
    node: Option<MetadataValue<Ascii>>,
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

/// Which gpukilld to talk to and how: resolved and checked from the global options.
pub struct Target {
    place: Place,
    /// For GpuKill requests: the token and the node.
    gpukill: RequestMetadata,
    /// For Cluster requests: the token only (Cluster rpcs are the coordinator's own).
    cluster: RequestMetadata,
}

/// Where gpukilld listens.
enum Place {
    /// A Unix socket, and whom to trust as its server.
    Unix(PathBuf, peer::TrustedPeers),
    /// A TCP address, with the endpoint (and its TLS settings) ready to connect.
    Remote {
        address: RemoteAddress,
        endpoint: Box<Endpoint>,
        /// Whether a client certificate is presented (--cert).
        client_certificate: bool,
    },
}

impl std::fmt::Debug for Target {
    // By hand: the endpoint holds the client's private key, which must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.address())
            .field("token", &self.gpukill.authorization.is_some())
            .field("node", &self.gpukill.node)
            .finish()
    }
}

impl Target {
    /// The target the options name. Fails with a usage error (exit 3) for options that do
    /// not go together and for credential files that cannot be used.
    pub fn new(args: &ConnectArgs) -> Result<Self, Error> {
        // Options that do not go together first, then the files.
        let place = match &args.socket {
            Some(Address::Remote(address)) => remote(address, args)?,
            Some(Address::Unix(path)) => unix(path.clone(), args)?,
            None => unix(default_socket(), args)?,
        };
        let authorization = args.token_file.as_deref().map(read_token).transpose()?;
        let node = args
            .node
            .as_deref()
            .map(|node| {
                MetadataValue::try_from(node).map_err(|_| {
                    Error::Usage(format!(
                        "--node {node:?} ({NODE_ENV}) cannot be sent as metadata: use the name \
                         gpukillctl cluster nodes shows"
                    ))
                })
            })
            .transpose()?;
        Ok(Target {
            place,
            gpukill: RequestMetadata {
                authorization: authorization.clone(),
                node,
            },
            cluster: RequestMetadata {
                authorization,
                node: None,
            },
        })
    }

    /// The daemon on the Unix socket at `path`, without credentials or a node, trusted when
    /// it runs as root or as the caller.
    pub fn unix(path: PathBuf) -> Self {
        Target::unix_trusting(path, peer::TrustedPeers::root_and_self())
    }

    /// The daemon on the Unix socket at `path`, trusted when it runs as one of `trusted`.
    pub(crate) fn unix_trusting(path: PathBuf, trusted: peer::TrustedPeers) -> Self {
        Target {
            place: Place::Unix(path, trusted),
            gpukill: RequestMetadata::default(),
            cluster: RequestMetadata::default(),
        }
    }

    /// The address for messages: the socket path, or the URL.
    pub fn address(&self) -> String {
        match &self.place {
            Place::Unix(path, _) => path.display().to_string(),
            Place::Remote { address, .. } => address.url(),
        }
    }

    /// A connection to the daemon; [`Error::Unreachable`] or [`Error::UnreachableRemote`]
    /// when nobody answers.
    async fn channel(&self) -> Result<Transport, Error> {
        match &self.place {
            Place::Unix(path, trusted) => Ok(Transport {
                channel: connect_unix(path, trusted).await?,
                broken: None,
            }),
            Place::Remote {
                address,
                endpoint,
                client_certificate,
            } => Ok(Transport {
                channel: connect_remote(address, endpoint).await?,
                broken: Some(Arc::new(Broken {
                    address: address.url(),
                    hint: broken_hint(address, *client_certificate),
                })),
            }),
        }
    }
}

/// Connects to the GpuKill service of `target`.
pub async fn connect(target: &Target) -> Result<Client, Error> {
    let channel = target.channel().await?;
    Ok(GpuKillClient::with_interceptor(
        channel,
        target.gpukill.clone(),
    ))
}

/// Connects to the Cluster service of `target` (a coordinator).
pub async fn connect_cluster(target: &Target) -> Result<ClusterClient, Error> {
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

/// The default socket: [`gpukill_proto::client_socket_path`] for this user.
fn default_socket() -> PathBuf {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    gpukill_proto::client_socket_path(euid, runtime_dir.as_deref())
}

/// The credential options that are set, with their environment variables.
fn credential_options(args: &ConnectArgs) -> Vec<(&'static str, &'static str)> {
    [
        (args.token_file.is_some(), "--token-file", TOKEN_FILE_ENV),
        (args.cert.is_some(), "--cert", CERT_ENV),
        (args.key.is_some(), "--key", KEY_ENV),
        (args.ca.is_some(), "--ca", CA_ENV),
    ]
    .into_iter()
    .filter(|(set, _, _)| *set)
    .map(|(_, option, env)| (option, env))
    .collect()
}

/// A Unix socket target; credential options make no sense there.
fn unix(path: PathBuf, args: &ConnectArgs) -> Result<Place, Error> {
    if let Some((option, env)) = credential_options(args).first() {
        return Err(Error::Usage(format!(
            "{option} applies to https:// addresses; the Unix socket {} authenticates you by \
             your uid (drop {option} and unset {env}, or pass --addr https://HOST:PORT)",
            path.display()
        )));
    }
    Ok(Place::Unix(path, peer::TrustedPeers::from_env()?))
}

/// A TCP target: checks the options against the scheme, reads the certificates and builds
/// the endpoint.
fn remote(address: &RemoteAddress, args: &ConnectArgs) -> Result<Place, Error> {
    let url = address.url();
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|err| Error::Usage(format!("{url} is not a usable address: {err}")))?
        .connect_timeout(REMOTE_CONNECT_TIMEOUT);
    if !address.tls {
        if let Some((option, env)) = credential_options(args)
            .into_iter()
            .find(|(option, _)| *option != "--token-file")
        {
            return Err(Error::Usage(format!(
                "{option} applies to https:// addresses; {url} has no TLS (drop {option} and \
                 unset {env}, or use https://)"
            )));
        }
        return Ok(Place::Remote {
            address: address.clone(),
            endpoint: Box::new(endpoint),
            client_certificate: false,
        });
    }
    let Some(ca) = &args.ca else {
        return Err(Error::Usage(format!(
            "{url} needs --ca FILE (or {CA_ENV}): the CA certificate(s) that gpukilld's \
             certificate must chain to; this build trusts no system roots, so pass --ca FILE"
        )));
    };
    let ca_pem = read_certificates("--ca", ca)?;
    let mut tls = ClientTlsConfig::new()
        .domain_name(address.host.clone())
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(REMOTE_CONNECT_TIMEOUT);
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let cert_pem = read_certificates("--cert", cert)?;
        let key_pem = read_private_key(key)?;
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    let endpoint = endpoint.tls_config(tls).map_err(|err| {
        Error::Usage(format!(
            "cannot set up TLS for {url} from {}: {} (check that --key is the private key of \
             --cert, and that both are PEM)",
            files(args),
            innermost(&err)
        ))
    })?;
    Ok(Place::Remote {
        address: address.clone(),
        endpoint: Box::new(endpoint),
        client_certificate: args.cert.is_some(),
    })
}

/// What to check when a connection to `address` broke under a call.
fn broken_hint(address: &RemoteAddress, client_certificate: bool) -> String {
    match (address.tls, client_certificate) {
        (false, _) => "is gpukilld still running?".to_owned(),
        (true, false) => "is gpukilld still running? gpukilld also closes the connection when it \
                          wants a client certificate: pass --cert and --key"
            .to_owned(),
        (true, true) => "is gpukilld still running? gpukilld also closes the connection when it \
                         refuses the client certificate: is --cert signed by its [tcp] \
                         client_ca?"
            .to_owned(),
    }
}

/// The TLS files in use, for messages: `--ca ca.pem, --cert c.pem, --key c.key`.
fn files(args: &ConnectArgs) -> String {
    [
        ("--ca", &args.ca),
        ("--cert", &args.cert),
        ("--key", &args.key),
    ]
    .into_iter()
    .filter_map(|(option, path)| {
        path.as_ref()
            .map(|path| format!("{option} {}", path.display()))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// Reads `path` for `option`, naming both when it cannot be read.
fn read_file(option: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| Error::Credentials {
        option,
        path: path.to_path_buf(),
        problem: format!("cannot read it: {}", io_reason(&err)),
    })
}

/// The bearer token of `--token-file`: its first non-empty line, trimmed, as the value of
/// an `authorization` header.
fn read_token(path: &Path) -> Result<MetadataValue<Ascii>, Error> {
    let problem = |problem: &str| Error::Credentials {
        option: "--token-file",
        path: path.to_path_buf(),
        problem: problem.to_owned(),
    };
    let bytes = read_file("--token-file", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| problem("is not text; the token is its first non-empty line"))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| problem("holds no token; the token is its first non-empty line"))?;
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        problem("the token has characters a header cannot carry (only printable ASCII)")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The PEM text of the certificates in `path`, checked to hold at least one.
fn read_certificates(option: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let problem = |problem: String| Error::Credentials {
        option,
        path: path.to_path_buf(),
        problem,
    };
    let pem = read_file(option, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| problem(format!("is not PEM: {err}")))?;
    if certificates.is_empty() {
        return Err(problem(
            "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(pem)
}

/// The PEM text of the private key in `path`, checked to hold one.
fn read_private_key(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = read_file("--key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| Error::Credentials {
        option: "--key",
        path: path.to_path_buf(),
        problem: format!(
            "holds no usable private key (expected PEM: -----BEGIN PRIVATE KEY-----): {err}"
        ),
    })?;
    Ok(pem)
}

/// Connects to the daemon on the Unix socket at `path`, failing with
/// [`Error::Unreachable`] (naming the socket and the systemd unit) when nobody answers, and
/// with [`Error::UntrustedDaemon`] when the server is not one of `trusted`.
async fn connect_unix(path: &Path, trusted: &peer::TrustedPeers) -> Result<Channel, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        socket: path.to_path_buf(),
        reason,
    };
    // The URI is required by tonic but unused: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(CONNECT_TIMEOUT);
    let (socket, checker) = (path.to_path_buf(), trusted.clone());
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let (socket, checker) = (socket.clone(), checker.clone());
        async move {
            let stream = UnixStream::connect(socket).await?;
            // Before the HTTP/2 preface: an untrusted server gets not one byte. Every
            // reconnection of the channel comes through here again.
            checker.check(&stream)?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }));
    // The endpoint's connect timeout covers connect(2) only; this one also covers a daemon
    // that accepts but never completes the HTTP/2 handshake.
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => match peer::untrusted(&err) {
            Some(server) => Err(Error::UntrustedDaemon {
                socket: path.to_path_buf(),
                uid: server.uid,
                user: peer::user_name(server.uid),
                pid: server.pid,
                own: trusted.own(),
                daemon_user: trusted
                    .daemon_user()
                    .map(|(name, uid)| format!("{name}, uid {uid}")),
            }),
            None => Err(unreachable(connect_reason(&err, CONNECT_TIMEOUT))),
        },
        Err(_elapsed) => Err(unreachable(no_answer(CONNECT_TIMEOUT))),
    }
}

/// Connects to the remote daemon at `address`, failing with [`Error::UnreachableRemote`]
/// (with the TLS error, when the handshake failed) when that does not work.
async fn connect_remote(address: &RemoteAddress, endpoint: &Endpoint) -> Result<Channel, Error> {
    let unreachable = |reason: String, hint: String| Error::UnreachableRemote {
        address: address.url(),
        reason,
        hint,
    };
    let network_hint = || {
        format!(
            "is gpukilld listening there? check the host, the port ([tcp] listen in its \
             configuration) and any firewall between{}",
            if address.tls {
                ""
            } else {
                "; a gpukilld with TLS needs https://"
            }
        )
    };
    match tokio::time::timeout(REMOTE_CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => match tls_error(&err) {
            Some(tls) => Err(unreachable(
                format!("TLS handshake failed: {tls}"),
                tls_hint(tls, address),
            )),
            None => Err(unreachable(
                connect_reason(&err, REMOTE_CONNECT_TIMEOUT),
                network_hint(),
            )),
        },
        Err(_elapsed) => Err(unreachable(
            no_answer(REMOTE_CONNECT_TIMEOUT),
            network_hint(),
        )),
    }
}

/// What to check after the TLS error `err` with `address`.
fn tls_hint(err: &rustls::Error, address: &RemoteAddress) -> String {
    use rustls::{AlertDescription, CertificateError};
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "gpukilld's certificate is not signed by a CA in --ca: pass the CA that signed its \
             [tcp] cert"
            .to_owned(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "gpukilld's certificate does not name {}: use a host name the certificate lists",
            address.host
        ),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure,
        ) => "gpukilld refused the handshake: it may want a client certificate (--cert and \
              --key) signed by its [tcp] client_ca, or a bearer token (--token-file)"
            .to_owned(),
        _ => "check --ca, and gpukilld's [tcp] cert and key".to_owned(),
    }
}

/// The rustls error somewhere in `err`'s chain (tokio-rustls wraps it in an I/O error).
fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = cause.source();
    }
    None
}

/// "no answer within 2s".
fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

/// `err`'s innermost message.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err.to_string();
    let mut current = err.source();
    while let Some(cause) = current {
        innermost = cause.to_string();
        current = cause.source();
    }
    innermost
}

/// An I/O error's message without its "(os error N)" suffix.
pub(crate) fn io_reason(io: &std::io::Error) -> String {
    let text = io.to_string();
    match io.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
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
fn connect_reason(err: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    let mut innermost = err.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return no_answer(timeout);
            }
            return io_reason(io);
        }
        innermost = cause.to_string();
        current = cause.source();
    }
    innermost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::testutil::pki::{Pki, file};
    use crate::testutil::{self, FakeDaemon, ReceivedMetadata, run_argv, serve, serve_tcp};
    use clap::Parser;
    use tonic::transport::ServerTlsConfig;

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_exit_code_6() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gpukilld.sock");
        let err = connect(&Target::unix(path.clone()))
            .await
            .expect_err("nothing listens there");
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
        let err = connect(&Target::unix(path))
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string()
                .contains(": Connection refused (is gpukilld.service"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_untrusted_server_gets_not_one_byte_and_exit_code_6() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gpukilld.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // What the server receives on its first connection, until the client hangs up.
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut received = Vec::new();
            let _ = stream.read_to_end(&mut received);
            received
        });
        // The server is this process; trust only a uid it does not run as.
        let stranger = 4_000_000_000;
        let target = Target::unix_trusting(path.clone(), peer::TrustedPeers::only(stranger));
        let err = connect(&target).await.expect_err("untrusted");
        assert_eq!(err.exit_code(), 6);
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let name = peer::user_name(euid).unwrap_or_else(|| euid.to_string());
        let server_words = match peer::user_name(euid) {
            Some(user) => format!("uid {euid} ({user}, pid {})", std::process::id()),
            None => format!("uid {euid} (pid {})", std::process::id()),
        };
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to talk to {}: it is served by {server_words}, not by root, by you \
                 (uid {stranger}) or by GPUKILL_DAEMON_USER (unset), so it may not be gpukilld \
                 and nothing was sent to it (pass gpukilld's socket, e.g. --socket \
                 /run/gpukill/gpukilld.sock; if gpukilld runs as {name} on purpose, set \
                 GPUKILL_DAEMON_USER={name})",
                path.display()
            )
        );
        assert_eq!(crate::error::format_chain(&err).lines().count(), 1);
        let received = tokio::task::spawn_blocking(move || server.join().expect("server"))
            .await
            .expect("join");
        assert_eq!(received, b"", "the client sent {received:?}");
    }

    #[tokio::test]
    async fn a_trusted_server_is_answered_as_before() {
        let served = serve(FakeDaemon {
            list: Some(Ok(testutil::snapshot())),
            ..Default::default()
        });
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let target = Target::unix_trusting(served.socket.clone(), peer::TrustedPeers::only(euid));
        let mut client = connect(&target).await.expect("trusted");
        let snapshot = client
            .list(unary(gpukill_proto::v1::ListRequest::default()))
            .await
            .expect("List")
            .into_inner()
            .snapshot;
        assert_eq!(snapshot, Some(testutil::snapshot()));
    }

    /// The target of `gpukillctl ARGS... list`.
    fn target(args: &[&str]) -> Result<Target, Error> {
        let argv = std::iter::once("gpukillctl")
            .chain(args.iter().copied())
            .chain(["list"]);
        Target::new(&Cli::try_parse_from(argv).expect("valid arguments").connect)
    }

    /// The usage error of `target(args)`, checked to exit 3.
    fn refused(args: &[&str]) -> String {
        let err = target(args).expect_err("refused");
        assert_eq!(err.exit_code(), 3, "{err}");
        err.to_string()
    }

    #[test]
    fn explicit_addresses_win() {
        let target = target(&["--socket", "/tmp/x.sock"]).expect("target");
        assert_eq!(target.address(), "/tmp/x.sock");
        let target = target_of("http://127.0.0.1:7443");
        assert_eq!(target.address(), "http://127.0.0.1:7443");
    }

    fn target_of(address: &str) -> Target {
        target(&["--addr", address]).expect("target")
    }

    #[test]
    fn credentials_with_the_unix_socket_are_usage_errors() {
        let text = refused(&["--socket", "/tmp/g.sock", "--token-file", "/t"]);
        assert_eq!(
            text,
            "--token-file applies to https:// addresses; the Unix socket /tmp/g.sock \
             authenticates you by your uid (drop --token-file and unset GPUKILL_TOKEN_FILE, or \
             pass --addr https://HOST:PORT)"
        );
        let text = refused(&["--ca", "/ca.pem"]);
        assert!(
            text.starts_with("--ca applies to https:// addresses"),
            "{text}"
        );
        let text = refused(&["--cert", "/c.pem", "--key", "/c.key"]);
        assert!(
            text.starts_with("--cert applies to https:// addresses"),
            "{text}"
        );
    }

    #[test]
    fn https_needs_a_ca_and_http_takes_no_tls_files() {
        let text = refused(&["--addr", "https://c.example:7443", "--token-file", "/t"]);
        assert!(
            text.starts_with("https://c.example:7443 needs --ca FILE (or GPUKILL_CA)"),
            "{text}"
        );
        assert!(text.contains("pass --ca FILE"), "{text}");
        let text = refused(&["--addr", "http://localhost:7443", "--ca", "/ca.pem"]);
        assert_eq!(
            text,
            "--ca applies to https:// addresses; http://localhost:7443 has no TLS (drop --ca \
             and unset GPUKILL_CA, or use https://)"
        );
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = file(&dir, "token", "\n  s3cret-token  \nsecond line\n");
        let target =
            target(&["--addr", "http://127.0.0.1:1", "--token-file", &good]).expect("target");
        let authorization = target.gpukill.authorization.as_ref().expect("token");
        assert_eq!(authorization.to_str().ok(), Some("Bearer s3cret-token"));
        assert!(authorization.is_sensitive());
        assert!(!format!("{target:?}").contains("s3cret"), "{target:?}");
        let empty = file(&dir, "empty", "\n   \n");
        let text = refused(&["--addr", "http://127.0.0.1:1", "--token-file", &empty]);
        assert_eq!(
            text,
            format!("--token-file {empty}: holds no token; the token is its first non-empty line")
        );
        let missing = dir.path().join("missing");
        let missing = missing.to_str().expect("UTF-8");
        let text = refused(&["--addr", "http://127.0.0.1:1", "--token-file", missing]);
        assert_eq!(
            text,
            format!("--token-file {missing}: cannot read it: No such file or directory")
        );
        let control = file(&dir, "control", "tok\u{7}en\n");
        let text = refused(&["--addr", "http://127.0.0.1:1", "--token-file", &control]);
        assert!(text.contains("characters a header cannot carry"), "{text}");
    }

    #[test]
    fn certificate_files_are_checked_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_pem = file(&dir, "ca.pem", "hello\n");
        let text = refused(&["--addr", "https://c:7443", "--ca", &not_pem]);
        assert_eq!(
            text,
            format!(
                "--ca {not_pem}: holds no certificate (expected PEM: -----BEGIN \
                 CERTIFICATE-----)"
            )
        );
        let pki = Pki::new("files");
        let ca = pki.ca_file(&dir);
        let (cert, key) = pki.issue(&dir, "client", &[]);
        let text = refused(&[
            "--addr",
            "https://c:7443",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &ca,
        ]);
        assert!(
            text.starts_with(&format!("--key {ca}: holds no usable private key")),
            "{text}"
        );
        let text = refused(&[
            "--addr",
            "https://c:7443",
            "--ca",
            &ca,
            "--cert",
            &key,
            "--key",
            &key,
        ]);
        assert!(
            text.starts_with(&format!("--cert {key}: holds no certificate")),
            "{text}"
        );
        target(&[
            "--addr",
            "https://c:7443",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .expect("a matching certificate and key");
        let (_, other_key) = pki.issue(&dir, "other", &[]);
        let text = refused(&[
            "--addr",
            "https://c:7443",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &other_key,
        ]);
        assert!(
            text.starts_with(&format!(
                "cannot set up TLS for https://c:7443 from --ca {ca}, --cert {cert}, --key \
                 {other_key}: "
            )),
            "{text}"
        );
        assert!(
            text.ends_with(
                "(check that --key is the private key of --cert, and that both are PEM)"
            ),
            "{text}"
        );
    }

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

    /// A fake daemon answering Version over TLS with a certificate of `pki` for `names`,
    /// requiring client certificates of `client_ca` when given.
    fn serve_tls(pki: &Pki, names: &[&str], client_ca: Option<&Pki>) -> testutil::ServedTcp {
        let (cert, key) = pki.issue_pem("gpukilld", names);
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(client_ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(client_ca.ca.pem()));
        }
        serve_tcp(
            FakeDaemon {
                version: Some(gpukill_proto::v1::VersionResponse {
                    daemon_version: "0.1.0".to_owned(),
                    api: "gpukill.v1".to_owned(),
                    host: "tls-node".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Some(tls),
        )
    }

    #[tokio::test]
    async fn https_with_the_right_ca_works_and_a_wrong_one_says_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new("gpukill");
        let served = serve_tls(&pki, &["localhost", "127.0.0.1"], None);
        let port = served.address.port();
        let ca = pki.ca_file(&dir);
        for host in ["localhost", "127.0.0.1"] {
            let url = format!("https://{host}:{port}");
            let (result, text, _) =
                run_argv(&["--addr", &url, "--ca", &ca, "version", "-o", "json"]).await;
            result.expect("TLS with the right CA");
            assert!(text.contains("\"host\": \"tls-node\""), "{text}");
        }

        let other = Pki::new("other");
        let wrong = other.ca_file(&dir);
        let url = format!("https://localhost:{port}");
        let (result, _, _) = run_argv(&["--addr", &url, "--ca", &wrong, "version"]).await;
        let err = result.expect_err("an unknown CA");
        assert_eq!(err.exit_code(), 6);
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach gpukilld at {url}: TLS handshake failed: invalid peer \
                 certificate: UnknownIssuer (gpukilld's certificate is not signed by a CA in \
                 --ca: pass the CA that signed its [tcp] cert)"
            )
        );
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new("gpukill");
        let served = serve_tls(&pki, &["gpukilld.test"], None);
        let url = format!("https://127.0.0.1:{}", served.address.port());
        let ca = pki.ca_file(&dir);
        let (result, _, _) = run_argv(&["--addr", &url, "--ca", &ca, "list"]).await;
        let err = result.expect_err("a name mismatch");
        assert_eq!(err.exit_code(), 6);
        let text = err.to_string();
        assert!(text.contains("TLS handshake failed: "), "{text}");
        assert!(
            text.ends_with(
                "(gpukilld's certificate does not name 127.0.0.1: use a host name the \
                 certificate lists)"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn mutual_tls_sends_the_client_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new("gpukill");
        let clients = Pki::new("clients");
        let served = serve_tls(&pki, &["localhost"], Some(&clients));
        let url = format!("https://localhost:{}", served.address.port());
        let ca = pki.ca_file(&dir);
        let (cert, key) = clients.issue(&dir, "alice", &[]);
        let (result, _, _) = run_argv(&[
            "--addr", &url, "--ca", &ca, "--cert", &cert, "--key", &key, "version",
        ])
        .await;
        result.expect("mutual TLS");

        let (result, _, _) = run_argv(&["--addr", &url, "--ca", &ca, "version"]).await;
        let err = result.expect_err("no client certificate");
        assert_eq!(err.exit_code(), 6);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "Version failed (Unavailable): the connection to gpukilld at {url} broke: "
            )),
            "{text}"
        );
        assert!(
            text.ends_with("wants a client certificate: pass --cert and --key)"),
            "{text}"
        );

        // A certificate from a CA the server does not trust.
        let strangers = Pki::new("strangers");
        let (cert, key) = strangers.issue(&dir, "mallory", &[]);
        let (result, _, _) = run_argv(&[
            "--addr", &url, "--ca", &ca, "--cert", &cert, "--key", &key, "version",
        ])
        .await;
        let err = result.expect_err("an untrusted client certificate");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string()
                .contains("is --cert signed by its [tcp] client_ca?"),
            "{err}"
        );
    }
}
