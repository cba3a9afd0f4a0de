//! The one place where daemon errors become gRPC status codes.

use tonic::{Code, Status};

use crate::authz::AuthzError;

/// Errors an RPC handler can return.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The caller could not be identified.
    #[error(transparent)]
    Unattributed(#[from] AuthzError),
    /// A process filter regex does not compile.
    #[error("invalid --filter regex {pattern:?}: {source}")]
    InvalidRegex {
        /// The regex as given.
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// A vendor value that is not in the enum.
    #[error("unknown vendor value {0}: use nvidia, amd, intel, apple or all")]
    UnknownVendor(i32),
}

impl From<RpcError> for Status {
    fn from(error: RpcError) -> Status {
        let code = match &error {
            RpcError::Unattributed(_) => Code::Unauthenticated,
            RpcError::InvalidRegex { .. } | RpcError::UnknownVendor(_) => Code::InvalidArgument,
        };
        // regex::Error's Display already holds the position and the reason; keep it whole.
        let message = match &error {
            RpcError::InvalidRegex { pattern, source } => {
                format!("invalid --filter regex {pattern:?}:\n{source}")
            }
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}
