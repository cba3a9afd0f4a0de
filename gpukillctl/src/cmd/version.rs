//! `gpukillctl version`: this client's version and, through the Version RPC, the daemon's.
//!
//! The client's version is printed even when the daemon cannot be asked; the command then
//! fails with the daemon's error (exit 6 when unreachable).

use std::io::Write;

use gpukill_proto::v1::{VersionRequest, VersionResponse};
use serde::Serialize;

use crate::Output;
use crate::cli::{OutputFormat, VersionArgs};
use crate::conn;
use crate::error::Error;
use crate::render::json::non_empty;

/// This client's version.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The JSON of `gpukillctl version --output json`; daemon fields are `null` when the daemon
/// could not be asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionJson {
    /// gpukillctl's version.
    pub client_version: &'static str,
    /// The API package gpukillctl speaks.
    pub client_api: &'static str,
    /// gpukilld's version.
    pub daemon_version: Option<String>,
    /// The API package the daemon serves.
    pub api: Option<String>,
    /// The daemon's host name.
    pub host: Option<String>,
    /// The node's stable id (32 hex digits); `null` from a daemon that does not report it.
    pub node_id: Option<String>,
    /// The node's name in a cluster.
    pub node_name: Option<String>,
    /// `node` or `coordinator`.
    pub cluster_role: Option<String>,
}

/// Runs `gpukillctl version` against the daemon `target` names.
///
/// `target` is the checked connection options, or why they are unusable: the client's
/// version is printed either way.
pub async fn run<W: Write, E: Write>(
    target: Result<conn::Target, Error>,
    args: &VersionArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let daemon = match target {
        Ok(target) => ask(&target).await,
        Err(err) => Err(err),
    };
    let text = render(args.output, daemon.as_ref().ok())?;
    out.write(&text)?;
    daemon.map(|_| ())
}

/// Asks the daemon for its version.
async fn ask(target: &conn::Target) -> Result<VersionResponse, Error> {
    let mut client = conn::connect(target).await?;
    client
        .version(conn::unary(VersionRequest {}))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::rpc("Version", status))
}

/// The versions as text; `daemon` is `None` when it could not be asked.
fn render(format: OutputFormat, daemon: Option<&VersionResponse>) -> Result<String, Error> {
    match format {
        OutputFormat::Json => {
            let json = VersionJson {
                client_version: CLIENT_VERSION,
                client_api: gpukill_proto::API,
                daemon_version: daemon.map(|d| d.daemon_version.clone()),
                api: daemon.map(|d| d.api.clone()),
                host: daemon.map(|d| d.host.clone()),
                node_id: daemon.and_then(|d| non_empty(&d.node_id)),
                node_name: daemon.and_then(|d| non_empty(&d.node_name)),
                cluster_role: daemon.and_then(|d| non_empty(&d.cluster_role)),
            };
            crate::render::json::document(&json)
        }
        OutputFormat::Table => {
            let mut text = format!(
                "client  gpukillctl {CLIENT_VERSION} ({})\n",
                gpukill_proto::API
            );
            if let Some(daemon) = daemon {
                text.push_str(&format!(
                    "daemon  gpukilld {} ({}) on {}\n",
                    daemon.daemon_version, daemon.api, daemon.host
                ));
                if let Some(line) = node_line(daemon) {
                    text.push_str(&line);
                }
                if daemon.api != gpukill_proto::API {
                    text.push_str(&format!(
                        "warning: gpukilld serves {}, gpukillctl speaks {}\n",
                        daemon.api,
                        gpukill_proto::API
                    ));
                }
            }
            Ok(text)
        }
    }
}

/// `node    NAME (ROLE), id ID`, or `None` for a daemon that reports none of them (one
/// older than clusters).
fn node_line(daemon: &VersionResponse) -> Option<String> {
    if daemon.node_name.is_empty() && daemon.node_id.is_empty() && daemon.cluster_role.is_empty() {
        return None;
    }
    let or_dash = |text: &str| non_empty(text).unwrap_or_else(|| "-".to_owned());
    Some(format!(
        "node    {} ({}), id {}\n",
        or_dash(&daemon.node_name),
        or_dash(&daemon.cluster_role),
        or_dash(&daemon.node_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::time::TimeZone;
    use crate::testutil::{FakeDaemon, serve};
    use serde_json::json;

    fn daemon() -> VersionResponse {
        VersionResponse {
            daemon_version: "0.1.0".to_owned(),
            api: "gpukill.v1".to_owned(),
            host: "gpu-node-1".to_owned(),
            node_id: "5f0c1e2d3b4a69788796a5b4c3d2e1f0".to_owned(),
            node_name: "n1".to_owned(),
            cluster_role: "coordinator".to_owned(),
        }
    }

    fn output() -> Output<Vec<u8>, Vec<u8>> {
        Output {
            writer: Vec::new(),
            notes: Vec::new(),
            is_tty: false,
            width: None,
            keys: false,
            tz: TimeZone::Utc,
        }
    }

    #[test]
    fn both_versions_as_a_table() {
        let text = render(OutputFormat::Table, Some(&daemon())).expect("render");
        assert_eq!(
            text,
            format!(
                "client  gpukillctl {CLIENT_VERSION} (gpukill.v1)\n\
                 daemon  gpukilld 0.1.0 (gpukill.v1) on gpu-node-1\n\
                 node    n1 (coordinator), id 5f0c1e2d3b4a69788796a5b4c3d2e1f0\n"
            )
        );
    }

    #[test]
    fn a_daemon_without_node_fields_has_no_node_line() {
        let old = VersionResponse {
            node_id: String::new(),
            node_name: String::new(),
            cluster_role: String::new(),
            ..daemon()
        };
        let text = render(OutputFormat::Table, Some(&old)).expect("render");
        assert_eq!(text.lines().count(), 2, "{text}");
        let json = render(OutputFormat::Json, Some(&old)).expect("render");
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["node_id"], serde_json::Value::Null);
        assert_eq!(value["cluster_role"], serde_json::Value::Null);
    }

    #[test]
    fn an_api_mismatch_is_pointed_out() {
        let other = VersionResponse {
            api: "gpukill.v2".to_owned(),
            ..daemon()
        };
        let text = render(OutputFormat::Table, Some(&other)).expect("render");
        assert!(
            text.ends_with("warning: gpukilld serves gpukill.v2, gpukillctl speaks gpukill.v1\n")
        );
    }

    #[test]
    fn json_has_nulls_without_a_daemon() {
        let text = render(OutputFormat::Json, None).expect("render");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value,
            json!({
                "client_version": CLIENT_VERSION,
                "client_api": "gpukill.v1",
                "daemon_version": null,
                "api": null,
                "host": null,
                "node_id": null,
                "node_name": null,
                "cluster_role": null
            })
        );
    }

    #[tokio::test]
    async fn the_client_version_is_printed_even_when_the_daemon_is_unreachable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = conn::Target::unix(dir.path().join("missing.sock"));
        let mut out = output();
        let args = VersionArgs {
            output: OutputFormat::Table,
        };
        let err = run(Ok(target), &args, &mut out)
            .await
            .expect_err("unreachable");
        assert_eq!(err.exit_code(), 6);
        assert_eq!(
            String::from_utf8(out.writer).expect("UTF-8"),
            format!("client  gpukillctl {CLIENT_VERSION} (gpukill.v1)\n")
        );
    }

    #[tokio::test]
    async fn the_daemon_is_asked() {
        let served = serve(FakeDaemon {
            version: Some(daemon()),
            ..Default::default()
        });
        let target = conn::Target::unix(served.socket.clone());
        let mut out = output();
        let args = VersionArgs {
            output: OutputFormat::Json,
        };
        run(Ok(target), &args, &mut out).await.expect("version");
        let value: serde_json::Value = serde_json::from_slice(&out.writer).expect("JSON");
        assert_eq!(value["daemon_version"], "0.1.0");
        assert_eq!(value["host"], "gpu-node-1");
        assert_eq!(value["node_id"], "5f0c1e2d3b4a69788796a5b4c3d2e1f0");
        assert_eq!(value["node_name"], "n1");
        assert_eq!(value["cluster_role"], "coordinator");
    }
}
