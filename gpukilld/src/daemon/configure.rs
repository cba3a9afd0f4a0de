//! Start-up stage 1, configure: what the daemon is made of before anything listens — the
//! sampler and its GPU backends, this node's identity, the store, the kill context and each
//! listener's connection slots.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{Environment, Error};
use crate::backends::{self, Backend};
use crate::config::{self, Config};
use crate::connections::{self, Admission, PeerAddress, PeerUid};
use crate::rpc::kill::KillContext;
use crate::sampler::{Sampler, Timing};
use crate::service::tasks::Tasks;
use crate::{actions, errors, health, node, procinfo, snapshot, store, upload};

/// The daemon's parts, made and not yet started.
pub(super) struct Configured {
    /// Where the Unix socket goes (unless systemd passes one).
    pub socket_path: PathBuf,
    /// The sampler, not yet running.
    pub sampler: Sampler,
    /// The GPUs' health assessment the sampler makes each tick (admins clear it).
    pub health: Arc<Mutex<health::Tracker>>,
    /// This node's id and name.
    pub node: Arc<node::NodeIdentity>,
    /// What killing needs: the protection rules, the admin group, the store, the tasks.
    pub kill_context: Arc<KillContext>,
    /// The Unix socket's connection slots (per uid).
    pub unix_admission: Admission<PeerUid>,
    /// The TCP listener's connection slots (per address).
    pub tcp_admission: Admission<PeerAddress>,
    /// The uploader's client, when `[upload] url` is set.
    pub upload_client: Option<upload::client::UploadClient>,
}

/// Makes the daemon's parts from `config`. The store failing to open is not an error: the
/// daemon serves live data and refuses what must be audited.
pub(super) fn configure(
    config: &Config,
    environment: &Environment,
    tasks: &Tasks,
) -> Result<Configured, Error> {
    let socket_path = config.socket_path(environment.euid, environment.xdg_runtime_dir.as_deref());
    let (unix_admission, tcp_admission) = admissions(config);
    let proc_reader = procinfo::ProcReader::new("/proc").map_err(Error::Procfs)?;
    let timing = Timing {
        poll_interval: config.poll_interval,
        call_timeout: config.vendor_timeout,
    };
    let health = Arc::new(Mutex::new(health::Tracker::new(config.health.clone())));
    let sampler = Sampler::new(
        host_name(),
        timing,
        gpu_backends(config),
        proc_reader,
        Arc::clone(&health),
    )
    .map_err(Error::Thread)?;
    // The node id lives in the state directory, and the outbox's payloads carry it.
    if let Err(error) = store::create_dir(&config.state_dir) {
        tracing::error!(error = %errors::chain(&error), "cannot create the state directory");
    }
    let node = Arc::new(node_identity(config));
    let database = config.state_dir.join("gpukill.db");
    let store = open_store(config, &node, database.clone());
    let protection = actions::protect::Protection::new(
        config.protected_users.clone(),
        &config.protected_processes,
    )
    .map_err(|error| {
        Error::Config(config::ConfigError::Parse {
            origin: "protected_processes".to_string(),
            message: error.to_string(),
        })
    })?;
    let kill_context = Arc::new(KillContext {
        protection,
        admin_group: config.admin_group.clone(),
        store,
        store_path: database,
        tasks: tasks.clone(),
    });
    Ok(Configured {
        socket_path,
        sampler,
        health,
        node,
        kill_context,
        unix_admission,
        tcp_admission,
        upload_client: upload::client::UploadClient::new(&config.upload)?,
    })
}

/// Each gRPC listener's connection slots (made here so the metrics endpoint reports them),
/// within what the open file limit, raised to its hard limit, can hold.
fn admissions(config: &Config) -> (Admission<PeerUid>, Admission<PeerAddress>) {
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
    let unix = Admission::new(
        "the Unix socket",
        connections::Limits {
            per_caller: config.limits.connections_per_uid,
            per_caller_setting: "[limits] connections_per_uid",
            total: max_connections,
            total_setting: "[limits] max_connections",
        },
    );
    let tcp = Admission::new(
        "the TCP listener",
        connections::Limits {
            per_caller: config.limits.connections_per_address,
            per_caller_setting: "[limits] connections_per_address",
            total: max_connections,
            total_setting: "[limits] max_connections",
        },
    );
    (unix, tcp)
}

/// Opens the store (audit events, history, the upload outbox), or says why it cannot.
fn open_store(config: &Config, node: &node::NodeIdentity, database: PathBuf) -> store::StoreHandle {
    let options = store::HistoryOptions {
        persist_interval: config.persist_interval,
        retention: store::Retention::from(&config.retention),
        outbox: config.upload.enabled().then(|| store::OutboxOptions {
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            max_hours: config.upload.max_outbox_hours,
        }),
        delivered_retention: config.upload.delivered_retention,
    };
    match store::Database::start_with_history(database.clone(), options) {
        Ok(log) => store::StoreHandle::from(log),
        Err(error) => {
            // Live service goes on; only actions, which must be audited, are refused.
            let message = errors::chain(&error);
            tracing::error!(store = %database.display(), "{message}; kill is disabled");
            store::StoreHandle::unavailable(message)
        }
    }
}

/// This host's name (`localhost` if it has none that is UTF-8).
pub(super) fn host_name() -> Arc<str> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from("localhost"))
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

/// The GPU backends `config` enables: NVML for NVIDIA, and one backend for AMD and Intel
/// (they share the walk of /proc that finds their processes).
fn gpu_backends(config: &Config) -> Vec<Box<dyn Backend>> {
    let mut enabled: Vec<Box<dyn Backend>> = Vec::new();
    if config.nvidia.enabled {
        let library = config
            .nvidia
            .library
            .clone()
            .map(PathBuf::into_os_string)
            .unwrap_or_else(|| config::DEFAULT_NVML_LIBRARY.into());
        enabled.push(Box::new(backends::nvidia::NvidiaBackend::new(
            library,
            config.nvidia.sysfs_root.clone(),
        )));
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
        enabled.push(Box::new(backends::drm::backend::DrmBackend::new(
            drm_roots,
            name_files,
            &config.procfs_root,
        )));
    }
    enabled
}
