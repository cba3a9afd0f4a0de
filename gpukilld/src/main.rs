//! gpukilld: parse arguments, set up logging (the journal under systemd), run the daemon
//! until SIGTERM or SIGINT; SIGHUP checks the configuration again and reloads the guard
//! policy. On Windows (which gpukilld does not build for yet: packaging/windows/README.md)
//! it runs under the Service Control Manager, or in a console until Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gpukill_proto::exit_code;
use gpukilld::cli::Args;
use gpukilld::config::Config;

/// What asks the daemon to stop besides signals: on Windows, the Service Control Manager.
#[cfg(unix)]
type ServiceStop = ();
#[cfg(windows)]
type ServiceStop = Option<tokio::sync::watch::Receiver<bool>>;

/// SIGTERM, SIGINT and SIGHUP.
#[cfg(unix)]
mod signals {
    use tokio::signal::unix::{SignalKind, signal};

    /// Installs the SIGHUP handler now (so a SIGHUP during startup is not fatal) and
    /// returns the stream of them.
    pub fn reload() -> std::io::Result<impl tokio_stream::Stream<Item = ()> + Send + Unpin + 'static>
    {
        Ok(tokio_stream::wrappers::SignalStream::new(signal(
            SignalKind::hangup(),
        )?))
    }

    /// Installs the SIGTERM and SIGINT handlers now (so a signal during startup is not
    /// fatal) and returns the future that completes on the first of them.
    pub fn shutdown(_: super::ServiceStop) -> std::io::Result<impl Future<Output = ()>> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
}

/// Ctrl-C and the Service Control Manager's stop; Windows has no SIGHUP.
#[cfg(windows)]
mod signals {
    /// Reloads never come.
    pub fn reload() -> std::io::Result<impl tokio_stream::Stream<Item = ()> + Send + Unpin + 'static>
    {
        Ok(tokio_stream::pending())
    }

    /// Completes on Ctrl-C or when the service is stopped.
    pub fn shutdown(service: super::ServiceStop) -> std::io::Result<impl Future<Output = ()>> {
        let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
        Ok(async move {
            let stopped = async {
                match service {
                    Some(mut stop) => {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ctrl_c.recv() => tracing::info!("Ctrl-C received"),
                () = stopped => tracing::info!("stop requested by the Service Control Manager"),
            }
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Rendered from the command line alone: no configuration is read.
    if let Some(shell) = args.completions {
        return print_exact(&gpukilld::cli::completion(shell));
    }
    if let Some(dir) = &args.man {
        return man(dir.as_deref());
    }
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
    #[cfg(unix)]
    let code = serve(config, environment, args, ());
    #[cfg(windows)]
    let code = {
        let daemon: gpukill_winservice::Daemon =
            Box::new(move |stop| serve(config, environment, args, Some(stop)));
        match gpukill_winservice::run(daemon) {
            Ok(()) => 0,
            Err(gpukill_winservice::Error::NotAService(daemon)) => {
                // A console: run in the foreground until Ctrl-C (the sender stays alive).
                let (_never, stop) = tokio::sync::watch::channel(false);
                daemon(stop)
            }
            Err(error) => {
                eprintln!("gpukilld: error: {error}");
                exit_code::ERROR as u8
            }
        }
    };
    ExitCode::from(code)
}

/// Writes `bytes` to standard output as they are.
fn print_exact(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpukilld: cannot write output: {error}");
            ExitCode::from(exit_code::ERROR as u8)
        }
    }
}

/// `--man`: gpukilld(8) on standard output, or written into `dir` (its path printed).
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    let page = match gpukilld::cli::man_page() {
        Ok(page) => page,
        Err(error) => {
            eprintln!("gpukilld: cannot render the man page: {error}");
            return ExitCode::from(exit_code::ERROR as u8);
        }
    };
    let Some(dir) = dir else {
        return print_exact(&page.text);
    };
    match gpukill_manual::write_pages(dir, &[page]) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gpukilld: cannot write {}: {error}", dir.display());
            ExitCode::from(exit_code::ERROR as u8)
        }
    }
}

/// The daemon holds a pidfd per GPU process; lift the soft file limit to the hard one (as
/// systemd's default 1024 soft limit is low for a node with hundreds of GPU processes).
#[cfg(unix)]
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "cannot raise the open file limit");
    }
}

/// Runs the daemon until it is told to stop; the process exit code.
fn serve(
    config: Config,
    environment: gpukilld::Environment,
    args: Args,
    service: ServiceStop,
) -> u8 {
    match run_daemon(config, environment, args, service) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("gpukilld: error: {error:#}");
            let code = error
                .downcast_ref::<gpukilld::Error>()
                .map_or(exit_code::ERROR, gpukilld::Error::exit_code);
            u8::try_from(code).unwrap_or(1)
        }
    }
}

fn run_daemon(
    config: Config,
    environment: gpukilld::Environment,
    args: Args,
    service: ServiceStop,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("gpukilld-rt")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = signals::shutdown(service).context("cannot install the signal handlers")?;
        let reload = signals::reload().context("cannot install the SIGHUP handler")?;
        let load_config: gpukilld::LoadConfig = Arc::new(move || Config::load(args.sources()));
        gpukilld::run(config, environment, shutdown, reload, load_config).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}
