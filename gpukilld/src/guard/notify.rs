//! Telling people about violations and GPU health: an optional webhook (a JSON POST per
//! violation, per guard action and per GPU health event, sent from its own task with a bounded queue and bounded retries, so a slow
//! or dead receiver never delays evaluation) and optional messages on the offending user's
//! terminals (as `write(1)` would: every `/dev/pts/N` the user owns).
//!
//! Only `http://` webhooks are sent (no TLS in gpukilld yet): point it at a relay on the
//! node or the cluster network, or at a receiver that speaks plain HTTP.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::units::duration;

/// `[notify]` in the policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `http://host[:port]/path` that receives one JSON POST per notice; unset: none.
    pub webhook: Option<String>,
    /// How long one POST may take.
    #[serde(with = "duration")]
    pub webhook_timeout: Duration,
    /// Attempts after the first failed one (1 s, 2 s, 4 s ... apart).
    pub webhook_retries: u32,
    /// Write warnings and kills to the offending user's terminals.
    pub terminals: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_retries: 3,
            terminals: false,
        }
    }
}

/// Where a webhook goes, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Webhook {
    /// Parses `http://host[:port][/path]`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Webhook, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "webhook {url:?}: https is not supported yet (gpukilld has no TLS); use an http:// receiver or relay"
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("webhook {url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("webhook {url:?}: port {port:?} is not a port number"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("webhook {url:?} names no host"));
        }
        Ok(Webhook {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// What the webhook receives, told apart by `kind`: `guard` (a violation or an action) or
/// `health` (a GPU's health changed, or it reported an Xid).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// A guard violation or action.
    Guard(Notice),
    /// A GPU health event.
    Health(HealthNotice),
}

impl From<Notice> for Payload {
    fn from(notice: Notice) -> Self {
        Payload::Guard(notice)
    }
}

impl From<HealthNotice> for Payload {
    fn from(notice: HealthNotice) -> Self {
        Payload::Health(notice)
    }
}

/// A GPU health event, as the webhook receives it: the same event `events --type health`
/// lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthNotice {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The node.
    pub host: String,
    /// The GPU's index on the node.
    pub gpu_index: u32,
    /// Its UUID, when it has one.
    pub uuid: Option<String>,
    /// Its health now: ok, warning, critical, lost or unknown.
    pub state: String,
    /// Its health before, when this is a change (absent for an Xid, and for a GPU first
    /// seen unhealthy).
    pub previous: Option<String>,
    /// Why, worst first.
    pub reasons: Vec<String>,
    /// The Xid this event is about, for an Xid.
    pub xid: Option<NoticeXid>,
    /// One line for people.
    pub description: String,
}

/// An Xid of a health notice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoticeXid {
    /// The Xid code.
    pub code: u64,
    /// What it usually means.
    pub meaning: String,
}

/// One notice: a violation or an action, as the webhook receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The node.
    pub host: String,
    /// dry-run, soft or hard.
    pub mode: String,
    /// The rule, e.g. memory_per_process.
    pub rule: String,
    /// The table that set the limit.
    pub policy: String,
    /// warned, would_act, rate_limited, or a kill outcome (terminated, killed, protected,
    /// still_running, already_gone).
    pub outcome: String,
    /// One line for people.
    pub description: String,
    /// The value measured.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// bytes, percent, seconds, count, gpu or score.
    pub unit: String,
    /// The processes concerned.
    pub processes: Vec<NoticeProcess>,
}

/// A process of a notice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoticeProcess {
    /// The pid.
    pub pid: u32,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's name.
    pub user: String,
    /// The process name.
    pub name: String,
    /// The GPU.
    pub gpu_index: u32,
}

/// What the webhook task has done, for tests and status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Notices delivered (a 2xx answer).
    pub delivered: std::sync::atomic::AtomicU64,
    /// Notices given up on after every retry, or dropped because the queue was full.
    pub lost: std::sync::atomic::AtomicU64,
}

/// Notices waiting for the webhook task.
const QUEUE: usize = 256;

/// The sending side of the webhook task.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: mpsc::Sender<(NotifyConfig, Payload)>,
    counters: std::sync::Arc<Counters>,
}

impl Notifier {
    /// Starts the webhook task.
    pub fn start() -> Notifier {
        let (queue, notices) = mpsc::channel(QUEUE);
        let counters = std::sync::Arc::new(Counters::default());
        tokio::spawn(deliver(notices, std::sync::Arc::clone(&counters)));
        Notifier { queue, counters }
    }

    /// Queues `notice` for the webhook of `config`, if it has one; never waits. A full queue
    /// drops the notice and counts it.
    pub fn send(&self, config: &NotifyConfig, notice: impl Into<Payload>) {
        if config.webhook.is_none() {
            return;
        }
        if self
            .queue
            .try_send((config.clone(), notice.into()))
            .is_err()
        {
            self.counters
                .lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("webhook queue full: a notice was dropped");
        }
    }

    /// What the webhook task has done.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The webhook task: one notice at a time, each with its retries.
async fn deliver(
    mut notices: mpsc::Receiver<(NotifyConfig, Payload)>,
    counters: std::sync::Arc<Counters>,
) {
    use std::sync::atomic::Ordering;
    while let Some((config, notice)) = notices.recv().await {
        let Some(url) = &config.webhook else { continue };
        let webhook = match Webhook::parse(url) {
            Ok(webhook) => webhook,
            Err(error) => {
                tracing::warn!(%error, "webhook not sent");
                counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let body = match serde_json::to_vec(&notice) {
            Ok(body) => Bytes::from(body),
            Err(_) => continue,
        };
        let mut delay = Duration::from_secs(1);
        let mut attempt = 0;
        loop {
            let sent =
                tokio::time::timeout(config.webhook_timeout, post(&webhook, body.clone())).await;
            let error = match sent {
                Ok(Ok(())) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(error)) => error,
                Err(_) => format!(
                    "no answer within {}",
                    humantime::format_duration(config.webhook_timeout)
                ),
            };
            if attempt >= config.webhook_retries {
                tracing::warn!(webhook = %url, %error, attempts = attempt + 1, "webhook given up");
                counters.lost.fetch_add(1, Ordering::Relaxed);
                break;
            }
            tracing::debug!(webhook = %url, %error, "webhook failed; retrying");
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
}

/// One POST; Ok on a 2xx answer.
async fn post(webhook: &Webhook, body: Bytes) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((webhook.host.as_str(), webhook.port))
        .await
        .map_err(|error| {
            format!(
                "cannot connect to {}:{}: {error}",
                webhook.host, webhook.port
            )
        })?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::post(webhook.path.as_str())
        .header(
            hyper::header::HOST,
            format!("{}:{}", webhook.host, webhook.port),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("gpukilld/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", response.status()))
    }
}

/// Writes `message` to every terminal (`/dev/pts/N`) that `uid` owns, without waiting on
/// any (non-blocking). Returns the terminals written to. Blocking (file system).
pub fn tell_user(uid: u32, message: &str) -> Vec<PathBuf> {
    tell_user_in(std::path::Path::new("/dev/pts"), uid, message)
}

fn tell_user_in(dir: &std::path::Path, uid: u32, message: &str) -> Vec<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut told = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_terminal = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_terminal || entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&path);
        if let Ok(mut terminal) = opened
            && terminal
                .write_all(format!("\r\n*** gpukilld: {message}\r\n").as_bytes())
                .is_ok()
        {
            told.push(path);
        }
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert_eq!(
            Webhook::parse("http://127.0.0.1:9000/hooks/gpu?x=1"),
            Ok(Webhook {
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/hooks/gpu?x=1".into()
            })
        );
        assert_eq!(
            Webhook::parse("http://alerts.lab"),
            Ok(Webhook {
                host: "alerts.lab".into(),
                port: 80,
                path: "/".into()
            })
        );
        assert_eq!(
            Webhook::parse("http://[::1]:8080/x").map(|w| (w.host, w.port)),
            Ok(("::1".into(), 8080))
        );
        assert!(
            Webhook::parse("https://hooks.slack.com/x")
                .unwrap_err()
                .contains("https is not supported yet")
        );
        assert!(
            Webhook::parse("ftp://x")
                .unwrap_err()
                .contains("must start with http://")
        );
        assert!(
            Webhook::parse("http://x:port/")
                .unwrap_err()
                .contains("\"port\" is not a port number")
        );
    }

    #[test]
    fn a_message_goes_to_every_terminal_the_user_owns_and_no_other() {
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        for (name, uid) in [("3", 4242), ("7", 4242), ("9", 0), ("ptmx", 4242)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            if nix::unistd::geteuid().is_root() {
                chown(&path, Some(uid), None).unwrap();
            }
        }
        let owner = if nix::unistd::geteuid().is_root() {
            4242
        } else {
            nix::unistd::geteuid().as_raw()
        };
        let mut told = tell_user_in(dir.path(), owner, "pid 42 was killed");
        told.sort();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(told, [dir.path().join("3"), dir.path().join("7")]);
            assert_eq!(std::fs::read_to_string(dir.path().join("9")).unwrap(), "");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("3")).unwrap(),
            "\r\n*** gpukilld: pid 42 was killed\r\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ptmx")).unwrap(),
            ""
        );
    }
}
