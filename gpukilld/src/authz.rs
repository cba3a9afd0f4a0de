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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_credentials_is_refused() {
        let request = tonic::Request::new(());
        assert_eq!(caller(&request), Err(AuthzError::Unattributed));
    }
}
