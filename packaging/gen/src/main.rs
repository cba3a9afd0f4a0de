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
use clap::Parser;
use gpukill_manual::Shell;

/// Renders gpukill's man pages and shell completions into a directory.
#[derive(Debug, Parser)]
#[command(name = "gpukill-gen", version, about)]
struct Args {
    /// Where to write `man/` and `completions/` (created if missing; both are replaced).
    out_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let written = generate(&args.out_dir)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes every page and completion script under `out_dir`; returns the files written.
/// The pages and scripts are those `gpukilld --man`, `gpukillctl man DIR` and their
/// `completions` print: the same renderer (gpukill-manual), the same sections.
fn generate(out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for owned in ["man", "completions"] {
        let dir = out_dir.join(owned);
        // A subcommand that was renamed or removed must not leave its old page behind.
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }

    let man8 = out_dir.join("man/man8");
    let daemon_page = gpukilld::cli::man_page().context("rendering gpukilld(8)")?;
    written.extend(
        gpukill_manual::write_pages(&man8, &[daemon_page])
            .with_context(|| format!("writing into {}", man8.display()))?,
    );
    let man1 = out_dir.join("man/man1");
    let client_pages = gpukillctl::cmd::man::pages().context("rendering gpukillctl(1)")?;
    written.extend(
        gpukill_manual::write_pages(&man1, &client_pages)
            .with_context(|| format!("writing into {}", man1.display()))?,
    );

    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let dir = out_dir.join("completions").join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, script) in [
            ("gpukilld", gpukilld::cli::completion(shell)),
            ("gpukillctl", gpukillctl::cmd::completions::script(shell)),
        ] {
            let path = dir.join(gpukill_manual::completion_file_name(shell, name));
            fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
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
