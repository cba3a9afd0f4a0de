//! For upload tests: a state directory filled with past hours of history (so the daemon
//! rolls them up and queues them at start), and a central server on loopback that stores
//! what it receives idempotently and can fail on command.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gpukilld::store::{GpuSampleRow, SessionUpdate, Store};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const HOUR_MS: i64 = 3_600_000;

/// The start of the hour `hours_ago` hours before the current one.
pub fn past_hour(hours_ago: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - now.rem_euclid(HOUR_MS)) - hours_ago * HOUR_MS
}

/// Writes `gpus` GPUs' samples and one session per (GPU, user) for each hour in `hours`
/// into the store under `state_dir`, as a daemon would have.
pub fn prefill(state_dir: &Path, hours: &[i64], gpus: u32, users: u32) {
    std::fs::create_dir_all(state_dir).unwrap();
    let mut store = Store::open(&state_dir.join("gpukill.db")).unwrap();
    for &hour in hours {
        let mut samples = Vec::new();
        for gpu in 0..gpus {
            for slot in 0..6 {
                samples.push(GpuSampleRow {
                    time_ms: hour + slot * 600_000,
                    gpu_index: gpu,
                    uuid: Some(format!("GPU-{gpu}")),
                    pci_bus_id: Some(format!("00000000:{gpu:02X}:00.0")),
                    name: Some("NVIDIA A100".into()),
                    ticks: 300,
                    util_mean: Some(40.0 + f64::from(gpu)),
                    util_max: Some(90),
                    mem_util_mean: Some(10.0),
                    mem_used_max: Some(8 << 30),
                    mem_total: Some(80 << 30),
                    temp_mean: Some(50.0),
                    temp_max: Some(60),
                    power_mean_mw: Some(250_000.0),
                    power_max_mw: Some(300_000),
                    fan_mean: None,
                    sm_clock_mean: Some(1410.0),
                    mem_clock_mean: Some(1593.0),
                });
            }
        }
        let mut sessions = Vec::new();
        for gpu in 0..gpus {
            for user in 0..users {
                sessions.push(SessionUpdate {
                    pid: 10_000 + gpu * 100 + user,
                    start_time_ms: hour,
                    gpu_index: gpu,
                    first_seen_ms: hour + 1_000,
                    last_seen_ms: hour + HOUR_MS - 1_000,
                    uid: 5_000 + user,
                    user: format!("user{user}"),
                    name: "python".into(),
                    cmdline: "python train.py".into(),
                    container_id: None,
                    container_runtime: None,
                    pod_uid: None,
                    peak_memory_bytes: Some(4 << 30),
                    memory_byte_seconds: 3_000.0 * f64::from(4u32 << 20) * 1024.0,
                    gpu_seconds: 3_000.0,
                    util_seconds: Some(1_500.0),
                });
            }
        }
        store.write_history(&samples, &sessions).unwrap();
    }
}

/// What the server does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Store it and answer 200 with the hash.
    Accept,
    /// Answer with this status and no hash, storing nothing.
    Status(u16),
    /// Store it, then close the connection without answering.
    StoreThenDrop,
    /// Store it and answer 200 with a wrong hash.
    WrongHash,
    /// Store it, then wait this long before answering 200.
    StoreThenStall(Duration),
}

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub key: String,
    pub sha256: String,
    pub behavior: Behavior,
}

#[derive(Default)]
pub struct Central {
    pub script: Mutex<VecDeque<Behavior>>,
    /// key -> (hash, times stored).
    pub stored: Mutex<BTreeMap<String, (String, u32)>>,
    pub deliveries: Mutex<Vec<Delivery>>,
}

impl Central {
    /// Queues behaviors for the next requests (then Accept).
    pub fn script(&self, behaviors: &[Behavior]) {
        self.script
            .lock()
            .unwrap()
            .extend(behaviors.iter().copied());
    }

    /// The hours stored, in the order first stored, with how many times each was stored.
    pub fn stored(&self) -> BTreeMap<String, (String, u32)> {
        self.stored.lock().unwrap().clone()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    fn store(&self, key: &str, sha256: &str) {
        let mut stored = self.stored.lock().unwrap();
        match stored.get_mut(key) {
            // Idempotent: the same content again changes nothing.
            Some((hash, _)) if hash == sha256 => {}
            Some(entry) => *entry = (sha256.to_string(), entry.1 + 1),
            None => {
                stored.insert(key.to_string(), (sha256.to_string(), 1));
            }
        }
    }
}

/// Serves `central` on `address` (port 0: any) until dropped; returns the bound address.
pub async fn serve(
    central: Arc<Central>,
    address: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(address)
        .await
        .expect("bind the central server");
    let bound = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let central = Arc::clone(&central);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let central = Arc::clone(&central);
                    async move {
                        let key = request
                            .headers()
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let sha256 = gpukilld::upload::payload::sha256_hex(&body);
                        let behavior = central
                            .script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Behavior::Accept);
                        central.deliveries.lock().unwrap().push(Delivery {
                            key: key.clone(),
                            sha256: sha256.clone(),
                            behavior,
                        });
                        let ok = |hash: &str| {
                            Response::builder()
                                .status(StatusCode::OK)
                                .header("content-sha256", hash)
                                .body(Full::new(Bytes::from(format!("{{\"sha256\":\"{hash}\"}}"))))
                                .unwrap()
                        };
                        match behavior {
                            Behavior::Accept => {
                                central.store(&key, &sha256);
                                Ok::<_, std::io::Error>(ok(&sha256))
                            }
                            Behavior::Status(status) => Ok(Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(format!("scripted {status}"))))
                                .unwrap()),
                            Behavior::WrongHash => {
                                central.store(&key, &sha256);
                                Ok(ok(&"0".repeat(64)))
                            }
                            Behavior::StoreThenStall(wait) => {
                                central.store(&key, &sha256);
                                tokio::time::sleep(wait).await;
                                Ok(ok(&sha256))
                            }
                            Behavior::StoreThenDrop => {
                                central.store(&key, &sha256);
                                // A service error makes hyper close the connection unanswered.
                                Err(std::io::Error::other("scripted: stored, then dropped"))
                            }
                        }
                    }
                });
                let connection =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let _ = connection.await;
            });
        }
    });
    (bound, task)
}
