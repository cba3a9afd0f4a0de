//! A stock Node client (@grpc/grpc-js, pinned in clients/node/package-lock.json) against the
//! real daemon over its Unix socket: clients/node/example.js, run as nobody, checks health,
//! lists, watches three snapshots and kills its caller's own process.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Daemon, MIB, Target, clients, full_gpu, other_uid};

#[test]
fn grpc_js_checks_health_lists_watches_and_kills_as_its_caller() {
    let nobody = other_uid();
    let mut own = Target::sleep(Some(nobody));
    let daemon = Daemon::start(&json!({"gpus": [
        full_gpu(0, json!([{"pid": own.pid(), "used_memory_bytes": 512 * MIB}])),
    ]}));
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|p| p.len() == 1)
    });
    let dir = clients::node_workdir();
    let proto = dir.path().join("proto");
    let pid = own.pid().to_string();
    let args = [
        "--socket",
        daemon.socket.to_str().unwrap(),
        "--proto",
        proto.to_str().unwrap(),
        "--kill",
        pid.as_str(),
    ];
    let output = clients::node_as(nobody, dir.path(), "example.js", &args);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {}\n{out}\n{}\ndaemon log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        daemon.log_text()
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"health: SERVING"), "{out}");
    assert!(
        lines.contains(&"GPU 0: NVIDIA A100-SXM4-80GB 1536 MiB used"),
        "{out}"
    );
    let sequences: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("watch: snapshot "))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(sequences.len(), 3, "{out}");
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert!(
        lines.contains(&format!("kill {pid}: TERMINATED").as_str()),
        "{out}"
    );
    assert!(own.exits_within(Duration::from_secs(5)));
}
