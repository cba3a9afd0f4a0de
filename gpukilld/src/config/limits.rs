//! `[limits]`: the bounds that keep one caller from exhausting the daemon for the others
//! (docs/limits.md lists every bound, including the fixed ones).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};
use crate::units::bytes;

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one uid may hold on the Unix socket.
    pub connections_per_uid: usize,
    /// Connections one client address may hold on the TCP listener (TLS handshakes in
    /// progress included).
    pub connections_per_address: usize,
    /// gRPC connections of the Unix socket and of the TCP listener together (each listener
    /// has this many; never more than the file descriptor limit allows).
    pub max_connections: usize,
    /// Until a new connection's first bytes (the HTTP/2 preface), and a TLS handshake.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// The longest a connection may stay silent; live clients answer the daemon's
    /// keep-alive pings, sent at a third of it.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// The longest a peer may leave an answer unread.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// The largest gRPC request message (bytes, or `"1MiB"`).
    #[serde(with = "bytes")]
    pub max_request_size: u64,
    /// Concurrent HTTP/2 streams (rpcs in flight) on one connection.
    pub streams_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_per_uid: 32,
            connections_per_address: 32,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            max_request_size: 1 << 20,
            streams_per_connection: 32,
        }
    }
}

/// File descriptors kept for everything but client connections (the store, /proc, the
/// vendor libraries, outgoing connections).
pub const RESERVED_DESCRIPTORS: u64 = 128;

impl LimitsConfig {
    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, message: &str| ConfigError::Invalid {
            key,
            value,
            origin: origin("limits"),
            message: message.to_owned(),
        };
        let counts = [
            ("limits.connections_per_uid", self.connections_per_uid),
            (
                "limits.connections_per_address",
                self.connections_per_address,
            ),
            ("limits.max_connections", self.max_connections),
        ];
        for (key, value) in counts {
            if !(1..=1_000_000).contains(&value) {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "is out of range: use 1 to 1000000",
                ));
            }
        }
        if !(1..=10_000).contains(&self.streams_per_connection) {
            return Err(invalid(
                "limits.streams_per_connection",
                self.streams_per_connection.to_string(),
                "is out of range: use 1 to 10000",
            ));
        }
        if !(4096..=(64 << 20)).contains(&self.max_request_size) {
            return Err(invalid(
                "limits.max_request_size",
                self.max_request_size.to_string(),
                "is out of range: use 4KiB to 64MiB",
            ));
        }
        let timeouts = [
            ("limits.handshake_timeout", self.handshake_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.write_timeout", self.write_timeout),
        ];
        for (key, value) in timeouts {
            if value < Duration::from_millis(100) || value > Duration::from_secs(86_400) {
                return Err(invalid(
                    key,
                    humantime::format_duration(value).to_string(),
                    "is out of range: use 100ms to 1day",
                ));
            }
        }
        if self.idle_timeout < Duration::from_secs(3) {
            return Err(invalid(
                "limits.idle_timeout",
                humantime::format_duration(self.idle_timeout).to_string(),
                "is too short: keep-alive pings go out at a third of it, use 3s or more",
            ));
        }
        Ok(())
    }

    /// How often the gRPC servers ping a connection: a third of the idle timeout, so a live
    /// client has answered twice before it passes.
    pub fn keepalive_interval(&self) -> Duration {
        self.idle_timeout / 3
    }

    /// The connections each listener serves with `nofile` descriptors: `max_connections`,
    /// or fewer when the descriptor limit could not hold them.
    pub fn connections_for(&self, nofile: u64) -> usize {
        let room = nofile.saturating_sub(RESERVED_DESCRIPTORS).max(16);
        self.max_connections
            .min(usize::try_from(room).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LimitsConfig, String> {
        let config: LimitsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .validate(&|_| "test".to_string())
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_valid_and_values_parse() {
        parse("").unwrap();
        let config = parse("max_request_size = \"64KiB\"\nidle_timeout = \"30s\"").unwrap();
        assert_eq!(config.max_request_size, 64 << 10);
        assert_eq!(config.keepalive_interval(), Duration::from_secs(10));
    }

    #[test]
    fn bad_values_are_named() {
        let error = parse("connections_per_uid = 0").unwrap_err();
        assert!(error.contains("limits.connections_per_uid = 0"), "{error}");
        let error = parse("idle_timeout = \"1s\"").unwrap_err();
        assert!(error.contains("limits.idle_timeout"), "{error}");
        let error = parse("max_request_size = \"1GiB\"").unwrap_err();
        assert!(error.contains("limits.max_request_size"), "{error}");
        let error = parse("connections = 3").unwrap_err();
        assert!(error.contains("unknown field"), "{error}");
    }

    #[test]
    fn the_descriptor_limit_caps_the_connections() {
        let config = LimitsConfig::default();
        assert_eq!(config.connections_for(1 << 20), 1024);
        assert_eq!(config.connections_for(1024), 1024 - 128);
        assert_eq!(config.connections_for(10), 16);
    }
}
