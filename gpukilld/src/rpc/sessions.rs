//! `Sessions`: who used which GPU, and how much, over a window of the metrics history.

use gpukill_proto::v1 as pb;
use regex::Regex;

use super::error::RpcError;
use crate::store::StoredSession;

/// Sessions returned when the request names no limit.
const DEFAULT_LIMIT: usize = 10_000;
/// The most sessions one request may return.
const MAX_LIMIT: usize = 100_000;
/// Bytes per GiB.
const GIB: f64 = (1u64 << 30) as f64;
/// Seconds per hour.
const HOUR_SECS: f64 = 3600.0;

/// Answers `Sessions`. Anyone may read usage: on a shared node it is not secret.
pub async fn sessions(
    store: &crate::store::StoreHandle,
    request: pb::SessionsRequest,
) -> Result<pb::SessionsResponse, RpcError> {
    let filter = Filter::new(&request)?;
    let log = store.get().map_err(RpcError::StoreUnavailable)?;
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        limit => (limit as usize).min(MAX_LIMIT),
    };
    // The store selects the window by index; the rest is filtered here, which is cheap next
    // to the read.
    let sessions = log
        .sessions(request.since_unix_ms, request.until_unix_ms)
        .await?;
    Ok(pb::SessionsResponse {
        sessions: sessions
            .into_iter()
            .filter(|stored| filter.matches(stored))
            .take(limit)
            .map(session)
            .collect(),
    })
}

/// What a request selects beyond its window.
#[derive(Debug)]
struct Filter {
    user: Option<String>,
    process: Option<Regex>,
    gpu_index: Option<u32>,
}

impl Filter {
    /// Checks the window and compiles the regex.
    fn new(request: &pb::SessionsRequest) -> Result<Self, RpcError> {
        check_window(request.since_unix_ms, request.until_unix_ms)?;
        let process = request
            .process_regex
            .clone()
            .map(|pattern| {
                Regex::new(&pattern)
                    .map_err(|source| RpcError::InvalidProcessRegex { pattern, source })
            })
            .transpose()?;
        Ok(Self {
            user: request.user.clone(),
            process,
            gpu_index: request.gpu_index,
        })
    }

    /// Whether `stored` is selected: by user name or numeric uid, process name or command
    /// line, and GPU. A user name is compared as recorded, not looked up, so sessions of a
    /// user deleted since still match.
    fn matches(&self, stored: &StoredSession) -> bool {
        let user = self
            .user
            .as_ref()
            .is_none_or(|user| *user == stored.user || *user == stored.uid.to_string());
        let process = self
            .process
            .as_ref()
            .is_none_or(|regex| regex.is_match(&stored.name) || regex.is_match(&stored.cmdline));
        let gpu = self
            .gpu_index
            .is_none_or(|gpu_index| gpu_index == stored.gpu_index);
        user && process && gpu
    }
}

/// `InvalidWindow` unless `since_unix_ms < until_unix_ms`.
pub(super) fn check_window(since_unix_ms: i64, until_unix_ms: i64) -> Result<(), RpcError> {
    if since_unix_ms < until_unix_ms {
        Ok(())
    } else {
        Err(RpcError::InvalidWindow {
            since_unix_ms,
            until_unix_ms,
        })
    }
}

pub(super) fn session(stored: StoredSession) -> pb::Session {
    pb::Session {
        pid: stored.pid,
        start_time_unix_ms: stored.start_time_ms,
        gpu_index: stored.gpu_index,
        first_seen_unix_ms: stored.first_seen_ms,
        last_seen_unix_ms: stored.last_seen_ms,
        uid: stored.uid,
        user: stored.user,
        name: stored.name,
        cmdline: stored.cmdline,
        container_id: stored.container_id,
        peak_memory_bytes: stored.peak_memory_bytes,
        gpu_seconds: stored.gpu_seconds,
        memory_gib_hours: stored.memory_byte_seconds / GIB / HOUR_SECS,
        util_seconds: stored.util_seconds,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::{Database, StoreHandle};
    use std::sync::Arc;
    use tonic::Code;
    use tonic::Status;

    fn stored(pid: u32, user: &str, name: &str, gpu_index: u32) -> StoredSession {
        StoredSession {
            id: i64::from(pid),
            pid,
            start_time_ms: 1_000,
            gpu_index,
            first_seen_ms: 2_000,
            last_seen_ms: 3_000,
            uid: 1000 + pid,
            user: user.to_owned(),
            name: name.to_owned(),
            cmdline: format!("{name} --job {pid}"),
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            peak_memory_bytes: Some(100),
            memory_byte_seconds: 2.0 * GIB * HOUR_SECS,
            gpu_seconds: 10.0,
            util_seconds: None,
        }
    }

    fn request() -> pb::SessionsRequest {
        pb::SessionsRequest {
            since_unix_ms: 0,
            until_unix_ms: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn filters_select_by_user_uid_process_and_gpu() {
        let alice = stored(1, "alice", "python", 0);
        let bob = stored(2, "bob", "miner", 1);
        let all = Filter::new(&request()).unwrap();
        assert!(all.matches(&alice) && all.matches(&bob));
        let by_name = Filter::new(&pb::SessionsRequest {
            user: Some("alice".to_owned()),
            ..request()
        })
        .unwrap();
        assert!(by_name.matches(&alice) && !by_name.matches(&bob));
        let by_uid = Filter::new(&pb::SessionsRequest {
            user: Some("1002".to_owned()),
            ..request()
        })
        .unwrap();
        assert!(!by_uid.matches(&alice) && by_uid.matches(&bob));
        let by_cmdline = Filter::new(&pb::SessionsRequest {
            process_regex: Some("--job 1$".to_owned()),
            ..request()
        })
        .unwrap();
        assert!(by_cmdline.matches(&alice) && !by_cmdline.matches(&bob));
        let by_gpu = Filter::new(&pb::SessionsRequest {
            gpu_index: Some(1),
            ..request()
        })
        .unwrap();
        assert!(!by_gpu.matches(&alice) && by_gpu.matches(&bob));
    }

    #[test]
    fn a_bad_window_or_regex_is_an_invalid_argument_naming_it() {
        let error = Filter::new(&pb::SessionsRequest {
            since_unix_ms: 5_000,
            until_unix_ms: 5_000,
            ..request()
        })
        .unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("since (5000 ms)"), "{status:?}");
        assert!(status.message().contains("until (5000 ms)"), "{status:?}");

        let error = Filter::new(&pb::SessionsRequest {
            process_regex: Some("py(".to_owned()),
            ..request()
        })
        .unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("invalid process regex \"py(\""),
            "{status:?}"
        );
    }

    #[test]
    fn memory_is_converted_to_gib_hours() {
        let converted = session(stored(1, "alice", "python", 0));
        assert!((converted.memory_gib_hours - 2.0).abs() < 1e-9);
        assert_eq!(converted.peak_memory_bytes, Some(100));
        assert_eq!(converted.first_seen_unix_ms, 2_000);
    }

    #[tokio::test]
    async fn sessions_read_the_store() {
        let log = Arc::new(Database::start_in_memory().unwrap());
        let answer = sessions(&StoreHandle::from(log), request()).await.unwrap();
        assert!(answer.sessions.is_empty());
        let error = sessions(&StoreHandle::unavailable("no store".to_owned()), request())
            .await
            .unwrap_err();
        assert!(matches!(error, RpcError::StoreUnavailable(_)), "{error:?}");
    }
}
