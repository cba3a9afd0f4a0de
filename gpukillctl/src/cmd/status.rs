//! `gpukillctl status`: one Reservations RPC; every GPU's reservation state and the queue of
//! waiting `run` requests. Anyone may look.

use std::io::Write;

use gpukill_proto::v1::ReservationsRequest;

use crate::Output;
use crate::cli::{OutputFormat, StatusArgs};
use crate::conn;
use crate::error::Error;
use crate::render::reservations;

/// Runs `gpukillctl status` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &StatusArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .reservations(conn::unary(ReservationsRequest {}))
        .await
        .map_err(|status| Error::rpc("Reservations", status))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Table => {
            reservations::render_status(&response, out.tz, if args.wide { None } else { out.width })
        }
        OutputFormat::Json => reservations::status_json(&response)?,
    };
    out.write(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{self, FakeDaemon, run_cli, serve};

    #[tokio::test]
    async fn status_prints_the_table_or_the_json() {
        let served = serve(FakeDaemon {
            reservations: Some(Ok(testutil::reservations_response())),
            ..Default::default()
        });
        let response = testutil::reservations_response();
        let (result, text, _) = run_cli(&served.socket, &["status"]).await;
        result.expect("status");
        assert_eq!(
            text,
            reservations::render_status(&response, TimeZone::Utc, None)
        );
        let (result, text, _) = run_cli(&served.socket, &["status", "--output", "json"]).await;
        result.expect("status");
        assert_eq!(text, reservations::status_json(&response).expect("encode"));
    }

    #[tokio::test]
    async fn an_old_daemon_is_unsupported() {
        let served = serve(FakeDaemon::default());
        let (result, _, _) = run_cli(&served.socket, &["status"]).await;
        assert_eq!(result.expect_err("unimplemented").exit_code(), 5);
    }
}
