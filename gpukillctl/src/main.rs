//! The `gpukillctl` binary: parse the command line, run the command, print the error chain
//! and exit with the documented code (`run`: its command's status).

use std::process::ExitCode;

use clap::Parser;
use gpukillctl::error::{Error, clap_exit_code, format_chain};
use gpukillctl::{Cli, Output};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout, usage errors to stderr; clap knows which.
            let _ = err.print();
            return exit(clap_exit_code(&err));
        }
    };
    let mut out = Output::stdout();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|runtime| runtime.block_on(gpukillctl::run(cli, &mut out)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if !err.is_quiet() {
                eprint!("{}", format_chain(&err));
            }
            exit(err.exit_code())
        }
    }
}

/// An exit status from one of the `gpukill_proto::exit_code` constants.
fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
