//! The gpukill contract: the generated gRPC types of `gpukill.v1`, and the constants that
//! the daemon and its clients must agree on (socket locations, exit codes, vendor names).

use std::path::{Path, PathBuf};

/// Generated messages, client and server of package `gpukill.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("gpukill.v1");
}

/// The daemon's servers of `gpukill.v1`: the same services as in [`v1`], with Watch
/// streaming [`shared::SharedWatchResponse`] (encoded once per snapshot, shared by watchers).
#[allow(missing_docs, clippy::all)]
pub mod v1_shared_server {
    include!(concat!(env!("OUT_DIR"), "/shared_server/gpukill.v1.rs"));
}

pub mod shared;

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file of the contract
/// and of what they import, comments included: what the daemon's server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gpukill_descriptor");

/// The API package name the daemon serves, reported by `Version`.
pub const API: &str = "gpukill.v1";

/// The systemd unit that runs the daemon, named in "daemon not reachable" messages.
pub const SYSTEMD_UNIT: &str = "gpukilld.service";

/// Environment variable that overrides the socket path for both binaries.
pub const SOCKET_ENV: &str = "GPUKILL_SOCKET";

/// The system-wide socket, used by a daemon running as root.
pub const SYSTEM_SOCKET: &str = "/run/gpukill/gpukilld.sock";

/// Where a daemon run by `euid` puts its socket when nothing overrides it:
/// [`SYSTEM_SOCKET`] for root, `$XDG_RUNTIME_DIR/gpukill/gpukilld.sock` otherwise
/// (falling back to the system path when `XDG_RUNTIME_DIR` is unset).
pub fn daemon_socket_path(euid: u32, xdg_runtime_dir: Option<&Path>) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if euid != 0 => dir.join("gpukill").join("gpukilld.sock"),
        _ => PathBuf::from(SYSTEM_SOCKET),
    }
}

/// Where a client run by `euid` looks for the daemon when nothing overrides it: a per-user
/// daemon's socket if one exists, otherwise the system daemon's.
pub fn client_socket_path(euid: u32, xdg_runtime_dir: Option<&Path>) -> PathBuf {
    let per_user = daemon_socket_path(euid, xdg_runtime_dir);
    if euid != 0 && per_user.exists() {
        per_user
    } else {
        PathBuf::from(SYSTEM_SOCKET)
    }
}

/// Exit codes of gpukillctl (and of gpukilld at startup), as documented in the README.
pub mod exit_code {
    /// Success.
    pub const OK: i32 = 0;
    /// Any other error.
    pub const ERROR: i32 = 1;
    /// The GPU vendor library failed (missing, failed to initialize, GPU lost).
    pub const VENDOR: i32 = 2;
    /// Invalid arguments or configuration.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The caller is not allowed to do this.
    pub const PERMISSION_DENIED: i32 = 4;
    /// The operation is not supported on this device or host.
    pub const UNSUPPORTED: i32 = 5;
    /// The daemon could not be reached on its socket.
    pub const DAEMON_UNREACHABLE: i32 = 6;
    /// The GPUs asked for are not free (reserve, `run --nonblock`, or `run --wait` gave up).
    pub const BUSY: i32 = 7;
}

impl v1::Vendor {
    /// Lower-case name used on the command line, in JSON and in configuration.
    pub fn cli_name(self) -> &'static str {
        match self {
            v1::Vendor::Unspecified => "all",
            v1::Vendor::Nvidia => "nvidia",
            v1::Vendor::Amd => "amd",
            v1::Vendor::Intel => "intel",
            v1::Vendor::Apple => "apple",
        }
    }

    /// Parses a [`cli_name`](Self::cli_name); `all` is [`v1::Vendor::Unspecified`].
    pub fn from_cli_name(name: &str) -> Option<Self> {
        [
            v1::Vendor::Unspecified,
            v1::Vendor::Nvidia,
            v1::Vendor::Amd,
            v1::Vendor::Intel,
            v1::Vendor::Apple,
        ]
        .into_iter()
        .find(|vendor| vendor.cli_name() == name)
    }
}

impl v1::HealthState {
    /// Whether a GPU in this state is not fit for work: critical or lost. Such a GPU is not
    /// handed out where unhealthy GPUs are drained, and never counted as free.
    pub fn is_unfit(self) -> bool {
        matches!(self, v1::HealthState::Critical | v1::HealthState::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_the_system_socket_even_with_a_runtime_dir() {
        let path = daemon_socket_path(0, Some(Path::new("/run/user/0")));
        assert_eq!(path, PathBuf::from(SYSTEM_SOCKET));
    }

    #[test]
    fn users_use_their_runtime_dir() {
        let path = daemon_socket_path(1000, Some(Path::new("/run/user/1000")));
        assert_eq!(path, PathBuf::from("/run/user/1000/gpukill/gpukilld.sock"));
    }

    #[test]
    fn a_user_client_falls_back_to_the_system_daemon() {
        let dir = Path::new("/nonexistent-runtime-dir");
        assert_eq!(
            client_socket_path(1000, Some(dir)),
            PathBuf::from(SYSTEM_SOCKET)
        );
    }

    #[test]
    fn vendor_names_round_trip() {
        for name in ["all", "nvidia", "amd", "intel", "apple"] {
            let vendor = v1::Vendor::from_cli_name(name).expect("known vendor");
            assert_eq!(vendor.cli_name(), name);
        }
        assert_eq!(v1::Vendor::from_cli_name("matrox"), None);
    }
}
