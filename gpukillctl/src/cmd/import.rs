//! `gpukillctl audit import FILE`: reads an original gpukill audit.jsonl with the caller's
//! own permissions (the daemon never opens it), sends its records to the ImportAudit RPC in
//! batches, and reports what was imported and every line that was not.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use gpukill_proto::v1::{AuditRecord, ImportAuditResponse};

use crate::Output;
use crate::cli::AuditImportArgs;
use crate::conn::{self, Client};
use crate::error::Error;
use crate::render::gpukill_record::GpukillRecord;

/// Records per ImportAudit call at most (the daemon takes up to 10000).
const BATCH: usize = 5000;
/// Encoded bytes per ImportAudit call at most: well under the daemon's request limit
/// (`[limits] max_request_size`, 1 MiB by default), whatever the records hold.
const BATCH_BYTES: usize = 256 * 1024;
/// Bad lines listed one by one; the rest are counted.
const LISTED_BAD_LINES: usize = 50;

/// What the whole file came to.
#[derive(Debug, Default)]
struct Totals {
    /// Non-blank lines read.
    lines: usize,
    gpu_records: u64,
    process_records: u64,
    duplicates: u64,
    too_old: u64,
    /// (line, why) of every line not imported.
    bad: Vec<(u64, String)>,
}

/// Runs `gpukillctl audit import` against the daemon `target` names.
pub async fn run<W: Write, E: Write>(
    target: &conn::Target,
    args: &AuditImportArgs,
    out: &mut Output<W, E>,
) -> Result<(), Error> {
    let path = args.file.as_path();
    let read_error = |source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let input: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(read_error)?)
    };
    let mut client = conn::connect(target).await?;
    let mut totals = Totals::default();
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH);
    let mut batch_bytes = 0;
    for (index, line) in BufReader::new(input).lines().enumerate() {
        let line = line.map_err(read_error)?;
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        totals.lines += 1;
        let record = match GpukillRecord::parse(&line) {
            Ok(record) => record.to_proto(number),
            Err(reason) => {
                totals.bad.push((number, reason));
                continue;
            }
        };
        // The field's tag and length prefix come on top of the record itself.
        let bytes = prost::Message::encoded_len(&record) + 8;
        if bytes > BATCH_BYTES {
            totals.bad.push((
                number,
                format!(
                    "the record is {bytes} bytes, more than one import call carries ({BATCH_BYTES}); shorten its strings"
                ),
            ));
            continue;
        }
        if !batch.is_empty() && batch_bytes + bytes > BATCH_BYTES {
            send(&mut client, std::mem::take(&mut batch), &mut totals).await?;
            batch_bytes = 0;
        }
        batch.push(record);
        batch_bytes += bytes;
        if batch.len() == BATCH {
            send(&mut client, std::mem::take(&mut batch), &mut totals).await?;
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        send(&mut client, batch, &mut totals).await?;
    }
    out.write(&report(path, &mut totals))?;
    if totals.bad.is_empty() {
        Ok(())
    } else {
        Err(Error::ImportIncomplete {
            path: path.to_path_buf(),
            bad: totals.bad.len(),
            total: totals.lines,
        })
    }
}

async fn send(
    client: &mut Client,
    records: Vec<AuditRecord>,
    totals: &mut Totals,
) -> Result<(), Error> {
    let answer: ImportAuditResponse = client
        .import_audit(conn::unary(gpukill_proto::v1::ImportAuditRequest {
            records,
        }))
        .await
        .map_err(|status| Error::rpc("ImportAudit", status))?
        .into_inner();
    totals.gpu_records += answer.gpu_records;
    totals.process_records += answer.process_records;
    totals.duplicates += answer.duplicates;
    totals.too_old += answer.too_old;
    totals
        .bad
        .extend(answer.rejected.into_iter().map(|r| (r.line, r.reason)));
    Ok(())
}

/// The report: counts, then the bad lines in file order.
fn report(path: &Path, totals: &mut Totals) -> String {
    let mut text = format!(
        "imported {} GPU records and {} process records from {}\n\
         skipped {} records imported before and {} older than gpukilld keeps\n",
        totals.gpu_records,
        totals.process_records,
        path.display(),
        totals.duplicates,
        totals.too_old,
    );
    if totals.bad.is_empty() {
        return text;
    }
    totals.bad.sort_by_key(|(line, _)| *line);
    text.push_str(&format!(
        "{} bad {} not imported:\n",
        totals.bad.len(),
        if totals.bad.len() == 1 {
            "line"
        } else {
            "lines"
        }
    ));
    for (line, reason) in totals.bad.iter().take(LISTED_BAD_LINES) {
        text.push_str(&format!("  line {line}: {reason}\n"));
    }
    if totals.bad.len() > LISTED_BAD_LINES {
        text.push_str(&format!(
            "  ... and {} more\n",
            totals.bad.len() - LISTED_BAD_LINES
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeDaemon, run_cli, serve};
    use gpukill_proto::v1::RejectedRecord;
    use tonic::Status;

    const GOOD: &str = r#"{"id":1,"timestamp":"2024-05-01T12:00:00Z","gpu_index":0,"gpu_name":"A100","pid":null,"user":null,"process_name":null,"memory_used_mb":100,"utilization_pct":50.0,"temperature_c":60,"power_w":200.0,"container":null}"#;

    fn file(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for line in lines {
            writeln!(file, "{line}").expect("write");
        }
        file
    }

    #[tokio::test]
    async fn good_lines_are_sent_and_bad_ones_reported_by_line_number() {
        let daemon = FakeDaemon {
            import_audit: Some(Ok(ImportAuditResponse {
                gpu_records: 2,
                process_records: 0,
                duplicates: 1,
                too_old: 0,
                rejected: vec![RejectedRecord {
                    line: 5,
                    reason: "gpu_index 5000 is out of range (0 to 1023)".to_owned(),
                }],
            })),
            ..Default::default()
        };
        let requests = daemon.import_requests.clone();
        let served = serve(daemon);
        let input = file(&[GOOD, "{not json", "", GOOD, GOOD, GOOD]);
        let path = input.path().to_str().expect("utf-8").to_owned();
        let (result, text, _) = run_cli(&served.socket, &["audit", "import", &path]).await;
        let err = result.expect_err("a bad line");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            format!("2 of 5 lines of {path} were not imported (see above)")
        );
        assert_eq!(
            text,
            format!(
                "imported 2 GPU records and 0 process records from {path}\n\
                 skipped 1 records imported before and 0 older than gpukilld keeps\n\
                 2 bad lines not imported:\n  \
                 line 2: not a gpukill audit record: key must be a string at line 1 column 2\n  \
                 line 5: gpu_index 5000 is out of range (0 to 1023)\n"
            )
        );
        let requests = requests.lock().expect("lock").clone();
        assert_eq!(requests.len(), 1);
        let lines: Vec<u64> = requests[0].records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 4, 5, 6]);
    }

    #[tokio::test]
    async fn batches_stay_under_the_request_limit_and_an_oversized_record_is_a_bad_line() {
        let daemon = FakeDaemon {
            import_audit: Some(Ok(ImportAuditResponse::default())),
            ..Default::default()
        };
        let requests = daemon.import_requests.clone();
        let served = serve(daemon);
        // 2,000 records of about 300 bytes (a long container id and process name): 600 KB.
        let long = GOOD
            .replace(
                r#""container":null"#,
                &format!(r#""container":"{}""#, "c".repeat(200)),
            )
            .replace(
                r#""process_name":null"#,
                r#""process_name":"python3-train-long""#,
            );
        let huge = GOOD.replace(
            r#""container":null"#,
            &format!(r#""container":"{}""#, "h".repeat(BATCH_BYTES)),
        );
        let mut lines: Vec<&str> = vec![long.as_str(); 2000];
        lines.insert(10, &huge);
        let input = file(&lines);
        let path = input.path().to_str().expect("utf-8").to_owned();
        let (result, text, _) = run_cli(&served.socket, &["audit", "import", &path]).await;
        assert_eq!(result.expect_err("the huge line").exit_code(), 1);
        assert!(text.contains("line 11: the record is"), "{text}");
        let requests = requests.lock().expect("lock").clone();
        assert!(requests.len() >= 3, "{} calls", requests.len());
        for request in &requests {
            let bytes = prost::Message::encoded_len(request);
            assert!(bytes <= BATCH_BYTES, "a call of {bytes} bytes");
        }
        let sent: usize = requests.iter().map(|r| r.records.len()).sum();
        assert_eq!(sent, 2000);
    }

    #[tokio::test]
    async fn an_unreadable_file_is_an_invalid_argument_and_sends_nothing() {
        let daemon = FakeDaemon::default();
        let requests = daemon.import_requests.clone();
        let served = serve(daemon);
        let (result, _, _) = run_cli(
            &served.socket,
            &["audit", "import", "/nonexistent/audit.jsonl"],
        )
        .await;
        let err = result.expect_err("no file");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/audit.jsonl: No such file or directory (os error 2)"
        );
        assert!(requests.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_non_admin_is_told_so() {
        let served = serve(FakeDaemon {
            import_audit: Some(Err(Status::permission_denied(
                "importing usage history is for admins",
            ))),
            ..Default::default()
        });
        let input = file(&[GOOD]);
        let path = input.path().to_str().expect("utf-8").to_owned();
        let (result, _, _) = run_cli(&served.socket, &["audit", "import", &path]).await;
        assert_eq!(result.expect_err("denied").exit_code(), 4);
    }
}
