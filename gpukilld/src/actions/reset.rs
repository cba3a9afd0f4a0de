//! Resetting NVIDIA GPUs. NVML has no public reset call, so the reset is
//! `nvidia-smi --gpu-reset -i <PCI bus id>`, run with a timeout; the GPU must then answer
//! again in the daemon's next ticks.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::ring::Ring;
use crate::snapshot::{Gpu, Vendor};

/// Why a GPU cannot be reset at all, in words; `None` when it can be.
pub fn unsupported_reason(gpu: &Gpu) -> Option<String> {
    if gpu.mig_enabled == Some(true) {
        return Some(format!(
            "GPU {} has MIG mode enabled; disable MIG (nvidia-smi -i {} -mig 0) before a reset",
            gpu.index, gpu.index
        ));
    }
    if gpu.reset_supported == Some(false) {
        return Some(format!(
            "GPU {} is on a multi-GPU board, whose GPUs can only be reset together by the driver",
            gpu.index
        ));
    }
    if gpu.pci_bus_id.is_none() {
        return Some(format!(
            "the PCI bus id of GPU {} is unknown, so nvidia-smi cannot be pointed at it",
            gpu.index
        ));
    }
    None
}

/// Runs `smi --gpu-reset -i pci_bus_id`, killing it after `timeout`. Ok holds what it
/// printed; Err says why the reset failed.
pub async fn run_nvidia_smi(
    smi: &Path,
    pci_bus_id: &str,
    timeout: Duration,
) -> Result<String, String> {
    let command = tokio::process::Command::new(smi)
        .args(["--gpu-reset", "-i", pci_bus_id])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, command).await {
        Err(_) => {
            return Err(format!(
                "{} --gpu-reset did not finish within {}; it was killed",
                smi.display(),
                humantime::format_duration(timeout)
            ));
        }
        Ok(Err(error)) => return Err(format!("cannot run {}: {error}", smi.display())),
        Ok(Ok(output)) => output,
    };
    let printed = [output.stdout.as_slice(), output.stderr.as_slice()]
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_string())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if output.status.success() {
        Ok(printed)
    } else {
        Err(format!(
            "{} --gpu-reset -i {pci_bus_id} failed ({}): {printed}",
            smi.display(),
            output.status
        ))
    }
}

/// Waits until a snapshot taken after `since` shows the GPU at `pci_bus_id` without an
/// error, for at most `timeout`.
pub async fn wait_until_back(
    ring: &Arc<Ring>,
    pci_bus_id: &str,
    since: SystemTime,
    timeout: Duration,
) -> Result<(), String> {
    let mut updates = ring.updates();
    let deadline = Instant::now() + timeout;
    let answers = |ring: &Ring| {
        let latest = ring.latest();
        latest.taken_at > since
            && latest.gpus().any(|(vendor, gpu)| {
                vendor == Vendor::Nvidia
                    && gpu.pci_bus_id.as_deref() == Some(pci_bus_id)
                    && gpu.error.is_none()
            })
    };
    loop {
        if answers(ring) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, updates.recv()).await.is_err() {
            return Err(format!(
                "the GPU at {pci_bus_id} did not answer within {} after the reset",
                humantime::format_duration(timeout)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_and_multi_gpu_boards_cannot_be_reset() {
        let mut gpu = Gpu {
            index: 2,
            pci_bus_id: Some(Arc::from("00000000:09:00.0")),
            mig_enabled: Some(false),
            reset_supported: Some(true),
            ..Gpu::default()
        };
        assert_eq!(unsupported_reason(&gpu), None);
        gpu.mig_enabled = Some(true);
        assert!(unsupported_reason(&gpu).is_some_and(|r| r.contains("MIG")));
        gpu.mig_enabled = Some(false);
        gpu.reset_supported = Some(false);
        assert!(unsupported_reason(&gpu).is_some_and(|r| r.contains("multi-GPU")));
    }

    #[tokio::test]
    async fn nvidia_smi_failure_and_timeout_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failing = dir.path().join("smi-fails");
        std::fs::write(
            &failing,
            "#!/bin/sh\necho 'Unable to reset GPU: in use' >&2\nexit 3\n",
        )
        .expect("write");
        let hanging = dir.path().join("smi-hangs");
        std::fs::write(&hanging, "#!/bin/sh\nexec sleep 30\n").expect("write");
        for script in [&failing, &hanging] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let error = run_nvidia_smi(&failing, "00000000:07:00.0", Duration::from_secs(5))
            .await
            .expect_err("exit 3");
        assert!(
            error.contains("in use") && error.contains("00000000:07:00.0"),
            "{error}"
        );
        let started = Instant::now();
        let error = run_nvidia_smi(&hanging, "00000000:07:00.0", Duration::from_millis(300))
            .await
            .expect_err("timeout");
        assert!(error.contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
