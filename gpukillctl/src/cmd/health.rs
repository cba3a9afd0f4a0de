//! `gpukillctl health`: every GPU's health from one List (or one GPU's, with `--gpu`); and
//! `health clear`, the HealthClear RPC.

use std::io::Write;

use gpukill_proto::v1::{HealthClearRequest, ListRequest};

use crate::Output;
use crate::cli::{HealthAction, HealthArgs, HealthClearArgs, OutputFormat};
use crate::conn;
use crate::error::Error;
use crate::render::health::{self, GpuHealthJson, state_name};
use crate::render::json;

/// Runs `gpukillctl health` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &HealthArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    if let Some(HealthAction::Clear(clear_args)) = &args.action {
        return clear(target, clear_args, out).await;
    }
    let mut client = conn::connect(target).await?;
    let snapshot = client
        .list(conn::unary(ListRequest::default()))
        .await
        .map_err(|status| Error::rpc("List", status))?
        .into_inner()
        .snapshot
        .unwrap_or_default();
    let gpus: Vec<_> = snapshot
        .gpus
        .iter()
        .filter(|gpu| args.gpu.is_none_or(|index| gpu.index == index))
        .collect();
    if let Some(index) = args.gpu
        && gpus.is_empty()
    {
        return Err(Error::Usage(format!(
            "no GPU {index}: this host has {} (see gpukillctl list)",
            snapshot.gpus.len()
        )));
    }
    let text = match args.output {
        OutputFormat::Table => health::render(&gpus, out.tz),
        OutputFormat::Json => {
            let rows: Vec<GpuHealthJson> = gpus.iter().map(|gpu| GpuHealthJson::new(gpu)).collect();
            json::document(&rows)?
        }
    };
    out.write(&text)
}

/// `gpukillctl health clear --gpu N`.
async fn clear<W: Write, E: Write>(
    target: &conn::Target,
    args: &HealthClearArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let mut client = conn::connect(target).await?;
    let response = client
        .health_clear(conn::unary(HealthClearRequest {
            gpu_index: args.gpu,
        }))
        .await
        .map_err(|status| Error::rpc("HealthClear", status))?
        .into_inner();
    let mut text = format!(
        "GPU {}: health cleared (was {})\n",
        args.gpu,
        state_name(response.previous)
    );
    for line in &response.acknowledged {
        text.push_str(&format!(
            "  acknowledged: {}\n",
            crate::render::escape::cell(line)
        ));
    }
    out.write(&text)
}
