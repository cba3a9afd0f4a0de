//! The AMD and Intel backend: one poll discovers the DRM cards in sysfs, reads each card,
//! walks /proc once for the DRM clients of both vendors and puts each client on the card
//! whose PCI address its fdinfo names (`drm-pdev`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::amd::AmdState;
use super::clients::{ClientScanner, DrmProcess};
use super::intel::IntelState;
use super::names::{self, Names};
use super::sysfs::{self, Card};
use super::{Driver, amd, intel};
use crate::backends::{Backend, GpuReading, Reading};
use crate::snapshot::{Gpu, ProcessKind, Vendor, VendorProcess};

/// Where one vendor's cards are.
#[derive(Debug, Clone)]
pub struct VendorRoot {
    /// AMD or Intel.
    pub vendor: Vendor,
    /// Where sysfs is mounted for it.
    pub sysfs_root: PathBuf,
}

/// The files that name GPUs (see [`Names::load`]).
#[derive(Debug, Clone, Default)]
pub struct NameFiles {
    /// libdrm's amdgpu.ids.
    pub amdgpu_ids: Option<PathBuf>,
    /// The PCI ID database; `None` for the first of [`names::DEFAULT_PCI_IDS`] that exists.
    pub pci_ids: Option<PathBuf>,
}

/// The backend of the AMD and Intel GPUs (those of the vendors it was given).
pub struct DrmBackend {
    roots: Vec<VendorRoot>,
    name_files: NameFiles,
    /// Loaded on the first poll, on the backend's thread.
    names: Option<Names>,
    clients: ClientScanner,
    procfs_root: PathBuf,
    /// Per Intel card (by PCI address, or card name), the energy reading of the last poll.
    intel: HashMap<String, IntelState>,
    /// Per AMD card (by PCI address, or card name), its last RAS and throttle counters.
    amd: HashMap<String, AmdState>,
    /// Per driver, its version, read on its first poll (it changes only with a reboot or
    /// a module reload, which also restarts the cards).
    driver_versions: HashMap<Driver, Option<String>>,
}

impl DrmBackend {
    /// A backend of the vendors in `roots` (AMD, Intel), naming GPUs from `name_files` and
    /// finding their processes under `procfs_root`.
    pub fn new(
        roots: Vec<VendorRoot>,
        name_files: NameFiles,
        procfs_root: impl Into<PathBuf>,
    ) -> Self {
        let procfs_root = procfs_root.into();
        Self {
            roots,
            name_files,
            names: None,
            clients: ClientScanner::new(procfs_root.clone()),
            procfs_root,
            intel: HashMap::new(),
            amd: HashMap::new(),
            driver_versions: HashMap::new(),
        }
    }

    /// Each vendor's cards (or why they could not be listed), reading each sysfs root once.
    fn discover(&self) -> Vec<Result<Vec<Card>, String>> {
        let mut listed: HashMap<&PathBuf, Result<Vec<Card>, String>> = HashMap::new();
        self.roots
            .iter()
            .map(|root| {
                let cards = listed.entry(&root.sysfs_root).or_insert_with(|| {
                    sysfs::discover(&root.sysfs_root).map_err(|error| {
                        format!(
                            "cannot list {}/class/drm: {error}",
                            root.sysfs_root.display()
                        )
                    })
                });
                cards.clone().map(|cards| {
                    cards
                        .into_iter()
                        .filter(|card| card.driver.vendor() == root.vendor)
                        .collect()
                })
            })
            .collect()
    }
}

impl Backend for DrmBackend {
    fn vendors(&self) -> Vec<Vendor> {
        self.roots.iter().map(|root| root.vendor).collect()
    }

    fn poll(&mut self) -> Vec<Reading> {
        let now = Instant::now();
        let cards = self.discover();
        let files = &self.name_files;
        let names = self.names.get_or_insert_with(|| {
            let pci_ids = match files.pci_ids.as_deref() {
                Some(path) => Some(path),
                None => names::default_pci_ids(),
            };
            Names::load(files.amdgpu_ids.as_deref(), pci_ids)
        });
        let any_card = cards
            .iter()
            .any(|cards| cards.as_ref().is_ok_and(|cards| !cards.is_empty()));
        // Without a card there is nobody to find: skip the walk of /proc.
        let clients = if any_card {
            self.clients.scan(now).map_err(|error| {
                format!(
                    "cannot list the processes under {}: {error}",
                    self.procfs_root.display()
                )
            })
        } else {
            Ok(Vec::new())
        };
        let mut readings = Vec::with_capacity(self.roots.len());
        for (root, cards) in self.roots.iter().zip(cards) {
            let cards = match cards {
                Ok(cards) if cards.is_empty() => {
                    readings.push(Reading::Absent);
                    continue;
                }
                Ok(cards) => cards,
                Err(message) => {
                    readings.push(Reading::Failed(message));
                    continue;
                }
            };
            let gpus = cards
                .iter()
                .enumerate()
                .map(|(index, card)| {
                    let index = index as u32;
                    let key = card.pci_bus_id.clone().unwrap_or(card.name.clone());
                    let (mut gpu, health) = match root.vendor {
                        Vendor::Intel => {
                            let state = self.intel.entry(key).or_default();
                            intel::read_gpu(index, card, names, state, now)
                        }
                        _ => {
                            let state = self.amd.entry(key).or_default();
                            amd::read_gpu(index, card, names, state, now)
                        }
                    };
                    let processes = match &clients {
                        Ok(clients) => on_card(clients, card),
                        Err(message) => {
                            add_error(&mut gpu, message);
                            Vec::new()
                        }
                    };
                    if root.vendor == Vendor::Intel && clients.is_ok() {
                        fill_from_clients(&mut gpu, &processes);
                    }
                    GpuReading {
                        gpu,
                        processes: processes.iter().map(|p| vendor_process(p)).collect(),
                        health,
                        ..GpuReading::default()
                    }
                })
                .collect();
            let driver = cards[0].driver;
            let driver_version = self
                .driver_versions
                .entry(driver)
                .or_insert_with(|| driver_version(&root.sysfs_root, driver))
                .clone();
            readings.push(Reading::Ok {
                driver_version,
                cuda_version: None,
                gpus,
            });
        }
        readings
    }
}

/// The clients whose fdinfo names this card's PCI address.
fn on_card<'a>(clients: &'a [DrmProcess], card: &Card) -> Vec<&'a DrmProcess> {
    let Some(address) = card.pci_bus_id.as_deref() else {
        return Vec::new();
    };
    clients
        .iter()
        .filter(|client| client.driver == card.driver && client.pdev.eq_ignore_ascii_case(address))
        .collect()
}

/// A DRM client as the sampler takes it: device-local memory (system memory on an
/// integrated GPU, which has none) and the busiest engine's share. DRM does not tell compute
/// from graphics contexts, so every client counts as compute.
fn vendor_process(client: &DrmProcess) -> VendorProcess {
    VendorProcess {
        pid: client.pid,
        used_memory_bytes: client.local_bytes.or(client.system_bytes),
        sm_utilization_pct: client.utilization_pct,
        kind: ProcessKind::Compute,
    }
}

/// What sysfs does not say of an Intel GPU and its clients (`on_card`) do: the device
/// memory they use (on a card with device memory) and the GPU's utilization, its busiest
/// engine class summed over every client. Utilization stays absent on the first poll, before
/// counters moved.
fn fill_from_clients(gpu: &mut Gpu, on_card: &[&DrmProcess]) {
    if gpu.memory_total_bytes.is_some() {
        gpu.memory_used_bytes = Some(on_card.iter().filter_map(|c| c.local_bytes).sum());
    }
    if on_card
        .iter()
        .any(|client| client.utilization_pct.is_none())
    {
        return;
    }
    let mut engines: HashMap<&str, f64> = HashMap::new();
    for client in on_card {
        for engine in &client.engines {
            *engines.entry(&engine.engine).or_default() += engine.busy;
        }
    }
    let busiest = engines.values().copied().fold(0.0, f64::max);
    gpu.utilization_gpu_pct = Some((busiest * 100.0).round().min(100.0) as u32);
}

fn add_error(gpu: &mut Gpu, message: &str) {
    gpu.error = Some(match gpu.error.take() {
        Some(error) => format!("{error}; {message}"),
        None => message.to_string(),
    });
}

/// The driver's version: the module's own (`<sysfs>/module/amdgpu/version`, set by an
/// out-of-tree DKMS build such as ROCm's), else the kernel release the in-tree driver is
/// part of.
fn driver_version(sysfs_root: &Path, driver: Driver) -> Option<String> {
    let module = sysfs_root
        .join("module")
        .join(driver.name())
        .join("version");
    if let Ok(Some(version)) = sysfs::read_string(&module) {
        return Some(version);
    }
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| format!("kernel {}", release.trim()))
}
