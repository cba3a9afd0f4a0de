//! What reservations say: refusals in words (who holds a GPU, for how long, who uses it
//! without a reservation, who drained it), and the audit event of each change with who made
//! it.

use std::time::{Duration, SystemTime};

use super::usage::{self, Assessment, GpuRef, GpuState};
use crate::store::{DrainRow, EventCaller, EventKind, NewEvent, ReservationRow, rfc3339_ms};

pub(super) fn event(
    time: SystemTime,
    caller: &EventCaller,
    verb: &str,
    gpu: u32,
    outcome: &str,
    reason: &str,
) -> NewEvent {
    NewEvent {
        time,
        kind: EventKind::Reservation,
        caller: caller.clone(),
        action: format!("{verb} GPU {gpu}"),
        target: None,
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(super) fn outcome(verb: &str) -> &'static str {
    match verb {
        "expire" => "expired",
        _ => "released",
    }
}

/// A run reservation's holder, for events after a restart.
pub(super) fn holder_caller(row: &ReservationRow) -> EventCaller {
    EventCaller {
        uid: row.uid,
        user: row.user.clone(),
        pid: row.client_pid,
        transport: "unix".to_owned(),
        via: None,
    }
}

pub(super) fn note_suffix(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(": {note}")
    }
}

/// One GPU's state in words, for refusals.
pub(super) fn describe(assessment: &Assessment, now_ms: i64) -> String {
    let index = assessment.gpu.index;
    let by = |misuse: &[usage::Misuse]| {
        let mut users: Vec<&str> = misuse.iter().map(|m| &*m.info.user).collect();
        users.dedup();
        users.join(", ")
    };
    if let Some(drain) = &assessment.drained {
        return drained(index, drain);
    }
    if let Some(unfit) = &assessment.unfit {
        return format!(
            "GPU {index} is not handed out: {unfit} (an admin clears it with `gpukillctl health clear --gpu {index}`, or a reset does)"
        );
    }
    match (&assessment.holder, assessment.state) {
        (Some(holder), _) => {
            let until = holder
                .expires_ms
                .map(|at| format!(" for {} more", remaining(at, now_ms)))
                .unwrap_or_default();
            format!(
                "GPU {index} is reserved by {} ({}){until}",
                holder.user,
                holder.kind.as_str()
            )
        }
        (None, GpuState::UnreservedUse) => {
            format!(
                "GPU {index} is in use without a reservation by {}",
                by(&assessment.misuse)
            )
        }
        (None, _) => format!("GPU {index} is available"),
    }
}

/// `GPU 2 is drained by alice since …: reason (an admin undrains it with …)`.
pub(super) fn drained(index: u32, drain: &DrainRow) -> String {
    let reason = if drain.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", drain.reason)
    };
    format!(
        "GPU {index} is drained by {} since {}{reason} (an admin undrains it with `gpukillctl undrain --gpu {index}`)",
        drain.user,
        rfc3339_ms(drain.since_ms)
    )
}

fn remaining(at_ms: i64, now_ms: i64) -> String {
    let seconds = u64::try_from((at_ms - now_ms).max(0) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

pub(super) fn busy_message(
    count: u32,
    free: &[GpuRef],
    assessed: &[Assessment],
    ahead: usize,
    now_ms: i64,
) -> String {
    if ahead > 0 && free.len() >= count as usize {
        return format!(
            "{ahead} requests wait ahead for GPUs (first come, first served): wait in the queue too, or see the reservation status"
        );
    }
    let taken: Vec<String> = assessed
        .iter()
        .filter(|a| !a.is_free())
        .map(|a| describe(a, now_ms))
        .collect();
    format!(
        "{count} GPUs asked for, {} available: {} (the reservation status shows them; a request that waits is queued)",
        free.len(),
        taken.join("; ")
    )
}
