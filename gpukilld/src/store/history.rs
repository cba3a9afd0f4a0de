//! Metrics history: what the GPUs did and which processes used them, kept at two
//! resolutions.
//!
//! - Raw rows, written once per persist interval: `gpu_samples` (one row per GPU and
//!   interval, means over the ticks in it and maxima so peaks are not lost) and
//!   `process_sessions` (one row per process, start time and GPU, whose sums grow with every
//!   interval it is seen in).
//! - Hourly rollups, computed from the raw rows when an hour closes: `gpu_hourly` and
//!   `user_hourly`. `rolled_up_hours` records which hours are done, so a daemon that was down
//!   knows what to catch up on ([`Store::hours_needing_rollup`]).
//!
//! Everything here is synchronous; the daemon calls it from the store's writer thread.

use std::time::Duration;

use rusqlite::Row;

use super::{Store, StoreError};

/// One hour in milliseconds; rollups cover `[hour_ms, hour_ms + HOUR_MS)`.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// A session seen for less than this long still counts as lasting this long when its sums are
/// spread over hours, so that a process seen once is not spread over nothing.
const MIN_SESSION_MS: i64 = 1_000;

/// Bytes in a GiB.
const GIB: f64 = 1_073_741_824.0;

/// One GPU over one persist interval (means over the ticks in it; maxima so peaks are not lost).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSampleRow {
    /// Start of the persist interval, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The GPU's index.
    pub gpu_index: u32,
    /// The GPU's UUID, if known.
    pub uuid: Option<String>,
    /// The GPU's PCI bus id, if known.
    pub pci_bus_id: Option<String>,
    /// The GPU's product name, if known.
    pub name: Option<String>,
    /// How many snapshots were aggregated into this row.
    pub ticks: u32,
    /// Mean SM utilization, percent.
    pub util_mean: Option<f64>,
    /// Highest SM utilization, percent.
    pub util_max: Option<u32>,
    /// Mean memory-controller utilization, percent.
    pub mem_util_mean: Option<f64>,
    /// Most memory used, bytes.
    pub mem_used_max: Option<u64>,
    /// Total memory, bytes.
    pub mem_total: Option<u64>,
    /// Mean temperature, °C.
    pub temp_mean: Option<f64>,
    /// Highest temperature, °C.
    pub temp_max: Option<i32>,
    /// Mean power draw, milliwatts.
    pub power_mean_mw: Option<f64>,
    /// Highest power draw, milliwatts.
    pub power_max_mw: Option<u32>,
    /// Mean fan speed, percent.
    pub fan_mean: Option<f64>,
    /// Mean SM clock, MHz.
    pub sm_clock_mean: Option<f64>,
    /// Mean memory clock, MHz.
    pub mem_clock_mean: Option<f64>,
}

/// What one persist interval adds to one process session (pid, start time, gpu).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate {
    /// The PID.
    pub pid: u32,
    /// The process start time, milliseconds since the Unix epoch (tells PID reuse apart).
    pub start_time_ms: i64,
    /// The GPU the process was seen on.
    pub gpu_index: u32,
    /// First time the process was seen on the GPU in this interval, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last time the process was seen on the GPU in this interval, ms since the epoch.
    pub last_seen_ms: i64,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's user name.
    pub user: String,
    /// The process name.
    pub name: String,
    /// The command line.
    pub cmdline: String,
    /// The container the process runs in, if one.
    pub container_id: Option<String>,
    /// The container runtime, if known.
    pub container_runtime: Option<String>,
    /// The Kubernetes pod UID, if one.
    pub pod_uid: Option<String>,
    /// Most GPU memory the process used in this interval, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// GPU memory × time in this interval, byte-seconds (a delta).
    pub memory_byte_seconds: f64,
    /// Time on the GPU in this interval, seconds (a delta).
    pub gpu_seconds: f64,
    /// SM% / 100 × seconds in this interval (a delta); `None` when unknown.
    pub util_seconds: Option<f64>,
}

/// A process session read back from the store, with its sums over every interval written.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// Row id.
    pub id: i64,
    /// The PID.
    pub pid: u32,
    /// The process start time, milliseconds since the Unix epoch.
    pub start_time_ms: i64,
    /// The GPU the process was seen on.
    pub gpu_index: u32,
    /// First time the process was seen on the GPU, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last time the process was seen on the GPU, ms since the epoch.
    pub last_seen_ms: i64,
    /// The owner's uid, as last written.
    pub uid: u32,
    /// The owner's user name, as last written.
    pub user: String,
    /// The process name, as last written.
    pub name: String,
    /// The command line, as last written.
    pub cmdline: String,
    /// The container the process runs in, the latest one known.
    pub container_id: Option<String>,
    /// The container runtime, the latest one known.
    pub container_runtime: Option<String>,
    /// The Kubernetes pod UID, the latest one known.
    pub pod_uid: Option<String>,
    /// Most GPU memory the process used, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// GPU memory × time, byte-seconds.
    pub memory_byte_seconds: f64,
    /// Time on the GPU, seconds.
    pub gpu_seconds: f64,
    /// SM% / 100 × seconds; `None` while no interval knew it.
    pub util_seconds: Option<f64>,
}

/// What [`Store::rollup_hour`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupSummary {
    /// Rows written to `gpu_hourly` (one per GPU with samples in the hour).
    pub gpu_rows: usize,
    /// Rows written to `user_hourly` (one per GPU and uid with sessions in the hour).
    pub user_rows: usize,
    /// Outbox entries dropped at its bound when this hour was queued (their hours).
    pub dropped_uploads: Vec<i64>,
}

const INSERT_SAMPLE: &str = "INSERT OR REPLACE INTO gpu_samples (
        time_ms, gpu_index, identity, ticks, util_mean, util_max, mem_util_mean,
        mem_used_max, mem_total, temp_mean, temp_max, power_mean_mw, power_max_mw, fan_mean,
        sm_clock_mean, mem_clock_mean
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// A GPU's identity strings are stored once in `gpu_identities` and referenced by id from
/// every sample row: they would otherwise be most of each row's bytes. An unknown string is
/// stored as '' (UNIQUE would not merge NULLs) and read back as NULL.
pub(super) const INSERT_IDENTITY: &str =
    "INSERT OR IGNORE INTO gpu_identities (uuid, pci_bus_id, name)
    VALUES (coalesce(?1, ''), coalesce(?2, ''), coalesce(?3, ''))";

pub(super) const IDENTITY_ID: &str = "SELECT id FROM gpu_identities
    WHERE uuid = coalesce(?1, '') AND pci_bus_id = coalesce(?2, '') AND name = coalesce(?3, '')";

/// The sample columns, identity joined back in, under the names `sample_row` reads.
pub(super) const SAMPLE_COLUMNS: &str = "s.time_ms AS time_ms, s.gpu_index AS gpu_index, \
    nullif(i.uuid, '') AS uuid, nullif(i.pci_bus_id, '') AS pci_bus_id, \
    nullif(i.name, '') AS name, s.ticks AS ticks, s.util_mean AS util_mean, \
    s.util_max AS util_max, s.mem_util_mean AS mem_util_mean, s.mem_used_max AS mem_used_max, \
    s.mem_total AS mem_total, s.temp_mean AS temp_mean, s.temp_max AS temp_max, \
    s.power_mean_mw AS power_mean_mw, s.power_max_mw AS power_max_mw, s.fan_mean AS fan_mean, \
    s.sm_clock_mean AS sm_clock_mean, s.mem_clock_mean AS mem_clock_mean";

/// The sample table with the identities joined, for [`SAMPLE_COLUMNS`].
pub(super) const SAMPLES_JOINED: &str =
    "gpu_samples AS s LEFT JOIN gpu_identities AS i ON i.id = s.identity";

// Two-argument min()/max() are NULL when either argument is, hence the coalesce()s: a NULL
// on one side leaves the other. Container fields keep the known value when the latest
// interval could not tell (a process does not change containers).
const UPSERT_SESSION: &str = "INSERT INTO process_sessions (
        pid, start_time_ms, gpu_index, first_seen_ms, last_seen_ms, uid, user, name, cmdline,
        container_id, container_runtime, pod_uid, peak_memory_bytes, memory_byte_seconds,
        gpu_seconds, util_seconds
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
    ON CONFLICT (pid, start_time_ms, gpu_index) DO UPDATE SET
        first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
        last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
        uid = excluded.uid,
        user = excluded.user,
        name = excluded.name,
        cmdline = excluded.cmdline,
        container_id = coalesce(excluded.container_id, container_id),
        container_runtime = coalesce(excluded.container_runtime, container_runtime),
        pod_uid = coalesce(excluded.pod_uid, pod_uid),
        peak_memory_bytes = max(
            coalesce(peak_memory_bytes, excluded.peak_memory_bytes),
            coalesce(excluded.peak_memory_bytes, peak_memory_bytes)
        ),
        memory_byte_seconds = memory_byte_seconds + excluded.memory_byte_seconds,
        gpu_seconds = gpu_seconds + excluded.gpu_seconds,
        util_seconds = coalesce(
            util_seconds + excluded.util_seconds,
            util_seconds,
            excluded.util_seconds
        )";

const SESSION_COLUMNS: &str = "id, pid, start_time_ms, gpu_index, first_seen_ms, last_seen_ms, \
    uid, user, name, cmdline, container_id, container_runtime, pod_uid, peak_memory_bytes, \
    memory_byte_seconds, gpu_seconds, util_seconds";

/// `gpu_hourly` for the hour `[?1, ?2)`; `?3` is the persist interval in seconds.
///
/// Means of means are weighted by `ticks` over the rows where the mean is known (all unknown,
/// or zero ticks in all: NULL, since SQLite's `x / 0` is NULL). `util_min` is the floor of the
/// lowest interval mean (the per-tick minimum is not kept). `CAST` truncates toward zero, so
/// the comparison takes one more away for a negative non-integer.
const ROLLUP_GPU: &str = "INSERT INTO gpu_hourly (
        hour_ms, gpu_index, samples, util_mean, util_ticks, util_min, util_max, mem_used_mean,
        mem_used_max, temp_mean, temp_max, power_mean_mw, power_max_mw, energy_wh
    )
    SELECT ?1, gpu_index, samples, util_mean, util_ticks,
        CAST(util_low AS INTEGER) - (util_low < CAST(util_low AS INTEGER)),
        util_max, mem_used_mean, mem_used_max, temp_mean, temp_max, power_mean_mw,
        power_max_mw, energy_wh
    FROM (
        SELECT gpu_index,
            count(*) AS samples,
            sum(util_mean * ticks)
                / sum(CASE WHEN util_mean IS NOT NULL THEN ticks END) AS util_mean,
            sum(CASE WHEN util_mean IS NOT NULL THEN ticks END) AS util_ticks,
            min(util_mean) AS util_low,
            max(util_max) AS util_max,
            avg(mem_used_max) AS mem_used_mean,
            max(mem_used_max) AS mem_used_max,
            sum(temp_mean * ticks)
                / sum(CASE WHEN temp_mean IS NOT NULL THEN ticks END) AS temp_mean,
            max(temp_max) AS temp_max,
            sum(power_mean_mw * ticks)
                / sum(CASE WHEN power_mean_mw IS NOT NULL THEN ticks END) AS power_mean_mw,
            max(power_max_mw) AS power_max_mw,
            sum(power_mean_mw / 1000.0 * ?3) / 3600.0 AS energy_wh
        FROM gpu_samples
        WHERE time_ms >= ?1 AND time_ms < ?2
        GROUP BY gpu_index
    )";

/// `user_hourly` for the hour `[?1, ?2)`; `?3` is [`MIN_SESSION_MS`].
///
/// A session's sums are spread evenly over its span `[first_seen, end)`, where
/// `end = max(last_seen, first_seen + ?3)`; the hour gets `sums × overlap / (end -
/// first_seen)`. The inner `last_seen_ms > ?1 - ?3` only lets the index narrow the scan.
/// One row per (GPU, uid); `user` is the name on the session seen last, so a renamed user
/// (or one whose name resolved late) cannot make two rows for one key.
const ROLLUP_USER: &str = "INSERT INTO user_hourly (
        hour_ms, gpu_index, user, uid, gpu_seconds, memory_gib_hours, peak_memory_bytes,
        processes
    )
    SELECT ?1, gpu_index, max(latest_user), uid,
        sum(gpu_seconds * share),
        sum(memory_byte_seconds * share) / ?4 / 3600.0,
        max(peak_memory_bytes),
        count(*)
    FROM (
        SELECT gpu_index, uid, gpu_seconds, memory_byte_seconds, peak_memory_bytes,
            first_value(user) OVER (
                PARTITION BY gpu_index, uid ORDER BY last_seen_ms DESC, id DESC
            ) AS latest_user,
            (min(max(last_seen_ms, first_seen_ms + ?3), ?2) - max(first_seen_ms, ?1)) * 1.0
                / max(last_seen_ms - first_seen_ms, ?3) AS share
        FROM process_sessions
        WHERE last_seen_ms > ?1 - ?3
            AND first_seen_ms < ?2
            AND max(last_seen_ms, first_seen_ms + ?3) > ?1
    )
    GROUP BY gpu_index, uid";

/// Starts of the hours before `?1` (a whole hour) that have samples and no rollup. Walks the
/// time index one hour at a time (each step is one index seek to the next sample), so it
/// costs a few reads per hour with data, not a scan of every sample.
const HOURS_NEEDING_ROLLUP: &str = "WITH RECURSIVE
        firsts(t) AS (
            SELECT min(time_ms) FROM gpu_samples WHERE time_ms < ?1
            UNION ALL
            SELECT (
                SELECT min(time_ms) FROM gpu_samples
                WHERE time_ms >= t - ((t % ?2) + ?2) % ?2 + ?2 AND time_ms < ?1
            )
            FROM firsts WHERE t IS NOT NULL
        ),
        hours(hour_ms) AS (
            SELECT t - ((t % ?2) + ?2) % ?2 FROM firsts WHERE t IS NOT NULL
        )
    SELECT hour_ms FROM hours
    WHERE NOT EXISTS (SELECT 1 FROM rolled_up_hours AS done WHERE done.hour_ms = hours.hour_ms)
    ORDER BY hour_ms";

/// The start of the hour `time_ms` falls in (floored, also before the epoch).
pub(crate) fn hour_start(time_ms: i64) -> i64 {
    time_ms.div_euclid(HOUR_MS) * HOUR_MS
}

impl Store {
    /// Writes one persist interval in ONE transaction (BEGIN IMMEDIATE): inserts the sample
    /// rows (INSERT OR REPLACE on the primary key, so a retried batch is not duplicated) and
    /// upserts the sessions: on conflict (pid, start_time_ms, gpu_index) first_seen = min,
    /// last_seen = max, peak = max (NULL-aware), the three sums ADD the deltas (util_seconds
    /// stays NULL only while every delta was None), uid/user/name/cmdline updated to the
    /// latest, and the container fields to the latest known (a `None` keeps the stored value).
    ///
    /// Unlike the samples, session deltas are added again if the same batch is written twice.
    pub fn write_history(
        &mut self,
        samples: &[GpuSampleRow],
        sessions: &[SessionUpdate],
    ) -> Result<(), StoreError> {
        self.write_tx(|tx| {
            {
                let mut insert = tx
                    .prepare_cached(INSERT_SAMPLE)
                    .map_err(StoreError::Write)?;
                let mut insert_identity = tx
                    .prepare_cached(INSERT_IDENTITY)
                    .map_err(StoreError::Write)?;
                let mut identity_id = tx.prepare_cached(IDENTITY_ID).map_err(StoreError::Write)?;
                for sample in samples {
                    let identity = rusqlite::params![sample.uuid, sample.pci_bus_id, sample.name];
                    insert_identity
                        .execute(identity)
                        .map_err(StoreError::Write)?;
                    let identity: i64 = identity_id
                        .query_row(identity, |row| row.get(0))
                        .map_err(StoreError::Write)?;
                    insert
                        .execute(rusqlite::params![
                            sample.time_ms,
                            sample.gpu_index,
                            identity,
                            sample.ticks,
                            sample.util_mean,
                            sample.util_max,
                            sample.mem_util_mean,
                            sample.mem_used_max,
                            sample.mem_total,
                            sample.temp_mean,
                            sample.temp_max,
                            sample.power_mean_mw,
                            sample.power_max_mw,
                            sample.fan_mean,
                            sample.sm_clock_mean,
                            sample.mem_clock_mean,
                        ])
                        .map_err(StoreError::Write)?;
                }
                let mut upsert = tx
                    .prepare_cached(UPSERT_SESSION)
                    .map_err(StoreError::Write)?;
                for session in sessions {
                    upsert
                        .execute(rusqlite::params![
                            session.pid,
                            session.start_time_ms,
                            session.gpu_index,
                            session.first_seen_ms,
                            session.last_seen_ms,
                            session.uid,
                            session.user,
                            session.name,
                            session.cmdline,
                            session.container_id,
                            session.container_runtime,
                            session.pod_uid,
                            session.peak_memory_bytes,
                            session.memory_byte_seconds,
                            session.gpu_seconds,
                            session.util_seconds,
                        ])
                        .map_err(StoreError::Write)?;
                }
            }
            Ok(())
        })
    }

    /// Rolls up the hour starting at `hour_ms` (a multiple of 3_600_000; another value is
    /// floored to one) from the raw tables into `gpu_hourly` and `user_hourly`, replacing any
    /// previous rollup of that hour (DELETE then INSERT in one transaction), and records it in
    /// `rolled_up_hours`. Idempotent: running it twice leaves the same rows.
    ///
    /// `gpu_hourly`, per GPU over the `gpu_samples` rows with `time_ms` in the hour:
    /// - `samples` = the number of rows;
    /// - `util_mean`, `temp_mean`, `power_mean_mw` = the row means weighted by `ticks`
    ///   (Σ mean·ticks / Σ ticks over the rows where the mean is known);
    /// - `util_min` = ⌊min of the row `util_mean`s⌋ (per-tick minima are not kept);
    /// - `util_max`, `temp_max`, `power_max_mw`, `mem_used_max` = the max of the row maxima;
    /// - `mem_used_mean` = the plain mean of the row `mem_used_max`s;
    /// - `energy_wh` = Σ (`power_mean_mw` / 1000 × `persist_interval` in s) / 3600: every
    ///   row counts as one whole interval, so a short first or last interval is overcounted.
    ///
    /// `user_hourly`, per (GPU, uid) over the `process_sessions` overlapping the hour. A
    /// session only keeps totals, so its contribution is an approximation: its sums are taken
    /// as spread evenly over `[first_seen, end)`, `end = max(last_seen, first_seen + 1 s)`,
    /// and the hour gets `share = overlap of that span with the hour / (end - first_seen)` of
    /// them. Over all hours the shares of a session add up to 1. A session that is still
    /// running when its hour is rolled up is split by its span and sums at that moment.
    /// - `gpu_seconds` = Σ `gpu_seconds` × share;
    /// - `memory_gib_hours` = Σ `memory_byte_seconds` × share / 2^30 / 3600;
    /// - `peak_memory_bytes` = the largest session peak (over each session's whole life, not
    ///   only this hour; not a sum over concurrent processes);
    /// - `processes` = the number of sessions;
    /// - `user` = the name on the session seen last (one row per uid even if names differ).
    ///
    /// With `outbox`, the hour's upload payload is queued in the same transaction.
    pub fn rollup_hour(
        &mut self,
        hour_ms: i64,
        persist_interval: Duration,
        outbox: Option<&super::OutboxOptions>,
    ) -> Result<RollupSummary, StoreError> {
        let hour_ms = hour_start(hour_ms);
        let end_ms = hour_ms.saturating_add(HOUR_MS);
        self.write_tx(|tx| {
            tx.execute("DELETE FROM gpu_hourly WHERE hour_ms = ?1", [hour_ms])
                .map_err(StoreError::Write)?;
            tx.execute("DELETE FROM user_hourly WHERE hour_ms = ?1", [hour_ms])
                .map_err(StoreError::Write)?;
            let gpu_rows = tx
                .prepare_cached(ROLLUP_GPU)
                .and_then(|mut insert| {
                    insert.execute(rusqlite::params![
                        hour_ms,
                        end_ms,
                        persist_interval.as_secs_f64()
                    ])
                })
                .map_err(StoreError::Write)?;
            let user_rows = tx
                .prepare_cached(ROLLUP_USER)
                .and_then(|mut insert| {
                    insert.execute(rusqlite::params![hour_ms, end_ms, MIN_SESSION_MS, GIB])
                })
                .map_err(StoreError::Write)?;
            tx.execute(
                "INSERT OR IGNORE INTO rolled_up_hours (hour_ms) VALUES (?1)",
                [hour_ms],
            )
            .map_err(StoreError::Write)?;
            let dropped_uploads = match outbox {
                Some(options) => super::outbox::queue_hour(
                    tx,
                    hour_ms,
                    options,
                    super::events::unix_ms(std::time::SystemTime::now()),
                )
                .map_err(StoreError::Write)?,
                None => Vec::new(),
            };
            Ok(RollupSummary {
                gpu_rows,
                user_rows,
                dropped_uploads,
            })
        })
    }

    /// Closed hours (ending at or before `now_ms`) that have raw gpu_samples but no entry in
    /// rolled_up_hours, oldest first — what a daemon that was down must roll up at startup.
    pub fn hours_needing_rollup(&self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
        // An hour is closed when it ends at or before now, i.e. starts before now's hour.
        let open_hour = hour_start(now_ms);
        let mut select = self
            .conn
            .prepare_cached(HOURS_NEEDING_ROLLUP)
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([open_hour, HOUR_MS], |row| row.get(0))
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// The gpu_samples of one GPU (or all when None) in [since_ms, until_ms), oldest first
    /// (then by GPU index).
    pub fn gpu_samples(
        &self,
        gpu_index: Option<u32>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<GpuSampleRow>, StoreError> {
        // Two statements rather than `?3 IS NULL OR ...`, so that each gets its index: the
        // primary key for one GPU, gpu_samples_by_time for all.
        let mut select = match gpu_index {
            Some(_) => self.conn.prepare_cached(&format!(
                "SELECT {SAMPLE_COLUMNS} FROM {SAMPLES_JOINED} \
                 WHERE s.gpu_index = ?3 AND s.time_ms >= ?1 AND s.time_ms < ?2 \
                 ORDER BY s.time_ms"
            )),
            None => self.conn.prepare_cached(&format!(
                "SELECT {SAMPLE_COLUMNS} FROM {SAMPLES_JOINED} \
                 WHERE s.time_ms >= ?1 AND s.time_ms < ?2 ORDER BY s.time_ms, s.gpu_index"
            )),
        }
        .map_err(StoreError::Read)?;
        let rows = match gpu_index {
            Some(gpu_index) => {
                select.query_map(rusqlite::params![since_ms, until_ms, gpu_index], sample_row)
            }
            None => select.query_map(rusqlite::params![since_ms, until_ms], sample_row),
        }
        .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// Sessions whose [first_seen, last_seen] overlaps [since_ms, until_ms), newest last_seen
    /// first.
    pub fn sessions(&self, since_ms: i64, until_ms: i64) -> Result<Vec<StoredSession>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM process_sessions \
                 WHERE last_seen_ms >= ?1 AND first_seen_ms < ?2 \
                 ORDER BY last_seen_ms DESC, id DESC"
            ))
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([since_ms, until_ms], stored_session)
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }
}

pub(super) fn sample_row(row: &Row<'_>) -> rusqlite::Result<GpuSampleRow> {
    Ok(GpuSampleRow {
        time_ms: row.get("time_ms")?,
        gpu_index: row.get("gpu_index")?,
        uuid: row.get("uuid")?,
        pci_bus_id: row.get("pci_bus_id")?,
        name: row.get("name")?,
        ticks: row.get("ticks")?,
        util_mean: row.get("util_mean")?,
        util_max: row.get("util_max")?,
        mem_util_mean: row.get("mem_util_mean")?,
        mem_used_max: row.get("mem_used_max")?,
        mem_total: row.get("mem_total")?,
        temp_mean: row.get("temp_mean")?,
        temp_max: row.get("temp_max")?,
        power_mean_mw: row.get("power_mean_mw")?,
        power_max_mw: row.get("power_max_mw")?,
        fan_mean: row.get("fan_mean")?,
        sm_clock_mean: row.get("sm_clock_mean")?,
        mem_clock_mean: row.get("mem_clock_mean")?,
    })
}

fn stored_session(row: &Row<'_>) -> rusqlite::Result<StoredSession> {
    Ok(StoredSession {
        id: row.get("id")?,
        pid: row.get("pid")?,
        start_time_ms: row.get("start_time_ms")?,
        gpu_index: row.get("gpu_index")?,
        first_seen_ms: row.get("first_seen_ms")?,
        last_seen_ms: row.get("last_seen_ms")?,
        uid: row.get("uid")?,
        user: row.get("user")?,
        name: row.get("name")?,
        cmdline: row.get("cmdline")?,
        container_id: row.get("container_id")?,
        container_runtime: row.get("container_runtime")?,
        pod_uid: row.get("pod_uid")?,
        peak_memory_bytes: row.get("peak_memory_bytes")?,
        memory_byte_seconds: row.get("memory_byte_seconds")?,
        gpu_seconds: row.get("gpu_seconds")?,
        util_seconds: row.get("util_seconds")?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use rusqlite::Connection;
    use rusqlite::types::Value;

    use super::super::{EventKind, EventQuery, events, schema};
    use super::*;

    const H0: i64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;
    const TEN_S: Duration = Duration::from_secs(10);

    fn pragma_i64(store: &Store, name: &str) -> i64 {
        store
            .conn
            .pragma_query_value(None, name, |row| row.get(0))
            .unwrap()
    }

    fn table_names(store: &Store) -> Vec<String> {
        let mut select = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let rows = select.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// Every row of `table`, in primary-key order, as SQLite holds it.
    fn dump(store: &Store, table: &str, order: &str) -> Vec<Vec<Value>> {
        let mut select = store
            .conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let columns = select.column_count();
        let rows = select
            .query_map([], |row| {
                (0..columns).map(|i| row.get::<_, Value>(i)).collect()
            })
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// A sample row at `time_ms` on `gpu`, its values varying with `n`; every so often a
    /// metric is unknown.
    fn sample(time_ms: i64, gpu: u32, n: u32) -> GpuSampleRow {
        let known = |every: u32| !n.is_multiple_of(every);
        GpuSampleRow {
            time_ms,
            gpu_index: gpu,
            uuid: Some(format!("GPU-{gpu:04}")),
            pci_bus_id: Some(format!("00000000:{:02X}:00.0", gpu + 1)),
            name: Some("NVIDIA H100 80GB HBM3".to_string()),
            ticks: [10, 10, 7, 10, 3, 10][(n % 6) as usize],
            util_mean: known(17).then(|| f64::from((n * 37 + gpu * 11) % 1000) / 10.3),
            util_max: known(19).then_some((n * 13 + gpu) % 101),
            mem_util_mean: known(23).then(|| f64::from(n % 97) / 1.7),
            mem_used_max: known(13).then(|| u64::from(n) * 123_456_789 + u64::from(gpu) * 7),
            mem_total: Some(85_899_345_920),
            temp_mean: known(11).then(|| 30.0 + f64::from((n * 7 + gpu) % 500) / 9.0),
            temp_max: known(29).then(|| 35 + i32::try_from((n * 3 + gpu) % 60).unwrap()),
            power_mean_mw: known(7).then(|| 60_000.0 + f64::from((n * 7919 + gpu) % 640_000) / 3.0),
            power_max_mw: known(31).then_some(70_000 + (n * 104_729 + gpu) % 630_000),
            fan_mean: None,
            sm_clock_mean: Some(1_980.0 - f64::from(n % 50)),
            mem_clock_mean: Some(2_619.0),
        }
    }

    fn update(pid: u32, gpu: u32, first_seen_ms: i64, last_seen_ms: i64) -> SessionUpdate {
        SessionUpdate {
            pid,
            start_time_ms: 1_600_000_000_000 + i64::from(pid),
            gpu_index: gpu,
            first_seen_ms,
            last_seen_ms,
            uid: 1000 + pid % 3,
            user: format!("user{}", pid % 3),
            name: "python".to_string(),
            cmdline: format!("python train.py --pid {pid}"),
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            peak_memory_bytes: Some(u64::from(pid) << 20),
            memory_byte_seconds: 0.0,
            gpu_seconds: 0.0,
            util_seconds: None,
        }
    }

    /// `actual` is `expected` within 1e-9, relative to the value when it is above 1 (SQLite
    /// sums with compensation, so the last bits of large sums may differ from a plain loop).
    fn assert_close(what: &str, actual: Option<f64>, expected: Option<f64>) {
        match (actual, expected) {
            (None, None) => {}
            (Some(actual), Some(expected)) => assert!(
                (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
                "{what}: {actual} != {expected}"
            ),
            _ => panic!("{what}: {actual:?} != {expected:?}"),
        }
    }

    #[test]
    fn migration_2_applies_on_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.db")).unwrap();
        assert_eq!(pragma_i64(&store, "user_version"), schema::known_version());
        // 2 = incremental.
        assert_eq!(pragma_i64(&store, "auto_vacuum"), 2);
        assert_eq!(pragma_i64(&store, "journal_size_limit"), 67_108_864);
        let tables = table_names(&store);
        for table in [
            "events",
            "gpu_samples",
            "process_sessions",
            "gpu_hourly",
            "user_hourly",
            "rolled_up_hours",
            "imported_records",
        ] {
            assert!(tables.iter().any(|name| name == table), "{tables:?}");
        }
    }

    #[test]
    fn migration_2_applies_on_a_version_1_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            schema::migrate_to(&mut conn, &path, 1).unwrap();
            let mut store = Store {
                conn,
                path: path.clone(),
                identity: None,
            };
            assert_eq!(pragma_i64(&store, "user_version"), 1);
            assert!(!table_names(&store).contains(&"gpu_samples".to_string()));
            store
                .insert_events_before_via(&[events::tests::event(EventKind::Kill, 1_000, true)])
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(pragma_i64(&store, "user_version"), schema::known_version());
        // The events survive, and the new tables work.
        let query = EventQuery {
            since_ms: None,
            kind: None,
            limit: 10,
        };
        assert_eq!(store.events(&query).unwrap().len(), 1);
        store
            .write_history(&[sample(H0, 0, 1)], &[update(1, 0, H0, H0 + 5_000)])
            .unwrap();
        assert_eq!(store.gpu_samples(None, H0, H0 + 1).unwrap().len(), 1);
        // Tables existed before the pragma, so the file keeps auto_vacuum = none.
        assert_eq!(pragma_i64(&store, "auto_vacuum"), 0);
    }

    #[test]
    fn migrate_to_an_older_version_leaves_a_newer_file_alone() {
        let mut store = Store::open_in_memory().unwrap();
        schema::migrate_to(&mut store.conn, Path::new(":memory:"), 1).unwrap();
        assert_eq!(pragma_i64(&store, "user_version"), schema::known_version());
    }

    #[test]
    fn write_history_round_trips() {
        let mut store = Store::open_in_memory().unwrap();
        let mut bare = sample(H0, 1, 0);
        bare.uuid = None;
        bare.pci_bus_id = None;
        bare.name = None;
        bare.sm_clock_mean = None;
        bare.mem_clock_mean = None;
        bare.mem_total = None;
        let mut big = sample(H0 + 10_000, 0, 5);
        big.mem_used_max = Some(i64::MAX as u64);
        big.power_max_mw = Some(u32::MAX);
        big.temp_max = Some(-5);
        let samples = vec![sample(H0, 0, 1), bare, big, sample(H0 + 10_000, 1, 2)];
        let mut contained = update(7, 0, H0, H0 + 9_000);
        contained.container_id = Some("abc123".to_string());
        contained.container_runtime = Some("containerd".to_string());
        contained.pod_uid = Some("pod-1".to_string());
        contained.memory_byte_seconds = 1.5e12;
        contained.gpu_seconds = 9.0;
        contained.util_seconds = Some(4.25);
        let mut no_peak = update(8, 1, H0 + 1_000, H0 + 2_000);
        no_peak.peak_memory_bytes = None;
        store
            .write_history(&samples, &[contained.clone(), no_peak.clone()])
            .unwrap();

        let read = store.gpu_samples(None, H0, H0 + 20_000).unwrap();
        // Oldest first, then by GPU.
        assert_eq!(
            read,
            vec![
                samples[0].clone(),
                samples[1].clone(),
                samples[2].clone(),
                samples[3].clone()
            ]
        );

        let sessions = store.sessions(H0, H0 + HOUR_MS).unwrap();
        assert_eq!(sessions.len(), 2);
        for (stored, written) in sessions.iter().zip([&contained, &no_peak]) {
            let expected = StoredSession {
                id: stored.id,
                pid: written.pid,
                start_time_ms: written.start_time_ms,
                gpu_index: written.gpu_index,
                first_seen_ms: written.first_seen_ms,
                last_seen_ms: written.last_seen_ms,
                uid: written.uid,
                user: written.user.clone(),
                name: written.name.clone(),
                cmdline: written.cmdline.clone(),
                container_id: written.container_id.clone(),
                container_runtime: written.container_runtime.clone(),
                pod_uid: written.pod_uid.clone(),
                peak_memory_bytes: written.peak_memory_bytes,
                memory_byte_seconds: written.memory_byte_seconds,
                gpu_seconds: written.gpu_seconds,
                util_seconds: written.util_seconds,
            };
            assert_eq!(stored, &expected);
        }
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        store.write_history(&[], &[]).unwrap();
        assert!(
            store
                .gpu_samples(None, i64::MIN, i64::MAX)
                .unwrap()
                .is_empty()
        );
        assert!(store.sessions(i64::MIN, i64::MAX).unwrap().is_empty());
    }

    #[test]
    fn writing_a_batch_twice_keeps_one_sample_per_key() {
        let mut store = Store::open_in_memory().unwrap();
        let samples: Vec<_> = (0..3)
            .flat_map(|gpu| (0..4).map(move |n| sample(H0 + i64::from(n) * 10_000, gpu, n + 1)))
            .collect();
        store.write_history(&samples, &[]).unwrap();
        store.write_history(&samples, &[]).unwrap();
        assert_eq!(store.gpu_samples(None, H0, H0 + HOUR_MS).unwrap().len(), 12);

        // A retry with other values replaces the row rather than adding one.
        let mut changed = samples[0].clone();
        changed.util_mean = Some(99.5);
        store.write_history(&[changed.clone()], &[]).unwrap();
        let gpu0 = store.gpu_samples(Some(0), H0, H0 + 1).unwrap();
        assert_eq!(gpu0, vec![changed]);
        assert_eq!(store.gpu_samples(None, H0, H0 + HOUR_MS).unwrap().len(), 12);
    }

    #[test]
    fn gpu_samples_filter_by_gpu_and_half_open_range() {
        let mut store = Store::open_in_memory().unwrap();
        let samples: Vec<_> = (0..2)
            .flat_map(|gpu| (0..5).map(move |n| sample(H0 + i64::from(n) * 10_000, gpu, n + 1)))
            .collect();
        store.write_history(&samples, &[]).unwrap();
        let key = |rows: Vec<GpuSampleRow>| -> Vec<(i64, u32)> {
            rows.iter()
                .map(|row| (row.time_ms - H0, row.gpu_index))
                .collect()
        };
        assert_eq!(
            key(store
                .gpu_samples(Some(1), H0 + 10_000, H0 + 40_000)
                .unwrap()),
            vec![(10_000, 1), (20_000, 1), (30_000, 1)]
        );
        assert_eq!(
            key(store.gpu_samples(None, H0 + 30_000, H0 + 50_000).unwrap()),
            vec![(30_000, 0), (30_000, 1), (40_000, 0), (40_000, 1)]
        );
        assert!(
            store
                .gpu_samples(Some(2), H0, H0 + HOUR_MS)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .gpu_samples(None, H0 + 40_001, H0 + 50_000)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn sessions_accumulate_across_three_intervals() {
        let mut store = Store::open_in_memory().unwrap();
        // Interval 1: no utilization known, no container known yet.
        let mut first = update(42, 0, H0 + 10_000, H0 + 19_000);
        first.peak_memory_bytes = None;
        first.memory_byte_seconds = 1_000.5;
        first.gpu_seconds = 9.0;
        first.util_seconds = None;
        store.write_history(&[], &[first.clone()]).unwrap();
        let read = store.sessions(H0, H0 + HOUR_MS).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].util_seconds, None);
        assert_eq!(read[0].peak_memory_bytes, None);
        let id = read[0].id;

        // Interval 2: utilization known, a peak, a container, a new command line.
        let mut second = update(42, 0, H0 + 20_000, H0 + 29_000);
        second.peak_memory_bytes = Some(5_000);
        second.memory_byte_seconds = 2_000.25;
        second.gpu_seconds = 10.0;
        second.util_seconds = Some(2.5);
        second.container_id = Some("c1".to_string());
        second.container_runtime = Some("docker".to_string());
        second.cmdline = "python train.py --resumed".to_string();
        store.write_history(&[], &[second.clone()]).unwrap();

        // Interval 3 (written late): an earlier first_seen, a lower peak, no utilization, no
        // container detected this time, a new user name.
        let mut third = update(42, 0, H0 + 5_000, H0 + 25_000);
        third.peak_memory_bytes = Some(3_000);
        third.memory_byte_seconds = 0.125;
        third.gpu_seconds = 0.5;
        third.util_seconds = None;
        third.user = "renamed".to_string();
        store.write_history(&[], &[third.clone()]).unwrap();

        let read = store.sessions(H0, H0 + HOUR_MS).unwrap();
        assert_eq!(read.len(), 1);
        let session = &read[0];
        assert_eq!(session.id, id);
        assert_eq!(session.first_seen_ms, H0 + 5_000);
        assert_eq!(session.last_seen_ms, H0 + 29_000);
        assert_eq!(session.peak_memory_bytes, Some(5_000));
        // Dyadic values, so the sums are exact.
        assert_eq!(session.memory_byte_seconds, 1_000.5 + 2_000.25 + 0.125);
        assert_eq!(session.gpu_seconds, 9.0 + 10.0 + 0.5);
        assert_eq!(session.util_seconds, Some(2.5));
        assert_eq!(session.user, "renamed");
        assert_eq!(session.cmdline, third.cmdline);
        assert_eq!(session.container_id.as_deref(), Some("c1"));
        assert_eq!(session.container_runtime.as_deref(), Some("docker"));
        assert_eq!(session.pod_uid, None);

        // A fourth interval with utilization adds to it.
        let mut fourth = update(42, 0, H0 + 30_000, H0 + 39_000);
        fourth.util_seconds = Some(0.75);
        fourth.peak_memory_bytes = None;
        store.write_history(&[], &[fourth]).unwrap();
        let session = &store.sessions(H0, H0 + HOUR_MS).unwrap()[0];
        assert_eq!(session.util_seconds, Some(3.25));
        assert_eq!(session.peak_memory_bytes, Some(5_000));

        // Another start time or GPU is another session.
        let mut reused_pid = update(42, 0, H0 + 40_000, H0 + 41_000);
        reused_pid.start_time_ms += 1;
        let other_gpu = update(42, 1, H0 + 40_000, H0 + 41_000);
        store.write_history(&[], &[reused_pid, other_gpu]).unwrap();
        assert_eq!(store.sessions(H0, H0 + HOUR_MS).unwrap().len(), 3);
    }

    #[test]
    fn a_failing_batch_writes_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON process_sessions
                 WHEN NEW.name = 'refuse' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let mut bad = update(2, 0, H0, H0 + 1_000);
        bad.name = "refuse".to_string();
        let error = store
            .write_history(&[sample(H0, 0, 1)], &[update(1, 0, H0, H0 + 1_000), bad])
            .unwrap_err();
        assert!(matches!(error, StoreError::Write(_)), "{error:?}");
        assert!(
            store
                .gpu_samples(None, i64::MIN, i64::MAX)
                .unwrap()
                .is_empty()
        );
        assert!(store.sessions(i64::MIN, i64::MAX).unwrap().is_empty());
    }

    #[test]
    fn sessions_overlapping_a_range_newest_first() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .write_history(
                &[],
                &[
                    update(1, 0, H0, H0 + 10_000),
                    update(2, 0, H0 + 10_000, H0 + 30_000),
                    update(3, 0, H0 + 25_000, H0 + 26_000),
                    update(4, 0, H0 + 40_000, H0 + 50_000),
                ],
            )
            .unwrap();
        let pids = |since_ms: i64, until_ms: i64| -> Vec<u32> {
            let sessions = store.sessions(H0 + since_ms, H0 + until_ms).unwrap();
            sessions.iter().map(|session| session.pid).collect()
        };
        assert_eq!(pids(0, 100_000), vec![4, 2, 3, 1]);
        // last_seen is inclusive, until is not.
        assert_eq!(pids(10_000, 25_000), vec![2, 1]);
        assert_eq!(pids(26_001, 40_000), vec![2]);
        assert_eq!(pids(50_001, 60_000), Vec::<u32>::new());
    }

    /// A `gpu_hourly` row as the test reads it.
    #[derive(Debug)]
    struct GpuHourly {
        samples: i64,
        util_mean: Option<f64>,
        util_min: Option<i64>,
        util_max: Option<i64>,
        mem_used_mean: Option<f64>,
        mem_used_max: Option<i64>,
        temp_mean: Option<f64>,
        temp_max: Option<i64>,
        power_mean_mw: Option<f64>,
        power_max_mw: Option<i64>,
        energy_wh: Option<f64>,
    }

    fn gpu_hourly(store: &Store, hour_ms: i64) -> BTreeMap<u32, GpuHourly> {
        let mut select = store
            .conn
            .prepare("SELECT * FROM gpu_hourly WHERE hour_ms = ?1")
            .unwrap();
        let rows = select
            .query_map([hour_ms], |row| {
                Ok((
                    row.get("gpu_index")?,
                    GpuHourly {
                        samples: row.get("samples")?,
                        util_mean: row.get("util_mean")?,
                        util_min: row.get("util_min")?,
                        util_max: row.get("util_max")?,
                        mem_used_mean: row.get("mem_used_mean")?,
                        mem_used_max: row.get("mem_used_max")?,
                        temp_mean: row.get("temp_mean")?,
                        temp_max: row.get("temp_max")?,
                        power_mean_mw: row.get("power_mean_mw")?,
                        power_max_mw: row.get("power_max_mw")?,
                        energy_wh: row.get("energy_wh")?,
                    },
                ))
            })
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// The tick-weighted mean of the known values, as the rollup defines it.
    fn weighted(
        rows: &[&GpuSampleRow],
        value: impl Fn(&GpuSampleRow) -> Option<f64>,
    ) -> Option<f64> {
        let (sum, ticks) = rows
            .iter()
            .filter_map(|row| value(row).map(|v| (v * f64::from(row.ticks), row.ticks)))
            .fold((None::<f64>, 0u64), |(sum, ticks), (v, t)| {
                (Some(sum.unwrap_or(0.0) + v), ticks + u64::from(t))
            });
        sum.filter(|_| ticks > 0).map(|sum| sum / ticks as f64)
    }

    /// What `rollup_hour` must write to `gpu_hourly` for `rows` (one GPU, one hour).
    fn expected_gpu_hourly(rows: &[&GpuSampleRow], interval: Duration) -> GpuHourly {
        let max = |value: &dyn Fn(&GpuSampleRow) -> Option<i64>| {
            rows.iter().filter_map(|row| value(row)).max()
        };
        let mem_used: Vec<f64> = rows
            .iter()
            .filter_map(|row| row.mem_used_max)
            .map(|v| v as f64)
            .collect();
        let powers: Vec<f64> = rows.iter().filter_map(|row| row.power_mean_mw).collect();
        GpuHourly {
            samples: rows.len() as i64,
            util_mean: weighted(rows, |row| row.util_mean),
            util_min: rows
                .iter()
                .filter_map(|row| row.util_mean)
                .reduce(f64::min)
                .map(|low| low.floor() as i64),
            util_max: max(&|row| row.util_max.map(i64::from)),
            mem_used_mean: (!mem_used.is_empty())
                .then(|| mem_used.iter().sum::<f64>() / mem_used.len() as f64),
            mem_used_max: max(&|row| row.mem_used_max.map(|v| i64::try_from(v).unwrap())),
            temp_mean: weighted(rows, |row| row.temp_mean),
            temp_max: max(&|row| row.temp_max.map(i64::from)),
            power_mean_mw: weighted(rows, |row| row.power_mean_mw),
            power_max_mw: max(&|row| row.power_max_mw.map(i64::from)),
            energy_wh: (!powers.is_empty()).then(|| {
                powers
                    .iter()
                    .map(|mw| mw / 1000.0 * interval.as_secs_f64())
                    .sum::<f64>()
                    / 3600.0
            }),
        }
    }

    fn assert_gpu_hourly(gpu: u32, actual: &GpuHourly, expected: &GpuHourly) {
        let what = |column: &str| format!("gpu {gpu} {column}");
        assert_eq!(actual.samples, expected.samples, "{}", what("samples"));
        assert_close(&what("util_mean"), actual.util_mean, expected.util_mean);
        assert_eq!(actual.util_min, expected.util_min, "{}", what("util_min"));
        assert_eq!(actual.util_max, expected.util_max, "{}", what("util_max"));
        assert_close(
            &what("mem_used_mean"),
            actual.mem_used_mean,
            expected.mem_used_mean,
        );
        assert_eq!(
            actual.mem_used_max,
            expected.mem_used_max,
            "{}",
            what("mem_used_max")
        );
        assert_close(&what("temp_mean"), actual.temp_mean, expected.temp_mean);
        assert_eq!(actual.temp_max, expected.temp_max, "{}", what("temp_max"));
        assert_close(
            &what("power_mean_mw"),
            actual.power_mean_mw,
            expected.power_mean_mw,
        );
        assert_eq!(
            actual.power_max_mw,
            expected.power_max_mw,
            "{}",
            what("power_max_mw")
        );
        assert_close(&what("energy_wh"), actual.energy_wh, expected.energy_wh);
    }

    /// A `user_hourly` row as the test reads it, keyed by (gpu, uid).
    #[derive(Debug, PartialEq)]
    struct UserHourly {
        user: String,
        gpu_seconds: f64,
        memory_gib_hours: f64,
        peak_memory_bytes: Option<i64>,
        processes: i64,
    }

    fn user_hourly(store: &Store, hour_ms: i64) -> BTreeMap<(u32, u32), UserHourly> {
        let mut select = store
            .conn
            .prepare("SELECT * FROM user_hourly WHERE hour_ms = ?1")
            .unwrap();
        let rows = select
            .query_map([hour_ms], |row| {
                Ok((
                    (row.get("gpu_index")?, row.get("uid")?),
                    UserHourly {
                        user: row.get("user")?,
                        gpu_seconds: row.get("gpu_seconds")?,
                        memory_gib_hours: row.get("memory_gib_hours")?,
                        peak_memory_bytes: row.get("peak_memory_bytes")?,
                        processes: row.get("processes")?,
                    },
                ))
            })
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// What `rollup_hour` must write to `user_hourly` for the hour at `hour_ms`, recomputed
    /// from the sessions as stored.
    fn expected_user_hourly(
        sessions: &[StoredSession],
        hour_ms: i64,
    ) -> BTreeMap<(u32, u32), UserHourly> {
        let mut expected: BTreeMap<(u32, u32), (UserHourly, i64)> = BTreeMap::new();
        for session in sessions {
            let end = session
                .last_seen_ms
                .max(session.first_seen_ms + MIN_SESSION_MS);
            let overlap = end.min(hour_ms + HOUR_MS) - session.first_seen_ms.max(hour_ms);
            if overlap <= 0 {
                continue;
            }
            let share = overlap as f64 / (end - session.first_seen_ms) as f64;
            let (row, latest_seen) = expected
                .entry((session.gpu_index, session.uid))
                .or_insert_with(|| {
                    (
                        UserHourly {
                            user: session.user.clone(),
                            gpu_seconds: 0.0,
                            memory_gib_hours: 0.0,
                            peak_memory_bytes: None,
                            processes: 0,
                        },
                        i64::MIN,
                    )
                });
            if session.last_seen_ms > *latest_seen {
                *latest_seen = session.last_seen_ms;
                row.user = session.user.clone();
            }
            row.gpu_seconds += session.gpu_seconds * share;
            row.memory_gib_hours += session.memory_byte_seconds * share / GIB / 3600.0;
            row.peak_memory_bytes = row
                .peak_memory_bytes
                .max(session.peak_memory_bytes.map(|v| i64::try_from(v).unwrap()));
            row.processes += 1;
        }
        expected
            .into_iter()
            .map(|(key, (row, _))| (key, row))
            .collect()
    }

    fn assert_user_hourly(
        actual: &BTreeMap<(u32, u32), UserHourly>,
        expected: &BTreeMap<(u32, u32), UserHourly>,
    ) {
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (key, expected) in expected {
            let actual = &actual[key];
            assert_eq!(actual.user, expected.user, "{key:?}");
            assert_eq!(actual.processes, expected.processes, "{key:?}");
            assert_eq!(
                actual.peak_memory_bytes, expected.peak_memory_bytes,
                "{key:?}"
            );
            assert_close(
                &format!("{key:?} gpu_seconds"),
                Some(actual.gpu_seconds),
                Some(expected.gpu_seconds),
            );
            assert_close(
                &format!("{key:?} memory_gib_hours"),
                Some(actual.memory_gib_hours),
                Some(expected.memory_gib_hours),
            );
        }
    }

    /// 3 GPUs × 360 rows of 10 s in hour H0, a few rows either side of it, and sessions in,
    /// across and around the hour.
    fn write_an_hour(store: &mut Store) -> Vec<GpuSampleRow> {
        let mut samples = Vec::new();
        for gpu in 0..3 {
            for n in 0..360u32 {
                samples.push(sample(H0 + i64::from(n) * 10_000, gpu, n + 1 + gpu * 1000));
            }
            // Just outside the hour on both sides: must not count.
            samples.push(sample(H0 - 10_000, gpu, 7_777));
            samples.push(sample(H0 + HOUR_MS, gpu, 8_888));
        }
        // One GPU whose metrics are all unknown.
        for n in 0..6 {
            let mut row = sample(H0 + n * 10_000, 7, 0);
            (row.util_mean, row.util_max, row.mem_used_max, row.temp_mean) =
                (None, None, None, None);
            (row.temp_max, row.power_mean_mw, row.power_max_mw) = (None, None, None);
            samples.push(row);
        }
        let mut sessions = Vec::new();
        for pid in 1..=30u32 {
            let start = H0 - 20 * 60_000 + i64::from(pid) * 3 * 60_000 + i64::from(pid) * 777;
            let length = i64::from(pid % 7) * 11 * 60_000 + i64::from(pid % 2) * 1_234;
            let mut session = update(pid, pid % 3, start, start + length);
            session.memory_byte_seconds = f64::from(pid) * 1.1e12;
            session.gpu_seconds = (length / 1000) as f64 * 0.9;
            session.util_seconds = (pid % 4 != 0).then(|| f64::from(pid) * 3.3);
            session.peak_memory_bytes = (pid % 5 != 0).then(|| u64::from(pid) * 999_999_937);
            sessions.push(session);
        }
        store.write_history(&samples, &sessions).unwrap();
        samples
    }

    #[test]
    fn rollup_matches_a_plain_recomputation_and_is_idempotent() {
        let mut store = Store::open_in_memory().unwrap();
        let samples = write_an_hour(&mut store);

        let summary = store.rollup_hour(H0, TEN_S, None).unwrap();
        let stored = store.sessions(i64::MIN, i64::MAX).unwrap();
        let expected_users = expected_user_hourly(&stored, H0);
        assert_eq!(
            summary,
            RollupSummary {
                gpu_rows: 4,
                user_rows: expected_users.len(),
                dropped_uploads: Vec::new(),
            }
        );

        let actual = gpu_hourly(&store, H0);
        assert_eq!(actual.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 7]);
        for (gpu, actual) in &actual {
            let rows: Vec<&GpuSampleRow> = samples
                .iter()
                .filter(|row| row.gpu_index == *gpu && (H0..H0 + HOUR_MS).contains(&row.time_ms))
                .collect();
            let expected = expected_gpu_hourly(&rows, TEN_S);
            if *gpu != 7 {
                assert_eq!(expected.samples, 360);
            }
            assert_gpu_hourly(*gpu, actual, &expected);
        }
        // The all-unknown GPU: counted, every metric NULL.
        let unknown = &actual[&7];
        assert_eq!(unknown.samples, 6);
        assert!(unknown.util_mean.is_none() && unknown.util_min.is_none());
        assert!(unknown.power_mean_mw.is_none() && unknown.energy_wh.is_none());

        assert!(expected_users.len() >= 3, "{expected_users:?}");
        assert_user_hourly(&user_hourly(&store, H0), &expected_users);

        // Twice: the same tables, byte for byte.
        let gpu_before = dump(&store, "gpu_hourly", "hour_ms, gpu_index");
        let user_before = dump(&store, "user_hourly", "hour_ms, gpu_index, uid");
        let summary_again = store.rollup_hour(H0, TEN_S, None).unwrap();
        assert_eq!(summary_again, summary);
        assert_eq!(dump(&store, "gpu_hourly", "hour_ms, gpu_index"), gpu_before);
        assert_eq!(
            dump(&store, "user_hourly", "hour_ms, gpu_index, uid"),
            user_before
        );
        assert_eq!(
            dump(&store, "rolled_up_hours", "hour_ms"),
            vec![vec![Value::Integer(H0)]]
        );
    }

    #[test]
    fn a_second_rollup_replaces_the_first() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .write_history(
                &[sample(H0, 0, 1), sample(H0, 1, 2)],
                &[update(1, 0, H0, H0 + 10_000)],
            )
            .unwrap();
        store.rollup_hour(H0, TEN_S, None).unwrap();
        // A late row for GPU 0, and GPU 1's row gone (say, deleted by retention).
        store
            .write_history(&[sample(H0 + 10_000, 0, 3)], &[])
            .unwrap();
        store
            .conn
            .execute("DELETE FROM gpu_samples WHERE gpu_index = 1", [])
            .unwrap();
        let summary = store.rollup_hour(H0, TEN_S, None).unwrap();
        assert_eq!(
            summary,
            RollupSummary {
                gpu_rows: 1,
                user_rows: 1,
                dropped_uploads: Vec::new(),
            }
        );
        let rows = gpu_hourly(&store, H0);
        assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(rows[&0].samples, 2);
    }

    #[test]
    fn rollup_of_an_unaligned_hour_is_floored() {
        let mut store = Store::open_in_memory().unwrap();
        store.write_history(&[sample(H0, 0, 1)], &[]).unwrap();
        store.rollup_hour(H0 + 1_234, TEN_S, None).unwrap();
        assert_eq!(gpu_hourly(&store, H0).len(), 1);
        assert_eq!(
            store.hours_needing_rollup(H0 + 2 * HOUR_MS).unwrap(),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn user_hourly_gives_a_session_inside_an_hour_its_whole_sums_and_splits_one_across_two() {
        let mut store = Store::open_in_memory().unwrap();
        let mut inside = update(1, 0, H0 + 10 * 60_000, H0 + 20 * 60_000);
        inside.gpu_seconds = 600.0;
        inside.memory_byte_seconds = GIB * 3600.0 * 2.0;
        inside.peak_memory_bytes = Some(4_000);
        // Seen once: counts as one second, all of it in this hour.
        let mut once = update(4, 0, H0 + 30 * 60_000, H0 + 30 * 60_000);
        once.gpu_seconds = 1.0;
        once.memory_byte_seconds = GIB * 36.0;
        once.peak_memory_bytes = Some(9_000);
        // 45 minutes in H0, 15 in the next hour: 3/4 and 1/4.
        let mut across = update(2, 1, H0 + 15 * 60_000, H0 + 75 * 60_000);
        across.gpu_seconds = 3_600.0;
        across.memory_byte_seconds = GIB * 3600.0 * 8.0;
        store.write_history(&[], &[inside, once, across]).unwrap();

        let summary = store.rollup_hour(H0, TEN_S, None).unwrap();
        assert_eq!(
            summary,
            RollupSummary {
                gpu_rows: 0,
                user_rows: 2,
                dropped_uploads: Vec::new(),
            }
        );
        let rows = user_hourly(&store, H0);
        // pid 1 and 4 share uid 1001 and GPU 0.
        let user1 = &rows[&(0, 1001)];
        assert_eq!(user1.processes, 2);
        assert_eq!(user1.user, "user1");
        assert_eq!(user1.peak_memory_bytes, Some(9_000));
        assert_close("inside gpu_seconds", Some(user1.gpu_seconds), Some(601.0));
        assert_close("inside GiB-h", Some(user1.memory_gib_hours), Some(2.01));
        let user2 = &rows[&(1, 1002)];
        assert_eq!(user2.processes, 1);
        assert_close("across gpu_seconds", Some(user2.gpu_seconds), Some(2_700.0));
        assert_close("across GiB-h", Some(user2.memory_gib_hours), Some(6.0));

        store.rollup_hour(H0 + HOUR_MS, TEN_S, None).unwrap();
        let next = user_hourly(&store, H0 + HOUR_MS);
        assert_eq!(next.keys().copied().collect::<Vec<_>>(), vec![(1, 1002)]);
        assert_close(
            "rest gpu_seconds",
            Some(next[&(1, 1002)].gpu_seconds),
            Some(900.0),
        );
        assert_close(
            "rest GiB-h",
            Some(next[&(1, 1002)].memory_gib_hours),
            Some(2.0),
        );
        // Nothing is left for the hour before.
        store.rollup_hour(H0 - HOUR_MS, TEN_S, None).unwrap();
        assert!(user_hourly(&store, H0 - HOUR_MS).is_empty());
    }

    #[test]
    fn user_hourly_has_one_row_per_uid_named_by_the_latest_session() {
        let mut store = Store::open_in_memory().unwrap();
        let old_name = update(3, 0, H0, H0 + 60_000);
        let mut new_name = update(6, 0, H0 + 120_000, H0 + 180_000);
        new_name.user = "user0-renamed".to_string();
        store.write_history(&[], &[new_name, old_name]).unwrap();
        let summary = store.rollup_hour(H0, TEN_S, None).unwrap();
        assert_eq!(summary.user_rows, 1);
        let rows = user_hourly(&store, H0);
        assert_eq!(rows[&(0, 1000)].user, "user0-renamed");
        assert_eq!(rows[&(0, 1000)].processes, 2);
    }

    #[test]
    fn hours_needing_rollup_lists_closed_hours_with_data_and_no_rollup() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.hours_needing_rollup(H0).unwrap().is_empty());
        // Data in hours 0, 1, 3 and 5 (the last one still open); none in 2 and 4.
        let samples: Vec<_> = [0, 1, 3, 5]
            .into_iter()
            .flat_map(|hour| {
                [0, 1_800_000, HOUR_MS - 1].map(|offset| sample(H0 + hour * HOUR_MS + offset, 0, 1))
            })
            .chain([sample(H0 + 3 * HOUR_MS + 5, 1, 2)])
            .collect();
        store.write_history(&samples, &[]).unwrap();
        let now = H0 + 5 * HOUR_MS + 123;
        assert_eq!(
            store.hours_needing_rollup(now).unwrap(),
            vec![H0, H0 + HOUR_MS, H0 + 3 * HOUR_MS]
        );
        store.rollup_hour(H0 + HOUR_MS, TEN_S, None).unwrap();
        assert_eq!(
            store.hours_needing_rollup(now).unwrap(),
            vec![H0, H0 + 3 * HOUR_MS]
        );
        // An hour closes at its end exactly.
        assert_eq!(
            store.hours_needing_rollup(H0 + 6 * HOUR_MS).unwrap(),
            vec![H0, H0 + 3 * HOUR_MS, H0 + 5 * HOUR_MS]
        );
        assert_eq!(
            store.hours_needing_rollup(H0 + 6 * HOUR_MS - 1).unwrap(),
            vec![H0, H0 + 3 * HOUR_MS]
        );
        for hour in store.hours_needing_rollup(now).unwrap() {
            store.rollup_hour(hour, TEN_S, None).unwrap();
        }
        assert!(store.hours_needing_rollup(now).unwrap().is_empty());
    }

    #[test]
    fn hours_before_the_epoch_are_floored() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .write_history(&[sample(-1, 0, 1), sample(-HOUR_MS - 1, 0, 1)], &[])
            .unwrap();
        assert_eq!(
            store.hours_needing_rollup(0).unwrap(),
            vec![-2 * HOUR_MS, -HOUR_MS]
        );
        assert_eq!(hour_start(-1), -HOUR_MS);
        assert_eq!(hour_start(HOUR_MS), HOUR_MS);
    }
}
