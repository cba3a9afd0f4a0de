//! `gpukillctl completions SHELL`: the shell completion script, rendered from this very
//! command line (no daemon is asked).

use std::io::Write;

use clap::CommandFactory;

use crate::Output;
use crate::cli::{Cli, CompletionsArgs};
use crate::error::Error;

/// The completion script of gpukillctl for `shell`.
pub fn script(shell: gpukill_manual::Shell) -> Vec<u8> {
    gpukill_manual::completion(shell, &Cli::command(), "gpukillctl")
}

/// Prints the script `args` asks for, exactly as rendered.
pub fn run<W: Write, E: Write>(
    args: &CompletionsArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let script = String::from_utf8_lossy(&script(args.shell)).into_owned();
    out.write_exact(&script)
}

#[cfg(test)]
mod tests {
    use crate::testutil::run_argv;

    #[tokio::test]
    async fn every_shell_gets_a_script_that_names_the_subcommands() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let (result, text, _) = run_argv(&["completions", shell]).await;
            result.expect(shell);
            assert!(text.contains("gpukillctl"), "{shell}: {text}");
            assert!(text.contains("reserve"), "{shell}: {text}");
        }
        let (_, bash, _) = run_argv(&["completions", "bash"]).await;
        assert!(bash.contains("complete -F _gpukillctl"), "{bash}");
    }

    #[tokio::test]
    async fn no_daemon_and_no_usable_credentials_are_needed() {
        let (result, text, _) = run_argv(&[
            "--socket",
            "/nonexistent/gpukilld.sock",
            "--token-file",
            "/nonexistent/token",
            "completions",
            "zsh",
        ])
        .await;
        result.expect("completions");
        assert!(text.starts_with("#compdef gpukillctl"), "{text}");
    }
}
