//! `Events`: the audit trail.

use gpukill_proto::v1 as pb;

use super::convert;
use super::error::RpcError;
use crate::store::{EventQuery, StoredEvent};

/// Events returned when the request names no limit.
const DEFAULT_LIMIT: usize = 1000;
/// The most events one request may return.
const MAX_LIMIT: usize = 100_000;

/// Answers `Events`.
pub async fn events(
    store: &crate::store::StoreHandle,
    request: pb::EventsRequest,
) -> Result<pb::EventsResponse, RpcError> {
    let log = store.get().map_err(RpcError::StoreUnavailable)?;
    let kind = convert::event_type(request.r#type)?;
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        limit => (limit as usize).min(MAX_LIMIT),
    };
    let events = log
        .query(EventQuery {
            since_ms: request.since_unix_ms,
            kind,
            limit,
        })
        .await?;
    Ok(pb::EventsResponse {
        events: events.into_iter().map(event).collect(),
    })
}

fn event(event: StoredEvent) -> pb::Event {
    pb::Event {
        id: event.id,
        time_unix_ms: event.time_ms,
        r#type: pb::EventType::from(event.kind).into(),
        caller_uid: event.caller.uid,
        caller_user: event.caller.user,
        caller_pid: event.caller.pid,
        transport: event.caller.transport,
        action: event.action,
        target: event.target.map(|target| pb::KillTarget {
            pid: target.pid,
            start_time_unix_ms: target.start_time_ms,
            uid: target.uid,
            user: target.user,
            name: target.name,
            cmdline: target.cmdline,
            gpu_index: target.gpu_index,
        }),
        outcome: event.outcome,
        reason: event.reason,
        via: event.caller.via,
    }
}
