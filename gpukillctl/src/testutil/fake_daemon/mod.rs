//! A fake gpukilld: fixed answers, set per test, and a record of every request it got
//! (messages, deadlines, credentials and node metadata), served in process on a Unix socket or
//! on TCP.

mod cluster;
mod gpukill;
mod serve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpukill_proto::v1::{
    ContentionRequest, ContentionResponse, DrainRequest, DrainResponse, EventsRequest,
    EventsResponse, GuardPolicyResponse, GuardStatusResponse, GuardTestResponse,
    GuardUpdateRequest, GuardUpdateResponse, HistoryRequest, HistoryResponse, ImportAuditRequest,
    ImportAuditResponse, KillRequest, KillResponse, ListAllRequest, ListAllResponse, NodesResponse,
    ProcessView, ReleaseRequest, ReleaseResponse, ReservationsResponse, ReserveRequest,
    ReserveResponse, ResetRequest, ResetResponse, RogueRequest, RogueResponse, RunRequest,
    RunResponse, SessionsRequest, SessionsResponse, Snapshot, SnapshotFilter, SummaryRequest,
    SummaryResponse, UndrainRequest, UndrainResponse, UploadRetryRequest, UploadRetryResponse,
    UploadShowRequest, UploadShowResponse, UploadsRequest, UploadsResponse, VersionResponse,
};
use tonic::{Request, Status};

pub use serve::{ServedTcp, serve, serve_tcp};

/// A fake gpukilld serving fixed answers, recording the requests it got.
#[derive(Debug, Clone, Default)]
pub struct FakeDaemon {
    /// What List answers, or the status it fails with.
    pub list: Option<Result<Snapshot, Status>>,
    /// Answer a List that asks for `PROCESS_VIEW_SUMMARY` with the summaries of `list`
    /// ([`summarized`](crate::testutil::summarized)), as gpukilld does; unset, the full `list`,
    /// as a daemon that predates summaries does.
    pub list_summarizes: bool,
    /// The process view of every List request received.
    pub list_views: Arc<Mutex<Vec<ProcessView>>>,
    /// What Watch streams, item by item; the stream then ends, or stays open when
    /// `watch_stays_open` is set.
    pub watch: Vec<Result<Snapshot, Status>>,
    /// Keep the Watch stream open after its items (a live daemon between ticks).
    pub watch_stays_open: bool,
    /// What Version answers; `None` fails with UNIMPLEMENTED.
    pub version: Option<VersionResponse>,
    /// What Kill answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub kill: Option<Result<KillResponse, Status>>,
    /// What Events answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub events: Option<Result<EventsResponse, Status>>,
    /// What Reset answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub reset: Option<Result<ResetResponse, Status>>,
    /// What Sessions answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub sessions: Option<Result<SessionsResponse, Status>>,
    /// What History answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub history: Option<Result<HistoryResponse, Status>>,
    /// What Summary answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub summary: Option<Result<SummaryResponse, Status>>,
    /// What ImportAudit answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub import_audit: Option<Result<ImportAuditResponse, Status>>,
    /// What GuardStatus answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub guard_status: Option<Result<GuardStatusResponse, Status>>,
    /// What GuardTest answers, or the status it fails with; `None` fails with
    /// UNIMPLEMENTED.
    pub guard_test: Option<Result<GuardTestResponse, Status>>,
    /// What Rogue answers, or the status it fails with; `None` fails with UNIMPLEMENTED.
    pub rogue: Option<Result<RogueResponse, Status>>,
    /// Every Rogue request received.
    pub rogue_requests: Arc<Mutex<Vec<RogueRequest>>>,
    /// What GuardPolicy answers; `None` fails with UNIMPLEMENTED.
    pub guard_policy: Option<Result<GuardPolicyResponse, Status>>,
    /// What GuardUpdate answers; `None` fails with UNIMPLEMENTED.
    pub guard_update: Option<Result<GuardUpdateResponse, Status>>,
    /// Every GuardUpdate request received.
    pub guard_update_requests: Arc<Mutex<Vec<GuardUpdateRequest>>>,
    /// The filters of every List and Watch request received.
    pub filters: Arc<Mutex<Vec<SnapshotFilter>>>,
    /// Every Kill request received, with the deadline the client set.
    pub kill_requests: Arc<Mutex<Vec<ReceivedKill>>>,
    /// Every Events request received.
    pub events_requests: Arc<Mutex<Vec<EventsRequest>>>,
    /// Every Reset request received, with the deadline the client set.
    pub reset_requests: Arc<Mutex<Vec<ReceivedReset>>>,
    /// Every Sessions request received.
    pub sessions_requests: Arc<Mutex<Vec<SessionsRequest>>>,
    /// Every History request received.
    pub history_requests: Arc<Mutex<Vec<HistoryRequest>>>,
    /// Every Summary request received.
    pub summary_requests: Arc<Mutex<Vec<SummaryRequest>>>,
    /// Every ImportAudit request received.
    pub import_requests: Arc<Mutex<Vec<ImportAuditRequest>>>,
    /// What Uploads answers; `None` fails with UNIMPLEMENTED.
    pub uploads: Option<Result<UploadsResponse, Status>>,
    /// What UploadShow answers; `None` fails with UNIMPLEMENTED.
    pub upload_show: Option<Result<UploadShowResponse, Status>>,
    /// What UploadRetry answers; `None` fails with UNIMPLEMENTED.
    pub upload_retry: Option<Result<UploadRetryResponse, Status>>,
    /// Every Uploads request received.
    pub uploads_requests: Arc<Mutex<Vec<UploadsRequest>>>,
    /// Every UploadShow request received.
    pub upload_show_requests: Arc<Mutex<Vec<UploadShowRequest>>>,
    /// Every UploadRetry request received.
    pub upload_retry_requests: Arc<Mutex<Vec<UploadRetryRequest>>>,
    /// What Cluster.Nodes answers; `None` fails with UNIMPLEMENTED.
    pub cluster_nodes: Option<Result<NodesResponse, Status>>,
    /// What Cluster.List answers; `None` fails with UNIMPLEMENTED.
    pub cluster_list: Option<Result<ListAllResponse, Status>>,
    /// What Cluster.Contention answers; `None` fails with UNIMPLEMENTED.
    pub cluster_contention: Option<Result<ContentionResponse, Status>>,
    /// Every Cluster.List request received.
    pub cluster_list_requests: Arc<Mutex<Vec<ListAllRequest>>>,
    /// Every Cluster.Contention request received.
    pub cluster_contention_requests: Arc<Mutex<Vec<ContentionRequest>>>,
    /// The credentials and node metadata of every request received, in order.
    pub received: Arc<Mutex<Vec<ReceivedMetadata>>>,
    /// What Reserve answers; `None` fails with UNIMPLEMENTED.
    pub reserve: Option<Result<ReserveResponse, Status>>,
    /// Every Reserve request received.
    pub reserve_requests: Arc<Mutex<Vec<ReserveRequest>>>,
    /// What Release answers; `None` fails with UNIMPLEMENTED.
    pub release: Option<Result<ReleaseResponse, Status>>,
    /// Every Release request received.
    pub release_requests: Arc<Mutex<Vec<ReleaseRequest>>>,
    /// What Reservations answers; `None` fails with UNIMPLEMENTED.
    pub reservations: Option<Result<ReservationsResponse, Status>>,
    /// What Drain answers; `None` fails with UNIMPLEMENTED.
    pub drain: Option<Result<DrainResponse, Status>>,
    /// Every Drain request received.
    pub drain_requests: Arc<Mutex<Vec<DrainRequest>>>,
    /// What Undrain answers; `None` fails with UNIMPLEMENTED.
    pub undrain: Option<Result<UndrainResponse, Status>>,
    /// Every Undrain request received.
    pub undrain_requests: Arc<Mutex<Vec<UndrainRequest>>>,
    /// What each Run call does, in the order of the calls; a call beyond them fails with
    /// UNIMPLEMENTED.
    pub run: Vec<RunScript>,
    /// What each Run call received, one list per call, in the order of the calls.
    pub run_received: Arc<Mutex<Vec<Vec<RunReceived>>>>,
}

/// What the fake daemon does in one Run call: once the client's first message is in, it
/// sends `updates` (an error ends the stream there); it then keeps the stream open until the
/// client ends its side, and ends its own.
#[derive(Debug, Clone, Default)]
pub struct RunScript {
    /// The updates sent after the first message, in order.
    pub updates: Vec<Result<RunResponse, Status>>,
}

/// What the fake daemon received on one Run stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RunReceived {
    /// A message.
    Message(RunRequest),
    /// The client ended its stream.
    End,
    /// The stream broke, with the error.
    Broken(String),
}

/// The metadata of one request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMetadata {
    /// `GpuKill` or `Cluster`.
    pub service: &'static str,
    /// The `authorization` value, if any.
    pub authorization: Option<String>,
    /// The `gpukill-node` value, if any.
    pub node: Option<String>,
}

/// Records the metadata of every request of one service into `received`.
#[derive(Clone)]
struct Recorder {
    service: &'static str,
    received: Arc<Mutex<Vec<ReceivedMetadata>>>,
}

impl tonic::service::Interceptor for Recorder {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let metadata = ReceivedMetadata {
            service: self.service,
            authorization: value("authorization"),
            node: value(crate::conn::NODE_HEADER),
        };
        if let Ok(mut received) = self.received.lock() {
            received.push(metadata);
        }
        Ok(request)
    }
}

/// A Kill request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedKill {
    /// The request message.
    pub request: KillRequest,
    /// The deadline the client set (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
}

/// A Reset request as the fake daemon received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedReset {
    /// The request message.
    pub request: ResetRequest,
    /// The deadline the client set (`grpc-timeout`), if any.
    pub deadline: Option<Duration>,
}

impl FakeDaemon {
    fn record(&self, filter: Option<SnapshotFilter>) {
        if let Ok(mut filters) = self.filters.lock() {
            filters.push(filter.unwrap_or_default());
        }
    }
}

/// The deadline a request carries in its `grpc-timeout` header (e.g. `35000m`), if any.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}
