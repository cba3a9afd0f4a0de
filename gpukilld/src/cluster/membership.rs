//! A node's side of registration: register with `[cluster] coordinator`, then send a
//! heartbeat every interval the coordinator asks for; register again when the coordinator
//! has forgotten the node (it restarted) and keep trying while it is unreachable.

use std::sync::Arc;
use std::time::Duration;

use gpukill_proto::v1 as pb;
use gpukill_proto::v1::cluster_service_client::ClusterServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::client::Credentials;
use crate::node::NodeIdentity;

/// The longest wait between two registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Registers and sends heartbeats until `stop`.
pub async fn run(
    channel: Channel,
    credentials: Credentials,
    coordinator: String,
    node: Arc<NodeIdentity>,
    advertise: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = ClusterServiceClient::new(channel);
    let mut last_error: Option<String> = None;
    let mut retry = interval.min(Duration::from_secs(1));
    let mut registered: Option<Duration> = None;
    loop {
        let wait = match registered {
            None => {
                let mut request = tonic::Request::new(pb::RegisterRequest {
                    node_id: node.id.clone(),
                    name: node.name.clone(),
                    address: advertise.clone(),
                    daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                });
                request.set_timeout(interval.max(Duration::from_secs(1)));
                credentials.authorize(&mut request);
                match client.register(request).await {
                    Ok(response) => {
                        let every = Duration::from_millis(response.get_ref().heartbeat_interval_ms)
                            .max(Duration::from_millis(10));
                        tracing::info!(%coordinator, name = %node.name, address = %advertise, "registered with the coordinator");
                        last_error = None;
                        retry = interval.min(Duration::from_secs(1));
                        registered = Some(every);
                        every
                    }
                    Err(status) => {
                        let error = super::fanout::describe_status(&status);
                        if last_error.as_ref() != Some(&error) {
                            tracing::warn!(%coordinator, %error, "cannot register with the coordinator; retrying");
                            last_error = Some(error);
                        }
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        wait
                    }
                }
            }
            Some(every) => {
                let mut request = tonic::Request::new(pb::HeartbeatRequest {
                    node_id: node.id.clone(),
                });
                request.set_timeout(every.max(Duration::from_secs(1)));
                credentials.authorize(&mut request);
                match client.heartbeat(request).await {
                    Ok(_) => {
                        if last_error.take().is_some() {
                            tracing::info!(%coordinator, "heartbeats reach the coordinator again");
                        }
                        every
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        tracing::info!(%coordinator, "the coordinator forgot this node; registering again");
                        registered = None;
                        Duration::ZERO
                    }
                    Err(status) => {
                        let error = super::fanout::describe_status(&status);
                        if last_error.as_ref() != Some(&error) {
                            tracing::warn!(%coordinator, %error, "heartbeat failed");
                            last_error = Some(error);
                        }
                        every
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
