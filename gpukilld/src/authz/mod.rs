//! Who is asking, and what they may do. Identity comes from the kernel (the peer
//! credentials of the Unix socket connection) or from cryptography (a TCP caller's client
//! certificate or bearer token, checked by `rpc::tcp` against [`certs`] and [`tokens`]),
//! never from a request field. A coordinator may name the caller it verified, and a node
//! believes that only from a principal with the coordinator role.

pub mod certs;
pub mod redact;
pub mod tokens;

use std::fmt;
use std::net::SocketAddr;

use tonic::transport::server::UdsConnectInfo;

pub use crate::config::Role;

/// The uid recorded for a remote principal, which has none on this node.
pub const NO_UID: u32 = u32::MAX;

/// How a caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The local Unix socket; identity from SO_PEERCRED.
    Local,
    /// Authenticated TCP; identity from a certificate or a token.
    Tcp,
    /// The daemon's own guard, enforcing the policy file.
    Guard,
}

/// An attributed caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's effective uid, from the kernel; a forwarded caller's uid on its own host;
    /// [`NO_UID`] for a remote principal.
    pub uid: u32,
    /// The caller's effective gid, from the kernel ([`NO_UID`] for remote callers).
    pub gid: u32,
    /// The caller's pid at connect time, when the kernel reports one.
    pub pid: Option<i32>,
    /// How it connected.
    pub transport: Transport,
    /// A TCP caller's authenticated principal.
    pub remote: Option<Remote>,
}

/// A principal authenticated over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The principal's name (certificate common name, or the token's name).
    pub principal: String,
    /// Its role (`[tcp.principals]`).
    pub role: Role,
    /// The caller a coordinator forwarded the request for (coordinator role only).
    pub forwarded: Option<Forwarded>,
    /// Where the connection came from.
    pub address: Option<SocketAddr>,
}

/// The original caller of a forwarded request, as the coordinator verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The user name on the caller's host.
    pub user: String,
    /// The caller's host (the coordinator's node name for its local callers).
    pub host: String,
    /// The caller's uid on that host.
    pub uid: u32,
    /// What the coordinator found the caller may do: admin, user or reader.
    pub role: Role,
}

impl Remote {
    /// The role the request runs with: the forwarded caller's, else the principal's.
    pub fn effective_role(&self) -> Role {
        self.forwarded.as_ref().map_or(self.role, |f| f.role)
    }

    /// The user name processes must belong to for a `user` role: the forwarded caller's,
    /// else the principal's.
    pub fn user_name(&self) -> &str {
        self.forwarded
            .as_ref()
            .map_or(self.principal.as_str(), |f| f.user.as_str())
    }
}

impl Transport {
    /// Name in the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Local => "unix",
            Transport::Tcp => "tcp",
            Transport::Guard => "guard",
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(remote) = &self.remote {
            write!(f, "principal {} ({})", remote.principal, remote.role.name())?;
            if let Some(forwarded) = &remote.forwarded {
                write!(
                    f,
                    " for {}@{} ({})",
                    forwarded.user,
                    forwarded.host,
                    forwarded.role.name()
                )?;
            }
            if let Some(address) = remote.address {
                write!(f, " from {address}")?;
            }
            return Ok(());
        }
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        write!(f, " via {:?}", self.transport)
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading state: snapshots, history, the audit trail, the guard's status.
    Read,
    /// Changing something: kill, reset, guard updates, imports (each then checks the
    /// caller against its targets).
    Act,
    /// Registering as a node with a coordinator, and its heartbeats.
    Register,
}

/// Why a request could not be attributed or is not allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// The connection carries no kernel credentials (not a Unix socket connection).
    #[error("the request carries no kernel credentials and cannot be attributed")]
    Unattributed,
    /// The caller's role does not allow the request.
    #[error("{who} may not {what}: {why}")]
    Forbidden {
        /// The caller.
        who: String,
        /// What was asked.
        what: String,
        /// What the role allows.
        why: String,
    },
}

/// Attributes a request from the connection it arrived on: the Unix socket's peer
/// credentials, or the principal the TCP layer authenticated.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, AuthzError> {
    if let Some(caller) = local_caller(request.extensions()) {
        return Ok(caller);
    }
    let remote = request
        .extensions()
        .get::<Remote>()
        .ok_or(AuthzError::Unattributed)?;
    Ok(Caller::remote(remote.clone()))
}

/// The caller of a Unix socket connection, from the peer credentials in `extensions`.
pub fn local_caller(extensions: &tonic::Extensions) -> Option<Caller> {
    let credentials = extensions.get::<UdsConnectInfo>()?.peer_cred?;
    Some(Caller {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
        transport: Transport::Local,
        remote: None,
    })
}

impl Caller {
    /// Whether this is root on this node: a Unix-socket caller whose kernel credentials say
    /// uid 0. Only such a caller may act on root's processes when `protected_users` is left
    /// at its default; a remote principal, or a caller a coordinator forwarded as uid 0 on
    /// its own host, never is (a uid is only meaningful on the host that issued it).
    pub fn is_local_root(&self) -> bool {
        self.transport == Transport::Local && self.remote.is_none() && self.uid == 0
    }

    /// A caller authenticated over TCP.
    pub fn remote(remote: Remote) -> Caller {
        Caller {
            uid: remote.forwarded.as_ref().map_or(NO_UID, |f| f.uid),
            gid: NO_UID,
            pid: None,
            transport: Transport::Tcp,
            remote: Some(remote),
        }
    }

    /// Whether this caller may make a request that needs `access` (named `what` in the
    /// refusal). Local callers may ask anything (each action then checks its targets);
    /// remote ones as their role allows.
    pub fn check(&self, access: Access, what: &str) -> Result<(), AuthzError> {
        let Some(remote) = &self.remote else {
            return match access {
                Access::Register => Err(AuthzError::Forbidden {
                    who: self.to_string(),
                    what: what.to_string(),
                    why: "only a principal with the node role registers, over TCP".into(),
                }),
                Access::Read | Access::Act => Ok(()),
            };
        };
        let role = remote.effective_role();
        let allowed = match access {
            Access::Read => role != Role::Node,
            Access::Act => matches!(role, Role::Admin | Role::User),
            Access::Register => role == Role::Node,
        };
        if allowed {
            return Ok(());
        }
        let why = match role {
            Role::Reader => "the reader role may only read".to_string(),
            Role::Coordinator => {
                "the coordinator role may only read, or act for a caller it forwards".to_string()
            }
            Role::Node => "the node role may only register and send heartbeats".to_string(),
            Role::Admin | Role::User => "node registration needs the node role".to_string(),
        };
        Err(AuthzError::Forbidden {
            who: self.to_string(),
            what: what.to_string(),
            why,
        })
    }
}

/// A caller with what the user database says of them: a name, and whether they are an
/// admin (root, or a member of the admin group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who connected.
    pub caller: Caller,
    /// The caller's user name, or the uid in decimal.
    pub user: String,
    /// Whether the caller may act on other users' processes.
    pub admin: bool,
}

impl Principal {
    /// The admin gate: `Ok` for an admin; for anyone else why not, naming what was asked
    /// (`what`, e.g. "resetting a GPU"), who asked, and who may (root, or members of
    /// `admin_group`).
    pub fn require_admin(&self, what: &str, admin_group: &str) -> Result<(), String> {
        if self.admin {
            return Ok(());
        }
        Err(format!(
            "{what} is for admins (root or group {admin_group}); you are {} (uid {})",
            self.user, self.caller.uid
        ))
    }

    /// Looks a local caller up in the user database (NSS: may block; call it off the
    /// runtime). A remote caller is named by its principal (`user@host` for a forwarded
    /// one) and is an admin by role.
    pub fn resolve(caller: Caller, admin_group: &str) -> Principal {
        use nix::unistd::{Group, Uid, User};
        if let Some(remote) = &caller.remote {
            let user = match &remote.forwarded {
                Some(forwarded) => format!("{}@{}", forwarded.user, forwarded.host),
                None => remote.principal.clone(),
            };
            let admin = remote.effective_role() == Role::Admin;
            return Principal {
                caller,
                user,
                admin,
            };
        }
        let user = User::from_uid(Uid::from_raw(caller.uid)).ok().flatten();
        let name = user
            .as_ref()
            .map(|user| user.name.clone())
            .unwrap_or_else(|| caller.uid.to_string());
        // Membership is what the group database says now, not the gid the connection
        // carries: a `newgrp` shell or a setgid program keeps that gid after the user is
        // removed from the group, and must not keep admin with it.
        let admin = caller.uid == 0
            || Group::from_name(admin_group)
                .ok()
                .flatten()
                .is_some_and(|group| {
                    user.as_ref().is_some_and(|user| {
                        groups_of(&user.name, user.gid).contains(&group.gid.as_raw())
                    })
                });
        Principal {
            caller,
            user: name,
            admin,
        }
    }

    /// The coordinator principal that forwarded the request, when one did.
    pub fn via(&self) -> Option<String> {
        self.caller
            .remote
            .as_ref()
            .filter(|remote| remote.forwarded.is_some())
            .map(|remote| remote.principal.clone())
    }

    /// Whether this caller may signal a process owned by `target_uid`: their own, or any
    /// if they are an admin. A remote caller's own processes are those of its user name (a
    /// uid means nothing across hosts), and only with the user role. The name must be the
    /// owner's name in this node's user database, exactly: an owner without one is shown as
    /// its uid in decimal, and a principal named `4343` is not uid 4343. The reason names
    /// both sides when not.
    pub fn may_signal(&self, target_uid: u32, target_user: &str) -> Result<(), String> {
        if self.admin {
            return Ok(());
        }
        if let Some(remote) = &self.caller.remote {
            let named_owner = target_user != target_uid.to_string();
            return if remote.effective_role() == Role::User
                && named_owner
                && remote.user_name() == target_user
            {
                Ok(())
            } else {
                Err(format!(
                    "owned by {target_user} (uid {target_uid}); you are {} ({}) and may act only on processes of user {}",
                    self.user,
                    remote.effective_role().name(),
                    remote.user_name()
                ))
            };
        }
        if self.caller.uid == target_uid {
            Ok(())
        } else {
            Err(format!(
                "owned by {target_user} (uid {target_uid}); you are {} (uid {}) and not in the admin group",
                self.user, self.caller.uid
            ))
        }
    }
}

/// The groups the group database gives user `name` (primary group `primary` included), at
/// the time of the call (NSS: may block). Empty when the lookup fails, which grants nothing.
fn groups_of(name: &str, primary: nix::unistd::Gid) -> Vec<u32> {
    let Ok(name) = std::ffi::CString::new(name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, primary)
        .map(|groups| groups.into_iter().map(|gid| gid.as_raw()).collect())
        .unwrap_or_default()
}

/// Whether the node principal `principal` may register, rename or send heartbeats for the
/// node `node`, whose registration `owner` made first. A registration belongs to the
/// principal that made it: another node's credentials cannot take it over. The error
/// names the node, its owner and the refused principal.
pub fn may_change_registration(node: &str, owner: &str, principal: &str) -> Result<(), AuthzError> {
    if owner == principal {
        return Ok(());
    }
    Err(AuthzError::Forbidden {
        who: format!("principal {principal:?} (node)"),
        what: format!("change the registration of node {node}"),
        why: format!(
            "it was registered by principal {owner:?}, and a registration belongs to the principal that made it (give this node its own [node] name, or stop the node that holds it and restart the coordinator)"
        ),
    })
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;

    /// A local caller (Unix socket) with `uid` and `gid`.
    pub(crate) fn local(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: None,
            transport: Transport::Local,
            remote: None,
        }
    }

    fn remote(principal: &str, role: Role, forwarded: Option<(&str, Role)>) -> Caller {
        Caller::remote(Remote {
            principal: principal.into(),
            role,
            forwarded: forwarded.map(|(user, role)| Forwarded {
                user: user.into(),
                host: "login1".into(),
                uid: 1000,
                role,
            }),
            address: None,
        })
    }

    #[test]
    fn remote_roles_allow_what_they_say() {
        let reader = remote("grafana", Role::Reader, None);
        assert!(reader.check(Access::Read, "List").is_ok());
        let refused = reader.check(Access::Act, "Kill").unwrap_err().to_string();
        assert!(
            refused.contains("grafana") && refused.contains("reader"),
            "{refused}"
        );
        let coordinator = remote("coord", Role::Coordinator, None);
        assert!(coordinator.check(Access::Read, "List").is_ok());
        assert!(coordinator.check(Access::Act, "Kill").is_err());
        let forwarded = remote("coord", Role::Coordinator, Some(("alice", Role::User)));
        assert!(forwarded.check(Access::Act, "Kill").is_ok());
        assert_eq!(forwarded.uid, 1000);
        let node = remote("n1", Role::Node, None);
        assert!(node.check(Access::Read, "List").is_err());
        assert!(node.check(Access::Register, "Register").is_ok());
        assert!(
            local(1000, 1000)
                .check(Access::Register, "Register")
                .is_err()
        );
        assert!(local(1000, 1000).check(Access::Act, "Kill").is_ok());
    }

    #[test]
    fn a_forwarded_user_may_signal_processes_of_the_same_user_name_only() {
        let alice = Principal::resolve(
            remote("coord", Role::Coordinator, Some(("alice", Role::User))),
            "gpukill",
        );
        assert_eq!(alice.user, "alice@login1");
        assert!(!alice.admin);
        assert_eq!(alice.via().as_deref(), Some("coord"));
        // Uid 1000 on login1 is not uid 1000 here: names decide.
        assert!(alice.may_signal(4242, "alice").is_ok());
        let reason = alice.may_signal(1000, "bob").unwrap_err();
        assert!(
            reason.contains("bob") && reason.contains("alice"),
            "{reason}"
        );
        let admin = Principal::resolve(
            remote("coord", Role::Coordinator, Some(("root", Role::Admin))),
            "gpukill",
        );
        assert!(admin.admin && admin.may_signal(1000, "bob").is_ok());
        let direct = Principal::resolve(remote("ops", Role::Admin, None), "gpukill");
        assert!(direct.admin);
        assert_eq!(direct.via(), None);
    }

    #[test]
    fn admin_group_membership_comes_from_the_group_database_not_the_connection_gid() {
        // getgrouplist always includes the primary group it is given.
        assert!(groups_of("root", nix::unistd::Gid::from_raw(0)).contains(&0));
        assert!(groups_of("no-such-user-here", nix::unistd::Gid::from_raw(4242)).contains(&4242));
        assert!(groups_of("nul\0name", nix::unistd::Gid::from_raw(0)).is_empty());
        // A caller whose connection gid is the admin group's (a `newgrp` shell, a setgid
        // program) but whom the database does not list is not an admin: nobody with gid 0,
        // admin group "root".
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert!(
            !groups_of("nobody", nobody.gid).contains(&0),
            "nobody is in group root here"
        );
        let newgrp = Principal::resolve(local(nobody.uid.as_raw(), 0), "root");
        assert!(!newgrp.admin, "{newgrp:?}");
        let member = Principal::resolve(local(nobody.uid.as_raw(), nobody.gid.as_raw()), &{
            nix::unistd::Group::from_gid(nobody.gid)
                .unwrap()
                .unwrap()
                .name
        });
        assert!(
            member.admin,
            "nobody's primary group makes nobody an admin of it"
        );
    }

    #[test]
    fn a_remote_name_matches_a_named_owner_only_never_a_bare_uid() {
        let numeric = Principal::resolve(remote("4343", Role::User, None), "gpukill");
        let reason = numeric.may_signal(4343, "4343").unwrap_err();
        assert!(reason.contains("4343"), "{reason}");
        let forwarded = Principal::resolve(
            remote(
                "coord",
                Role::Coordinator,
                Some(("4343@lab.example", Role::User)),
            ),
            "gpukill",
        );
        assert!(forwarded.may_signal(4343, "4343").is_err());
        let named = Principal::resolve(remote("alice", Role::User, None), "gpukill");
        assert!(named.may_signal(1000, "alice").is_ok());
    }

    #[test]
    fn only_a_local_uid_0_is_local_root() {
        assert!(local(0, 0).is_local_root());
        assert!(!local(1000, 0).is_local_root());
        let mut forwarded = remote("coord", Role::Coordinator, Some(("root", Role::Admin)));
        if let Some(remote) = forwarded.remote.as_mut().and_then(|r| r.forwarded.as_mut()) {
            remote.uid = 0;
        }
        let forwarded = Caller::remote(forwarded.remote.unwrap());
        assert_eq!(forwarded.uid, 0);
        assert!(!forwarded.is_local_root());
        let guard = Caller {
            transport: Transport::Guard,
            ..local(0, 0)
        };
        assert!(!guard.is_local_root());
    }

    #[test]
    fn a_registration_belongs_to_its_first_principal() {
        assert!(may_change_registration("n1", "n1", "n1").is_ok());
        let refused = may_change_registration("n1", "n1", "n2")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("n1")
                && refused.contains("\"n2\"")
                && refused.contains("registered by"),
            "{refused}"
        );
    }

    #[test]
    fn users_may_signal_their_own_and_admins_anyone() {
        let bob = Principal {
            caller: local(1001, 1001),
            user: "bob".into(),
            admin: false,
        };
        assert!(bob.may_signal(1001, "bob").is_ok());
        let reason = bob.may_signal(1000, "alice").expect_err("not bob's");
        assert!(
            reason.contains("alice") && reason.contains("bob"),
            "{reason}"
        );
        let root = Principal::resolve(local(0, 0), "no-such-group-here");
        assert!(root.admin);
        assert_eq!(root.user, "root");
        assert!(root.may_signal(1000, "alice").is_ok());
    }

    #[test]
    fn a_request_without_credentials_is_refused() {
        let request = tonic::Request::new(());
        assert_eq!(caller(&request), Err(AuthzError::Unattributed));
    }
}
