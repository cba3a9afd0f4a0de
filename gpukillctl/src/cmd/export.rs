//! `gpukillctl audit export --format jsonl`: the window's history as the original gpukill
//! audit.jsonl. Reads it in six-hour pages (History at raw resolution, and Sessions), so no
//! answer grows past the message size limit, and writes each page as it comes.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use gpukill_proto::v1::{GpuSample, HistoryRequest, Resolution, Session, SessionsRequest};

use crate::Output;
use crate::cli::AuditExportArgs;
use crate::conn;
use crate::error::Error;
use crate::render::gpukill_record::GpukillRecord;

/// The window of one page: six hours of eight GPUs at 10 s are 17280 samples.
const PAGE_MS: i64 = 6 * 3_600_000;
/// The most sessions Sessions returns for one request (its default limit).
const SESSIONS_LIMIT: usize = 10_000;
/// Bytes per MiB.
const MIB: u64 = 1 << 20;

/// Runs `gpukillctl audit export` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &AuditExportArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let (since, until) = args.window.unix_ms(SystemTime::now());
    if since >= until {
        return Err(Error::Usage(format!(
            "--since ({since} ms) must be before --until ({until} ms)"
        )));
    }
    let mut client = conn::connect(target).await?;
    // The latest product name of each GPU, for process records.
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut start = since;
    while start < until {
        let end = start.saturating_add(PAGE_MS).min(until);
        let samples = client
            .history(conn::unary(HistoryRequest {
                gpu_index: args.gpu,
                since_unix_ms: start,
                until_unix_ms: end,
                resolution: Resolution::Raw.into(),
            }))
            .await
            .map_err(|status| Error::rpc("History", status))?
            .into_inner()
            .samples;
        let sessions = client
            .sessions(conn::unary(SessionsRequest {
                since_unix_ms: start,
                until_unix_ms: end,
                gpu_index: args.gpu,
                ..Default::default()
            }))
            .await
            .map_err(|status| Error::rpc("Sessions", status))?
            .into_inner()
            .sessions;
        if sessions.len() >= SESSIONS_LIMIT {
            out.note(&format!(
                "warning: more than {SESSIONS_LIMIT} sessions between {start} and {end} ms; only the {SESSIONS_LIMIT} seen last are exported"
            ))?;
        }
        // A session belongs to the page of its first sighting (the first page also takes
        // those that began before the window).
        let first_page = start == since;
        let sessions = sessions
            .into_iter()
            .filter(|session| first_page || session.first_seen_unix_ms >= start);
        let text = page(samples, sessions, &mut names)?;
        out.write(&text)?;
        start = end;
    }
    Ok(())
}

/// One page of records as JSON lines, oldest first (a GPU's record before its processes').
fn page(
    samples: Vec<GpuSample>,
    sessions: impl Iterator<Item = Session>,
    names: &mut HashMap<u32, String>,
) -> Result<String, Error> {
    let mut records: Vec<GpukillRecord> = Vec::new();
    for sample in samples {
        if let Some(name) = &sample.name {
            names.insert(sample.gpu_index, name.clone());
        }
        records.push(gpu_record(&sample));
    }
    for session in sessions {
        let name = names.get(&session.gpu_index).cloned().unwrap_or_default();
        records.push(process_record(&session, &name));
    }
    records.sort_by(|a, b| {
        (
            a.id - i64::from(a.pid.unwrap_or(0)),
            a.pid.is_some(),
            a.gpu_index,
        )
            .cmp(&(
                b.id - i64::from(b.pid.unwrap_or(0)),
                b.pid.is_some(),
                b.gpu_index,
            ))
    });
    let mut text = String::new();
    for record in records {
        text.push_str(&crate::render::json::compact(&record)?);
        text.push('\n');
    }
    Ok(text)
}

/// A GPU sample as gpukill's GPU record: the interval's means, its most memory used.
fn gpu_record(sample: &GpuSample) -> GpukillRecord {
    let name = sample.name.clone().unwrap_or_default();
    GpukillRecord {
        memory_used_mb: sample.mem_used_max_bytes.unwrap_or(0) / MIB,
        utilization_pct: sample.util_mean.unwrap_or(0.0),
        temperature_c: sample.temp_mean.map_or(0, |temp| temp.round() as i32),
        power_w: sample.power_mean_mw.map_or(0.0, |mw| mw / 1000.0),
        ..GpukillRecord::at(sample.time_unix_ms, sample.gpu_index, &name, None)
    }
}

/// A process session as gpukill's process record: at its first sighting, with its peak
/// memory and (when known) its mean SM utilization.
fn process_record(session: &Session, gpu_name: &str) -> GpukillRecord {
    let utilization = session
        .util_seconds
        .filter(|_| session.gpu_seconds > 0.0)
        .map_or(0.0, |util| util / session.gpu_seconds * 100.0);
    GpukillRecord {
        user: Some(session.user.clone()),
        process_name: Some(session.name.clone()),
        memory_used_mb: session.peak_memory_bytes.unwrap_or(0) / MIB,
        utilization_pct: utilization,
        container: session.container_id.clone(),
        ..GpukillRecord::at(
            session.first_seen_unix_ms,
            session.gpu_index,
            gpu_name,
            Some(session.pid),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};

    #[tokio::test]
    async fn export_pages_the_window_and_writes_gpukill_records() {
        let daemon = FakeDaemon {
            history: Some(Ok(testutil::history_response())),
            sessions: Some(Ok(testutil::sessions_response())),
            ..Default::default()
        };
        let history_requests = daemon.history_requests.clone();
        let sessions_requests = daemon.sessions_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["audit", "export", "--format", "jsonl", "--hours", "12"],
        )
        .await;
        result.expect("export succeeds");

        // Two six-hour pages, each asking for raw samples and sessions of the same stretch.
        let history = history_requests.lock().expect("lock").clone();
        let sessions = sessions_requests.lock().expect("lock").clone();
        assert_eq!(history.len(), 2);
        assert_eq!(sessions.len(), 2);
        assert_eq!(history[0].until_unix_ms, history[1].since_unix_ms);
        assert_eq!(
            history[1].until_unix_ms - history[0].since_unix_ms,
            12 * 3_600_000
        );
        assert!(history.iter().all(|r| r.resolution() == Resolution::Raw));
        for (h, s) in history.iter().zip(&sessions) {
            assert_eq!(
                (h.since_unix_ms, h.until_unix_ms),
                (s.since_unix_ms, s.until_unix_ms)
            );
        }

        // The fake answers the same to both pages: every line parses back.
        let records: Vec<GpukillRecord> = text
            .lines()
            .map(|line| GpukillRecord::parse(line).expect("a gpukill record"))
            .collect();
        let gpu = records
            .iter()
            .find(|r| r.pid.is_none())
            .expect("a GPU record");
        assert_eq!(gpu.timestamp, "2024-05-01T11:59:50.000Z");
        assert_eq!(gpu.gpu_name, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpu.memory_used_mb, 25 * 1024);
        assert_eq!(gpu.temperature_c, 64);
        assert!((gpu.power_w - 245.1235).abs() < 1e-9);
        assert!(records.iter().any(|r| r.pid.is_some() && r.user.is_some()));
        let times: Vec<i64> = records
            .iter()
            .map(|r| crate::render::gpukill_record::parse_timestamp(&r.timestamp).expect("time"))
            .collect();
        // The first page has both samples and both sessions (first seen before the window);
        // the second only the samples, since those sessions were exported already.
        assert_eq!(records.len(), 6);
        assert!(
            times[..4].is_sorted() && times[4..].is_sorted(),
            "{times:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_window_is_a_usage_error() {
        let served = serve(FakeDaemon::default());
        let (result, _, _) = run_cli(
            &served.socket,
            &[
                "audit",
                "export",
                "--since",
                "2024-05-01T12:00:00Z",
                "--until",
                "2024-05-01T11:00:00Z",
            ],
        )
        .await;
        let err = result.expect_err("refused");
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("must be before --until"), "{err}");
    }
}
