//! The only code that changes the world: killing processes and resetting GPUs. Every safety
//! check lives here: protection, PID-reuse safety, authorization through
//! [`crate::authz::Principal`], and the audit record that is written before any act
//! ([`audit`]): no record, no act.

pub mod audit;
pub mod kill;
pub mod protect;
pub mod reset;

use crate::authz::Principal;
use crate::store::EventCaller;

/// Who an audit event names as the caller: the principal's uid, name and pid, how it came
/// in, and the coordinator that forwarded the request.
pub fn event_caller(principal: &Principal) -> EventCaller {
    EventCaller {
        uid: principal.caller.uid,
        user: principal.user.clone(),
        pid: principal.caller.pid,
        transport: principal.caller.transport.name().to_owned(),
        via: principal.via(),
    }
}
