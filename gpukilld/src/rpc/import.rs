//! `ImportAudit`: records of an original gpukill `audit.jsonl`, parsed by the client (which
//! reads the file with its own permissions; the daemon never opens a path a request names),
//! checked here and written through the store's writer.

use std::collections::HashMap;
use std::sync::Arc;

use gpukill_proto::v1 as pb;

use super::error::RpcError;
use super::kill::KillContext;
use crate::authz::Caller;
use crate::store::{ImportProcess, ImportRecord};

/// Most records one call may carry.
pub const MAX_RECORDS: usize = 10_000;
/// Highest GPU index a record may name.
const MAX_GPU_INDEX: u32 = 1023;
/// The uid recorded for a user this host does not know.
const UNKNOWN_UID: u32 = u32::MAX;

/// Answers `ImportAudit`: admins only, since imported usage is attributed to the users the
/// records name.
pub async fn import_audit(
    context: &Arc<KillContext>,
    caller: Caller,
    request: pb::ImportAuditRequest,
) -> Result<pb::ImportAuditResponse, RpcError> {
    let events = context.store.get().map_err(RpcError::StoreUnavailable)?;
    let principal = super::principal(caller, &context.admin_group).await?;
    super::admin_only(
        events,
        &principal,
        &context.admin_group,
        "audit import",
        "importing usage history",
    )
    .await?;
    if request.records.len() > MAX_RECORDS {
        return Err(RpcError::TooManyRecords {
            sent: request.records.len(),
            max: MAX_RECORDS,
        });
    }
    let (mut records, rejected) = tokio::task::spawn_blocking(move || check(request.records))
        .await
        .map_err(|_| RpcError::Internal("record check panicked"))?;
    records.sort_by_key(|record| record.time_ms);
    let summary = events.import(records).await?;
    tracing::info!(
        user = %principal.user,
        uid = principal.caller.uid,
        gpu_records = summary.gpu_records,
        process_records = summary.process_records,
        duplicates = summary.duplicates,
        too_old = summary.too_old,
        rejected = rejected.len(),
        "imported gpukill audit records"
    );
    Ok(pb::ImportAuditResponse {
        gpu_records: summary.gpu_records,
        process_records: summary.process_records,
        duplicates: summary.duplicates,
        too_old: summary.too_old,
        rejected,
    })
}

/// The records that make sense, and a reason for each that does not. Looks users up in the
/// user database (blocking).
fn check(records: Vec<pb::AuditRecord>) -> (Vec<ImportRecord>, Vec<pb::RejectedRecord>) {
    let mut uids: HashMap<String, u32> = HashMap::new();
    let mut good = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for record in records {
        let line = record.line;
        match checked(record, &mut uids) {
            Ok(record) => good.push(record),
            Err(reason) => rejected.push(pb::RejectedRecord { line, reason }),
        }
    }
    (good, rejected)
}

fn checked(
    record: pb::AuditRecord,
    uids: &mut HashMap<String, u32>,
) -> Result<ImportRecord, String> {
    if record.gpu_index > MAX_GPU_INDEX {
        return Err(format!(
            "gpu_index {} is out of range (0 to {MAX_GPU_INDEX})",
            record.gpu_index
        ));
    }
    if !(0.0..=100.0).contains(&record.utilization_pct) {
        return Err(format!(
            "utilization_pct {} is not a percentage (0 to 100)",
            record.utilization_pct
        ));
    }
    if !(record.power_w.is_finite() && record.power_w >= 0.0) {
        return Err(format!(
            "power_w {} is not a power draw (0 or more watts)",
            record.power_w
        ));
    }
    let process = match record.pid {
        None => None,
        Some(pid) => {
            let (Some(user), Some(name)) = (record.user, record.process_name) else {
                return Err(format!(
                    "the record of pid {pid} lacks its user or process_name"
                ));
            };
            let uid =
                *uids.entry(user.clone()).or_insert_with(|| {
                    match nix::unistd::User::from_name(&user) {
                        Ok(Some(found)) => found.uid.as_raw(),
                        _ => UNKNOWN_UID,
                    }
                });
            Some(ImportProcess {
                pid,
                uid,
                user,
                name,
                container: record.container,
            })
        }
    };
    Ok(ImportRecord {
        time_ms: record.time_unix_ms,
        gpu_index: record.gpu_index,
        gpu_name: record.gpu_name,
        process,
        memory_bytes: record.memory_used_mib.saturating_mul(1 << 20),
        utilization_pct: record.utilization_pct,
        temperature_c: record.temperature_c,
        power_mw: record.power_w * 1000.0,
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn record(line: u64) -> pb::AuditRecord {
        pb::AuditRecord {
            line,
            time_unix_ms: 1_714_521_600_000,
            gpu_index: 0,
            gpu_name: "NVIDIA A100".to_string(),
            pid: Some(42),
            user: Some("root".to_string()),
            process_name: Some("python".to_string()),
            memory_used_mib: 512,
            utilization_pct: 0.0,
            temperature_c: 0,
            power_w: 0.0,
            container: None,
        }
    }

    #[test]
    fn check_keeps_good_records_and_names_what_is_wrong_with_the_rest() {
        let records = vec![
            record(1),
            pb::AuditRecord {
                gpu_index: 5000,
                ..record(2)
            },
            pb::AuditRecord {
                utilization_pct: 140.0,
                ..record(3)
            },
            pb::AuditRecord {
                user: None,
                ..record(4)
            },
            pb::AuditRecord {
                power_w: f64::NAN,
                ..record(5)
            },
            pb::AuditRecord {
                user: Some("no-such-user-gpukill".to_string()),
                ..record(6)
            },
        ];
        let (good, rejected) = check(records);
        assert_eq!(good.len(), 2);
        let root = good[0].process.as_ref().unwrap();
        assert_eq!((root.uid, root.name.as_str()), (0, "python"));
        assert_eq!(good[0].memory_bytes, 512 << 20);
        assert_eq!(good[1].process.as_ref().unwrap().uid, UNKNOWN_UID);
        let reasons: Vec<(u64, &str)> = rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (2, "gpu_index 5000 is out of range (0 to 1023)"),
                (3, "utilization_pct 140 is not a percentage (0 to 100)"),
                (4, "the record of pid 42 lacks its user or process_name"),
                (5, "power_w NaN is not a power draw (0 or more watts)"),
            ]
        );
    }
}
