//! Whom gpukillctl trusts to be gpukilld on a Unix socket.
//!
//! The socket path may come from `--socket` or `GPUKILL_SOCKET`, and may sit in a directory
//! another user can write to. Whatever listens there would learn what the caller asks (the
//! command of `run`, what to kill) and would write what gpukillctl prints and what `run`'s
//! command is started with. So, before sending a byte, gpukillctl asks the kernel who serves
//! the socket (`SO_PEERCRED`: the credentials of the process that called `listen`) and talks
//! only to:
//!
//! - root: the system daemon (also when systemd holds the socket for it);
//! - the caller's own effective uid: their per-user daemon;
//! - the user named by [`DAEMON_USER_ENV`]: a gpukilld run under a service account.
//!
//! Anyone else is refused with [`Error::UntrustedDaemon`](crate::Error::UntrustedDaemon),
//! exit 6, before the HTTP/2 handshake. TCP targets are authenticated by TLS instead.

use std::ffi::{CStr, CString};

use tokio::net::UnixStream;

use crate::error::Error;

/// The environment variable naming the user (or uid) a gpukilld runs as when that is
/// neither root nor the caller.
pub const DAEMON_USER_ENV: &str = "GPUKILL_DAEMON_USER";

/// The longest user database entry read; real entries are a few hundred bytes.
const PASSWD_BUFFER_LIMIT: usize = 1 << 20;

/// The uids gpukillctl accepts as the server of a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPeers {
    /// The caller's effective uid.
    own: u32,
    /// The daemon user of [`DAEMON_USER_ENV`]: its name as given and its uid.
    daemon_user: Option<(String, u32)>,
    /// Whether root is trusted: always, outside this module's tests.
    root: bool,
}

/// The kernel's credentials of a socket's server that gpukillctl does not trust. Carried
/// inside the connector's I/O error, found again by [`untrusted`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the socket is served by uid {uid}, which gpukillctl does not trust")]
pub struct UntrustedPeer {
    /// The server's uid.
    pub uid: u32,
    /// The server's pid, when the kernel knows it (0 for a peer in another PID namespace).
    pub pid: Option<i32>,
}

impl TrustedPeers {
    /// Root, the caller's effective uid, and the user [`DAEMON_USER_ENV`] names. A value
    /// that names no user is a usage error (exit 3) naming the variable and the value.
    pub fn from_env() -> Result<Self, Error> {
        let daemon_user = match std::env::var_os(DAEMON_USER_ENV) {
            None => None,
            Some(value) if value.is_empty() => None,
            Some(value) => Some(resolve(&value.to_string_lossy())?),
        };
        Ok(TrustedPeers {
            own: effective_uid(),
            daemon_user,
            root: true,
        })
    }

    /// Root and the caller's effective uid only.
    pub fn root_and_self() -> Self {
        TrustedPeers {
            own: effective_uid(),
            daemon_user: None,
            root: true,
        }
    }

    /// Whether a server running as `uid` is trusted.
    pub fn trusts(&self, uid: u32) -> bool {
        (self.root && uid == 0)
            || uid == self.own
            || self
                .daemon_user
                .as_ref()
                .is_some_and(|(_, user)| *user == uid)
    }

    /// The caller's effective uid.
    pub fn own(&self) -> u32 {
        self.own
    }

    /// The daemon user as given in [`DAEMON_USER_ENV`], with its uid.
    pub fn daemon_user(&self) -> Option<(&str, u32)> {
        self.daemon_user
            .as_ref()
            .map(|(name, uid)| (name.as_str(), *uid))
    }

    /// Checks the server of the connected `stream`: an I/O error carrying
    /// [`UntrustedPeer`] when it is not trusted, or when the kernel cannot say who it is.
    pub fn check(&self, stream: &UnixStream) -> std::io::Result<()> {
        let credentials = stream.peer_cred()?;
        if self.trusts(credentials.uid()) {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            UntrustedPeer {
                uid: credentials.uid(),
                pid: credentials.pid().filter(|pid| *pid > 0),
            },
        ))
    }

    /// Trusts exactly `uid`, not even root: lets tests run as root see a refusal.
    #[cfg(test)]
    pub(crate) fn only(uid: u32) -> Self {
        TrustedPeers {
            own: uid,
            daemon_user: None,
            root: false,
        }
    }
}

/// The [`UntrustedPeer`] somewhere in `err`'s chain (hyper and tonic wrap the connector's
/// I/O error, whose payload `source()` skips).
pub fn untrusted<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a UntrustedPeer> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(peer) = cause.downcast_ref::<UntrustedPeer>() {
            return Some(peer);
        }
        if let Some(peer) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<UntrustedPeer>())
        {
            return Some(peer);
        }
        current = cause.source();
    }
    None
}

/// The user `value` names (a name, or a uid in decimal): as given, with its uid.
fn resolve(value: &str) -> Result<(String, u32), Error> {
    if let Ok(uid) = value.parse::<u32>() {
        return Ok((value.to_owned(), uid));
    }
    let uid = CString::new(value)
        .ok()
        .and_then(|name| uid_of(&name))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{DAEMON_USER_ENV}={value:?} names no user in the user database: set it to \
                 the user (or uid) gpukilld runs as, or unset it when gpukilld runs as root"
            ))
        })?;
    Ok((value.to_owned(), uid))
}

/// The caller's effective uid.
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the user `name`, from the user database.
fn uid_of(name: &CStr) -> Option<u32> {
    lookup(|entry, buffer, length, result| {
        // SAFETY: `name` is NUL-terminated; the other pointers come from `lookup`, which
        // passes a live entry, a buffer of `length` bytes and a result slot.
        unsafe { libc::getpwnam_r(name.as_ptr(), entry, buffer, length, result) }
    })
    .map(|entry| entry.1)
}

/// The name of the user `uid`, from the user database.
pub fn user_name(uid: u32) -> Option<String> {
    lookup(|entry, buffer, length, result| {
        // SAFETY: the pointers come from `lookup`, which passes a live entry, a buffer of
        // `length` bytes and a result slot.
        unsafe { libc::getpwuid_r(uid, entry, buffer, length, result) }
    })
    .map(|entry| entry.0)
}

/// Runs a `getpw*_r` call with a buffer that grows (up to [`PASSWD_BUFFER_LIMIT`]) while
/// it is too small; the entry's name and uid when one was found.
fn lookup(
    call: impl Fn(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<(String, u32)> {
    let mut length = 4096;
    loop {
        let mut buffer: Vec<libc::c_char> = vec![0; length];
        // SAFETY: passwd is a C struct of integers and pointers, for which all zeroes is a
        // valid (empty) value; getpw*_r overwrites it.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let code = call(&mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result);
        if code == libc::ERANGE && length < PASSWD_BUFFER_LIMIT {
            length *= 4;
            continue;
        }
        if code != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buffer`,
        // which is alive until the end of this iteration.
        let name = unsafe { CStr::from_ptr(entry.pw_name) };
        return Some((name.to_string_lossy().into_owned(), entry.pw_uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_self_and_the_daemon_user_are_trusted_and_no_one_else() {
        let peers = TrustedPeers {
            own: 1000,
            daemon_user: Some(("gpukill".to_owned(), 998)),
            root: true,
        };
        for uid in [0, 1000, 998] {
            assert!(peers.trusts(uid), "{uid}");
        }
        for uid in [1, 999, 1001, 65534, u32::MAX] {
            assert!(!peers.trusts(uid), "{uid}");
        }
        let plain = TrustedPeers::root_and_self();
        assert!(plain.trusts(0));
        assert!(plain.trusts(effective_uid()));
        assert_eq!(plain.daemon_user(), None);
    }

    #[test]
    fn daemon_users_are_names_or_uids() {
        assert_eq!(
            resolve("root").expect("root exists"),
            ("root".to_owned(), 0)
        );
        assert_eq!(resolve("4242").expect("a uid"), ("4242".to_owned(), 4242));
        let err = resolve("no-such-user-gpukill").expect_err("unknown");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "GPUKILL_DAEMON_USER=\"no-such-user-gpukill\" names no user in the user database: \
             set it to the user (or uid) gpukilld runs as, or unset it when gpukilld runs as \
             root"
        );
        assert!(resolve("nul\0name").is_err());
    }

    #[test]
    fn user_names_come_from_the_user_database() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
    }

    #[test]
    fn the_refusal_is_found_inside_wrapping_errors() {
        let peer = UntrustedPeer {
            uid: 65534,
            pid: Some(7),
        };
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, peer.clone());
        assert_eq!(untrusted(&io), Some(&peer));
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Wrapper(#[source] std::io::Error);
        assert_eq!(untrusted(&Wrapper(io)), Some(&peer));
        let other = std::io::Error::other("connection refused");
        assert_eq!(untrusted(&other), None);
    }
}
