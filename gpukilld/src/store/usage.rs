//! Reads over long windows that use the hourly rollups: the hourly series of a GPU, and
//! per-GPU utilization over a window that takes whole rolled-up hours from `gpu_hourly`
//! and only the rest (the ragged ends, the hour in progress, hours not rolled up yet) from
//! the raw samples. Thirty days of eight GPUs are 2 million raw rows but 5760 hourly ones.

use std::collections::BTreeMap;

use rusqlite::Row;

use super::history::{HOUR_MS, hour_start};
use super::{Store, StoreError};

/// One GPU over one closed hour, as `gpu_hourly` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuHourlyRow {
    /// Start of the hour, milliseconds since the Unix epoch.
    pub hour_ms: i64,
    /// The GPU's index.
    pub gpu_index: u32,
    /// Raw samples the hour aggregates.
    pub samples: u32,
    /// Tick-weighted mean SM utilization, percent.
    pub util_mean: Option<f64>,
    /// Floor of the lowest sample mean, percent.
    pub util_min: Option<i64>,
    /// Highest SM utilization, percent.
    pub util_max: Option<u32>,
    /// Mean of the samples' most memory used, bytes.
    pub mem_used_mean: Option<f64>,
    /// Most memory used, bytes.
    pub mem_used_max: Option<u64>,
    /// Tick-weighted mean temperature, degrees Celsius.
    pub temp_mean: Option<f64>,
    /// Highest temperature, degrees Celsius.
    pub temp_max: Option<i32>,
    /// Tick-weighted mean power, milliwatts.
    pub power_mean_mw: Option<f64>,
    /// Highest power, milliwatts.
    pub power_max_mw: Option<u32>,
    /// Energy used, watt-hours.
    pub energy_wh: Option<f64>,
}

/// One GPU's utilization over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuUsage {
    /// The GPU's index.
    pub gpu_index: u32,
    /// Raw samples (persist intervals) in the window, counted through the rollups too.
    pub samples: u64,
    /// Σ mean utilization × ticks, over the samples that knew their utilization.
    pub util_weighted: f64,
    /// Σ ticks of those samples.
    pub util_ticks: f64,
    /// Highest utilization of any sample.
    pub util_max: Option<u32>,
}

impl GpuUsage {
    /// The tick-weighted mean utilization; `None` when no sample knew it.
    pub fn util_mean(&self) -> Option<f64> {
        (self.util_ticks > 0.0).then(|| self.util_weighted / self.util_ticks)
    }

    fn add(&mut self, row: &Row<'_>) -> rusqlite::Result<()> {
        self.samples += row.get::<_, u64>(1)?;
        self.util_weighted += row.get::<_, Option<f64>>(2)?.unwrap_or(0.0);
        self.util_ticks += row.get::<_, Option<f64>>(3)?.unwrap_or(0.0);
        self.util_max = self.util_max.max(row.get(4)?);
        Ok(())
    }
}

/// The hourly rows of one GPU (or all) whose hour starts in `[?1, ?2)`.
const GPU_HOURLY_COLUMNS: &str = "hour_ms, gpu_index, samples, util_mean, util_min, util_max, \
    mem_used_mean, mem_used_max, temp_mean, temp_max, power_mean_mw, power_max_mw, energy_wh";

/// Per GPU over the hourly rows in `[?1, ?2)`: the columns [`GpuUsage::add`] reads. Rows
/// rolled up before `util_ticks` existed weigh their mean by their sample count.
const HOURLY_USAGE: &str = "SELECT gpu_index, sum(samples),
        sum(util_mean * coalesce(util_ticks, samples)),
        sum(CASE WHEN util_mean IS NOT NULL THEN coalesce(util_ticks, samples) END),
        max(util_max)
    FROM gpu_hourly WHERE hour_ms >= ?1 AND hour_ms < ?2 GROUP BY gpu_index";

/// Per GPU over the raw samples in `[?1, ?2)`: the columns [`GpuUsage::add`] reads.
const RAW_USAGE: &str = "SELECT gpu_index, count(*),
        sum(util_mean * ticks),
        sum(CASE WHEN util_mean IS NOT NULL THEN ticks END),
        max(util_max)
    FROM gpu_samples WHERE time_ms >= ?1 AND time_ms < ?2 GROUP BY gpu_index";

impl Store {
    /// The `gpu_hourly` rows of one GPU (or all when `None`) for the hours that start in
    /// `[hour of since_ms, until_ms)`, oldest first (then by GPU index).
    pub fn gpu_hourly(
        &self,
        gpu_index: Option<u32>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<GpuHourlyRow>, StoreError> {
        let filter = if gpu_index.is_some() {
            "AND gpu_index = ?3"
        } else {
            ""
        };
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT {GPU_HOURLY_COLUMNS} FROM gpu_hourly \
                 WHERE hour_ms >= ?1 AND hour_ms < ?2 {filter} ORDER BY hour_ms, gpu_index"
            ))
            .map_err(StoreError::Read)?;
        let since = hour_start(since_ms);
        let rows = match gpu_index {
            Some(gpu) => select.query_map(rusqlite::params![since, until_ms, gpu], hourly_row),
            None => select.query_map(rusqlite::params![since, until_ms], hourly_row),
        }
        .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }

    /// Per-GPU utilization over the samples in `[since_ms, until_ms)`, in index order. Whole
    /// hours inside the window that have a `gpu_hourly` row are read from the rollup; every
    /// other stretch from the raw samples, so the answer equals a scan of the raw samples
    /// (as long as they are kept) at the cost of a few thousand rows.
    pub fn gpu_usage(&self, since_ms: i64, until_ms: i64) -> Result<Vec<GpuUsage>, StoreError> {
        let mut usage: BTreeMap<u32, GpuUsage> = BTreeMap::new();
        let mut add = |row: &Row<'_>| -> rusqlite::Result<()> {
            let gpu_index: u32 = row.get(0)?;
            usage
                .entry(gpu_index)
                .or_insert_with(|| GpuUsage {
                    gpu_index,
                    ..GpuUsage::default()
                })
                .add(row)
        };
        // The whole hours inside the window.
        let first_hour = hour_start(since_ms.saturating_add(HOUR_MS - 1));
        let end_hour = hour_start(until_ms);
        let rolled_up = if first_hour < end_hour {
            self.hours_with_rollups(first_hour, end_hour)?
        } else {
            Vec::new()
        };
        for (from, to) in hour_runs(&rolled_up) {
            query_each(self, HOURLY_USAGE, from, to, &mut add)?;
        }
        for (from, to) in gaps(since_ms, until_ms, &rolled_up) {
            query_each(self, RAW_USAGE, from, to, &mut add)?;
        }
        Ok(usage.into_values().collect())
    }

    /// The hours in `[from, to)` that have a `gpu_hourly` row, ascending.
    fn hours_with_rollups(&self, from: i64, to: i64) -> Result<Vec<i64>, StoreError> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT hour_ms FROM gpu_hourly \
                 WHERE hour_ms >= ?1 AND hour_ms < ?2 ORDER BY hour_ms",
            )
            .map_err(StoreError::Read)?;
        let rows = select
            .query_map([from, to], |row| row.get(0))
            .map_err(StoreError::Read)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::Read)
    }
}

/// Runs `sql` over `[from, to)` and hands each row to `each`.
fn query_each(
    store: &Store,
    sql: &str,
    from: i64,
    to: i64,
    each: &mut impl FnMut(&Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    let mut select = store.conn.prepare_cached(sql).map_err(StoreError::Read)?;
    let mut rows = select.query([from, to]).map_err(StoreError::Read)?;
    while let Some(row) = rows.next().map_err(StoreError::Read)? {
        each(row).map_err(StoreError::Read)?;
    }
    Ok(())
}

/// Consecutive hours (ascending starts) merged into `[from, to)` runs.
fn hour_runs(hours: &[i64]) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &hour in hours {
        match runs.last_mut() {
            Some((_, to)) if *to == hour => *to = hour + HOUR_MS,
            _ => runs.push((hour, hour + HOUR_MS)),
        }
    }
    runs
}

/// `[since, until)` less the hours (ascending starts), as `[from, to)` stretches.
fn gaps(since: i64, until: i64, hours: &[i64]) -> Vec<(i64, i64)> {
    let mut gaps = Vec::new();
    let mut at = since;
    for (from, to) in hour_runs(hours) {
        if from > at {
            gaps.push((at, from));
        }
        at = at.max(to);
    }
    if at < until {
        gaps.push((at, until));
    }
    gaps
}

fn hourly_row(row: &Row<'_>) -> rusqlite::Result<GpuHourlyRow> {
    Ok(GpuHourlyRow {
        hour_ms: row.get("hour_ms")?,
        gpu_index: row.get("gpu_index")?,
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
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::GpuSampleRow;
    use super::*;

    /// 2024-05-01T00:00:00Z.
    const H0: i64 = 1_714_521_600_000;

    fn sample(time_ms: i64, gpu: u32, ticks: u32, util: Option<f64>) -> GpuSampleRow {
        GpuSampleRow {
            time_ms,
            gpu_index: gpu,
            uuid: None,
            pci_bus_id: None,
            name: None,
            ticks,
            util_mean: util,
            util_max: util.map(|util| util as u32 + 1),
            mem_util_mean: None,
            mem_used_max: Some(1 << 30),
            mem_total: None,
            temp_mean: None,
            temp_max: None,
            power_mean_mw: Some(100_000.0),
            power_max_mw: None,
            fan_mean: None,
            sm_clock_mean: None,
            mem_clock_mean: None,
        }
    }

    /// Three hours and a half of samples every 10 minutes on two GPUs, with varying ticks
    /// and a few unknown utilizations.
    fn fill(store: &mut Store) {
        let mut samples = Vec::new();
        for step in 0..21 {
            let time = H0 + step * 600_000;
            for gpu in 0..2u32 {
                let util = (step % 5 != 3).then(|| (step * 7 + i64::from(gpu) * 13) as f64 % 100.0);
                let ticks = 4 + (step as u32 % 3);
                samples.push(sample(time, gpu, ticks, util));
            }
        }
        store.write_history(&samples, &[]).unwrap();
    }

    fn raw_usage(store: &Store, since: i64, until: i64) -> Vec<GpuUsage> {
        let mut usage: BTreeMap<u32, GpuUsage> = BTreeMap::new();
        for row in store.gpu_samples(None, since, until).unwrap() {
            let entry = usage.entry(row.gpu_index).or_insert_with(|| GpuUsage {
                gpu_index: row.gpu_index,
                ..GpuUsage::default()
            });
            entry.samples += 1;
            if let Some(util) = row.util_mean {
                entry.util_weighted += util * f64::from(row.ticks);
                entry.util_ticks += f64::from(row.ticks);
            }
            entry.util_max = entry.util_max.max(row.util_max);
        }
        usage.into_values().collect()
    }

    fn assert_same(actual: &[GpuUsage], expected: &[GpuUsage]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (actual, expected) in actual.iter().zip(expected) {
            assert_eq!(actual.gpu_index, expected.gpu_index);
            assert_eq!(actual.samples, expected.samples);
            assert_eq!(actual.util_max, expected.util_max);
            assert!((actual.util_ticks - expected.util_ticks).abs() < 1e-9);
            let (a, e) = (actual.util_mean().unwrap(), expected.util_mean().unwrap());
            assert!((a - e).abs() < 1e-9, "{a} vs {e}");
        }
    }

    #[test]
    fn usage_from_rollups_and_raw_edges_equals_a_raw_scan() {
        let mut store = Store::open_in_memory().unwrap();
        fill(&mut store);
        // Hours 0 and 2 rolled up, hour 1 not yet (a daemon that was down), hour 3 open.
        for hour in [0, 2] {
            store
                .rollup_hour(H0 + hour * HOUR_MS, Duration::from_secs(600), None)
                .unwrap();
        }
        for (since, until) in [
            (H0, H0 + 4 * HOUR_MS),
            (H0 + 1, H0 + 3 * HOUR_MS + 1),
            (H0 + 25 * 60_000, H0 + 2 * HOUR_MS + 35 * 60_000),
            (H0 - HOUR_MS, H0 + 10 * HOUR_MS),
            (H0 + 10 * 60_000, H0 + 20 * 60_000),
        ] {
            assert_same(
                &store.gpu_usage(since, until).unwrap(),
                &raw_usage(&store, since, until),
            );
        }
    }

    #[test]
    fn usage_keeps_hours_whose_raw_samples_are_gone() {
        let mut store = Store::open_in_memory().unwrap();
        fill(&mut store);
        store
            .rollup_hour(H0, Duration::from_secs(600), None)
            .unwrap();
        let before = store.gpu_usage(H0, H0 + HOUR_MS).unwrap();
        store
            .conn
            .execute("DELETE FROM gpu_samples WHERE time_ms < ?1", [H0 + HOUR_MS])
            .unwrap();
        assert_same(&store.gpu_usage(H0, H0 + HOUR_MS).unwrap(), &before);
        assert_eq!(before[0].samples, 6);
    }

    #[test]
    fn gpu_hourly_reads_the_hours_of_the_window() {
        let mut store = Store::open_in_memory().unwrap();
        fill(&mut store);
        for hour in 0..3 {
            store
                .rollup_hour(H0 + hour * HOUR_MS, Duration::from_secs(600), None)
                .unwrap();
        }
        let rows = store.gpu_hourly(Some(1), H0 + 1, H0 + 2 * HOUR_MS).unwrap();
        let hours: Vec<i64> = rows.iter().map(|row| row.hour_ms).collect();
        assert_eq!(hours, [H0, H0 + HOUR_MS]);
        assert!(
            rows.iter()
                .all(|row| row.gpu_index == 1 && row.samples == 6)
        );
        assert_eq!(rows[0].mem_used_max, Some(1 << 30));
        // 100 W for six 10-minute intervals.
        assert!((rows[0].energy_wh.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(
            store.gpu_hourly(None, H0, H0 + 3 * HOUR_MS).unwrap().len(),
            6
        );
    }

    #[test]
    fn gaps_and_runs() {
        let h = HOUR_MS;
        assert_eq!(hour_runs(&[0, h, 3 * h]), [(0, 2 * h), (3 * h, 4 * h)]);
        assert_eq!(
            gaps(-5, 5 * h, &[0, h, 3 * h]),
            [(-5, 0), (2 * h, 3 * h), (4 * h, 5 * h)]
        );
        assert_eq!(gaps(0, h, &[0]), []);
        assert_eq!(gaps(3, 9, &[]), [(3, 9)]);
    }
}
