//! Which gpukilld to talk to and how: the global options turned into a checked [`Target`]
//! once, before any command runs, so every usage problem (a credential with a Unix socket,
//! https without `--ca`, a file that cannot be read) is found there.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::args::{CA_ENV, CERT_ENV, ConnectArgs, KEY_ENV, NODE_ENV, TOKEN_FILE_ENV};
use super::channel::{connect_remote, connect_unix};
use super::credentials::{read_certificates, read_private_key, read_token};
use super::reasons::{broken_hint, innermost};
use super::transport::{Broken, Link, RequestMetadata, Transport};
use super::{Address, REMOTE_CONNECT_TIMEOUT, RemoteAddress, peer};
use crate::error::Error;

/// Which gpukilld to talk to and how: resolved and checked from the global options.
pub struct Target {
    place: Place,
    /// For GpuKill requests: the token and the node.
    pub(super) gpukill: RequestMetadata,
    /// For Cluster requests: the token only (Cluster rpcs are the coordinator's own).
    pub(super) cluster: RequestMetadata,
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
    pub(super) async fn channel(&self) -> Result<Transport, Error> {
        match &self.place {
            Place::Unix(path, trusted) => Ok(Transport {
                link: Link::Unix(connect_unix(path, trusted).await?),
            }),
            Place::Remote {
                address,
                endpoint,
                client_certificate,
            } => Ok(Transport {
                link: Link::Remote(
                    connect_remote(address, endpoint).await?,
                    Arc::new(Broken {
                        address: address.url(),
                        hint: broken_hint(address, *client_certificate),
                    }),
                ),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::testutil::pki::{Pki, file};
    use clap::Parser;

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
}
