//! Running gpukillctl in process, as `main` would, with its output captured.

use std::path::Path;

/// Runs `gpukillctl --socket SOCKET ARGS...` in process; returns the result, standard
/// output and the notes written to standard error.
pub async fn run_cli(socket: &Path, args: &[&str]) -> (Result<(), crate::Error>, String, String) {
    let socket = socket.to_str().expect("UTF-8 path");
    let argv: Vec<&str> = ["--socket", socket]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run_argv(&argv).await
}

/// Runs `gpukillctl ARGS...` in process; returns the result, standard output and the notes
/// written to standard error.
pub async fn run_argv(args: &[&str]) -> (Result<(), crate::Error>, String, String) {
    use clap::Parser;
    let argv = std::iter::once("gpukillctl").chain(args.iter().copied());
    let cli = crate::Cli::try_parse_from(argv).expect("valid arguments");
    let mut out = crate::Output {
        writer: Vec::new(),
        notes: Vec::new(),
        is_tty: false,
        width: None,
        keys: false,
        tz: crate::TimeZone::Utc,
    };
    let result = crate::run(cli, &mut out).await;
    (
        result,
        String::from_utf8(out.writer).expect("UTF-8 output"),
        String::from_utf8(out.notes).expect("UTF-8 notes"),
    )
}
