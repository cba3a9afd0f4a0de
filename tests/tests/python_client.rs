//! Stock Python clients (grpcio, pinned in clients/python/requirements.txt) against the real
//! daemon over its Unix socket, with default channel options: grpc C-core sends the socket
//! path, percent-encoded, as `:authority`, which h2 alone refuses (patches/h2 lets it through).
//! The reflection-based client (health, reflection v1 and v1alpha, List and Watch built from
//! reflected descriptors) and the stub-based example (list, watch, kill as yourself) run as
//! nobody: over the socket the kernel says who calls.

mod support;

use std::time::Duration;

use gpukill_proto::v1::cluster_service_server::ClusterServiceServer;
use gpukill_proto::v1::gpu_kill_service_server::GpuKillServiceServer;
use serde_json::{Value, json};
use support::{Daemon, MIB, Target, clients, full_gpu, other_uid};
use tonic::server::NamedService;

fn scenario(targets: &[&Target]) -> Value {
    let processes: Vec<Value> = targets
        .iter()
        .map(|target| json!({"pid": target.pid(), "used_memory_bytes": 512 * MIB}))
        .collect();
    json!({"gpus": [full_gpu(0, json!(processes)), full_gpu(1, json!([]))]})
}

fn text(output: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The words after `prefix` on the output's line that starts with it.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"))
}

#[test]
fn grpcio_with_default_options_checks_health_reflects_lists_and_watches() {
    let nobody = other_uid();
    let target = Target::sleep(None);
    let daemon = Daemon::start(&scenario(&[&target]));
    let dir = clients::python_workdir();
    let socket = daemon.socket.to_str().unwrap();
    let node_service = <GpuKillServiceServer<()> as NamedService>::NAME;
    let cluster_service = <ClusterServiceServer<()> as NamedService>::NAME;

    for authority in [None, Some("localhost")] {
        let mut args = vec!["--socket", socket];
        if let Some(authority) = authority {
            args.extend(["--authority", authority]);
        }
        let output = clients::python_as(nobody, dir.path(), "reflection_client.py", &args);
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "authority {authority:?}: {}\ndaemon log:\n{}",
            text(&output),
            daemon.log_text()
        );
        let v1alpha: Vec<&str> = line(&out, "services (v1alpha): ").split(' ').collect();
        let v1: Vec<&str> = line(&out, "services (v1): ").split(' ').collect();
        for service in [node_service, cluster_service, "grpc.health.v1.Health"] {
            assert!(v1alpha.contains(&service), "{service} in {v1alpha:?}");
            assert!(v1.contains(&service), "{service} in {v1:?}");
        }
        assert!(v1alpha.contains(&"grpc.reflection.v1alpha.ServerReflection"));
        assert!(v1.contains(&"grpc.reflection.v1.ServerReflection"));
        assert_eq!(line(&out, "health (server): "), "SERVING", "{out}");
        assert_eq!(line(&out, &format!("health {node_service}: ")), "SERVING");
        // Not a coordinator: the Cluster service answers nothing here.
        assert_eq!(
            line(&out, &format!("health {cluster_service}: ")),
            "NOT_SERVING"
        );
        assert!(
            line(&out, "list: ").ends_with("2 GPUs, 1 processes"),
            "{out}"
        );
        let sequences: Vec<u64> = out
            .lines()
            .filter_map(|line| line.strip_prefix("watch: "))
            .map(|rest| {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(words[0], format!("/{node_service}/Watch"), "{rest}");
                words[2].trim_end_matches(',').parse().unwrap()
            })
            .collect();
        assert_eq!(sequences.len(), 3, "{out}");
        assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    }
}

#[test]
fn the_stub_example_lists_watches_and_kills_only_the_callers_own_process() {
    let nobody = other_uid();
    let mut own = Target::sleep(Some(nobody));
    // Another user's (a uid with no name is a user too).
    let mut others = Target::sleep(Some(4242));
    let daemon = Daemon::start(&scenario(&[&own, &others]));
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|p| p.len() == 2)
    });
    let dir = clients::python_workdir();
    let stubs = dir.path().join("stubs");
    let stubs = stubs.to_str().unwrap();
    let socket = daemon.socket.to_str().unwrap();
    let example = |pid: u32| {
        let pid = pid.to_string();
        let args = ["--socket", socket, "--stubs", stubs, "--kill", pid.as_str()];
        let output = clients::python_as(nobody, dir.path(), "example.py", &args);
        assert!(
            output.status.success(),
            "{}\ndaemon log:\n{}",
            text(&output),
            daemon.log_text()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let out = example(others.pid());
    assert!(
        line(&out, "GPU 0: ").starts_with("NVIDIA A100-SXM4-80GB 1536 MiB used, 50% busy"),
        "{out}"
    );
    assert!(line(&out, "GPU 1: ").starts_with("NVIDIA A100"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("watch: ")).count(), 3);
    let denied = line(&out, &format!("kill {}: ", others.pid()));
    assert!(denied.starts_with("DENIED"), "{out}");
    assert!(others.alive(), "nobody may not kill another user's process");

    let out = example(own.pid());
    assert_eq!(
        line(&out, &format!("kill {}: ", own.pid())),
        "TERMINATED",
        "{out}"
    );
    assert!(own.exits_within(Duration::from_secs(5)));
    // The daemon's audit trail names the caller the kernel gave it.
    let events = daemon.events_json();
    let kill = events
        .iter()
        .find(|e| e["type"] == "kill" && e["target"]["pid"] == json!(own.pid()))
        .unwrap_or_else(|| panic!("no kill event for {}: {events:#?}", own.pid()));
    assert_eq!(kill["caller_uid"], json!(nobody), "{kill:#}");
}
