//! Opening a channel to gpukilld: on its Unix socket after checking who serves it, or over TCP
//! (and TLS) within a deadline; a failure says which address and what to check.

use std::path::Path;

use tokio::net::UnixStream;
use tonic::codegen::StdError;
use tonic::transport::{Channel, Endpoint};

use super::direct::Direct;
use super::reasons::{connect_reason, no_answer, tls_error, tls_hint};
use super::{CONNECT_TIMEOUT, REMOTE_CONNECT_TIMEOUT, RemoteAddress, peer};
use crate::error::Error;

/// Connects to the daemon on the Unix socket at `path`, failing with
/// [`Error::Unreachable`] (naming the socket and the systemd unit) when nobody answers, and
/// with [`Error::UntrustedDaemon`] when the server is not one of `trusted`.
pub(super) async fn connect_unix(
    path: &Path,
    trusted: &peer::TrustedPeers,
) -> Result<Direct, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        socket: path.to_path_buf(),
        reason,
    };
    let connecting = async {
        let stream = UnixStream::connect(path).await?;
        // Before the HTTP/2 preface: an untrusted server gets not one byte.
        trusted.check(&stream)?;
        Direct::handshake(stream).await.map_err(StdError::from)
    };
    // Covers connect(2) and a daemon that accepts but never completes the HTTP/2 handshake.
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(direct)) => Ok(direct),
        Ok(Err(err)) => match peer::untrusted(&*err) {
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
            None => Err(unreachable(connect_reason(&*err, CONNECT_TIMEOUT))),
        },
        Err(_elapsed) => Err(unreachable(no_answer(CONNECT_TIMEOUT))),
    }
}

/// Connects to the remote daemon at `address`, failing with [`Error::UnreachableRemote`]
/// (with the TLS error, when the handshake failed) when that does not work.
pub(super) async fn connect_remote(
    address: &RemoteAddress,
    endpoint: &Endpoint,
) -> Result<Channel, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Target, connect, unary};
    use crate::testutil::pki::Pki;
    use crate::testutil::{self, FakeDaemon, run_argv, serve, serve_tcp};
    use std::time::Duration;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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
