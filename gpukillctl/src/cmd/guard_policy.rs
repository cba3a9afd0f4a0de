//! `gpukillctl guard enable|disable|mode|policy ...|export|import`: the GuardPolicy and
//! GuardUpdate RPCs. Entries are sent as TOML fragments built from the options; the daemon
//! checks the whole policy and names what is wrong.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use gpukill_proto::v1::guard_update_request::Change;
use gpukill_proto::v1::{
    GuardEntry, GuardEntryKey, GuardEntryKind, GuardPolicyRequest, GuardUpdateRequest,
};

use crate::Output;
use crate::cli::{GpuRulesArgs, GroupLimitsArgs, GuardPolicyCommand, UserLimitsArgs};
use crate::conn;
use crate::error::Error;

/// Sends `change` and prints what the daemon changed.
pub async fn update<W: Write, E: Write>(
    target: &conn::Target,
    change: Change,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .guard_update(conn::unary(GuardUpdateRequest {
            change: Some(change),
        }))
        .await
        .map_err(|status| Error::rpc("GuardUpdate", status))?
        .into_inner();
    out.write(&format!("{}\n", response.summary))
}

/// Prints the policy file: as it is (`export`), or with its path (`policy show`).
pub async fn show<W: Write, E: Write>(
    target: &conn::Target,
    raw: bool,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .guard_policy(conn::unary(GuardPolicyRequest {}))
        .await
        .map_err(|status| Error::rpc("GuardPolicy", status))?
        .into_inner();
    if raw {
        // Exported into a file, the policy must be byte for byte what `guard import` takes
        // back (a tab, a CRLF line end); on a terminal it is escaped like everything else.
        return if out.is_tty {
            out.write(&response.text)
        } else {
            out.write_exact(&response.text)
        };
    }
    if response.text.is_empty() {
        return out.write(&format!(
            "# no policy file at {}: the guard is off\n",
            response.path
        ));
    }
    out.write(&format!("# {}\n{}", response.path, response.text))
}

/// Runs `gpukillctl guard policy ...`.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    command: &GuardPolicyCommand,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let add = |kind: GuardEntryKind, toml: String| {
        Change::Add(GuardEntry {
            kind: kind.into(),
            toml,
        })
    };
    let remove = |kind: GuardEntryKind, key: String| {
        Change::Remove(GuardEntryKey {
            kind: kind.into(),
            key,
        })
    };
    let change = match command {
        GuardPolicyCommand::Show => return show(target, false, out).await,
        GuardPolicyCommand::AddUser(args) => add(GuardEntryKind::User, user_entry(args)),
        GuardPolicyCommand::RemoveUser { name } => remove(GuardEntryKind::User, name.clone()),
        GuardPolicyCommand::AddGroup(args) => add(GuardEntryKind::Group, group_entry(args)),
        GuardPolicyCommand::RemoveGroup { name } => remove(GuardEntryKind::Group, name.clone()),
        GuardPolicyCommand::AddGpu(args) => add(GuardEntryKind::Gpu, gpu_entry(args)),
        GuardPolicyCommand::RemoveGpu { index } => remove(GuardEntryKind::Gpu, index.to_string()),
    };
    update(target, change, out).await
}

/// `guard import FILE`: the file's text, read with the caller's permissions.
pub fn read_policy(path: &Path) -> Result<String, Error> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_string(&mut text))
    };
    read.map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text)
}

/// TOML lines of one entry.
#[derive(Default)]
struct Entry(String);

impl Entry {
    fn string(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.0.push_str(&format!("{key} = {}\n", quoted(value)));
        }
        self
    }

    fn number(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        if let Some(value) = value {
            self.0.push_str(&format!("{key} = {}\n", value.to_string()));
        }
        self
    }

    fn duration(&mut self, key: &str, value: Option<Duration>) -> &mut Self {
        let text = value.map(|d| humantime::format_duration(d).to_string());
        self.string(key, text.as_deref())
    }

    fn strings(&mut self, key: &str, values: Option<&[String]>) -> &mut Self {
        if let Some(values) = values {
            let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
            self.0
                .push_str(&format!("{key} = [{}]\n", items.join(", ")));
        }
        self
    }

    fn numbers(&mut self, key: &str, values: Option<&[u32]>) -> &mut Self {
        if let Some(values) = values {
            let items: Vec<String> = values.iter().map(u32::to_string).collect();
            self.0
                .push_str(&format!("{key} = [{}]\n", items.join(", ")));
        }
        self
    }
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn user_entry(args: &UserLimitsArgs) -> String {
    let mut entry = Entry::default();
    entry
        .string("name", Some(&args.name))
        .string(
            "max_memory_per_process",
            args.max_memory_per_process.as_deref(),
        )
        .string("max_memory_total", args.max_memory_total.as_deref())
        .number("max_utilization_pct", args.max_utilization_pct)
        .duration("utilization_window", args.utilization_window)
        .duration("max_duration", args.max_duration)
        .number("max_processes", args.max_processes)
        .numbers("allowed_gpus", args.allowed_gpus.as_deref())
        .numbers("blocked_gpus", args.blocked_gpus.as_deref());
    entry.0
}

fn group_entry(args: &GroupLimitsArgs) -> String {
    let mut entry = Entry::default();
    entry
        .string("name", Some(&args.name))
        .string("unix_group", args.unix_group.as_deref())
        .strings(
            "members",
            (!args.members.is_empty()).then_some(&args.members[..]),
        )
        .string("max_memory_total", args.max_memory_total.as_deref())
        .number("max_utilization_pct", args.max_utilization_pct)
        .number("max_processes", args.max_processes);
    entry.0
}

fn gpu_entry(args: &GpuRulesArgs) -> String {
    let mut entry = Entry::default();
    entry
        .number("index", Some(args.index))
        .strings("allowed_users", args.allowed_users.as_deref())
        .strings(
            "blocked_users",
            (!args.blocked_users.is_empty()).then_some(&args.blocked_users[..]),
        )
        .string(
            "max_memory_per_process",
            args.max_memory_per_process.as_deref(),
        )
        .string("reserved_memory", args.reserved_memory.as_deref());
    entry.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::{GuardPolicyResponse, GuardUpdateResponse};
    use tonic::Status;

    fn daemon() -> FakeDaemon {
        FakeDaemon {
            guard_update: Some(Ok(GuardUpdateResponse {
                summary: "added [[user]] alice".into(),
            })),
            guard_policy: Some(Ok(GuardPolicyResponse {
                path: "/etc/gpukill/guard.toml".into(),
                text: "mode = \"hard\"\n".into(),
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn add_user_sends_its_limits_as_toml() {
        let daemon = daemon();
        let requests = daemon.guard_update_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &[
                "guard",
                "policy",
                "add-user",
                "al\"ice",
                "--max-memory-per-process",
                "20GiB",
                "--max-duration",
                "1day",
                "--max-processes",
                "2",
                "--allowed-gpus",
                "0,1",
            ],
        )
        .await;
        result.expect("add-user");
        assert_eq!(text, "added [[user]] alice\n");
        let sent = requests.lock().expect("lock")[0].change.clone();
        assert_eq!(
            sent,
            Some(Change::Add(GuardEntry {
                kind: GuardEntryKind::User.into(),
                toml: "name = \"al\\\"ice\"\nmax_memory_per_process = \"20GiB\"\n\
                       max_duration = \"1day\"\nmax_processes = 2\nallowed_gpus = [0, 1]\n"
                    .into(),
            }))
        );
    }

    #[tokio::test]
    async fn mode_enable_remove_and_import_send_their_change() {
        let daemon = daemon();
        let requests = daemon.guard_update_requests.clone();
        let served = serve(daemon);
        let mut policy = tempfile::NamedTempFile::new().expect("temp");
        writeln!(policy, "mode = \"soft\"").expect("write");
        let path = policy.path().to_str().expect("utf-8").to_owned();
        for argv in [
            &["guard", "mode", "dry-run"][..],
            &["guard", "disable"],
            &["guard", "policy", "remove-gpu", "3"],
            &["guard", "import", &path],
        ] {
            let (result, _, _) = run_cli(&served.socket, argv).await;
            result.expect("change");
        }
        let sent: Vec<Option<Change>> = requests
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.change.clone())
            .collect();
        assert_eq!(
            sent,
            [
                Some(Change::Mode(gpukill_proto::v1::GuardMode::DryRun.into())),
                Some(Change::Enabled(false)),
                Some(Change::Remove(GuardEntryKey {
                    kind: GuardEntryKind::Gpu.into(),
                    key: "3".into()
                })),
                Some(Change::Replace("mode = \"soft\"\n".into())),
            ]
        );
    }

    #[tokio::test]
    async fn show_and_export_print_the_file_and_refusals_map_to_exit_codes() {
        let served = serve(daemon());
        let (result, text, _) = run_cli(&served.socket, &["guard", "export"]).await;
        result.expect("export");
        assert_eq!(text, "mode = \"hard\"\n");
        let (result, text, _) = run_cli(&served.socket, &["guard", "policy", "show"]).await;
        result.expect("show");
        assert_eq!(text, "# /etc/gpukill/guard.toml\nmode = \"hard\"\n");

        let served = serve(FakeDaemon {
            guard_update: Some(Err(Status::invalid_argument(
                "the changed policy is invalid, nothing was written: line 4: invalid size",
            ))),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["guard", "enable"]).await;
        assert_eq!(result.expect_err("invalid").exit_code(), 3);
    }
}
