//! `gpukillctl cluster ...`: the coordinator's view of the whole cluster.

use clap::{Args, Subcommand};

use super::{OutputFormat, VendorArg};
use crate::conn::parse_node_name;

/// The exit codes of the `cluster` commands.
const CLUSTER_EXIT_CODES: &str = "Exit codes:\n  \
    0 ok (cluster list: at least one node answered), 3 an unknown node or a bad option,\n  \
    4 not allowed (credentials refused: check --token-file, --cert and --key),\n  \
    5 the gpukilld asked is not a cluster coordinator,\n  \
    6 the coordinator is not reachable (cluster list: or no node answered)";

/// `gpukillctl cluster ...`: the coordinator's Cluster service.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// The nodes the coordinator knows: configured and registered ones, and how they are
    /// doing
    ///
    /// STATE is up (answered its last request or heartbeat), down (heartbeats stopped, or it
    /// did not answer; ERROR says why) or unknown (configured, not asked yet). SOURCE is
    /// static ([cluster] nodes in the coordinator's configuration) or registered (the node
    /// announced itself). LAST SEEN is how long ago it last answered.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Nodes(ClusterNodesArgs),
    /// Every node's GPUs in one table: the coordinator asks each node concurrently
    ///
    /// One row per GPU with the node's name first and then the columns of `gpukillctl list`;
    /// --details adds the process table. A node that does not answer within the
    /// coordinator's per-node deadline does not hold up the others: it is listed after the
    /// table with the reason (and in the JSON with its error).
    #[command(after_help = CLUSTER_EXIT_CODES)]
    List(ClusterListArgs),
    /// Contention across the cluster: busy, free, idle and unhealthy GPUs, the top users,
    /// suggestions
    ///
    /// BUSY GPUS have memory or utilization at 90% or more; FREE GPUS have no processes;
    /// IDLE GPUS have processes that do nothing (no utilization, no SM time); UNHEALTHY GPUS
    /// are critical or lost, and in none of the others (a free GPU is never a broken one).
    /// The top users are ranked by GPU memory and by SM utilization across all nodes.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Contention(ClusterContentionArgs),
}

/// Arguments of `gpukillctl cluster nodes`.
#[derive(Debug, Clone, Args)]
pub struct ClusterNodesArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl cluster list`.
#[derive(Debug, Clone, Args)]
pub struct ClusterListArgs {
    /// Also show the process table (NODE, GPU, PID, USER, PROC, MEMORY, START, CONTAINER,
    /// COMMAND)
    #[arg(long)]
    pub details: bool,

    /// Show every column, each whole, however wide the terminal (as list --wide)
    #[arg(long)]
    pub wide: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only GPUs (and their processes) of this vendor
    #[arg(long, value_enum, default_value_t = VendorArg::All)]
    pub vendor: VendorArg,

    /// Only processes whose name or command line match REGEX (checked by each node)
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Only processes of this user (a name or a numeric uid)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Only processes running in a container; shows the process table with RUNTIME and POD
    #[arg(long)]
    pub containers: bool,

    /// Ask only this node (repeat for several); default: every node
    ///
    /// The same option as the global --node (and GPUKILL_NODE), which here names the nodes
    /// to ask rather than a node to forward to.
    #[arg(
        id = "node",
        long = "node",
        value_name = "NAME",
        action = clap::ArgAction::Append,
        value_parser = parse_node_name
    )]
    pub nodes: Vec<String>,
}

/// Arguments of `gpukillctl cluster contention`.
#[derive(Debug, Clone, Args)]
pub struct ClusterContentionArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How many users each ranking lists, 1 to 1000
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub top: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::usage_error;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn cluster_list_args(args: &[&str]) -> (Option<String>, ClusterListArgs) {
        let argv = [&["gpukillctl"], args].concat();
        let cli = Cli::try_parse_from(argv).expect("valid arguments");
        match cli.command {
            Command::Cluster(ClusterCommand::List(list)) => (cli.connect.node, list),
            other => panic!("expected cluster list, got {other:?}"),
        }
    }

    #[test]
    fn cluster_list_takes_repeated_nodes() {
        let (_, args) = cluster_list_args(&["cluster", "list"]);
        assert!(args.nodes.is_empty());
        assert!(!args.details);
        let (_, args) = cluster_list_args(&[
            "cluster",
            "list",
            "--node",
            "n1",
            "--node",
            "n3",
            "--details",
            "-o",
            "json",
        ]);
        assert_eq!(args.nodes, ["n1", "n3"]);
        assert!(args.details);
        assert_eq!(args.output, OutputFormat::Json);
        // The global --node before the subcommand names the node to ask, too.
        let (node, args) = cluster_list_args(&["--node", "n2", "cluster", "list"]);
        assert_eq!(node.as_deref(), Some("n2"));
        assert_eq!(args.nodes, ["n2"]);
        let err = usage_error(&["gpukillctl", "cluster", "list", "--node", "a b"]);
        assert_eq!(crate::error::clap_exit_code(&err), 3);
    }

    #[test]
    fn cluster_contention_top_is_bounded() {
        let cli =
            Cli::try_parse_from(["gpukillctl", "cluster", "contention"]).expect("valid arguments");
        let Command::Cluster(ClusterCommand::Contention(args)) = cli.command else {
            panic!("expected cluster contention");
        };
        assert_eq!(args.top, 10);
        for bad in ["0", "1001", "x"] {
            let err = usage_error(&["gpukillctl", "cluster", "contention", "--top", bad]);
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{bad}");
        }
    }
}
