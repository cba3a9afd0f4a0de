//! `History`: the metrics history of the GPUs, one sample per GPU and persist interval, or
//! one row per GPU and hour for long windows.

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use super::sessions::check_window;
use crate::store::{GpuHourlyRow, GpuSampleRow};

/// Windows longer than this are answered from the hourly rollups unless the request asks
/// for raw samples: two days of raw samples at the default 10 s interval are 17280 rows per
/// GPU, already more than a chart can show.
const AUTO_RAW_LIMIT_MS: i64 = 2 * 24 * 3_600_000;

/// Answers `History`. Anyone may read it.
pub async fn history(
    store: &crate::store::StoreHandle,
    request: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, RpcError> {
    let (since, until) = (request.since_unix_ms, request.until_unix_ms);
    check_window(since, until)?;
    let log = store.get().map_err(RpcError::StoreUnavailable)?;
    let gpu = request.gpu_index;
    let resolution = match request.resolution() {
        pb::Resolution::Unspecified if until.saturating_sub(since) > AUTO_RAW_LIMIT_MS => {
            pb::Resolution::Hourly
        }
        pb::Resolution::Unspecified => pb::Resolution::Raw,
        chosen => chosen,
    };
    let samples = match resolution {
        pb::Resolution::Hourly => log
            .read(move |store| store.gpu_hourly(gpu, since, until))
            .await?
            .into_iter()
            .map(hourly)
            .collect(),
        _ => log
            .gpu_samples(gpu, since, until)
            .await?
            .into_iter()
            .map(raw)
            .collect(),
    };
    Ok(pb::HistoryResponse {
        samples,
        resolution: resolution.into(),
    })
}

fn raw(row: GpuSampleRow) -> pb::GpuSample {
    pb::GpuSample {
        time_unix_ms: row.time_ms,
        gpu_index: row.gpu_index,
        uuid: row.uuid,
        name: row.name,
        ticks: row.ticks,
        util_mean: row.util_mean,
        util_max: row.util_max,
        mem_util_mean: row.mem_util_mean,
        mem_used_max_bytes: row.mem_used_max,
        mem_total_bytes: row.mem_total,
        temp_mean: row.temp_mean,
        temp_max: row.temp_max,
        power_mean_mw: row.power_mean_mw,
        power_max_mw: row.power_max_mw,
        pci_bus_id: row.pci_bus_id,
        fan_mean_pct: row.fan_mean,
        sm_clock_mean_mhz: row.sm_clock_mean,
        mem_clock_mean_mhz: row.mem_clock_mean,
        samples: 1,
        util_min: None,
        mem_used_mean_bytes: None,
        energy_wh: None,
    }
}

fn hourly(row: GpuHourlyRow) -> pb::GpuSample {
    pb::GpuSample {
        time_unix_ms: row.hour_ms,
        gpu_index: row.gpu_index,
        samples: row.samples,
        util_mean: row.util_mean,
        // A floor of a mean in 0..=100; anything else is not a percentage.
        util_min: row.util_min.and_then(|min| u32::try_from(min).ok()),
        util_max: row.util_max,
        mem_used_mean_bytes: row.mem_used_mean,
        mem_used_max_bytes: row.mem_used_max,
        temp_mean: row.temp_mean,
        temp_max: row.temp_max,
        power_mean_mw: row.power_mean_mw,
        power_max_mw: row.power_max_mw,
        energy_wh: row.energy_wh,
        ..pb::GpuSample::default()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::HistoryBatch;
    use crate::store::{Database, StoreHandle};
    use std::sync::Arc;
    use std::time::Duration;
    use tonic::{Code, Status};

    fn row(gpu_index: u32, time_ms: i64) -> GpuSampleRow {
        GpuSampleRow {
            time_ms,
            gpu_index,
            uuid: None,
            pci_bus_id: None,
            name: None,
            ticks: 10,
            util_mean: Some(50.0),
            util_max: Some(80),
            mem_util_mean: None,
            mem_used_max: Some(1 << 30),
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

    #[tokio::test]
    async fn history_returns_the_rows_of_the_window_and_gpu() {
        // Recent rows: retention would prune rows from 1970 before they could be read.
        let now_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let (t0, t1, later) = (now_ms - 60_000, now_ms - 50_000, now_ms - 5_000);
        let log = Arc::new(Database::start_in_memory().unwrap());
        log.record_history(HistoryBatch {
            samples: vec![row(0, t0), row(1, t0), row(0, t1), row(0, later)],
            sessions: Vec::new(),
        });
        let request = || pb::HistoryRequest {
            gpu_index: Some(0),
            since_unix_ms: t0,
            until_unix_ms: later,
            resolution: pb::Resolution::Unspecified.into(),
        };
        // The writer thread writes history on its own schedule.
        let log = StoreHandle::from(log);
        let mut answer = history(&log, request()).await.unwrap();
        for _ in 0..100 {
            if !answer.samples.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = history(&log, request()).await.unwrap();
        }
        let times: Vec<i64> = answer.samples.iter().map(|s| s.time_unix_ms).collect();
        assert_eq!(times, [t0, t1]);
        assert_eq!(answer.resolution(), pb::Resolution::Raw);
        assert_eq!(answer.samples[0].samples, 1);
        assert_eq!(answer.samples[0].util_mean, Some(50.0));
        assert_eq!(answer.samples[0].mem_used_max_bytes, Some(1 << 30));
        assert_eq!(answer.samples[0].temp_mean, None);
    }

    #[tokio::test]
    async fn a_window_that_ends_before_it_starts_is_refused() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let error = history(
            &StoreHandle::from(log),
            pb::HistoryRequest {
                gpu_index: None,
                since_unix_ms: 9,
                until_unix_ms: 3,
                resolution: 0,
            },
        )
        .await
        .unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "since (9 ms) must be before until (3 ms)");
    }
}
