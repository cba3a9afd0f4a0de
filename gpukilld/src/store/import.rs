//! Importing an original gpukill `audit.jsonl` into the history.
//!
//! gpukill appended one record per GPU and one per GPU process each time it listed them. A
//! GPU record becomes a raw sample (one tick at the record's time). Process records become
//! process sessions: a record continues the latest session of the same pid, GPU and process
//! name when it comes at most [`SESSION_GAP_MS`] after that session was last seen (the gap
//! counts as GPU time and memory held), and otherwise starts a new one, seen at that one
//! instant. gpukill knew no process start time; a session's start time is its first
//! record's time.
//!
//! Every record's key (time, GPU, pid or -1) goes into `imported_records` first, and a key
//! that is already there is skipped: importing the same file twice, or a longer version of
//! it, adds nothing twice.

use std::collections::BTreeSet;

use rusqlite::OptionalExtension;

use super::history::{HOUR_MS, hour_start};
use super::{Store, StoreError};

/// Two records of one process further apart than this are two sessions: gpukill in watch
/// mode listed every 2 s, so a longer gap means gpukill was not watching, and the time in
/// between is unknown.
pub const SESSION_GAP_MS: i64 = 5 * 60_000;

/// One record of a gpukill audit.jsonl, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRecord {
    /// When gpukill took it, ms since the epoch.
    pub time_ms: i64,
    /// The GPU's index.
    pub gpu_index: u32,
    /// The GPU's product name.
    pub gpu_name: String,
    /// For a process record: the process.
    pub process: Option<ImportProcess>,
    /// Memory used by the GPU (or the process), bytes.
    pub memory_bytes: u64,
    /// SM utilization, percent (GPU records).
    pub utilization_pct: f64,
    /// Temperature, degrees Celsius (GPU records).
    pub temperature_c: i32,
    /// Power, milliwatts (GPU records).
    pub power_mw: f64,
}

/// The process of a process record.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportProcess {
    /// The PID.
    pub pid: u32,
    /// The owner's uid, looked up from the name (`u32::MAX` when unknown here).
    pub uid: u32,
    /// The owner's user name, as gpukill recorded it.
    pub user: String,
    /// The process name.
    pub name: String,
    /// The container, if gpukill knew it.
    pub container: Option<String>,
}

/// What one import call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// GPU records written as samples.
    pub gpu_records: u64,
    /// Process records written into sessions.
    pub process_records: u64,
    /// Records skipped: imported before (or a sample already stored at that time).
    pub duplicates: u64,
    /// Records skipped: older than `oldest_ms`.
    pub too_old: u64,
    /// Starts of the hours whose rollups the import changed.
    pub hours: BTreeSet<i64>,
}

const REMEMBER_KEY: &str =
    "INSERT OR IGNORE INTO imported_records (time_ms, gpu_index, pid) VALUES (?1, ?2, ?3)";

const INSERT_IMPORTED_SAMPLE: &str = "INSERT OR IGNORE INTO gpu_samples (
        time_ms, gpu_index, identity, ticks, util_mean, util_max, mem_used_max, temp_mean,
        temp_max, power_mean_mw, power_max_mw
    ) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?7, ?8, ?9)";

/// The latest session of a pid on a GPU under a name that was seen from `?4 - gap` on and
/// began by `?4`.
const CONTINUED_SESSION: &str = "SELECT id, first_seen_ms, last_seen_ms FROM process_sessions
    WHERE pid = ?1 AND gpu_index = ?2 AND name = ?3 AND last_seen_ms >= ?4 - ?5
        AND first_seen_ms <= ?4
    ORDER BY last_seen_ms DESC LIMIT 1";

/// Extends a session to `?2`: the time since it was last seen counts as GPU time with
/// `?3` bytes held.
const EXTEND_SESSION: &str = "UPDATE process_sessions SET
        gpu_seconds = gpu_seconds + max(?2 - last_seen_ms, 0) / 1000.0,
        memory_byte_seconds = memory_byte_seconds + ?3 * max(?2 - last_seen_ms, 0) / 1000.0,
        last_seen_ms = max(last_seen_ms, ?2),
        peak_memory_bytes = max(coalesce(peak_memory_bytes, ?3), ?3)
    WHERE id = ?1";

const NEW_SESSION: &str = "INSERT INTO process_sessions (
        pid, start_time_ms, gpu_index, first_seen_ms, last_seen_ms, uid, user, name, cmdline,
        container_id, peak_memory_bytes
    ) VALUES (?1, ?2, ?3, ?2, ?2, ?4, ?5, ?6, ?6, ?7, ?8)
    ON CONFLICT (pid, start_time_ms, gpu_index) DO NOTHING";

impl Store {
    /// Imports `records` (in time order) in ONE transaction, skipping those older than
    /// `oldest_ms` and those imported before. Returns what it did, including the hours whose
    /// rollups need redoing; it does not redo them.
    pub fn import_records(
        &mut self,
        records: &[ImportRecord],
        oldest_ms: i64,
    ) -> Result<ImportSummary, StoreError> {
        let mut summary = ImportSummary::default();
        self.write_tx(|tx| {
            {
                let write = StoreError::Write;
                let mut remember = tx.prepare_cached(REMEMBER_KEY).map_err(write)?;
                let mut insert_identity = tx
                    .prepare_cached(super::history::INSERT_IDENTITY)
                    .map_err(write)?;
                let mut identity_id = tx
                    .prepare_cached(super::history::IDENTITY_ID)
                    .map_err(write)?;
                let mut insert_sample = tx.prepare_cached(INSERT_IMPORTED_SAMPLE).map_err(write)?;
                let mut continued = tx.prepare_cached(CONTINUED_SESSION).map_err(write)?;
                let mut extend = tx.prepare_cached(EXTEND_SESSION).map_err(write)?;
                let mut new_session = tx.prepare_cached(NEW_SESSION).map_err(write)?;
                for record in records {
                    if record.time_ms < oldest_ms {
                        summary.too_old += 1;
                        continue;
                    }
                    let pid_key = record.process.as_ref().map_or(-1, |p| i64::from(p.pid));
                    let fresh = remember
                        .execute(rusqlite::params![record.time_ms, record.gpu_index, pid_key])
                        .map_err(write)?;
                    if fresh == 0 {
                        summary.duplicates += 1;
                        continue;
                    }
                    let memory = i64::try_from(record.memory_bytes).unwrap_or(i64::MAX);
                    let Some(process) = &record.process else {
                        let identity =
                            rusqlite::params![None::<&str>, None::<&str>, record.gpu_name];
                        insert_identity.execute(identity).map_err(write)?;
                        let identity: i64 = identity_id
                            .query_row(identity, |row| row.get(0))
                            .map_err(write)?;
                        let util = record.utilization_pct;
                        let written = insert_sample
                            .execute(rusqlite::params![
                                record.time_ms,
                                record.gpu_index,
                                identity,
                                util,
                                util.round() as i64,
                                memory,
                                record.temperature_c,
                                record.power_mw,
                                record.power_mw.round() as i64,
                            ])
                            .map_err(write)?;
                        if written == 0 {
                            // gpukilld itself stored a sample at that very millisecond.
                            summary.duplicates += 1;
                        } else {
                            summary.gpu_records += 1;
                            summary.hours.insert(hour_start(record.time_ms));
                        }
                        continue;
                    };
                    let found: Option<(i64, i64, i64)> = continued
                        .query_row(
                            rusqlite::params![
                                process.pid,
                                record.gpu_index,
                                process.name,
                                record.time_ms,
                                SESSION_GAP_MS
                            ],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                        )
                        .optional()
                        .map_err(write)?;
                    let span = match found {
                        Some((id, first_seen, last_seen)) => {
                            extend
                                .execute(rusqlite::params![id, record.time_ms, memory])
                                .map_err(write)?;
                            (first_seen, last_seen.max(record.time_ms))
                        }
                        None => {
                            new_session
                                .execute(rusqlite::params![
                                    process.pid,
                                    record.time_ms,
                                    record.gpu_index,
                                    process.uid,
                                    process.user,
                                    process.name,
                                    process.container,
                                    memory,
                                ])
                                .map_err(write)?;
                            (record.time_ms, record.time_ms)
                        }
                    };
                    summary.process_records += 1;
                    // A longer span changes the share of every hour the session covers.
                    let mut hour = hour_start(span.0);
                    while hour <= span.1 {
                        summary.hours.insert(hour);
                        hour += HOUR_MS;
                    }
                }
            }
            Ok(summary)
        })
    }

    /// Whether the hour starting at `hour_ms` has been rolled up.
    pub fn is_rolled_up(&self, hour_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM rolled_up_hours WHERE hour_ms = ?1")
            .and_then(|mut select| select.exists([hour_ms]))
            .map_err(StoreError::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T00:00:00Z.
    const H0: i64 = 1_714_521_600_000;
    const MIB: u64 = 1 << 20;

    fn gpu_record(time_ms: i64, gpu: u32, util: f64) -> ImportRecord {
        ImportRecord {
            time_ms,
            gpu_index: gpu,
            gpu_name: "NVIDIA A100".to_string(),
            process: None,
            memory_bytes: 1000 * MIB,
            utilization_pct: util,
            temperature_c: 50,
            power_mw: 150_000.0,
        }
    }

    fn process_record(time_ms: i64, pid: u32, memory_mib: u64) -> ImportRecord {
        ImportRecord {
            process: Some(ImportProcess {
                pid,
                uid: 1000,
                user: "alice".to_string(),
                name: "python".to_string(),
                container: None,
            }),
            memory_bytes: memory_mib * MIB,
            utilization_pct: 0.0,
            temperature_c: 0,
            power_mw: 0.0,
            ..gpu_record(time_ms, 0, 0.0)
        }
    }

    #[test]
    fn gpu_records_become_samples_and_process_records_sessions() {
        let mut store = Store::open_in_memory().unwrap();
        let records = [
            gpu_record(H0, 0, 40.0),
            process_record(H0, 7, 100),
            gpu_record(H0 + 2_000, 0, 60.4),
            process_record(H0 + 2_000, 7, 300),
            // Ten minutes later: the same pid starts a second session.
            process_record(H0 + 602_000, 7, 50),
        ];
        let summary = store.import_records(&records, 0).unwrap();
        assert_eq!((summary.gpu_records, summary.process_records), (2, 3));
        assert_eq!(summary.hours, BTreeSet::from([H0]));

        let samples = store.gpu_samples(Some(0), H0, H0 + HOUR_MS).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1].util_mean, Some(60.4));
        assert_eq!(samples[1].util_max, Some(60));
        assert_eq!(samples[1].mem_used_max, Some(1000 * MIB));
        assert_eq!(samples[1].power_max_mw, Some(150_000));
        assert_eq!(samples[1].name.as_deref(), Some("NVIDIA A100"));

        let sessions = store.sessions(H0, H0 + HOUR_MS).unwrap();
        assert_eq!(sessions.len(), 2);
        let (second, first) = (&sessions[0], &sessions[1]);
        assert_eq!((first.first_seen_ms, first.last_seen_ms), (H0, H0 + 2_000));
        assert!((first.gpu_seconds - 2.0).abs() < 1e-9);
        assert!((first.memory_byte_seconds - (600 * MIB) as f64).abs() < 1e-3);
        assert_eq!(first.peak_memory_bytes, Some(300 * MIB));
        assert_eq!((first.user.as_str(), first.uid), ("alice", 1000));
        assert_eq!(second.first_seen_ms, H0 + 602_000);
        assert_eq!(second.gpu_seconds, 0.0);
    }

    #[test]
    fn importing_twice_changes_nothing_and_old_records_are_skipped() {
        let mut store = Store::open_in_memory().unwrap();
        let records = [
            gpu_record(H0 - 10, 0, 10.0),
            gpu_record(H0, 0, 40.0),
            process_record(H0, 7, 100),
            process_record(H0 + 2_000, 7, 300),
        ];
        let first = store.import_records(&records, H0).unwrap();
        assert_eq!(first.too_old, 1);
        let sessions_before = store.sessions(0, i64::MAX).unwrap();

        let again = store.import_records(&records, H0).unwrap();
        assert_eq!(
            (again.gpu_records, again.process_records, again.duplicates),
            (0, 0, 3)
        );
        assert_eq!(store.sessions(0, i64::MAX).unwrap(), sessions_before);
        assert_eq!(store.gpu_samples(None, 0, i64::MAX).unwrap().len(), 1);

        // A longer version of the file adds only its new records, extending the session.
        let mut longer = records.to_vec();
        longer.push(process_record(H0 + 4_000, 7, 200));
        let more = store.import_records(&longer, H0).unwrap();
        assert_eq!((more.process_records, more.duplicates), (1, 3));
        let sessions = store.sessions(0, i64::MAX).unwrap();
        assert_eq!(sessions.len(), 1);
        assert!((sessions[0].gpu_seconds - 4.0).abs() < 1e-9);
    }

    #[test]
    fn a_native_sample_at_the_same_time_wins() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .import_records(&[gpu_record(H0 + 1, 1, 40.0)], 0)
            .unwrap();
        // gpukilld's own row at H0, written as the recorder writes it.
        let own = super::super::GpuSampleRow {
            time_ms: H0,
            gpu_index: 1,
            uuid: Some("GPU-1".to_string()),
            pci_bus_id: None,
            name: None,
            ticks: 5,
            util_mean: Some(12.0),
            util_max: Some(20),
            mem_util_mean: None,
            mem_used_max: None,
            mem_total: None,
            temp_mean: None,
            temp_max: None,
            power_mean_mw: None,
            power_max_mw: None,
            fan_mean: None,
            sm_clock_mean: None,
            mem_clock_mean: None,
        };
        store
            .write_history(std::slice::from_ref(&own), &[])
            .unwrap();
        let summary = store.import_records(&[gpu_record(H0, 1, 99.0)], 0).unwrap();
        assert_eq!((summary.gpu_records, summary.duplicates), (0, 1));
        assert!(summary.hours.is_empty());
        assert_eq!(store.gpu_samples(Some(1), H0, H0 + 1).unwrap(), [own]);
    }

    #[test]
    fn a_session_spanning_hours_touches_each_of_them() {
        let mut store = Store::open_in_memory().unwrap();
        let mut records = Vec::new();
        let mut time = H0 + HOUR_MS - 60_000;
        while time <= H0 + 2 * HOUR_MS + 60_000 {
            records.push(process_record(time, 9, 10));
            time += 120_000;
        }
        let summary = store.import_records(&records, 0).unwrap();
        assert_eq!(
            summary.hours,
            BTreeSet::from([H0, H0 + HOUR_MS, H0 + 2 * HOUR_MS])
        );
        assert!(!store.is_rolled_up(H0).unwrap());
    }
}
