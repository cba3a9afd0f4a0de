//! The one place where daemon errors become gRPC status codes.

use tonic::{Code, Status};

use crate::authz::AuthzError;

/// Errors an RPC handler can return.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The caller could not be identified, or its role does not allow the request.
    #[error(transparent)]
    Authz(#[from] AuthzError),
    /// A process filter regex does not compile.
    #[error("invalid filter regex {pattern:?}: {source}")]
    InvalidRegex {
        /// The regex as given.
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// The process regex of a history query does not compile.
    #[error("invalid process regex {pattern:?}: {source}")]
    InvalidProcessRegex {
        /// The regex as given.
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// A history window that ends before it starts.
    #[error("since ({since_unix_ms} ms) must be before until ({until_unix_ms} ms)")]
    InvalidWindow {
        /// The window's start, as given.
        since_unix_ms: i64,
        /// The window's end, as given.
        until_unix_ms: i64,
    },
    /// A vendor value that is not in the enum.
    #[error("unknown vendor value {0}: use nvidia, amd, intel, apple or all")]
    UnknownVendor(i32),
    /// A kill request without a selection.
    #[error("say which processes to kill: a pid, a filter, a GPU or a user")]
    NoSelector,
    /// A kill timeout out of range.
    #[error("a kill timeout of {0} s is out of range: use 1 to 3600 seconds")]
    InvalidTimeout(u32),
    /// A user name that the user database does not know.
    #[error("unknown user {0:?}: give a user name or a numeric uid")]
    UnknownUser(String),
    /// The kill targets could not be chosen.
    #[error(transparent)]
    Select(#[from] crate::actions::kill::SelectError),
    /// An enum field of a request whose value is not accepted there: unspecified where a
    /// value is required, or a number this daemon does not know.
    #[error("invalid {field} {value}: use {accepted}")]
    InvalidEnum {
        /// What the field is, e.g. `guard mode`.
        field: &'static str,
        /// The value as sent.
        value: i32,
        /// The values accepted there, with their numbers.
        accepted: String,
    },
    /// The audit store is not available; nothing is killed without it.
    #[error("the audit store is unavailable, so nothing is killed: {0}")]
    AuditUnavailable(String),
    /// A kill or reset was not done: its audit record could not be written first.
    #[error(transparent)]
    Act(#[from] crate::actions::audit::ActError),
    /// The store is not available for reading.
    #[error("the store is unavailable: {0}")]
    StoreUnavailable(String),
    /// Reading the audit store failed.
    #[error("cannot read the audit store")]
    Store(#[from] crate::store::StoreError),
    /// A reset request without a selection.
    #[error("say which GPUs to reset: one GPU, or all")]
    NoResetSelector,
    /// The caller is not an admin.
    #[error("{0}")]
    NotAdmin(String),
    /// The GPU cannot be reset.
    #[error("reset is not supported: {0}")]
    ResetUnsupported(String),
    /// Processes use the GPU and force was not given.
    #[error("not reset: {0}")]
    ResetBusy(String),
    /// An import call with more records than one call may carry.
    #[error("{sent} records in one import call; send at most {max} per call")]
    TooManyRecords {
        /// How many were sent.
        sent: usize,
        /// The most allowed.
        max: usize,
    },
    /// A change of the guard policy that does not apply or would make it invalid.
    #[error("{0}")]
    InvalidPolicy(String),
    /// The guard policy file could not be read or written.
    #[error("{0}")]
    GuardUpdate(String),
    /// No guard policy is loaded.
    #[error("{0}")]
    GuardOff(String),
    /// A blocking task panicked.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Uploads are not configured.
    #[error(
        "uploads are off on this node: set [upload] url (or [upload] offline = true to queue hours without sending them)"
    )]
    UploadsOff,
    /// An upload status the daemon does not know.
    #[error("unknown upload status {0}: use pending, delivered, parked or rejected")]
    UnknownUploadStatus(i32),
    /// An hour without an outbox entry.
    #[error("no upload of the hour starting at {} (gpukillctl uploads list shows the hours)", crate::store::rfc3339_ms(*.0))]
    NoUpload(i64),
    /// An hour that is neither parked nor rejected.
    #[error("the hour starting at {hour} is {status}: only parked or rejected hours are sent again", hour = crate::store::rfc3339_ms(*.0), status = .1)]
    UploadNotStuck(i64, &'static str),
    /// A retry request that names nothing.
    #[error("name an hour, or ask for every parked hour")]
    InvalidUploadRetry,
    /// A reservation request that was refused.
    #[error(transparent)]
    Reservation(#[from] crate::reservations::ReservationError),
    /// A Run stream whose first message is neither start nor resume.
    #[error("a Run stream must begin with a start or a resume message")]
    BadRunStart,
    /// The client's stream failed before its first message was read (a message over
    /// `[limits] max_request_size`, a malformed one): its own status, code kept.
    #[error("{}", .0.message())]
    Inbound(Status),
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Status {
        use crate::actions::kill::SelectError;
        use crate::reservations::ReservationError;
        let code = match &error {
            RpcError::Inbound(status) => status.code(),
            RpcError::Authz(AuthzError::Unattributed) => Code::Unauthenticated,
            RpcError::Authz(AuthzError::Forbidden { .. }) => Code::PermissionDenied,
            RpcError::InvalidRegex { .. }
            | RpcError::InvalidProcessRegex { .. }
            | RpcError::InvalidWindow { .. }
            | RpcError::UnknownVendor(_)
            | RpcError::NoSelector
            | RpcError::InvalidTimeout(_)
            | RpcError::UnknownUser(_)
            | RpcError::InvalidEnum { .. }
            | RpcError::NoResetSelector
            | RpcError::TooManyRecords { .. }
            | RpcError::InvalidPolicy(_)
            | RpcError::UnknownUploadStatus(_)
            | RpcError::InvalidUploadRetry
            | RpcError::BadRunStart
            | RpcError::Reservation(
                ReservationError::BadCount { .. }
                | ReservationError::NoSuchGpu { .. }
                | ReservationError::DrainReasonTooLong(_)
                | ReservationError::Duplicate(_)
                | ReservationError::BadDuration { .. },
            )
            | RpcError::Select(SelectError::NotAGpuProcess(_) | SelectError::NoSuchGpu { .. }) => {
                Code::InvalidArgument
            }
            RpcError::Select(SelectError::NoSuchPid(_) | SelectError::NoMatch(_))
            | RpcError::NoUpload(_)
            | RpcError::Reservation(ReservationError::NoSuchRun(_)) => Code::NotFound,
            RpcError::NotAdmin(_) | RpcError::Reservation(ReservationError::NotHolder { .. }) => {
                Code::PermissionDenied
            }
            RpcError::Reservation(
                ReservationError::Busy(_) | ReservationError::QueueFull { .. },
            ) => Code::ResourceExhausted,
            RpcError::Reservation(ReservationError::NotLocal) => Code::FailedPrecondition,
            RpcError::ResetUnsupported(_)
            | RpcError::GuardOff(_)
            | RpcError::UploadsOff
            | RpcError::UploadNotStuck(..) => Code::FailedPrecondition,
            RpcError::ResetBusy(_) => Code::Aborted,
            // The daemon is up but cannot act until its store is fixed: not UNAVAILABLE,
            // which clients read as "daemon not reachable" (gpukillctl exits 5, not 6).
            RpcError::AuditUnavailable(_)
            | RpcError::Act(crate::actions::audit::ActError::Unrecorded(_)) => {
                Code::FailedPrecondition
            }
            RpcError::Select(SelectError::Proc { .. })
            | RpcError::Act(crate::actions::audit::ActError::Panicked)
            | RpcError::StoreUnavailable(_)
            | RpcError::GuardUpdate(_)
            | RpcError::Store(_)
            | RpcError::Reservation(ReservationError::Store(_))
            | RpcError::Internal(_) => Code::Internal,
        };
        // regex::Error's Display already holds the position and the reason; keep it whole.
        let message = match &error {
            RpcError::InvalidRegex { pattern, source } => {
                format!("invalid filter regex {pattern:?}:\n{source}")
            }
            RpcError::InvalidProcessRegex { pattern, source } => {
                format!("invalid process regex {pattern:?}:\n{source}")
            }
            other => crate::errors::chain(other),
        };
        Status::new(code, message)
    }
}
