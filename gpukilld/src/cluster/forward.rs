//! Forwarding: a GpuKill request carrying `gpukill-node: NAME` is sent by the coordinator to
//! that node as it is (any rpc, streams included), with the caller the coordinator verified
//! (`gpukill-caller-user` and `gpukill-caller-host` in fields of their own, so a principal
//! named `4343@lab.example` stays that name; its uid and role) and the coordinator's own
//! credentials; whatever the caller sent as credentials or as a caller is removed first. The
//! node then decides, with the same rules as for any remote caller (a forwarded uid 0 is not
//! root there), and audits both names.

use std::sync::Arc;

use tonic::body::Body;
use tonic::codegen::http;
use tower::ServiceExt;

use super::registry::Registry;
use crate::authz::{Principal, Remote, Role};
use crate::node::NodeIdentity;
use crate::rpc::layer::{Intercept, Intercepted};
use crate::rpc::tcp::{
    CALLER_HOST_HEADER, CALLER_ROLE_HEADER, CALLER_UID_HEADER, CALLER_USER_HEADER,
    LEGACY_CALLER_HEADER,
};

/// The metadata that names the node a request is for.
pub const NODE_HEADER: &str = "gpukill-node";

/// The path prefix of the per-node service's rpcs.
const NODE_SERVICE: &str = "/gpukill.v1.GpuKillService/";

/// What forwarding needs.
pub struct Forwarder {
    /// The nodes, when this daemon is a coordinator.
    pub registry: Option<Arc<Registry>>,
    /// This daemon (a request for its own name is served here).
    pub node: Arc<NodeIdentity>,
    /// Who is an admin among local callers.
    pub admin_group: String,
}

/// The caller a coordinator vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vouched {
    user: String,
    host: String,
    uid: u32,
    role: Role,
}

impl Forwarder {
    /// Who the caller of `request` is, in the terms a node checks: a local caller by its
    /// uid (admin by the admin group), a TCP principal by its name and role.
    async fn vouch(
        &self,
        remote: Option<Remote>,
        local: Option<crate::authz::Caller>,
    ) -> Result<Vouched, tonic::Status> {
        if let Some(remote) = remote {
            if remote.forwarded.is_some() {
                return Err(tonic::Status::permission_denied(
                    "a forwarded request cannot be forwarded again",
                ));
            }
            let role = match remote.role {
                Role::Admin => Role::Admin,
                Role::User => Role::User,
                Role::Reader | Role::Coordinator => Role::Reader,
                Role::Node => {
                    return Err(tonic::Status::permission_denied(format!(
                        "principal {:?} has the node role, which may not use other nodes",
                        remote.principal
                    )));
                }
            };
            return Ok(Vouched {
                user: remote.principal.clone(),
                host: self.node.name.clone(),
                uid: crate::authz::NO_UID,
                role,
            });
        }
        let caller = local.ok_or_else(|| {
            tonic::Status::unauthenticated(
                "the request carries no kernel credentials and cannot be attributed",
            )
        })?;
        let admin_group = self.admin_group.clone();
        let principal =
            tokio::task::spawn_blocking(move || Principal::resolve(caller, &admin_group))
                .await
                .map_err(|_| tonic::Status::internal("the user lookup failed"))?;
        Ok(Vouched {
            user: principal.user.clone(),
            host: self.node.name.clone(),
            uid: principal.caller.uid,
            role: if principal.admin {
                Role::Admin
            } else {
                Role::User
            },
        })
    }

    /// Sends `request` to the node it names and returns the node's answer.
    async fn forward(
        self: Arc<Self>,
        name: String,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, tonic::Status> {
        let Some(registry) = &self.registry else {
            return Err(tonic::Status::failed_precondition(format!(
                "this gpukilld is not a cluster coordinator: it cannot forward to node {name:?} (ask the coordinator, or connect to the node itself)"
            )));
        };
        let remote = request.extensions().get::<Remote>().cloned();
        let local = crate::authz::local_caller(request.extensions());
        let vouched = self.vouch(remote, local).await?;
        let target = registry.target(&name).ok_or_else(|| {
            tonic::Status::not_found(format!(
                "no node named {name:?} (gpukillctl cluster nodes lists them)"
            ))
        })?;
        if let Some(reason) = target.down {
            return Err(tonic::Status::unavailable(format!(
                "node {name} is {reason}"
            )));
        }
        let headers = request.headers_mut();
        vouch_in(headers, &vouched)?;
        if let Some(authorization) = registry.credentials().authorization_header() {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization);
        }
        // Connection facts of this hop mean nothing to the next one.
        request.extensions_mut().clear();
        tracing::debug!(node = %name, path = %request.uri().path(), caller = %format!("{}@{}", vouched.user, vouched.host), "forwarding");
        let response = target.channel.oneshot(request).await.map_err(|error| {
            let reason = super::fanout::innermost(&error);
            registry.record(&name, Some(format!("unreachable: {reason}")));
            tonic::Status::unavailable(format!("node {name} did not answer: {reason}"))
        })?;
        registry.record(&name, None);
        Ok(response)
    }
}

/// Replaces whatever `headers` say of a caller (and the caller's credentials) with the caller
/// the coordinator verified, one field each.
fn vouch_in(headers: &mut http::HeaderMap, vouched: &Vouched) -> Result<(), tonic::Status> {
    for header in [
        NODE_HEADER,
        CALLER_USER_HEADER,
        CALLER_HOST_HEADER,
        LEGACY_CALLER_HEADER,
        CALLER_UID_HEADER,
        CALLER_ROLE_HEADER,
        http::header::AUTHORIZATION.as_str(),
    ] {
        headers.remove(header);
    }
    // The node reads these as visible ASCII (what `to_str` accepts); anything else would
    // arrive as an empty, refused field, so it is refused here, naming it.
    let value = |text: String| {
        let sendable = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        sendable
            .then(|| http::HeaderValue::from_str(&text).ok())
            .flatten()
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "the caller {text:?} cannot be forwarded: a forwarded user name is visible ASCII without spaces (use such a principal or user name)"
                ))
            })
    };
    headers.insert(CALLER_USER_HEADER, value(vouched.user.clone())?);
    headers.insert(CALLER_HOST_HEADER, value(vouched.host.clone())?);
    headers.insert(CALLER_UID_HEADER, value(vouched.uid.to_string())?);
    headers.insert(CALLER_ROLE_HEADER, value(vouched.role.name().to_string())?);
    Ok(())
}

/// A GpuKill request for another node is forwarded there; everything else (and a request
/// for this node's own name) goes to the local services.
impl Intercept for Forwarder {
    fn intercept(self: Arc<Self>, mut request: http::Request<Body>) -> Intercepted {
        let node = request
            .uri()
            .path()
            .starts_with(NODE_SERVICE)
            .then(|| request.headers().get(NODE_HEADER))
            .flatten()
            .map(|value| value.to_str().unwrap_or("").to_string());
        match node {
            Some(name) if name != self.node.name => Intercepted::Answer(Box::pin(async move {
                Ok(self
                    .forward(name, request)
                    .await
                    .unwrap_or_else(|status| status.into_http()))
            })),
            local => {
                if local.is_some() {
                    request.headers_mut().remove(NODE_HEADER);
                }
                Intercepted::Pass(request)
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_vouched_caller_replaces_whatever_the_caller_sent_one_field_each() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            (LEGACY_CALLER_HEADER, "root@coord"),
            (CALLER_USER_HEADER, "root"),
            (CALLER_UID_HEADER, "0"),
            (CALLER_ROLE_HEADER, "admin"),
            ("authorization", "Bearer stolen-0123456789abcdef"),
            (NODE_HEADER, "n1"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        let vouched = Vouched {
            user: "4343@lab.example".into(),
            host: "coord".into(),
            uid: crate::authz::NO_UID,
            role: Role::User,
        };
        vouch_in(&mut headers, &vouched).unwrap();
        let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get(CALLER_USER_HEADER).as_deref(), Some("4343@lab.example"));
        assert_eq!(get(CALLER_HOST_HEADER).as_deref(), Some("coord"));
        assert_eq!(get(CALLER_UID_HEADER), Some(u32::MAX.to_string()));
        assert_eq!(get(CALLER_ROLE_HEADER).as_deref(), Some("user"));
        for gone in [LEGACY_CALLER_HEADER, "authorization", NODE_HEADER] {
            assert_eq!(get(gone), None, "{gone}");
        }
        let unsendable = Vouched {
            user: "al\u{e9}x".into(),
            ..vouched
        };
        let status = vouch_in(&mut headers, &unsendable).unwrap_err();
        assert!(status.message().contains("al\u{e9}x"), "{status:?}");
    }
}
