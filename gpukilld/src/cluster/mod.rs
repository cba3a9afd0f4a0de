//! Beyond one node. A coordinator (`[cluster] role = "coordinator"`) knows the nodes
//! (`registry`: static ones and those that register, down after missed heartbeats), asks
//! them all at once (`fanout`), reports contention (`contention`), forwards node-addressed
//! requests with the caller it verified (`forward`) and serves the `Cluster` rpcs
//! (`service`). A node with `[cluster] coordinator` registers and sends heartbeats
//! (`membership`). `client` holds the credentials daemons present to each other.

pub mod client;
pub mod contention;
pub mod fanout;
pub mod forward;
pub mod membership;
pub mod registry;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{ClusterRole, Config};
use crate::node::NodeIdentity;
use crate::ring::Ring;

/// A daemon's part in a cluster, from its configuration.
pub struct Membership {
    /// The coordinator's state, when this daemon is one.
    pub coordinator: Option<Arc<service::Coordinator>>,
    /// The credentials this daemon presents to others, when it talks to any.
    pub credentials: Option<client::Credentials>,
}

impl Membership {
    /// Reads the credentials and builds the registry of a coordinator. The coordinator's own
    /// GPUs count as a node when it samples any.
    ///
    /// `registrations` are the node registrations a coordinator's store kept.
    pub fn from_config(
        config: &Config,
        node: &Arc<NodeIdentity>,
        ring: &Arc<Ring>,
        registrations: Vec<crate::store::NodeRegistration>,
    ) -> Result<Membership, client::ClientError> {
        let coordinator = config.cluster.role == ClusterRole::Coordinator;
        if !coordinator && config.cluster.coordinator.is_none() {
            return Ok(Membership {
                coordinator: None,
                credentials: None,
            });
        }
        let credentials = client::Credentials::load(&config.cluster)?;
        let coordinator = if coordinator {
            let registry = registry::Registry::new(
                &config.cluster.nodes,
                credentials.clone(),
                config.cluster.node_timeout,
            )?;
            registry.restore(registrations);
            Some(Arc::new(service::Coordinator {
                registry: Arc::new(registry),
                local: config.nvidia.enabled.then(|| fanout::Local {
                    node: Arc::clone(node),
                    ring: Arc::clone(ring),
                }),
                deadline: config.cluster.deadline,
                heartbeat_interval: config.cluster.heartbeat_interval,
            }))
        } else {
            None
        };
        Ok(Membership {
            coordinator,
            credentials: Some(credentials),
        })
    }

    /// Starts what runs in the background, supervised by `tasks` (restarted after a panic):
    /// a coordinator logs nodes going down and coming back; a node with `[cluster]
    /// coordinator` registers and sends heartbeats, advertising `advertise`.
    pub fn spawn(
        &self,
        config: &Config,
        node: &Arc<NodeIdentity>,
        advertise: Option<String>,
        stop: watch::Receiver<bool>,
        tasks: &crate::service::tasks::Tasks,
    ) -> Result<(), client::ClientError> {
        use crate::service::tasks::OnPanic;
        if let Some(coordinator) = &self.coordinator {
            let registry = Arc::clone(&coordinator.registry);
            let stop = stop.clone();
            tasks.spawn("cluster registry", OnPanic::Restart, move || {
                let registry = Arc::clone(&registry);
                let mut stop = stop.clone();
                async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = stop.wait_for(|stopped| *stopped) => return,
                            _ = tick.tick() => registry.log_transitions(),
                        }
                    }
                }
            });
        }
        if let (Some(url), Some(credentials), Some(advertise)) =
            (&config.cluster.coordinator, &self.credentials, advertise)
        {
            let channel = credentials.channel(url)?;
            let (credentials, url, node) = (credentials.clone(), url.clone(), Arc::clone(node));
            let interval = config.cluster.heartbeat_interval;
            tasks.spawn("cluster membership", OnPanic::Restart, move || {
                membership::run(
                    channel.clone(),
                    credentials.clone(),
                    url.clone(),
                    Arc::clone(&node),
                    advertise.clone(),
                    interval,
                    stop.clone(),
                )
            });
        }
        Ok(())
    }
}
