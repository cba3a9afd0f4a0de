//! gpukill-gen: renders the man pages and shell completions of `gpukilld` and `gpukillctl`
//! from their real clap definitions (`gpukilld::cli::Args`, `gpukillctl::Cli`), for the
//! packages that `packaging/build-packages` builds.
//!
//! `gpukill-gen OUT_DIR` writes, replacing what an earlier run left there:
//!
//! - `OUT_DIR/man/man8/gpukilld.8`
//! - `OUT_DIR/man/man1/gpukillctl.1` and one page per subcommand, `gpukillctl-list.1`,
//!   `gpukillctl-guard-policy-add-user.1`, ...
//! - `OUT_DIR/completions/bash/{gpukilld,gpukillctl}`,
//!   `OUT_DIR/completions/zsh/_{gpukilld,gpukillctl}`,
//!   `OUT_DIR/completions/fish/{gpukilld,gpukillctl}.fish`: named as the shells look them
//!   up, so each directory is installed as it is.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::Man;

/// Renders gpukill's man pages and shell completions into a directory.
#[derive(Debug, Parser)]
#[command(name = "gpukill-gen", version, about)]
struct Args {
    /// Where to write `man/` and `completions/` (created if missing; both are replaced).
    out_dir: PathBuf,
}

/// The manual every page belongs to (the centered header of each page).
const MANUAL: &str = "gpukill manual";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let written = generate(&args.out_dir)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes every page and completion script under `out_dir`; returns the files written.
fn generate(out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for owned in ["man", "completions"] {
        let dir = out_dir.join(owned);
        // A subcommand that was renamed or removed must not leave its old page behind.
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }

    let daemon = gpukilld::cli::Args::command();
    let client = gpukillctl::Cli::command();

    let man8 = out_dir.join("man/man8");
    create_dir(&man8)?;
    let page = Man::new(daemon.clone()).section("8").manual(MANUAL);
    written.push(write_file(
        &man8.join(page.get_filename()),
        &render(&page, &daemon_sections())?,
    )?);

    let man1 = out_dir.join("man/man1");
    create_dir(&man1)?;
    // `build` names each subcommand `gpukillctl-list`, `gpukillctl-guard-policy`, ...:
    // those names become the pages' titles and file names.
    let mut client_built = client.clone().disable_help_subcommand(true);
    client_built.build();
    let page = Man::new(client_built.clone()).manual(MANUAL);
    written.push(write_file(
        &man1.join(page.get_filename()),
        &render(&page, &client_sections())?,
    )?);
    for sub in subcommands(&client_built) {
        let page = Man::new(sub).manual(MANUAL);
        let see_also = vec![("SEE ALSO", "\\fBgpukillctl\\fR(1)".to_owned())];
        written.push(write_file(
            &man1.join(page.get_filename()),
            &render(&page, &see_also)?,
        )?);
    }

    for (shell, dir, file_name) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let dir = out_dir.join("completions").join(dir);
        create_dir(&dir)?;
        for (name, command) in [("gpukilld", &daemon), ("gpukillctl", &client)] {
            let mut command = command.clone();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, name, &mut script);
            let path = dir.join(file_name.replace("{}", name));
            written.push(write_file(&path, &script)?);
        }
    }
    Ok(written)
}

/// Every visible subcommand of `command`, depth first (after `build`, so named
/// `parent-child`).
fn subcommands(command: &clap::Command) -> Vec<clap::Command> {
    let mut all = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.push(sub.clone());
        all.extend(subcommands(sub));
    }
    all
}

/// A page: clap_mangen's, with `extra` sections (title, roff body) before its VERSION
/// section (or at the end when it has none).
fn render(page: &Man, extra: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut rendered = Vec::new();
    page.render(&mut rendered)?;
    let rendered = String::from_utf8(rendered).context("clap_mangen wrote invalid UTF-8")?;
    let mut sections = String::new();
    for (title, body) in extra {
        sections.push_str(&format!(".SH \"{title}\"\n{body}"));
        if !body.ends_with('\n') {
            sections.push('\n');
        }
    }
    let at = rendered
        .find("\n.SH VERSION\n")
        .map_or(rendered.len(), |at| at + 1);
    let mut out = rendered;
    out.insert_str(at, &sections);
    Ok(out.into_bytes())
}

/// A roff paragraph that starts with a bold tag (a path, a variable) and explains it.
fn tagged(tag: &str, text: &str) -> String {
    format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text))
}

/// Plain text for roff: backslashes doubled, hyphens as the minus sign that can be typed
/// and searched for (`\-`).
fn roff(text: &str) -> String {
    text.replace('\\', "\\\\").replace('-', "\\-")
}

/// gpukilld(8): its environment, files and relatives, which clap does not know.
fn daemon_sections() -> Vec<(&'static str, String)> {
    let environment = [
        tagged(
            gpukill_proto::SOCKET_ENV,
            "The Unix socket to serve on (the socket key).",
        ),
        tagged(
            "GPUKILL_NVML_LIBRARY",
            "The NVML library to load (the library key of [nvidia]).",
        ),
        tagged(
            "GPUKILL_<KEY>, GPUKILL_<SECTION>_<KEY>",
            "Any configuration key; the command line wins over the environment, the \
             environment over the file.",
        ),
        tagged(
            "GPUKILL_LOG",
            "Log filter, e.g. debug or gpukilld=trace. Under systemd the log goes to the \
             journal.",
        ),
    ]
    .concat();
    let files = [
        tagged(
            gpukilld::config::DEFAULT_CONFIG_FILE,
            "The configuration (every key optional; the packaged file lists the defaults). \
             gpukilld --print-config shows the effective values.",
        ),
        tagged(
            "/etc/gpukill/guard.toml",
            "The guard's policy (the guard_policy key). The guard is off while it does not exist; \
             an example is in /usr/share/doc/gpukill/examples/guard.toml.",
        ),
        tagged(
            gpukill_proto::SYSTEM_SOCKET,
            "The socket of the system daemon.",
        ),
        tagged(
            "/var/lib/gpukill/gpukill.db",
            "The store (in state_dir): history, process sessions and the audit trail.",
        ),
    ]
    .concat();
    vec![
        ("ENVIRONMENT", environment),
        ("FILES", files),
        (
            "SEE ALSO",
            "\\fBgpukillctl\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)".to_owned(),
        ),
    ]
}

/// gpukillctl(1): where it finds the daemon (its SUBCOMMANDS section names the other pages).
fn client_sections() -> Vec<(&'static str, String)> {
    let files = [
        tagged(
            "$XDG_RUNTIME_DIR/gpukill/gpukilld.sock",
            "The socket of a per-user daemon, used when it exists.",
        ),
        tagged(
            gpukill_proto::SYSTEM_SOCKET,
            "The socket of the system daemon (gpukilld.service), used otherwise.",
        ),
    ]
    .concat();
    vec![
        (
            "ENVIRONMENT",
            tagged(
                gpukill_proto::SOCKET_ENV,
                "The daemon's socket, when --socket is not given.",
            ),
        ),
        ("FILES", files),
        ("SEE ALSO", "\\fBgpukilld\\fR(8)".to_owned()),
    ]
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<PathBuf> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn writes_a_page_per_command_and_completions_for_both_binaries() {
        let dir = tempfile::tempdir().unwrap();
        // A leftover of an earlier run is removed.
        fs::create_dir_all(dir.path().join("man/man1")).unwrap();
        fs::write(dir.path().join("man/man1/gpukillctl-gone.1"), "").unwrap();

        generate(dir.path()).unwrap();

        let daemon = fs::read_to_string(dir.path().join("man/man8/gpukilld.8")).unwrap();
        assert!(daemon.starts_with(".ie \\n(.g .ds Aq"), "{daemon}");
        assert!(daemon.contains(".TH gpukilld 8"), "{daemon}");
        assert!(daemon.contains("\\-\\-check\\-config"), "{daemon}");
        assert!(daemon.contains(".SH \"FILES\""), "{daemon}");
        assert!(daemon.contains("/etc/gpukill/gpukilld.toml"), "{daemon}");

        let client = fs::read_to_string(dir.path().join("man/man1/gpukillctl.1")).unwrap();
        assert!(client.contains(".TH gpukillctl 1"), "{client}");
        assert!(client.contains("\ngpukillctl\\-list(1)\n"), "{client}");
        assert!(
            client.contains(".SH \"SEE ALSO\"\n\\fBgpukilld\\fR(8)"),
            "{client}"
        );
        for page in [
            "gpukillctl-list.1",
            "gpukillctl-kill.1",
            "gpukillctl-guard-policy.1",
        ] {
            assert!(dir.path().join("man/man1").join(page).exists(), "{page}");
        }
        assert!(!dir.path().join("man/man1/gpukillctl-gone.1").exists());
        assert!(!dir.path().join("man/man1/gpukillctl-help.1").exists());

        for file in [
            "bash/gpukilld",
            "bash/gpukillctl",
            "zsh/_gpukilld",
            "zsh/_gpukillctl",
            "fish/gpukilld.fish",
            "fish/gpukillctl.fish",
        ] {
            let script = fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(script.contains("gpukill"), "{file}: {script}");
        }
        let bash = fs::read_to_string(dir.path().join("completions/bash/gpukillctl")).unwrap();
        assert!(bash.contains("complete -F _gpukillctl"), "{bash}");
    }
}
