//! Start-up stage 4, serve: the gRPC services (gpukill and cluster, and the standard health
//! and reflection services) on the Unix socket until shutdown, and on the TCP listener as a
//! supervised task.

use std::future::Future;
use std::sync::Arc;

use tonic::server::NamedService;
use tonic::service::Routes;

use super::start::Running;
use crate::config::{self, Config};
use crate::rpc::tcp::TcpListenerSetup;
use crate::service::tasks::{OnPanic, Tasks};
use crate::{actions, cluster, connections, errors, rpc, service};

/// Serves until `shutdown` completes (then the stop is sent to every task and stream) or
/// the Unix server fails.
pub(super) async fn serve(
    config: &Config,
    running: &Running,
    tcp: Option<TcpListenerSetup>,
    unix: tokio::net::UnixListener,
    tasks: &Tasks,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let request_limit = usize::try_from(config.limits.max_request_size).unwrap_or(usize::MAX);
    let cluster_grpc = gpukill_proto::v1::cluster_service_server::ClusterServiceServer::new(
        cluster::service::ClusterService::new(
            running.membership.coordinator.clone(),
            running.kill_context.store.clone(),
        ),
    )
    .max_decoding_message_size(request_limit);
    let forward = rpc::layer::InterceptLayer::new(Arc::new(cluster::forward::Forwarder {
        registry: running
            .membership
            .coordinator
            .as_ref()
            .map(|coordinator| Arc::clone(&coordinator.registry)),
        node: Arc::clone(&running.node),
        admin_group: config.admin_group.clone(),
    }));
    let grpc = rpc::Service::new(
        Arc::clone(&running.ring),
        running.stopped.clone(),
        Arc::clone(&running.kill_context),
        Arc::clone(&running.guard),
        actions::reset::ResetTools {
            nvidia_smi: config.nvidia.smi.clone(),
            amd_smi: config.amd.smi.clone(),
            rocm_smi: config.amd.rocm_smi.clone(),
            nvidia_timeout: config.nvidia.reset_timeout,
            amd_timeout: config.amd.reset_timeout,
        },
        Arc::clone(&running.node),
        rpc::uploads::UploadSettings {
            enabled: config.upload.enabled(),
            offline: config.upload.offline,
            url: config.upload.url.clone(),
        },
        running.reservations.clone(),
        Arc::clone(&running.health),
    )
    .into_server()
    .max_decoding_message_size(request_limit);
    // The Cluster service answers only on a coordinator.
    let (serving, idle) = match running.membership.coordinator {
        Some(_) => (
            vec![service_name(&grpc), service_name(&cluster_grpc)],
            vec![],
        ),
        None => (vec![service_name(&grpc)], vec![service_name(&cluster_grpc)]),
    };
    let health = rpc::standard::health::Statuses::new(&serving, &idle);
    let store = &running.kill_context.store;
    health.update(&running.ring, store).await;
    rpc::standard::health::spawn(
        tasks,
        &health,
        &running.ring,
        store,
        config.poll_interval,
        &running.stopped,
    );
    // The same services, behind the same checks, on both listeners.
    let routes = rpc::standard::add(
        Routes::new(grpc).add_service(cluster_grpc),
        &health,
        store,
        &running.stopped,
        request_limit,
    );
    let timeouts = connections::Timeouts {
        first_bytes: config.limits.handshake_timeout,
        idle: config.limits.idle_timeout,
        write: config.limits.write_timeout,
    };
    if let Some(setup) = tcp {
        let address = setup.local_addr().ok();
        let (authenticator, incoming) = setup.incoming(
            running.tcp_admission.clone(),
            timeouts,
            running.stopped.clone(),
        );
        tracing::info!(address = ?address, "serving gRPC on TCP");
        let server = grpc_server(&config.limits)
            .layer(
                tower::ServiceBuilder::new()
                    .layer(rpc::layer::InterceptLayer::new(authenticator))
                    .layer(forward.clone())
                    .into_inner(),
            )
            .add_routes(routes.clone());
        // It owns the bound port: ending or panicking before shutdown stops the daemon.
        let (mut once, stopped) = (Some((server, incoming)), running.stopped.clone());
        tasks.spawn("tcp", OnPanic::StopDaemon, move || {
            let mut stopping = stopped.clone();
            let serving = once.take().map(|(server, incoming)| async move {
                let shutdown = async move {
                    let _ = stopping.wait_for(|stopped| *stopped).await;
                };
                server
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            });
            async move {
                if let Some(serving) = serving
                    && let Err(error) = serving.await
                {
                    tracing::error!(error = %errors::chain(&error), "the TCP server failed");
                }
            }
        });
    }
    let incoming = rpc::unix::incoming(
        unix,
        running.unix_admission.clone(),
        timeouts,
        running.stopped.clone(),
    );
    let server = grpc_server(&config.limits)
        .layer(forward)
        .add_routes(routes);
    let mut stopping = running.stopped.clone();
    // A task of its own, on a worker thread, rather than part of the caller's future (which
    // `main` runs on the main thread, outside the workers): the accept loop then hands each
    // connection to its task on the worker that accepted it, instead of waking the main
    // thread and then a worker for every connection (docs/performance.md, client start-up).
    let mut unix_server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stopping.wait_for(|stopped| *stopped).await;
        };
        server.serve_with_incoming_shutdown(incoming, stopped).await
    });
    service::supervisor::ready(&running.ring.latest());
    let ended_early = tokio::select! {
        ended = &mut unix_server => Some(ended),
        () = shutdown => None,
    };
    match ended_early {
        Some(ended) => {
            let served = joined(ended);
            // The Unix server ended before shutdown began: stop everything else.
            tasks.stopping();
            let _ = running.stop.send(true);
            served
        }
        None => {
            tracing::info!("stopping");
            // Health watchers hear NOT_SERVING before their streams end.
            health.shut_down().await;
            tasks.stopping();
            service::supervisor::stopping();
            // The Unix server stops accepting, and ends once its connections have.
            let _ = running.stop.send(true);
            joined(unix_server.await)
        }
    }
}

/// The result of the Unix server's task; its panic goes on as the caller's, as when it ran
/// in the caller's future.
fn joined(
    ended: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), tonic::transport::Error> {
    match ended {
        Ok(served) => served,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Cancelled: only when the runtime itself shuts down.
        Err(_) => Ok(()),
    }
}

/// The full name a service is served and health-checked under (`gpukill.v1.GpuKill`).
fn service_name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
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
