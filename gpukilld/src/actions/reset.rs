//! Resetting GPUs through the vendor's own tool, run with a timeout; the GPU must then
//! answer again in the daemon's next ticks. NVML has no public reset call, so NVIDIA's is
//! `nvidia-smi --gpu-reset -i <PCI bus id>`; AMD's is `amd-smi reset -G -g <PCI bus id>`, or
//! `rocm-smi --gpureset -d <index>` where amd-smi is not installed. Intel's drivers (i915,
//! xe) offer no documented per-device reset, so Intel GPUs are reported unsupported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::ring::Ring;
use crate::snapshot::{Gpu, Vendor};

/// Where the reset tools are and how long they may take.
#[derive(Debug, Clone)]
pub struct ResetTools {
    /// nvidia-smi.
    pub nvidia_smi: PathBuf,
    /// amd-smi.
    pub amd_smi: PathBuf,
    /// rocm-smi, used when amd-smi is not installed.
    pub rocm_smi: PathBuf,
    /// How long an NVIDIA reset may take.
    pub nvidia_timeout: Duration,
    /// How long an AMD reset may take.
    pub amd_timeout: Duration,
}

/// Whether gpukill knows how to reset GPUs of `vendor` at all.
pub fn vendor_can_reset(vendor: Vendor) -> bool {
    matches!(vendor, Vendor::Nvidia | Vendor::Amd)
}

/// Why a GPU cannot be reset at all, in words; `None` when it can be.
pub fn unsupported_reason(vendor: Vendor, gpu: &Gpu) -> Option<String> {
    if !vendor_can_reset(vendor) {
        return Some(format!(
            "GPU {} is an {} GPU: its driver offers no documented per-device reset, so gpukill \
             cannot reset it (an admin can unbind and rebind the driver, or reboot)",
            gpu.index,
            vendor.name()
        ));
    }
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
            "the PCI bus id of GPU {} is unknown, so the reset tool cannot be pointed at it",
            gpu.index
        ));
    }
    None
}

/// Resets `gpu` of `vendor` with its vendor's tool. Ok holds what the tool printed; Err says
/// why the reset failed.
pub async fn reset_gpu(tools: &ResetTools, vendor: Vendor, gpu: &Gpu) -> Result<String, String> {
    let pci_bus_id = gpu.pci_bus_id.as_deref().unwrap_or_default();
    match vendor {
        Vendor::Nvidia => {
            let args = ["--gpu-reset", "-i", pci_bus_id];
            run_tool(&tools.nvidia_smi, &args, tools.nvidia_timeout).await
        }
        Vendor::Amd => {
            let args = ["reset", "-G", "-g", pci_bus_id];
            match run_tool(&tools.amd_smi, &args, tools.amd_timeout).await {
                Err(ToolError::NotInstalled(_)) => {
                    let index = gpu.vendor_index.to_string();
                    let args = ["--gpureset", "-d", index.as_str()];
                    run_tool(&tools.rocm_smi, &args, tools.amd_timeout).await
                }
                other => other,
            }
        }
        Vendor::Intel | Vendor::Apple => Err(ToolError::Failed(
            unsupported_reason(vendor, gpu).unwrap_or_default(),
        )),
    }
    .map_err(|error| match error {
        ToolError::NotInstalled(message) | ToolError::Failed(message) => message,
    })
}

/// Why a reset tool did not reset.
enum ToolError {
    /// The tool is not installed (it could not be found).
    NotInstalled(String),
    /// It ran and failed, timed out, or could not be started.
    Failed(String),
}

/// Runs `program args`, killing it after `timeout`. Ok holds what it printed.
async fn run_tool(program: &Path, args: &[&str], timeout: Duration) -> Result<String, ToolError> {
    let command_line = format!("{} {}", program.display(), args.join(" "));
    let command = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, command).await {
        Err(_) => {
            return Err(ToolError::Failed(format!(
                "{command_line} did not finish within {}; it was killed",
                humantime::format_duration(timeout)
            )));
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ToolError::NotInstalled(format!(
                "cannot run {}: it is not installed ({error})",
                program.display()
            )));
        }
        Ok(Err(error)) => {
            return Err(ToolError::Failed(format!(
                "cannot run {}: {error}",
                program.display()
            )));
        }
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
        Err(ToolError::Failed(format!(
            "{command_line} failed ({}): {printed}",
            output.status
        )))
    }
}

/// Waits until a snapshot taken after `since` shows the GPU of `vendor` at `pci_bus_id`
/// without an error, for at most `timeout`.
pub async fn wait_until_back(
    ring: &Arc<Ring>,
    vendor: Vendor,
    pci_bus_id: &str,
    since: SystemTime,
    timeout: Duration,
) -> Result<(), String> {
    let mut updates = ring.updates();
    let deadline = Instant::now() + timeout;
    let answers = |ring: &Ring| {
        let latest = ring.latest();
        latest.taken_at > since
            && latest.gpus().any(|(of, gpu)| {
                of == vendor && gpu.pci_bus_id.as_deref() == Some(pci_bus_id) && gpu.error.is_none()
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
        let nvidia = |gpu: &Gpu| unsupported_reason(Vendor::Nvidia, gpu);
        assert_eq!(nvidia(&gpu), None);
        assert!(unsupported_reason(Vendor::Intel, &gpu).is_some_and(|r| r.contains("intel")));
        gpu.mig_enabled = Some(true);
        assert!(nvidia(&gpu).is_some_and(|r| r.contains("MIG")));
        gpu.mig_enabled = Some(false);
        gpu.reset_supported = Some(false);
        assert!(nvidia(&gpu).is_some_and(|r| r.contains("multi-GPU")));
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn tools(dir: &Path, nvidia_smi: PathBuf, timeout: Duration) -> ResetTools {
        ResetTools {
            nvidia_smi,
            amd_smi: dir.join("amd-smi"),
            rocm_smi: dir.join("rocm-smi"),
            nvidia_timeout: timeout,
            amd_timeout: timeout,
        }
    }

    fn gpu_at(pci_bus_id: &str) -> Gpu {
        Gpu {
            index: 3,
            vendor_index: 1,
            pci_bus_id: Some(Arc::from(pci_bus_id)),
            ..Gpu::default()
        }
    }

    #[tokio::test]
    async fn nvidia_smi_failure_and_timeout_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failing = script(
            dir.path(),
            "smi-fails",
            "echo 'Unable to reset GPU: in use' >&2\nexit 3",
        );
        let hanging = script(dir.path(), "smi-hangs", "exec sleep 30");
        let gpu = gpu_at("00000000:07:00.0");
        let error = reset_gpu(
            &tools(dir.path(), failing, Duration::from_secs(5)),
            Vendor::Nvidia,
            &gpu,
        )
        .await
        .expect_err("exit 3");
        assert!(
            error.contains("in use") && error.contains("00000000:07:00.0"),
            "{error}"
        );
        let started = Instant::now();
        let error = reset_gpu(
            &tools(dir.path(), hanging, Duration::from_millis(300)),
            Vendor::Nvidia,
            &gpu,
        )
        .await
        .expect_err("timeout");
        assert!(error.contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn amd_uses_amd_smi_by_bus_id_and_falls_back_to_rocm_smi_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gpu = gpu_at("0000:03:00.0");
        let mut tools = tools(
            dir.path(),
            dir.path().join("nvidia-smi"),
            Duration::from_secs(5),
        );
        // Neither tool installed: the rocm-smi error is the one reported.
        let error = reset_gpu(&tools, Vendor::Amd, &gpu)
            .await
            .expect_err("no tools");
        assert!(
            error.contains("rocm-smi") && error.contains("not installed"),
            "{error}"
        );
        script(dir.path(), "rocm-smi", "echo \"rocm-smi $*\"");
        let printed = reset_gpu(&tools, Vendor::Amd, &gpu)
            .await
            .expect("rocm-smi");
        assert!(printed.ends_with("rocm-smi --gpureset -d 1"), "{printed}");
        tools.amd_smi = script(dir.path(), "amd-smi", "echo \"amd-smi $*\"");
        let printed = reset_gpu(&tools, Vendor::Amd, &gpu).await.expect("amd-smi");
        assert_eq!(printed, "amd-smi reset -G -g 0000:03:00.0");
        let error = reset_gpu(&tools, Vendor::Intel, &gpu)
            .await
            .expect_err("intel");
        assert!(error.contains("no documented per-device reset"), "{error}");
    }
}
