//! The text and JSON of `gpukillctl reserve`, `release` and `status` (the Reserve, Release
//! and Reservations RPCs).
//!
//! `reserve` (text): one line per GPU reserved,
//! `reserved GPU 3 (UUID, NAME) until YYYY-MM-DD HH:MM:SS (8h)`, the time in the chosen
//! [`TimeZone`] and the length from now in parentheses.
//!
//! `release` (text): one line per reservation ended,
//! `released GPU 3 (manual, held by alice since YYYY-MM-DD HH:MM:SS)`, or
//! `no reservations released`.
//!
//! `status` (table): one row per GPU, columns `GPU, STATUS, DETAILS`. STATUS is one of
//! - `AVAILABLE` (or `UNHEALTHY, not handed out: …` when its health is critical or lost, or
//!   `DRAINED by alice 2h ago: REASON` when an admin drained it);
//! - `IN USE by alice for 1h2m (run, pid 1234)`, with `, expires in 3h5m` when the run has a
//!   timeout, `(run, client disconnected)` while its gpukillctl is not connected, or
//!   `(manual, expires in 3h5m: NOTE)` for a manual reservation;
//! - `UNRESERVED USE by bob: pid 123 (python) 10 GiB` (processes joined with `, `, each
//!   user's after their name), or `BUSY, used by bob: ...` on a node where nobody reserves
//!   GPUs (no reservation ever made, none waiting): there, using a GPU breaks no rule;
//! - `WRONG USER on alice's reservation: bob pid 123 (python) 10 GiB`.
//!
//! A drained GPU that is held or used shows its state, then `; DRAINED by alice 2h ago:
//! REASON` (a drain ends no reservation); its DETAILS add `drained since DATE TIME`.
//!
//! Memory is `-` when unknown; lengths of time are compact ([`age`]) as of the answer's
//! `now`. DETAILS is the GPU's name and, for a held GPU, the reservation's id and times. When
//! requests wait, a `QUEUE` section follows: columns `#, USER, GPUS, WAITING, COMMAND`, first
//! in line first. On a terminal, DETAILS and then STATUS are narrowed to fit its width
//! (see [`super::layout`]).
//!
//! JSON: the answers with snake_case names and `null` for absent values: enums as lower-case
//! words (`available`, `reserved`, `unreserved_use`, `wrong_user`; `run`, `manual`), a GPU's
//! `drained` object (`by`, `uid`, `reason`, `since`, `since_unix_ms`; `null` when not
//! drained), every
//! time twice, RFC 3339 in UTC with milliseconds and as milliseconds since the epoch
//! (`..._unix_ms`), memory in bytes.

use gpukill_proto::v1::{
    GpuReservation, MisusingProcess, ReleaseResponse, Reservation, ReservationKind,
    ReservationState, ReservationsResponse, ReserveResponse, ReservedGpu, WaitingRequest,
};
use serde::Serialize;

use super::drain::{DrainJson, drained_text};
use super::json::{document, non_empty};
use super::layout::{self, Step};
use super::table::ABSENT;
use super::time::{TimeZone, age, date_time, rfc3339_millis, span};
use super::uploads::size;
use super::vendor_name;
use crate::error::Error;

/// The kind as JSON and text name it: `run` or `manual`; `unknown` for an unset or unknown
/// value.
pub fn kind_name(kind: i32) -> &'static str {
    match ReservationKind::try_from(kind) {
        Ok(ReservationKind::Run) => "run",
        Ok(ReservationKind::Manual) => "manual",
        Ok(ReservationKind::Unspecified) | Err(_) => "unknown",
    }
}

/// The state as JSON names it: `available`, `reserved`, `unreserved_use` or `wrong_user`
/// (the proto names in lower case); `unknown` for an unset or unknown value.
pub fn state_name(state: i32) -> &'static str {
    match ReservationState::try_from(state) {
        Ok(ReservationState::Available) => "available",
        Ok(ReservationState::Reserved) => "reserved",
        Ok(ReservationState::UnreservedUse) => "unreserved_use",
        Ok(ReservationState::WrongUser) => "wrong_user",
        Ok(ReservationState::Unspecified) | Err(_) => "unknown",
    }
}

/// `GPU 3 (UUID, NAME)`, leaving out what is unknown (and the parentheses when both are).
pub fn gpu_label(gpu: &ReservedGpu) -> String {
    let known: Vec<&str> = [gpu.uuid.as_deref(), gpu.name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if known.is_empty() {
        format!("GPU {}", gpu.index)
    } else {
        format!("GPU {} ({})", gpu.index, known.join(", "))
    }
}

/// GPU memory for status texts: `10 GiB`, `1.5 GiB`, `512 MiB`; `-` when unknown.
fn memory(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || ABSENT.to_owned(),
        |bytes| size(bytes).replace(".0 ", " "),
    )
}

/// The lines of `gpukillctl reserve`, the lengths counted from `now_ms`.
pub fn render_reserve(response: &ReserveResponse, now_ms: i64, tz: TimeZone) -> String {
    let until = date_time(response.expires_unix_ms, tz).unwrap_or_else(|| ABSENT.to_owned());
    let length = span(response.expires_unix_ms.saturating_sub(now_ms));
    response
        .gpus
        .iter()
        .map(|gpu| format!("reserved {} until {until} ({length})\n", gpu_label(gpu)))
        .collect()
}

/// The lines of `gpukillctl release`.
pub fn render_release(response: &ReleaseResponse, tz: TimeZone) -> String {
    if response.released.is_empty() {
        return "no reservations released\n".to_owned();
    }
    response
        .released
        .iter()
        .map(|reservation| {
            let gpu = reservation.gpu.clone().unwrap_or_default();
            let since =
                date_time(reservation.start_unix_ms, tz).unwrap_or_else(|| ABSENT.to_owned());
            format!(
                "released GPU {} ({}, held by {} since {since})\n",
                gpu.index,
                kind_name(reservation.kind),
                reservation.user
            )
        })
        .collect()
}

/// How the status table narrows to fit: DETAILS (names and times that `--wide` shows),
/// then STATUS, whose beginning says the state.
const STATUS_STEPS: [Step; 3] = [
    Step::Shrink("DETAILS", 24),
    Step::Drop("DETAILS"),
    Step::Shrink("STATUS", 30),
];

/// The table of `gpukillctl status`, then the queue when requests wait; no wider than
/// `width`, when given, as far as the columns can narrow.
pub fn render_status(
    response: &ReservationsResponse,
    tz: TimeZone,
    width: Option<usize>,
) -> String {
    let now = response.now_unix_ms;
    let mut text = layout::fitted(
        &["GPU", "STATUS", "DETAILS"],
        response.gpus.iter().map(|gpu| {
            let index = gpu.gpu.as_ref().map_or(0, |gpu| gpu.index);
            vec![
                index.to_string(),
                status_text(gpu, now, response.reservations_used),
                details(gpu, tz),
            ]
        }),
        &STATUS_STEPS,
        width,
    );
    if !response.queue.is_empty() {
        text.push_str("\nQUEUE\n");
        text.push_str(&layout::fitted(
            &["#", "USER", "GPUS", "WAITING", "COMMAND"],
            response
                .queue
                .iter()
                .enumerate()
                .map(|(place, request)| queue_row(place + 1, request, now)),
            &[Step::Shrink("COMMAND", 16)],
            width,
        ));
        let listed = u32::try_from(response.queue.len()).unwrap_or(u32::MAX);
        if response.queue_total > listed {
            text.push_str(&format!(
                "… and {} more waiting\n",
                response.queue_total - listed
            ));
        }
    }
    text
}

/// The STATUS text of one GPU, lengths of time as of `now_ms`. `reservations_used`: whether
/// anyone reserves GPUs on the node; when nobody does, a used GPU is `BUSY`, not
/// `UNRESERVED USE`.
pub fn status_text(gpu: &GpuReservation, now_ms: i64, reservations_used: bool) -> String {
    let state = state_text(gpu, now_ms, reservations_used);
    match &gpu.drained {
        // Drained and free otherwise: the drain is what matters.
        Some(drain) if state == "AVAILABLE" => drained_text(drain, now_ms),
        Some(drain) => format!("{state}; {}", drained_text(drain, now_ms)),
        None => state,
    }
}

/// The STATUS text of one GPU without its drain.
fn state_text(gpu: &GpuReservation, now_ms: i64, reservations_used: bool) -> String {
    let holder = gpu.reservation.as_ref();
    match ReservationState::try_from(gpu.state) {
        Ok(ReservationState::Available) => match &gpu.unfit {
            Some(unfit) => format!("UNHEALTHY, not handed out: {unfit}"),
            None => "AVAILABLE".to_owned(),
        },
        Ok(ReservationState::Reserved) => match holder {
            Some(reservation) => in_use(reservation, now_ms),
            None => "IN USE".to_owned(),
        },
        Ok(ReservationState::UnreservedUse) if reservations_used => {
            format!("UNRESERVED USE by {}", by_user(&gpu.misuse))
        }
        Ok(ReservationState::UnreservedUse) => format!("BUSY, used by {}", by_user(&gpu.misuse)),
        Ok(ReservationState::WrongUser) => {
            let processes: Vec<String> = gpu
                .misuse
                .iter()
                .map(|process| format!("{} {}", process.user, process_words(process)))
                .collect();
            format!(
                "WRONG USER on {}'s reservation: {}",
                holder.map_or(ABSENT, |reservation| reservation.user.as_str()),
                processes.join(", ")
            )
        }
        Ok(ReservationState::Unspecified) | Err(_) => "UNKNOWN".to_owned(),
    }
}

/// `IN USE by alice for 1h2m (run, pid 1234)` and its variants (see the module docs).
fn in_use(reservation: &Reservation, now_ms: i64) -> String {
    let held = age(now_ms.saturating_sub(reservation.start_unix_ms));
    let mut how = vec![kind_name(reservation.kind).to_owned()];
    let is_run = reservation.kind == ReservationKind::Run as i32;
    if is_run && !reservation.attached {
        how.push("client disconnected".to_owned());
    } else if let Some(pid) = reservation.client_pid.filter(|_| is_run) {
        how.push(format!("pid {pid}"));
    }
    if let Some(expires) = reservation.expires_unix_ms {
        how.push(format!(
            "expires in {}",
            age(expires.saturating_sub(now_ms))
        ));
    }
    let mut words = how.join(", ");
    if !is_run && !reservation.note.is_empty() {
        words.push_str(": ");
        words.push_str(&reservation.note);
    }
    format!("IN USE by {} for {held} ({words})", reservation.user)
}

/// `pid 123 (python) 10 GiB`.
fn process_words(process: &MisusingProcess) -> String {
    format!(
        "pid {} ({}) {}",
        process.pid,
        process.name,
        memory(process.used_memory_bytes)
    )
}

/// `bob: pid 123 (python) 10 GiB, pid 124 (x) -, carol: pid 5 (y) 1 GiB`: each user (in the
/// order first seen) and their processes.
fn by_user(processes: &[MisusingProcess]) -> String {
    let mut users: Vec<(&str, Vec<String>)> = Vec::new();
    for process in processes {
        let words = process_words(process);
        match users.iter_mut().find(|(user, _)| *user == process.user) {
            Some((_, list)) => list.push(words),
            None => users.push((&process.user, vec![words])),
        }
    }
    let groups: Vec<String> = users
        .into_iter()
        .map(|(user, list)| format!("{user}: {}", list.join(", ")))
        .collect();
    groups.join(", ")
}

/// The DETAILS of one GPU: its name, then for a held GPU `reservation ID`,
/// `since DATE TIME` and `until DATE TIME`.
fn details(gpu: &GpuReservation, tz: TimeZone) -> String {
    let mut parts: Vec<String> = gpu
        .gpu
        .as_ref()
        .and_then(|gpu| gpu.name.clone())
        .into_iter()
        .collect();
    if let Some(since) = gpu
        .drained
        .as_ref()
        .and_then(|drain| date_time(drain.since_unix_ms, tz))
    {
        parts.push(format!("drained since {since}"));
    }
    if let Some(reservation) = &gpu.reservation {
        parts.push(format!("reservation {}", reservation.id));
        if let Some(since) = date_time(reservation.start_unix_ms, tz) {
            parts.push(format!("since {since}"));
        }
        if let Some(until) = reservation.expires_unix_ms.and_then(|ms| date_time(ms, tz)) {
            parts.push(format!("until {until}"));
        }
    }
    if parts.is_empty() {
        ABSENT.to_owned()
    } else {
        parts.join(", ")
    }
}

/// The queue table's row for the request at `place` (1 first).
fn queue_row(place: usize, request: &WaitingRequest, now_ms: i64) -> Vec<String> {
    vec![
        place.to_string(),
        request.user.clone(),
        request.count.max(1).to_string(),
        age(now_ms.saturating_sub(request.since_unix_ms)),
        if request.command.is_empty() {
            ABSENT.to_owned()
        } else {
            request.command.clone()
        },
    ]
}

/// A time as JSON shows it: RFC 3339 in UTC with milliseconds, and the milliseconds; both
/// `null` when the time is unset.
fn time_pair(ms: Option<i64>) -> (Option<String>, Option<i64>) {
    let text = ms.and_then(rfc3339_millis);
    let ms = text.as_ref().and(ms);
    (text, ms)
}

/// A GPU in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuJson {
    /// Index as the vendor numbers it.
    pub gpu_index: u32,
    /// `nvidia`, `amd`, `intel` or `apple`.
    pub vendor: &'static str,
    /// Stable identifier.
    pub uuid: Option<String>,
    /// Product name.
    pub name: Option<String>,
}

impl GpuJson {
    /// The JSON view of `gpu`; an absent GPU (which the daemon never sends) shows GPU 0.
    pub fn new(gpu: Option<&ReservedGpu>) -> Self {
        let gpu = gpu.cloned().unwrap_or_default();
        GpuJson {
            gpu_index: gpu.index,
            vendor: vendor_name(gpu.vendor),
            uuid: gpu.uuid,
            name: gpu.name,
        }
    }
}

/// The JSON document of `gpukillctl reserve --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReserveJson {
    /// The reservation's id, shared by its GPUs.
    pub reservation_id: i64,
    /// The GPUs reserved, in index order.
    pub gpus: Vec<GpuJson>,
    /// When the reservation ends, RFC 3339 UTC with milliseconds.
    pub expires: Option<String>,
    /// When the reservation ends, milliseconds since the epoch.
    pub expires_unix_ms: Option<i64>,
}

impl ReserveJson {
    /// The JSON view of `response`.
    pub fn new(response: &ReserveResponse) -> Self {
        let (expires, expires_unix_ms) = time_pair(Some(response.expires_unix_ms));
        ReserveJson {
            reservation_id: response.reservation_id,
            gpus: response
                .gpus
                .iter()
                .map(|gpu| GpuJson::new(Some(gpu)))
                .collect(),
            expires,
            expires_unix_ms,
        }
    }
}

/// A reservation in the JSON (its GPU is given beside it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReservationJson {
    /// The reservation's id, shared by the GPUs of one request.
    pub id: i64,
    /// The holder's user name.
    pub user: String,
    /// The holder's uid.
    pub uid: u32,
    /// `run` or `manual`.
    pub kind: &'static str,
    /// When it began, RFC 3339 UTC with milliseconds.
    pub start: Option<String>,
    /// When it began, milliseconds since the epoch.
    pub start_unix_ms: Option<i64>,
    /// When it ends on its own; `null` when it does not.
    pub expires: Option<String>,
    /// When it ends on its own, milliseconds since the epoch.
    pub expires_unix_ms: Option<i64>,
    /// The note (manual) or the command (run); `null` when empty.
    pub note: Option<String>,
    /// The pid of the `gpukillctl run` holding it.
    pub client_pid: Option<i32>,
    /// A run reservation: whether its gpukillctl is connected now.
    pub attached: bool,
}

impl ReservationJson {
    /// The JSON view of `reservation`.
    pub fn new(reservation: &Reservation) -> Self {
        let (start, start_unix_ms) = time_pair(Some(reservation.start_unix_ms));
        let (expires, expires_unix_ms) = time_pair(reservation.expires_unix_ms);
        ReservationJson {
            id: reservation.id,
            user: reservation.user.clone(),
            uid: reservation.uid,
            kind: kind_name(reservation.kind),
            start,
            start_unix_ms,
            expires,
            expires_unix_ms,
            note: non_empty(&reservation.note),
            client_pid: reservation.client_pid,
            attached: reservation.attached,
        }
    }
}

/// A reservation with its GPU, as `release` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleasedJson {
    /// The GPU.
    #[serde(flatten)]
    pub gpu: GpuJson,
    /// The reservation that ended on it.
    #[serde(flatten)]
    pub reservation: ReservationJson,
}

/// The JSON document of `gpukillctl release --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseJson {
    /// What ended, one entry per GPU.
    pub released: Vec<ReleasedJson>,
}

impl ReleaseJson {
    /// The JSON view of `response`.
    pub fn new(response: &ReleaseResponse) -> Self {
        ReleaseJson {
            released: response
                .released
                .iter()
                .map(|reservation| ReleasedJson {
                    gpu: GpuJson::new(reservation.gpu.as_ref()),
                    reservation: ReservationJson::new(reservation),
                })
                .collect(),
        }
    }
}

/// A process using a GPU it does not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MisuseJson {
    /// Process id.
    pub pid: u32,
    /// The owner's user name.
    pub user: String,
    /// The owner's uid.
    pub uid: u32,
    /// Short name (comm).
    pub proc_name: String,
    /// GPU memory it uses, bytes; `null` when the vendor does not say.
    pub used_memory_bytes: Option<u64>,
}

/// One GPU's reservation state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStateJson {
    /// The GPU.
    #[serde(flatten)]
    pub gpu: GpuJson,
    /// `available`, `reserved`, `unreserved_use` or `wrong_user`.
    pub state: &'static str,
    /// The reservation, when the GPU is held.
    pub reservation: Option<ReservationJson>,
    /// The processes of users who do not hold it.
    pub misuse: Vec<MisuseJson>,
    /// Why reserve and run do not hand it out although nobody holds it (critical or lost
    /// health); `null` otherwise.
    pub unfit: Option<String>,
    /// An admin's drain: reserve and run do not hand it out (a reservation held on it runs
    /// on); `null` when not drained.
    pub drained: Option<DrainJson>,
}

/// A `run` request waiting for GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitingJson {
    /// The user.
    pub user: String,
    /// The uid.
    pub uid: u32,
    /// How many GPUs it waits for.
    pub count: u32,
    /// Since when, RFC 3339 UTC with milliseconds.
    pub since: Option<String>,
    /// Since when, milliseconds since the epoch.
    pub since_unix_ms: Option<i64>,
    /// The command it will run.
    pub command: String,
}

/// The JSON document of `gpukillctl status --output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusJson {
    /// When gpukilld took the state, RFC 3339 UTC with milliseconds.
    pub now: Option<String>,
    /// When gpukilld took the state, milliseconds since the epoch.
    pub now_unix_ms: Option<i64>,
    /// Memory above which a GPU counts as used, bytes.
    pub unreserved_threshold_bytes: u64,
    /// Every GPU, in index order.
    pub gpus: Vec<GpuStateJson>,
    /// The waiting requests, first in line first (the daemon lists at most 100).
    pub queue: Vec<WaitingJson>,
    /// How many requests wait in all.
    pub queue_total: u32,
    /// Whether anyone reserves GPUs on this node (a reservation was ever made, or a request
    /// waits); when false, `unreserved_use` only means the GPU is busy.
    pub reservations_used: bool,
}

impl StatusJson {
    /// The JSON view of `response`.
    pub fn new(response: &ReservationsResponse) -> Self {
        let (now, now_unix_ms) = time_pair(Some(response.now_unix_ms));
        StatusJson {
            now,
            now_unix_ms,
            unreserved_threshold_bytes: response.unreserved_threshold_bytes,
            queue_total: response.queue_total,
            reservations_used: response.reservations_used,
            gpus: response
                .gpus
                .iter()
                .map(|gpu| GpuStateJson {
                    gpu: GpuJson::new(gpu.gpu.as_ref()),
                    state: state_name(gpu.state),
                    reservation: gpu.reservation.as_ref().map(ReservationJson::new),
                    misuse: gpu
                        .misuse
                        .iter()
                        .map(|process| MisuseJson {
                            pid: process.pid,
                            user: process.user.clone(),
                            uid: process.uid,
                            proc_name: process.name.clone(),
                            used_memory_bytes: process.used_memory_bytes,
                        })
                        .collect(),
                    unfit: gpu.unfit.clone(),
                    drained: gpu.drained.as_ref().map(DrainJson::new),
                })
                .collect(),
            queue: response
                .queue
                .iter()
                .map(|request| {
                    let (since, since_unix_ms) = time_pair(Some(request.since_unix_ms));
                    WaitingJson {
                        user: request.user.clone(),
                        uid: request.uid,
                        count: request.count.max(1),
                        since,
                        since_unix_ms,
                        command: request.command.clone(),
                    }
                })
                .collect(),
        }
    }
}

/// `response` of Reserve as one indented JSON document, ending in a newline.
pub fn reserve_json(response: &ReserveResponse) -> Result<String, Error> {
    document(&ReserveJson::new(response))
}

/// `response` of Release as one indented JSON document, ending in a newline.
pub fn release_json(response: &ReleaseResponse) -> Result<String, Error> {
    document(&ReleaseJson::new(response))
}

/// `response` of Reservations as one indented JSON document, ending in a newline.
pub fn status_json(response: &ReservationsResponse) -> Result<String, Error> {
    document(&StatusJson::new(response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::escape;
    use crate::testutil::{self, NOW_MS, assert_snapshot};
    use gpukill_proto::v1::GpuDrain;
    use serde_json::{Value, json};

    #[test]
    fn reserve_prints_a_line_per_gpu() {
        let response = testutil::reserve_response();
        assert_eq!(
            render_reserve(&response, NOW_MS - 30, TimeZone::Utc),
            "reserved GPU 0 (GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a, NVIDIA \
             A100-SXM4-80GB) until 2024-05-01 20:00:00 (8h)\n\
             reserved GPU 3 until 2024-05-01 20:00:00 (8h)\n"
        );
    }

    #[test]
    fn reserve_json_has_the_ids_and_both_times() {
        let text = reserve_json(&testutil::reserve_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            actual,
            json!({
                "reservation_id": 17,
                "gpus": [
                    {
                        "gpu_index": 0,
                        "vendor": "nvidia",
                        "uuid": "GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a",
                        "name": "NVIDIA A100-SXM4-80GB",
                    },
                    {"gpu_index": 3, "vendor": "nvidia", "uuid": null, "name": null},
                ],
                "expires": "2024-05-01T20:00:00.250Z",
                "expires_unix_ms": NOW_MS + 8 * 3_600_000,
            })
        );
    }

    #[test]
    fn release_prints_a_line_per_reservation_or_says_none() {
        let response = testutil::release_response();
        assert_eq!(
            render_release(&response, TimeZone::Utc),
            "released GPU 2 (manual, held by alice since 2024-05-01 09:00:00)\n\
             released GPU 3 (run, held by alice since 2024-05-01 11:58:59)\n"
        );
        assert_eq!(
            render_release(&ReleaseResponse::default(), TimeZone::Utc),
            "no reservations released\n"
        );
    }

    #[test]
    fn release_json_lists_each_gpu_with_its_reservation() {
        let text = release_json(&testutil::release_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            actual["released"][0],
            json!({
                "gpu_index": 2,
                "vendor": "nvidia",
                "uuid": "GPU-2",
                "name": null,
                "id": 11,
                "user": "alice",
                "uid": 1000,
                "kind": "manual",
                "start": "2024-05-01T09:00:00.000Z",
                "start_unix_ms": 1_714_554_000_000_i64,
                "expires": "2024-05-01T17:00:00.000Z",
                "expires_unix_ms": 1_714_582_800_000_i64,
                "note": "thesis runs",
                "client_pid": null,
                "attached": false,
            })
        );
        assert_eq!(actual["released"][1]["kind"], "run");
        assert_eq!(actual["released"][1]["expires"], Value::Null);
        let empty = release_json(&ReleaseResponse::default()).expect("encode");
        assert_eq!(empty, "{\n  \"released\": []\n}\n");
    }

    #[test]
    fn status_shows_each_state_and_the_queue() {
        assert_snapshot(
            "status-table.txt",
            &render_status(&testutil::reservations_response(), TimeZone::Utc, None),
        );
    }

    #[test]
    fn status_texts_are_exactly_the_documented_ones() {
        let response = testutil::reservations_response();
        let texts: Vec<String> = response
            .gpus
            .iter()
            .map(|gpu| status_text(gpu, response.now_unix_ms, true))
            .collect();
        assert_eq!(
            texts,
            [
                "AVAILABLE",
                "IN USE by alice for 1h2m (run, pid 1234)",
                "IN USE by carol for 5m3s (manual, expires in 3h5m: thesis runs)",
                "UNRESERVED USE by bob: pid 123 (python) 10 GiB, pid 124 (train) -, \
                 dave: pid 9 (x) 1.5 GiB",
                "WRONG USER on alice's reservation: bob pid 123 (python) 10 GiB",
                "IN USE by erin for 12s (run, client disconnected, expires in 59m47s)",
                "IN USE by frank for 12s (run, pid 77, expires in 59m47s)",
            ]
        );
    }

    /// The status of [`testutil::reservations_response`] with `note` on carol's
    /// reservation, a misusing process named `name` and `command` queued.
    fn hostile_status(note: &str, name: &str, command: &str) -> ReservationsResponse {
        let mut response = testutil::reservations_response();
        if let Some(carol) = response.gpus[2].reservation.as_mut() {
            carol.note = note.to_owned();
        }
        response.gpus[3].misuse[0].name = name.to_owned();
        response.queue[0].command = command.to_owned();
        response
    }

    #[test]
    fn hostile_notes_names_and_commands_are_escaped_in_the_status_table() {
        let text = render_status(
            &hostile_status(
                "\x1b]0;pwned\x07\x1b[2K\rthesis",
                "\x1b]52;c;Y2F0\x07",
                "sh\n-c\t\u{202e}x",
            ),
            TimeZone::Utc,
            None,
        );
        assert!(
            !text.chars().any(|c| c != '\n' && escape::is_unsafe(c)),
            "{text:?}"
        );
        // Column widths are those of the escaped text; nothing else changed.
        let escaped = hostile_status(
            "\\e]0;pwned\\x07\\e[2K\\rthesis",
            "\\e]52;c;Y2F0\\x07",
            "sh\\n-c\\t\\u{202e}x",
        );
        assert_eq!(text, render_status(&escaped, TimeZone::Utc, None));
        assert!(
            text.contains("expires in 3h5m: \\e]0;pwned\\x07\\e[2K\\rthesis)"),
            "{text}"
        );
    }

    #[test]
    fn hostile_notes_stay_exact_in_json() {
        let note = "\x1b]0;pwned\x07\x1b[2K\r \u{9b}31m \u{7f} \u{202e}";
        let text = status_json(&hostile_status(note, "x", "y")).expect("encode");
        assert!(
            !text.chars().any(|c| c != '\n' && escape::is_unsafe(c)),
            "{text:?}"
        );
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(actual["gpus"][2]["reservation"]["note"], note);
    }

    #[test]
    fn a_drained_gpu_says_who_drained_it_when_and_why_after_its_reservation() {
        let mut response = testutil::reservations_response();
        response.gpus[0].drained = Some(testutil::gpu_drain());
        response.gpus[2].drained = Some(GpuDrain {
            reason: String::new(),
            ..testutil::gpu_drain()
        });
        let now = response.now_unix_ms;
        assert_eq!(
            status_text(&response.gpus[0], now, true),
            "DRAINED by root 2h0m ago: fan noise"
        );
        assert_eq!(
            status_text(&response.gpus[2], now, true),
            "IN USE by carol for 5m3s (manual, expires in 3h5m: thesis runs); DRAINED by root 2h0m ago"
        );
        // Drained and unhealthy: both are said.
        response.gpus[0].unfit = Some("its health is critical (Xid 79)".to_owned());
        assert_eq!(
            status_text(&response.gpus[0], now, true),
            "UNHEALTHY, not handed out: its health is critical (Xid 79); DRAINED by root 2h0m ago: fan noise"
        );
        let text = render_status(&response, TimeZone::Utc, None);
        assert!(text.contains("drained since 2024-05-01 10:00:00"), "{text}");
        let json: Value =
            serde_json::from_str(&status_json(&response).expect("encode")).expect("JSON");
        assert_eq!(
            json["gpus"][0]["drained"],
            json!({
                "by": "root",
                "uid": 0,
                "reason": "fan noise",
                "since": "2024-05-01T10:00:00.250Z",
                "since_unix_ms": NOW_MS - 7_200_000,
            })
        );
        assert_eq!(json["gpus"][2]["drained"]["reason"], Value::Null);
        assert_eq!(json["gpus"][2]["state"], "reserved");
        assert_eq!(json["gpus"][1]["drained"], Value::Null);
    }

    #[test]
    fn a_node_without_reservations_calls_used_gpus_busy() {
        let response = ReservationsResponse {
            reservations_used: false,
            ..testutil::reservations_response()
        };
        let busy = status_text(&response.gpus[3], response.now_unix_ms, false);
        assert_eq!(
            busy,
            "BUSY, used by bob: pid 123 (python) 10 GiB, pid 124 (train) -, dave: pid 9 (x) 1.5 GiB"
        );
        let text = render_status(&response, TimeZone::Utc, None);
        assert!(!text.contains("UNRESERVED"), "{text}");
        let json: Value =
            serde_json::from_str(&status_json(&response).expect("encode")).expect("JSON");
        assert_eq!(json["reservations_used"], false);
        assert_eq!(json["gpus"][3]["state"], "unreserved_use");
    }

    #[test]
    fn the_status_table_fits_a_terminal() {
        let text = render_status(&testutil::reservations_response(), TimeZone::Utc, Some(100));
        for line in text.lines() {
            assert!(layout::text_width(line) <= 100, "{line:?} in\n{text}");
        }
        // Details go before the status is cut.
        assert!(!text.contains("DETAILS"), "{text}");
        assert!(
            text.contains("IN USE by carol for 5m3s (manual, expires in 3h5m: thesis runs)"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_queue_adds_nothing() {
        let response = ReservationsResponse {
            queue: Vec::new(),
            ..testutil::reservations_response()
        };
        let text = render_status(&response, TimeZone::Utc, None);
        assert!(!text.contains("QUEUE"), "{text}");
    }

    #[test]
    fn status_json_names_states_and_kinds_in_lower_case() {
        let text = status_json(&testutil::reservations_response()).expect("encode");
        let actual: Value = serde_json::from_str(&text).expect("valid JSON");
        let states: Vec<&str> = actual["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .map(|gpu| gpu["state"].as_str().expect("state"))
            .collect();
        assert_eq!(
            states,
            [
                "available",
                "reserved",
                "reserved",
                "unreserved_use",
                "wrong_user",
                "reserved",
                "reserved"
            ]
        );
        assert_eq!(actual["now"], "2024-05-01T12:00:00.250Z");
        assert_eq!(actual["now_unix_ms"], NOW_MS);
        assert_eq!(actual["unreserved_threshold_bytes"], 1_073_741_824_u64);
        assert_eq!(actual["gpus"][0]["reservation"], Value::Null);
        assert_eq!(actual["gpus"][1]["reservation"]["kind"], "run");
        assert_eq!(actual["gpus"][1]["reservation"]["client_pid"], 1234);
        assert_eq!(actual["gpus"][2]["reservation"]["kind"], "manual");
        assert_eq!(
            actual["gpus"][3]["misuse"][1],
            json!({
                "pid": 124,
                "user": "bob",
                "uid": 1001,
                "proc_name": "train",
                "used_memory_bytes": null,
            })
        );
        assert_eq!(
            actual["queue"][0],
            json!({
                "user": "gina",
                "uid": 1007,
                "count": 2,
                "since": "2024-05-01T11:55:00.250Z",
                "since_unix_ms": NOW_MS - 300_000,
                "command": "python train.py --gpus 2",
            })
        );
    }

    #[test]
    fn names_are_the_proto_names_in_lower_case() {
        for value in 1..=4 {
            let state = ReservationState::try_from(value).expect("known state");
            let proto = state.as_str_name().trim_start_matches("RESERVATION_STATE_");
            assert_eq!(state_name(value), proto.to_lowercase());
        }
        for value in 1..=2 {
            let kind = ReservationKind::try_from(value).expect("known kind");
            let proto = kind.as_str_name().trim_start_matches("RESERVATION_KIND_");
            assert_eq!(kind_name(value), proto.to_lowercase());
        }
        assert_eq!(state_name(0), "unknown");
        assert_eq!(kind_name(99), "unknown");
    }

    #[test]
    fn memory_drops_a_zero_decimal() {
        assert_eq!(memory(Some(10 * 1024 * 1024 * 1024)), "10 GiB");
        assert_eq!(memory(Some(1536 * 1024 * 1024)), "1.5 GiB");
        assert_eq!(memory(Some(512 * 1024 * 1024)), "512 MiB");
        assert_eq!(memory(None), "-");
    }
}
