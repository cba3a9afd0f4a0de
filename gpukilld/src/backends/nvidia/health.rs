//! One GPU's health readings through NVML: the cheap calls every poll (throttle reasons,
//! performance state, PCIe replays; the volatile ECC counts come with the device metrics),
//! the slower ones (aggregate ECC, retired pages, remapped rows) every
//! [`SLOW_EVERY`]th poll or after an ECC event, their last values kept in between.

use std::collections::BTreeMap;
use std::ffi::c_uint;

use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, PerformanceState, RetirementCause,
};
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, Nvml};

use super::device::FieldReader;
use crate::health::{HealthReading, Throttle};

/// The slow calls run on one poll in this many (and on the first, and after an ECC event).
pub const SLOW_EVERY: u32 = 10;

/// The slow calls' answers about one GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slow {
    ecc_sbe_aggregate: Option<u64>,
    ecc_dbe_aggregate: Option<u64>,
    retired_sbe: Option<u64>,
    retired_dbe: Option<u64>,
    retired_pending: Option<bool>,
    remapped: Option<RemappedRows>,
}

/// What `nvmlDeviceGetRemappedRows` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RemappedRows {
    correctable: u64,
    uncorrectable: u64,
    pending: bool,
    failure: bool,
}

/// The last slow answers per GPU index, and how many polls ago they were read.
#[derive(Debug, Default)]
pub(super) struct HealthPolls {
    gpus: BTreeMap<u32, (Slow, u32)>,
}

impl HealthPolls {
    /// Reads GPU `index`'s health into `health` (whose volatile ECC counts the device
    /// reading filled): the cheap calls now, the slow ones when due or when `ecc_event`
    /// says its ECC counters moved. Nothing is kept of a GPU that stopped answering.
    pub(super) fn read(
        &mut self,
        index: u32,
        nvml: &Nvml,
        device: &Device<'_>,
        fields: &mut FieldReader,
        ecc_event: bool,
        health: &mut HealthReading,
    ) {
        health.throttle = fields
            .read_health("throttle reasons", || device.current_throttle_reasons())
            .map(|reasons| Throttle(reasons.bits()));
        health.pstate = fields
            .read_health("performance state", || device.performance_state())
            .and_then(pstate_number);
        health.pcie_replay = fields
            .read_health("pcie replay counter", || device.pcie_replay_counter())
            .map(u64::from);
        let due = match self.gpus.get_mut(&index) {
            Some((_, age)) if !ecc_event && *age + 1 < SLOW_EVERY => {
                *age += 1;
                false
            }
            _ => true,
        };
        if due {
            let slow = read_slow(nvml, device, fields);
            self.gpus.insert(index, (slow, 0));
        }
        if fields.fatal {
            self.gpus.remove(&index);
            return;
        }
        if let Some((slow, _)) = self.gpus.get(&index) {
            slow.apply(health);
        }
    }

    /// Forgets GPU `index` (it did not answer): its slow calls run on its next poll.
    pub(super) fn forget(&mut self, index: u32) {
        self.gpus.remove(&index);
    }
}

impl Slow {
    fn apply(&self, health: &mut HealthReading) {
        health.ecc_sbe_aggregate = self.ecc_sbe_aggregate;
        health.ecc_dbe_aggregate = self.ecc_dbe_aggregate;
        health.retired_sbe = self.retired_sbe;
        health.retired_dbe = self.retired_dbe;
        health.retired_pending = self.retired_pending;
        health.remapped_correctable = self.remapped.map(|r| r.correctable);
        health.remapped_uncorrectable = self.remapped.map(|r| r.uncorrectable);
        health.remap_pending = self.remapped.map(|r| r.pending);
        health.remap_failure = self.remapped.map(|r| r.failure);
    }
}

fn read_slow(nvml: &Nvml, device: &Device<'_>, fields: &mut FieldReader) -> Slow {
    let retired = |fields: &mut FieldReader, cause| {
        fields
            .read_health("retired pages", || device.retired_pages(cause))
            .map(|pages| pages.len() as u64)
    };
    Slow {
        ecc_sbe_aggregate: fields.read_health("aggregate ecc", || {
            device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
        }),
        ecc_dbe_aggregate: fields.read_health("aggregate ecc", || {
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)
        }),
        retired_sbe: retired(fields, RetirementCause::MultipleSingleBitEccErrors),
        retired_dbe: retired(fields, RetirementCause::DoubleBitEccError),
        retired_pending: fields.read_health("retired pages pending", || {
            device.are_pages_pending_retired()
        }),
        remapped: fields.read_health("remapped rows", || remapped_rows(nvml, device)),
    }
}

/// `nvmlDeviceGetRemappedRows`, which nvml-wrapper 0.13 does not wrap.
fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let call = nvml_sym(nvml.lib().nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut correctable, mut uncorrectable, mut pending, mut failure): (
        c_uint,
        c_uint,
        c_uint,
        c_uint,
    ) = (0, 0, 0, 0);
    // SAFETY: `device` is a live handle of the same library `nvml` loaded (it borrows
    // `nvml`), and the four out-pointers are valid, distinct `c_uint`s for the call.
    let code = unsafe {
        call(
            device.handle(),
            &mut correctable,
            &mut uncorrectable,
            &mut pending,
            &mut failure,
        )
    };
    nvml_try(code)?;
    Ok(RemappedRows {
        correctable: u64::from(correctable),
        uncorrectable: u64::from(uncorrectable),
        pending: pending != 0,
        failure: failure != 0,
    })
}

/// A performance state as its number; unknown is absent.
fn pstate_number(state: PerformanceState) -> Option<u32> {
    match state {
        PerformanceState::Unknown => None,
        known => Some(known.as_c()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_values_fill_the_reading_and_absent_stays_absent() {
        let slow = Slow {
            ecc_dbe_aggregate: Some(3),
            remapped: Some(RemappedRows {
                correctable: 1,
                uncorrectable: 0,
                pending: true,
                failure: false,
            }),
            ..Slow::default()
        };
        let mut health = HealthReading::default();
        slow.apply(&mut health);
        assert_eq!(health.ecc_dbe_aggregate, Some(3));
        assert_eq!(health.ecc_sbe_aggregate, None);
        assert_eq!(health.retired_sbe, None);
        assert_eq!(health.remapped_correctable, Some(1));
        assert_eq!(health.remapped_uncorrectable, Some(0));
        assert_eq!(health.remap_pending, Some(true));
        assert_eq!(health.remap_failure, Some(false));
    }

    #[test]
    fn performance_states_are_numbers_and_unknown_is_absent() {
        assert_eq!(pstate_number(PerformanceState::Zero), Some(0));
        assert_eq!(pstate_number(PerformanceState::Fifteen), Some(15));
        assert_eq!(pstate_number(PerformanceState::Unknown), None);
    }
}
