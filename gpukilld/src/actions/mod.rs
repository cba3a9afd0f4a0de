//! The only code that changes the world: killing processes and resetting GPUs. Every safety
//! check lives here: protection, PID-reuse safety, authorization through
//! [`crate::authz::Principal`], and the audit record that is written before any act
//! ([`audit`]): no record, no act.

pub mod audit;
pub mod kill;
pub mod protect;
pub mod reset;

use crate::authz::Principal;
use crate::procinfo::ProcessInfo;
use crate::store::{EventCaller, EventTarget};

/// What an audit event names as the target: the process `info` describes, on `gpu_index`.
pub fn event_target(info: &ProcessInfo, gpu_index: Option<u32>) -> EventTarget {
    EventTarget {
        pid: info.pid,
        start_time_ms: crate::store::unix_ms(info.start_time),
        uid: info.uid,
        user: info.user.to_string(),
        name: info.name.clone(),
        cmdline: info.cmdline.clone(),
        gpu_index,
    }
}

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
