//! Who uses each GPU, against who holds it: available, reserved, used without a
//! reservation, or used by a user other than the holder; and whether it may be handed out
//! (not drained by an admin, healthy enough). Pure: the caller passes the snapshot, the held
//! reservations and the drains.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::procinfo::ProcessInfo;
use crate::snapshot::{Gpu, Snapshot, Vendor};
use crate::store::{DrainRow, ReservationRow};

/// A GPU as reservations know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRef {
    /// Its stable key: the UUID, or `index:N` when the vendor reports none.
    pub key: String,
    /// Its index on the host now.
    pub index: u32,
    /// Its index within its vendor (what the vendor's runtime numbers it).
    pub vendor_index: u32,
    /// Its UUID.
    pub uuid: Option<Arc<str>>,
    /// Its vendor.
    pub vendor: Vendor,
    /// Its product name.
    pub name: Option<Arc<str>>,
}

impl GpuRef {
    /// The reference to `gpu` of `vendor`.
    pub fn of(vendor: Vendor, gpu: &Gpu) -> Self {
        GpuRef {
            key: gpu_key(gpu.uuid.as_deref(), gpu.index),
            index: gpu.index,
            vendor_index: gpu.vendor_index,
            uuid: gpu.uuid.clone(),
            vendor,
            name: gpu.name.clone(),
        }
    }
}

/// The key a reservation names its GPU by: the UUID (stable when indices change), else the
/// index.
pub fn gpu_key(uuid: Option<&str>, index: u32) -> String {
    match uuid {
        Some(uuid) => uuid.to_owned(),
        None => format!("index:{index}"),
    }
}

/// A GPU's reservation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuState {
    /// Unreserved and not in use.
    Available,
    /// Reserved, used by nobody else.
    Reserved,
    /// Not reserved, but in use.
    UnreservedUse,
    /// Reserved, and other users run processes on it.
    WrongUser,
}

/// A process using a GPU it does not hold.
#[derive(Debug, Clone)]
pub struct Misuse {
    /// Who.
    pub info: Arc<ProcessInfo>,
    /// Its GPU memory, when the vendor says.
    pub used_memory_bytes: Option<u64>,
}

/// One GPU's state.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// The GPU.
    pub gpu: GpuRef,
    /// Its state.
    pub state: GpuState,
    /// Its reservation, when held.
    pub holder: Option<ReservationRow>,
    /// The processes of users who do not hold it and use it (over the threshold).
    pub misuse: Vec<Misuse>,
    /// Why it is not handed out although nobody holds it: its health is critical or lost
    /// (when unhealthy GPUs are drained).
    pub unfit: Option<String>,
    /// An admin's drain: it is not handed out until undrained (whoever holds it now keeps
    /// it).
    pub drained: Option<DrainRow>,
}

impl Assessment {
    /// Whether reserve and run may hand it out.
    pub fn is_free(&self) -> bool {
        self.state == GpuState::Available && self.is_handed_out()
    }

    /// Whether reserve and run hand it out at all (once free): neither unfit nor drained.
    pub fn is_handed_out(&self) -> bool {
        self.unfit.is_none() && self.drained.is_none()
    }
}

/// Every GPU of `snapshot` in vendor and index order, against `held` and `drains`.
///
/// A user uses a GPU when their processes on it hold more than `threshold` bytes together;
/// a process whose memory the vendor does not report counts when the GPU's own used memory
/// is over the threshold (absent is not zero, nor proof of use).
///
/// With `drain_unhealthy`, a GPU whose health is critical or lost is `unfit`. A GPU whose
/// key is in `drains` is `drained`.
pub fn assess(
    snapshot: &Snapshot,
    held: &[ReservationRow],
    drains: &[DrainRow],
    threshold: u64,
    drain_unhealthy: bool,
) -> Vec<Assessment> {
    let mut gpus: Vec<(Vendor, &Gpu)> = snapshot.gpus().collect();
    gpus.sort_by_key(|(vendor, gpu)| (*vendor, gpu.index));
    gpus.into_iter()
        .map(|(vendor, gpu)| {
            let gpu_ref = GpuRef::of(vendor, gpu);
            let holder = held.iter().find(|row| row.gpu_key == gpu_ref.key).cloned();
            let gpu_busy = gpu.memory_used_bytes.is_some_and(|used| used > threshold);
            // Each user's processes on this GPU, and their known memory.
            let mut by_uid: BTreeMap<u32, (u64, bool, Vec<Misuse>)> = BTreeMap::new();
            for process in snapshot
                .processes()
                .filter(|p| p.slot.vendor == vendor && p.slot.gpu_index == gpu.index)
            {
                let entry = by_uid.entry(process.slot.info.uid).or_default();
                match process.used_memory_bytes {
                    Some(bytes) => entry.0 = entry.0.saturating_add(bytes),
                    None => entry.1 = true,
                }
                entry.2.push(Misuse {
                    info: Arc::clone(&process.slot.info),
                    used_memory_bytes: process.used_memory_bytes,
                });
            }
            let misuse: Vec<Misuse> = by_uid
                .into_iter()
                .filter(|(uid, _)| holder.as_ref().is_none_or(|h| h.uid != *uid))
                .filter(|(_, (known, unknown, _))| *known > threshold || (*unknown && gpu_busy))
                .flat_map(|(_, (_, _, processes))| processes)
                .collect();
            let state = match (&holder, misuse.is_empty()) {
                (None, true) => GpuState::Available,
                (None, false) => GpuState::UnreservedUse,
                (Some(_), true) => GpuState::Reserved,
                (Some(_), false) => GpuState::WrongUser,
            };
            let unfit = (drain_unhealthy && gpu.health.state.is_unfit())
                .then(|| format!("its health is {}", gpu.health.unfit_summary()));
            let drained = drains
                .iter()
                .find(|drain| drain.gpu_key == gpu_ref.key)
                .cloned();
            Assessment {
                gpu: gpu_ref,
                state,
                holder,
                misuse,
                unfit,
                drained,
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::guard::evaluate::tests::{GIB, proc_info, snapshot_at};
    use crate::store::LeaseKind;

    /// A manual reservation of the GPU with `key` by `uid`.
    pub(crate) fn held(key: &str, uid: u32) -> ReservationRow {
        ReservationRow {
            lease: 1,
            gpu_key: key.to_owned(),
            gpu_index: 0,
            uid,
            user: format!("u{uid}"),
            kind: LeaseKind::Manual,
            start_ms: 0,
            expires_ms: None,
            note: String::new(),
            client_pid: None,
            end_ms: None,
            end_reason: None,
        }
    }

    #[test]
    fn states_follow_holders_and_the_threshold() {
        // GPU 0: bob 2 GiB, unreserved. GPU 1: alice's, bob 2 GiB on it. GPU 2: alice's,
        // alice's own process. GPU 3: bob's 1 GiB, not over the threshold: available.
        let (alice, bob) = (1000, 2000);
        let snapshot = snapshot_at(
            0,
            &[
                (proc_info(10, bob, "bob", 60), 0, Some(2), None),
                (proc_info(11, bob, "bob", 60), 1, Some(2), None),
                (proc_info(12, alice, "alice", 60), 2, Some(8), None),
                (proc_info(13, bob, "bob", 60), 3, Some(1), None),
            ],
        );
        let held = [held("index:1", alice), held("index:2", alice)];
        let assessed = assess(&snapshot, &held, &[], GIB, true);
        let states: Vec<GpuState> = assessed.iter().map(|a| a.state).collect();
        assert_eq!(
            states,
            [
                GpuState::UnreservedUse,
                GpuState::WrongUser,
                GpuState::Reserved,
                GpuState::Available
            ]
        );
        assert_eq!(assessed[1].misuse.len(), 1);
        assert_eq!(assessed[1].misuse[0].info.pid, 11);
        assert_eq!(assessed[1].holder.as_ref().unwrap().uid, alice);
        assert!(assessed[2].misuse.is_empty());
    }

    #[test]
    fn a_critical_gpu_is_not_free_when_unhealthy_gpus_are_drained() {
        use crate::health::{Condition, GpuHealth, HealthReason, HealthState};
        let mut snapshot = snapshot_at(0, &[]);
        let data = Arc::make_mut(&mut snapshot.data[0].1);
        data.gpus[1].health = Arc::new(GpuHealth {
            state: HealthState::Critical,
            reasons: vec![HealthReason {
                severity: HealthState::Critical,
                condition: Condition::Xid,
                text: "Xid 79 (GPU has fallen off the bus)".to_owned(),
            }],
            ..GpuHealth::default()
        });
        let drained = assess(&snapshot, &[], &[], GIB, true);
        assert!(drained[0].is_free());
        assert!(!drained[1].is_free());
        assert_eq!(drained[1].state, GpuState::Available);
        assert_eq!(
            drained[1].unfit.as_deref(),
            Some("its health is critical (Xid 79 (GPU has fallen off the bus))")
        );
        // on_critical = "notify": handed out as before.
        assert!(assess(&snapshot, &[], &[], GIB, false)[1].is_free());
    }

    #[test]
    fn a_drained_gpu_is_not_free_whoever_holds_it() {
        let alice = 1000;
        let snapshot = snapshot_at(0, &[(proc_info(12, alice, "alice", 60), 2, Some(8), None)]);
        let drain = |key: &str| DrainRow {
            gpu_key: key.to_owned(),
            gpu_index: 0,
            uid: 0,
            user: "root".to_owned(),
            reason: "fan".to_owned(),
            since_ms: 5,
        };
        let drains = [drain("index:1"), drain("index:2"), drain("GPU-gone")];
        let assessed = assess(&snapshot, &[held("index:2", alice)], &drains, GIB, true);
        assert!(assessed[0].is_free());
        assert!(assessed[0].drained.is_none());
        // Drained and unreserved: available, but not handed out.
        assert_eq!(assessed[1].state, GpuState::Available);
        assert!(!assessed[1].is_free());
        assert_eq!(assessed[1].drained.as_ref().unwrap().reason, "fan");
        // Drained while held: the reservation stands, the drain is shown.
        assert_eq!(assessed[2].state, GpuState::Reserved);
        assert_eq!(assessed[2].holder.as_ref().unwrap().uid, alice);
        assert!(assessed[2].drained.is_some());
        // A drain of a GPU not in the snapshot names no GPU that is.
        assert!(assessed[3].drained.is_none() && assessed[3].is_free());
    }
}
