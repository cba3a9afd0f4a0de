//! The command line: one clap derive tree, one subcommand per module in `cmd/`. The global
//! options and the command tree are here; each group of commands has its arguments in its own
//! module, and `values` has the option values several commands share.
//!
//! The connection options (`--socket`, `--token-file`, ...) are global: accepted before or
//! after the subcommand, but described once, in `gpukillctl --help` under "Connection
//! options", not repeated in every subcommand's help ([`hide_connection_options`]).

mod actions;
mod audit;
mod cluster;
mod drain;
mod guard;
mod health;
mod history;
mod list;
mod reserve;
mod uploads;
mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use actions::*;
pub use audit::*;
pub use cluster::*;
pub use drain::*;
pub use guard::*;
pub use health::*;
pub use history::*;
pub use list::*;
pub use reserve::*;
pub use uploads::*;
pub use values::*;

pub use crate::conn::{CA_ENV, CERT_ENV, ConnectArgs, KEY_ENV, NODE_ENV, TOKEN_FILE_ENV};

/// gpukillctl, the client of the gpukilld GPU daemon.
#[derive(Debug, Parser)]
#[command(
    name = "gpukillctl",
    version,
    mut_subcommands = hide_connection_options,
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
    /// Show each GPU's health: state, reasons, error counters, throttling, recent Xids.
    ///
    /// STATE is OK, WARNING (throttled by heat or a power brake, correctable errors rising, a
    /// retirement or remap pending), CRITICAL (a serious Xid, uncorrectable errors, no spare
    /// rows left: it stays so until an admin clears it or the GPU is reset) or LOST (fell off
    /// the bus); UNKNOWN when the GPU reports nothing about its health. Anyone may look;
    /// `health clear` is for admins.
    #[command(after_help = "Exit codes:\n  \
        0 shown (or cleared), 3 no such GPU, 4 health clear by a non-admin,\n  \
        6 gpukilld not reachable")]
    Health(HealthArgs),
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
    /// processes use it). A GPU an admin drained says DRAINED by whom, how long ago and why
    /// (after its holder's reservation, when it is held); one whose health is critical or lost
    /// says UNHEALTHY. Neither is handed out. Waiting requests are listed below, first in line
    /// first. Anyone may look.
    #[command(after_help = RESERVATIONS_EXIT_CODES)]
    Status(StatusArgs),
    /// Drain a GPU (admins only): reserve and run no longer hand it out until `undrain`.
    ///
    /// Like a Kubernetes cordon, a drain ends no reservation and kills nothing: whoever holds
    /// the GPU keeps it until their reservation ends, and processes on it run on. Users who
    /// ask for it are told who drained it, since when and why (exit 7); `status` shows it as
    /// DRAINED. The drain outlives a gpukilld restart, and is written to the audit trail
    /// (`gpukillctl events --type reservation`). Draining a drained GPU changes nothing.
    #[command(after_help = DRAIN_EXIT_CODES)]
    Drain(DrainArgs),
    /// Undrain a GPU (admins only): reserve and run hand it out again.
    ///
    /// `run` requests waiting in the queue may then get it at once. Written to the audit
    /// trail; undraining a GPU that is not drained changes nothing and says so.
    #[command(after_help = DRAIN_EXIT_CODES)]
    Undrain(UndrainArgs),
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
    /// Print the shell completion script for gpukillctl (bash, zsh, fish, elvish, powershell).
    ///
    /// For example: `gpukillctl completions bash > ~/.local/share/bash-completion/completions/gpukillctl`,
    /// `gpukillctl completions zsh > ~/.zfunc/_gpukillctl` (with ~/.zfunc in $fpath), or
    /// `gpukillctl completions fish > ~/.config/fish/completions/gpukillctl.fish`. The
    /// packages install them already.
    Completions(CompletionsArgs),
    /// Print the man page of gpukillctl, or write it and one page per subcommand into DIR.
    ///
    /// Without DIR, gpukillctl(1) goes to standard output (`gpukillctl man | man -l -`). With
    /// DIR, gpukillctl.1 and gpukillctl-list.1, gpukillctl-kill.1, ... are written there
    /// (created when missing), and their paths printed; e.g. DIR ~/.local/share/man/man1.
    /// The packages install them already.
    Man(ManArgs),
}

/// Arguments of `gpukillctl completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: gpukill_manual::Shell,
}

/// Arguments of `gpukillctl man`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write the pages into this directory instead of printing gpukillctl(1)
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The connection options of a subcommand: accepted there as everywhere (they are global)
/// but hidden from its help, which would otherwise repeat all six.
///
/// Each is added hidden before clap propagates the global one, which then finds it there
/// and leaves it; its value still reaches [`Cli::connect`] through clap's global values.
fn hide_connection_options(sub: clap::Command) -> clap::Command {
    let connect = <ConnectArgs as Args>::augment_args(clap::Command::new("connect"));
    connect.get_arguments().fold(sub, |sub, arg| {
        if sub.get_arguments().any(|own| own.get_id() == arg.get_id()) {
            sub
        } else {
            sub.arg(arg.clone().hide(true))
        }
    })
}

/// Arguments of `gpukillctl version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Address, RemoteAddress, parse_node_name};
    use crate::testutil::assert_snapshot;
    use clap::CommandFactory;
    use std::path::PathBuf;

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

    #[test]
    fn short_help_matches_the_snapshot() {
        assert_snapshot("help-short.txt", &Cli::command().render_help().to_string());
    }

    #[test]
    fn connection_options_are_described_once_and_accepted_everywhere() {
        let top = help_for(&["gpukillctl", "--help"]);
        assert!(
            top.contains("\nConnection options:\n      --socket <ADDRESS>"),
            "{top}"
        );
        let mut paths = Vec::new();
        command_paths(&Cli::command(), &[], &mut paths);
        for path in paths {
            let mut args = vec!["gpukillctl".to_owned()];
            args.extend(path.iter().cloned());
            args.push("--help".to_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let help = help_for(&args);
            for option in [
                "--token-file <",
                "--cert <",
                "--key <",
                "--ca <",
                "[env: GPUKILL",
            ] {
                assert!(!help.contains(option), "{path:?} repeats {option}:\n{help}");
            }
        }
        // After the subcommand, at any depth, as before it.
        let cli = Cli::try_parse_from([
            "gpukillctl",
            "guard",
            "policy",
            "show",
            "--socket",
            "/tmp/g.sock",
            "--node",
            "n7",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.connect.socket,
            Some(Address::Unix(PathBuf::from("/tmp/g.sock")))
        );
        assert_eq!(cli.connect.node.as_deref(), Some("n7"));
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
            Some(Address::Remote(RemoteAddress {
                tls: true,
                host: "c".to_owned(),
                port: 7443
            }))
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

    /// The usage error clap reports for `args`.
    pub(super) fn usage_error(args: &[&str]) -> clap::Error {
        match Cli::try_parse_from(args) {
            Ok(cli) => panic!("{args:?} should not parse: {cli:?}"),
            Err(err) => err,
        }
    }
}
