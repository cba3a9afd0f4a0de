//! gpukilld: the per-node GPU daemon. Everything lives in this library; `main.rs` only
//! parses arguments, sets up logging and calls [`run`]. Tests call the same `run`.
//!
//! Data moves one way: vendor backends -> sampler -> snapshot -> ring -> readers (RPC).

pub mod actions;
pub mod authz;
pub mod backends;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod errors;
pub mod guard;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod procinfo;
pub mod recorder;
pub mod reservations;
pub mod ring;
pub mod rpc;
pub mod sampler;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod units;
pub mod upload;
pub mod usage_payload;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use backends::Backend;
use config::Config;
use ring::Ring;
use sampler::{Sampler, Timing};
use service::tasks::OnPanic;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The Unix socket could not be set up.
    #[error(transparent)]
    Socket(#[from] rpc::unix::SocketError),
    /// /proc could not be read.
    #[error("cannot read /proc")]
    Procfs(#[source] std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The metrics endpoint could not listen on its address.
    #[error("cannot listen for metrics on {address} ([metrics] listen)")]
    Metrics {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket systemd passed cannot be used.
    #[error("cannot use the socket passed by the service manager")]
    Activation(#[source] std::io::Error),
    /// The TCP listener cannot start (its certificates, its token file, its address).
    #[error(transparent)]
    Tcp(#[from] rpc::tcp::TcpError),
    /// The cluster credentials or a node address cannot be used.
    #[error(transparent)]
    Cluster(#[from] cluster::client::ClientError),
    /// The upload credentials cannot be used.
    #[error(transparent)]
    Upload(#[from] upload::client::ClientError),
    /// The ingest endpoint cannot start.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// A background task panicked and could not be restarted (systemd starts the daemon
    /// again).
    #[error(transparent)]
    Task(#[from] service::tasks::TaskFailed),
}

impl Error {
    /// The process exit code for this error: 3 when the configuration (or a file it names:
    /// a certificate, a key, a token file) is at fault, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        use gpukill_proto::exit_code::{ERROR, INVALID_ARGUMENT};
        match self {
            Error::Config(_) | Error::Cluster(_) | Error::Upload(_) => INVALID_ARGUMENT,
            Error::Tcp(rpc::tcp::TcpError::Bind { .. })
            | Error::Ingest(ingest::IngestError::Bind { .. } | ingest::IngestError::Store(_)) => {
                ERROR
            }
            Error::Ingest(_) => INVALID_ARGUMENT,
            Error::Tcp(_) => INVALID_ARGUMENT,
            Error::Socket(_)
            | Error::Procfs(_)
            | Error::Thread(_)
            | Error::Serve(_)
            | Error::Metrics { .. }
            | Error::Activation(_)
            | Error::Task(_) => ERROR,
        }
    }
}

/// How long stopping waits for the store to write what is queued.
const STORE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Environment facts the daemon's defaults depend on.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Effective uid of the daemon.
    pub euid: u32,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl Environment {
    /// Reads the environment of this process.
    pub fn current() -> Self {
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        }
    }
}

fn host_name() -> Arc<str> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from("localhost"))
}

/// Where a coordinator reaches this node: `[cluster] advertise`, else the TCP listener's
/// port on this host's name (`https://`), or its loopback address on an insecure loopback
/// listener (`http://`). `None` without a TCP listener.
fn advertised_address(config: &Config, tcp: Option<&rpc::tcp::TcpListenerSetup>) -> Option<String> {
    if let Some(address) = &config.cluster.advertise {
        return Some(address.clone());
    }
    let bound = tcp?.local_addr().ok()?;
    Some(if config.tcp.tls() {
        format!("https://{}:{}", host_name(), bound.port())
    } else {
        format!("http://{bound}")
    })
}

/// This node's id (kept in the state directory) and name. Without a writable state
/// directory the id lives only as long as the process, and says so.
fn node_identity(config: &Config) -> node::NodeIdentity {
    let id = node::load_or_create_id(&config.state_dir).unwrap_or_else(|error| {
        let id = node::random_id().unwrap_or_else(|_| format!("{:032x}", std::process::id()));
        tracing::error!(
            error = %errors::chain(&error),
            id,
            "no stable node id: a coordinator will see a new node after each restart"
        );
        id
    });
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| host_name().to_string());
    node::NodeIdentity {
        id,
        name,
        role: config.cluster.role,
    }
}

/// A fresh load of the configuration (from the same file, environment and options), for a
/// reload.
pub type LoadConfig = Arc<dyn Fn() -> Result<Config, config::ConfigError> + Send + Sync>;

/// The vendor backends `config` enables: NVML for NVIDIA, and one backend for AMD and Intel
/// (they share the walk of /proc that finds their processes).
fn backends(config: &Config) -> Vec<Box<dyn Backend>> {
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    if config.nvidia.enabled {
        let library = config
            .nvidia
            .library
            .clone()
            .map(PathBuf::into_os_string)
            .unwrap_or_else(|| config::DEFAULT_NVML_LIBRARY.into());
        backends.push(Box::new(backends::nvidia::NvidiaBackend::new(library)));
    }
    let drm_roots: Vec<backends::drm::backend::VendorRoot> = [
        (
            config.amd.enabled,
            snapshot::Vendor::Amd,
            &config.amd.sysfs_root,
        ),
        (
            config.intel.enabled,
            snapshot::Vendor::Intel,
            &config.intel.sysfs_root,
        ),
    ]
    .into_iter()
    .filter(|(enabled, _, _)| *enabled)
    .map(|(_, vendor, root)| backends::drm::backend::VendorRoot {
        vendor,
        sysfs_root: root.clone(),
    })
    .collect();
    if !drm_roots.is_empty() {
        let name_files = backends::drm::backend::NameFiles {
            amdgpu_ids: Some(config.amd.ids_file.clone()),
            pci_ids: config.pci_ids.clone(),
        };
        backends.push(Box::new(backends::drm::backend::DrmBackend::new(
            drm_roots,
            name_files,
            &config.procfs_root,
        )));
    }
    backends
}

/// A gRPC server with `limits`: rpcs in flight per connection, and HTTP/2 keep-alive pings
/// often enough that a live client is never closed as idle while a dead one is.
fn grpc_server(limits: &config::LimitsConfig) -> tonic::transport::Server {
    let interval = limits.keepalive_interval();
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.streams_per_connection)
        .http2_keepalive_interval(Some(interval))
        .http2_keepalive_timeout(Some(interval))
        .http2_max_pending_accept_reset_streams(Some(limits.streams_per_connection as usize))
}

/// The largest request message the gRPC services decode (`[limits] max_request_size`).
fn request_limit(config: &Config) -> usize {
    usize::try_from(config.limits.max_request_size).unwrap_or(usize::MAX)
}

/// Runs the daemon until `shutdown` completes: bind the socket (or take the one systemd
/// passed), take the first sample, tell systemd it is ready, serve; then stop the sampler,
/// write what the store has queued and remove the socket. Each item of `reload` (SIGHUP)
/// checks the configuration again with `load_config` (a bad one is rejected and the running
/// one stays) and reloads the guard policy.
pub async fn run(
    config: Config,
    environment: Environment,
    shutdown: impl Future<Output = ()> + Send,
    reload: impl tokio_stream::Stream<Item = ()> + Send + Unpin + 'static,
    load_config: LoadConfig,
) -> Result<(), Error> {
    let socket_path = config.socket_path(environment.euid, environment.xdg_runtime_dir.as_deref());
    // Every background task runs under it; one that fails for good stops the daemon as a
    // signal would, and `run` then returns its error.
    let tasks = service::tasks::Tasks::default();
    let shutdown = tasks.or_failure(shutdown);
    // Connection caps, not the descriptor limit, are what a flood of connections meets.
    let nofile = match connections::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open file limit (RLIMIT_NOFILE)");
            1024
        }
    };
    let max_connections = config.limits.connections_for(nofile);
    if max_connections < config.limits.max_connections {
        tracing::warn!(
            nofile,
            max_connections,
            "the open file limit holds fewer connections than [limits] max_connections ({}); raise LimitNOFILE=",
            config.limits.max_connections
        );
    }
    // Each listener's connection slots, made here so the metrics endpoint reports them.
    let unix_admission = connections::Admission::new(
        "the Unix socket",
        connections::Limits {
            per_caller: config.limits.connections_per_uid,
            per_caller_setting: "[limits] connections_per_uid",
            total: max_connections,
            total_setting: "[limits] max_connections",
        },
    );
    let tcp_admission = connections::Admission::new(
        "the TCP listener",
        connections::Limits {
            per_caller: config.limits.connections_per_address,
            per_caller_setting: "[limits] connections_per_address",
            total: max_connections,
            total_setting: "[limits] max_connections",
        },
    );
    let backends = backends(&config);
    let proc_reader = procinfo::ProcReader::new("/proc").map_err(Error::Procfs)?;
    let timing = Timing {
        poll_interval: config.poll_interval,
        call_timeout: config.vendor_timeout,
    };
    let mut sampler =
        Sampler::new(host_name(), timing, backends, proc_reader).map_err(Error::Thread)?;

    // The node id lives in the state directory, and the outbox's payloads carry it.
    if let Err(error) = store::create_dir(&config.state_dir) {
        tracing::error!(error = %errors::chain(&error), "cannot create the state directory");
    }
    let node = Arc::new(node_identity(&config));
    let database = config.state_dir.join("gpukill.db");
    let events = match store::Database::start_with_history(
        database.clone(),
        store::HistoryOptions {
            persist_interval: config.persist_interval,
            retention: store::Retention::from(&config.retention),
            outbox: config.upload.enabled().then(|| store::OutboxOptions {
                node_id: node.id.clone(),
                node_name: node.name.clone(),
                max_hours: config.upload.max_outbox_hours,
            }),
            delivered_retention: config.upload.delivered_retention,
        },
    ) {
        Ok(log) => store::StoreHandle::from(log),
        Err(error) => {
            // Live service goes on; only actions, which must be audited, are refused.
            let message = errors::chain(&error);
            tracing::error!(store = %database.display(), "{message}; kill is disabled");
            store::StoreHandle::unavailable(message)
        }
    };
    let kill_context = Arc::new(rpc::kill::KillContext {
        protection: actions::protect::Protection::new(
            config.protected_users.clone(),
            &config.protected_processes,
        )
        .map_err(|error| {
            Error::Config(config::ConfigError::Parse {
                origin: "protected_processes".to_string(),
                message: error.to_string(),
            })
        })?,
        admin_group: config.admin_group.clone(),
        store: events,
        store_path: database.clone(),
        tasks: tasks.clone(),
    });

    let upload_client = upload::client::UploadClient::new(&config.upload)?;
    let ingest = match config.ingest.enabled {
        true => Some(
            ingest::Ingest::bind(
                &config.ingest,
                &config.state_dir,
                kill_context.store.database().cloned(),
            )
            .await?,
        ),
        false => None,
    };
    // Bound before the socket, so a taken port stops the start before anything is created.
    let tcp_listener = match config.tcp.listen_addr() {
        Some(address) => Some(
            rpc::tcp::TcpListenerSetup::bind(&config.tcp, address, kill_context.store.clone())
                .await?,
        ),
        None => None,
    };
    let metrics_listener = match config.metrics.listen_addr() {
        Some(address) => Some(
            metrics::bind(address)
                .await
                .map_err(|source| Error::Metrics { address, source })?,
        ),
        None => None,
    };
    // A socket systemd passed (socket activation) is systemd's: used as it is, not removed.
    let (listener, owns_socket) =
        match service::activation::inherited_listener().map_err(Error::Activation)? {
            Some(inherited) => {
                tracing::info!("serving on the socket passed by the service manager");
                let listener =
                    tokio::net::UnixListener::from_std(inherited).map_err(Error::Activation)?;
                (listener, false)
            }
            None => (rpc::unix::bind(&socket_path, config.socket_mode.0)?, true),
        };
    let first = sampler.tick().await;
    let ring = Arc::new(Ring::new(config.ring_capacity(), first));
    // Turned true when shutdown starts: the sampler and every Watch stream end on it, so
    // the server's graceful shutdown does not wait on watchers.
    let (stop, stopped) = watch::channel(false);
    // The sampler owns the vendor threads, which cannot be made again in place.
    let sampler_task = {
        let (mut sampler, ring, stopped) = (Some(sampler), Arc::clone(&ring), stopped.clone());
        tasks.spawn("sampler", OnPanic::StopDaemon, move || {
            let (sampler, ring, stopped) = (sampler.take(), Arc::clone(&ring), stopped.clone());
            async move {
                if let Some(sampler) = sampler {
                    sampler.run(ring, stopped).await;
                }
            }
        })
    };
    let reservations: crate::reservations::ReservationsHandle = match kill_context.store.get() {
        Ok(log) => crate::reservations::Reservations::load(
            config.reservations.clone(),
            Arc::clone(log),
            Arc::clone(&ring),
        )
        .await
        .map(Arc::new)
        .map_err(|error| {
            let message = errors::chain(&error);
            tracing::error!("cannot load the reservations: {message}; reservations are off");
            message
        }),
        Err(message) => Err(message),
    };
    if let Ok(held) = &reservations {
        let (held, stopped) = (Arc::clone(held), stopped.clone());
        // Its state lives in `Reservations`: a new timer loop picks it up.
        tasks.spawn("reservations", OnPanic::Restart, move || {
            crate::reservations::run_timers(Arc::clone(&held), stopped.clone())
        });
    }
    let guard = Arc::new(guard::engine::Guard::new(
        config.guard_policy.clone(),
        config.protected_users.clone(),
        config.protected_processes.clone(),
    ));
    let loading = Arc::clone(&guard);
    let _ = tokio::task::spawn_blocking(move || loading.load()).await;
    // Without the audit trail nothing is killed, so no guard either.
    // A restarted guard starts its violations' durations afresh: it kills later, not sooner.
    let guard_task = kill_context.store.database().map(|log| {
        let (guard, ring, log) = (Arc::clone(&guard), Arc::clone(&ring), Arc::clone(log));
        let (held, stopped) = (reservations.as_ref().ok().cloned(), stopped.clone());
        tasks.spawn("guard", OnPanic::Restart, move || {
            guard::engine::run(
                Arc::clone(&guard),
                Arc::clone(&ring),
                Arc::clone(&log),
                held.clone(),
                stopped.clone(),
            )
        })
    });
    let reloading = Arc::clone(&guard);
    let running = config.clone();
    // Shared so that a restarted loop reads the same SIGHUP stream.
    let reload = Arc::new(tokio::sync::Mutex::new(reload));
    tasks.spawn("reload", OnPanic::Restart, move || {
        let (reload, load_config) = (Arc::clone(&reload), Arc::clone(&load_config));
        let (reloading, running) = (Arc::clone(&reloading), running.clone());
        async move {
        use tokio_stream::StreamExt;
        let mut reload = reload.lock().await;
        while reload.next().await.is_some() {
            service::supervisor::reloading();
            let load = Arc::clone(&load_config);
            let status = match tokio::task::spawn_blocking(move || load()).await {
                Ok(Ok(new)) => {
                    let changed = running.changed_keys(&new);
                    if changed.is_empty() {
                        tracing::info!(
                            "SIGHUP: configuration unchanged; reloading the guard policy"
                        );
                    } else {
                        tracing::warn!(
                            changed = %changed.join(", "),
                            "SIGHUP: the configuration is valid; these settings take effect at the next restart"
                        );
                    }
                    reloading.request_reload();
                    "reloaded".to_owned()
                }
                Ok(Err(error)) => {
                    tracing::error!(
                        error = %errors::chain(&error),
                        "SIGHUP: the new configuration is invalid; the running one stays"
                    );
                    format!("reload rejected: {}", errors::chain(&error))
                }
                Err(_) => "reload failed".to_owned(),
            };
            service::supervisor::reloaded(&status);
        }
        }
    });
    if let Some(interval) = service::supervisor::watchdog_interval() {
        let (ring, stopped) = (Arc::clone(&ring), stopped.clone());
        tasks.spawn("watchdog", OnPanic::Restart, move || {
            service::supervisor::watchdog(Arc::clone(&ring), interval, stopped.clone())
        });
    }
    let kill_events = kill_context.store.clone();
    // A restarted recorder loses the open interval's samples, nothing written.
    let recorder_task = kill_context.store.database().map(|log| {
        let (ring, log, stopped) = (Arc::clone(&ring), Arc::clone(log), stopped.clone());
        let interval = config.persist_interval;
        tasks.spawn("recorder", OnPanic::Restart, move || {
            recorder::run(
                recorder::Recorder::new(interval),
                Arc::clone(&ring),
                Arc::clone(&log),
                stopped.clone(),
            )
        })
    });
    if let Some(listener) = metrics_listener {
        tracing::info!(
            address = %listener.local_addr(),
            "metrics endpoint serving /metrics, /healthz, /readyz"
        );
        let sources = metrics::Sources {
            ring: Arc::clone(&ring),
            store: kill_context.store.clone(),
            guard: Arc::clone(&guard),
            guard_counters: Some(guard.counters()),
            connections: [
                Some(("unix", unix_admission.counters())),
                tcp_listener
                    .as_ref()
                    .map(|_| ("tcp", tcp_admission.counters())),
                ingest
                    .as_ref()
                    .map(|ingest| ("ingest", ingest.connection_counters())),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        // It owns the bound port: a panic stops the daemon (systemd binds it afresh).
        let (mut once, stopped) = (Some((listener, sources)), stopped.clone());
        let http_timeouts = http::timeouts(&config.limits);
        tasks.spawn("metrics", OnPanic::StopDaemon, move || {
            let serving = once
                .take()
                .map(|(listener, sources)| listener.serve(sources, http_timeouts, stopped.clone()));
            async move {
                if let Some(serving) = serving {
                    serving.await;
                }
            }
        });
    }
    tracing::info!(
        socket = %socket_path.display(),
        poll_interval = %humantime::format_duration(config.poll_interval),
        ring_capacity = config.ring_capacity(),
        "gpukilld {} serving",
        env!("CARGO_PKG_VERSION")
    );

    let stop_on_shutdown = async move {
        shutdown.await;
        tracing::info!("stopping");
        service::supervisor::stopping();
        let _ = stop.send(true);
    };
    let advertise = advertised_address(&config, tcp_listener.as_ref());
    let registrations = match (kill_context.store.database(), &config.cluster.role) {
        (Some(log), config::ClusterRole::Coordinator) => log
            .read(|store| store.node_registrations())
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "cannot read the stored node registrations; nodes bind again as they register");
                Vec::new()
            }),
        _ => Vec::new(),
    };
    let membership = cluster::Membership::from_config(&config, &node, &ring, registrations)
        .and_then(|membership| {
            membership.spawn(&config, &node, advertise, stopped.clone(), &tasks)?;
            Ok(membership)
        });
    let membership = match membership {
        Ok(membership) => membership,
        Err(error) => {
            // The cluster credentials are read after the socket is bound: do not leave it.
            if owns_socket {
                let _ = std::fs::remove_file(&socket_path);
            }
            return Err(error.into());
        }
    };
    let cluster_grpc = gpukill_proto::v1::cluster_server::ClusterServer::new(
        cluster::service::ClusterService::new(
            membership.coordinator.clone(),
            kill_context.store.clone(),
        ),
    )
    .max_decoding_message_size(request_limit(&config));
    let forward = rpc::layer::InterceptLayer::new(Arc::new(cluster::forward::Forwarder {
        registry: membership
            .coordinator
            .as_ref()
            .map(|coordinator| Arc::clone(&coordinator.registry)),
        node: Arc::clone(&node),
        admin_group: config.admin_group.clone(),
    }));
    if let Some(ingest) = ingest {
        tracing::info!(address = ?ingest.local_addr().ok(), path = ingest::PATH, "serving uploads (ingest)");
        // It owns the bound port: a panic stops the daemon (systemd binds it afresh).
        let (mut ingest, stopped) = (Some(ingest), stopped.clone());
        let http_timeouts = http::timeouts(&config.limits);
        tasks.spawn("ingest", OnPanic::StopDaemon, move || {
            let serving = ingest
                .take()
                .map(|ingest| ingest.serve(http_timeouts, stopped.clone()));
            async move {
                if let Some(serving) = serving {
                    serving.await;
                }
            }
        });
    }
    let upload_settings = rpc::uploads::UploadSettings {
        enabled: config.upload.enabled(),
        offline: config.upload.offline,
        url: config.upload.url.clone(),
    };
    if let (Some(client), Some(log)) = (upload_client, kill_context.store.database()) {
        if config.upload.offline {
            tracing::info!(
                url = client.url(),
                "offline: hours are queued for upload, not sent"
            );
        } else {
            let policy = upload::Policy {
                retry_min: config.upload.retry_min,
                retry_max: config.upload.retry_max,
                max_attempts: config.upload.max_attempts,
            };
            let (log, stopped) = (Arc::clone(log), stopped.clone());
            let (mut first, upload_config) = (Some(client), config.upload.clone());
            // Its progress is in the outbox; a restart makes a new client (and connection).
            tasks.spawn("uploader", OnPanic::Restart, move || {
                let client = match first.take() {
                    Some(client) => Ok(Some(client)),
                    None => upload::client::UploadClient::new(&upload_config),
                };
                let (log, stopped) = (Arc::clone(&log), stopped.clone());
                async move {
                    match client {
                        Ok(Some(client)) => upload::run(log, client, policy, stopped).await,
                        // The configuration it was made from has a URL; it cannot lose it.
                        Ok(None) => {}
                        Err(error) => tracing::error!(
                            error = %errors::chain(&error),
                            "cannot restart the uploader: its credentials no longer load"
                        ),
                    }
                }
            });
        }
    }
    let grpc = rpc::Service::new(
        Arc::clone(&ring),
        stopped.clone(),
        kill_context,
        guard,
        actions::reset::ResetTools {
            nvidia_smi: config.nvidia.smi.clone(),
            amd_smi: config.amd.smi.clone(),
            rocm_smi: config.amd.rocm_smi.clone(),
            nvidia_timeout: config.nvidia.reset_timeout,
            amd_timeout: config.amd.reset_timeout,
        },
        Arc::clone(&node),
        upload_settings,
        reservations,
    )
    .into_server()
    .max_decoding_message_size(request_limit(&config));
    let timeouts = connections::Timeouts {
        first_bytes: config.limits.handshake_timeout,
        idle: config.limits.idle_timeout,
        write: config.limits.write_timeout,
    };
    let tcp_task = tcp_listener.map(|setup| {
        let address = setup.local_addr().ok();
        let (authenticator, incoming) =
            setup.incoming(tcp_admission.clone(), timeouts, stopped.clone());
        tracing::info!(address = ?address, "serving gRPC on TCP");
        let mut stopping = stopped.clone();
        tokio::spawn(
            grpc_server(&config.limits)
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(rpc::layer::InterceptLayer::new(authenticator))
                        .layer(forward.clone())
                        .into_inner(),
                )
                .add_service(grpc.clone())
                .add_service(cluster_grpc.clone())
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopping.wait_for(|stopped| *stopped).await;
                }),
        )
    });
    let incoming = rpc::unix::incoming(listener, unix_admission, timeouts, stopped.clone());
    service::supervisor::ready(&ring.latest());
    let served = grpc_server(&config.limits)
        .layer(forward)
        .add_service(grpc)
        .add_service(cluster_grpc)
        .serve_with_incoming_shutdown(incoming, stop_on_shutdown)
        .await;
    if let Some(tcp_task) = tcp_task {
        if served.is_err() {
            // The Unix server failed before shutdown began: nothing stops the TCP one.
            tcp_task.abort();
        }
        if let Ok(Err(error)) = tcp_task.await {
            tracing::error!(error = %errors::chain(&error), "the TCP server failed");
        }
    }

    // The sampler may be waiting on a hung vendor; do not wait on it past its timeout.
    let _ = tokio::time::timeout(config.vendor_timeout * 2, sampler_task).await;
    if let Some(guard_task) = guard_task {
        let _ = guard_task.await;
    }
    if let Some(recorder_task) = recorder_task {
        // It hands the open interval to the store as it stops.
        let _ = recorder_task.await;
    }
    if let Some(log) = kill_events.database() {
        // Everything queued (the last interval, the last audit events) is written before exit.
        if let Err(error) = log.flush(STORE_FLUSH_TIMEOUT).await {
            tracing::error!(%error, "the store did not finish writing before exit");
        }
    }
    if owns_socket && let Err(error) = std::fs::remove_file(&socket_path) {
        tracing::warn!(socket = %socket_path.display(), %error, "cannot remove socket");
    }
    served.map_err(Error::Serve)?;
    match tasks.failure() {
        Some(failure) => Err(Error::Task(failure)),
        None => Ok(()),
    }
}
