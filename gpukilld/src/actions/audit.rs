//! The audit record before the act: every kill and reset is written to the events table,
//! committed and synced to disk, before any signal is sent or any reset tool runs; when that
//! write fails, nothing is done and the caller gets [`Unrecorded`]. Once the act is done, its
//! outcome replaces the placeholder the record was written with (`signalling`,
//! `resetting`); if that second write fails the act has happened, the row keeps its
//! placeholder and the journal gets the outcome.
//!
//! Both the `Kill`/`Reset` rpcs and the guard come through here, so the rule is kept in one
//! place.

use std::time::SystemTime;

use crate::actions::kill::{self, Decided, KillOptions, Outcome, Target};
use crate::actions::protect::Protection;
use crate::authz::Principal;
use crate::store::{Database, EventKind, NewEvent, OutcomeUpdate, StoreError};

/// The outcome a kill's event has between its record and its signal.
pub const SIGNALLING: &str = "signalling";

/// The outcome a reset's event has between its record and the reset tool's answer.
pub const RESETTING: &str = "resetting";

/// An act that was not done because its audit record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{act}: its audit record cannot be written to {store}{}", remedy.map(|r| format!(" ({r})")).unwrap_or_default())]
pub struct Unrecorded {
    /// What was not done, e.g. "nothing was signalled".
    pub act: &'static str,
    /// The database file (`:memory:` for an in-memory store).
    pub store: String,
    /// What an admin can do about it, when the store's own error does not already say.
    pub remedy: Option<&'static str>,
    /// Why the write failed.
    #[source]
    pub source: StoreError,
}

impl Unrecorded {
    fn new(act: &'static str, events: &Database, source: StoreError) -> Self {
        Unrecorded {
            act,
            store: events
                .path()
                .map_or_else(|| ":memory:".to_string(), |path| path.display().to_string()),
            remedy: remedy(&source),
            source,
        }
    }
}

/// What to do about a failed audit write, by its cause.
fn remedy(error: &StoreError) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    let sqlite = match error {
        StoreError::Write(source) | StoreError::Open { source, .. } => source.sqlite_error_code(),
        StoreError::QueueFull { .. } => {
            return Some("the store is overloaded; try again in a few seconds");
        }
        StoreError::Timeout => {
            return Some(
                "the store's disk did not answer in time; check it (dmesg), then try again",
            );
        }
        StoreError::Closed | StoreError::Spawn(_) => {
            return Some("the store's writer has stopped; restart gpukilld");
        }
        // The error says what happened and what to do.
        StoreError::FileGone { .. } => return None,
        _ => None,
    };
    Some(match sqlite {
        Some(ErrorCode::DiskFull) => {
            "its filesystem is full: free space there, then try again; gpukilld needs no restart"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            "its filesystem is read-only, failing or gone: check it (mount, dmesg); gpukilld \
             opens the store again once it is writable"
        }
        _ => "gpukillctl's Health report and the daemon's journal say more",
    })
}

/// Why an act was not done.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// Its audit record could not be written (boxed: the store's error is large, and this
    /// travels in every rpc's error type).
    #[error(transparent)]
    Unrecorded(Box<Unrecorded>),
    /// Deciding which targets may be signalled panicked; nothing was recorded or signalled.
    #[error("internal error: deciding the kill's targets panicked; nothing was signalled")]
    Panicked,
}

impl From<Unrecorded> for ActError {
    fn from(unrecorded: Unrecorded) -> Self {
        ActError::Unrecorded(Box::new(unrecorded))
    }
}

/// Who asks for a kill, and how the audit trail names it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The action as the audit trail shows it (`kill --pid 42 --timeout-secs 5`).
    pub action: &'a str,
    /// Put before each target's reason (the guard's violation), if anything.
    pub context: Option<&'a str>,
    /// The kind of event a protected or denied target gets: `Deny` for a caller's request;
    /// `Kill` for the guard, whose refusals are part of its kill.
    pub refused: EventKind,
}

impl Request<'_> {
    /// The audit event of one target's decision or result.
    pub fn event(&self, decided: &Decided) -> NewEvent {
        let info = &decided.target.info;
        NewEvent {
            time: SystemTime::now(),
            kind: match decided.outcome {
                Outcome::Denied | Outcome::Protected => self.refused,
                _ => EventKind::Kill,
            },
            caller: super::event_caller(self.principal),
            action: self.action.to_string(),
            target: Some(super::event_target(info, decided.target.gpu_index)),
            outcome: decided.outcome.as_str().to_string(),
            reason: self.reason(&decided.reason),
        }
    }

    fn reason(&self, reason: &str) -> String {
        match self.context {
            Some(context) if reason.is_empty() => context.to_string(),
            Some(context) => format!("{context}; {reason}"),
            None => reason.to_string(),
        }
    }
}

/// Applies protection and authorization to `targets`, writes every decision to the audit
/// trail (those to be signalled as `signalling`), and only once that is on disk signals
/// them; then records each one's outcome. Results are in pid order. `Err` when the decisions
/// could not be written (or could not be made): then nothing was signalled.
pub async fn kill(
    events: &Database,
    request: Request<'_>,
    protection: Protection,
    targets: Vec<Target>,
    options: KillOptions,
) -> Result<Vec<Decided>, ActError> {
    let principal = request.principal.clone();
    // Protection reads /proc and authorization may read the user database: off the runtime.
    let (mut decided, allowed) =
        tokio::task::spawn_blocking(move || kill::decide(&principal, &protection, targets))
            .await
            .map_err(|_| ActError::Panicked)?;
    let plan = if options.force {
        format!(
            "about to send SIGTERM, then SIGKILL after {}",
            humantime::format_duration(options.timeout)
        )
    } else {
        "about to send SIGTERM".to_string()
    };
    let mut batch: Vec<NewEvent> = decided.iter().map(|d| request.event(d)).collect();
    let first_allowed = batch.len();
    batch.extend(allowed.iter().map(|target| {
        let mut event = request.event(&Decided {
            target: target.clone(),
            outcome: Outcome::Matched,
            reason: plan.clone(),
        });
        event.outcome = SIGNALLING.to_string();
        event
    }));
    let ids = events
        .record_before_act(batch)
        .await
        .map_err(|error| Unrecorded::new("nothing was signalled", events, error))?;
    if allowed.is_empty() {
        return Ok(decided);
    }
    let results = tokio::task::spawn_blocking(move || kill::execute(allowed, options)).await;
    let results = match results {
        Ok(results) => results,
        Err(_) => {
            // The signals may have been sent; the rows say "signalling", which is true.
            tracing::error!(action = request.action, "signalling panicked");
            return Ok(decided);
        }
    };
    let updates = results
        .iter()
        .zip(&ids[first_allowed..])
        .map(|(result, &id)| OutcomeUpdate {
            id,
            outcome: result.outcome.as_str().to_string(),
            reason: request.reason(&result.reason),
        })
        .collect();
    if let Err(error) = events.record_outcomes(updates).await {
        tracing::error!(
            action = request.action,
            error = %crate::errors::chain(&error),
            outcomes = ?results.iter().map(|r| (r.target.info.pid, r.outcome.as_str())).collect::<Vec<_>>(),
            "the signals were sent but their outcomes cannot be written; the audit trail says `signalling`"
        );
    }
    decided.extend(results);
    decided.sort_by_key(|decided| decided.target.info.pid);
    Ok(decided)
}

/// Writes `intent` (whose outcome should be [`RESETTING`]) before `act` runs, and `act`'s
/// outcome and reason after it. `Err` when `intent` could not be written: then `act` did not
/// run.
pub async fn recorded<T>(
    events: &Database,
    intent: NewEvent,
    act: impl Future<Output = (T, String, String)>,
) -> Result<T, Unrecorded> {
    let ids = events
        .record_before_act(vec![intent])
        .await
        .map_err(|error| Unrecorded::new("nothing was reset", events, error))?;
    let (value, outcome, reason) = act.await;
    let updates = ids
        .into_iter()
        .map(|id| OutcomeUpdate {
            id,
            outcome: outcome.clone(),
            reason: reason.clone(),
        })
        .collect();
    if let Err(error) = events.record_outcomes(updates).await {
        tracing::error!(
            error = %crate::errors::chain(&error),
            outcome,
            reason,
            "the act was done but its outcome cannot be written; the audit trail says `{RESETTING}`"
        );
    }
    Ok(value)
}
