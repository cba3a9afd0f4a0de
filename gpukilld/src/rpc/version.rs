//! `Version`: the daemon's version and API.

use gpukill_proto::v1 as pb;

use crate::ring::Ring;

/// Answers `Version`.
pub fn version(ring: &Ring) -> pb::VersionResponse {
    pb::VersionResponse {
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        api: gpukill_proto::API.to_string(),
        host: ring.latest().host.to_string(),
    }
}
