//! `gpukillctl events`: the Events RPC once; the audit trail as a table or JSON.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpukill_proto::v1::{EventType, EventsRequest};

use crate::Output;
use crate::cli::{EventsArgs, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::events;

/// Runs `gpukillctl events` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &EventsArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .events(conn::unary(request(args, SystemTime::now())))
        .await
        .map_err(|status| Error::rpc("Events", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => events::render(&response, out.tz),
        OutputFormat::Json => events::json(&response)?,
    };
    out.write(&text)
}

/// The request the arguments ask for, `--since` counted back from `now`.
fn request(args: &EventsArgs, now: SystemTime) -> EventsRequest {
    EventsRequest {
        since_unix_ms: args.since.map(|since| since_unix_ms(now, since)),
        r#type: args
            .event_type
            .map_or(EventType::Unspecified, EventType::from)
            .into(),
        limit: args.limit,
    }
}

/// `now - since` in milliseconds since the epoch; the epoch itself when `since` reaches back
/// further than that (`--since 100y` then means everything).
fn since_unix_ms(now: SystemTime, since: Duration) -> i64 {
    now.checked_sub(since)
        .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |start| {
            i64::try_from(start.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, millis, run_cli, serve};
    use tonic::Status;

    #[tokio::test]
    async fn events_sends_since_and_type_and_prints_the_trail() {
        let daemon = FakeDaemon {
            events: Some(Ok(testutil::events_response())),
            ..Default::default()
        };
        let requests = daemon.events_requests.clone();
        let served = serve(daemon);
        let before = millis(SystemTime::now());
        let (result, text, _) = run_cli(
            &served.socket,
            &["events", "--since", "1h", "--type", "deny"],
        )
        .await;
        let after = millis(SystemTime::now());
        result.expect("events succeeds");
        assert_eq!(
            text,
            events::render(&testutil::events_response(), TimeZone::Utc)
        );
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.r#type(), EventType::Deny);
        assert_eq!(request.limit, 100);
        let since = request.since_unix_ms.expect("since is sent");
        let hour = 3_600_000;
        assert!(
            (before - hour..=after - hour).contains(&since),
            "{since} not within [{}, {}]",
            before - hour,
            after - hour
        );
    }

    #[tokio::test]
    async fn without_filters_nothing_is_narrowed() {
        let daemon = FakeDaemon {
            events: Some(Ok(testutil::events_response())),
            ..Default::default()
        };
        let requests = daemon.events_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["events", "-o", "json"]).await;
        result.expect("events succeeds");
        assert_eq!(
            text,
            events::json(&testutil::events_response()).expect("encode")
        );
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [EventsRequest {
                since_unix_ms: None,
                r#type: EventType::Unspecified.into(),
                limit: 100,
            }]
        );
    }

    #[tokio::test]
    async fn an_rpc_error_maps_as_usual() {
        let served = serve(FakeDaemon {
            events: Some(Err(Status::invalid_argument("unknown event type \"x\""))),
            ..Default::default()
        });
        let (result, text, _) = run_cli(&served.socket, &["events"]).await;
        let err = result.expect_err("the daemon refuses");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "Events failed (InvalidArgument): unknown event type \"x\""
        );
        assert_eq!(text, "");
    }

    #[test]
    fn since_counts_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_millis(testutil::NOW_MS.unsigned_abs());
        let args = EventsArgs {
            since: Some(Duration::from_secs(7 * 86_400)),
            event_type: Some(cli::EventType::Kill),
            limit: 5,
            output: OutputFormat::Table,
        };
        assert_eq!(
            request(&args, now),
            EventsRequest {
                since_unix_ms: Some(testutil::NOW_MS - 7 * 86_400_000),
                r#type: EventType::Kill.into(),
                limit: 5,
            }
        );
        assert_eq!(
            since_unix_ms(now, Duration::from_secs(100 * 365 * 86_400)),
            0
        );
        assert_eq!(since_unix_ms(now, Duration::ZERO), testutil::NOW_MS);
    }
}
