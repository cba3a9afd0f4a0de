//! Crash safety: `kill -9` the daemon at random points while it records history, 30 times;
//! the store must stay intact and keep everything it had committed.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

/// A small deterministic generator (xorshift) seeded from the clock; the seed is printed so
/// a failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_while_writing_never_corrupts_or_loses_committed_rows() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("seed {seed}");
    let mut random = Random(seed);
    let targets: Vec<Target> = (0..16).map(|_| Target::sleep(None)).collect();
    let gpus: Vec<serde_json::Value> = (0..4)
        .map(|gpu| {
            let processes: Vec<serde_json::Value> = targets[gpu * 4..gpu * 4 + 4]
                .iter()
                .map(|t| json!({"pid": t.pid(), "used_memory_bytes": [64 * MIB, 128 * MIB], "sm_util_pct": [5, 95]}))
                .collect();
            let mut value = full_gpu(gpu as u32, json!(processes));
            value["utilization_gpu_pct"] = json!([0, 25, 50, 75, 100]);
            value
        })
        .collect();
    let scenario = json!({"step_ms": 100, "gpus": gpus});
    let state = tempfile::Builder::new()
        .prefix("gpukill-crash-")
        .tempdir()
        .expect("state dir");
    let database = state.path().join("gpukill.db");
    let mut committed = 0i64;
    for round in 0..30 {
        let daemon = Daemon::start_with(
            &scenario,
            DaemonOptions {
                poll_interval: "100ms",
                config: format!(
                    "state_dir = {:?}\npersist_interval = \"1s\"\n",
                    state.path()
                ),
                ..DaemonOptions::default()
            },
        );
        std::thread::sleep(Duration::from_millis(300 + random.next() % 1500));
        drop(daemon.sigkill_keeping_dir());

        let db = rusqlite::Connection::open(&database).expect("open after kill -9");
        let integrity: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(integrity, "ok", "round {round} (seed {seed})");
        let rows: i64 = db
            .query_row("SELECT count(*) FROM gpu_samples", [], |r| r.get(0))
            .expect("count");
        assert!(
            rows >= committed,
            "round {round}: {rows} sample rows after {committed} (seed {seed})"
        );
        committed = rows;
        let duplicated: i64 = db
            .query_row(
                "SELECT count(*) FROM (SELECT 1 FROM gpu_hourly GROUP BY hour_ms, gpu_index HAVING count(*) > 1)",
                [],
                |r| r.get(0),
            )
            .expect("duplicates");
        assert_eq!(duplicated, 0);
        // Every session's sums are consistent with its own span.
        let inconsistent: i64 = db
            .query_row(
                "SELECT count(*) FROM process_sessions WHERE last_seen_ms < first_seen_ms OR gpu_seconds < 0",
                [],
                |r| r.get(0),
            )
            .expect("sessions");
        assert_eq!(inconsistent, 0);
    }
    assert!(committed > 0, "30 rounds wrote no history at all");
}
