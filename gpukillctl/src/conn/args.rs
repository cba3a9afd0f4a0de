//! The global options that say which gpukilld to talk to and how to prove who you are to
//! it, with their environment variables.

use std::path::PathBuf;

use clap::Args;

use super::{Address, parse_address, parse_node_name};

/// Environment variable for `--token-file`.
pub const TOKEN_FILE_ENV: &str = "GPUKILL_TOKEN_FILE";
/// Environment variable for `--cert`.
pub const CERT_ENV: &str = "GPUKILL_CERT";
/// Environment variable for `--key`.
pub const KEY_ENV: &str = "GPUKILL_KEY";
/// Environment variable for `--ca`.
pub const CA_ENV: &str = "GPUKILL_CA";
/// Environment variable for `--node`.
pub const NODE_ENV: &str = "GPUKILL_NODE";

/// The heading of the connection options in `gpukillctl --help`.
pub const CONNECTION: &str = "Connection options";

/// The global options that say which gpukilld to talk to, with which credentials, and which
/// node of a cluster the request is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ConnectArgs {
    /// The daemon: a socket path, unix:///path, or https://HOST:PORT
    ///
    /// Default: the per-user daemon's socket ($XDG_RUNTIME_DIR/gpukill/gpukilld.sock) if it
    /// exists, else the system daemon's (/run/gpukill/gpukilld.sock). A remote gpukilld (its
    /// [tcp] listener, or a cluster coordinator) is reached over https://HOST:PORT with --ca
    /// and a credential (--token-file, or --cert and --key); http://HOST:PORT is accepted
    /// for a loopback HOST only (127.0.0.1, ::1, localhost), since requests carry
    /// credentials.
    #[arg(
        long,
        visible_alias = "addr",
        global = true,
        env = gpukill_proto::SOCKET_ENV,
        hide_env_values = true,
        value_name = "ADDRESS",
        display_order = 100,
        help_heading = CONNECTION,
        value_parser = parse_address
    )]
    pub socket: Option<Address>,

    /// File whose first non-empty line is the bearer token for an https:// address
    ///
    /// Sent as `authorization: Bearer TOKEN` with every request; gpukilld maps it to a
    /// principal ([tcp] tokens). Keep the file private (mode 0600).
    #[arg(
        long,
        global = true,
        env = TOKEN_FILE_ENV,
        hide_env_values = true,
        value_name = "FILE",
        display_order = 101,
        help_heading = CONNECTION
    )]
    pub token_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with an https:// address; needs --key
    #[arg(
        long,
        global = true,
        env = CERT_ENV,
        hide_env_values = true,
        value_name = "FILE",
        requires = "key",
        display_order = 102,
        help_heading = CONNECTION
    )]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert
    #[arg(
        long,
        global = true,
        env = KEY_ENV,
        hide_env_values = true,
        value_name = "FILE",
        requires = "cert",
        display_order = 103,
        help_heading = CONNECTION
    )]
    pub key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that the https:// server's certificate must chain to
    ///
    /// Required for https://: this build trusts no system roots, only the CA you name.
    #[arg(
        long,
        global = true,
        env = CA_ENV,
        hide_env_values = true,
        value_name = "FILE",
        display_order = 104,
        help_heading = CONNECTION
    )]
    pub ca: Option<PathBuf>,

    /// Send the request to this node of the cluster (through the coordinator at --socket)
    ///
    /// Every command except `cluster ...` then acts on NODE: the coordinator forwards the
    /// request with your identity, and NODE checks what you may do. `cluster list` asks only
    /// the nodes named (repeat --node); `cluster nodes` and `cluster contention` are about the
    /// whole cluster.
    #[arg(
        long,
        global = true,
        env = NODE_ENV,
        hide_env_values = true,
        value_name = "NAME",
        display_order = 105,
        help_heading = CONNECTION,
        value_parser = parse_node_name
    )]
    pub node: Option<String>,
}
