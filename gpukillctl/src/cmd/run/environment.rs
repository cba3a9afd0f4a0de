//! What of gpukilld's Granted environment reaches `run`'s command: only the GPU selection
//! variables this client knows, each checked to hold a device list.
//!
//! The environment comes from whatever serves the socket; a variable such as `LD_PRELOAD`,
//! `PATH` or `PYTHONPATH` would run code of its choosing as the caller. So a variable not in
//! [`ALLOWED`] is dropped (with a warning on standard error naming it), and an allowed one
//! whose value is not what its runtime reads (a device list, a device order, a oneAPI
//! selector) refuses the whole grant: the command does not start and the reservation is
//! released, since a server that sends it is broken or not gpukilld.

use std::collections::{BTreeMap, HashMap};

use crate::error::Error;

/// The longest value accepted: a list of a few hundred GPU UUIDs.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

/// How much of a refused value the error shows.
const SHOWN_VALUE_LEN: usize = 80;

/// What one variable's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Comma-separated device indices or UUIDs (`0,1`, `GPU-5d1a...`, `MIG-...`,
    /// `MIG-GPU-.../1/0`, Level Zero's `0.1`), `all`, `none` or `void`; empty for none.
    Devices,
    /// `PCI_BUS_ID` or `FASTEST_FIRST`.
    Order,
    /// oneAPI's selector: `;`-separated `[!]backend:devices` (`level_zero:0,1`, `*:gpu`).
    OneApiSelector,
}

impl Kind {
    /// What a value of this kind is, for the error.
    fn expected(self) -> &'static str {
        match self {
            Kind::Devices => {
                "a device list (comma-separated indices or UUIDs such as 0,1 or GPU-..., or \
                 all, none, void)"
            }
            Kind::Order => "PCI_BUS_ID or FASTEST_FIRST",
            Kind::OneApiSelector => {
                "a oneAPI device selector ([!]backend:devices, separated by ';', such as \
                 level_zero:0,1)"
            }
        }
    }

    /// Whether `value` is one of this kind.
    fn accepts(self, value: &str) -> bool {
        match self {
            Kind::Devices => value.is_empty() || value.split(',').all(device),
            Kind::Order => matches!(value, "PCI_BUS_ID" | "FASTEST_FIRST"),
            Kind::OneApiSelector => value.split(';').all(selector_term),
        }
    }
}

/// The variables passed on, with what each must hold: those gpukilld sends
/// (`CUDA_VISIBLE_DEVICES`, `CUDA_DEVICE_ORDER`, `ROCR_VISIBLE_DEVICES`, `ZE_AFFINITY_MASK`)
/// and their siblings in the same runtimes (containers, HIP, OpenCL on ROCm, oneAPI).
pub const ALLOWED: [&str; 8] = [
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "ZE_AFFINITY_MASK",
    "ONEAPI_DEVICE_SELECTOR",
];

/// The kind of the allowed variable `name`; `None` for any other.
fn kind(name: &str) -> Option<Kind> {
    match name {
        "CUDA_DEVICE_ORDER" => Some(Kind::Order),
        "ONEAPI_DEVICE_SELECTOR" => Some(Kind::OneApiSelector),
        name if ALLOWED.contains(&name) => Some(Kind::Devices),
        _ => None,
    }
}

/// One device of a list: letters, digits and `-`, `_`, `.`, `/` (a UUID, a MIG path, an
/// index, a Level Zero `device.subdevice`), not empty.
fn device(item: &str) -> bool {
    !item.is_empty()
        && item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// One term of a oneAPI selector: `[!]backend:devices`, the backend a lower-case name or
/// `*`, the devices a comma-separated list of names, indices (`0`, `0.1`) or `*`.
fn selector_term(term: &str) -> bool {
    let term = term.strip_prefix('!').unwrap_or(term);
    let Some((backend, devices)) = term.split_once(':') else {
        return false;
    };
    let backend_ok = backend == "*"
        || (!backend.is_empty()
            && backend
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    backend_ok
        && devices.split(',').all(|device| {
            !device.is_empty()
                && device
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'*' | b'_'))
        })
}

/// The environment a grant gives the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The allowed variables, checked.
    pub variables: BTreeMap<String, String>,
    /// The names of the variables dropped, sorted.
    pub ignored: Vec<String>,
}

/// Keeps the variables of `environment` in [`ALLOWED`] and checks their values; fails with
/// [`Error::BadGrant`] naming the first (by name) allowed variable whose value is wrong.
pub fn check(environment: &HashMap<String, String>) -> Result<Checked, Error> {
    let sorted: BTreeMap<&String, &String> = environment.iter().collect();
    let mut checked = Checked::default();
    for (name, value) in sorted {
        let Some(kind) = kind(name) else {
            checked.ignored.push(name.clone());
            continue;
        };
        if value.len() > MAX_VALUE_LEN || !kind.accepts(value) {
            return Err(Error::BadGrant {
                variable: name.clone(),
                value: shown(value),
                expected: kind.expected(),
            });
        }
        checked.variables.insert(name.clone(), value.clone());
    }
    Ok(checked)
}

/// The line on standard error for a dropped variable.
pub fn ignored_line(name: &str) -> String {
    format!(
        "gpukillctl: warning: ignoring {name} in gpukilld's grant: the command gets only the \
         GPU selection variables ({})",
        ALLOWED.join(", ")
    )
}

/// `value` cut to [`SHOWN_VALUE_LEN`] characters for a message (`...` marks a cut).
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_VALUE_LEN) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn what_gpukilld_sends_passes_unchanged() {
        let sent = environment(&[
            (
                "CUDA_VISIBLE_DEVICES",
                "GPU-5d1a3c2e-0b7f-4c1e-9a8d-1f2e3d4c5b6a,GPU-8e7f6a5b-4c3d-2e1f-0a9b-8c7d6e5f4a3b",
            ),
            ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
            ("ROCR_VISIBLE_DEVICES", "GPU-b1e2a3c4d5e6f708"),
            ("ZE_AFFINITY_MASK", "0,1.1"),
        ]);
        let checked = check(&sent).expect("valid");
        assert_eq!(checked.variables, sent.clone().into_iter().collect());
        assert!(checked.ignored.is_empty());
        // CUDA sees no GPU: empty is a list too.
        let none = environment(&[("CUDA_VISIBLE_DEVICES", "")]);
        assert_eq!(check(&none).expect("valid").variables.len(), 1);
    }

    #[test]
    fn the_siblings_are_allowed_with_their_own_syntax() {
        let sent = environment(&[
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("HIP_VISIBLE_DEVICES", "0,2"),
            ("GPU_DEVICE_ORDINAL", "1"),
            (
                "CUDA_VISIBLE_DEVICES",
                "MIG-GPU-5d1a3c2e/1/0,MIG-8e7f6a5b-4c3d",
            ),
            ("CUDA_DEVICE_ORDER", "FASTEST_FIRST"),
            ("ONEAPI_DEVICE_SELECTOR", "level_zero:0,1.0;!opencl:*;*:gpu"),
        ]);
        assert_eq!(check(&sent).expect("valid").variables.len(), 6);
    }

    #[test]
    fn other_variables_are_dropped_and_named() {
        let sent = environment(&[
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("PATH", "/tmp/evil"),
            ("CUDA_VISIBLE_DEVICES", "0"),
            ("cuda_visible_devices", "0"),
        ]);
        let checked = check(&sent).expect("valid");
        assert_eq!(
            checked.variables,
            BTreeMap::from([("CUDA_VISIBLE_DEVICES".to_owned(), "0".to_owned())])
        );
        assert_eq!(
            checked.ignored,
            ["LD_PRELOAD", "PATH", "cuda_visible_devices"]
        );
        assert_eq!(
            ignored_line("LD_PRELOAD"),
            "gpukillctl: warning: ignoring LD_PRELOAD in gpukilld's grant: the command gets \
             only the GPU selection variables (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, \
             NVIDIA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, \
             GPU_DEVICE_ORDINAL, ZE_AFFINITY_MASK, ONEAPI_DEVICE_SELECTOR)"
        );
    }

    #[test]
    fn values_that_are_not_device_lists_refuse_the_grant() {
        let bad = [
            ("CUDA_VISIBLE_DEVICES", "0;touch /tmp/x"),
            ("CUDA_VISIBLE_DEVICES", "0,,1"),
            ("CUDA_VISIBLE_DEVICES", "$(id)"),
            ("CUDA_VISIBLE_DEVICES", "0 1"),
            ("CUDA_VISIBLE_DEVICES", "0\n"),
            ("ROCR_VISIBLE_DEVICES", "GPU-1\x1b[2J"),
            ("ZE_AFFINITY_MASK", ","),
            ("CUDA_DEVICE_ORDER", "pci_bus_id"),
            ("CUDA_DEVICE_ORDER", ""),
            ("ONEAPI_DEVICE_SELECTOR", "level_zero"),
            ("ONEAPI_DEVICE_SELECTOR", "level_zero:0 ;x"),
            ("ONEAPI_DEVICE_SELECTOR", ""),
        ];
        for (name, value) in bad {
            let err = check(&environment(&[(name, value), ("LD_PRELOAD", "x")]))
                .expect_err(&format!("{name}={value:?}"));
            assert_eq!(err.exit_code(), 1);
            let Error::BadGrant { variable, .. } = &err else {
                panic!("{err}");
            };
            assert_eq!(variable, name);
        }
        let err = check(&environment(&[("CUDA_VISIBLE_DEVICES", "0;x")])).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "gpukilld granted the GPUs with CUDA_VISIBLE_DEVICES=\"0;x\", which is not a device \
             list (comma-separated indices or UUIDs such as 0,1 or GPU-..., or all, none, \
             void); the command was not started and the reservation was released (is the \
             server of that socket really gpukilld?)"
        );
        let long = "0,".repeat(MAX_VALUE_LEN) + "0";
        let err = check(&environment(&[("HIP_VISIBLE_DEVICES", &long)])).expect_err("long");
        let Error::BadGrant { value, .. } = err else {
            panic!("{err}");
        };
        assert_eq!(value.len(), SHOWN_VALUE_LEN + 3);
    }
}
