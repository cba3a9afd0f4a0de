//! `gpukillctl cluster nodes|list|contention`: the coordinator's Cluster service, one rpc
//! each.
//!
//! The rpcs go to the gpukilld that `--socket`/`--addr` names, which must be a coordinator:
//! one that is not answers FAILED_PRECONDITION, reported as [`Error::NotCoordinator`]
//! (exit 5). `cluster list` prints what it got, then fails with [`Error::NoNodeAnswered`]
//! (exit 6) when no node answered; `cluster contention` lists the nodes that did not answer
//! in its UNREACHABLE section.

use std::io::Write;
use std::time::{Duration, SystemTime};

use gpukill_proto::v1::{ContentionRequest, ListAllRequest, NodesRequest, SnapshotFilter, Vendor};

use crate::Output;
use crate::cli::{
    ClusterCommand, ClusterContentionArgs, ClusterListArgs, ClusterNodesArgs, OutputFormat,
};
use crate::conn;
use crate::error::Error;
use crate::render::cluster;
use crate::render::table::TableOptions;

/// How long a cluster-wide rpc may take: the coordinator waits up to its per-node deadline
/// for the slowest node, so this is longer than [`conn::REQUEST_TIMEOUT`].
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `gpukillctl cluster ...` against the coordinator `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    command: &ClusterCommand,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match command {
        ClusterCommand::Nodes(args) => nodes(target, args, out).await,
        ClusterCommand::List(args) => list(target, args, out).await,
        ClusterCommand::Contention(args) => contention(target, args, out).await,
    }
}

/// The error for a Cluster rpc that failed with `status`: a daemon that is not a
/// coordinator (FAILED_PRECONDITION) or has no Cluster service at all (UNIMPLEMENTED) is
/// [`Error::NotCoordinator`]; anything else maps as usual.
fn cluster_error(rpc: &'static str, status: tonic::Status, target: &conn::Target) -> Error {
    match status.code() {
        tonic::Code::FailedPrecondition => Error::NotCoordinator {
            address: target.address(),
            message: status.message().to_owned(),
        },
        tonic::Code::Unimplemented => Error::NotCoordinator {
            address: target.address(),
            message: format!(
                "it does not serve the Cluster API ({}; a gpukilld older than clusters?)",
                if status.message().is_empty() {
                    "unimplemented"
                } else {
                    status.message()
                }
            ),
        },
        _ => Error::rpc(rpc, status),
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// `gpukillctl cluster nodes`.
async fn nodes<W: Write, E: Write>(
    target: &conn::Target,
    args: &ClusterNodesArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect_cluster(target).await?;
    let response = client
        .nodes(conn::unary(NodesRequest {}))
        .await
        .map_err(|status| cluster_error("Nodes", status, target))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => cluster::render_nodes(&response, now_ms()),
        OutputFormat::Json => cluster::nodes_json(&response)?,
    };
    out.write(&text)
}

/// The request `cluster list` makes.
fn list_request(args: &ClusterListArgs) -> ListAllRequest {
    ListAllRequest {
        filter: Some(SnapshotFilter {
            vendor: Vendor::from(args.vendor) as i32,
            process_regex: args.filter.clone(),
            containers_only: args.containers,
            user: args.user.clone(),
        }),
        nodes: args.nodes.clone(),
    }
}

/// `gpukillctl cluster list`.
async fn list<W: Write, E: Write>(
    target: &conn::Target,
    args: &ClusterListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect_cluster(target).await?;
    let response = client
        .list_all(conn::unary_with_timeout(
            list_request(args),
            CLUSTER_TIMEOUT,
        ))
        .await
        .map_err(|status| cluster_error("List", status, target))?
        .into_inner();
    let options = TableOptions {
        details: args.details,
        containers: args.containers,
        tz: out.tz,
        width: if args.wide { None } else { out.width },
    };
    let text = match args.output {
        OutputFormat::Table => cluster::render_list(&response, &options),
        OutputFormat::Json => cluster::list_json(&response)?,
    };
    out.write(&text)?;
    if response
        .nodes
        .iter()
        .any(|answer| answer.snapshot.is_some())
    {
        Ok(())
    } else {
        Err(Error::NoNodeAnswered {
            reasons: cluster::unreachable(&response),
        })
    }
}

/// `gpukillctl cluster contention`.
async fn contention<W: Write, E: Write>(
    target: &conn::Target,
    args: &ClusterContentionArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect_cluster(target).await?;
    let response = client
        .contention(conn::unary_with_timeout(
            ContentionRequest { top: args.top },
            CLUSTER_TIMEOUT,
        ))
        .await
        .map_err(|status| cluster_error("Contention", status, target))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => cluster::render_contention(&response),
        OutputFormat::Json => cluster::contention_json(&response)?,
    };
    // The answer does not say how many nodes were asked, so unreachable nodes (listed in
    // the output) cannot tell "some" from "all": the command succeeds when the coordinator
    // answered.
    out.write(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::{ListAllResponse, NodeSnapshot};
    use tonic::Status;

    #[tokio::test]
    async fn nodes_prints_the_coordinators_nodes() {
        let served = serve(FakeDaemon {
            cluster_nodes: Some(Ok(testutil::cluster_nodes_response())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["cluster", "nodes", "-o", "json"]).await;
        result.expect("nodes");
        assert_eq!(
            text,
            cluster::nodes_json(&testutil::cluster_nodes_response()).expect("encode")
        );
        let (result, text, _) = run_cli(&served.socket, &["cluster", "nodes"]).await;
        result.expect("nodes");
        assert!(text.starts_with(" NAME | STATE   | ADDRESS "), "{text}");
        assert_eq!(text.lines().count(), 6, "{text}");
    }

    #[tokio::test]
    async fn list_sends_the_filter_and_the_nodes_and_prints_every_node() {
        let daemon = FakeDaemon {
            cluster_list: Some(Ok(testutil::cluster_list_response())),
            ..Default::default()
        };
        let requests = daemon.cluster_list_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) = run_cli(
            &served.socket,
            &[
                "cluster",
                "list",
                "--node",
                "n1",
                "--node",
                "n3",
                "--vendor",
                "nvidia",
                "--filter",
                "^py",
                "--details",
            ],
        )
        .await;
        result.expect("two nodes answered");
        let options = TableOptions {
            details: true,
            containers: false,
            tz: TimeZone::Utc,
            width: None,
        };
        assert_eq!(
            text,
            cluster::render_list(&testutil::cluster_list_response(), &options)
        );
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [ListAllRequest {
                filter: Some(SnapshotFilter {
                    vendor: Vendor::Nvidia as i32,
                    process_regex: Some("^py".to_owned()),
                    containers_only: false,
                    user: None,
                }),
                nodes: vec!["n1".to_owned(), "n3".to_owned()],
            }]
        );
    }

    #[tokio::test]
    async fn list_json_is_printed_and_exits_6_when_no_node_answered() {
        let mut response = testutil::cluster_list_response();
        response.nodes.retain(|answer| answer.snapshot.is_none());
        let served = serve(FakeDaemon {
            cluster_list: Some(Ok(response.clone())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["cluster", "list", "-o", "json"]).await;
        let err = result.expect_err("nobody answered");
        assert_eq!(err.exit_code(), 6);
        assert_eq!(
            err.to_string(),
            "no node answered (2 asked): n3 (down: no heartbeat for 45s); n4 (deadline \
             exceeded after 1s)"
        );
        assert_eq!(text, cluster::list_json(&response).expect("encode"));
    }

    #[tokio::test]
    async fn an_empty_cluster_exits_6_and_says_so() {
        let served = serve(FakeDaemon {
            cluster_list: Some(Ok(ListAllResponse {
                nodes: Vec::<NodeSnapshot>::new(),
                deadline_ms: 1000,
            })),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["cluster", "list"]).await;
        let err = result.expect_err("no nodes");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string()
                .starts_with("the coordinator knows no nodes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_is_not_a_coordinator_exits_5_with_its_message() {
        let message = "this gpukilld is not a cluster coordinator ([cluster] role = \"node\"): \
                       ask the coordinator, or set [cluster] role = \"coordinator\" here";
        let served = serve(FakeDaemon {
            cluster_nodes: Some(Err(Status::failed_precondition(message))),
            cluster_list: Some(Err(Status::failed_precondition(message))),
            cluster_contention: Some(Err(Status::failed_precondition(message))),
            ..Default::default()
        });
        for command in ["nodes", "list", "contention"] {
            let (result, text, _) = run_cli(&served.socket, &["cluster", command]).await;
            let err = result.expect_err("not a coordinator");
            assert_eq!(err.exit_code(), 5, "{command}");
            assert_eq!(
                err.to_string(),
                format!(
                    "gpukilld at {} is not a cluster coordinator ([cluster] role = \"node\"): \
                     ask the coordinator, or set [cluster] role = \"coordinator\" here",
                    served.socket.display()
                )
            );
            assert_eq!(text, "");
        }
    }

    #[tokio::test]
    async fn a_daemon_without_the_cluster_service_exits_5() {
        let served = serve(FakeDaemon::default());
        let (result, _, _) = run_cli(&served.socket, &["cluster", "nodes"]).await;
        let err = result.expect_err("unimplemented");
        assert_eq!(err.exit_code(), 5);
        assert!(
            err.to_string().contains("does not serve the Cluster API"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unknown_node_in_cluster_list_exits_3() {
        let served = serve(FakeDaemon {
            cluster_list: Some(Err(Status::not_found(
                "no node named \"n9\" (gpukillctl cluster nodes lists them)",
            ))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["cluster", "list", "--node", "n9"]).await;
        let err = result.expect_err("unknown node");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "List failed (NotFound): no node named \"n9\" (gpukillctl cluster nodes lists them)"
        );
    }

    #[tokio::test]
    async fn contention_sends_top_and_prints_the_sections() {
        let daemon = FakeDaemon {
            cluster_contention: Some(Ok(testutil::cluster_contention_response())),
            ..Default::default()
        };
        let requests = daemon.cluster_contention_requests.clone();
        let served = serve(daemon);
        let (result, text, _) =
            run_cli(&served.socket, &["cluster", "contention", "--top", "3"]).await;
        result.expect("contention");
        assert_eq!(
            text,
            cluster::render_contention(&testutil::cluster_contention_response())
        );
        let (result, text, _) =
            run_cli(&served.socket, &["cluster", "contention", "-o", "json"]).await;
        result.expect("contention");
        assert_eq!(
            text,
            cluster::contention_json(&testutil::cluster_contention_response()).expect("encode")
        );
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [ContentionRequest { top: 3 }, ContentionRequest { top: 10 }]
        );
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_exits_6() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("missing.sock");
        let (result, _, _) = run_cli(&socket, &["cluster", "nodes"]).await;
        assert_eq!(result.expect_err("unreachable").exit_code(), 6);
    }
}
