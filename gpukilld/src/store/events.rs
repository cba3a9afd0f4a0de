//! Audit events: every kill, reset and denied request, with who asked, what it was aimed at,
//! what happened and why. Written in batches (a batch kill writes all its rows in one
//! transaction) and read newest-first with a limit.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use super::{Store, StoreError};

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A process was signalled (or a kill was attempted).
    Kill,
    /// A GPU reset was done (or attempted).
    Reset,
    /// A request was refused by authorization.
    Deny,
    /// The guard found a policy violation (a warning, a "would act" in dry-run, a kill
    /// held back by the rate limit); its kills are `Kill` events.
    Violation,
    /// The guard policy was changed through the API (or a change was refused).
    Policy,
    /// A GPU was reserved, or a reservation ended (released, expired, its `run` client
    /// gone).
    Reservation,
    /// A GPU's health changed state or it reported an Xid; or an admin cleared it.
    Health,
}

impl EventKind {
    /// Every kind, in the order the error message lists them.
    pub const ALL: [EventKind; 7] = [
        EventKind::Kill,
        EventKind::Reset,
        EventKind::Deny,
        EventKind::Violation,
        EventKind::Policy,
        EventKind::Reservation,
        EventKind::Health,
    ];

    /// The name stored in the `kind` column: `kill`, `reset`, `deny`, `violation`,
    /// `policy`, `reservation` or `health`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Kill => "kill",
            EventKind::Reset => "reset",
            EventKind::Deny => "deny",
            EventKind::Violation => "violation",
            EventKind::Policy => "policy",
            EventKind::Reservation => "reservation",
            EventKind::Health => "health",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not an [`EventKind`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event kind {value:?} (expected one of: kill, reset, deny, violation, policy, reservation, health)"
)]
pub struct EventKindError {
    /// The string that was given.
    pub value: String,
}

impl FromStr for EventKind {
    type Err = EventKindError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value)
            .ok_or_else(|| EventKindError {
                value: value.to_string(),
            })
    }
}

impl ToSql for EventKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for EventKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|error: EventKindError| FromSqlError::Other(Box::new(error)))
    }
}

/// Who asked for the action, as the kernel or the TLS layer identified them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCaller {
    /// The caller's uid.
    pub uid: u32,
    /// The caller's user name (or the remote principal's name).
    pub user: String,
    /// The caller's PID, for local callers.
    pub pid: Option<i32>,
    /// How the request came in, e.g. `unix` or `tcp`.
    pub transport: String,
    /// The coordinator principal that forwarded the request, when one did (`user` is then
    /// the original caller, `user@host`).
    pub via: Option<String>,
}

impl EventCaller {
    /// The user name events give the daemon's own doings (an expiry, a GPU's health).
    pub const DAEMON_USER: &'static str = "gpukilld";

    /// The daemon itself, for what it does of its own accord.
    pub fn daemon() -> EventCaller {
        EventCaller {
            uid: nix::unistd::geteuid().as_raw(),
            user: EventCaller::DAEMON_USER.to_owned(),
            pid: i32::try_from(std::process::id()).ok(),
            transport: "daemon".to_owned(),
            via: None,
        }
    }
}

/// The process an action was aimed at, as it was identified when the action ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTarget {
    /// The PID.
    pub pid: u32,
    /// The process start time, milliseconds since the Unix epoch (tells PID reuse apart).
    pub start_time_ms: i64,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's user name.
    pub user: String,
    /// The process name.
    pub name: String,
    /// The command line.
    pub cmdline: String,
    /// The GPU the process was seen on, if one.
    pub gpu_index: Option<u32>,
}

/// An event to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened.
    pub time: SystemTime,
    /// What kind of event it is.
    pub kind: EventKind,
    /// Who asked.
    pub caller: EventCaller,
    /// The action asked for, e.g. `kill SIGTERM` or `reset`.
    pub action: String,
    /// The process it was aimed at; `None` for actions on no process (a reset, a denied
    /// request that named none).
    pub target: Option<EventTarget>,
    /// What happened, e.g. `ok`, `failed`, `denied`.
    pub outcome: String,
    /// Why: the caller's reason, the policy, or the error.
    pub reason: String,
}

/// An event read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Row id; ids grow with insertion order.
    pub id: i64,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What kind of event it is.
    pub kind: EventKind,
    /// Who asked.
    pub caller: EventCaller,
    /// The action asked for.
    pub action: String,
    /// The process it was aimed at, if one.
    pub target: Option<EventTarget>,
    /// What happened.
    pub outcome: String,
    /// Why.
    pub reason: String,
}

/// The outcome of an act whose event was written before it (outcome `signalling` or
/// `resetting`), to replace that placeholder once the act is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeUpdate {
    /// The event's row id, as the write before the act returned it.
    pub id: i64,
    /// What happened.
    pub outcome: String,
    /// Why.
    pub reason: String,
}

/// Which events to read: the newest `limit` that match, returned oldest first (by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events at or after this time, milliseconds since the Unix epoch.
    pub since_ms: Option<i64>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// At most this many events (the newest ones); 0 returns none.
    pub limit: usize,
}

/// Milliseconds since the Unix epoch; negative before it, saturating far out.
pub(crate) fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, whole seconds).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

pub(super) const INSERT: &str = "INSERT INTO events (
        time_ms, kind, caller_uid, caller_user, caller_pid, transport, action,
        target_pid, target_start_ms, target_uid, target_user, target_name, target_cmdline,
        target_gpu, outcome, reason, via
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const COLUMNS: &str = "id, time_ms, kind, caller_uid, caller_user, caller_pid, transport, \
    action, target_pid, target_start_ms, target_uid, target_user, target_name, \
    target_cmdline, target_gpu, outcome, reason, via";

impl Store {
    /// Writes `events` in one transaction and returns their ids, in order. Either all are
    /// written or none is.
    ///
    /// The commit is synced to disk before this returns (`synchronous = FULL` for this
    /// transaction: in WAL mode the WAL is fsynced at commit), since an audit event may be
    /// the record of an act about to happen; the store's other writes keep `NORMAL` (synced
    /// at checkpoints: a power loss may take the last seconds of history, never an event).
    pub fn insert_events(&mut self, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(StoreError::Write)?;
        let written = self.insert_event_rows(events, INSERT, 17);
        // Outside any transaction, so it cannot fail for a reason the insert did not.
        if let Err(error) = self.conn.pragma_update(None, "synchronous", "NORMAL") {
            tracing::warn!(%error, "cannot set the store back to synchronous = NORMAL");
        }
        written
    }

    /// Replaces the placeholder outcome of events written before their act with what
    /// happened, in one transaction.
    pub fn set_outcomes(&mut self, updates: &[OutcomeUpdate]) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            {
                let mut update = tx
                    .prepare_cached("UPDATE events SET outcome = ?2, reason = ?3 WHERE id = ?1")
                    .map_err(StoreError::Write)?;
                for row in updates {
                    update
                        .execute(rusqlite::params![row.id, row.outcome, row.reason])
                        .map_err(StoreError::Write)?;
                }
            }
            Ok(())
        })
    }

    /// Writes `events` as a store before schema 5 (no `via` column) did, for migration tests.
    #[cfg(test)]
    pub(crate) fn insert_events_before_via(
        &mut self,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let sql = INSERT.replace(", via\n", "\n").replace(", ?17)", ")");
        self.insert_event_rows(events, &sql, 16)
    }

    /// Inserts with `sql`, binding the first `columns` of the event's values.
    fn insert_event_rows(
        &mut self,
        events: &[NewEvent],
        sql: &str,
        columns: usize,
    ) -> Result<Vec<i64>, StoreError> {
        self.write_tx(|tx| {
            let ids = insert_events_in(tx, events, sql, columns)?;
            Ok(ids)
        })
    }

    /// Reads the newest `query.limit` events that match `query`, oldest first.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut conditions = Vec::new();
        let mut params: Vec<&dyn ToSql> = Vec::new();
        if let Some(since_ms) = &query.since_ms {
            params.push(since_ms);
            conditions.push(format!("time_ms >= ?{}", params.len()));
        }
        if let Some(kind) = &query.kind {
            params.push(kind);
            conditions.push(format!("kind = ?{}", params.len()));
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        params.push(&limit);
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // At most four distinct strings, so the statement cache holds them all.
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM events {filter} ORDER BY id DESC LIMIT ?{}) \
             ORDER BY id ASC",
            params.len()
        );
        let mut select = self.conn.prepare_cached(&sql).map_err(StoreError::Read)?;
        let rows = select
            .query_map(&*params, stored_event)
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }
}

fn stored_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let target = match row.get::<_, Option<u32>>("target_pid")? {
        None => None,
        Some(pid) => Some(EventTarget {
            pid,
            start_time_ms: row.get("target_start_ms")?,
            uid: row.get("target_uid")?,
            user: row.get("target_user")?,
            name: row.get("target_name")?,
            cmdline: row.get("target_cmdline")?,
            gpu_index: row.get("target_gpu")?,
        }),
    };
    Ok(StoredEvent {
        id: row.get("id")?,
        time_ms: row.get("time_ms")?,
        kind: row.get("kind")?,
        caller: EventCaller {
            uid: row.get("caller_uid")?,
            user: row.get("caller_user")?,
            pid: row.get("caller_pid")?,
            transport: row.get("transport")?,
            via: row.get("via")?,
        },
        action: row.get("action")?,
        target,
        outcome: row.get("outcome")?,
        reason: row.get("reason")?,
    })
}

/// Inserts `events` with `sql` (binding the first `columns` of each event's values) in the
/// caller's transaction; returns their ids.
pub(super) fn insert_events_in(
    tx: &rusqlite::Transaction<'_>,
    events: &[NewEvent],
    sql: &str,
    columns: usize,
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut insert = tx.prepare_cached(sql).map_err(StoreError::Write)?;
    for event in events {
        let target = event.target.as_ref();
        let values: [&dyn rusqlite::ToSql; 17] = [
            &unix_ms(event.time),
            &event.kind,
            &event.caller.uid,
            &event.caller.user,
            &event.caller.pid,
            &event.caller.transport,
            &event.action,
            &target.map(|target| target.pid),
            &target.map(|target| target.start_time_ms),
            &target.map(|target| target.uid),
            &target.map(|target| target.user.as_str()),
            &target.map(|target| target.name.as_str()),
            &target.map(|target| target.cmdline.as_str()),
            &target.and_then(|target| target.gpu_index),
            &event.outcome,
            &event.reason,
            &event.caller.via,
        ];
        let id = insert
            .insert(&values[..columns])
            .map_err(StoreError::Write)?;
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    /// An event at `time_ms` with (or without) a target; fields vary with the time so rows
    /// are told apart.
    pub(crate) fn event(kind: EventKind, time_ms: u64, with_target: bool) -> NewEvent {
        NewEvent {
            time: UNIX_EPOCH + Duration::from_millis(time_ms),
            kind,
            caller: EventCaller {
                uid: 1000,
                user: "alice".to_string(),
                pid: Some(4242),
                transport: "unix".to_string(),
                via: None,
            },
            action: format!("{kind} at {time_ms}"),
            target: with_target.then(|| EventTarget {
                pid: 31337,
                start_time_ms: 1_700_000_000_123,
                uid: 1001,
                user: "bob".to_string(),
                name: "python".to_string(),
                cmdline: "python train.py --epochs 'ten'".to_string(),
                gpu_index: Some(3),
            }),
            outcome: "ok".to_string(),
            reason: format!("reason {time_ms}"),
        }
    }

    fn all(limit: usize) -> EventQuery {
        EventQuery {
            since_ms: None,
            kind: None,
            limit,
        }
    }

    #[test]
    fn every_event_kind_can_be_stored() {
        // The table's CHECK lists the kinds: a kind added without a migration fails here.
        let mut store = Store::open_in_memory().unwrap();
        let written: Vec<NewEvent> = EventKind::ALL
            .into_iter()
            .zip(1..)
            .map(|(kind, time)| event(kind, time, false))
            .collect();
        store
            .insert_events(&written)
            .expect("every kind is accepted");
    }

    fn times(events: &[StoredEvent]) -> Vec<i64> {
        events.iter().map(|event| event.time_ms).collect()
    }

    #[test]
    fn round_trip_with_and_without_target() {
        let mut store = Store::open_in_memory().unwrap();
        let mut no_gpu = event(EventKind::Kill, 2_000, true);
        if let Some(target) = no_gpu.target.as_mut() {
            target.gpu_index = None;
        }
        let mut no_caller_pid = event(EventKind::Deny, 3_000, false);
        no_caller_pid.caller.pid = None;
        no_caller_pid.caller.transport = "tcp".to_string();
        let written = vec![
            event(EventKind::Kill, 1_000, true),
            no_gpu,
            no_caller_pid,
            event(EventKind::Reset, 4_000, false),
        ];
        let ids = store.insert_events(&written).unwrap();
        assert_eq!(ids.len(), 4);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

        let read = store.events(&all(100)).unwrap();
        assert_eq!(read.len(), written.len());
        for ((stored, new), id) in read.iter().zip(&written).zip(&ids) {
            assert_eq!(stored.id, *id);
            assert_eq!(stored.time_ms, unix_ms(new.time));
            assert_eq!(stored.kind, new.kind);
            assert_eq!(stored.caller, new.caller);
            assert_eq!(stored.action, new.action);
            assert_eq!(stored.target, new.target);
            assert_eq!(stored.outcome, new.outcome);
            assert_eq!(stored.reason, new.reason);
        }
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(store.insert_events(&[]).unwrap(), Vec::<i64>::new());
        assert!(store.events(&all(10)).unwrap().is_empty());
    }

    #[test]
    fn since_kind_and_limit_filter() {
        let mut store = Store::open_in_memory().unwrap();
        let kinds = [EventKind::Kill, EventKind::Deny, EventKind::Reset];
        let written: Vec<NewEvent> = (1..=9u64)
            .map(|n| event(kinds[(n % 3) as usize], n * 1_000, n % 2 == 0))
            .collect();
        store.insert_events(&written).unwrap();

        assert_eq!(
            times(&store.events(&all(100)).unwrap()),
            (1..=9).map(|n| n * 1_000).collect::<Vec<_>>()
        );
        // The newest three, oldest first.
        assert_eq!(
            times(&store.events(&all(3)).unwrap()),
            vec![7_000, 8_000, 9_000]
        );
        assert!(store.events(&all(0)).unwrap().is_empty());

        let since = EventQuery {
            since_ms: Some(6_000),
            kind: None,
            limit: 100,
        };
        assert_eq!(
            times(&store.events(&since).unwrap()),
            vec![6_000, 7_000, 8_000, 9_000]
        );

        let kills = EventQuery {
            since_ms: None,
            kind: Some(EventKind::Kill),
            limit: 100,
        };
        let read = store.events(&kills).unwrap();
        assert!(read.iter().all(|event| event.kind == EventKind::Kill));
        assert_eq!(times(&read), vec![3_000, 6_000, 9_000]);

        let newest_deny_since = EventQuery {
            since_ms: Some(2_000),
            kind: Some(EventKind::Deny),
            limit: 2,
        };
        // Denies at 1, 4, 7 s; since 2 s leaves 4 and 7.
        assert_eq!(
            times(&store.events(&newest_deny_since).unwrap()),
            vec![4_000, 7_000]
        );
        let newest_reset = EventQuery {
            since_ms: None,
            kind: Some(EventKind::Reset),
            limit: 1,
        };
        assert_eq!(times(&store.events(&newest_reset).unwrap()), vec![8_000]);
    }

    #[test]
    fn a_failing_batch_writes_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.reason = 'refuse'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let mut bad = event(EventKind::Kill, 2_000, true);
        bad.reason = "refuse".to_string();
        let error = store
            .insert_events(&[event(EventKind::Kill, 1_000, true), bad])
            .unwrap_err();
        assert!(matches!(error, StoreError::Write(_)), "{error:?}");
        assert!(store.events(&all(10)).unwrap().is_empty());
    }

    #[test]
    fn times_before_the_epoch_are_negative() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(1_500)), -1_500);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_500)), 1_500);
    }

    #[test]
    fn event_kind_parses_and_names_bad_values() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
        }
        let error = EventKind::from_str("kil").unwrap_err();
        assert_eq!(error.value, "kil");
        let message = error.to_string();
        assert!(message.contains("\"kil\""), "{message}");
        for allowed in ["kill", "reset", "deny"] {
            assert!(message.contains(allowed), "{message}");
        }
    }
}
