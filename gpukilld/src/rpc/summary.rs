//! `Summary`: the usage history of a window, aggregated: top users and processes by GPU
//! hours, per-GPU utilization and GPU hours by UTC hour of day.
//!
//! Computed from the rows the store already keeps: the process sessions overlapping the
//! window (as `Sessions` reads them, each counted whole) and the per-GPU utilization of the
//! samples in it (through the hourly rollups for whole hours, see `Store::gpu_usage`).

use std::collections::BTreeMap;

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use super::sessions::check_window;
use crate::store::{GpuUsage, Store, StoreError, StoredSession};

/// Top users and processes returned when the request names no number.
const DEFAULT_TOP: usize = 10;
/// Bytes per GiB.
const GIB: f64 = (1u64 << 30) as f64;
/// Seconds per hour.
const HOUR_SECS: f64 = 3600.0;
/// Milliseconds per hour.
const HOUR_MS: i64 = 3_600_000;
/// Milliseconds per day.
const DAY_MS: i64 = 24 * HOUR_MS;

/// Answers `Summary`. Anyone may read usage: on a shared node it is not secret.
pub async fn summary(
    store: &crate::store::StoreHandle,
    request: pb::SummaryRequest,
) -> Result<pb::SummaryResponse, RpcError> {
    check_window(request.since_unix_ms, request.until_unix_ms)?;
    let log = store.get().map_err(RpcError::StoreUnavailable)?;
    Ok(log.read(move |store| summarize(store, &request)).await?)
}

/// The summary of a (checked) window, read from `store`: blocking.
pub fn summarize(
    store: &Store,
    request: &pb::SummaryRequest,
) -> Result<pb::SummaryResponse, StoreError> {
    let (since, until) = (request.since_unix_ms, request.until_unix_ms);
    let sessions = store.sessions(since, until)?;
    let gpus = store.gpu_usage(since, until)?;
    let top = match request.top {
        0 => DEFAULT_TOP,
        top => top as usize,
    };
    let mut summary = aggregate(&sessions, &gpus, top);
    // A reservation still held counts up to now.
    let now = crate::store::unix_ms(std::time::SystemTime::now());
    let held = store.reservations_between(since, until)?;
    summary.reservations = reservations_by_user(&held, since, until.min(now));
    Ok(summary)
}

/// GPU time held per user over [since, until), most first (ties by name): each reservation
/// row is one GPU from its start to its end (or `until` while held), clipped to the window.
fn reservations_by_user(
    rows: &[crate::store::ReservationRow],
    since: i64,
    until: i64,
) -> Vec<pb::UserReservations> {
    use std::collections::{BTreeMap, BTreeSet};
    const HOUR_MS: f64 = 3_600_000.0;
    let mut users: BTreeMap<(u32, &str), (pb::UserReservations, BTreeSet<i64>)> = BTreeMap::new();
    for row in rows {
        let start = row.start_ms.max(since);
        let end = row.end_ms.unwrap_or(until).min(until);
        let hours = (end - start).max(0) as f64 / HOUR_MS;
        let (user, leases) = users.entry((row.uid, &row.user)).or_insert_with(|| {
            let user = pb::UserReservations {
                user: row.user.clone(),
                uid: row.uid,
                ..Default::default()
            };
            (user, BTreeSet::new())
        });
        user.reserved_gpu_hours += hours;
        if row.kind == crate::store::LeaseKind::Run {
            user.run_gpu_hours += hours;
        }
        leases.insert(row.lease);
    }
    let mut users: Vec<pb::UserReservations> = users
        .into_values()
        .map(|(mut user, leases)| {
            user.reservations = u32::try_from(leases.len()).unwrap_or(u32::MAX);
            user
        })
        .collect();
    users.sort_by(|a, b| {
        b.reserved_gpu_hours
            .total_cmp(&a.reserved_gpu_hours)
            .then_with(|| a.user.cmp(&b.user))
    });
    users
}

/// The summary of `sessions` and per-GPU `usage`, with at most `top` users and processes.
fn aggregate(sessions: &[StoredSession], usage: &[GpuUsage], top: usize) -> pb::SummaryResponse {
    pb::SummaryResponse {
        top_users: top_users(sessions, top),
        top_processes: top_processes(sessions, top),
        gpus: usage
            .iter()
            .map(|gpu| pb::GpuUsage {
                gpu_index: gpu.gpu_index,
                samples: u32::try_from(gpu.samples).unwrap_or(u32::MAX),
                util_mean: gpu.util_mean(),
                util_max: gpu.util_max,
            })
            .collect(),
        hour_of_day_gpu_hours: hour_of_day(sessions).to_vec(),
        reservations: Vec::new(),
    }
}

/// Users grouped by uid and name, most GPU hours first, ties by name then uid.
fn top_users(sessions: &[StoredSession], top: usize) -> Vec<pb::UserUsage> {
    let mut users: BTreeMap<(u32, &str), pb::UserUsage> = BTreeMap::new();
    for session in sessions {
        let usage = users
            .entry((session.uid, session.user.as_str()))
            .or_insert_with(|| pb::UserUsage {
                user: session.user.clone(),
                uid: session.uid,
                ..Default::default()
            });
        usage.gpu_hours += session.gpu_seconds / HOUR_SECS;
        usage.memory_gib_hours += session.memory_byte_seconds / GIB / HOUR_SECS;
        usage.sessions += 1;
    }
    let mut users: Vec<_> = users.into_values().collect();
    users.sort_by(|a, b| {
        b.gpu_hours
            .total_cmp(&a.gpu_hours)
            .then_with(|| a.user.cmp(&b.user))
            .then_with(|| a.uid.cmp(&b.uid))
    });
    users.truncate(top);
    users
}

/// Processes grouped by name and user, most GPU hours first, ties by name then user.
fn top_processes(sessions: &[StoredSession], top: usize) -> Vec<pb::ProcessUsage> {
    let mut processes: BTreeMap<(&str, &str), pb::ProcessUsage> = BTreeMap::new();
    for session in sessions {
        let usage = processes
            .entry((session.name.as_str(), session.user.as_str()))
            .or_insert_with(|| pb::ProcessUsage {
                name: session.name.clone(),
                user: session.user.clone(),
                ..Default::default()
            });
        usage.gpu_hours += session.gpu_seconds / HOUR_SECS;
        usage.peak_memory_bytes = usage.peak_memory_bytes.max(session.peak_memory_bytes);
    }
    let mut processes: Vec<_> = processes.into_values().collect();
    processes.sort_by(|a, b| {
        b.gpu_hours
            .total_cmp(&a.gpu_hours)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.user.cmp(&b.user))
    });
    processes.truncate(top);
    processes
}

/// GPU hours by UTC hour of day: each session's GPU time spread evenly over its
/// [first seen, last seen] span; a session seen at one instant counts in that hour.
fn hour_of_day(sessions: &[StoredSession]) -> [f64; 24] {
    let mut hours = [0.0; 24];
    for session in sessions {
        let gpu_hours = session.gpu_seconds / HOUR_SECS;
        let (start, end) = (session.first_seen_ms, session.last_seen_ms);
        if end <= start {
            hours[hour_index(start)] += gpu_hours;
            continue;
        }
        let per_ms = gpu_hours / (end - start) as f64;
        // Whole days add the same to every hour; the rest is walked hour by hour.
        let days = (end - start) / DAY_MS;
        if days > 0 {
            let per_hour = per_ms * (days * HOUR_MS) as f64;
            for hour in &mut hours {
                *hour += per_hour;
            }
        }
        let mut time = start + days * DAY_MS;
        while time < end {
            let next = (time.div_euclid(HOUR_MS) + 1) * HOUR_MS;
            let until = next.min(end);
            hours[hour_index(time)] += per_ms * (until - time) as f64;
            time = until;
        }
    }
    hours
}

/// The UTC hour of day of `time_ms`, 0 to 23.
fn hour_index(time_ms: i64) -> usize {
    // rem_euclid keeps times before 1970 in 0..24.
    usize::try_from(time_ms.div_euclid(HOUR_MS).rem_euclid(24)).unwrap_or(0)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::GpuSampleRow;
    use crate::store::{Database, StoreHandle};
    use std::sync::Arc;
    use tonic::Code;
    use tonic::Status;

    /// 2024-05-01T00:00:00Z.
    const MIDNIGHT: i64 = 1_714_521_600_000;

    fn stored(
        user: &str,
        uid: u32,
        name: &str,
        span_ms: (i64, i64),
        gpu_seconds: f64,
        peak: Option<u64>,
    ) -> StoredSession {
        StoredSession {
            id: 1,
            pid: 1,
            start_time_ms: span_ms.0,
            gpu_index: 0,
            first_seen_ms: span_ms.0,
            last_seen_ms: span_ms.1,
            uid,
            user: user.to_owned(),
            name: name.to_owned(),
            cmdline: name.to_owned(),
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            peak_memory_bytes: peak,
            memory_byte_seconds: gpu_seconds * GIB,
            gpu_seconds,
            util_seconds: None,
        }
    }

    fn sample(
        gpu_index: u32,
        ticks: u32,
        util_mean: Option<f64>,
        util_max: Option<u32>,
    ) -> GpuSampleRow {
        GpuSampleRow {
            time_ms: MIDNIGHT,
            gpu_index,
            uuid: None,
            pci_bus_id: None,
            name: None,
            ticks,
            util_mean,
            util_max,
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
        }
    }

    fn sessions() -> Vec<StoredSession> {
        vec![
            // 01:30 to 03:30, two GPU hours: 0.5 in hour 1, 1 in hour 2, 0.5 in hour 3.
            stored(
                "alice",
                1000,
                "python",
                (MIDNIGHT + 5_400_000, MIDNIGHT + 12_600_000),
                7200.0,
                Some(100),
            ),
            // One instant at 23:59:59, half an hour of GPU time: all in hour 23.
            stored(
                "alice",
                1000,
                "python",
                (MIDNIGHT + DAY_MS - 1_000, MIDNIGHT + DAY_MS - 1_000),
                1800.0,
                Some(300),
            ),
            // 25 hours from 10:00, 25 GPU hours: one in every hour, plus one more in hour 10.
            stored(
                "bob",
                1001,
                "miner",
                (MIDNIGHT + 10 * HOUR_MS, MIDNIGHT + 35 * HOUR_MS),
                90_000.0,
                None,
            ),
            // Bob's python, 0.25 GPU hours in hour 5.
            stored(
                "bob",
                1001,
                "python",
                (MIDNIGHT + 5 * HOUR_MS, MIDNIGHT + 6 * HOUR_MS),
                900.0,
                None,
            ),
        ]
    }

    #[test]
    fn users_and_processes_are_ranked_by_gpu_hours() {
        let summary = aggregate(&sessions(), &[], 10);
        let users: Vec<_> = summary
            .top_users
            .iter()
            .map(|u| {
                (
                    u.user.as_str(),
                    u.uid,
                    u.gpu_hours,
                    u.memory_gib_hours,
                    u.sessions,
                )
            })
            .collect();
        assert_eq!(
            users,
            [("bob", 1001, 25.25, 25.25, 2), ("alice", 1000, 2.5, 2.5, 2)]
        );
        let processes: Vec<_> = summary
            .top_processes
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.user.as_str(),
                    p.gpu_hours,
                    p.peak_memory_bytes,
                )
            })
            .collect();
        assert_eq!(
            processes,
            [
                ("miner", "bob", 25.0, None),
                ("python", "alice", 2.5, Some(300)),
                ("python", "bob", 0.25, None),
            ]
        );
        let top_one = aggregate(&sessions(), &[], 1);
        assert_eq!(top_one.top_users.len(), 1);
        assert_eq!(top_one.top_processes.len(), 1);
        assert_eq!(top_one.top_processes[0].name, "miner");
    }

    #[test]
    fn gpu_hours_are_spread_over_the_hours_of_day() {
        let hours = aggregate(&sessions(), &[], 10).hour_of_day_gpu_hours;
        let mut expected = [1.0; 24];
        expected[1] += 0.5;
        expected[2] += 1.0;
        expected[3] += 0.5;
        expected[5] += 0.25;
        expected[10] += 1.0;
        expected[23] += 0.5;
        assert_eq!(hours.len(), 24);
        for (hour, (actual, expected)) in hours.iter().zip(expected).enumerate() {
            assert!(
                (actual - expected).abs() < 1e-9,
                "hour {hour}: {actual} != {expected}"
            );
        }
        let total: f64 = hours.iter().sum();
        assert!((total - 27.75).abs() < 1e-9, "{total}");
    }

    #[test]
    fn gpus_weigh_utilization_by_ticks() {
        let samples = [
            sample(1, 10, Some(50.0), Some(60)),
            sample(0, 30, Some(80.0), Some(95)),
            sample(0, 10, Some(40.0), Some(70)),
            sample(0, 5, None, None),
            sample(2, 4, None, None),
        ];
        let mut store = Store::open_in_memory().unwrap();
        for (offset, sample) in (0..).zip(samples) {
            let sample = GpuSampleRow {
                time_ms: MIDNIGHT + offset * 10_000,
                ..sample
            };
            store.write_history(&[sample], &[]).unwrap();
        }
        let request = pb::SummaryRequest {
            since_unix_ms: MIDNIGHT,
            until_unix_ms: MIDNIGHT + HOUR_MS,
            top: 0,
        };
        let gpus = summarize(&store, &request).unwrap().gpus;
        let gpus: Vec<_> = gpus
            .iter()
            .map(|g| (g.gpu_index, g.samples, g.util_mean, g.util_max))
            .collect();
        assert_eq!(
            gpus,
            [
                (0, 3, Some(70.0), Some(95)),
                (1, 1, Some(50.0), Some(60)),
                (2, 1, None, None),
            ]
        );
    }

    #[test]
    fn an_empty_window_has_24_zero_hours() {
        let summary = aggregate(&[], &[], 10);
        assert!(summary.top_users.is_empty() && summary.gpus.is_empty());
        assert_eq!(summary.hour_of_day_gpu_hours, vec![0.0; 24]);
    }

    #[test]
    fn hours_before_1970_stay_in_range() {
        assert_eq!(hour_index(-1), 23);
        assert_eq!(hour_index(0), 0);
    }

    #[tokio::test]
    async fn summary_checks_the_window_and_reads_the_store() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let request = pb::SummaryRequest {
            since_unix_ms: 0,
            until_unix_ms: 10_000,
            top: 0,
        };
        let answer = summary(&StoreHandle::from(log.clone()), request)
            .await
            .unwrap();
        assert!(answer.top_users.is_empty());
        assert_eq!(answer.hour_of_day_gpu_hours.len(), 24);
        let error = summary(
            &StoreHandle::from(log),
            pb::SummaryRequest {
                since_unix_ms: 5_000,
                until_unix_ms: 5_000,
                top: 0,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(Status::from(error).code(), Code::InvalidArgument);
        let error = summary(&StoreHandle::unavailable("no store".to_owned()), request)
            .await
            .unwrap_err();
        assert!(matches!(error, RpcError::StoreUnavailable(_)), "{error:?}");
    }
}
