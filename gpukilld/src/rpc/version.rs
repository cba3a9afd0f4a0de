//! `Version`: the daemon's version and API, and who this node is.

use gpukill_proto::v1 as pb;

use crate::node::NodeIdentity;
use crate::ring::Ring;

/// Answers `Version`.
pub fn version(ring: &Ring, node: &NodeIdentity) -> pb::VersionResponse {
    pb::VersionResponse {
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        api: gpukill_proto::API.to_string(),
        host: ring.latest().host.to_string(),
        node_id: node.id.clone(),
        node_name: node.name.clone(),
        cluster_role: node.role.name().to_string(),
    }
}
