//! The command line: one clap derive tree, one subcommand per module in `cmd/`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gpukill_proto::v1::Vendor;
use gpukill_proto::v1::kill_request::Target;
use gpukill_proto::v1::{reset_request, upload_retry_request};

/// Environment variable for `--token-file`.
pub const TOKEN_FILE_ENV: &str = "GPUKILL_TOKEN_FILE";
/// Environment variable for `--cert`.
pub const CERT_ENV: &str = "GPUKILL_CERT";
/// Environment variable for `--key`.
pub const KEY_ENV: &str = "GPUKILL_KEY";
/// Environment variable for `--ca`.
pub const CA_ENV: &str = "GPUKILL_CA";
/// Environment variable for `--node`.
pub const NODE_ENV: &str = "GPUKILL_NODE";

/// gpukillctl, the client of the gpukilld GPU daemon.
#[derive(Debug, Parser)]
#[command(
    name = "gpukillctl",
    version,
    about = "Show the GPUs of this node and the processes using them, as gpukilld sees them",
    after_help = "Exit codes:\n  0 ok, 1 error, 2 GPU vendor library failure, 3 invalid arguments,\n  \
                  4 permission denied, 5 unsupported, 6 gpukilld not reachable,\n  \
                  7 the GPUs are busy (reserve, run); run exits with its command's status"
)]
pub struct Cli {
    /// Where gpukilld is and how to prove who you are to it.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The global options that say which gpukilld to talk to, with which credentials, and which
/// node of a cluster the request is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ConnectArgs {
    /// The daemon: a socket path, unix:///path, or https://HOST:PORT
    ///
    /// Default: the per-user daemon's socket ($XDG_RUNTIME_DIR/gpukill/gpukilld.sock) if it
    /// exists, else the system daemon's (/run/gpukill/gpukilld.sock). A remote gpukilld (its
    /// [tcp] listener, or a cluster coordinator) is reached over https://HOST:PORT with --ca
    /// and a credential (--token-file, or --cert and --key); http://HOST:PORT is accepted
    /// for a loopback HOST only (127.0.0.1, ::1, localhost), since requests carry
    /// credentials.
    #[arg(
        long,
        visible_alias = "addr",
        global = true,
        env = gpukill_proto::SOCKET_ENV,
        hide_env_values = true,
        value_name = "ADDRESS",
        display_order = 100,
        value_parser = parse_address
    )]
    pub socket: Option<Address>,

    /// File whose first non-empty line is the bearer token for an https:// address
    ///
    /// Sent as `authorization: Bearer TOKEN` with every request; gpukilld maps it to a
    /// principal ([tcp] tokens). Keep the file private (mode 0600).
    #[arg(
        long,
        global = true,
        env = TOKEN_FILE_ENV,
        hide_env_values = true,
        value_name = "FILE",
        display_order = 101
    )]
    pub token_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with an https:// address; needs --key
    #[arg(
        long,
        global = true,
        env = CERT_ENV,
        hide_env_values = true,
        value_name = "FILE",
        requires = "key",
        display_order = 102
    )]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert
    #[arg(
        long,
        global = true,
        env = KEY_ENV,
        hide_env_values = true,
        value_name = "FILE",
        requires = "cert",
        display_order = 103
    )]
    pub key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that the https:// server's certificate must chain to
    ///
    /// Required for https://: this build trusts no system roots, only the CA you name.
    #[arg(
        long,
        global = true,
        env = CA_ENV,
        hide_env_values = true,
        value_name = "FILE",
        display_order = 104
    )]
    pub ca: Option<PathBuf>,

    /// Send the request to this node of the cluster (through the coordinator at --socket)
    ///
    /// Every command except `cluster ...` then acts on NODE: the coordinator forwards the
    /// request with your identity, and NODE checks what you may do. `cluster list` asks only
    /// the nodes named (repeat --node); `cluster nodes` and `cluster contention` are about the
    /// whole cluster.
    #[arg(
        long,
        global = true,
        env = NODE_ENV,
        hide_env_values = true,
        value_name = "NAME",
        display_order = 105,
        value_parser = parse_node_name
    )]
    pub node: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List GPUs and the processes using them (one snapshot, or a live view with --watch).
    List(ListArgs),
    /// Kill GPU processes: gpukilld checks that you may, signals them and records it.
    ///
    /// gpukilld sends SIGTERM and waits up to --timeout-secs for each process to exit; with
    /// --force it then sends SIGKILL. You may kill your own processes; admins may kill any
    /// process that is not protected. A process is identified by its PID and start time, so
    /// a PID reused in the meantime is never signalled. Every result, refusals included, is
    /// written to the audit trail (gpukillctl events).
    #[command(after_help = "Exit codes:\n  \
        0 every process is gone (or several matched and, without --batch, were only listed),\n  \
        4 a process was denied or protected, 1 a process is still running,\n  \
        3 a bad selection (a regex that does not compile, a PID that is gone, ...)")]
    Kill(KillArgs),
    /// Reset NVIDIA GPUs (admins only): gpukilld runs nvidia-smi --gpu-reset and records it.
    ///
    /// Only admins may reset a GPU. Each GPU must support reset (not with MIG enabled, not on
    /// a multi-GPU board) and be idle: a GPU with processes is not reset unless --force is
    /// given. With --force, gpukilld first kills its processes (through the same checks as
    /// kill: SIGTERM, then SIGKILL after 5 s) and waits for them to exit. It then runs
    /// `nvidia-smi --gpu-reset -i <PCI bus id>` and checks that the GPU answers again. Every
    /// attempt, refusals included, is written to the audit trail (gpukillctl events).
    #[command(after_help = "Exit codes:\n  \
        0 every GPU was reset, 1 a reset failed (or the GPU has processes and no --force),\n  \
        4 not an admin, 5 reset not supported (MIG enabled, multi-GPU board),\n  \
        3 no such GPU, 6 gpukilld not reachable")]
    Reset(ResetArgs),
    /// Show the audit trail: kills, resets and refusals, oldest first.
    Events(EventsArgs),
    /// Show who used the GPUs and how much: the process sessions of a time window.
    ///
    /// gpukilld records every process it sees on a GPU as a session (one per PID, start time
    /// and GPU) with its time on the GPU, its peak memory and its memory over time. The window
    /// is the last --hours (24 by default), or --since to --until. Anyone may read it. With
    /// --summary, the window aggregated instead: top users and processes, GPU utilization and
    /// GPU hours by hour of day.
    ///
    /// `audit export` writes the window in the original gpukill audit.jsonl format; `audit
    /// import FILE` loads such a file into gpukilld's history (admins only).
    Audit(AuditArgs),
    /// Show the metrics history of one GPU, oldest first (hourly rows for long windows)
    ///
    /// One sample per persist interval for windows up to two days, one row per closed hour
    /// beyond (see --resolution).
    History(HistoryArgs),
    /// Show the samples of every GPU at a moment, in gpu_monitor's collection format.
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Show what the guard enforces and finds: its policy, violations, what it would do.
    ///
    /// gpukilld evaluates the policy file (guard_policy, /etc/gpukill/guard.toml) on every
    /// snapshot and, in soft or hard mode, kills what breaks it through the same checks as
    /// `gpukillctl kill`. Anyone may look.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// The upload outbox: each closed hour's usage on its way to the central server.
    ///
    /// When gpukilld rolls up an hour, it queues that hour's usage (per-GPU and per-user
    /// rows) in its outbox and sends it to [upload] url, oldest hour first, retrying with
    /// backoff; an hour counts as delivered only once the server has stored it and echoed
    /// its content hash. Hours that keep failing are parked and hours the server refuses are
    /// rejected: both are kept until an admin sends them again with `uploads retry`. Anyone
    /// may look.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// Reserve GPUs of this node for yourself (for 8 h unless --duration says otherwise).
    ///
    /// gpukilld picks free GPUs (unreserved, and not used by anyone's processes): the ones you
    /// used most recently first, then those released longest ago; or reserves exactly the
    /// GPUs of --gpu-ids. You are your Unix user as the kernel reports it to gpukilld on its
    /// socket (never $USER); a reservation cannot be made over https://. It lasts --duration
    /// (gpukilld's [reservations] default_duration, 8 h, when not given), until you release it
    /// (`gpukillctl release`). Nothing is reserved when any GPU asked for is not free (exit 7;
    /// the message says why), or when `gpukillctl run` requests wait in the queue.
    #[command(after_help = RESERVATIONS_EXIT_CODES)]
    Reserve(ReserveArgs),
    /// End your reservations: all your manual ones, or those on the GPUs of --gpu-ids.
    ///
    /// Without --gpu-ids, every reservation you made with `gpukillctl reserve` ends (those of
    /// `gpukillctl run` end when its command exits). With --gpu-ids, the reservations on those
    /// GPUs end; admins may end anyone's, and a reservation of someone else makes the request
    /// fail (exit 4) without releasing anything.
    #[command(after_help = RESERVATIONS_EXIT_CODES)]
    Release(ReleaseArgs),
    /// Show who holds or uses each GPU, and the queue of waiting `run` requests.
    ///
    /// STATUS is AVAILABLE (free to reserve), IN USE by the holder (for how long, and whether
    /// by `run` (its pid) or a manual reservation (when it expires, its note)), UNRESERVED USE
    /// (not reserved, but someone's processes use it) or WRONG USER (reserved, and other users'
    /// processes use it). Waiting requests are listed below, first in line first. Anyone may
    /// look.
    #[command(after_help = RESERVATIONS_EXIT_CODES)]
    Status(StatusArgs),
    /// Run a command on reserved GPUs; they are released when it exits.
    ///
    /// gpukilld picks --gpus free GPUs (in its own order of preference) and reserves them for
    /// you: your Unix user as the kernel reports it to gpukilld on its socket, never $USER.
    /// The command then runs with CUDA_VISIBLE_DEVICES (and the other vendors' variables) set
    /// to them, with this terminal, in gpukillctl's process group. When the GPUs are not free, the request waits
    /// in a first-come-first-served queue (as long as it takes, or --wait), or fails at once
    /// with --nonblock (exit 7).
    ///
    /// The reservation lasts while the command runs: gpukillctl tells gpukilld it is alive
    /// every few seconds, and the GPUs are released when the command exits or when gpukillctl
    /// dies. With --timeout, gpukilld ends the reservation after that long; gpukillctl then
    /// stops the command (SIGTERM, SIGKILL 10 s later) and exits 124. SIGTERM, SIGHUP, SIGUSR1
    /// and SIGUSR2 sent to gpukillctl are passed on to the command (SIGINT and SIGQUIT too,
    /// when the terminal does not deliver them to it already). When gpukilld restarts,
    /// gpukillctl takes the reservation over again; the command keeps running in any case.
    #[command(after_help = "Exit codes:\n  \
        the command's exit status (128+N when signal N killed it),\n  \
        124 the reservation's --timeout expired and the command was stopped,\n  \
        126 the command is not executable, 127 the command is not found,\n  \
        before the command runs: 3 invalid arguments, 4 permission denied,\n  \
        5 not on this host's socket, 6 gpukilld not reachable,\n  \
        7 the GPUs are busy (--nonblock, or --wait ran out)")]
    Run(RunArgs),
    /// Print the versions of gpukillctl and of the gpukilld it talks to.
    Version(VersionArgs),
    /// The whole cluster, through its coordinator: nodes, all their GPUs, contention.
    ///
    /// Ask a coordinator: the local gpukilld when it has the coordinator role, or a remote
    /// one with --addr https://HOST:PORT (and --ca, --token-file or --cert/--key). To act on
    /// one node (list, kill, events, ...), use the other commands with --node NAME.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

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
    /// Contention across the cluster: busy, free and idle GPUs, the top users, suggestions
    ///
    /// BUSY GPUS have memory or utilization at 90% or more; FREE GPUS have no processes;
    /// IDLE GPUS have processes that do nothing (no utilization, no SM time). The top users
    /// are ranked by GPU memory and by SM utilization across all nodes.
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
    /// Also show the process table (NODE, GPU, PID, USER, PROC, VRAM_MB, START, CONTAINER)
    #[arg(long)]
    pub details: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only GPUs (and their processes) of this vendor
    #[arg(long, value_enum, default_value_t = VendorArg::All)]
    pub vendor: VendorArg,

    /// Only processes whose name, command line or user match REGEX (checked by each node)
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

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

/// Arguments of `gpukillctl list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Also show the process table (GPU, PID, USER, PROC, VRAM_MB, START, CONTAINER)
    #[arg(long)]
    pub details: bool,

    /// Keep the view open, updated with every snapshot the daemon takes (Ctrl-C to stop)
    ///
    /// The daemon pushes each new snapshot (no polling). Tables are redrawn in place on a
    /// terminal; with --output json, each snapshot is one JSON document on its own line.
    #[arg(long)]
    pub watch: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Only GPUs (and their processes) of this vendor
    #[arg(long, value_enum, default_value_t = VendorArg::All)]
    pub vendor: VendorArg,

    /// Only processes whose name, command line or user match REGEX
    ///
    /// Rust regex syntax, checked by the daemon. GPUs are always shown; their PIDS and
    /// TOP_PROC count only the matching processes.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Only processes running in a container; shows the process table with RUNTIME and POD
    #[arg(long)]
    pub containers: bool,
}

/// Arguments of `gpukillctl kill`.
#[derive(Debug, Clone, Args)]
pub struct KillArgs {
    /// Which processes: exactly one selector.
    #[command(flatten)]
    pub target: KillTargetArgs,

    /// Kill every match; without it, a selection that matches several processes is only listed
    #[arg(long)]
    pub batch: bool,

    /// Seconds to wait for SIGTERM to take effect, 1 to 3600
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=3600)
    )]
    pub timeout_secs: u32,

    /// Send SIGKILL to what still runs after the timeout; also allows a --pid that is not a
    /// GPU process
    #[arg(long)]
    pub force: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl kill`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct KillTargetArgs {
    /// The process with this PID
    #[arg(long)]
    pub pid: Option<u32>,

    /// The GPU processes whose name or command line match REGEX (Rust regex syntax)
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,

    /// Every process on GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Every GPU process of this user (a name or a numeric uid)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

impl KillTargetArgs {
    /// The request's selection; `None` only when no selector is set, which clap prevents.
    pub fn target(&self) -> Option<Target> {
        if let Some(pid) = self.pid {
            Some(Target::Pid(pid))
        } else if let Some(filter) = &self.filter {
            Some(Target::Filter(filter.clone()))
        } else if let Some(gpu) = self.gpu {
            Some(Target::GpuIndex(gpu))
        } else {
            self.user.clone().map(Target::User)
        }
    }
}

/// Arguments of `gpukillctl reset`.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Which GPUs: exactly one selector.
    #[command(flatten)]
    pub target: ResetTargetArgs,

    /// Kill the GPU's processes first (SIGTERM, then SIGKILL after 5 s); without it, a GPU
    /// with processes is not reset
    #[arg(long)]
    pub force: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl reset`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct ResetTargetArgs {
    /// The NVIDIA GPU with index N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Every NVIDIA GPU
    #[arg(long)]
    pub all: bool,
}

impl ResetTargetArgs {
    /// The request's selection; `None` only when no selector is set, which clap prevents.
    pub fn target(&self) -> Option<reset_request::Target> {
        if let Some(gpu) = self.gpu {
            Some(reset_request::Target::GpuIndex(gpu))
        } else {
            self.all.then_some(reset_request::Target::All(true))
        }
    }
}

/// Arguments of `gpukillctl events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only events of the last DURATION, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only events of this type
    #[arg(long = "type", value_name = "TYPE", value_enum)]
    pub event_type: Option<EventType>,

    /// At most N events, the newest
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub limit: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The `--type` choices of `gpukillctl events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Processes signalled.
    Kill,
    /// GPUs reset.
    Reset,
    /// Requests refused.
    Deny,
    /// Guard policy violations (warnings, dry-run "would act", rate-limited kills).
    Violation,
    /// Guard policy changes made through the API (and refused ones).
    Policy,
    /// GPU reservations made and ended (released, expired, a run's client gone).
    Reservation,
}

impl EventType {
    /// The name the Events RPC filters on.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Kill => "kill",
            EventType::Reset => "reset",
            EventType::Deny => "deny",
            EventType::Violation => "violation",
            EventType::Policy => "policy",
            EventType::Reservation => "reservation",
        }
    }
}

/// Arguments of `gpukillctl audit`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Export or import instead of showing sessions.
    #[command(subcommand)]
    pub action: Option<AuditAction>,

    /// Only sessions of this user (a user name or a numeric uid)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Only processes whose name or command line match REGEX (Rust regex syntax)
    #[arg(long, value_name = "REGEX")]
    pub process: Option<String>,

    /// Only sessions on GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// The time window.
    #[command(flatten)]
    pub window: WindowArgs,

    /// Output format (--summary: table or json)
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,

    /// Summarize the window instead of listing sessions
    ///
    /// Top users and processes by GPU hours (sessions overlapping the window count whole),
    /// per-GPU utilization (tick-weighted mean and max of the metrics samples) and GPU hours
    /// by UTC hour of day (each session's GPU time spread evenly over its span). Not with
    /// --user, --process, --gpu or --output csv.
    #[arg(long, conflicts_with_all = ["user", "process", "gpu"])]
    pub summary: bool,

    /// List the window's sessions that score as miners or abuse instead
    ///
    /// Each session is scored with the guard's rogue model (the policy's [rogue] settings, or
    /// the defaults): known miner names, miner command lines, renamed binaries (by argv[0];
    /// history has no exe names), sustained high utilization, long runs, unusual hours.
    /// Highest score first. Not with --summary, --user, --process, --gpu or --output csv.
    #[arg(long, conflicts_with_all = ["summary", "user", "process", "gpu"])]
    pub rogue: bool,

    /// With --rogue: only findings at or above this risk level
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = RiskLevelArg::Low, requires = "rogue")]
    pub min_level: RiskLevelArg,

    /// With --summary: at most N top users and N top processes
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        requires = "summary",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub top: u32,
}

/// A time window: the last `--hours`, or `--since` to `--until`.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// The window: the last N hours
    #[arg(
        long,
        value_name = "N",
        default_value_t = 24,
        conflicts_with_all = ["since", "until"],
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub hours: u32,

    /// The window's start: RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<TimeArg>,

    /// The window's end (default: now), like --since
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "since")]
    pub until: Option<TimeArg>,
}

impl WindowArgs {
    /// The window in milliseconds since the epoch, counted back from `now`.
    pub fn unix_ms(&self, now: SystemTime) -> (i64, i64) {
        window(self.hours, self.since, self.until, now)
    }
}

/// `gpukillctl audit export` and `gpukillctl audit import`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditAction {
    /// Write the window's history as JSON lines in the original gpukill audit record format
    ///
    /// One record per GPU sample (pid null: utilization, memory used, temperature and power
    /// of the persist interval) and one per process session (at its first sighting, with its
    /// peak memory), oldest first. gpukill tools and `gpukillctl audit import` read it.
    Export(AuditExportArgs),
    /// Load an original gpukill audit.jsonl into gpukilld's history (admins only)
    ///
    /// GPU records become samples, process records become process sessions. Lines that are
    /// not valid records are counted and reported with their line numbers; the others are
    /// imported. Records imported before are skipped, so importing a file again (or a longer
    /// version of it) adds nothing twice. Records older than the store keeps are skipped.
    #[command(after_help = "Exit codes:
          0 every line was imported (or had been before), 1 some lines were bad (the rest
          were imported), 3 the file cannot be read, 4 not an admin")]
    Import(AuditImportArgs),
}

/// Arguments of `gpukillctl audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditExportArgs {
    /// The record format
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,

    /// Only GPU N and its processes
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// The time window.
    #[command(flatten)]
    pub window: WindowArgs,
}

/// The formats of `gpukillctl audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines in the original gpukill audit record format.
    Jsonl,
}

/// Arguments of `gpukillctl audit import`.
#[derive(Debug, Clone, Args)]
pub struct AuditImportArgs {
    /// The gpukill audit.jsonl to load (`-` for standard input)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `gpukillctl guard ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GuardCommand {
    /// The policy in force, its mode, and the violations being followed
    Status(GuardOutputArgs),
    /// Evaluate the policy against the current snapshot without acting, and say what the
    /// guard would do about each violation
    Test(GuardOutputArgs),
    /// The violations the guard recorded (warnings, dry-run "would act", held-back kills);
    /// its kills are in `gpukillctl events --type kill`
    Violations(GuardViolationsArgs),
    /// Turn the guard on (admins only)
    Enable,
    /// Turn the guard off: it stops evaluating and acting (admins only)
    Disable,
    /// Set what the guard does about violations (admins only)
    Mode {
        /// dry-run: record only; soft: warn, act after the grace; hard: act after
        /// min_duration
        #[arg(value_enum)]
        mode: GuardModeArg,
    },
    /// Show or change the policy's entries
    #[command(subcommand)]
    Policy(GuardPolicyCommand),
    /// Print the policy file (to save it or move it to another node)
    Export,
    /// Replace the policy with FILE, checked first; an invalid file changes nothing
    /// (admins only)
    Import {
        /// The policy file to load (`-` for standard input)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// The guard's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuardModeArg {
    /// Record what would be done; never act.
    DryRun,
    /// Warn, then act if the violation outlasts the grace.
    Soft,
    /// Act once the violation has lasted min_duration.
    Hard,
}

impl GuardModeArg {
    /// The name in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardModeArg::DryRun => "dry-run",
            GuardModeArg::Soft => "soft",
            GuardModeArg::Hard => "hard",
        }
    }
}

/// `gpukillctl guard policy ...`: changes are for admins; the daemon edits the file
/// (keeping its comments), checks it as a whole, writes it atomically and loads it.
#[derive(Debug, Clone, Subcommand)]
pub enum GuardPolicyCommand {
    /// Print the policy file
    Show,
    /// Add limits for a user (or replace that user's entry)
    AddUser(UserLimitsArgs),
    /// Remove a user's entry
    RemoveUser {
        /// The user name (or uid) of the entry
        name: String,
    },
    /// Add a group with aggregate limits (or replace it)
    AddGroup(GroupLimitsArgs),
    /// Remove a group's entry
    RemoveGroup {
        /// The group's name in the policy
        name: String,
    },
    /// Add rules for a GPU (or replace them)
    AddGpu(GpuRulesArgs),
    /// Remove a GPU's entry
    RemoveGpu {
        /// The GPU index
        index: u32,
    },
}

/// The limits of `guard policy add-user`.
#[derive(Debug, Clone, Args)]
pub struct UserLimitsArgs {
    /// The user name, or a numeric uid
    pub name: String,
    /// GPU memory one process may use, e.g. 20GiB
    #[arg(long, value_name = "SIZE")]
    pub max_memory_per_process: Option<String>,
    /// GPU memory all the user's processes may use together
    #[arg(long, value_name = "SIZE")]
    pub max_memory_total: Option<String>,
    /// Mean SM utilization of one process over --utilization-window, percent
    #[arg(long, value_name = "PCT")]
    pub max_utilization_pct: Option<f64>,
    /// The window of --max-utilization-pct (default 5m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub utilization_window: Option<Duration>,
    /// How long one process may run, e.g. 24h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// GPU processes at once
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u32>,
    /// The only GPUs the user may use, e.g. 0,1
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub allowed_gpus: Option<Vec<u32>>,
    /// GPUs the user may not use
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub blocked_gpus: Option<Vec<u32>>,
}

/// The limits of `guard policy add-group`.
#[derive(Debug, Clone, Args)]
pub struct GroupLimitsArgs {
    /// The group's name in the policy (`@NAME` in user lists)
    pub name: String,
    /// Members from this Unix group
    #[arg(long, value_name = "GROUP")]
    pub unix_group: Option<String>,
    /// Listed members (user names or uids)
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub members: Vec<String>,
    /// GPU memory of all the members' processes together
    #[arg(long, value_name = "SIZE")]
    pub max_memory_total: Option<String>,
    /// Sum of the members' processes' mean SM utilization (200 = two GPUs' worth)
    #[arg(long, value_name = "PCT")]
    pub max_utilization_pct: Option<f64>,
    /// GPU processes of all members at once
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u32>,
}

/// The rules of `guard policy add-gpu`.
#[derive(Debug, Clone, Args)]
pub struct GpuRulesArgs {
    /// The GPU index
    pub index: u32,
    /// Only these users (names, uids or @group) may use it
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub allowed_users: Option<Vec<String>>,
    /// These users may not
    #[arg(long, value_name = "USER,..", value_delimiter = ',')]
    pub blocked_users: Vec<String>,
    /// GPU memory one process may use on it
    #[arg(long, value_name = "SIZE")]
    pub max_memory_per_process: Option<String>,
    /// Memory at the top of the GPU nobody may use
    #[arg(long, value_name = "SIZE")]
    pub reserved_memory: Option<String>,
}

/// The output option of `guard status` and `guard test`.
#[derive(Debug, Clone, Args)]
pub struct GuardOutputArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl guard violations`.
#[derive(Debug, Clone, Args)]
pub struct GuardViolationsArgs {
    /// Only violations of the last DURATION, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// At most N, the newest
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub limit: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `gpukillctl collection ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum CollectionCommand {
    /// Print each GPU's stored sample nearest to TIME (within --within)
    ///
    /// Fields as gpu_monitor stores them: timestamp, uid (the GPU UUID), pci_bus_id, name,
    /// temperature (°C), memory_used and memory_total (MiB), gpu_utilization and
    /// memory_utilization (%), power_usage (W), fan_speed (%), graphics_clock and
    /// memory_clock (MHz). Values are the means of the persist interval (memory used: its
    /// maximum); graphics_clock is the SM clock.
    Show(CollectionShowArgs),
}

/// Arguments of `gpukillctl collection show`.
#[derive(Debug, Clone, Args)]
pub struct CollectionShowArgs {
    /// The moment: RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (10m)
    #[arg(value_name = "TIME", value_parser = parse_time)]
    pub time: TimeArg,

    /// How far from TIME a sample may be
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub within: Duration,

    /// Only GPU N
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Output format
    #[arg(long, value_enum, default_value_t = CollectionFormat::Json)]
    pub format: CollectionFormat,
}

/// The formats of `gpukillctl collection show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CollectionFormat {
    /// A JSON array of objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// The exit codes of `uploads list` and `uploads show`.
const UPLOADS_EXIT_CODES: &str = "Exit codes:\n  \
    0 ok, 3 a bad option (uploads show: no upload of that hour),\n  \
    5 uploads are off on this node ([upload] url unset, not offline),\n  \
    6 gpukilld not reachable";

/// `gpukillctl uploads ...`: the Uploads, UploadShow and UploadRetry RPCs.
#[derive(Debug, Clone, Subcommand)]
pub enum UploadsCommand {
    /// List the hours in the outbox, oldest first, with a count of every hour by status
    ///
    /// One row per hour (the newest --limit hours). HOUR is the start of the hour and the
    /// attempt times are date and time, all in local time (the JSON has them in UTC; HOUR
    /// arguments are RFC 3339 in UTC or a duration ago). STATUS is pending (waiting to be
    /// sent, or to be sent again at NEXT; NEXT is `offline` while gpukilld queues without
    /// sending), delivered (the server stored it and echoed its content hash), parked
    /// (max_attempts failed; kept, not sent again until an admin runs `uploads retry`) or
    /// rejected (the server refused it with a 4xx other than 408 and 429; LAST ERROR says
    /// why). ATTEMPTS counts the sends since the hour was queued or last retried; LAST ERROR
    /// is shortened (`uploads show HOUR` prints it whole); ROWS(GPU/USER) are the payload's
    /// per-GPU and per-user rows; SIZE is the payload's size.
    ///
    /// The line above the table counts the whole outbox by status (not only the rows shown),
    /// the hours dropped because the outbox was full ([upload] max_outbox_hours), and says
    /// where gpukilld sends, or that it is offline. Lines below it say what to do about
    /// parked, rejected and dropped hours.
    #[command(after_help = UPLOADS_EXIT_CODES)]
    List(UploadsListArgs),
    /// Show one hour: its outbox entry, every attempt to send it and, with --payload, what
    /// is sent
    ///
    /// The attempts are listed oldest first: ATTEMPT (numbering starts over after an admin
    /// retry), TIME, HTTP (the status the server answered, `-` when it did not answer),
    /// LATENCY(ms) and ERROR (the server's message or the network error). --payload adds the
    /// payload as sent (JSON, schema gpukill.usage/v1); --output json always has it, as an
    /// object.
    #[command(after_help = UPLOADS_EXIT_CODES)]
    Show(UploadShowArgs),
    /// Send parked or rejected hours again (admins only)
    ///
    /// The hours become pending again and their attempts start over; gpukilld sends them,
    /// oldest first, as soon as the uploader gets to them. Name one parked or rejected HOUR,
    /// or give --all-parked for every parked hour (rejected hours are retried one by one,
    /// once whatever made the server refuse them is fixed). Every retry, refusals included,
    /// is written to the audit trail (gpukillctl events).
    #[command(after_help = "Exit codes:\n  \
        0 the hours are pending again (or, with --all-parked, none was parked),\n  \
        3 no upload of HOUR, or a bad option, 4 not an admin,\n  \
        5 HOUR is pending or delivered (only parked and rejected hours are sent again),\n    \
        or uploads are off on this node, 6 gpukilld not reachable")]
    Retry(UploadRetryArgs),
}

/// Arguments of `gpukillctl uploads list`.
#[derive(Debug, Clone, Args)]
pub struct UploadsListArgs {
    /// Only hours with this status
    #[arg(long, value_name = "STATUS", value_enum)]
    pub status: Option<UploadStatusArg>,

    /// At most N hours, the newest, 1 to 10000
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub limit: u32,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The `--status` choices of `gpukillctl uploads list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UploadStatusArg {
    /// Waiting to be sent, or to be sent again.
    Pending,
    /// Stored by the server, which echoed the content hash.
    Delivered,
    /// max_attempts failed; kept until an admin retries it.
    Parked,
    /// Refused by the server; kept with its message.
    Rejected,
}

impl From<UploadStatusArg> for gpukill_proto::v1::UploadStatus {
    fn from(arg: UploadStatusArg) -> Self {
        match arg {
            UploadStatusArg::Pending => gpukill_proto::v1::UploadStatus::Pending,
            UploadStatusArg::Delivered => gpukill_proto::v1::UploadStatus::Delivered,
            UploadStatusArg::Parked => gpukill_proto::v1::UploadStatus::Parked,
            UploadStatusArg::Rejected => gpukill_proto::v1::UploadStatus::Rejected,
        }
    }
}

/// Arguments of `gpukillctl uploads show`.
#[derive(Debug, Clone, Args)]
pub struct UploadShowArgs {
    /// The hour: any time in it, as RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago
    /// (2h: the hour that was 2 hours ago)
    #[arg(value_name = "HOUR", value_parser = parse_time)]
    pub hour: TimeArg,

    /// Also print the payload, pretty-printed (--output json always has it)
    #[arg(long)]
    pub payload: bool,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl uploads retry`.
#[derive(Debug, Clone, Args)]
pub struct UploadRetryArgs {
    /// What to send again: exactly one of HOUR and --all-parked.
    #[command(flatten)]
    pub target: UploadRetryTargetArgs,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The selectors of `gpukillctl uploads retry`; clap requires exactly one.
#[derive(Debug, Clone, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct UploadRetryTargetArgs {
    /// The parked or rejected hour to send again: any time in it, as RFC 3339 in UTC
    /// (2024-05-01T12:00:00Z) or a duration ago (2h)
    #[arg(value_name = "HOUR", value_parser = parse_time)]
    pub hour: Option<TimeArg>,

    /// Every parked hour
    #[arg(long)]
    pub all_parked: bool,
}

impl UploadRetryTargetArgs {
    /// The request's target: the start of the hour that holds HOUR (a duration ago counted
    /// back from `now`), or every parked hour; `None` only when neither is set, which clap
    /// prevents.
    pub fn target(&self, now: SystemTime) -> Option<upload_retry_request::Target> {
        if let Some(hour) = self.hour {
            Some(upload_retry_request::Target::HourUnixMs(
                crate::render::uploads::hour_start(hour.unix_ms(now)),
            ))
        } else {
            self.all_parked
                .then_some(upload_retry_request::Target::AllParked(true))
        }
    }
}

/// Risk levels of rogue findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RiskLevelArg {
    /// Score 20 or more by default.
    Low,
    /// 40 or more.
    Medium,
    /// 60 or more.
    High,
    /// 80 or more.
    Critical,
}

impl RiskLevelArg {
    /// The name the Rogue RPC takes.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevelArg::Low => "low",
            RiskLevelArg::Medium => "medium",
            RiskLevelArg::High => "high",
            RiskLevelArg::Critical => "critical",
        }
    }
}

/// Arguments of `gpukillctl history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The GPU with index N
    #[arg(long, value_name = "N")]
    pub gpu: u32,

    /// The last N hours
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub hours: u32,

    /// Raw samples, hourly rollups, or auto: raw up to two days, hourly beyond
    #[arg(long, value_enum, default_value_t = ResolutionArg::Auto)]
    pub resolution: ResolutionArg,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

/// The `--resolution` choices of `gpukillctl history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    /// Raw samples for windows up to two days, hourly rollups beyond.
    Auto,
    /// One sample per persist interval.
    Raw,
    /// One row per closed hour.
    Hourly,
}

impl ResolutionArg {
    /// The History request's value.
    pub fn to_proto(self) -> gpukill_proto::v1::Resolution {
        match self {
            ResolutionArg::Auto => gpukill_proto::v1::Resolution::Auto,
            ResolutionArg::Raw => gpukill_proto::v1::Resolution::Raw,
            ResolutionArg::Hourly => gpukill_proto::v1::Resolution::Hourly,
        }
    }
}

/// A point in time on the command line: absolute, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// An RFC 3339 time.
    At(SystemTime),
    /// This long before now.
    Ago(Duration),
}

impl TimeArg {
    /// Milliseconds since the epoch, `Ago` counted back from `now`; 0 for anything before
    /// the epoch.
    pub fn unix_ms(self, now: SystemTime) -> i64 {
        let time = match self {
            TimeArg::At(time) => Some(time),
            TimeArg::Ago(ago) => now.checked_sub(ago),
        };
        time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
            })
    }
}

/// The window `since`..`until` (default now), or the last `hours` when `since` is absent,
/// in milliseconds since the epoch, counted back from `now`.
pub fn window(
    hours: u32,
    since: Option<TimeArg>,
    until: Option<TimeArg>,
    now: SystemTime,
) -> (i64, i64) {
    let until = until.unwrap_or(TimeArg::Ago(Duration::ZERO));
    let since = since.unwrap_or(TimeArg::Ago(Duration::from_secs(u64::from(hours) * 3600)));
    (since.unix_ms(now), until.unix_ms(now))
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2024-05-01T12:00:00Z`) or a humantime
/// duration ago (`2h`, `1h 30m`).
pub fn parse_time(value: &str) -> Result<TimeArg, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(TimeArg::Ago(ago));
    }
    humantime::parse_rfc3339_weak(value)
        .map(TimeArg::At)
        .map_err(|_| "use RFC 3339 in UTC (2024-05-01T12:00:00Z) or a duration ago (2h)".to_owned())
}

/// Parses a humantime duration (`30m`, `2h`, `7d`, `1h 30m`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|err| err.to_string())
}

/// Parses a humantime duration that is not zero (`30m`, `4h`, `1h 30m`).
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero".to_owned());
    }
    Ok(duration)
}

/// `duration` in whole milliseconds, for the API; 0 (the API's "not given") when `None`.
pub fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |duration| {
        // Rounded up, so that a duration under a millisecond is not taken for "not given".
        let partial = u128::from(duration.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(duration.as_millis() + partial).unwrap_or(u64::MAX)
    })
}

/// The exit codes of `reserve`, `release` and `status`.
const RESERVATIONS_EXIT_CODES: &str = "Exit codes:\n  \
    0 ok, 3 a bad option (no such GPU, a bad duration), 4 not allowed (release: someone\n  \
    else's reservation), 5 not on this host's socket (reservations are local),\n  \
    6 gpukilld not reachable, 7 the GPUs asked for are busy (reserve)";

/// Arguments of `gpukillctl reserve`.
#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    /// How many GPUs (gpukilld picks them); default 1
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "gpu_ids",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpus: Option<u32>,

    /// These GPUs exactly, by index, e.g. 0,3
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub gpu_ids: Vec<u32>,

    /// For how long, e.g. 30m, 4h, 2d (default: gpukilld's, 8h)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// A note shown in `gpukillctl status`, e.g. what the GPUs are for
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl release`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// Only the reservations on these GPUs, by index, e.g. 0,3 (default: every reservation
    /// you made with `gpukillctl reserve`)
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub gpu_ids: Vec<u32>,

    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `gpukillctl run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// How many GPUs
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpus: u32,

    /// End the reservation after this long, e.g. 2h; the command is then stopped (exit 124)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,

    /// Fail at once when the GPUs are not free (exit 7) instead of waiting in the queue
    #[arg(long, conflicts_with = "wait")]
    pub nonblock: bool,

    /// Wait in the queue at most this long, e.g. 10m (default: as long as it takes)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub wait: Option<Duration>,

    /// The command and its arguments (put `--` before them when they start with `-`)
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Arguments of `gpukillctl version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// JSON, with the field names of the original gpukill.
    Json,
}

/// How a report (`audit`, `history`) prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Human-readable tables.
    Table,
    /// JSON.
    Json,
    /// CSV with a header row.
    Csv,
}

/// The `--vendor` choices; `all` means no vendor filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VendorArg {
    /// NVIDIA GPUs.
    Nvidia,
    /// AMD GPUs.
    Amd,
    /// Intel GPUs.
    Intel,
    /// Apple Silicon GPUs.
    Apple,
    /// Every vendor.
    All,
}

impl From<VendorArg> for Vendor {
    fn from(arg: VendorArg) -> Self {
        match arg {
            VendorArg::Nvidia => Vendor::Nvidia,
            VendorArg::Amd => Vendor::Amd,
            VendorArg::Intel => Vendor::Intel,
            VendorArg::Apple => Vendor::Apple,
            VendorArg::All => Vendor::Unspecified,
        }
    }
}

/// Where the daemon listens, as given by `--socket`/`--addr` or `GPUKILL_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path (given as a path or as `unix:///path`).
    Unix(PathBuf),
    /// A gpukilld reached over TCP: `https://HOST:PORT`, or `http://HOST:PORT` on loopback.
    Remote(RemoteAddress),
}

/// A TCP address of gpukilld, checked: a host, a port, and whether TLS is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddress {
    /// `https://` (TLS) rather than `http://` (plain, loopback only).
    pub tls: bool,
    /// The host name or IP address, without the brackets of an IPv6 address.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl RemoteAddress {
    /// The address as a URL, `https://host:port` (IPv6 hosts in brackets).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for RemoteAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// Parses a `--socket`/`--addr` value: `unix:///path`, `https://HOST:PORT`,
/// `http://HOST:PORT` (loopback hosts only), or a plain path.
pub fn parse_address(value: &str) -> Result<Address, String> {
    if value.is_empty() {
        return Err("the address is empty".to_owned());
    }
    if let Some(path) = value.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "a unix:// address needs an absolute path (unix:///path), got {value:?}"
            ));
        }
        return Ok(Address::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = value.strip_prefix("https://") {
        return parse_remote(value, rest, true).map(Address::Remote);
    }
    if let Some(rest) = value.strip_prefix("http://") {
        let address = parse_remote(value, rest, false)?;
        if !is_loopback(&address.host) {
            return Err(format!(
                "{value} is not a loopback address: requests carry credentials, so a remote \
                 gpukilld must be reached over https://{}:{} (http:// is accepted for \
                 127.0.0.1, ::1 and localhost only)",
                bracketed(&address.host),
                address.port
            ));
        }
        return Ok(Address::Remote(address));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        return Err(format!(
            "unknown address scheme {scheme:?} in {value:?} (use a path, unix:///path or \
             https://HOST:PORT)"
        ));
    }
    Ok(Address::Unix(PathBuf::from(value)))
}

/// `host`, in brackets when it is an IPv6 address.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Parses the `HOST:PORT` after the scheme of `value`.
fn parse_remote(value: &str, rest: &str, tls: bool) -> Result<RemoteAddress, String> {
    let scheme = if tls { "https" } else { "http" };
    let usage = format!("use {scheme}://HOST:PORT");
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(format!(
            "{value} has a path ({path:?}); gpukilld's address is a host and a port: {usage}"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "{value} has credentials in it; pass them with --token-file (or --cert and --key) \
             and {usage}"
        ));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{value}: an IPv6 address needs its closing ']'"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{value}: [{host}] is not an IPv6 address"));
        }
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("{value}: expected ':PORT' after [{host}]; {usage}")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "{value}: put an IPv6 address in brackets, e.g. {scheme}://[::1]:PORT"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{value} has no host; {usage}"));
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!(
            "{value}: {host:?} is not a host name or IP address; {usage}"
        ));
    }
    let Some(port) = port else {
        return Err(format!(
            "{value} has no port; {usage} (the port of gpukilld's [tcp] listen)"
        ));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{value}: {port:?} is not a TCP port (1 to 65535)"))?;
    Ok(RemoteAddress {
        tls,
        host: host.to_owned(),
        port,
    })
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Parses a `--node` value: a cluster node's name, sent as gRPC metadata, so printable
/// ASCII without whitespace or `/`.
pub fn parse_node_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("the node name is empty (gpukillctl cluster nodes lists the names)".to_owned());
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic() || *c == '/') {
        return Err(format!(
            "{value:?} is not a node name: it contains {bad:?} (names are printable ASCII \
             without spaces or '/'; gpukillctl cluster nodes lists them)"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_snapshot;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What clap prints for `args`: the exact text a user sees for `--help`.
    fn help_for(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(_) => panic!("{args:?} should print help"),
            Err(err) => {
                assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
                // Trailing spaces (clap pads blank lines inside paragraphs) are trimmed, so
                // editors that strip them cannot break the snapshot.
                let text = err.render().to_string();
                text.lines()
                    .map(|line| format!("{}\n", line.trim_end()))
                    .collect()
            }
        }
    }

    /// Every subcommand's path below `command` (`["uploads", "list"]`), groups included.
    fn command_paths(command: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in command.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            command_paths(sub, &path, out);
        }
    }

    /// One loop over the whole command tree: a new subcommand without a help snapshot fails
    /// here (`UPDATE_SNAPSHOTS=1` writes it, to be reviewed like any other change).
    #[test]
    fn every_command_s_help_matches_its_snapshot() {
        let mut paths = Vec::new();
        command_paths(&Cli::command(), &[], &mut paths);
        assert!(paths.len() > 20, "{paths:?}");
        for path in paths {
            let mut args = vec!["gpukillctl".to_owned()];
            args.extend(path.iter().cloned());
            args.push("--help".to_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_snapshot(&format!("{}-help.txt", path.join("-")), &help_for(&args));
        }
    }

    #[test]
    fn exit_codes_are_in_the_help_of_commands_that_have_their_own() {
        for command in [
            &["cluster", "nodes"][..],
            &["cluster", "contention"],
            &["reserve"],
        ] {
            let args = [&["gpukillctl"][..], command, &["--help"]].concat();
            let help = help_for(&args);
            assert!(help.contains("Exit codes:"), "{command:?}: {help}");
        }
        let help = help_for(&["gpukillctl", "reserve", "--help"]);
        assert!(help.contains("7 the GPUs asked for are busy"), "{help}");
    }

    #[test]
    fn help_matches_the_snapshot() {
        let help = help_for(&["gpukillctl", "--help"]);
        let rendered = Cli::command().render_long_help().to_string();
        assert_eq!(help.lines().count(), rendered.lines().count());
        assert_snapshot("help.txt", &help);
    }

    fn uploads_command(args: &[&str]) -> UploadsCommand {
        let argv = [&["gpukillctl", "uploads"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Uploads(command) => command,
            other => panic!("expected uploads, got {other:?}"),
        }
    }

    #[test]
    fn uploads_list_arguments_parse() {
        let UploadsCommand::List(args) = uploads_command(&["list"]) else {
            panic!("expected uploads list");
        };
        assert_eq!((args.status, args.limit), (None, 100));
        assert_eq!(args.output, OutputFormat::Table);
        let UploadsCommand::List(args) = uploads_command(&[
            "list", "--status", "rejected", "--limit", "10000", "-o", "json",
        ]) else {
            panic!("expected uploads list");
        };
        assert_eq!(args.status, Some(UploadStatusArg::Rejected));
        assert_eq!(args.limit, 10_000);
        assert_eq!(args.output, OutputFormat::Json);
        for bad in [
            &["--limit", "0"][..],
            &["--limit", "10001"],
            &["--status", "sent"],
            &["--status", "all"],
        ] {
            let argv = [&["gpukillctl", "uploads", "list"], bad].concat();
            assert_eq!(
                crate::error::clap_exit_code(&usage_error(&argv)),
                3,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upload_status_names_are_the_proto_names() {
        for arg in UploadStatusArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            let status = gpukill_proto::v1::UploadStatus::from(*arg);
            assert_eq!(crate::render::uploads::status_name(status as i32), name);
        }
    }

    #[test]
    fn upload_hours_take_the_time_formats_of_other_commands() {
        let show = |hour: &str| match uploads_command(&["show", hour]) {
            UploadsCommand::Show(args) => args,
            other => panic!("expected uploads show, got {other:?}"),
        };
        let noon = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(show("2024-05-01T12:00:00Z").hour, TimeArg::At(noon));
        assert_eq!(show("2024-05-01 12:00:00").hour, TimeArg::At(noon));
        assert_eq!(show("2h").hour, TimeArg::Ago(Duration::from_secs(2 * 3600)));
        assert_eq!(show("1h 30m").hour, TimeArg::Ago(Duration::from_secs(5400)));
        let args = show("3h");
        assert!(!args.payload);
        for bad in ["yesterday", "5", "2024-05-01", "12:00"] {
            let err = usage_error(&["gpukillctl", "uploads", "show", bad]);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{bad}");
            let text = err.to_string();
            assert!(text.contains(&format!("'{bad}'")), "{text}");
            assert!(text.contains("RFC 3339 in UTC"), "{text}");
        }
        let missing = usage_error(&["gpukillctl", "uploads", "show"]);
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(crate::error::clap_exit_code(&missing), 3);
    }

    #[test]
    fn uploads_retry_needs_exactly_one_of_hour_and_all_parked() {
        let none = usage_error(&["gpukillctl", "uploads", "retry"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let both = usage_error(&["gpukillctl", "uploads", "retry", "2h", "--all-parked"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let bad = usage_error(&["gpukillctl", "uploads", "retry", "soon"]);
        assert_eq!(crate::error::clap_exit_code(&bad), 3);
    }

    #[test]
    fn uploads_retry_targets_the_start_of_the_hour() {
        let retry = |args: &[&str]| match uploads_command(&[&["retry"], args].concat()) {
            UploadsCommand::Retry(args) => args,
            other => panic!("expected uploads retry, got {other:?}"),
        };
        // 2024-05-01T12:00:00.250Z.
        let now = UNIX_EPOCH + Duration::from_millis(1_714_564_800_250);
        let ten = 1_714_557_600_000;
        assert_eq!(
            retry(&["2024-05-01T10:59:59Z"]).target.target(now),
            Some(upload_retry_request::Target::HourUnixMs(ten))
        );
        // 2 hours before 12:00:00.250 is 10:00:00.250, in the 10:00 hour.
        assert_eq!(
            retry(&["2h"]).target.target(now),
            Some(upload_retry_request::Target::HourUnixMs(ten))
        );
        let all = retry(&["--all-parked", "-o", "json"]);
        assert_eq!(
            all.target.target(now),
            Some(upload_retry_request::Target::AllParked(true))
        );
        assert_eq!(all.output, OutputFormat::Json);
    }

    fn audit_args(args: &[&str]) -> AuditArgs {
        let argv = [&["gpukillctl", "audit"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Audit(args) => args,
            other => panic!("expected audit, got {other:?}"),
        }
    }

    #[test]
    fn audit_windows_parse() {
        let args = audit_args(&[]);
        assert_eq!(
            (args.window.hours, args.window.since, args.window.until),
            (24, None, None)
        );
        assert_eq!(args.output, ReportFormat::Table);
        let args = audit_args(&[
            "--since",
            "2024-05-01T12:00:00Z",
            "--until",
            "2h",
            "-o",
            "csv",
        ]);
        let noon = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(args.window.since, Some(TimeArg::At(noon)));
        assert_eq!(
            args.window.until,
            Some(TimeArg::Ago(Duration::from_secs(7200)))
        );
        assert_eq!(args.output, ReportFormat::Csv);
        let both = usage_error(&["gpukillctl", "audit", "--hours", "2", "--since", "1h"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let alone = usage_error(&["gpukillctl", "audit", "--until", "1h"]);
        assert_eq!(crate::error::clap_exit_code(&alone), 3);
        let bad = usage_error(&["gpukillctl", "audit", "--since", "yesterday"]);
        assert_eq!(bad.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(bad.to_string().contains("'yesterday'"), "{bad}");
    }

    #[test]
    fn times_count_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(TimeArg::Ago(Duration::from_secs(1)).unix_ms(now), 9_999_000);
        assert_eq!(TimeArg::Ago(Duration::from_secs(20_000)).unix_ms(now), 0);
        assert_eq!(TimeArg::At(now).unix_ms(UNIX_EPOCH), 10_000_000);
    }

    #[test]
    fn short_help_matches_the_snapshot() {
        assert_snapshot("help-short.txt", &Cli::command().render_help().to_string());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("/run/gpukill/gpukilld.sock"),
            Ok(Address::Unix(PathBuf::from("/run/gpukill/gpukilld.sock")))
        );
        assert_eq!(
            parse_address("unix:///tmp/g.sock"),
            Ok(Address::Unix(PathBuf::from("/tmp/g.sock")))
        );
        assert_eq!(
            parse_address("relative.sock"),
            Ok(Address::Unix(PathBuf::from("relative.sock")))
        );
        assert!(parse_address("").is_err());
        assert!(parse_address("unix://relative").is_err());
        assert!(parse_address("ftp://x").is_err());
    }

    fn remote(value: &str) -> RemoteAddress {
        match parse_address(value) {
            Ok(Address::Remote(address)) => address,
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn https_addresses_parse_into_host_and_port() {
        let node = remote("https://node1:50051");
        assert_eq!(
            node,
            RemoteAddress {
                tls: true,
                host: "node1".to_owned(),
                port: 50051
            }
        );
        assert_eq!(node.url(), "https://node1:50051");
        assert_eq!(remote("https://node1.example.org:7443/").port, 7443);
        assert_eq!(remote("https://10.0.0.5:7443").host, "10.0.0.5");
        let v6 = remote("https://[fd00::5]:7443");
        assert_eq!(v6.host, "fd00::5");
        assert_eq!(v6.url(), "https://[fd00::5]:7443");
    }

    #[test]
    fn http_is_for_loopback_only() {
        for loopback in [
            "http://127.0.0.1:7443",
            "http://127.1.2.3:7443",
            "http://localhost:7443",
            "http://LOCALHOST:7443",
            "http://[::1]:7443",
            "http://[::ffff:127.0.0.1]:7443",
        ] {
            assert!(!remote(loopback).tls, "{loopback}");
        }
        for remote in [
            "http://node1:7443",
            "http://10.0.0.5:7443",
            "http://[fd00::5]:7443",
            "http://0.0.0.0:7443",
        ] {
            let err = parse_address(remote).expect_err(remote);
            assert!(err.contains("is not a loopback address"), "{err}");
            assert!(err.contains("requests carry credentials"), "{err}");
            assert!(err.contains("https://"), "{err}");
        }
    }

    #[test]
    fn bad_remote_addresses_say_what_is_wrong() {
        let cases = [
            ("https://node1", "has no port"),
            ("https://node1:", "is not a TCP port"),
            ("https://node1:0", "is not a TCP port"),
            ("https://node1:70000", "is not a TCP port"),
            ("https://node1:http", "is not a TCP port"),
            ("https://node1:7443/gpukill", "has a path"),
            ("https://node1:7443?x=1", "has a path"),
            ("https://alice:secret@node1:7443", "has credentials in it"),
            ("https://:7443", "has no host"),
            ("https://fd00::5:7443", "in brackets"),
            ("https://[fd00::5]", "has no port"),
            ("https://[fd00::5:7443", "closing ']'"),
            ("https://[node1]:7443", "is not an IPv6 address"),
            ("https://no de:7443", "is not a host name"),
            ("http://127.0.0.1", "has no port"),
        ];
        for (value, expected) in cases {
            let err = parse_address(value).expect_err(value);
            assert!(err.contains(expected), "{value}: {err}");
            assert!(
                err.contains(value),
                "{value}: the message names the value: {err}"
            );
        }
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        for value in ["http://node1:7443", "https://node1", "https://n:1/x"] {
            let err = usage_error(&["gpukillctl", "--addr", value, "list"]);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{value}");
        }
    }

    #[test]
    fn addr_is_an_alias_of_socket_and_global() {
        let cli = Cli::try_parse_from(["gpukillctl", "list", "--addr", "https://c:7443"])
            .expect("valid arguments");
        assert_eq!(
            cli.connect.socket,
            Some(Address::Remote(remote("https://c:7443")))
        );
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "--addr",
            "https://c:7443",
            "--token-file",
            "/t",
            "--ca",
            "/ca.pem",
            "--node",
            "n2",
            "cluster",
            "nodes",
        ])
        .expect("valid arguments");
        assert_eq!(cli.connect.token_file, Some(PathBuf::from("/t")));
        assert_eq!(cli.connect.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cli.connect.node.as_deref(), Some("n2"));
    }

    #[test]
    fn cert_and_key_go_together() {
        let base = ["gpukillctl", "--addr", "https://c:7443", "--ca", "/ca.pem"];
        let only_cert = usage_error(&[&base[..], &["--cert", "/c.pem", "list"]].concat());
        assert_eq!(
            only_cert.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(crate::error::clap_exit_code(&only_cert), 3);
        assert!(only_cert.to_string().contains("--key"), "{only_cert}");
        let only_key = usage_error(&[&base[..], &["list", "--key", "/c.key"]].concat());
        assert_eq!(crate::error::clap_exit_code(&only_key), 3);
        let both = Cli::try_parse_from(
            [&base[..], &["--cert", "/c.pem", "--key", "/c.key", "list"]].concat(),
        )
        .expect("valid arguments");
        assert_eq!(both.connect.key, Some(PathBuf::from("/c.key")));
    }

    #[test]
    fn node_names_are_checked() {
        assert_eq!(parse_node_name("gpu-07.lab"), Ok("gpu-07.lab".to_owned()));
        for bad in ["", "n 1", "n\t1", "a/b", "nœud"] {
            let err = parse_node_name(bad).expect_err(bad);
            assert!(err.contains("node name"), "{bad}: {err}");
        }
        let err = usage_error(&["gpukillctl", "--node", "a/b", "list"]);
        assert_eq!(crate::error::clap_exit_code(&err), 3);
        assert!(err.to_string().contains("'a/b'"), "{err}");
    }

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

    #[test]
    fn list_arguments_parse() {
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "list",
            "--vendor",
            "amd",
            "--filter",
            "python",
            "--containers",
            "-o",
            "json",
            "--socket",
            "unix:///tmp/x.sock",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.connect.socket,
            Some(Address::Unix(PathBuf::from("/tmp/x.sock")))
        );
        let Command::List(args) = cli.command else {
            panic!("expected list");
        };
        assert_eq!(Vendor::from(args.vendor), Vendor::Amd);
        assert_eq!(args.filter.as_deref(), Some("python"));
        assert!(args.containers);
        assert_eq!(args.output, OutputFormat::Json);
    }

    /// The usage error clap reports for `args`.
    fn usage_error(args: &[&str]) -> clap::Error {
        match Cli::try_parse_from(args) {
            Ok(cli) => panic!("{args:?} should not parse: {cli:?}"),
            Err(err) => err,
        }
    }

    fn kill_args(args: &[&str]) -> KillArgs {
        let argv = [&["gpukillctl", "kill"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Kill(args) => args,
            other => panic!("expected kill, got {other:?}"),
        }
    }

    #[test]
    fn kill_needs_exactly_one_selector() {
        let none = usage_error(&["gpukillctl", "kill", "--batch"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let two = usage_error(&["gpukillctl", "kill", "--pid", "7", "--filter", "x"]);
        assert_eq!(two.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&two), 3);
        let twice = usage_error(&["gpukillctl", "kill", "--gpu", "0", "--user", "bob"]);
        assert_eq!(crate::error::clap_exit_code(&twice), 3);
    }

    #[test]
    fn kill_selectors_become_the_request_target() {
        assert_eq!(
            kill_args(&["--pid", "4242"]).target.target(),
            Some(Target::Pid(4242))
        );
        assert_eq!(
            kill_args(&["--filter", "^py"]).target.target(),
            Some(Target::Filter("^py".to_owned()))
        );
        assert_eq!(
            kill_args(&["--gpu", "3"]).target.target(),
            Some(Target::GpuIndex(3))
        );
        assert_eq!(
            kill_args(&["--user", "1001"]).target.target(),
            Some(Target::User("1001".to_owned()))
        );
    }

    #[test]
    fn kill_defaults_and_timeout_range() {
        let args = kill_args(&["--pid", "1"]);
        assert_eq!(args.timeout_secs, 5);
        assert!(!args.batch && !args.force);
        assert_eq!(args.output, OutputFormat::Table);
        assert_eq!(
            kill_args(&["--pid", "1", "--timeout-secs", "3600"]).timeout_secs,
            3600
        );
        for bad in ["0", "3601", "-1", "5s"] {
            let err = usage_error(&["gpukillctl", "kill", "--pid", "1", "--timeout-secs", bad]);
            assert_eq!(crate::error::clap_exit_code(&err), 3, "{bad}");
        }
    }

    fn reset_args(args: &[&str]) -> ResetArgs {
        let argv = [&["gpukillctl", "reset"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Reset(args) => args,
            other => panic!("expected reset, got {other:?}"),
        }
    }

    #[test]
    fn reset_needs_exactly_one_of_gpu_and_all() {
        let none = usage_error(&["gpukillctl", "reset", "--force"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
        let both = usage_error(&["gpukillctl", "reset", "--gpu", "0", "--all"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        let bad = usage_error(&["gpukillctl", "reset", "--gpu", "-1"]);
        assert_eq!(crate::error::clap_exit_code(&bad), 3);
    }

    #[test]
    fn reset_selectors_become_the_request_target() {
        let args = reset_args(&["--gpu", "1", "--force"]);
        assert_eq!(
            args.target.target(),
            Some(reset_request::Target::GpuIndex(1))
        );
        assert!(args.force);
        let args = reset_args(&["--all", "-o", "json"]);
        assert_eq!(args.target.target(), Some(reset_request::Target::All(true)));
        assert!(!args.force);
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn events_arguments_parse() {
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "events",
            "--since",
            "7d",
            "--type",
            "deny",
            "--limit",
            "20",
            "-o",
            "json",
        ])
        .expect("valid arguments");
        let Command::Events(args) = cli.command else {
            panic!("expected events");
        };
        assert_eq!(args.since, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(args.event_type, Some(EventType::Deny));
        assert_eq!(args.limit, 20);
        assert_eq!(args.output, OutputFormat::Json);
        let Command::Events(args) = Cli::try_parse_from(["gpukillctl", "events"])
            .expect("valid arguments")
            .command
        else {
            panic!("expected events");
        };
        assert_eq!((args.since, args.event_type, args.limit), (None, None, 100));
    }

    #[test]
    fn a_bad_duration_is_a_usage_error_naming_the_value() {
        let err = usage_error(&["gpukillctl", "events", "--since", "5 parsecs"]);
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(crate::error::clap_exit_code(&err), 3);
        let text = err.to_string();
        assert!(
            text.contains("invalid value '5 parsecs' for '--since <DURATION>'"),
            "{text}"
        );
    }

    #[test]
    fn event_type_names_are_the_rpc_names() {
        for arg in EventType::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            assert_eq!(arg.as_str(), name);
        }
    }

    fn reserve_args(args: &[&str]) -> ReserveArgs {
        let argv = [&["gpukillctl", "reserve"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Reserve(args) => args,
            other => panic!("expected reserve, got {other:?}"),
        }
    }

    #[test]
    fn reserve_takes_a_count_or_ids_and_a_duration() {
        let args = reserve_args(&[]);
        assert_eq!(
            (args.gpus, args.gpu_ids.len(), args.duration),
            (None, 0, None)
        );
        let args = reserve_args(&["--gpu-ids", "0,3", "--duration", "4h", "--note", "x"]);
        assert_eq!(args.gpu_ids, [0, 3]);
        assert_eq!(args.duration, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(args.note.as_deref(), Some("x"));
        assert_eq!(reserve_args(&["--gpus", "2", "-o", "json"]).gpus, Some(2));
        let both = usage_error(&["gpukillctl", "reserve", "--gpus", "2", "--gpu-ids", "1"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(crate::error::clap_exit_code(&both), 3);
        for bad in [
            &["--gpus", "0"][..],
            &["--gpu-ids", "a"],
            &["--duration", "0s"],
        ] {
            let argv = [&["gpukillctl", "reserve"], bad].concat();
            assert_eq!(
                crate::error::clap_exit_code(&usage_error(&argv)),
                3,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_and_bad_durations_are_usage_errors_naming_the_value() {
        for (option, value) in [
            ("--duration", "0s"),
            ("--duration", "soon"),
            ("--timeout", "0"),
            ("--wait", "0m"),
        ] {
            let command = if option == "--duration" {
                "reserve"
            } else {
                "run"
            };
            let mut argv = vec!["gpukillctl", command, option, value];
            if command == "run" {
                argv.push("true");
            }
            let err = usage_error(&argv);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
            assert_eq!(crate::error::clap_exit_code(&err), 3);
            let text = err.to_string();
            assert!(
                text.contains(&format!("invalid value '{value}' for '{option}")),
                "{text}"
            );
        }
        assert_eq!(millis(None), 0);
        assert_eq!(millis(Some(Duration::from_micros(1))), 1);
        assert_eq!(millis(Some(Duration::from_secs(2))), 2000);
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = [&["gpukillctl", "run"], args].concat();
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Run(args) => args,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn run_takes_the_command_after_its_options() {
        let args = run_args(&["python", "-u", "train.py", "--gpus", "8"]);
        assert_eq!(args.command, ["python", "-u", "train.py", "--gpus", "8"]);
        assert_eq!(args.gpus, 1);
        assert!(!args.nonblock);
        assert_eq!((args.timeout, args.wait), (None, None));
        let args = run_args(&["--gpus", "2", "--timeout", "2h", "--nonblock", "--", "-x"]);
        assert_eq!(args.command, ["-x"]);
        assert_eq!(args.gpus, 2);
        assert!(args.nonblock);
        assert_eq!(args.timeout, Some(Duration::from_secs(7200)));
        assert_eq!(
            run_args(&["--wait", "10m", "true"]).wait,
            Some(Duration::from_secs(600))
        );
        let both = usage_error(&["gpukillctl", "run", "--nonblock", "--wait", "1m", "true"]);
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let none = usage_error(&["gpukillctl", "run", "--gpus", "2"]);
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(crate::error::clap_exit_code(&none), 3);
    }

    #[test]
    fn release_and_status_parse() {
        let cli = Cli::try_parse_from(["gpukillctl", "release", "--gpu-ids", "1,2", "-o", "json"])
            .expect("valid arguments");
        let Command::Release(args) = cli.command else {
            panic!("expected release");
        };
        assert_eq!(args.gpu_ids, [1, 2]);
        assert_eq!(args.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["gpukillctl", "status"]).expect("valid arguments");
        let Command::Status(args) = cli.command else {
            panic!("expected status");
        };
        assert_eq!(args.output, OutputFormat::Table);
    }

    #[test]
    fn vendor_names_match_the_proto_names() {
        for arg in VendorArg::value_variants() {
            let name = arg
                .to_possible_value()
                .expect("visible value")
                .get_name()
                .to_owned();
            assert_eq!(Vendor::from(*arg).cli_name(), name);
        }
    }
}
