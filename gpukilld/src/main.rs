//! gpukilld: parse arguments, set up logging (the journal under systemd), run the daemon
//! until SIGTERM or SIGINT; SIGHUP checks the configuration again and reloads the guard
//! policy.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gpukill_proto::exit_code;
use gpukilld::cli::Args;
use gpukilld::config::Config;

/// Installs the SIGHUP handler now (so a SIGHUP during startup is not fatal) and returns
/// the stream of them.
fn reload_signal() -> std::io::Result<impl tokio_stream::Stream<Item = ()> + Send + Unpin + 'static>
{
    use tokio::signal::unix::{SignalKind, signal};
    Ok(tokio_stream::wrappers::SignalStream::new(signal(
        SignalKind::hangup(),
    )?))
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal during startup is not fatal)
/// and returns the future that completes on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let environment = gpukilld::Environment::current();
    let config = match Config::load(args.sources()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gpukilld: invalid configuration: {error}");
            return ExitCode::from(exit_code::INVALID_ARGUMENT as u8);
        }
    };
    if args.print_config {
        print!(
            "{}",
            config
                .effective(environment.euid, environment.xdg_runtime_dir.as_deref())
                .to_toml()
        );
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    gpukilld::service::logging::init();
    match serve(config, environment, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpukilld: error: {error:#}");
            ExitCode::from(exit_code::ERROR as u8)
        }
    }
}

/// The daemon holds a pidfd per GPU process; lift the soft file limit to the hard one (as
/// systemd's default 1024 soft limit is low for a node with hundreds of GPU processes).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "cannot raise the open file limit");
    }
}

fn serve(config: Config, environment: gpukilld::Environment, args: Args) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("gpukilld-rt")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install the signal handlers")?;
        let reload = reload_signal().context("cannot install the SIGHUP handler")?;
        let load_config: gpukilld::LoadConfig = Arc::new(move || Config::load(args.sources()));
        gpukilld::run(config, environment, shutdown, reload, load_config).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}
