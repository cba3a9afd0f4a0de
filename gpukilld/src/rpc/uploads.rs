//! `Uploads`, `UploadShow`, `UploadRetry`: the upload outbox as gpukillctl shows it, and an
//! admin's retry of parked or rejected hours.

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use crate::authz::Caller;
use crate::store::StoreHandle;
use crate::store::{OutboxEntry, OutboxStatus, OutboxSummary, RetryRefusal, SendAttemptRow};

/// Entries listed when the request does not say.
const DEFAULT_LIMIT: usize = 100;
/// The most entries one answer lists.
const MAX_LIMIT: usize = 10_000;

/// How uploads are configured, for the answers.
#[derive(Debug, Clone, Default)]
pub struct UploadSettings {
    /// Hours are queued (`[upload] url` or `offline`).
    pub enabled: bool,
    /// Queued without sending.
    pub offline: bool,
    /// Where they are sent.
    pub url: Option<String>,
}

impl UploadSettings {
    fn require(&self) -> Result<(), RpcError> {
        if self.enabled {
            Ok(())
        } else {
            Err(RpcError::UploadsOff)
        }
    }

    /// The summary message of `summary`.
    pub fn summary(&self, summary: OutboxSummary) -> pb::UploadSummary {
        pb::UploadSummary {
            pending: summary.pending,
            delivered: summary.delivered,
            parked: summary.parked,
            rejected: summary.rejected,
            dropped_total: summary.dropped_total,
            offline: self.offline,
            url: self.url.clone(),
        }
    }
}

fn status(status: OutboxStatus) -> pb::UploadStatus {
    match status {
        OutboxStatus::Pending => pb::UploadStatus::Pending,
        OutboxStatus::Delivered => pb::UploadStatus::Delivered,
        OutboxStatus::Parked => pb::UploadStatus::Parked,
        OutboxStatus::Rejected => pb::UploadStatus::Rejected,
    }
}

fn entry(entry: OutboxEntry) -> pb::UploadEntry {
    pb::UploadEntry {
        hour_unix_ms: entry.hour_ms,
        status: status(entry.status).into(),
        attempts: entry.attempts,
        first_attempt_unix_ms: entry.first_attempt_ms,
        last_attempt_unix_ms: entry.last_attempt_ms,
        last_error: entry.last_error,
        next_attempt_unix_ms: entry
            .next_attempt_ms
            .filter(|_| entry.status == OutboxStatus::Pending),
        sha256: entry.sha256,
        payload_bytes: entry.payload_bytes,
        delivered_unix_ms: entry.delivered_ms,
        created_unix_ms: entry.created_ms,
        gpu_rows: entry.gpu_rows,
        user_rows: entry.user_rows,
    }
}

fn attempt(row: SendAttemptRow) -> pb::SendAttempt {
    pb::SendAttempt {
        attempt: row.attempt,
        time_unix_ms: row.time_ms,
        http_status: row.http_status.map(u32::from),
        error: row.error,
        latency_ms: row.latency_ms,
    }
}

/// Answers `Uploads`.
pub async fn list(
    events: &StoreHandle,
    settings: &UploadSettings,
    request: pb::UploadsRequest,
) -> Result<pb::UploadsResponse, RpcError> {
    settings.require()?;
    let log = events.get().map_err(RpcError::StoreUnavailable)?;
    let wanted = match pb::UploadStatus::try_from(request.status) {
        Ok(pb::UploadStatus::Unspecified) => None,
        Ok(pb::UploadStatus::Pending) => Some(OutboxStatus::Pending),
        Ok(pb::UploadStatus::Delivered) => Some(OutboxStatus::Delivered),
        Ok(pb::UploadStatus::Parked) => Some(OutboxStatus::Parked),
        Ok(pb::UploadStatus::Rejected) => Some(OutboxStatus::Rejected),
        Err(_) => return Err(RpcError::UnknownUploadStatus(request.status)),
    };
    let limit = match request.limit as usize {
        0 => DEFAULT_LIMIT,
        limit => limit.min(MAX_LIMIT),
    };
    let (entries, summary) = log
        .read(move |store| store.outbox_list(wanted, limit))
        .await?;
    Ok(pb::UploadsResponse {
        entries: entries.into_iter().map(entry).collect(),
        summary: Some(settings.summary(summary)),
    })
}

/// Answers `UploadShow`.
pub async fn show(
    events: &StoreHandle,
    settings: &UploadSettings,
    request: pb::UploadShowRequest,
) -> Result<pb::UploadShowResponse, RpcError> {
    settings.require()?;
    let log = events.get().map_err(RpcError::StoreUnavailable)?;
    let hour = request.hour_unix_ms;
    let found = log.read(move |store| store.outbox_show(hour)).await?;
    let Some(shown) = found else {
        return Err(RpcError::NoUpload(crate::store::hour_start(hour)));
    };
    Ok(pb::UploadShowResponse {
        entry: Some(entry(shown.entry)),
        attempts: shown.attempts.into_iter().map(attempt).collect(),
        payload_json: String::from_utf8_lossy(&shown.payload).into_owned(),
    })
}

/// Answers `UploadRetry` (admins only; audited).
pub async fn retry(
    events: &StoreHandle,
    settings: &UploadSettings,
    admin_group: &str,
    caller: Caller,
    request: pb::UploadRetryRequest,
) -> Result<pb::UploadRetryResponse, RpcError> {
    settings.require()?;
    let log = events.get().map_err(RpcError::StoreUnavailable)?;
    let principal = super::principal(caller, admin_group).await?;
    let hour = match request.target {
        Some(pb::upload_retry_request::Target::HourUnixMs(hour)) => Some(hour),
        Some(pb::upload_retry_request::Target::AllParked(true)) => None,
        _ => {
            return Err(RpcError::InvalidUploadRetry);
        }
    };
    let action = match hour {
        Some(hour) => format!("uploads retry {}", crate::store::hour_start(hour)),
        None => "uploads retry --all-parked".to_string(),
    };
    super::admin_only(
        log,
        &principal,
        admin_group,
        &action,
        "sending parked or rejected uploads again",
    )
    .await?;
    let now = crate::store::unix_ms(std::time::SystemTime::now());
    let requeued = log
        .write(move |store| store.outbox_retry(hour, now))
        .await?;
    match requeued {
        Ok(hours) => {
            tracing::info!(%action, user = %principal.user, hours = hours.len(), "uploads requeued");
            Ok(pb::UploadRetryResponse {
                requeued_hours: hours,
            })
        }
        Err(RetryRefusal::NotFound(hour)) => Err(RpcError::NoUpload(hour)),
        Err(RetryRefusal::NotStuck(hour, status)) => {
            Err(RpcError::UploadNotStuck(hour, status.as_str()))
        }
    }
}
