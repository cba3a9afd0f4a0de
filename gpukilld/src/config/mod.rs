//! Daemon configuration: one serde struct with per-field defaults and
//! `deny_unknown_fields`, layered as defaults < file < environment (`GPUKILL_*`) < command
//! line. Every error names the key and where its value came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod health;
mod limits;
mod remote;
mod reservations;
mod sources;
mod upload;
mod vendors;

pub use health::{HealthConfig, OnCritical, THROTTLE_NAMES};
pub use limits::LimitsConfig;
pub use remote::{
    ClusterConfig, ClusterRole, DaemonUrl, NodeConfig, Role, StaticNode, TcpConfig, parse_address,
    parse_daemon_url,
};
pub use reservations::ReservationsConfig;
pub use sources::Sources;
pub use upload::{
    IngestConfig, IngestPrincipal, IngestRole, UploadConfig, UploadUrl, is_node_id,
    parse_upload_url,
};
pub use vendors::{AmdConfig, DEFAULT_AMDGPU_IDS, DEFAULT_NVML_LIBRARY, IntelConfig, NvidiaConfig};

/// Where the daemon looks for its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/gpukill/gpukilld.toml";

/// The effective configuration of gpukilld.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of the Unix socket; by default `/run/gpukill/gpukilld.sock` as root and
    /// `$XDG_RUNTIME_DIR/gpukill/gpukilld.sock` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// File mode of the socket. Every request is authorized from the caller's kernel
    /// credentials, so the socket may be world-connectable.
    pub socket_mode: SocketMode,
    /// Time between two samples (100ms to 1h).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How long a tick waits for a vendor library before it publishes the last data as stale.
    #[serde(with = "duration")]
    pub vendor_timeout: Duration,
    /// Time covered by one stored history row per GPU (means and maxima over the ticks in
    /// it); 1s to 1h.
    #[serde(with = "duration")]
    pub persist_interval: Duration,
    /// Snapshots kept in memory; by default one hour of ticks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_capacity: Option<usize>,
    /// Where the daemon keeps its SQLite store (audit events).
    pub state_dir: PathBuf,
    /// Members of this group (and root) are admins: they may act on any unprotected process.
    pub admin_group: String,
    /// Users whose processes are never signalled. When not set: `["root"]`, except that root
    /// itself may act on root's processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_users: Option<Vec<String>>,
    /// Regular expressions; a process whose name or command line matches one is never
    /// signalled, whoever asks.
    pub protected_processes: Vec<String>,
    /// The guard's policy file (see docs/guard.md); without it the guard is off. Re-read
    /// on SIGHUP and whenever it changes.
    pub guard_policy: PathBuf,
    /// How long stored history is kept.
    pub retention: RetentionConfig,
    /// The NVIDIA backend.
    pub nvidia: NvidiaConfig,
    /// The AMD backend.
    pub amd: AmdConfig,
    /// The Intel backend.
    pub intel: IntelConfig,
    /// Where procfs is mounted, for the walk that finds AMD and Intel GPU clients in
    /// `/proc/PID/fdinfo` (a container may see the host's at another path). Who a process
    /// is (uid, start time) and signals always use this host's own /proc.
    pub procfs_root: PathBuf,
    /// The PCI ID database that names AMD and Intel GPUs without a product name in sysfs;
    /// by default the first of /usr/share/hwdata/pci.ids and /usr/share/misc/pci.ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_ids: Option<PathBuf>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// This node's identity in a cluster.
    pub node: NodeConfig,
    /// The authenticated TCP listener.
    pub tcp: TcpConfig,
    /// The coordinator role, and registration with one.
    pub cluster: ClusterConfig,
    /// Sending hourly usage to a central server.
    pub upload: UploadConfig,
    /// Receiving hourly usage from nodes.
    pub ingest: IngestConfig,
    /// GPU reservations.
    pub reservations: ReservationsConfig,
    /// Bounds on what callers can make the daemon hold.
    pub limits: LimitsConfig,
    /// GPU health: warning thresholds and what a critical GPU leads to.
    pub health: HealthConfig,
}

/// `[retention]`: how long each kind of stored data is kept (pruned hourly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw per-interval GPU samples.
    #[serde(with = "duration")]
    pub samples: Duration,
    /// Process sessions (by when they were last seen).
    #[serde(with = "duration")]
    pub sessions: Duration,
    /// Hourly rollups per GPU and per user.
    #[serde(with = "duration")]
    pub rollups: Duration,
    /// Audit events.
    #[serde(with = "duration")]
    pub events: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            samples: Duration::from_secs(30 * DAY),
            sessions: Duration::from_secs(90 * DAY),
            rollups: Duration::from_secs(365 * DAY),
            events: Duration::from_secs(365 * DAY),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP: `IP:PORT`,
    /// `[IPv6]:PORT` or `localhost:PORT`. Loopback only: gpukilld does not authenticate HTTP
    /// clients yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The address to serve on, when the endpoint is on (validation refuses an address that
    /// does not parse or is not loopback).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
            .as_deref()
            .and_then(|text| parse_listen(text).ok())
    }
}

/// Parses a `[metrics] listen` value (`127.0.0.1:9400`, `[::1]:9400`, `localhost:9400`,
/// which is 127.0.0.1) and refuses any address that is not loopback.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let address = parse_address(text)?;
    if !address.ip().is_loopback() {
        return Err(
            "is not a loopback address: gpukilld does not authenticate HTTP clients \
                    yet, so the metrics endpoint may listen only on 127.0.0.0/8, ::1 or \
                    localhost (scrape it through a local agent or an authenticating proxy)"
                .to_string(),
        );
    }
    Ok(address)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: None,
            socket_mode: SocketMode(0o666),
            poll_interval: Duration::from_secs(2),
            vendor_timeout: Duration::from_secs(1),
            persist_interval: Duration::from_secs(10),
            ring_capacity: None,
            state_dir: PathBuf::from("/var/lib/gpukill"),
            admin_group: "gpukill".to_string(),
            protected_users: None,
            protected_processes: vec![
                "^(Xorg|Xwayland|gnome-shell|kwin_wayland|sddm|gdm|gdm3)$".to_string(),
                "^(nvidia-persistenced|nv-hostengine|nvidia-smi|dcgm-exporter)$".to_string(),
            ],
            guard_policy: PathBuf::from("/etc/gpukill/guard.toml"),
            retention: RetentionConfig::default(),
            nvidia: NvidiaConfig::default(),
            amd: AmdConfig::default(),
            intel: IntelConfig::default(),
            procfs_root: PathBuf::from("/proc"),
            pci_ids: None,
            metrics: MetricsConfig::default(),
            node: NodeConfig::default(),
            tcp: TcpConfig::default(),
            cluster: ClusterConfig::default(),
            upload: UploadConfig::default(),
            ingest: IngestConfig::default(),
            reservations: ReservationsConfig::default(),
            health: HealthConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// A Unix file mode, written in octal (`"0666"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u32),
        }
        let mode = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => {
                u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid file mode {text:?}: expected octal digits such as \"0666\""
                    ))
                })?
            }
            Raw::Number(number) => number,
        };
        if mode > 0o777 {
            return Err(serde::de::Error::custom(format!(
                "file mode {mode:o} is out of range: expected 0000 to 0777"
            )));
        }
        Ok(SocketMode(mode))
    }
}

pub(crate) use crate::units::duration;

/// Configuration errors. Each names the offending key or file and where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A source's text is not valid TOML, or holds an unknown key or a badly typed value.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, environment variable or option the value came from.
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{key} = {value} (from {origin}) {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Its value as written.
        value: String,
        /// The file, environment variable or option the value came from.
        origin: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl Config {
    fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let in_range = |key: &'static str, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                Err(ConfigError::Invalid {
                    key,
                    value: humantime::format_duration(value).to_string(),
                    origin: origin(key),
                    message: format!(
                        "is out of range: use {} to {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                })
            } else {
                Ok(())
            }
        };
        in_range(
            "poll_interval",
            self.poll_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        in_range(
            "persist_interval",
            self.persist_interval,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        in_range(
            "vendor_timeout",
            self.vendor_timeout,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        if let Some(capacity) = self.ring_capacity
            && !(1..=10_000_000).contains(&capacity)
        {
            return Err(ConfigError::Invalid {
                key: "ring_capacity",
                value: capacity.to_string(),
                origin: origin("ring_capacity"),
                message: "is out of range: use 1 to 10000000 snapshots".to_string(),
            });
        }
        for (key, value) in [
            ("retention.samples", self.retention.samples),
            ("retention.sessions", self.retention.sessions),
            ("retention.rollups", self.retention.rollups),
            ("retention.events", self.retention.events),
        ] {
            in_range(
                key,
                value,
                Duration::from_secs(3600),
                Duration::from_secs(100 * 365 * 86400),
            )?;
        }
        for pattern in &self.protected_processes {
            if let Err(error) = regex::Regex::new(pattern) {
                return Err(ConfigError::Invalid {
                    key: "protected_processes",
                    value: format!("{pattern:?}"),
                    origin: origin("protected_processes"),
                    message: format!("is not a valid regular expression: {error}"),
                });
            }
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "state_dir",
                value: self.state_dir.display().to_string(),
                origin: origin("state_dir"),
                message: "must be an absolute path".to_string(),
            });
        }
        if let Some(socket) = &self.socket
            && !socket.is_absolute()
        {
            return Err(ConfigError::Invalid {
                key: "socket",
                value: socket.display().to_string(),
                origin: origin("socket"),
                message: "must be an absolute path".to_string(),
            });
        }
        if let Some(listen) = &self.metrics.listen
            && let Err(message) = parse_listen(listen)
        {
            return Err(ConfigError::Invalid {
                key: "metrics.listen",
                value: listen.clone(),
                origin: origin("metrics"),
                message,
            });
        }
        if let Some(name) = &self.node.name
            && (name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/'))
        {
            return Err(ConfigError::Invalid {
                key: "node.name",
                value: format!("{name:?}"),
                origin: origin("node"),
                message: "is not a node name: use letters, digits, '-', '_' or '.'".to_string(),
            });
        }
        self.tcp.validate(origin)?;
        self.cluster.validate(&self.tcp, origin)?;
        self.upload.validate(origin)?;
        self.ingest.validate(origin)?;
        self.reservations.validate(origin)?;
        self.health.validate(origin)?;
        self.limits.validate(origin)?;
        Ok(())
    }

    /// The socket path in force for a daemon run by `euid`.
    pub fn socket_path(&self, euid: u32, xdg_runtime_dir: Option<&Path>) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| gpukill_proto::daemon_socket_path(euid, xdg_runtime_dir))
    }

    /// Snapshots the ring keeps: the configured number, or one hour of ticks.
    pub fn ring_capacity(&self) -> usize {
        self.ring_capacity.unwrap_or_else(|| {
            let per_hour = Duration::from_secs(3600).as_millis() / self.poll_interval.as_millis();
            usize::try_from(per_hour).unwrap_or(usize::MAX).max(1)
        })
    }

    /// The configuration with every default that depends on the environment filled in, as
    /// `--print-config` shows it.
    pub fn effective(&self, euid: u32, xdg_runtime_dir: Option<&Path>) -> Config {
        let mut effective = self.clone();
        effective.socket = Some(self.socket_path(euid, xdg_runtime_dir));
        effective.ring_capacity = Some(self.ring_capacity());
        effective.nvidia.library = Some(
            self.nvidia
                .library
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NVML_LIBRARY)),
        );
        effective
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }

    /// The keys whose values differ between `self` and `other` (`section.key` inside a
    /// section), in alphabetical order.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let table = |config: &Config| toml::Table::try_from(config).unwrap_or_default();
        let (old, new) = (table(self), table(other));
        let mut changed = Vec::new();
        let keys: Vec<&String> = old
            .keys()
            .chain(new.keys().filter(|k| !old.contains_key(*k)))
            .collect();
        for key in keys {
            match (old.get(key), new.get(key)) {
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    for inner in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                        if a.get(inner) != b.get(inner) {
                            changed.push(format!("{key}.{inner}"));
                        }
                    }
                }
                (a, b) if a != b => changed.push(key.clone()),
                _ => {}
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn changed_keys_name_top_level_and_section_keys() {
        let old = Config::default();
        let mut new = Config {
            poll_interval: Duration::from_secs(5),
            admin_group: "wheel".into(),
            ..Config::default()
        };
        new.retention.events = Duration::from_secs(3600);
        assert_eq!(
            old.changed_keys(&new),
            ["admin_group", "poll_interval", "retention.events"]
        );
        assert!(old.changed_keys(&old).is_empty());
    }

    use super::sources::ENV_VARS;
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn load_file(text: &str) -> (Result<Config, ConfigError>, PathBuf) {
        let file = file(text);
        let path = file.path().to_path_buf();
        let result = Config::load(Sources {
            file: Some((path.clone(), true)),
            ..Sources::default()
        });
        (result, path)
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit_and_parse_back() {
        for (duration, text) in [
            (Duration::from_secs(90 * 86_400), "90days"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(duration::format(duration), text);
            assert_eq!(humantime::parse_duration(text).expect("parses"), duration);
        }
    }

    #[test]
    fn defaults() {
        let config = Config::load(Sources::default()).expect("defaults");
        assert_eq!(config.poll_interval, Duration::from_secs(2));
        assert_eq!(config.ring_capacity(), 1800);
        assert_eq!(config.socket_mode, SocketMode(0o666));
    }

    #[test]
    fn file_values_and_durations() {
        let (config, _) = load_file(
            "poll_interval = \"500ms\"\nsocket_mode = \"0660\"\n[nvidia]\nlibrary = \"/opt/libnvml.so\"\n",
        );
        let config = config.expect("valid");
        assert_eq!(config.poll_interval, Duration::from_millis(500));
        assert_eq!(config.ring_capacity(), 7200);
        assert_eq!(config.socket_mode, SocketMode(0o660));
        assert_eq!(
            config.nvidia.library,
            Some(PathBuf::from("/opt/libnvml.so"))
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (error, path) = load_file("pol_interval = \"2s\"\n");
        let message = error.expect_err("unknown key").to_string();
        assert!(message.contains("pol_interval"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn bad_duration_names_the_value() {
        let (error, _) = load_file("poll_interval = \"2 parsecs\"\n");
        let message = error.expect_err("bad duration").to_string();
        assert!(
            message.contains("2 parsecs") && message.contains("poll_interval"),
            "{message}"
        );
    }

    #[test]
    fn out_of_range_names_key_and_origin() {
        let error = Config::load(Sources {
            env: vec![("GPUKILL_POLL_INTERVAL".into(), "10ms".into())],
            ..Sources::default()
        })
        .expect_err("too fast");
        let message = error.to_string();
        assert!(message.contains("poll_interval = 10ms"), "{message}");
        assert!(message.contains("GPUKILL_POLL_INTERVAL"), "{message}");
    }

    #[test]
    fn a_backends_own_sysfs_root_wins_over_the_shared_one_in_any_order() {
        let env = [
            ("GPUKILL_NVIDIA_SYSFS_ROOT", "/host/sys"),
            ("GPUKILL_SYSFS_ROOT", "/fixture/sys"),
        ];
        for order in [env.to_vec(), env.iter().rev().copied().collect()] {
            let config = Config::load(Sources {
                env: order
                    .iter()
                    .map(|(name, value)| ((*name).into(), (*value).into()))
                    .collect(),
                ..Sources::default()
            })
            .expect("valid");
            assert_eq!(config.nvidia.sysfs_root, PathBuf::from("/host/sys"));
            assert_eq!(config.amd.sysfs_root, PathBuf::from("/fixture/sys"));
            assert_eq!(config.intel.sysfs_root, PathBuf::from("/fixture/sys"));
        }
    }

    #[test]
    fn precedence_is_cli_over_env_over_file() {
        let config_file =
            file("poll_interval = \"5s\"\nvendor_timeout = \"3s\"\nring_capacity = 7\n");
        let config = Config::load(Sources {
            file: Some((config_file.path().to_path_buf(), true)),
            env: vec![
                ("GPUKILL_POLL_INTERVAL".into(), "4s".into()),
                ("GPUKILL_VENDOR_TIMEOUT".into(), "2s".into()),
                ("GPUKILL_NVML_LIBRARY".into(), "/x/libnvidia-ml.so".into()),
                ("UNRELATED".into(), "1".into()),
            ],
            cli: vec![(
                "--poll-interval".into(),
                &["poll_interval"],
                toml::Value::String("3s".into()),
            )],
        })
        .expect("valid");
        assert_eq!(config.poll_interval, Duration::from_secs(3));
        assert_eq!(config.vendor_timeout, Duration::from_secs(2));
        assert_eq!(config.ring_capacity, Some(7));
        assert_eq!(
            config.nvidia.library,
            Some(PathBuf::from("/x/libnvidia-ml.so"))
        );
    }

    #[test]
    fn a_bad_protected_process_regex_names_the_key() {
        let (error, _) = load_file("protected_processes = [\"(xmrig\"]\n");
        let message = error.expect_err("bad regex").to_string();
        assert!(
            message.contains("protected_processes") && message.contains("(xmrig"),
            "{message}"
        );
    }

    #[test]
    fn protected_users_from_the_environment_as_a_toml_array() {
        let config = Config::load(Sources {
            env: vec![(
                "GPUKILL_PROTECTED_USERS".into(),
                "[\"root\", \"slurm\"]".into(),
            )],
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(
            config.protected_users,
            Some(vec!["root".to_string(), "slurm".to_string()])
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let missing = PathBuf::from("/nonexistent/gpukilld.toml");
        let error = Config::load(Sources {
            file: Some((missing.clone(), true)),
            ..Sources::default()
        })
        .expect_err("explicit file must exist");
        assert!(error.to_string().contains("/nonexistent/gpukilld.toml"));
        Config::load(Sources {
            file: Some((missing, false)),
            ..Sources::default()
        })
        .expect("default file may be absent");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = Config::default().effective(0, None);
        let text = config.to_toml();
        assert!(
            text.contains("socket = \"/run/gpukill/gpukilld.sock\""),
            "{text}"
        );
        let reread = file(&text);
        let (again, _) = (
            Config::load(Sources {
                file: Some((reread.path().to_path_buf(), true)),
                ..Sources::default()
            }),
            (),
        );
        assert_eq!(again.expect("printed config loads"), config);
    }

    #[test]
    fn every_key_has_an_environment_variable() {
        let config = Config::default().effective(0, None);
        let table: toml::Table = toml::from_str(&config.to_toml()).expect("toml");
        for (key, value) in &table {
            let paths: Vec<Vec<String>> = match value {
                toml::Value::Table(section) => section
                    .keys()
                    .map(|inner| vec![key.clone(), inner.clone()])
                    .collect(),
                _ => vec![vec![key.clone()]],
            };
            for path in paths {
                let var = format!("GPUKILL_{}", path.join("_").to_uppercase());
                assert!(
                    ENV_VARS
                        .iter()
                        .any(|(name, key)| *name == var && *key == path.as_slice()),
                    "{var} is missing from ENV_VARS"
                );
            }
        }
    }

    #[test]
    fn metrics_listen_takes_loopback_addresses_only() {
        let listen = |value: &str| {
            Config::load(Sources {
                env: vec![("GPUKILL_METRICS_LISTEN".into(), value.into())],
                ..Sources::default()
            })
        };
        for (value, address) in [
            ("127.0.0.1:9400", "127.0.0.1:9400"),
            ("127.8.9.10:0", "127.8.9.10:0"),
            ("[::1]:9400", "[::1]:9400"),
            ("localhost:9400", "127.0.0.1:9400"),
        ] {
            let config = listen(value).expect("loopback is accepted");
            assert_eq!(
                config.metrics.listen_addr(),
                Some(address.parse().expect("address")),
                "{value}"
            );
        }
        for value in [
            "0.0.0.0:9400",
            "10.1.2.3:9400",
            "[::]:9400",
            "[2001:db8::1]:80",
        ] {
            let message = listen(value).expect_err("not loopback").to_string();
            assert!(
                message.contains(&format!("metrics.listen = {value}"))
                    && message.contains("GPUKILL_METRICS_LISTEN")
                    && message.contains("not a loopback address")
                    && message.contains("authenticate"),
                "{message}"
            );
        }
        for value in ["localhost", ":9400", "example.org:9400", "127.0.0.1:99999"] {
            let message = listen(value).expect_err("not an address").to_string();
            assert!(message.contains("is not an address"), "{message}");
        }
        assert_eq!(
            Config::default().metrics.listen_addr(),
            None,
            "off by default"
        );
    }

    #[test]
    fn metrics_section_from_the_file_names_the_file_when_refused() {
        let (config, _) = load_file("[metrics]\nlisten = \"127.0.0.1:9400\"\n");
        assert_eq!(
            config.expect("valid").metrics.listen.as_deref(),
            Some("127.0.0.1:9400")
        );
        let (error, path) = load_file("[metrics]\nlisten = \"0.0.0.0:9400\"\n");
        let message = error.expect_err("not loopback").to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        let (error, _) = load_file("[metrics]\nport = 9400\n");
        let message = error.expect_err("unknown key").to_string();
        assert!(message.contains("port"), "{message}");
    }
}

#[cfg(test)]
mod shipped_config {
    use super::*;

    /// The sample configuration we ship must load and must say the defaults.
    #[test]
    fn packaging_sample_config_loads_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gpukilld.toml");
        let config = Config::load(Sources {
            file: Some((path, true)),
            ..Sources::default()
        })
        .expect("shipped config loads");
        assert_eq!(config, Config::default());
    }
}
