//! Socket activation (`sd_listen_fds(3)`): a listening Unix socket systemd passed in
//! (`LISTEN_FDS`, `LISTEN_PID`), used instead of binding one.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// The first socket passed by the service manager, when there is one for this process.
/// Errors name what is wrong with it (not a listening Unix stream socket).
pub fn inherited_listener() -> io::Result<Option<UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    check_unix_listener(fd)?;
    // SAFETY: the service manager passed this descriptor to this process for it to own
    // (LISTEN_PID is ours); nothing else in the process uses it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Whether `fd` is a listening Unix stream socket.
fn check_unix_listener(fd: RawFd) -> io::Result<()> {
    let option = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and length are valid for getsockopt to fill.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket passed by the service manager (fd {fd}) {what}"),
        )
    };
    if option(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(invalid(
            "is not a Unix socket: use ListenStream=/path in the .socket unit",
        ));
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(invalid("is not a stream socket"));
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err(invalid("is not listening (Accept=no is required)"));
    }
    Ok(())
}
