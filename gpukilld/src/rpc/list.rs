//! `List`: the latest snapshot, at once. It never waits on a vendor.

use std::time::SystemTime;

use gpukill_proto::v1 as pb;

use super::convert::{self, Filter};
use super::error::RpcError;
use crate::authz::Caller;
use crate::ring::Ring;

/// Answers `List` from the latest snapshot in `ring`.
pub fn list(
    ring: &Ring,
    _caller: &Caller,
    request: pb::ListRequest,
) -> Result<pb::ListResponse, RpcError> {
    let filter = Filter::try_from(request.filter)?;
    let latest = ring.latest();
    Ok(pb::ListResponse {
        snapshot: Some(convert::snapshot(&latest, &filter, SystemTime::now())),
    })
}
