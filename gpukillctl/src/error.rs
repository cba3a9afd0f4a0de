//! The one error type of gpukillctl and its exit codes.

use std::path::PathBuf;

use gpukill_proto::exit_code;
use gpukill_proto::{SOCKET_ENV, SYSTEM_SOCKET, SYSTEMD_UNIT};

use crate::conn::peer::DAEMON_USER_ENV;
use crate::render::escape;

/// Everything that can make a gpukillctl command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's socket could not be connected to. The message is one line on purpose:
    /// it names the socket and what to check, and nothing below it adds anything.
    #[error(
        "cannot reach gpukilld at {}: {reason} (is {SYSTEMD_UNIT} running? try: systemctl status {SYSTEMD_UNIT}, or pass --socket / {SOCKET_ENV})",
        socket.display()
    )]
    Unreachable {
        /// The socket path tried.
        socket: PathBuf,
        /// Why it failed, e.g. "No such file or directory".
        reason: String,
    },

    /// The Unix socket is served by a process running as neither root, the caller, nor the
    /// configured daemon user: anyone's program on a path they could write. Nothing was sent
    /// to it (see [`crate::conn::peer`]).
    #[error(
        "refusing to talk to {}: {}",
        socket.display(),
        untrusted_daemon(*uid, user.as_deref(), *pid, *own, daemon_user.as_deref())
    )]
    UntrustedDaemon {
        /// The socket path.
        socket: PathBuf,
        /// The uid its server runs as, as the kernel says (SO_PEERCRED).
        uid: u32,
        /// That uid's user name, when the user database has one.
        user: Option<String>,
        /// The server's pid, when the kernel knows it.
        pid: Option<i32>,
        /// The caller's effective uid.
        own: u32,
        /// The configured daemon user (`name, uid N`), when one is.
        daemon_user: Option<String>,
    },

    /// The connection to the daemon broke during a call, and a new one cannot be made: the
    /// daemon stopped or crashed.
    #[error(
        "lost the connection to gpukilld at {}: {reason} (is {SYSTEMD_UNIT} running? try: systemctl status {SYSTEMD_UNIT})",
        socket.display()
    )]
    ConnectionLost {
        /// The socket path.
        socket: PathBuf,
        /// Why reconnecting failed, e.g. "Connection refused".
        reason: String,
    },

    /// A remote gpukilld (`https://`, or `http://` on loopback) could not be connected to:
    /// nothing listens, a firewall drops the connection, or the TLS handshake failed.
    #[error("cannot reach gpukilld at {address}: {reason} ({hint})")]
    UnreachableRemote {
        /// The address tried, `https://host:port`.
        address: String,
        /// Why it failed, e.g. "Connection refused" or the TLS error.
        reason: String,
        /// What to check.
        hint: String,
    },

    /// The connection to a remote gpukilld broke during a call, and a new one cannot be made.
    #[error(
        "lost the connection to gpukilld at {address}: {reason} (is it still running? check the address, the port and the network)"
    )]
    ConnectionLostRemote {
        /// The address, `https://host:port`.
        address: String,
        /// Why reconnecting failed.
        reason: String,
    },

    /// A credential file named by an option (`--token-file`, `--cert`, `--key`, `--ca`)
    /// cannot be used.
    #[error("{option} {}: {problem}", path.display())]
    Credentials {
        /// The option, e.g. "--token-file".
        option: &'static str,
        /// The file as given.
        path: PathBuf,
        /// What is wrong with it, and what is expected instead.
        problem: String,
    },

    /// The gpukilld asked for a Cluster rpc is not a coordinator (FAILED_PRECONDITION), or
    /// predates clusters (UNIMPLEMENTED).
    #[error("{}", not_coordinator(address, message))]
    NotCoordinator {
        /// Where that gpukilld is (a socket path or a URL).
        address: String,
        /// What it said.
        message: String,
    },

    /// `cluster list` (or `cluster contention`) got no answer from any node.
    #[error("{}", no_node_answered(reasons))]
    NoNodeAnswered {
        /// One "NAME (why)" per node asked.
        reasons: Vec<String>,
    },

    /// The daemon answered an RPC with an error status. An UNAUTHENTICATED answer adds what
    /// to check.
    #[error("{rpc} failed ({code:?}): {message}{}", rpc_hint(*code))]
    Rpc {
        /// The RPC name, e.g. "List".
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message (names the offending value), or the code's description.
        message: String,
    },

    /// The daemon answered successfully but left out a required field.
    #[error("gpukilld sent a {rpc} response without {missing}")]
    EmptyResponse {
        /// The RPC name.
        rpc: &'static str,
        /// What was missing, e.g. "a snapshot".
        missing: &'static str,
    },

    /// A kill left processes running: the daemon refused some targets or they outlived the
    /// timeout. The results were printed first; this only sets the exit code and says why.
    #[error("{}", kill_incomplete(*.total, *.denied, *.protected, *.still_running, *.unexpected))]
    KillIncomplete {
        /// How many processes the request was about.
        total: usize,
        /// Targets the caller may not signal.
        denied: usize,
        /// Targets the daemon never signals.
        protected: usize,
        /// Targets still running when the timeout passed.
        still_running: usize,
        /// Targets with an outcome this client does not know (a newer daemon, or an unset
        /// value); counted as not killed, since nothing says they are gone.
        unexpected: usize,
    },

    /// A reset left GPUs not reset: nvidia-smi failed or the GPU did not answer again. The
    /// results were printed first; this only sets the exit code and says how many.
    #[error(
        "{failed} of {total} {} failed to reset",
        if *.total == 1 { "GPU" } else { "GPUs" }
    )]
    ResetFailed {
        /// GPUs whose outcome is not RESET (FAILED, or a value this client does not know).
        failed: usize,
        /// How many GPUs the request was about.
        total: usize,
    },

    /// A GPU vendor library failed as a whole (e.g. NVML could not be loaded). `list` still
    /// prints what it has, then reports this.
    #[error("GPU vendor library failure: {}", failures.join("; "))]
    VendorFailed {
        /// One "vendor: message" per failed vendor.
        failures: Vec<String>,
    },

    /// Options that clap accepts one by one but that do not go together.
    #[error("{0}")]
    Usage(String),

    /// A file gpukillctl was asked to write (a man page) cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A file named on the command line cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file as given.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// `collection show` found no sample near the time.
    #[error(
        "no samples stored within {within} of {time}; raw samples are kept for 30 days by default (try a time when gpukilld ran, or a larger --within)"
    )]
    NoSamples {
        /// The time asked for, RFC 3339.
        time: String,
        /// The distance allowed, e.g. "5m".
        within: String,
    },

    /// `uploads show` got a payload that is not JSON (a gpukilld bug, or a damaged store).
    #[error("gpukilld sent the payload of the hour {hour} as text that is not JSON")]
    BadPayload {
        /// The hour, RFC 3339.
        hour: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },

    /// `audit import` imported the good lines of a file that also had bad ones (reported
    /// before this).
    #[error("{bad} of {total} lines of {} were not imported (see above)", path.display())]
    ImportIncomplete {
        /// The file.
        path: PathBuf,
        /// Lines not imported: unreadable, or refused by the daemon.
        bad: usize,
        /// Lines read (blank lines not counted).
        total: usize,
    },

    /// `gpukillctl run`: the command exited with a status other than 0 or was killed by
    /// signal N (128+N), could not be started (127 not found, 126 not executable), or was
    /// stopped when the reservation's timeout expired (124). gpukillctl exits with `code` and
    /// prints nothing more ([`Error::is_quiet`]): the command, or gpukillctl's own line on
    /// standard error, has said why.
    #[error("the command exited with status {code}")]
    CommandExit {
        /// The exit status, 1 to 255.
        code: i32,
    },

    /// gpukilld ended a `run` request before granting GPUs (its stream closed, or it sent
    /// Ended).
    #[error("gpukilld ended the run request before granting GPUs: {reason}")]
    RunNotGranted {
        /// Why, as gpukilld said or as far as gpukillctl can tell.
        reason: String,
    },

    /// `gpukillctl run`: the grant sets a GPU selection variable to a value that is not what
    /// its runtime reads (see [`crate::cmd::run::environment`]). The reservation was
    /// released and the command not started.
    #[error(
        "gpukilld granted the GPUs with {variable}={value:?}, which is not {expected}; the \
         command was not started and the reservation was released (is the server of that \
         socket really gpukilld?)"
    )]
    BadGrant {
        /// The variable.
        variable: String,
        /// Its value (the first 80 characters).
        value: String,
        /// What the value must be.
        expected: &'static str,
    },

    /// The signals `run` passes on to its command cannot be listened for.
    #[error("cannot listen for the signals to pass on to the command")]
    RunSignals(#[source] std::io::Error),

    /// `run` cannot wait for its command to exit.
    #[error("cannot wait for the command to exit")]
    RunWait(#[source] std::io::Error),

    /// The daemon closed the Watch stream without an error.
    #[error("gpukilld closed the Watch stream")]
    WatchEnded,

    /// Ctrl-C (or, on a terminal, another signal `list --watch` handles) could not be
    /// listened for.
    #[error("cannot listen for signals (Ctrl-C)")]
    Signal(#[source] std::io::Error),

    /// Writing to standard output failed.
    #[error("cannot write output")]
    Output(#[source] std::io::Error),

    /// Serializing JSON output failed.
    #[error("cannot encode JSON output")]
    Json(#[source] serde_json::Error),

    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    /// Builds [`Error::Rpc`] from a failed call's status.
    pub fn rpc(rpc: &'static str, status: tonic::Status) -> Self {
        let message = if status.message().is_empty() {
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        Error::Rpc {
            rpc,
            code: status.code(),
            message,
        }
    }

    /// Builds [`Error::Rpc`] for a Kill or Reset sent without `--force`: when gpukilld says
    /// that forcing would change the outcome (its words name the request's `force` field, not
    /// this client's flag), the message ends with `(add --force)`.
    pub fn rpc_unforced(rpc: &'static str, status: tonic::Status) -> Self {
        let mut error = Error::rpc(rpc, status);
        if let Error::Rpc { message, .. } = &mut error
            && message.contains("force")
        {
            message.push_str(" (add --force)");
        }
        error
    }

    /// Whether `main` prints nothing for this error, only exits with its code: true for
    /// [`Error::CommandExit`], whose command has spoken for itself.
    pub fn is_quiet(&self) -> bool {
        matches!(self, Error::CommandExit { .. })
    }

    /// The process exit code for this error (see [`gpukill_proto::exit_code`]; `run` exits
    /// with its command's status).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandExit { code } => *code,
            Error::Unreachable { .. }
            | Error::UntrustedDaemon { .. }
            | Error::ConnectionLost { .. }
            | Error::UnreachableRemote { .. }
            | Error::ConnectionLostRemote { .. }
            | Error::NoNodeAnswered { .. } => exit_code::DAEMON_UNREACHABLE,
            Error::NotCoordinator { .. } => exit_code::UNSUPPORTED,
            Error::VendorFailed { .. } => exit_code::VENDOR,
            Error::Rpc { code, .. } => match code {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::NotFound => {
                    exit_code::INVALID_ARGUMENT
                }
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    exit_code::PERMISSION_DENIED
                }
                tonic::Code::Unimplemented | tonic::Code::FailedPrecondition => {
                    exit_code::UNSUPPORTED
                }
                tonic::Code::Unavailable => exit_code::DAEMON_UNREACHABLE,
                // The GPUs asked for are not free (reserve, run --nonblock, run --wait).
                tonic::Code::ResourceExhausted => exit_code::BUSY,
                tonic::Code::Ok
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::AlreadyExists
                | tonic::Code::Aborted
                | tonic::Code::Internal
                | tonic::Code::DataLoss => exit_code::ERROR,
            },
            // Refused targets are a permission problem; only survivors make it a plain error.
            Error::KillIncomplete {
                denied, protected, ..
            } => {
                if denied + protected > 0 {
                    exit_code::PERMISSION_DENIED
                } else {
                    exit_code::ERROR
                }
            }
            Error::Usage(_) | Error::ReadFile { .. } | Error::Credentials { .. } => {
                exit_code::INVALID_ARGUMENT
            }
            Error::EmptyResponse { .. }
            | Error::NoSamples { .. }
            | Error::BadPayload { .. }
            | Error::ImportIncomplete { .. }
            | Error::ResetFailed { .. }
            | Error::WatchEnded
            | Error::RunNotGranted { .. }
            | Error::BadGrant { .. }
            | Error::RunSignals(_)
            | Error::RunWait(_)
            | Error::Signal(_)
            | Error::Output(_)
            | Error::WriteFile { .. }
            | Error::Json(_)
            | Error::Runtime(_) => exit_code::ERROR,
        }
    }
}

/// The message of [`Error::UntrustedDaemon`] after the socket: who serves it, whom
/// gpukillctl trusts, and what to do.
fn untrusted_daemon(
    uid: u32,
    user: Option<&str>,
    pid: Option<i32>,
    own: u32,
    daemon_user: Option<&str>,
) -> String {
    let server = match (user, pid) {
        (Some(user), Some(pid)) => format!("uid {uid} ({user}, pid {pid})"),
        (Some(user), None) => format!("uid {uid} ({user})"),
        (None, Some(pid)) => format!("uid {uid} (pid {pid})"),
        (None, None) => format!("uid {uid}"),
    };
    let configured = match daemon_user {
        Some(daemon_user) => format!("{DAEMON_USER_ENV} ({daemon_user})"),
        None => format!("{DAEMON_USER_ENV} (unset)"),
    };
    let name = user.map_or_else(|| uid.to_string(), str::to_owned);
    format!(
        "it is served by {server}, not by root, by you (uid {own}) or by {configured}, so it \
         may not be gpukilld and nothing was sent to it (pass gpukilld's socket, e.g. --socket \
         {SYSTEM_SOCKET}; if gpukilld runs as {name} on purpose, set {DAEMON_USER_ENV}={name})"
    )
}

/// What to check after an rpc failed with `code`: for UNAUTHENTICATED, the credentials.
fn rpc_hint(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => {
            " (gpukilld did not accept your credentials: check --token-file, or --cert and --key)"
        }
        _ => "",
    }
}

/// The message of [`Error::NotCoordinator`]: where, then the daemon's own words (without
/// repeating "this gpukilld is not a cluster coordinator" when it starts with that).
fn not_coordinator(address: &str, message: &str) -> String {
    const SAID: &str = "this gpukilld is not a cluster coordinator";
    match message.strip_prefix(SAID) {
        Some(rest) => format!("gpukilld at {address} is not a cluster coordinator{rest}"),
        None => format!("gpukilld at {address} is not a cluster coordinator: {message}"),
    }
}

/// The message of [`Error::NoNodeAnswered`].
fn no_node_answered(reasons: &[String]) -> String {
    if reasons.is_empty() {
        return "the coordinator knows no nodes (nodes register themselves, or are listed in \
                its [cluster] configuration)"
            .to_owned();
    }
    format!(
        "no node answered ({} asked): {}",
        reasons.len(),
        reasons.join("; ")
    )
}

/// The one-line message of [`Error::KillIncomplete`], e.g.
/// `2 of 5 processes were not killed: 1 denied, 1 protected`.
fn kill_incomplete(
    total: usize,
    denied: usize,
    protected: usize,
    still_running: usize,
    unexpected: usize,
) -> String {
    let failed = denied + protected + still_running + unexpected;
    let parts: Vec<String> = [
        (denied, "denied"),
        (protected, "protected"),
        (still_running, "still running"),
        (unexpected, "with an unexpected outcome"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, what)| format!("{count} {what}"))
    .collect();
    format!(
        "{failed} of {total} {} {} not killed: {}",
        if total == 1 { "process" } else { "processes" },
        if failed == 1 { "was" } else { "were" },
        parts.join(", ")
    )
}

/// The exit code for a command line clap rejected: 0 for `--help` and `--version`,
/// [`exit_code::INVALID_ARGUMENT`] for every usage error.
pub fn clap_exit_code(err: &clap::Error) -> i32 {
    if err.exit_code() == 0 {
        exit_code::OK
    } else {
        exit_code::INVALID_ARGUMENT
    }
}

/// Renders an error and its sources as the lines gpukillctl prints on standard error:
/// `gpukillctl: error: <error>` then `  caused by: <source>` for each source.
///
/// Messages quote gpukilld's status text, which may echo names other users chose (a process
/// name, a reservation note): their control characters are shown as escapes
/// ([`escape::lines`]).
pub fn format_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("gpukillctl: error: {err}\n");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!("  caused by: {cause}\n"));
        source = cause.source();
    }
    escape::lines(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use tonic::Code;

    #[test]
    fn every_status_code_maps_to_its_documented_exit_code() {
        let cases = [
            (Code::Ok, 1),
            (Code::Cancelled, 1),
            (Code::Unknown, 1),
            (Code::InvalidArgument, 3),
            (Code::DeadlineExceeded, 1),
            (Code::NotFound, 3),
            (Code::AlreadyExists, 1),
            (Code::PermissionDenied, 4),
            (Code::ResourceExhausted, 7),
            (Code::FailedPrecondition, 5),
            (Code::Aborted, 1),
            (Code::OutOfRange, 3),
            (Code::Unimplemented, 5),
            (Code::Internal, 1),
            (Code::Unavailable, 6),
            (Code::DataLoss, 1),
            (Code::Unauthenticated, 4),
        ];
        for (code, expected) in cases {
            let err = Error::rpc("List", tonic::Status::new(code, "boom"));
            assert_eq!(err.exit_code(), expected, "{code:?}");
        }
    }

    #[test]
    fn rpc_errors_print_the_status_message() {
        let status = tonic::Status::invalid_argument("invalid process regex \"(\": unclosed group");
        let err = Error::rpc("List", status);
        assert_eq!(
            err.to_string(),
            "List failed (InvalidArgument): invalid process regex \"(\": unclosed group"
        );
        let err = Error::rpc("List", tonic::Status::new(Code::Internal, ""));
        assert_eq!(err.to_string(), "List failed (Internal): Internal error");
    }

    #[test]
    fn unauthenticated_answers_say_what_to_check() {
        let err = Error::rpc(
            "List",
            tonic::Status::unauthenticated("the bearer token is not valid"),
        );
        assert_eq!(err.exit_code(), 4);
        assert_eq!(
            err.to_string(),
            "List failed (Unauthenticated): the bearer token is not valid (gpukilld did not \
             accept your credentials: check --token-file, or --cert and --key)"
        );
    }

    #[test]
    fn a_daemon_that_is_no_coordinator_is_named_with_its_words() {
        let err = Error::NotCoordinator {
            address: "/run/gpukill/gpukilld.sock".to_owned(),
            message: "this gpukilld is not a cluster coordinator ([cluster] role = \"node\"): \
                      ask the coordinator"
                .to_owned(),
        };
        assert_eq!(err.exit_code(), 5);
        assert_eq!(
            err.to_string(),
            "gpukilld at /run/gpukill/gpukilld.sock is not a cluster coordinator ([cluster] \
             role = \"node\"): ask the coordinator"
        );
        let other = Error::NotCoordinator {
            address: "https://c:7443".to_owned(),
            message: "unknown service gpukill.v1.Cluster".to_owned(),
        };
        assert_eq!(
            other.to_string(),
            "gpukilld at https://c:7443 is not a cluster coordinator: unknown service \
             gpukill.v1.Cluster"
        );
        assert_eq!(Error::NoNodeAnswered { reasons: vec![] }.exit_code(), 6);
    }

    #[test]
    fn other_errors_have_fixed_exit_codes() {
        let unreachable = Error::Unreachable {
            socket: PathBuf::from("/run/gpukill/gpukilld.sock"),
            reason: "No such file or directory".to_owned(),
        };
        assert_eq!(unreachable.exit_code(), 6);
        let lost = Error::ConnectionLost {
            socket: PathBuf::from("/run/gpukill/gpukilld.sock"),
            reason: "Connection refused".to_owned(),
        };
        assert_eq!(lost.exit_code(), 6);
        assert_eq!(
            unreachable.to_string(),
            "cannot reach gpukilld at /run/gpukill/gpukilld.sock: No such file or directory \
             (is gpukilld.service running? try: systemctl status gpukilld.service, \
             or pass --socket / GPUKILL_SOCKET)"
        );
        let remote = Error::UnreachableRemote {
            address: "https://node1:50051".to_owned(),
            reason: "Connection refused".to_owned(),
            hint: "check the port".to_owned(),
        };
        assert_eq!(remote.exit_code(), 6);
        assert_eq!(
            remote.to_string(),
            "cannot reach gpukilld at https://node1:50051: Connection refused (check the port)"
        );
        let credentials = Error::Credentials {
            option: "--token-file",
            path: PathBuf::from("/etc/gpukill/token"),
            problem: "holds no token".to_owned(),
        };
        assert_eq!(credentials.exit_code(), 3);
        assert_eq!(
            credentials.to_string(),
            "--token-file /etc/gpukill/token: holds no token"
        );
        let none = Error::NoNodeAnswered {
            reasons: vec!["n2 (deadline exceeded)".to_owned(), "n3 (down)".to_owned()],
        };
        assert_eq!(none.exit_code(), 6);
        assert_eq!(
            none.to_string(),
            "no node answered (2 asked): n2 (deadline exceeded); n3 (down)"
        );
        assert_eq!(Error::WatchEnded.exit_code(), 1);
        let empty = Error::EmptyResponse {
            rpc: "List",
            missing: "a snapshot",
        };
        assert_eq!(empty.exit_code(), 1);
        assert_eq!(
            empty.to_string(),
            "gpukilld sent a List response without a snapshot"
        );
    }

    fn incomplete(denied: usize, protected: usize, still_running: usize) -> Error {
        Error::KillIncomplete {
            total: 5,
            denied,
            protected,
            still_running,
            unexpected: 0,
        }
    }

    #[test]
    fn refused_kills_exit_4_and_survivors_exit_1() {
        assert_eq!(incomplete(1, 0, 0).exit_code(), 4);
        assert_eq!(incomplete(0, 1, 0).exit_code(), 4);
        assert_eq!(incomplete(1, 1, 1).exit_code(), 4);
        assert_eq!(incomplete(0, 0, 1).exit_code(), 1);
        let unexpected = Error::KillIncomplete {
            total: 1,
            denied: 0,
            protected: 0,
            still_running: 0,
            unexpected: 1,
        };
        assert_eq!(unexpected.exit_code(), 1);
    }

    #[test]
    fn incomplete_kills_say_how_many_and_why_in_one_line() {
        assert_eq!(
            incomplete(1, 1, 0).to_string(),
            "2 of 5 processes were not killed: 1 denied, 1 protected"
        );
        assert_eq!(
            incomplete(0, 0, 1).to_string(),
            "1 of 5 processes was not killed: 1 still running"
        );
        let one = Error::KillIncomplete {
            total: 1,
            denied: 0,
            protected: 0,
            still_running: 0,
            unexpected: 1,
        };
        assert_eq!(
            one.to_string(),
            "1 of 1 process was not killed: 1 with an unexpected outcome"
        );
        assert_eq!(format_chain(&one).lines().count(), 1);
    }

    #[test]
    fn failed_resets_exit_1_and_say_how_many() {
        let two = Error::ResetFailed {
            failed: 1,
            total: 2,
        };
        assert_eq!(two.exit_code(), 1);
        assert_eq!(two.to_string(), "1 of 2 GPUs failed to reset");
        let one = Error::ResetFailed {
            failed: 1,
            total: 1,
        };
        assert_eq!(one.to_string(), "1 of 1 GPU failed to reset");
        assert_eq!(format_chain(&one).lines().count(), 1);
    }

    #[test]
    fn usage_errors_exit_3_and_help_exits_0() {
        let exit = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(_) => panic!("{args:?} should not parse"),
            Err(err) => clap_exit_code(&err),
        };
        assert_eq!(exit(&["gpukillctl", "list", "--vendor", "matrox"]), 3);
        assert_eq!(exit(&["gpukillctl", "list", "--bogus"]), 3);
        assert_eq!(exit(&["gpukillctl", "list", "--output", "yaml"]), 3);
        assert_eq!(exit(&["gpukillctl", "--socket", "ftp://x", "list"]), 3);
        assert_eq!(exit(&["gpukillctl"]), 3);
        assert_eq!(exit(&["gpukillctl", "kill"]), 3);
        assert_eq!(
            exit(&["gpukillctl", "kill", "--pid", "1", "--user", "bob"]),
            3
        );
        assert_eq!(
            exit(&["gpukillctl", "kill", "--pid", "1", "--timeout-secs", "0"]),
            3
        );
        assert_eq!(
            exit(&["gpukillctl", "kill", "--gpu", "1", "--timeout-secs", "3601"]),
            3
        );
        assert_eq!(exit(&["gpukillctl", "reset"]), 3);
        assert_eq!(exit(&["gpukillctl", "reset", "--gpu", "0", "--all"]), 3);
        assert_eq!(
            exit(&["gpukillctl", "reset", "--all", "--output", "yaml"]),
            3
        );
        assert_eq!(exit(&["gpukillctl", "events", "--since", "5 parsecs"]), 3);
        assert_eq!(exit(&["gpukillctl", "events", "--type", "reboot"]), 3);
        assert_eq!(exit(&["gpukillctl", "events", "--limit", "0"]), 3);
        assert_eq!(exit(&["gpukillctl", "kill", "--help"]), 0);
        assert_eq!(exit(&["gpukillctl", "--help"]), 0);
        assert_eq!(exit(&["gpukillctl", "list", "--help"]), 0);
        assert_eq!(exit(&["gpukillctl", "--version"]), 0);
    }

    #[test]
    fn a_command_exit_is_quiet_and_exits_with_its_status() {
        let exit = Error::CommandExit { code: 137 };
        assert!(exit.is_quiet());
        assert_eq!(exit.exit_code(), 137);
        assert!(!Error::WatchEnded.is_quiet());
        let busy = Error::rpc(
            "Run",
            tonic::Status::resource_exhausted("GPU 0 is reserved by bob"),
        );
        assert_eq!(busy.exit_code(), 7);
        let refused = Error::RunNotGranted {
            reason: "cancelled by root".to_owned(),
        };
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(
            refused.to_string(),
            "gpukilld ended the run request before granting GPUs: cancelled by root"
        );
    }

    #[test]
    fn the_daemons_words_cannot_drive_the_terminal() {
        let err = Error::rpc(
            "Kill",
            tonic::Status::permission_denied(
                "pid 7 (\x1b]0;pwned\x07\x1b[2K\r\u{9b}) belongs to bob\u{202e}",
            ),
        );
        assert_eq!(
            format_chain(&err),
            "gpukillctl: error: Kill failed (PermissionDenied): pid 7 \
             (\\e]0;pwned\\x07\\e[2K\\r\\u{9b}) belongs to bob\\u{202e}\n"
        );
        // The exit code is the status's, as for any refusal.
        assert_eq!(err.exit_code(), 4);
    }

    #[test]
    fn the_chain_is_printed_one_cause_per_line() {
        let err = Error::Output(std::io::Error::other("disk full"));
        assert_eq!(
            format_chain(&err),
            "gpukillctl: error: cannot write output\n  caused by: disk full\n"
        );
    }
}
