//! Where the configuration comes from: the file, the environment (`GPUKILL_*`) and the
//! command line, layered over the defaults, each layer checked as it is added so that an
//! error names the source that caused it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Every setting that an environment variable can set, with the variable's name. Each
/// top-level key `k` is `GPUKILL_K`; keys of a section are `GPUKILL_SECTION_K`.
pub(super) const ENV_VARS: &[(&str, &[&str])] = &[
    ("GPUKILL_SOCKET", &["socket"]),
    ("GPUKILL_SOCKET_MODE", &["socket_mode"]),
    ("GPUKILL_POLL_INTERVAL", &["poll_interval"]),
    ("GPUKILL_VENDOR_TIMEOUT", &["vendor_timeout"]),
    ("GPUKILL_PERSIST_INTERVAL", &["persist_interval"]),
    ("GPUKILL_RING_CAPACITY", &["ring_capacity"]),
    ("GPUKILL_STATE_DIR", &["state_dir"]),
    ("GPUKILL_ADMIN_GROUP", &["admin_group"]),
    ("GPUKILL_PROTECTED_USERS", &["protected_users"]),
    ("GPUKILL_PROTECTED_PROCESSES", &["protected_processes"]),
    ("GPUKILL_GUARD_POLICY", &["guard_policy"]),
    ("GPUKILL_RETENTION_SAMPLES", &["retention", "samples"]),
    ("GPUKILL_RETENTION_SESSIONS", &["retention", "sessions"]),
    ("GPUKILL_RETENTION_ROLLUPS", &["retention", "rollups"]),
    ("GPUKILL_RETENTION_EVENTS", &["retention", "events"]),
    // One root for every backend, as a container mounts one sysfs; before the backends' own
    // variables, which win over it.
    ("GPUKILL_SYSFS_ROOT", &["nvidia", "sysfs_root"]),
    ("GPUKILL_SYSFS_ROOT", &["amd", "sysfs_root"]),
    ("GPUKILL_SYSFS_ROOT", &["intel", "sysfs_root"]),
    ("GPUKILL_NVIDIA_ENABLED", &["nvidia", "enabled"]),
    ("GPUKILL_NVIDIA_LIBRARY", &["nvidia", "library"]),
    ("GPUKILL_NVIDIA_SYSFS_ROOT", &["nvidia", "sysfs_root"]),
    ("GPUKILL_NVIDIA_SMI", &["nvidia", "smi"]),
    ("GPUKILL_NVIDIA_RESET_TIMEOUT", &["nvidia", "reset_timeout"]),
    ("GPUKILL_AMD_ENABLED", &["amd", "enabled"]),
    ("GPUKILL_AMD_SYSFS_ROOT", &["amd", "sysfs_root"]),
    ("GPUKILL_AMD_IDS_FILE", &["amd", "ids_file"]),
    ("GPUKILL_AMD_SMI", &["amd", "smi"]),
    ("GPUKILL_AMD_ROCM_SMI", &["amd", "rocm_smi"]),
    ("GPUKILL_AMD_RESET_TIMEOUT", &["amd", "reset_timeout"]),
    ("GPUKILL_INTEL_ENABLED", &["intel", "enabled"]),
    ("GPUKILL_INTEL_SYSFS_ROOT", &["intel", "sysfs_root"]),
    ("GPUKILL_PROCFS_ROOT", &["procfs_root"]),
    ("GPUKILL_PCI_IDS", &["pci_ids"]),
    ("GPUKILL_METRICS_LISTEN", &["metrics", "listen"]),
    ("GPUKILL_NODE_NAME", &["node", "name"]),
    ("GPUKILL_TCP_LISTEN", &["tcp", "listen"]),
    ("GPUKILL_TCP_CERT", &["tcp", "cert"]),
    ("GPUKILL_TCP_KEY", &["tcp", "key"]),
    ("GPUKILL_TCP_CLIENT_CA", &["tcp", "client_ca"]),
    ("GPUKILL_TCP_TOKENS", &["tcp", "tokens"]),
    (
        "GPUKILL_TCP_INSECURE_LOOPBACK",
        &["tcp", "insecure_loopback"],
    ),
    ("GPUKILL_TCP_INSECURE_ROLE", &["tcp", "insecure_role"]),
    ("GPUKILL_TCP_PRINCIPALS", &["tcp", "principals"]),
    ("GPUKILL_CLUSTER_ROLE", &["cluster", "role"]),
    ("GPUKILL_CLUSTER_NODES", &["cluster", "nodes"]),
    ("GPUKILL_CLUSTER_COORDINATOR", &["cluster", "coordinator"]),
    ("GPUKILL_CLUSTER_ADVERTISE", &["cluster", "advertise"]),
    (
        "GPUKILL_CLUSTER_HEARTBEAT_INTERVAL",
        &["cluster", "heartbeat_interval"],
    ),
    ("GPUKILL_CLUSTER_NODE_TIMEOUT", &["cluster", "node_timeout"]),
    ("GPUKILL_CLUSTER_DEADLINE", &["cluster", "deadline"]),
    ("GPUKILL_CLUSTER_TOKEN_FILE", &["cluster", "token_file"]),
    ("GPUKILL_CLUSTER_CERT", &["cluster", "cert"]),
    ("GPUKILL_CLUSTER_KEY", &["cluster", "key"]),
    ("GPUKILL_CLUSTER_CA", &["cluster", "ca"]),
    ("GPUKILL_UPLOAD_URL", &["upload", "url"]),
    ("GPUKILL_UPLOAD_TOKEN_FILE", &["upload", "token_file"]),
    ("GPUKILL_UPLOAD_CA", &["upload", "ca"]),
    ("GPUKILL_UPLOAD_OFFLINE", &["upload", "offline"]),
    ("GPUKILL_UPLOAD_MAX_ATTEMPTS", &["upload", "max_attempts"]),
    (
        "GPUKILL_UPLOAD_MAX_OUTBOX_HOURS",
        &["upload", "max_outbox_hours"],
    ),
    (
        "GPUKILL_UPLOAD_DELIVERED_RETENTION",
        &["upload", "delivered_retention"],
    ),
    ("GPUKILL_UPLOAD_RETRY_MIN", &["upload", "retry_min"]),
    ("GPUKILL_UPLOAD_RETRY_MAX", &["upload", "retry_max"]),
    ("GPUKILL_UPLOAD_TIMEOUT", &["upload", "timeout"]),
    ("GPUKILL_INGEST_ENABLED", &["ingest", "enabled"]),
    ("GPUKILL_INGEST_LISTEN", &["ingest", "listen"]),
    ("GPUKILL_INGEST_TOKENS", &["ingest", "tokens"]),
    ("GPUKILL_INGEST_CERT", &["ingest", "cert"]),
    ("GPUKILL_INGEST_KEY", &["ingest", "key"]),
    (
        "GPUKILL_RESERVATIONS_UNRESERVED_THRESHOLD",
        &["reservations", "unreserved_threshold"],
    ),
    (
        "GPUKILL_RESERVATIONS_DEFAULT_DURATION",
        &["reservations", "default_duration"],
    ),
    (
        "GPUKILL_RESERVATIONS_MAX_DURATION",
        &["reservations", "max_duration"],
    ),
    (
        "GPUKILL_RESERVATIONS_HEARTBEAT_INTERVAL",
        &["reservations", "heartbeat_interval"],
    ),
    (
        "GPUKILL_RESERVATIONS_HEARTBEAT_TIMEOUT",
        &["reservations", "heartbeat_timeout"],
    ),
    (
        "GPUKILL_RESERVATIONS_MAX_QUEUED_PER_USER",
        &["reservations", "max_queued_per_user"],
    ),
    (
        "GPUKILL_RESERVATIONS_MAX_QUEUED",
        &["reservations", "max_queued"],
    ),
    (
        "GPUKILL_HEALTH_CORRECTABLE_ERRORS",
        &["health", "correctable_errors"],
    ),
    (
        "GPUKILL_HEALTH_CORRECTABLE_WINDOW",
        &["health", "correctable_window"],
    ),
    (
        "GPUKILL_HEALTH_WARN_ON_THROTTLE",
        &["health", "warn_on_throttle"],
    ),
    ("GPUKILL_HEALTH_ON_CRITICAL", &["health", "on_critical"]),
    (
        "GPUKILL_LIMITS_CONNECTIONS_PER_UID",
        &["limits", "connections_per_uid"],
    ),
    (
        "GPUKILL_LIMITS_CONNECTIONS_PER_ADDRESS",
        &["limits", "connections_per_address"],
    ),
    (
        "GPUKILL_LIMITS_MAX_CONNECTIONS",
        &["limits", "max_connections"],
    ),
    (
        "GPUKILL_LIMITS_HANDSHAKE_TIMEOUT",
        &["limits", "handshake_timeout"],
    ),
    ("GPUKILL_LIMITS_IDLE_TIMEOUT", &["limits", "idle_timeout"]),
    ("GPUKILL_LIMITS_WRITE_TIMEOUT", &["limits", "write_timeout"]),
    (
        "GPUKILL_LIMITS_MAX_REQUEST_SIZE",
        &["limits", "max_request_size"],
    ),
    (
        "GPUKILL_LIMITS_STREAMS_PER_CONNECTION",
        &["limits", "streams_per_connection"],
    ),
    // The name the NVML library override is documented under.
    ("GPUKILL_NVML_LIBRARY", &["nvidia", "library"]),
];

/// What the configuration is built from, lowest precedence first after the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// The file, and whether it was named explicitly (a missing default file is fine).
    pub file: Option<(PathBuf, bool)>,
    /// Environment variables (all of them; only `GPUKILL_*` ones listed above are used).
    pub env: Vec<(String, String)>,
    /// Command-line overrides: (option name, key path, value).
    pub cli: Vec<(String, &'static [&'static str], toml::Value)>,
}

impl Config {
    /// Builds the configuration from its sources, checking each layer as it is added so an
    /// error names the source that caused it.
    pub fn load(sources: Sources) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        if let Some((path, explicit)) = &sources.file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let origin = format!("config file {}", path.display());
                    table = text
                        .parse::<toml::Table>()
                        .map_err(|error| ConfigError::Parse {
                            origin: origin.clone(),
                            message: error.to_string(),
                        })?;
                    check(&table, &origin)?;
                    for key in table.keys() {
                        origins.insert(key.clone(), origin.clone());
                    }
                }
                Err(error) if !explicit && error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        // In the table's order, whatever the environment's: a variable may set several keys
        // (GPUKILL_SYSFS_ROOT), and a more specific one set later wins.
        for (name, key) in ENV_VARS {
            for (_, value) in sources.env.iter().filter(|(var, _)| var == name) {
                let origin = format!("environment variable {name}={value}");
                set(&mut table, key, parse_env_value(value));
                check(&table, &origin)?;
                origins.insert(key[0].to_string(), origin);
            }
        }
        for (option, key, value) in &sources.cli {
            let origin = format!("command-line option {option}");
            set(&mut table, key, value.clone());
            check(&table, &origin)?;
            origins.insert(key[0].to_string(), origin);
        }
        let config = check(&table, "configuration")?;
        config.validate(&|key: &str| {
            origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the default".to_string())
        })?;
        Ok(config)
    }
}

fn check(table: &toml::Table, origin: &str) -> Result<Config, ConfigError> {
    Config::deserialize(table.clone()).map_err(|error| ConfigError::Parse {
        origin: origin.to_string(),
        message: error.to_string().trim_end().to_string(),
    })
}

/// An environment value is read as a TOML value when it is one (`100`, `true`,
/// `["root", "slurm"]`, `{ ops = "admin" }`), and as a string otherwise (`2s`,
/// `/run/x.sock`, `0666`).
fn parse_env_value(text: &str) -> toml::Value {
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set(table: &mut toml::Table, key: &[&str], value: toml::Value) {
    match key {
        [] => {}
        [last] => {
            table.insert((*last).to_string(), value);
        }
        [section, rest @ ..] => {
            let entry = table
                .entry((*section).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set(inner, rest, value);
            }
        }
    }
}
