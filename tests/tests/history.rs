//! Metrics history end to end: what the daemon stores per persist interval equals what it
//! saw tick by tick (as a Watch client records it), means and maxima exactly.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Daemon, DaemonOptions, MIB, Target, full_gpu};

const PERSIST_MS: i64 = 1000;

fn ts_ms(snapshot: &Value) -> i64 {
    let text = snapshot["ts"].as_str().expect("ts");
    let time = humantime::parse_rfc3339_weak(text).expect("RFC 3339 ts");
    time.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[test]
fn stored_rows_are_the_means_and_maxima_of_the_ticks_seen() {
    let target = Target::sleep(None);
    let mut gpu = full_gpu(
        0,
        json!([{"pid": target.pid(), "used_memory_bytes": [100 * MIB, 300 * MIB, 200 * MIB], "sm_util_pct": [10, 70]}]),
    );
    gpu["utilization_gpu_pct"] = json!([10, 40, 90, 20, 65]);
    gpu["temperature_c"] = json!([40, 55, 47]);
    let daemon = Daemon::start_with(
        &json!({"step_ms": 170, "gpus": [gpu]}),
        DaemonOptions {
            env: vec![("GPUKILL_PERSIST_INTERVAL".into(), "1s".into())],
            ..DaemonOptions::default()
        },
    );
    let mut watcher = Command::new(support::gpukillctl())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["list", "--watch", "--output", "json"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = watcher.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| serde_json::from_str::<Value>(&line).expect("JSON line"))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(4500));
    let (status, dir) = daemon.stop_keeping_dir();
    assert!(status.success());
    let state = dir.path().join("state").join("gpukill.db");
    let _ = watcher.wait();
    let seen = reader.join().expect("reader");

    // The ticks the watcher saw, by sequence number, without gaps.
    let mut ticks: BTreeMap<u64, &Value> = BTreeMap::new();
    for snapshot in &seen {
        ticks.insert(snapshot["seq"].as_u64().expect("seq"), snapshot);
    }
    let sequences: Vec<u64> = ticks.keys().copied().collect();
    assert!(sequences.len() >= 15, "too few ticks seen: {sequences:?}");
    assert!(
        sequences.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the watcher skipped ticks: {sequences:?}"
    );
    let mut by_interval: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for snapshot in ticks.values() {
        let ms = ts_ms(snapshot);
        by_interval
            .entry(ms - ms.rem_euclid(PERSIST_MS))
            .or_default()
            .push(snapshot);
    }
    // The first and last intervals may hold ticks the watcher did not see.
    let complete: Vec<i64> = by_interval.keys().copied().skip(1).collect::<Vec<_>>();
    let complete = &complete[..complete.len() - 1];
    assert!(complete.len() >= 2, "intervals: {:?}", by_interval.keys());

    let db =
        rusqlite::Connection::open_with_flags(&state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store");
    for interval in complete {
        let snapshots = &by_interval[interval];
        let utils: Vec<f64> = snapshots
            .iter()
            .map(|s| s["gpus"][0]["util_pct"].as_f64().expect("util"))
            .collect();
        let temps: Vec<f64> = snapshots
            .iter()
            .map(|s| s["gpus"][0]["temp_c"].as_f64().expect("temp"))
            .collect();
        let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
        let max = |values: &[f64]| values.iter().copied().fold(f64::MIN, f64::max);
        let row: (i64, f64, i64, f64, i64, f64, i64) = db
            .query_row(
                "SELECT ticks, util_mean, util_max, temp_mean, temp_max, power_mean_mw, mem_used_max
                 FROM gpu_samples WHERE gpu_index = 0 AND time_ms = ?1",
                [interval],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .unwrap_or_else(|error| panic!("no row for interval {interval}: {error}"));
        assert_eq!(
            row.0 as usize,
            snapshots.len(),
            "ticks of interval {interval}"
        );
        assert_eq!(
            row.1,
            mean(&utils),
            "util_mean of interval {interval}: {utils:?}"
        );
        assert_eq!(row.2 as f64, max(&utils), "util_max of interval {interval}");
        assert_eq!(
            row.3,
            mean(&temps),
            "temp_mean of interval {interval}: {temps:?}"
        );
        assert_eq!(row.4 as f64, max(&temps), "temp_max of interval {interval}");
        assert_eq!(row.5, 250_500.0, "power is constant in the scenario");
        assert_eq!(row.6, (1536 * MIB) as i64);
    }

    // The process's session: peak memory is the largest it was seen with; GPU time is at
    // least the ticks the watcher saw it in, at 200 ms each.
    let seen_with: Vec<f64> = ticks
        .values()
        .filter_map(|s| {
            s["procs"]
                .as_array()
                .and_then(|p| p.first())
                .and_then(|p| p["used_mem_mb"].as_f64())
        })
        .collect();
    let (peak, gpu_seconds): (i64, f64) = db
        .query_row(
            "SELECT peak_memory_bytes, gpu_seconds FROM process_sessions WHERE pid = ?1",
            [target.pid()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a session for the target");
    let peak_seen = seen_with.iter().copied().fold(0.0, f64::max);
    assert_eq!(peak as f64 / MIB as f64, peak_seen);
    assert!(
        gpu_seconds + 1e-9 >= seen_with.len() as f64 * 0.2,
        "{gpu_seconds} s for {} ticks",
        seen_with.len()
    );
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
}

#[test]
fn hours_missed_while_the_daemon_was_down_are_rolled_up_at_startup() {
    let scenario = json!({"gpus": [full_gpu(0, json!([]))]});
    let state = tempfile::Builder::new()
        .prefix("gpukill-rollup-")
        .tempdir()
        .expect("state");
    let options = || DaemonOptions {
        config: format!("state_dir = {:?}\n", state.path()),
        ..DaemonOptions::default()
    };
    // First run creates the schema.
    assert!(Daemon::start_with(&scenario, options()).stop().success());

    // Raw rows of an hour two hours ago, as a daemon that then went down would leave them.
    let database = state.path().join("gpukill.db");
    let now_ms = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let hour = now_ms - now_ms.rem_euclid(3_600_000) - 2 * 3_600_000;
    {
        let db = rusqlite::Connection::open(&database).expect("open");
        for (i, util) in [20.0, 40.0, 90.0].iter().enumerate() {
            db.execute(
                "INSERT INTO gpu_samples (time_ms, gpu_index, ticks, util_mean, util_max, power_mean_mw, power_max_mw)
                 VALUES (?1, 0, 5, ?2, ?3, 100000.0, 120000)",
                rusqlite::params![hour + i as i64 * 10_000, util, *util as i64 + 5],
            )
            .expect("insert");
        }
        db.execute("DELETE FROM rolled_up_hours WHERE hour_ms = ?1", [hour])
            .expect("clear");
    }

    // The next start rolls that hour up.
    let daemon = Daemon::start_with(&scenario, options());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = rusqlite::Connection::open_with_flags(
        &database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open");
    let row: (i64, f64, i64) = loop {
        let found = db.query_row(
            "SELECT samples, util_mean, util_max FROM gpu_hourly WHERE hour_ms = ?1 AND gpu_index = 0",
            [hour],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        if let Ok(row) = found {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hour {hour} was not rolled up at startup"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row, (3, 50.0, 95));
    assert!(daemon.stop().success());
}
