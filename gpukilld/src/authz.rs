//! Who is asking. Identity comes from the kernel (the peer credentials of the Unix socket
//! connection), never from a request field. What each caller may do is decided here too, as
//! the actions that need it are built.

use std::fmt;

use tonic::transport::server::UdsConnectInfo;

/// How a caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The local Unix socket; identity from SO_PEERCRED.
    Local,
    /// The daemon's own guard, enforcing the policy file.
    Guard,
}

/// An attributed caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's effective uid, from the kernel.
    pub uid: u32,
    /// The caller's effective gid, from the kernel.
    pub gid: u32,
    /// The caller's pid at connect time, when the kernel reports one.
    pub pid: Option<i32>,
    /// How it connected.
    pub transport: Transport,
}

impl Transport {
    /// Name in the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Local => "unix",
            Transport::Guard => "guard",
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        write!(f, " via {:?}", self.transport)
    }
}

/// Why a request could not be attributed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// The connection carries no kernel credentials (not a Unix socket connection).
    #[error("the request carries no kernel credentials and cannot be attributed")]
    Unattributed,
}

/// Attributes a request from the connection it arrived on.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, AuthzError> {
    let credentials = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .ok_or(AuthzError::Unattributed)?;
    Ok(Caller {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
        transport: Transport::Local,
    })
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
    /// Looks the caller up in the user database (NSS: may block; call it off the runtime).
    pub fn resolve(caller: Caller, admin_group: &str) -> Principal {
        use nix::unistd::{Group, Uid, User};
        let user = User::from_uid(Uid::from_raw(caller.uid)).ok().flatten();
        let name = user
            .as_ref()
            .map(|user| user.name.clone())
            .unwrap_or_else(|| caller.uid.to_string());
        let admin = caller.uid == 0
            || Group::from_name(admin_group)
                .ok()
                .flatten()
                .is_some_and(|group| {
                    is_member(
                        &group,
                        caller.gid,
                        user.as_ref().map(|u| (u.name.as_str(), u.gid.as_raw())),
                    )
                });
        Principal {
            caller,
            user: name,
            admin,
        }
    }

    /// Whether this caller may signal a process owned by `target_uid`: their own, or any
    /// if they are an admin. The reason names both sides when not.
    pub fn may_signal(&self, target_uid: u32, target_user: &str) -> Result<(), String> {
        if self.admin || self.caller.uid == target_uid {
            Ok(())
        } else {
            Err(format!(
                "owned by {target_user} (uid {target_uid}); you are {} (uid {}) and not in the admin group",
                self.user, self.caller.uid
            ))
        }
    }
}

/// Whether a caller with connection gid `gid` and user `(name, primary gid)` belongs to
/// `group`.
fn is_member(group: &nix::unistd::Group, gid: u32, user: Option<(&str, u32)>) -> bool {
    let group_gid = group.gid.as_raw();
    gid == group_gid
        || user.is_some_and(|(name, primary)| {
            primary == group_gid || group.mem.iter().any(|member| member == name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: None,
            transport: Transport::Local,
        }
    }

    fn group(gid: u32, members: &[&str]) -> nix::unistd::Group {
        nix::unistd::Group {
            name: "gpukill".into(),
            passwd: Default::default(),
            gid: nix::unistd::Gid::from_raw(gid),
            mem: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn group_membership_by_list_primary_gid_or_connection_gid() {
        let admins = group(4242, &["alice"]);
        assert!(is_member(&admins, 100, Some(("alice", 100))));
        assert!(is_member(&admins, 100, Some(("bob", 4242))));
        assert!(is_member(&admins, 4242, None));
        assert!(!is_member(&admins, 100, Some(("bob", 100))));
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
