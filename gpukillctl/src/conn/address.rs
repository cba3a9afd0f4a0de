//! Where gpukilld is: the `--socket`/`--addr` value (a Unix socket path, or a checked
//! `https://HOST:PORT`) and the `--node` name, parsed and checked before anything connects.

use std::path::PathBuf;

/// Where the daemon listens, as given by `--socket`/`--addr` or `GPUKILL_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path (given as a path or as `unix:///path`).
    Unix(PathBuf),
    /// A gpukilld reached over TCP: `https://HOST:PORT`, or `http://HOST:PORT` on loopback.
    Remote(RemoteAddress),
}

/// A TCP address of gpukilld, checked: a host, a port, and whether TLS is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddress {
    /// `https://` (TLS) rather than `http://` (plain, loopback only).
    pub tls: bool,
    /// The host name or IP address, without the brackets of an IPv6 address.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl RemoteAddress {
    /// The address as a URL, `https://host:port` (IPv6 hosts in brackets).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for RemoteAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// Parses a `--socket`/`--addr` value: `unix:///path`, `https://HOST:PORT`,
/// `http://HOST:PORT` (loopback hosts only), or a plain path.
pub fn parse_address(value: &str) -> Result<Address, String> {
    if value.is_empty() {
        return Err("the address is empty".to_owned());
    }
    if let Some(path) = value.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "a unix:// address needs an absolute path (unix:///path), got {value:?}"
            ));
        }
        return Ok(Address::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = value.strip_prefix("https://") {
        return parse_remote(value, rest, true).map(Address::Remote);
    }
    if let Some(rest) = value.strip_prefix("http://") {
        let address = parse_remote(value, rest, false)?;
        if !is_loopback(&address.host) {
            return Err(format!(
                "{value} is not a loopback address: requests carry credentials, so a remote \
                 gpukilld must be reached over https://{}:{} (http:// is accepted for \
                 127.0.0.1, ::1 and localhost only)",
                bracketed(&address.host),
                address.port
            ));
        }
        return Ok(Address::Remote(address));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        return Err(format!(
            "unknown address scheme {scheme:?} in {value:?} (use a path, unix:///path or \
             https://HOST:PORT)"
        ));
    }
    Ok(Address::Unix(PathBuf::from(value)))
}

/// `host`, in brackets when it is an IPv6 address.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Parses the `HOST:PORT` after the scheme of `value`.
fn parse_remote(value: &str, rest: &str, tls: bool) -> Result<RemoteAddress, String> {
    let scheme = if tls { "https" } else { "http" };
    let usage = format!("use {scheme}://HOST:PORT");
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(format!(
            "{value} has a path ({path:?}); gpukilld's address is a host and a port: {usage}"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "{value} has credentials in it; pass them with --token-file (or --cert and --key) \
             and {usage}"
        ));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{value}: an IPv6 address needs its closing ']'"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{value}: [{host}] is not an IPv6 address"));
        }
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("{value}: expected ':PORT' after [{host}]; {usage}")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "{value}: put an IPv6 address in brackets, e.g. {scheme}://[::1]:PORT"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{value} has no host; {usage}"));
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!(
            "{value}: {host:?} is not a host name or IP address; {usage}"
        ));
    }
    let Some(port) = port else {
        return Err(format!(
            "{value} has no port; {usage} (the port of gpukilld's [tcp] listen)"
        ));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{value}: {port:?} is not a TCP port (1 to 65535)"))?;
    Ok(RemoteAddress {
        tls,
        host: host.to_owned(),
        port,
    })
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Parses a `--node` value: a cluster node's name, sent as gRPC metadata, so printable
/// ASCII without whitespace or `/`.
pub fn parse_node_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("the node name is empty (gpukillctl cluster nodes lists the names)".to_owned());
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic() || *c == '/') {
        return Err(format!(
            "{value:?} is not a node name: it contains {bad:?} (names are printable ASCII \
             without spaces or '/'; gpukillctl cluster nodes lists them)"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("/run/gpukill/gpukilld.sock"),
            Ok(Address::Unix(PathBuf::from("/run/gpukill/gpukilld.sock")))
        );
        assert_eq!(
            parse_address("unix:///tmp/g.sock"),
            Ok(Address::Unix(PathBuf::from("/tmp/g.sock")))
        );
        assert_eq!(
            parse_address("relative.sock"),
            Ok(Address::Unix(PathBuf::from("relative.sock")))
        );
        assert!(parse_address("").is_err());
        assert!(parse_address("unix://relative").is_err());
        assert!(parse_address("ftp://x").is_err());
    }

    fn remote(value: &str) -> RemoteAddress {
        match parse_address(value) {
            Ok(Address::Remote(address)) => address,
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn https_addresses_parse_into_host_and_port() {
        let node = remote("https://node1:50051");
        assert_eq!(
            node,
            RemoteAddress {
                tls: true,
                host: "node1".to_owned(),
                port: 50051
            }
        );
        assert_eq!(node.url(), "https://node1:50051");
        assert_eq!(remote("https://node1.example.org:7443/").port, 7443);
        assert_eq!(remote("https://10.0.0.5:7443").host, "10.0.0.5");
        let v6 = remote("https://[fd00::5]:7443");
        assert_eq!(v6.host, "fd00::5");
        assert_eq!(v6.url(), "https://[fd00::5]:7443");
    }

    #[test]
    fn http_is_for_loopback_only() {
        for loopback in [
            "http://127.0.0.1:7443",
            "http://127.1.2.3:7443",
            "http://localhost:7443",
            "http://LOCALHOST:7443",
            "http://[::1]:7443",
            "http://[::ffff:127.0.0.1]:7443",
        ] {
            assert!(!remote(loopback).tls, "{loopback}");
        }
        for remote in [
            "http://node1:7443",
            "http://10.0.0.5:7443",
            "http://[fd00::5]:7443",
            "http://0.0.0.0:7443",
        ] {
            let err = parse_address(remote).expect_err(remote);
            assert!(err.contains("is not a loopback address"), "{err}");
            assert!(err.contains("requests carry credentials"), "{err}");
            assert!(err.contains("https://"), "{err}");
        }
    }

    #[test]
    fn bad_remote_addresses_say_what_is_wrong() {
        let cases = [
            ("https://node1", "has no port"),
            ("https://node1:", "is not a TCP port"),
            ("https://node1:0", "is not a TCP port"),
            ("https://node1:70000", "is not a TCP port"),
            ("https://node1:http", "is not a TCP port"),
            ("https://node1:7443/gpukill", "has a path"),
            ("https://node1:7443?x=1", "has a path"),
            ("https://alice:secret@node1:7443", "has credentials in it"),
            ("https://:7443", "has no host"),
            ("https://fd00::5:7443", "in brackets"),
            ("https://[fd00::5]", "has no port"),
            ("https://[fd00::5:7443", "closing ']'"),
            ("https://[node1]:7443", "is not an IPv6 address"),
            ("https://no de:7443", "is not a host name"),
            ("http://127.0.0.1", "has no port"),
        ];
        for (value, expected) in cases {
            let err = parse_address(value).expect_err(value);
            assert!(err.contains(expected), "{value}: {err}");
            assert!(
                err.contains(value),
                "{value}: the message names the value: {err}"
            );
        }
    }
}
