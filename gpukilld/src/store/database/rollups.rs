//! What the writer thread does once an hour (and at start, for the hours missed while the
//! daemon was down): roll up every closed hour that has raw data but no rollup (queueing it
//! for upload when uploads are on), delete what is past its retention, prune delivered
//! uploads. And the rollups an import of audit records changes, redone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::history_queue::{HistoryOptions, HistoryQueue};
use super::lock;
use crate::store::{
    ImportRecord, ImportSummary, PruneSummary, Store, StoreError, hour_start, unix_ms,
};

/// Rows deleted per retention transaction: small, so readers never wait long.
const PRUNE_BATCH_ROWS: usize = 1000;

/// Once per hour (and at start): rolls up every closed hour that has raw data but no
/// rollup, then deletes what is past its retention, in small transactions.
pub(super) fn roll_up(
    store: &Mutex<Store>,
    history: &HistoryQueue,
    options: &HistoryOptions,
    rolled_up_through: &mut Option<i64>,
) {
    let now_ms = unix_ms(std::time::SystemTime::now());
    let hour = now_ms - now_ms.rem_euclid(3_600_000);
    if *rolled_up_through == Some(hour) {
        return;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut store = lock(store);
        let mut done = 0;
        for hour in store.hours_needing_rollup(now_ms)? {
            rollup_hour(&mut store, hour, options)?;
            done += 1;
        }
        let pruned = store.prune(now_ms, &options.retention, PRUNE_BATCH_ROWS)?;
        if pruned != PruneSummary::default() {
            tracing::info!(?pruned, "retention pass");
        }
        if options.outbox.is_some() {
            let keep = i64::try_from(options.delivered_retention.as_millis()).unwrap_or(i64::MAX);
            let delivered = store.outbox_prune_delivered(now_ms.saturating_sub(keep))?;
            if delivered > 0 {
                tracing::info!(delivered, "pruned delivered uploads");
            }
        }
        Ok::<_, StoreError>(done)
    }));
    match result {
        Ok(Ok(done)) => {
            history.hours_rolled_up.fetch_add(done, Ordering::Relaxed);
            *rolled_up_through = Some(hour);
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::errors::chain(&error), "hourly rollup failed; will retry");
        }
        Err(_) => tracing::error!("the hourly rollup panicked; will retry"),
    }
}

/// Imports `records`, then rolls up again each closed hour the import changed whose
/// rollup can still be redone: one not rolled up yet, or one whose raw samples are still
/// kept. (An hour rolled up long ago has lost its raw samples; redoing it from the imported
/// ones alone would replace it with less. There the imported samples only go to waste.)
pub(super) fn import(
    store: &mut Store,
    records: &[ImportRecord],
    history: &HistoryQueue,
    options: &HistoryOptions,
) -> Result<ImportSummary, StoreError> {
    let now_ms = unix_ms(std::time::SystemTime::now());
    let age = |limit: Duration| i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    let summary = store.import_records(
        records,
        now_ms.saturating_sub(age(options.retention.rollups)),
    )?;
    let open_hour = hour_start(now_ms);
    let raw_kept_from = now_ms.saturating_sub(age(options.retention.samples));
    for &hour in summary.hours.range(..open_hour) {
        if hour >= raw_kept_from || !store.is_rolled_up(hour)? {
            rollup_hour(store, hour, options)?;
            history.hours_rolled_up.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(summary)
}

/// Rolls up one hour (queueing it for upload when uploads are on) and logs the uploads the
/// outbox's bound dropped.
fn rollup_hour(store: &mut Store, hour: i64, options: &HistoryOptions) -> Result<(), StoreError> {
    let summary = store.rollup_hour(hour, options.persist_interval, options.outbox.as_ref())?;
    if let (Some(first), Some(last)) = (
        summary.dropped_uploads.first(),
        summary.dropped_uploads.last(),
    ) {
        tracing::warn!(
            dropped = summary.dropped_uploads.len(),
            oldest_hour_ms = first.min(last),
            max_outbox_hours = options.outbox.as_ref().map(|o| o.max_hours),
            "the upload outbox is full: dropped the oldest undelivered hours"
        );
    }
    Ok(())
}
