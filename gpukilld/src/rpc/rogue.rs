//! `Rogue`: the process sessions of a window scored with the guard's rogue model. History
//! has no exe names, so a renamed miner is found there by its argv[0] only.

use std::time::{Duration, UNIX_EPOCH};

use gpukill_proto::v1 as pb;

use super::convert;
use super::error::RpcError;
use super::sessions::{check_window, session};
use crate::guard::clock;
use crate::guard::engine::Guard;
use crate::guard::rogue::{Observed, RogueConfig, RogueScorer};
use crate::store::StoredSession;

/// Answers `Rogue`. Anyone may ask.
pub async fn rogue(
    store: &crate::store::StoreHandle,
    guard: &Guard,
    request: pb::RogueRequest,
) -> Result<pb::RogueResponse, RpcError> {
    check_window(request.since_unix_ms, request.until_unix_ms)?;
    let min_level = convert::min_rogue_level(request.min_level)?;
    let scorer = match guard.status().loaded {
        Some(loaded) => loaded.policy.rogue.clone(),
        None => RogueScorer::new(&RogueConfig::default())
            .map_err(|_| RpcError::Internal("the default rogue model does not compile"))?,
    };
    let log = store.get().map_err(RpcError::StoreUnavailable)?;
    let (since, until) = (request.since_unix_ms, request.until_unix_ms);
    let sessions = log.sessions(since, until).await?;
    let mut findings: Vec<pb::RogueFinding> = sessions
        .into_iter()
        .filter_map(|stored| {
            let finding = scorer.score(&observed(&stored));
            (finding.level >= min_level).then(|| pb::RogueFinding {
                score: finding.score,
                level: pb::RogueLevel::from(finding.level).into(),
                reasons: finding.reasons,
                session: Some(session(stored)),
            })
        })
        .collect();
    findings.sort_by(|a, b| {
        let last_seen =
            |f: &pb::RogueFinding| f.session.as_ref().map_or(0, |s| s.last_seen_unix_ms);
        b.score.cmp(&a.score).then(last_seen(b).cmp(&last_seen(a)))
    });
    Ok(pb::RogueResponse { findings })
}

/// What the scorer knows of a stored session: no exe name; utilization as the session's
/// mean over its time on the GPU.
fn observed(stored: &StoredSession) -> Observed<'_> {
    let ms = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let mean_util_pct = stored
        .util_seconds
        .filter(|_| stored.gpu_seconds > 0.0)
        .map(|util| util / stored.gpu_seconds * 100.0);
    let local = clock::local_time(UNIX_EPOCH + ms(stored.first_seen_ms));
    Observed {
        name: &stored.name,
        exe_name: None,
        cmdline: &stored.cmdline,
        user: &stored.user,
        uid: stored.uid,
        running_for: ms(stored.last_seen_ms - stored.start_time_ms),
        mean_util_pct,
        util_window: ms(stored.last_seen_ms - stored.first_seen_ms),
        local_hour: u8::try_from(local.minute / 60).ok(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::{Database, StoreHandle};
    use crate::store::{HistoryBatch, SessionUpdate};
    use std::sync::Arc;
    use tonic::{Code, Status};

    fn update(pid: u32, name: &str, cmdline: &str, now_ms: i64) -> SessionUpdate {
        SessionUpdate {
            pid,
            start_time_ms: now_ms - 60_000,
            gpu_index: 0,
            first_seen_ms: now_ms - 50_000,
            last_seen_ms: now_ms - 10_000,
            uid: 1000,
            user: "alice".into(),
            name: name.into(),
            cmdline: cmdline.into(),
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            peak_memory_bytes: Some(1 << 30),
            memory_byte_seconds: 0.0,
            gpu_seconds: 40.0,
            util_seconds: Some(10.0),
        }
    }

    #[tokio::test]
    async fn stored_sessions_are_scored_highest_first() {
        let now_ms = crate::store::unix_ms(std::time::SystemTime::now());
        let log = Arc::new(Database::start_in_memory().unwrap());
        log.record_history(HistoryBatch {
            samples: Vec::new(),
            sessions: vec![
                update(1, "python3", "python3 train.py", now_ms),
                update(
                    2,
                    "python3",
                    "xmrig --donate-level 1 -o stratum+tcp://pool:3333",
                    now_ms,
                ),
                update(3, "ethminer", "ethminer -P stratum://x", now_ms),
            ],
        });
        let guard = Guard::new("/nonexistent/guard.toml".into(), None, Vec::new());
        let request = |min_level: i32| pb::RogueRequest {
            since_unix_ms: now_ms - 3_600_000,
            until_unix_ms: now_ms,
            min_level,
        };
        let log = StoreHandle::from(log);
        let mut answer = rogue(&log, &guard, request(0)).await.unwrap();
        for _ in 0..100 {
            if answer.findings.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = rogue(&log, &guard, request(0)).await.unwrap();
        }
        let mut pids: Vec<u32> = answer
            .findings
            .iter()
            .map(|f| f.session.as_ref().unwrap().pid)
            .collect();
        pids.sort_unstable();
        // Both miners (the renamed one by its argv[0]); the trainer not at all.
        assert_eq!(pids, [2, 3]);
        let renamed = answer
            .findings
            .iter()
            .find(|f| f.session.as_ref().unwrap().pid == 2)
            .unwrap();
        assert_eq!(renamed.level(), pb::RogueLevel::Critical);
        assert!(
            renamed.reasons.iter().any(|r| r.contains("xmrig")),
            "{:?}",
            renamed.reasons
        );
        assert!(answer.findings[0].score >= answer.findings[1].score);
        let critical = rogue(&log, &guard, request(pb::RogueLevel::Critical.into()))
            .await
            .unwrap();
        let pids: Vec<u32> = critical
            .findings
            .iter()
            .map(|f| f.session.as_ref().unwrap().pid)
            .collect();
        assert!(pids.contains(&2), "{pids:?}");
        assert!(
            critical
                .findings
                .iter()
                .all(|f| f.level() == pb::RogueLevel::Critical)
        );
        let error = rogue(&log, &guard, request(7)).await.unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("invalid rogue level 7: use "),
            "{}",
            status.message()
        );
    }
}
