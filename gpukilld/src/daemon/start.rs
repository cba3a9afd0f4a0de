//! Start-up stage 3, start: the first sample fills the ring, then every background task
//! starts under the one supervised set (`service::tasks`): the sampler, the reservation
//! timers, the guard, the reload loop, the watchdog, the recorder, the metrics and ingest
//! endpoints, the uploader and the cluster's tasks.

use std::sync::Arc;

use tokio::sync::watch;

use super::bind::{Bound, advertised_address};
use super::configure::Configured;
use super::{Error, LoadConfig, reload};
use crate::config::{self, Config};
use crate::connections::{Admission, PeerAddress, PeerUid};
use crate::guard::engine::Guard;
use crate::guard::notify::Notifier;
use crate::reservations::{Reservations, ReservationsHandle};
use crate::ring::Ring;
use crate::rpc::kill::KillContext;
use crate::sampler::Sampler;
use crate::service::tasks::{OnPanic, Tasks};
use crate::store::Database;
use crate::{
    cluster, errors, guard, health_events, http, ingest, metrics, node, recorder, service, upload,
};

/// The running daemon: what serving needs.
pub(super) struct Running {
    /// This node's id and name.
    pub node: Arc<node::NodeIdentity>,
    /// What killing needs.
    pub kill_context: Arc<KillContext>,
    /// The snapshots.
    pub ring: Arc<Ring>,
    /// Turned true when shutdown starts: the sampler and every Watch stream end on it, so
    /// the server's graceful shutdown does not wait on watchers.
    pub stop: watch::Sender<bool>,
    /// The receiving side of `stop`.
    pub stopped: watch::Receiver<bool>,
    /// The guard's policy and status.
    pub guard: Arc<Guard>,
    /// The reservations, or why they are off.
    pub reservations: ReservationsHandle,
    /// This node's place in a cluster.
    pub membership: cluster::Membership,
    /// The Unix socket's connection slots.
    pub unix_admission: Admission<PeerUid>,
    /// The TCP listener's connection slots.
    pub tcp_admission: Admission<PeerAddress>,
    /// The GPUs' health assessment.
    pub health: Arc<std::sync::Mutex<crate::health::Tracker>>,
}

/// Takes the first sample and starts every background task. Fails only when the cluster
/// credentials cannot be used.
pub(super) async fn start<S>(
    config: &Config,
    configured: Configured,
    bound: &mut Bound,
    tasks: &Tasks,
    reload: S,
    load_config: LoadConfig,
) -> Result<Running, Error>
where
    S: tokio_stream::Stream<Item = ()> + Send + Unpin + 'static,
{
    let Configured {
        mut sampler,
        health,
        node,
        kill_context,
        unix_admission,
        tcp_admission,
        upload_client,
        ..
    } = configured;
    let first = sampler.tick().await;
    let ring = Arc::new(Ring::new(config.ring_capacity(), first));
    let (stop, stopped) = watch::channel(false);
    spawn_sampler(tasks, sampler, &ring, &stopped);
    let database = kill_context.store.database().cloned();
    let reservations = load_reservations(config, &kill_context, &ring).await;
    if let Ok(held) = &reservations {
        let (held, stopped) = (Arc::clone(held), stopped.clone());
        // Its state lives in `Reservations`: a new timer loop picks it up.
        tasks.spawn("reservations", OnPanic::Restart, move || {
            crate::reservations::run_timers(Arc::clone(&held), stopped.clone())
        });
    }
    let guard = Arc::new(Guard::new(
        config.guard_policy.clone(),
        config.protected_users.clone(),
        config.protected_processes.clone(),
    ));
    let loading = Arc::clone(&guard);
    let _ = tokio::task::spawn_blocking(move || loading.load()).await;
    if let Some(log) = &database {
        // One webhook task for the guard's notices and the health events.
        let notifier = Notifier::start();
        spawn_guard(
            tasks,
            &guard,
            &ring,
            log,
            &reservations,
            &notifier,
            &stopped,
        );
        spawn_recorder(tasks, config, &ring, log, &stopped);
        let announce = Arc::new(health_events::Announce {
            guard: Arc::clone(&guard),
            notifier,
        });
        let (ring, log, stopped) = (Arc::clone(&ring), Arc::clone(log), stopped.clone());
        let kill_new = config
            .health
            .on_critical
            .kills_new()
            .then(|| kill_context.protection.clone());
        tasks.spawn("health-events", OnPanic::Restart, move || {
            health_events::run(
                Arc::clone(&ring),
                Arc::clone(&log),
                Arc::clone(&announce),
                kill_new.clone().map(health_events::kill_new::KillNew::new),
                stopped.clone(),
            )
        });
    }
    reload::spawn(
        tasks,
        reload,
        load_config,
        config.clone(),
        Arc::clone(&guard),
        stopped.clone(),
    );
    if let Some(interval) = service::supervisor::watchdog_interval() {
        let (ring, stopped) = (Arc::clone(&ring), stopped.clone());
        tasks.spawn("watchdog", OnPanic::Restart, move || {
            service::supervisor::watchdog(Arc::clone(&ring), interval, stopped.clone())
        });
    }
    if let Some(listener) = bound.metrics.take() {
        let connections = [
            Some(("unix", unix_admission.counters())),
            bound
                .tcp
                .as_ref()
                .map(|_| ("tcp", tcp_admission.counters())),
            bound
                .ingest
                .as_ref()
                .map(|ingest| ("ingest", ingest.connection_counters())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let sources = metrics::Sources {
            ring: Arc::clone(&ring),
            store: kill_context.store.clone(),
            guard: Arc::clone(&guard),
            guard_counters: Some(guard.counters()),
            connections,
        };
        spawn_metrics(tasks, config, listener, sources, &stopped);
    }
    let membership = join_cluster(
        config,
        &node,
        &ring,
        database.as_ref(),
        bound,
        &stopped,
        tasks,
    )
    .await?;
    if let Some(ingest) = bound.ingest.take() {
        spawn_ingest(tasks, config, ingest, &stopped);
    }
    if let (Some(client), Some(log)) = (upload_client, &database) {
        spawn_uploader(tasks, config, client, log, &stopped);
    }
    Ok(Running {
        node,
        kill_context,
        ring,
        stop,
        stopped,
        guard,
        reservations,
        membership,
        unix_admission,
        tcp_admission,
        health,
    })
}

/// The sampler owns the vendor threads, which cannot be made again in place: a panic stops
/// the daemon.
fn spawn_sampler(
    tasks: &Tasks,
    sampler: Sampler,
    ring: &Arc<Ring>,
    stopped: &watch::Receiver<bool>,
) {
    let (mut sampler, ring, stopped) = (Some(sampler), Arc::clone(ring), stopped.clone());
    tasks.spawn("sampler", OnPanic::StopDaemon, move || {
        let (sampler, ring, stopped) = (sampler.take(), Arc::clone(&ring), stopped.clone());
        async move {
            if let Some(sampler) = sampler {
                sampler.run(ring, stopped).await;
            }
        }
    });
}

/// The reservations kept in the store, or why they are off.
async fn load_reservations(
    config: &Config,
    kill_context: &KillContext,
    ring: &Arc<Ring>,
) -> ReservationsHandle {
    let log = kill_context.store.get()?;
    Reservations::load(
        config.reservations.clone(),
        config.health.on_critical.drains(),
        Arc::clone(log),
        Arc::clone(ring),
    )
    .await
    .map(Arc::new)
    .map_err(|error| {
        let message = errors::chain(&error);
        tracing::error!("cannot load the reservations: {message}; reservations are off");
        message
    })
}

/// The guard runs only with the audit trail (nothing is killed without it). A restarted
/// guard starts its violations' durations afresh: it kills later, not sooner.
fn spawn_guard(
    tasks: &Tasks,
    guard: &Arc<Guard>,
    ring: &Arc<Ring>,
    log: &Arc<Database>,
    reservations: &ReservationsHandle,
    notifier: &Notifier,
    stopped: &watch::Receiver<bool>,
) {
    let (guard, ring, log) = (Arc::clone(guard), Arc::clone(ring), Arc::clone(log));
    let (held, stopped) = (reservations.as_ref().ok().cloned(), stopped.clone());
    let notifier = notifier.clone();
    tasks.spawn("guard", OnPanic::Restart, move || {
        guard::engine::run(
            Arc::clone(&guard),
            Arc::clone(&ring),
            Arc::clone(&log),
            held.clone(),
            notifier.clone(),
            stopped.clone(),
        )
    });
}

/// The recorder writes samples and sessions to the store; a restarted one loses the open
/// interval's samples, nothing written. As it stops it hands the open interval over.
fn spawn_recorder(
    tasks: &Tasks,
    config: &Config,
    ring: &Arc<Ring>,
    log: &Arc<Database>,
    stopped: &watch::Receiver<bool>,
) {
    let (ring, log, stopped) = (Arc::clone(ring), Arc::clone(log), stopped.clone());
    let interval = config.persist_interval;
    tasks.spawn("recorder", OnPanic::Restart, move || {
        recorder::run(
            recorder::Recorder::new(interval),
            Arc::clone(&ring),
            Arc::clone(&log),
            stopped.clone(),
        )
    });
}

/// The metrics endpoint owns its bound port: a panic stops the daemon (systemd binds it
/// afresh).
fn spawn_metrics(
    tasks: &Tasks,
    config: &Config,
    listener: metrics::Listener,
    sources: metrics::Sources,
    stopped: &watch::Receiver<bool>,
) {
    tracing::info!(
        address = %listener.local_addr(),
        "metrics endpoint serving /metrics, /healthz, /readyz"
    );
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

/// The ingest endpoint owns its bound port: a panic stops the daemon.
fn spawn_ingest(
    tasks: &Tasks,
    config: &Config,
    ingest: ingest::Ingest,
    stopped: &watch::Receiver<bool>,
) {
    tracing::info!(address = ?ingest.local_addr().ok(), path = ingest::PATH, "serving uploads (ingest)");
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

/// The uploader sends the outbox's hours (unless `[upload] offline`). Its progress is in the
/// outbox; a restart makes a new client (and connection).
fn spawn_uploader(
    tasks: &Tasks,
    config: &Config,
    client: upload::client::UploadClient,
    log: &Arc<Database>,
    stopped: &watch::Receiver<bool>,
) {
    if config.upload.offline {
        tracing::info!(
            url = client.url(),
            "offline: hours are queued for upload, not sent"
        );
        return;
    }
    let policy = upload::Policy {
        retry_min: config.upload.retry_min,
        retry_max: config.upload.retry_max,
        max_attempts: config.upload.max_attempts,
    };
    let (log, stopped) = (Arc::clone(log), stopped.clone());
    let (mut first, upload_config) = (Some(client), config.upload.clone());
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

/// This node's place in a cluster: a coordinator loads the stored node registrations; a
/// node with `[cluster] coordinator` starts registering.
async fn join_cluster(
    config: &Config,
    node: &Arc<node::NodeIdentity>,
    ring: &Arc<Ring>,
    database: Option<&Arc<Database>>,
    bound: &Bound,
    stopped: &watch::Receiver<bool>,
    tasks: &Tasks,
) -> Result<cluster::Membership, Error> {
    let registrations = match (database, &config.cluster.role) {
        (Some(log), config::ClusterRole::Coordinator) => log
            .read(|store| store.node_registrations())
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "cannot read the stored node registrations; nodes bind again as they register");
                Vec::new()
            }),
        _ => Vec::new(),
    };
    let advertise = advertised_address(config, bound.tcp.as_ref());
    let membership = cluster::Membership::from_config(config, node, ring, registrations)?;
    membership.spawn(config, node, advertise, stopped.clone(), tasks)?;
    Ok(membership)
}
