//! The health assessment: each tick, every GPU's readings and new Xids become its state and
//! reasons, by the rules below (docs/health.md has the same table). Conditions that mean a
//! GPU is not fit for work are *latched*: they count against what was acknowledged (at
//! start: nothing), so they stay `critical` after the counter stops rising, until an admin
//! clears the GPU or it is reset (which acknowledges what it shows then).
//!
//! | condition | state |
//! | --- | --- |
//! | the GPU answers GPU_IS_LOST | lost |
//! | a serious Xid (`xid::is_serious`) since acknowledged | critical |
//! | uncorrectable (double-bit) ECC errors since acknowledged (volatile count) | critical |
//! | uncorrectable remapped rows since acknowledged | critical |
//! | a row remap failure not acknowledged | critical |
//! | AMD RAS uncorrectable errors since acknowledged | critical |
//! | a throttle reason in `[health] warn_on_throttle` holds | warning |
//! | `correctable_errors` or more correctable errors within `correctable_window` | warning |
//! | a page retirement or row remap is pending | warning |
//! | none of the above, something readable | ok |
//! | nothing readable at all, no Xid ever | unknown |

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::reading::{HealthReading, Throttle, Xid};
use super::state::{Condition, GpuHealth, HealthReason, HealthState, RECENT_XIDS};
use super::xid;
use crate::config::HealthConfig;

/// Counters and flags acknowledged (by an admin clear or a reset): latched conditions count
/// from these.
#[derive(Debug, Clone, Default)]
struct Acknowledged {
    dbe: u64,
    remapped_uncorrectable: u64,
    remap_failure: bool,
    ras_uncorrectable: u64,
    /// Serious Xids seen before this are acknowledged.
    serious_xids: u64,
}

/// What the tracker remembers of one GPU.
#[derive(Debug, Default)]
struct Record {
    acknowledged: Acknowledged,
    /// Serious Xids since the daemon started, and the latest one.
    serious_xids: u64,
    last_serious: Option<Xid>,
    recent_xids: VecDeque<Xid>,
    xid_counts: BTreeMap<u64, u64>,
    /// Correctable error totals with the time each was read, oldest first, over the window.
    correctable: VecDeque<(SystemTime, u64)>,
    /// The last assessment, shared while nothing changes.
    last: Arc<GpuHealth>,
}

/// Assesses GPUs' health tick by tick.
#[derive(Debug)]
pub struct Tracker {
    config: HealthConfig,
    warn_on: u64,
    gpus: HashMap<Arc<str>, Record>,
}

impl Tracker {
    /// A tracker with `config`'s thresholds.
    pub fn new(config: HealthConfig) -> Self {
        let warn_on = config
            .warn_on_throttle
            .iter()
            .filter_map(|name| Throttle::bit(name))
            .fold(0, |mask, bit| mask | bit);
        Self {
            config,
            warn_on,
            gpus: HashMap::new(),
        }
    }

    /// The health of the GPU known as `key` (its UUID, or vendor and index) from this tick's
    /// `reading` and the `xids` reported since the last tick.
    pub fn assess(
        &mut self,
        key: &Arc<str>,
        reading: &HealthReading,
        xids: &[Xid],
        now: SystemTime,
    ) -> Arc<GpuHealth> {
        let window = self.config.correctable_window;
        let record = self.gpus.entry(Arc::clone(key)).or_default();
        for xid in xids {
            *record.xid_counts.entry(xid.code).or_default() += 1;
            if record.recent_xids.len() == RECENT_XIDS {
                record.recent_xids.pop_front();
            }
            record.recent_xids.push_back(*xid);
            if xid::is_serious(xid.code) {
                record.serious_xids += 1;
                record.last_serious = Some(*xid);
            }
        }
        if let Some(total) = correctable_total(reading) {
            record.correctable.push_back((now, total));
            while record.correctable.len() > 1
                && record.correctable.front().is_some_and(|(time, _)| {
                    now.duration_since(*time).unwrap_or(Duration::ZERO) > window
                })
            {
                record.correctable.pop_front();
            }
        }
        let mut reasons = Vec::new();
        latched(record, reading, &mut reasons);
        warnings(record, reading, &self.config, self.warn_on, &mut reasons);
        reasons.sort_by_key(|reason| std::cmp::Reverse(reason.severity));
        let state = match reasons.first() {
            Some(worst) => worst.severity,
            None if reading.is_empty() && record.xid_counts.is_empty() => HealthState::Unknown,
            None => HealthState::Ok,
        };
        let health = GpuHealth {
            state,
            reasons,
            reading: reading.clone(),
            recent_xids: record.recent_xids.iter().copied().collect(),
            xid_counts: record.xid_counts.clone(),
        };
        if *record.last != health {
            record.last = Arc::new(health);
        }
        Arc::clone(&record.last)
    }

    /// Acknowledges what the GPU known as `key` shows now (an admin cleared it, or it was
    /// reset): its latched conditions count from here. False for a GPU never seen.
    pub fn acknowledge(&mut self, key: &str) -> bool {
        let Some(record) = self.gpus.get_mut(key) else {
            return false;
        };
        let reading = &record.last.reading;
        record.acknowledged = Acknowledged {
            dbe: reading.ecc_dbe_volatile.unwrap_or(0),
            remapped_uncorrectable: reading.remapped_uncorrectable.unwrap_or(0),
            remap_failure: reading.remap_failure.unwrap_or(false),
            ras_uncorrectable: ras_uncorrectable(reading).unwrap_or(0),
            serious_xids: record.serious_xids,
        };
        true
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(HealthConfig::default())
    }
}

/// Correctable errors in all: single-bit ECC and AMD RAS correctable.
fn correctable_total(reading: &HealthReading) -> Option<u64> {
    let ras = reading
        .ras
        .iter()
        .filter_map(|block| block.correctable)
        .reduce(u64::saturating_add);
    match (reading.ecc_sbe_volatile, ras) {
        (None, None) => None,
        (sbe, ras) => Some(sbe.unwrap_or(0).saturating_add(ras.unwrap_or(0))),
    }
}

fn ras_uncorrectable(reading: &HealthReading) -> Option<u64> {
    reading
        .ras
        .iter()
        .filter_map(|block| block.uncorrectable)
        .reduce(u64::saturating_add)
}

fn reason(severity: HealthState, condition: Condition, text: String) -> HealthReason {
    HealthReason {
        severity,
        condition,
        text,
    }
}

/// The conditions that leave a GPU lost or critical.
fn latched(record: &Record, reading: &HealthReading, reasons: &mut Vec<HealthReason>) {
    let acknowledged = &record.acknowledged;
    if reading.lost {
        reasons.push(reason(
            HealthState::Lost,
            Condition::Lost,
            "the GPU has fallen off the bus (GPU_IS_LOST)".to_owned(),
        ));
    }
    let serious = record.serious_xids - acknowledged.serious_xids;
    if let Some(last) = record.last_serious.filter(|_| serious > 0) {
        reasons.push(reason(
            HealthState::Critical,
            Condition::Xid,
            format!(
                "Xid {} ({}){}",
                last.code,
                xid::meaning(last.code),
                if serious > 1 {
                    format!(", {serious} serious Xids in all")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let rising = |now: Option<u64>, since: u64| now.filter(|now| *now > since);
    if let Some(dbe) = rising(reading.ecc_dbe_volatile, acknowledged.dbe) {
        reasons.push(reason(
            HealthState::Critical,
            Condition::EccUncorrectable,
            format!("{} uncorrectable ECC errors", dbe - acknowledged.dbe),
        ));
    }
    if let Some(rows) = rising(
        reading.remapped_uncorrectable,
        acknowledged.remapped_uncorrectable,
    ) {
        reasons.push(reason(
            HealthState::Critical,
            Condition::RemappedUncorrectable,
            format!(
                "{} rows remapped after uncorrectable errors",
                rows - acknowledged.remapped_uncorrectable
            ),
        ));
    }
    if reading.remap_failure == Some(true) && !acknowledged.remap_failure {
        reasons.push(reason(
            HealthState::Critical,
            Condition::RemapFailure,
            "a row could not be remapped: no spare rows left".to_owned(),
        ));
    }
    if let Some(errors) = rising(ras_uncorrectable(reading), acknowledged.ras_uncorrectable) {
        let blocks: Vec<&str> = reading
            .ras
            .iter()
            .filter(|block| block.uncorrectable.is_some_and(|count| count > 0))
            .map(|block| &*block.block)
            .collect();
        reasons.push(reason(
            HealthState::Critical,
            Condition::RasUncorrectable,
            format!(
                "{} uncorrectable RAS errors ({})",
                errors - acknowledged.ras_uncorrectable,
                blocks.join(", ")
            ),
        ));
    }
}

/// The conditions that make a GPU `warning` while they hold.
fn warnings(
    record: &Record,
    reading: &HealthReading,
    config: &HealthConfig,
    warn_on: u64,
    reasons: &mut Vec<HealthReason>,
) {
    if let Some(throttle) = reading.throttle.filter(|throttle| throttle.has(warn_on)) {
        let names = Throttle(throttle.0 & warn_on).names();
        reasons.push(reason(
            HealthState::Warning,
            Condition::Throttle,
            format!("clocks held down: {}", names.join(", ")),
        ));
    }
    if let (Some((_, oldest)), Some((_, newest))) =
        (record.correctable.front(), record.correctable.back())
    {
        let rise = newest.saturating_sub(*oldest);
        if rise >= config.correctable_errors {
            reasons.push(reason(
                HealthState::Warning,
                Condition::CorrectableErrors,
                format!(
                    "{rise} correctable errors in the last {}",
                    humantime::format_duration(config.correctable_window)
                ),
            ));
        }
    }
    if reading.retired_pending == Some(true) {
        reasons.push(reason(
            HealthState::Warning,
            Condition::RetirementPending,
            "a page retirement waits for a GPU reset or driver reload".to_owned(),
        ));
    }
    if reading.remap_pending == Some(true) {
        reasons.push(reason(
            HealthState::Warning,
            Condition::RemapPending,
            "a row remap waits for a GPU reset".to_owned(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::RasCount;

    fn key() -> Arc<str> {
        Arc::from("GPU-0")
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn kinds(health: &GpuHealth) -> Vec<&'static str> {
        health
            .reasons
            .iter()
            .map(|reason| reason.condition.as_str())
            .collect()
    }

    #[test]
    fn nothing_readable_is_unknown_and_clean_counters_are_ok() {
        let mut tracker = Tracker::new(HealthConfig::default());
        let health = tracker.assess(&key(), &HealthReading::default(), &[], at(0));
        assert_eq!(health.state, HealthState::Unknown);
        let clean = HealthReading {
            ecc_dbe_volatile: Some(0),
            throttle: Some(Throttle(Throttle::SW_POWER_CAP)),
            ..HealthReading::default()
        };
        let health = tracker.assess(&key(), &clean, &[], at(1));
        assert_eq!(health.state, HealthState::Ok);
        assert!(health.reasons.is_empty());
        // Unchanged: the same allocation.
        assert!(Arc::ptr_eq(
            &health,
            &tracker.assess(&key(), &clean, &[], at(1))
        ));
    }

    #[test]
    fn a_serious_xid_latches_critical_until_acknowledged() {
        let mut tracker = Tracker::new(HealthConfig::default());
        let reading = HealthReading {
            ecc_dbe_volatile: Some(0),
            ..HealthReading::default()
        };
        let minor = Xid {
            code: 13,
            time: at(1),
        };
        let health = tracker.assess(&key(), &reading, &[minor], at(1));
        assert_eq!(health.state, HealthState::Ok);
        assert_eq!(health.last_xid(), Some(13));
        let fatal = Xid {
            code: 79,
            time: at(2),
        };
        let health = tracker.assess(&key(), &reading, &[fatal], at(2));
        assert_eq!(health.state, HealthState::Critical);
        assert_eq!(
            health.reasons[0].text,
            "Xid 79 (GPU has fallen off the bus)"
        );
        // Later ticks without a new Xid: still critical.
        assert_eq!(
            tracker.assess(&key(), &reading, &[], at(60)).state,
            HealthState::Critical
        );
        assert!(tracker.acknowledge("GPU-0"));
        let health = tracker.assess(&key(), &reading, &[], at(61));
        assert_eq!(health.state, HealthState::Ok);
        assert_eq!(health.xid_counts, BTreeMap::from([(13, 1), (79, 1)]));
        assert!(!tracker.acknowledge("GPU-unknown"));
    }

    #[test]
    fn uncorrectable_errors_and_remap_failures_are_critical_and_lost_is_worst() {
        let mut tracker = Tracker::new(HealthConfig::default());
        let reading = HealthReading {
            ecc_dbe_volatile: Some(2),
            remapped_uncorrectable: Some(1),
            remap_failure: Some(true),
            ras: vec![RasCount {
                block: Arc::from("umc"),
                correctable: Some(0),
                uncorrectable: Some(3),
            }],
            ..HealthReading::default()
        };
        let health = tracker.assess(&key(), &reading, &[], at(0));
        assert_eq!(health.state, HealthState::Critical);
        assert_eq!(
            kinds(&health),
            [
                "ecc_uncorrectable",
                "remapped_uncorrectable",
                "remap_failure",
                "ras_uncorrectable"
            ]
        );
        let lost = HealthReading {
            lost: true,
            ..reading.clone()
        };
        let health = tracker.assess(&key(), &lost, &[], at(1));
        assert_eq!(health.state, HealthState::Lost);
        assert_eq!(health.reasons[0].condition, Condition::Lost);
        // Acknowledged, the same counts are no longer critical; a rise is.
        tracker.assess(&key(), &reading, &[], at(2));
        tracker.acknowledge("GPU-0");
        assert_eq!(
            tracker.assess(&key(), &reading, &[], at(3)).state,
            HealthState::Ok
        );
        let more = HealthReading {
            ecc_dbe_volatile: Some(3),
            ..reading
        };
        let health = tracker.assess(&key(), &more, &[], at(4));
        assert_eq!(kinds(&health), ["ecc_uncorrectable"]);
        assert_eq!(health.reasons[0].text, "1 uncorrectable ECC errors");
    }

    #[test]
    fn thermal_throttling_pending_repairs_and_rising_correctable_errors_warn() {
        let mut tracker = Tracker::new(HealthConfig {
            correctable_errors: 5,
            correctable_window: Duration::from_secs(60),
            ..HealthConfig::default()
        });
        let reading = |sbe: u64, throttle: u64| HealthReading {
            ecc_sbe_volatile: Some(sbe),
            throttle: Some(Throttle(throttle)),
            ..HealthReading::default()
        };
        let health = tracker.assess(&key(), &reading(0, Throttle::HW_THERMAL), &[], at(0));
        assert_eq!(health.state, HealthState::Warning);
        assert_eq!(health.reasons[0].text, "clocks held down: hw_thermal");
        assert_eq!(
            tracker.assess(&key(), &reading(4, 0), &[], at(10)).state,
            HealthState::Ok
        );
        let health = tracker.assess(&key(), &reading(5, 0), &[], at(20));
        assert_eq!(kinds(&health), ["correctable_errors"]);
        // The rise leaves the window: no longer a warning.
        assert_eq!(
            tracker.assess(&key(), &reading(5, 0), &[], at(200)).state,
            HealthState::Ok
        );
        let pending = HealthReading {
            retired_pending: Some(true),
            remap_pending: Some(true),
            ..HealthReading::default()
        };
        let health = tracker.assess(&key(), &pending, &[], at(201));
        assert_eq!(kinds(&health), ["retirement_pending", "remap_pending"]);
    }
}
