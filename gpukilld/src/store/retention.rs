//! Retention: deleting what is older than each kind of data is kept, and giving the freed
//! pages back to the file system.
//!
//! [`Store::prune`] deletes in small transactions (at most `batch_rows` rows each), so the
//! write lock is never held for long: another writer waits at most one batch, and readers on
//! other connections (WAL) keep reading a consistent snapshot meanwhile. Then it runs
//! `PRAGMA incremental_vacuum` in steps (the store is created with `auto_vacuum =
//! INCREMENTAL`), so a store that drops old history shrinks without a full `VACUUM`, which
//! would rewrite the whole file under an exclusive lock.

use std::time::Duration;

use super::{Store, StoreError};

/// One hour in milliseconds: rollup rows cover `[hour_ms, hour_ms + HOUR_MS)`.
const HOUR_MS: i64 = 3_600_000;

/// Free pages handed back per `PRAGMA incremental_vacuum` step (4 MiB at the default page
/// size): each step is its own write transaction, so another writer waits at most one.
const VACUUM_STEP_PAGES: i64 = 1024;

/// The batched deletes; `?1` is the cutoff (strictly older rows go), `?2` the batch size.
/// Each subquery walks an index on the time column, so a batch costs its rows, not a scan.
const DELETE_SAMPLES: &str = "DELETE FROM gpu_samples WHERE (gpu_index, time_ms) IN (
        SELECT gpu_index, time_ms FROM gpu_samples WHERE time_ms < ?1 LIMIT ?2
    )";
const DELETE_SESSIONS: &str = "DELETE FROM process_sessions WHERE id IN (
        SELECT id FROM process_sessions WHERE last_seen_ms < ?1 LIMIT ?2
    )";
const DELETE_GPU_HOURLY: &str = "DELETE FROM gpu_hourly WHERE (hour_ms, gpu_index) IN (
        SELECT hour_ms, gpu_index FROM gpu_hourly WHERE hour_ms < ?1 LIMIT ?2
    )";
const DELETE_USER_HOURLY: &str = "DELETE FROM user_hourly WHERE (hour_ms, gpu_index, uid) IN (
        SELECT hour_ms, gpu_index, uid FROM user_hourly WHERE hour_ms < ?1 LIMIT ?2
    )";
const DELETE_ROLLED_UP_HOURS: &str = "DELETE FROM rolled_up_hours WHERE hour_ms IN (
        SELECT hour_ms FROM rolled_up_hours WHERE hour_ms < ?1 LIMIT ?2
    )";
const DELETE_IMPORTED_RECORDS: &str =
    "DELETE FROM imported_records WHERE (time_ms, gpu_index, pid) IN (
        SELECT time_ms, gpu_index, pid FROM imported_records WHERE time_ms < ?1 LIMIT ?2
    )";
const DELETE_EVENTS: &str = "DELETE FROM events WHERE id IN (
        SELECT id FROM events WHERE time_ms < ?1 LIMIT ?2
    )";

/// How long each kind of data is kept (defaults as gpu_monitor: raw samples 30 days, process
/// sessions 90 days, hourly rollups and events 365 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw `gpu_samples` rows, by `time_ms`.
    pub samples: Duration,
    /// `process_sessions` rows, by `last_seen_ms` (a session still running is kept).
    pub sessions: Duration,
    /// `gpu_hourly`, `user_hourly` and `rolled_up_hours` rows, by `hour_ms`.
    pub rollups: Duration,
    /// Audit `events` rows, by `time_ms`.
    pub events: Duration,
}

impl Default for Retention {
    /// `[retention]`'s defaults.
    fn default() -> Self {
        Self::from(&crate::config::RetentionConfig::default())
    }
}

impl From<&crate::config::RetentionConfig> for Retention {
    fn from(config: &crate::config::RetentionConfig) -> Self {
        Self {
            samples: config.samples,
            sessions: config.sessions,
            rollups: config.rollups,
            events: config.events,
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneSummary {
    /// Rows deleted from `gpu_samples`.
    pub samples: u64,
    /// Rows deleted from `process_sessions`.
    pub sessions: u64,
    /// Rows deleted from `gpu_hourly`, `user_hourly`, `rolled_up_hours` and
    /// `imported_records` together.
    pub rollups: u64,
    /// Rows deleted from `events`.
    pub events: u64,
    /// Delete transactions that deleted at least one row (each committed).
    pub batches: u64,
    /// Free pages `PRAGMA incremental_vacuum` gave back to the file system.
    pub vacuumed_pages: u64,
}

impl Store {
    /// Deletes what is older than each limit at `now_ms` (samples by time_ms, sessions by
    /// last_seen_ms, gpu_hourly/user_hourly/rolled_up_hours by hour_ms, events by time_ms), in
    /// small transactions of at most `batch_rows` rows each (so a reader on another connection
    /// never waits long), then runs `PRAGMA incremental_vacuum(N)` in steps to give free pages
    /// back. Deleting exactly: a row whose time equals now_ms - limit is kept (strictly older is
    /// deleted). Clock injected through `now_ms`: tests never sleep.
    ///
    /// A `batch_rows` of 0 is taken as 1. A limit too large to reach back from `now_ms`
    /// deletes nothing. One exception keeps rollups consistent when rollups are kept for less
    /// time than samples: an hour's `rolled_up_hours` entry stays while samples of that hour
    /// remain, or the daemon would roll the hour up again and the rollup rows would come back.
    ///
    /// On an error the batches committed before it stay deleted; the next pass goes on.
    pub fn prune(
        &mut self,
        now_ms: i64,
        retention: &Retention,
        batch_rows: usize,
    ) -> Result<PruneSummary, StoreError> {
        let batch_rows = i64::try_from(batch_rows.max(1)).unwrap_or(i64::MAX);
        let samples_cutoff = cutoff(now_ms, retention.samples);
        let rollups_cutoff = cutoff(now_ms, retention.rollups);
        // An hour's samples are all gone once the hour ends at or before the samples cutoff.
        let markers_cutoff = rollups_cutoff.min(samples_cutoff.saturating_sub(HOUR_MS - 1));

        let mut summary = PruneSummary::default();
        // Samples first: markers_cutoff counts on the older samples being gone, and an error
        // here stops the pass before any marker goes.
        summary.samples = self.delete_in_batches(
            DELETE_SAMPLES,
            samples_cutoff,
            batch_rows,
            &mut summary.batches,
        )?;
        summary.sessions = self.delete_in_batches(
            DELETE_SESSIONS,
            cutoff(now_ms, retention.sessions),
            batch_rows,
            &mut summary.batches,
        )?;
        for (sql, cutoff) in [
            (DELETE_GPU_HOURLY, rollups_cutoff),
            (DELETE_USER_HOURLY, rollups_cutoff),
            (DELETE_ROLLED_UP_HOURS, markers_cutoff),
            // An import older than the rollups would be refused as too old anyway.
            (DELETE_IMPORTED_RECORDS, rollups_cutoff),
        ] {
            summary.rollups +=
                self.delete_in_batches(sql, cutoff, batch_rows, &mut summary.batches)?;
        }
        summary.events = self.delete_in_batches(
            DELETE_EVENTS,
            cutoff(now_ms, retention.events),
            batch_rows,
            &mut summary.batches,
        )?;
        summary.vacuumed_pages = self.incremental_vacuum()?;
        tracing::debug!(
            store = %self.path.display(),
            samples = summary.samples,
            sessions = summary.sessions,
            rollups = summary.rollups,
            events = summary.events,
            batches = summary.batches,
            vacuumed_pages = summary.vacuumed_pages,
            "store pruned"
        );
        Ok(summary)
    }

    /// Runs `sql` (a batched delete taking the cutoff and the batch size) in its own
    /// IMMEDIATE transaction ([`Store::write_tx`]) until a batch deletes fewer than
    /// `batch_rows` rows; counts the batches that deleted rows into `batches` and returns the
    /// rows deleted.
    fn delete_in_batches(
        &mut self,
        sql: &str,
        cutoff: i64,
        batch_rows: i64,
        batches: &mut u64,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        loop {
            let rows = self.write_tx(|tx| {
                tx.prepare_cached(sql)
                    .and_then(|mut delete| delete.execute(rusqlite::params![cutoff, batch_rows]))
                    .map_err(StoreError::Write)
            })?;
            if rows == 0 {
                // The last batch deleted nothing: its transaction changed nothing.
                return Ok(deleted);
            }
            *batches += 1;
            deleted += rows as u64;
            // A short batch means nothing older is left; skip the empty round trip.
            if i64::try_from(rows).unwrap_or(i64::MAX) < batch_rows {
                return Ok(deleted);
            }
        }
    }

    /// Gives the free pages back in steps of [`VACUUM_STEP_PAGES`] (each its own write
    /// transaction) and returns how many went. A file with `auto_vacuum` off (one created
    /// before gpukilld set it) gives nothing back, and this stops after one step.
    fn incremental_vacuum(&mut self) -> Result<u64, StoreError> {
        let before = self.freelist_count()?;
        let mut free = before;
        while free > 0 {
            self.conn
                .execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))
                .map_err(StoreError::Write)?;
            let now = self.freelist_count()?;
            if now >= free {
                break;
            }
            free = now;
        }
        Ok(u64::try_from(before - free).unwrap_or(0))
    }

    fn freelist_count(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "freelist_count", |row| row.get(0))
            .map_err(StoreError::Write)
    }
}

/// `now_ms - limit`, saturating: rows strictly older than it are deleted.
fn cutoff(now_ms: i64, limit: Duration) -> i64 {
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(limit_ms)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Instant;

    use super::super::events::tests::event;
    use super::super::{EventKind, GpuSampleRow, SessionUpdate};
    use super::*;

    /// An hour-aligned "now", so that every default cutoff is a whole hour too.
    const NOW: i64 = 1_760_000_000_000 / HOUR_MS * HOUR_MS;

    fn sample(time_ms: i64, gpu_index: u32) -> GpuSampleRow {
        GpuSampleRow {
            time_ms,
            gpu_index,
            uuid: Some(format!("GPU-{gpu_index:04}-0000-0000-0000-000000000000")),
            pci_bus_id: Some(format!("00000000:{:02X}:00.0", gpu_index + 1)),
            name: Some("NVIDIA H100 80GB HBM3".to_string()),
            ticks: 10,
            util_mean: Some(42.5),
            util_max: Some(99),
            mem_util_mean: Some(12.0),
            mem_used_max: Some(1 << 34),
            mem_total: Some(85_899_345_920),
            temp_mean: Some(55.5),
            temp_max: Some(61),
            power_mean_mw: Some(350_000.0),
            power_max_mw: Some(700_000),
            fan_mean: None,
            sm_clock_mean: Some(1_980.0),
            mem_clock_mean: Some(2_619.0),
        }
    }

    fn session(pid: u32, last_seen_ms: i64) -> SessionUpdate {
        SessionUpdate {
            pid,
            start_time_ms: 1_600_000_000_000 + i64::from(pid),
            gpu_index: 0,
            first_seen_ms: last_seen_ms - 60_000,
            last_seen_ms,
            uid: 1000,
            user: "alice".to_string(),
            name: "python".to_string(),
            cmdline: format!("python train.py --pid {pid}"),
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            peak_memory_bytes: Some(1 << 30),
            memory_byte_seconds: 1e12,
            gpu_seconds: 60.0,
            util_seconds: Some(30.0),
        }
    }

    fn count(store: &Store, sql: &str) -> i64 {
        store.conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// The values of `column` left in `table`, ascending.
    fn times(store: &Store, table: &str, column: &str) -> Vec<i64> {
        let mut select = store
            .conn
            .prepare(&format!("SELECT {column} FROM {table} ORDER BY {column}"))
            .unwrap();
        let rows = select.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    fn pragma(store: &Store, name: &str) -> i64 {
        store
            .conn
            .pragma_query_value(None, name, |row| row.get(0))
            .unwrap()
    }

    /// Copies the WAL into the database file and empties it, so the file's size is the
    /// database's.
    fn checkpoint(store: &Store) {
        let busy: i64 = store
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(busy, 0, "checkpoint blocked");
    }

    /// One row per hour for the hourly tables and the markers, at each of `hours`.
    fn insert_rollups(store: &Store, hours: &[i64]) {
        for &hour in hours {
            store
                .conn
                .execute(
                    "INSERT INTO gpu_hourly (hour_ms, gpu_index, samples) VALUES (?1, 0, 360)",
                    [hour],
                )
                .unwrap();
            store
                .conn
                .execute(
                    "INSERT INTO user_hourly (hour_ms, gpu_index, user, uid, gpu_seconds,
                         memory_gib_hours, processes)
                     VALUES (?1, 0, 'alice', 1000, 3600, 1.5, 2)",
                    [hour],
                )
                .unwrap();
            store
                .conn
                .execute("INSERT INTO rolled_up_hours (hour_ms) VALUES (?1)", [hour])
                .unwrap();
        }
    }

    /// `count` sample rows older than any default limit, over 4 GPUs.
    fn old_samples(count: usize) -> Vec<GpuSampleRow> {
        let start = NOW - 400 * 86_400 * 1000;
        (0..count)
            .map(|n| {
                let n = i64::try_from(n).unwrap();
                sample(start + n / 4 * 10_000, u32::try_from(n % 4).unwrap())
            })
            .collect()
    }

    fn open(dir: &Path) -> Store {
        Store::open(&dir.join("store.db")).unwrap()
    }

    #[test]
    fn defaults_are_30_90_365_365_days() {
        let retention = Retention::default();
        assert_eq!(retention.samples, Duration::from_secs(30 * 86_400));
        assert_eq!(retention.sessions, Duration::from_secs(90 * 86_400));
        assert_eq!(retention.rollups, Duration::from_secs(365 * 86_400));
        assert_eq!(retention.events, Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn prune_deletes_exactly_the_rows_strictly_older_than_each_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let retention = Retention::default();
        let ms = |limit: Duration| i64::try_from(limit.as_millis()).unwrap();
        let (samples_at, sessions_at) = (NOW - ms(retention.samples), NOW - ms(retention.sessions));
        let (rollups_at, events_at) = (NOW - ms(retention.rollups), NOW - ms(retention.events));

        // Just older, exactly at, and newer than each limit (and one far newer).
        let around = |at: i64| [at - 1, at, at + 1, NOW];
        let samples: Vec<_> = around(samples_at)
            .into_iter()
            .flat_map(|time| [sample(time, 0), sample(time, 1)])
            .collect();
        let sessions: Vec<_> = around(sessions_at)
            .into_iter()
            .zip(1..)
            .map(|(time, pid)| session(pid, time))
            .collect();
        store.write_history(&samples, &sessions).unwrap();
        // Rollup rows lie on whole hours; the cutoff is one, so an hour before it, it, and an
        // hour after. A millisecond either side checks the comparison itself.
        insert_rollups(
            &store,
            &[
                rollups_at - HOUR_MS,
                rollups_at - 1,
                rollups_at,
                rollups_at + 1,
                rollups_at + HOUR_MS,
            ],
        );
        let events: Vec<_> = around(events_at)
            .into_iter()
            .map(|time| event(EventKind::Kill, u64::try_from(time).unwrap(), true))
            .collect();
        store.insert_events(&events).unwrap();

        let summary = store.prune(NOW, &retention, 100).unwrap();

        assert_eq!(
            times(&store, "gpu_samples", "time_ms"),
            vec![
                samples_at,
                samples_at,
                samples_at + 1,
                samples_at + 1,
                NOW,
                NOW
            ]
        );
        assert_eq!(
            times(&store, "process_sessions", "last_seen_ms"),
            vec![sessions_at, sessions_at + 1, NOW]
        );
        let kept_hours = vec![rollups_at, rollups_at + 1, rollups_at + HOUR_MS];
        for table in ["gpu_hourly", "user_hourly", "rolled_up_hours"] {
            assert_eq!(times(&store, table, "hour_ms"), kept_hours, "{table}");
        }
        assert_eq!(
            times(&store, "events", "time_ms"),
            vec![events_at, events_at + 1, NOW]
        );
        assert_eq!(
            summary,
            PruneSummary {
                samples: 2,
                sessions: 1,
                rollups: 6,
                events: 1,
                // One per table: each batch is short of 100 rows.
                batches: 6,
                vacuumed_pages: summary.vacuumed_pages,
            }
        );

        // A second pass at the same time finds nothing.
        let again = store.prune(NOW, &retention, 100).unwrap();
        assert_eq!(again, PruneSummary::default());
    }

    #[test]
    fn prune_of_an_empty_store_or_with_unreachable_limits_deletes_nothing() {
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(
            store.prune(NOW, &Retention::default(), 1000).unwrap(),
            PruneSummary::default()
        );
        store.write_history(&old_samples(8), &[]).unwrap();
        let forever = Retention {
            samples: Duration::MAX,
            sessions: Duration::MAX,
            rollups: Duration::MAX,
            events: Duration::MAX,
        };
        assert_eq!(
            store.prune(NOW, &forever, 1000).unwrap(),
            PruneSummary::default()
        );
        assert_eq!(count(&store, "SELECT count(*) FROM gpu_samples"), 8);
        // A batch size of 0 is taken as 1 rather than looping forever.
        let summary = store.prune(NOW, &Retention::default(), 0).unwrap();
        assert_eq!((summary.samples, summary.batches), (8, 8));
    }

    #[test]
    fn prune_deletes_in_batches_of_at_most_batch_rows() {
        let mut store = Store::open_in_memory().unwrap();
        // A few recent rows, which stay.
        let recent: Vec<_> = (0..3).map(|gpu| sample(NOW - 1_000, gpu)).collect();
        store.write_history(&old_samples(5_000), &[]).unwrap();
        store.write_history(&recent, &[]).unwrap();

        let summary = store.prune(NOW, &Retention::default(), 500).unwrap();

        assert_eq!(summary.samples, 5_000);
        assert_eq!(summary.batches, 10);
        assert_eq!(count(&store, "SELECT count(*) FROM gpu_samples"), 3);
        // 4_999 rows in batches of 500: ten batches, the last one short.
        store.write_history(&old_samples(4_999), &[]).unwrap();
        let summary = store.prune(NOW, &Retention::default(), 500).unwrap();
        assert_eq!((summary.samples, summary.batches), (4_999, 10));
    }

    #[test]
    fn a_reader_on_another_connection_never_waits_long_while_pruning() {
        const ROWS: usize = 50_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut store = Store::open(&path).unwrap();
        store.write_history(&old_samples(ROWS), &[]).unwrap();

        let reader = Store::open_read_only(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reading = thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let (mut reads, mut longest) = (0u32, Duration::ZERO);
                // At least a few reads even if the prune is over before the thread starts.
                while reads < 10 || !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let _: i64 = count(&reader, "SELECT count(*) FROM gpu_samples");
                    longest = longest.max(started.elapsed());
                    reads += 1;
                }
                (reads, longest)
            }
        });

        let started = Instant::now();
        let summary = store.prune(NOW, &Retention::default(), 1000).unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (reads, longest) = reading.join().unwrap();

        eprintln!(
            "pruned {} rows in {} batches, vacuumed {} pages, in {took:?}; \
             {reads} reads, the longest {longest:?}",
            summary.samples, summary.batches, summary.vacuumed_pages
        );
        assert_eq!(summary.samples, ROWS as u64);
        assert!(summary.batches >= 50, "{summary:?}");
        assert!(
            longest < Duration::from_millis(100),
            "longest read {longest:?}"
        );
    }

    #[test]
    fn incremental_vacuum_gives_the_freed_pages_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut store = Store::open(&path).unwrap();
        assert_eq!(pragma(&store, "auto_vacuum"), 2, "incremental");
        store.write_history(&old_samples(20_000), &[]).unwrap();
        let events: Vec<_> = (0..2_000u64)
            .map(|n| event(EventKind::Deny, 1_000_000 + n, true))
            .collect();
        store.insert_events(&events).unwrap();
        checkpoint(&store);
        let pages_before = pragma(&store, "page_count");
        let bytes_before = std::fs::metadata(&path).unwrap().len();

        let summary = store.prune(NOW, &Retention::default(), 1000).unwrap();

        assert_eq!((summary.samples, summary.events), (20_000, 2_000));
        assert!(summary.vacuumed_pages > 0, "{summary:?}");
        assert_eq!(pragma(&store, "freelist_count"), 0);
        let pages_after = pragma(&store, "page_count");
        assert!(
            pages_after + i64::try_from(summary.vacuumed_pages).unwrap() <= pages_before,
            "{pages_before} -> {pages_after} pages, {summary:?}"
        );
        // Once the WAL is checkpointed, the file itself is that much smaller.
        checkpoint(&store);
        let bytes_after = std::fs::metadata(&path).unwrap().len();
        assert!(
            bytes_after < bytes_before / 4,
            "{bytes_before} -> {bytes_after} bytes"
        );
    }

    #[test]
    fn rollup_markers_outlive_the_samples_of_their_hour() {
        let mut store = Store::open_in_memory().unwrap();
        // Rollups kept for less time than samples (a configuration mistake, but possible).
        let retention = Retention {
            samples: Duration::from_secs(10 * 3600),
            rollups: Duration::from_secs(2 * 3600),
            ..Retention::default()
        };
        let samples_at = NOW - 10 * HOUR_MS;
        // The hour before the samples cutoff has no samples left after the prune; the hour
        // that starts at the cutoff keeps its samples, and so must keep its marker, or it
        // would be rolled up again.
        store
            .write_history(&[sample(samples_at - 1, 0), sample(samples_at, 0)], &[])
            .unwrap();
        insert_rollups(&store, &[samples_at - HOUR_MS, samples_at]);

        let summary = store.prune(NOW, &retention, 100).unwrap();

        assert_eq!(times(&store, "gpu_samples", "time_ms"), vec![samples_at]);
        assert!(times(&store, "gpu_hourly", "hour_ms").is_empty());
        assert!(times(&store, "user_hourly", "hour_ms").is_empty());
        assert_eq!(
            times(&store, "rolled_up_hours", "hour_ms"),
            vec![samples_at]
        );
        assert_eq!(summary.rollups, 5);
        assert!(store.hours_needing_rollup(NOW).unwrap().is_empty());
    }
}
