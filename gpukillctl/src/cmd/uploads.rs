//! `gpukillctl uploads list|show|retry`: the Uploads, UploadShow and UploadRetry RPCs, one
//! each (the daemon's `rpc/uploads.rs`).
//!
//! Refusals map as every rpc error does ([`Error::exit_code`]): a gpukilld whose uploads are
//! off answers FAILED_PRECONDITION saying what to set (exit 5); an hour without an outbox
//! entry is NOT_FOUND (exit 3); a retry by someone who is not an admin is PERMISSION_DENIED
//! (exit 4), and a retry of an hour that is pending or delivered FAILED_PRECONDITION (exit
//! 5, like every other "not in this state" answer).

use std::io::Write;
use std::time::SystemTime;

use gpukill_proto::v1::{
    UploadRetryRequest, UploadShowRequest, UploadStatus, UploadSummary, UploadsRequest,
};

use crate::Output;
use crate::cli::{
    OutputFormat, UploadRetryArgs, UploadShowArgs, UploadStatusArg, UploadsCommand, UploadsListArgs,
};
use crate::conn;
use crate::error::Error;
use crate::render::uploads::{self, hour_start};

/// Runs `gpukillctl uploads ...` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    command: &UploadsCommand,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    match command {
        UploadsCommand::List(args) => list(target, args, out).await,
        UploadsCommand::Show(args) => show(target, args, out).await,
        UploadsCommand::Retry(args) => retry(target, args, out).await,
    }
}

/// `gpukillctl uploads list`: the table (or JSON), then a note on standard error when
/// `--limit` left hours out.
async fn list<W: Write, E: Write>(
    target: &conn::Target,
    args: &UploadsListArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .uploads(conn::unary(list_request(args)))
        .await
        .map_err(|status| Error::rpc("Uploads", status))?
        .into_inner();
    let Some(summary) = response.summary.clone() else {
        return Err(Error::EmptyResponse {
            rpc: "Uploads",
            missing: "the outbox summary",
        });
    };
    let text = match args.output {
        OutputFormat::Table => uploads::render_list(&response, &summary, out.tz),
        OutputFormat::Json => uploads::list_json(&response, &summary)?,
    };
    out.write(&text)?;
    if let Some(note) = limit_note(args.status, response.entries.len(), &summary) {
        out.note(&note)?;
    }
    Ok(())
}

/// The Uploads request the arguments ask for.
fn list_request(args: &UploadsListArgs) -> UploadsRequest {
    UploadsRequest {
        status: args
            .status
            .map_or(UploadStatus::Unspecified, UploadStatus::from)
            .into(),
        limit: args.limit,
    }
}

/// `showing the newest N of M hours; ...` when fewer hours were listed than the outbox holds
/// with `status` (all statuses when `None`).
fn limit_note(
    status: Option<UploadStatusArg>,
    shown: usize,
    summary: &UploadSummary,
) -> Option<String> {
    let (total, which) = match status {
        None => (
            summary.pending + summary.delivered + summary.parked + summary.rejected,
            String::new(),
        ),
        Some(UploadStatusArg::Pending) => (summary.pending, " pending".to_owned()),
        Some(UploadStatusArg::Delivered) => (summary.delivered, " delivered".to_owned()),
        Some(UploadStatusArg::Parked) => (summary.parked, " parked".to_owned()),
        Some(UploadStatusArg::Rejected) => (summary.rejected, " rejected".to_owned()),
    };
    let shown = u64::try_from(shown).unwrap_or(u64::MAX);
    (shown < total).then(|| {
        format!(
            "showing the newest {shown} of {total}{which} hours; --limit N (up to 10000) shows more"
        )
    })
}

/// `gpukillctl uploads show HOUR`.
async fn show<W: Write, E: Write>(
    target: &conn::Target,
    args: &UploadShowArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let request = UploadShowRequest {
        hour_unix_ms: hour_start(args.hour.unix_ms(SystemTime::now())),
    };
    let mut client = conn::connect(target).await?;
    let response = client
        .upload_show(conn::unary(request))
        .await
        .map_err(|status| Error::rpc("UploadShow", status))?
        .into_inner();
    let Some(entry) = response.entry.clone() else {
        return Err(Error::EmptyResponse {
            rpc: "UploadShow",
            missing: "the outbox entry",
        });
    };
    let text = match args.output {
        OutputFormat::Table => uploads::render_show(&response, &entry, out.tz, args.payload)?,
        OutputFormat::Json => uploads::show_json(&response, &entry)?,
    };
    out.write(&text)
}

/// `gpukillctl uploads retry HOUR|--all-parked`.
async fn retry<W: Write, E: Write>(
    target: &conn::Target,
    args: &UploadRetryArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let request = UploadRetryRequest {
        target: args.target.target(SystemTime::now()),
    };
    let mut client = conn::connect(target).await?;
    let response = client
        .upload_retry(conn::unary(request))
        .await
        .map_err(|status| Error::rpc("UploadRetry", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => uploads::render_retry(&response, out.tz),
        OutputFormat::Json => uploads::retry_json(&response)?,
    };
    out.write(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, millis, run_cli, serve};
    use gpukill_proto::v1::{UploadRetryResponse, upload_retry_request};
    use tonic::Status;

    /// 2024-05-01T10:00:00Z, the hour of [`testutil::upload_show_response`].
    const TEN: i64 = 1_714_557_600_000;

    /// What the real gpukilld answers when [upload] is not configured.
    fn uploads_off() -> Status {
        Status::failed_precondition(
            "uploads are off on this node: set [upload] url (or [upload] offline = true to \
             queue hours without sending them)",
        )
    }

    #[tokio::test]
    async fn list_sends_the_filter_and_prints_the_table() {
        let daemon = FakeDaemon {
            uploads: Some(Ok(testutil::uploads_response())),
            ..Default::default()
        };
        let requests = daemon.uploads_requests.clone();
        let served = serve(daemon);
        let (result, text, notes) = run_cli(
            &served.socket,
            &["uploads", "list", "--status", "parked", "--limit", "20"],
        )
        .await;
        result.expect("uploads list");
        let response = testutil::uploads_response();
        let summary = response.summary.clone().expect("summary");
        assert_eq!(
            text,
            uploads::render_list(&response, &summary, TimeZone::Utc)
        );
        // The fake answers every hour although only parked ones were asked for: 5 >= 1.
        assert_eq!(notes, "");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [UploadsRequest {
                status: UploadStatus::Parked.into(),
                limit: 20,
            }]
        );
    }

    #[tokio::test]
    async fn list_json_and_the_default_request() {
        let daemon = FakeDaemon {
            uploads: Some(Ok(testutil::uploads_response())),
            ..Default::default()
        };
        let requests = daemon.uploads_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(&served.socket, &["uploads", "list", "-o", "json"]).await;
        result.expect("uploads list");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["summary"]["parked"], 1);
        assert_eq!(value["entries"][2]["status"], "parked");
        assert_eq!(value["entries"][2]["hour"], "2024-05-01T09:00:00Z");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [UploadsRequest {
                status: UploadStatus::Unspecified.into(),
                limit: 100,
            }]
        );
    }

    #[tokio::test]
    async fn a_list_cut_by_the_limit_says_so_on_stderr() {
        let mut response = testutil::uploads_response();
        response.entries.drain(..3);
        let served = serve(FakeDaemon {
            uploads: Some(Ok(response)),
            ..Default::default()
        });
        let (result, text, notes) =
            run_cli(&served.socket, &["uploads", "list", "--limit", "2"]).await;
        result.expect("uploads list");
        assert!(!text.contains("showing"), "{text}");
        assert_eq!(
            notes,
            "showing the newest 2 of 5 hours; --limit N (up to 10000) shows more\n"
        );
    }

    #[test]
    fn limit_notes_count_the_status_asked_for() {
        let summary = testutil::uploads_response().summary.expect("summary");
        assert_eq!(limit_note(None, 5, &summary), None);
        assert_eq!(
            limit_note(Some(UploadStatusArg::Pending), 1, &summary).as_deref(),
            Some("showing the newest 1 of 2 pending hours; --limit N (up to 10000) shows more")
        );
        assert_eq!(limit_note(Some(UploadStatusArg::Parked), 1, &summary), None);
        assert_eq!(
            limit_note(Some(UploadStatusArg::Rejected), 0, &summary).as_deref(),
            Some("showing the newest 0 of 1 rejected hours; --limit N (up to 10000) shows more")
        );
    }

    #[tokio::test]
    async fn uploads_off_is_unsupported_with_the_daemons_words() {
        let served = serve(FakeDaemon {
            uploads: Some(Err(uploads_off())),
            upload_show: Some(Err(uploads_off())),
            upload_retry: Some(Err(uploads_off())),
            ..Default::default()
        });
        for args in [
            &["uploads", "list"][..],
            &["uploads", "show", "2h"],
            &["uploads", "retry", "--all-parked"],
        ] {
            let (result, text, _) = run_cli(&served.socket, args).await;
            let err = result.expect_err("uploads are off");
            assert_eq!(err.exit_code(), 5, "{args:?}");
            assert!(
                err.to_string().contains(
                    "(FailedPrecondition): uploads are off on this node: set [upload] url"
                ),
                "{err}"
            );
            assert_eq!(text, "");
        }
    }

    #[tokio::test]
    async fn a_response_without_a_summary_is_an_error() {
        let mut response = testutil::uploads_response();
        response.summary = None;
        let served = serve(FakeDaemon {
            uploads: Some(Ok(response)),
            ..Default::default()
        });
        let (result, _, _) = run_cli(&served.socket, &["uploads", "list"]).await;
        let err = result.expect_err("no summary");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "gpukilld sent a Uploads response without the outbox summary"
        );
    }

    #[tokio::test]
    async fn show_asks_for_the_hour_that_holds_the_time() {
        let daemon = FakeDaemon {
            upload_show: Some(Ok(testutil::upload_show_response())),
            ..Default::default()
        };
        let requests = daemon.upload_show_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["uploads", "show", "2024-05-01T10:34:56Z", "--payload"],
        )
        .await;
        result.expect("uploads show");
        let response = testutil::upload_show_response();
        let entry = response.entry.clone().expect("entry");
        assert_eq!(
            text,
            uploads::render_show(&response, &entry, TimeZone::Utc, true).expect("render")
        );
        // A duration ago counts back from now, then goes to the start of its hour.
        let before = millis(SystemTime::now());
        let (result, _, _) =
            run_cli(&served.socket, &["uploads", "show", "2h", "-o", "json"]).await;
        let after = millis(SystemTime::now());
        result.expect("uploads show");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].hour_unix_ms, TEN);
        let two_hours = 2 * 3_600_000;
        let asked = requests[1].hour_unix_ms;
        assert_eq!(asked % 3_600_000, 0);
        assert!(
            (hour_start(before - two_hours)..=hour_start(after - two_hours)).contains(&asked),
            "{asked}"
        );
    }

    #[tokio::test]
    async fn show_json_has_the_attempts_and_the_payload_as_an_object() {
        let served = serve(FakeDaemon {
            upload_show: Some(Ok(testutil::upload_show_response())),
            ..Default::default()
        });
        let (result, text, _) = run_cli(
            &served.socket,
            &["uploads", "show", "2024-05-01T10:00:00Z", "-o", "json"],
        )
        .await;
        result.expect("uploads show");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["entry"]["hour_unix_ms"], TEN);
        assert_eq!(value["attempts"].as_array().map(Vec::len), Some(2));
        assert_eq!(value["payload"]["schema"], "gpukill.usage/v1");
    }

    #[tokio::test]
    async fn an_hour_without_an_upload_exits_3_naming_it() {
        let served = serve(FakeDaemon {
            upload_show: Some(Err(Status::not_found(
                "no upload of the hour starting at 2024-05-01T10:00:00Z (gpukillctl uploads \
                 list shows the hours)",
            ))),
            ..Default::default()
        });
        let (result, text, _) =
            run_cli(&served.socket, &["uploads", "show", "2024-05-01T10:15:00Z"]).await;
        let err = result.expect_err("no such hour");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "UploadShow failed (NotFound): no upload of the hour starting at \
             2024-05-01T10:00:00Z (gpukillctl uploads list shows the hours)"
        );
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn retry_of_an_hour_sends_its_start_and_prints_what_was_requeued() {
        let daemon = FakeDaemon {
            upload_retry: Some(Ok(UploadRetryResponse {
                requeued_hours: vec![TEN],
            })),
            ..Default::default()
        };
        let requests = daemon.upload_retry_requests.clone();
        let served = serve(daemon);
        let (result, text, _) = run_cli(
            &served.socket,
            &["uploads", "retry", "2024-05-01T10:59:59Z"],
        )
        .await;
        result.expect("uploads retry");
        assert_eq!(text, "requeued 1 hour: 2024-05-01 10:00\n");
        let (result, text, _) = run_cli(
            &served.socket,
            &["uploads", "retry", "--all-parked", "-o", "json"],
        )
        .await;
        result.expect("uploads retry");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["requeued_hours"][0]["hour"], "2024-05-01T10:00:00Z");
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(
            requests,
            [
                UploadRetryRequest {
                    target: Some(upload_retry_request::Target::HourUnixMs(TEN)),
                },
                UploadRetryRequest {
                    target: Some(upload_retry_request::Target::AllParked(true)),
                },
            ]
        );
    }

    #[tokio::test]
    async fn nothing_parked_is_nothing_to_retry() {
        let served = serve(FakeDaemon {
            upload_retry: Some(Ok(UploadRetryResponse::default())),
            ..Default::default()
        });
        let (result, text, _) =
            run_cli(&served.socket, &["uploads", "retry", "--all-parked"]).await;
        result.expect("nothing to retry is not an error");
        assert_eq!(text, "nothing to retry: no hour is parked\n");
    }

    #[tokio::test]
    async fn retry_refusals_map_to_their_exit_codes() {
        let cases = [
            (
                Status::permission_denied(
                    "alice is not an admin: only admins may send parked or rejected uploads \
                     again",
                ),
                4,
                "UploadRetry failed (PermissionDenied): alice is not an admin",
            ),
            (
                Status::not_found(
                    "no upload of the hour starting at 2024-05-01T10:00:00Z (gpukillctl \
                     uploads list shows the hours)",
                ),
                3,
                "UploadRetry failed (NotFound): no upload of the hour starting at \
                 2024-05-01T10:00:00Z",
            ),
            (
                Status::failed_precondition(
                    "the hour starting at 2024-05-01T10:00:00Z is pending: only parked or \
                     rejected hours are sent again",
                ),
                5,
                "UploadRetry failed (FailedPrecondition): the hour starting at \
                 2024-05-01T10:00:00Z is pending",
            ),
            (
                Status::invalid_argument("name an hour, or ask for every parked hour"),
                3,
                "UploadRetry failed (InvalidArgument): name an hour",
            ),
        ];
        for (status, code, message) in cases {
            let served = serve(FakeDaemon {
                upload_retry: Some(Err(status)),
                ..Default::default()
            });
            let (result, text, _) = run_cli(
                &served.socket,
                &["uploads", "retry", "2024-05-01T10:00:00Z"],
            )
            .await;
            let err = result.expect_err("refused");
            assert_eq!(err.exit_code(), code, "{err}");
            assert!(err.to_string().starts_with(message), "{err}");
            assert_eq!(text, "");
        }
    }
}
