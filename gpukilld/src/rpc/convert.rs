//! Domain -> proto conversions (the snapshot; the guard's rules, units and modes, risk
//! levels and event kinds as proto enums), and what requests carry: the snapshot filter and
//! enum values. A bad field in a request becomes `InvalidArgument` here, at the edge.

use std::time::SystemTime;

use gpukill_proto::v1 as pb;
use regex::Regex;

use super::error::RpcError;
use crate::guard::edit::EntryKind;
use crate::guard::evaluate::{Rule, Unit};
use crate::guard::policy::Mode;
use crate::guard::rogue::RiskLevel;
use crate::procinfo::Container;
use crate::snapshot::{Gpu, GpuProcess, ProcessKind, Snapshot, Vendor, VendorState, VendorStatus};
use crate::store::EventKind;

/// What part of a snapshot a reader asked for.
#[derive(Debug, Default)]
pub struct Filter {
    vendor: Option<Vendor>,
    process_regex: Option<Regex>,
    containers_only: bool,
    user: Option<String>,
}

impl Filter {
    /// Whether it lets everything through (no vendor, no regex, not containers only, no
    /// user).
    pub fn is_everything(&self) -> bool {
        // Destructured, so that a new field of the filter must be considered here.
        let Filter {
            vendor,
            process_regex,
            containers_only,
            user,
        } = self;
        vendor.is_none() && process_regex.is_none() && !containers_only && user.is_none()
    }
}

impl TryFrom<Option<pb::SnapshotFilter>> for Filter {
    type Error = RpcError;

    fn try_from(filter: Option<pb::SnapshotFilter>) -> Result<Self, RpcError> {
        let Some(filter) = filter else {
            return Ok(Filter::default());
        };
        let vendor = match pb::Vendor::try_from(filter.vendor) {
            Ok(pb::Vendor::Unspecified) => None,
            Ok(pb::Vendor::Nvidia) => Some(Vendor::Nvidia),
            Ok(pb::Vendor::Amd) => Some(Vendor::Amd),
            Ok(pb::Vendor::Intel) => Some(Vendor::Intel),
            Ok(pb::Vendor::Apple) => Some(Vendor::Apple),
            Err(_) => return Err(RpcError::UnknownVendor(filter.vendor)),
        };
        let process_regex = filter
            .process_regex
            .map(|pattern| {
                Regex::new(&pattern).map_err(|source| RpcError::InvalidRegex { pattern, source })
            })
            .transpose()?;
        Ok(Filter {
            vendor,
            process_regex,
            containers_only: filter.containers_only,
            user: filter.user,
        })
    }
}

impl Filter {
    fn wants_vendor(&self, vendor: Vendor) -> bool {
        self.vendor.is_none_or(|wanted| wanted == vendor)
    }

    fn wants_process(&self, process: &GpuProcess<'_>) -> bool {
        let info = &process.slot.info;
        if !self.wants_vendor(process.slot.vendor)
            || (self.containers_only && info.container.is_none())
        {
            return false;
        }
        self.user.as_deref().is_none_or(|user| info.is_user(user))
            && self
                .process_regex
                .as_ref()
                .is_none_or(|regex| info.matches(regex))
    }
}

/// How a List answer carries the processes the filter selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProcessView {
    /// Every process, in `Snapshot.processes`.
    #[default]
    List,
    /// No list: each GPU's processes in brief, in `Gpu.process_summary`.
    Summary,
}

impl From<i32> for ProcessView {
    /// The view a request asks for. A value this daemon does not know (a newer client's) gets
    /// the full list, as a daemon that predates the field answers: the client then counts the
    /// list itself, so nothing it shows changes.
    fn from(value: i32) -> Self {
        match pb::ProcessView::try_from(value) {
            Ok(pb::ProcessView::Summary) => ProcessView::Summary,
            Ok(pb::ProcessView::Unspecified | pb::ProcessView::List) | Err(_) => ProcessView::List,
        }
    }
}

pub(crate) use crate::store::unix_ms;

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The proto enum of a kill outcome.
pub fn kill_outcome(outcome: crate::actions::kill::Outcome) -> pb::KillOutcome {
    use crate::actions::kill::Outcome;
    match outcome {
        Outcome::Terminated => pb::KillOutcome::Terminated,
        Outcome::Killed => pb::KillOutcome::Killed,
        Outcome::StillRunning => pb::KillOutcome::StillRunning,
        Outcome::AlreadyGone => pb::KillOutcome::AlreadyGone,
        Outcome::Denied => pb::KillOutcome::Denied,
        Outcome::Protected => pb::KillOutcome::Protected,
        Outcome::Matched => pb::KillOutcome::Matched,
    }
}

/// The proto enum of a vendor.
pub fn vendor(vendor: Vendor) -> pb::Vendor {
    match vendor {
        Vendor::Nvidia => pb::Vendor::Nvidia,
        Vendor::Amd => pb::Vendor::Amd,
        Vendor::Intel => pb::Vendor::Intel,
        Vendor::Apple => pb::Vendor::Apple,
    }
}

impl From<Rule> for pb::GuardRule {
    fn from(rule: Rule) -> Self {
        match rule {
            Rule::MemoryPerProcess => pb::GuardRule::MemoryPerProcess,
            Rule::MemoryTotal => pb::GuardRule::MemoryTotal,
            Rule::Utilization => pb::GuardRule::Utilization,
            Rule::Duration => pb::GuardRule::Duration,
            Rule::Processes => pb::GuardRule::Processes,
            Rule::GpuNotAllowed => pb::GuardRule::GpuNotAllowed,
            Rule::UserNotAllowed => pb::GuardRule::UserNotAllowed,
            Rule::GpuMemoryPerProcess => pb::GuardRule::GpuMemoryPerProcess,
            Rule::ReservedMemory => pb::GuardRule::ReservedMemory,
            Rule::GroupMemory => pb::GuardRule::GroupMemory,
            Rule::GroupUtilization => pb::GuardRule::GroupUtilization,
            Rule::GroupProcesses => pb::GuardRule::GroupProcesses,
            Rule::Rogue => pb::GuardRule::Rogue,
            Rule::Reservation => pb::GuardRule::Reservation,
        }
    }
}

impl From<Unit> for pb::GuardUnit {
    fn from(unit: Unit) -> Self {
        match unit {
            Unit::Bytes => pb::GuardUnit::Bytes,
            Unit::Percent => pb::GuardUnit::Percent,
            Unit::Seconds => pb::GuardUnit::Seconds,
            Unit::Count => pb::GuardUnit::Count,
            Unit::Gpu => pb::GuardUnit::Gpu,
            Unit::Score => pb::GuardUnit::Score,
        }
    }
}

impl From<Mode> for pb::GuardMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::DryRun => pb::GuardMode::DryRun,
            Mode::Soft => pb::GuardMode::Soft,
            Mode::Hard => pb::GuardMode::Hard,
        }
    }
}

impl From<RiskLevel> for pb::RogueLevel {
    fn from(level: RiskLevel) -> Self {
        match level {
            // Below every threshold: never a finding, so never sent.
            RiskLevel::None => pb::RogueLevel::Unspecified,
            RiskLevel::Low => pb::RogueLevel::Low,
            RiskLevel::Medium => pb::RogueLevel::Medium,
            RiskLevel::High => pb::RogueLevel::High,
            RiskLevel::Critical => pb::RogueLevel::Critical,
        }
    }
}

impl From<EventKind> for pb::EventType {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Kill => pb::EventType::Kill,
            EventKind::Reset => pb::EventType::Reset,
            EventKind::Deny => pb::EventType::Deny,
            EventKind::Violation => pb::EventType::Violation,
            EventKind::Policy => pb::EventType::Policy,
            EventKind::Reservation => pb::EventType::Reservation,
            EventKind::Health => pb::EventType::Health,
        }
    }
}

/// The mode a GuardUpdate request sets: unspecified or unknown is `InvalidArgument`.
pub fn guard_mode(value: i32) -> Result<Mode, RpcError> {
    use pb::GuardMode as Pb;
    match Pb::try_from(value) {
        Ok(Pb::DryRun) => Ok(Mode::DryRun),
        Ok(Pb::Soft) => Ok(Mode::Soft),
        Ok(Pb::Hard) => Ok(Mode::Hard),
        Ok(Pb::Unspecified) | Err(_) => Err(invalid_enum(
            "guard mode",
            value,
            &[Pb::DryRun, Pb::Soft, Pb::Hard],
            Pb::as_str_name,
        )),
    }
}

/// The kind of a GuardUpdate entry: unspecified or unknown is `InvalidArgument`.
pub fn guard_entry_kind(value: i32) -> Result<EntryKind, RpcError> {
    use pb::GuardEntryKind as Pb;
    match Pb::try_from(value) {
        Ok(Pb::User) => Ok(EntryKind::User),
        Ok(Pb::Group) => Ok(EntryKind::Group),
        Ok(Pb::Gpu) => Ok(EntryKind::Gpu),
        Ok(Pb::Unspecified) | Err(_) => Err(invalid_enum(
            "guard entry kind",
            value,
            &[Pb::User, Pb::Group, Pb::Gpu],
            Pb::as_str_name,
        )),
    }
}

/// The event type an Events request filters on: `None` (unspecified) for every type; an
/// unknown value is `InvalidArgument`.
pub fn event_type(value: i32) -> Result<Option<EventKind>, RpcError> {
    use pb::EventType as Pb;
    match Pb::try_from(value) {
        Ok(Pb::Unspecified) => Ok(None),
        Ok(Pb::Kill) => Ok(Some(EventKind::Kill)),
        Ok(Pb::Reset) => Ok(Some(EventKind::Reset)),
        Ok(Pb::Deny) => Ok(Some(EventKind::Deny)),
        Ok(Pb::Violation) => Ok(Some(EventKind::Violation)),
        Ok(Pb::Policy) => Ok(Some(EventKind::Policy)),
        Ok(Pb::Reservation) => Ok(Some(EventKind::Reservation)),
        Ok(Pb::Health) => Ok(Some(EventKind::Health)),
        Err(_) => Err(invalid_enum(
            "event type",
            value,
            &[
                Pb::Unspecified,
                Pb::Kill,
                Pb::Reset,
                Pb::Deny,
                Pb::Violation,
                Pb::Policy,
                Pb::Reservation,
                Pb::Health,
            ],
            Pb::as_str_name,
        )),
    }
}

/// The lowest risk level a Rogue request wants: unspecified is low; an unknown value is
/// `InvalidArgument`.
pub fn min_rogue_level(value: i32) -> Result<RiskLevel, RpcError> {
    use pb::RogueLevel as Pb;
    match Pb::try_from(value) {
        Ok(Pb::Unspecified | Pb::Low) => Ok(RiskLevel::Low),
        Ok(Pb::Medium) => Ok(RiskLevel::Medium),
        Ok(Pb::High) => Ok(RiskLevel::High),
        Ok(Pb::Critical) => Ok(RiskLevel::Critical),
        Err(_) => Err(invalid_enum(
            "rogue level",
            value,
            &[Pb::Unspecified, Pb::Low, Pb::Medium, Pb::High, Pb::Critical],
            Pb::as_str_name,
        )),
    }
}

/// `InvalidArgument` for an enum `field` of a request whose `value` is not one of
/// `accepted`, naming each accepted value with its number.
fn invalid_enum<E: Copy + Into<i32>>(
    field: &'static str,
    value: i32,
    accepted: &[E],
    name: fn(&E) -> &'static str,
) -> RpcError {
    let mut names: Vec<String> = accepted
        .iter()
        .map(|known| format!("{} ({})", name(known), (*known).into()))
        .collect();
    let last = names.pop().unwrap_or_default();
    let accepted = if names.is_empty() {
        last
    } else {
        format!("{} or {last}", names.join(", "))
    };
    RpcError::InvalidEnum {
        field,
        value,
        accepted,
    }
}

/// A vendor's status as the API shows it at `now`.
pub fn vendor_status(status: &VendorStatus, now: SystemTime) -> pb::VendorStatus {
    let (state, message) = match &status.state {
        VendorState::Ok => (pb::VendorState::Ok, None),
        VendorState::Error(message) => (pb::VendorState::Error, Some(message.clone())),
        VendorState::Hung { since } => (
            pb::VendorState::Hung,
            Some(format!(
                "a {} library call has not returned for {}",
                status.vendor.name(),
                crate::snapshot::format_age(now.duration_since(*since).unwrap_or_default())
            )),
        ),
    };
    pb::VendorStatus {
        vendor: vendor(status.vendor).into(),
        state: state.into(),
        message,
        driver_version: status.driver_version.clone(),
        last_success_unix_ms: status.last_success.map(unix_ms),
        cuda_version: status.cuda_version.clone(),
    }
}

fn gpu(vendor_: Vendor, gpu: &Gpu) -> pb::Gpu {
    pb::Gpu {
        index: gpu.index,
        vendor: vendor(vendor_).into(),
        uuid: gpu.uuid.as_deref().map(str::to_string),
        name: gpu.name.as_deref().map(str::to_string),
        pci_bus_id: gpu.pci_bus_id.as_deref().map(str::to_string),
        memory_used_bytes: gpu.memory_used_bytes,
        memory_total_bytes: gpu.memory_total_bytes,
        utilization_gpu_pct: gpu.utilization_gpu_pct,
        utilization_memory_pct: gpu.utilization_memory_pct,
        temperature_c: gpu.temperature_c,
        power_mw: gpu.power_mw,
        fan_speed_pct: gpu.fan_speed_pct,
        clock_sm_mhz: gpu.clock_sm_mhz,
        clock_mem_mhz: gpu.clock_mem_mhz,
        ecc_volatile_errors: gpu.ecc_volatile_errors,
        mig_enabled: gpu.mig_enabled,
        reset_supported: gpu.reset_supported,
        error: gpu.error.clone(),
        vendor_index: gpu.vendor_index,
        gtt_used_bytes: gpu.gtt_used_bytes,
        gtt_total_bytes: gpu.gtt_total_bytes,
        health: Some(super::gpu_health::gpu_health(gpu)),
        process_summary: None,
    }
}

fn container(container: &Container) -> pb::Container {
    pb::Container {
        id: container.id.clone(),
        runtime: container.runtime.to_string(),
        pod_uid: container.pod_uid.clone(),
    }
}

fn process(process: GpuProcess<'_>) -> pb::GpuProcess {
    let slot = process.slot;
    let info = &slot.info;
    let kind = match slot.kind {
        ProcessKind::Compute => pb::ProcessKind::Compute,
        ProcessKind::Graphics => pb::ProcessKind::Graphics,
        ProcessKind::ComputeAndGraphics => pb::ProcessKind::ComputeAndGraphics,
    };
    pb::GpuProcess {
        gpu_index: slot.gpu_index,
        vendor: vendor(slot.vendor).into(),
        pid: info.pid,
        start_time_unix_ms: unix_ms(info.start_time),
        uid: info.uid,
        user: info.user.to_string(),
        name: info.name.clone(),
        cmdline: info.cmdline.clone(),
        used_memory_bytes: process.used_memory_bytes,
        sm_utilization_pct: process.sm_utilization_pct,
        kind: kind.into(),
        container: info.container.as_ref().map(container),
        exe_name: info.exe_name.clone(),
    }
}

/// The API view of a snapshot at `now`, restricted to what `filter` asks for, with every
/// process it selects.
pub fn snapshot(snapshot: &Snapshot, filter: &Filter, now: SystemTime) -> pb::Snapshot {
    snapshot_as(snapshot, filter, ProcessView::List, now)
}

/// The API view of a snapshot at `now`, restricted to what `filter` asks for, with the
/// processes it selects as `view` asks.
pub fn snapshot_as(
    snapshot: &Snapshot,
    filter: &Filter,
    view: ProcessView,
    now: SystemTime,
) -> pb::Snapshot {
    let stale_reason = snapshot.stale_reason(now);
    let mut gpus: Vec<pb::Gpu> = snapshot
        .gpus()
        .filter(|(vendor, _)| filter.wants_vendor(*vendor))
        .map(|(vendor, g)| gpu(vendor, g))
        .collect();
    let selected = snapshot.processes().filter(|p| filter.wants_process(p));
    let processes = match view {
        ProcessView::List => selected.map(process).collect(),
        ProcessView::Summary => {
            summarize(&mut gpus, selected);
            Vec::new()
        }
    };
    pb::Snapshot {
        host: snapshot.host.to_string(),
        timestamp_unix_ms: unix_ms(snapshot.taken_at),
        sequence: snapshot.sequence,
        vendors: snapshot
            .vendors
            .iter()
            .filter(|status| filter.wants_vendor(status.vendor))
            .map(|status| vendor_status(status, now))
            .collect(),
        stale: stale_reason.is_some(),
        stale_reason,
        age_ms: duration_ms(
            now.duration_since(snapshot.data_taken_at())
                .unwrap_or_default(),
        ),
        gpus,
        processes,
        tick_duration_us: u64::try_from(snapshot.tick_duration.as_micros()).unwrap_or(u64::MAX),
        poll_interval_ms: duration_ms(snapshot.poll_interval),
    }
}

/// One GPU's processes as they are counted for its summary.
#[derive(Default)]
struct Tally<'a> {
    pids: Vec<u32>,
    used_memory_bytes: Option<u64>,
    top: Option<GpuProcess<'a>>,
}

/// Sets the process summary of every GPU in `gpus` from `selected`, the processes the
/// filter let through. A process on a GPU that is not in `gpus` is not counted (a table of
/// GPUs has no row for it either).
fn summarize<'a>(gpus: &mut [pb::Gpu], selected: impl Iterator<Item = GpuProcess<'a>>) {
    let mut tallies: Vec<Tally<'a>> = gpus.iter().map(|_| Tally::default()).collect();
    for candidate in selected {
        let (vendor_, index) = (
            vendor(candidate.slot.vendor) as i32,
            candidate.slot.gpu_index,
        );
        let Some(at) = gpus
            .iter()
            .position(|gpu| gpu.vendor == vendor_ && gpu.index == index)
        else {
            continue;
        };
        let tally = &mut tallies[at];
        tally.pids.push(candidate.slot.info.pid);
        if let Some(bytes) = candidate.used_memory_bytes {
            tally.used_memory_bytes =
                Some(tally.used_memory_bytes.unwrap_or(0).saturating_add(bytes));
        }
        if tally.top.is_none_or(|top| ranks_above(&candidate, &top)) {
            tally.top = Some(candidate);
        }
    }
    for (gpu, mut tally) in gpus.iter_mut().zip(tallies) {
        tally.pids.sort_unstable();
        tally.pids.dedup();
        gpu.process_summary = Some(pb::GpuProcessSummary {
            process_count: u32::try_from(tally.pids.len()).unwrap_or(u32::MAX),
            used_memory_bytes: tally.used_memory_bytes,
            top_process: tally.top.map(process),
        });
    }
}

/// Whether `a` ranks above `b` as its GPU's top process: more memory (a known reading above
/// an unknown one), then the lower pid. Of two that rank alike the first seen stays, as the
/// full list's reader would pick it (gpukillctl's `render::top_process`).
fn ranks_above(a: &GpuProcess<'_>, b: &GpuProcess<'_>) -> bool {
    use std::cmp::Reverse;
    (a.used_memory_bytes, Reverse(a.slot.info.pid))
        > (b.used_memory_bytes, Reverse(b.slot.info.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_regex_is_invalid_argument_naming_it() {
        let filter = pb::SnapshotFilter {
            process_regex: Some("python(".into()),
            ..Default::default()
        };
        let error = Filter::try_from(Some(filter)).expect_err("bad regex");
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("python("), "{}", status.message());
    }

    #[test]
    fn enum_values_a_request_needs_are_checked_and_named() {
        let status = tonic::Status::from(guard_mode(0).expect_err("unspecified mode"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid guard mode 0: use GUARD_MODE_DRY_RUN (1), GUARD_MODE_SOFT (2) or \
             GUARD_MODE_HARD (3)"
        );
        assert_eq!(
            guard_mode(pb::GuardMode::Soft.into()).ok(),
            Some(Mode::Soft)
        );
        let status = tonic::Status::from(guard_entry_kind(9).expect_err("unknown kind"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid guard entry kind 9: use GUARD_ENTRY_KIND_USER (1), GUARD_ENTRY_KIND_GROUP \
             (2) or GUARD_ENTRY_KIND_GPU (3)"
        );
        assert!(guard_entry_kind(0).is_err());
        assert_eq!(
            guard_entry_kind(pb::GuardEntryKind::Gpu.into()).ok(),
            Some(EntryKind::Gpu)
        );
    }

    #[test]
    fn optional_enum_values_default_and_unknown_ones_are_invalid() {
        assert_eq!(event_type(0).ok(), Some(None));
        for kind in EventKind::ALL {
            let sent = pb::EventType::from(kind);
            assert_eq!(event_type(sent.into()).ok(), Some(Some(kind)));
        }
        let status = tonic::Status::from(event_type(99).expect_err("unknown type"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("invalid event type 99: use EVENT_TYPE_UNSPECIFIED (0), "),
            "{}",
            status.message()
        );
        assert_eq!(min_rogue_level(0).ok(), Some(RiskLevel::Low));
        for level in RiskLevel::ALL.into_iter().skip(1) {
            let sent = pb::RogueLevel::from(level);
            assert_eq!(min_rogue_level(sent.into()).ok(), Some(level));
        }
        let status = tonic::Status::from(min_rogue_level(-1).expect_err("unknown level"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid rogue level -1: use ROGUE_LEVEL_UNSPECIFIED (0), ROGUE_LEVEL_LOW (1), \
             ROGUE_LEVEL_MEDIUM (2), ROGUE_LEVEL_HIGH (3) or ROGUE_LEVEL_CRITICAL (4)"
        );
    }

    #[test]
    fn an_unknown_vendor_is_invalid_argument() {
        let filter = pb::SnapshotFilter {
            vendor: 42,
            ..Default::default()
        };
        let status = tonic::Status::from(Filter::try_from(Some(filter)).expect_err("bad vendor"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
