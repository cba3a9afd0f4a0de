//! NVML return codes: names used in scenario files and `nvmlErrorString` texts.

use std::ffi::CStr;

/// `nvmlReturn_t`.
pub(crate) type Ret = nvml_wrapper_sys::bindings::nvmlReturn_t;

pub(crate) const SUCCESS: Ret = 0;
pub(crate) const UNINITIALIZED: Ret = 1;
pub(crate) const INVALID_ARGUMENT: Ret = 2;
pub(crate) const NOT_SUPPORTED: Ret = 3;
pub(crate) const NOT_FOUND: Ret = 6;
pub(crate) const INSUFFICIENT_SIZE: Ret = 7;
pub(crate) const TIMEOUT: Ret = 10;
pub(crate) const GPU_IS_LOST: Ret = 15;
pub(crate) const ARGUMENT_VERSION_MISMATCH: Ret = 25;
pub(crate) const UNKNOWN: Ret = 999;

/// `(scenario name, code, nvmlErrorString text)`.
const CODES: &[(&str, Ret, &CStr)] = &[
    ("SUCCESS", 0, c"Success"),
    ("UNINITIALIZED", 1, c"Uninitialized"),
    ("INVALID_ARGUMENT", 2, c"Invalid Argument"),
    ("NOT_SUPPORTED", 3, c"Not Supported"),
    ("NO_PERMISSION", 4, c"Insufficient Permissions"),
    ("ALREADY_INITIALIZED", 5, c"Already Initialized"),
    ("NOT_FOUND", 6, c"Not Found"),
    ("INSUFFICIENT_SIZE", 7, c"Insufficient Size"),
    ("INSUFFICIENT_POWER", 8, c"Insufficient External Power"),
    ("DRIVER_NOT_LOADED", 9, c"Driver Not Loaded"),
    ("TIMEOUT", 10, c"Timeout"),
    ("IRQ_ISSUE", 11, c"Interrupt request issue"),
    ("LIBRARY_NOT_FOUND", 12, c"NVML Shared Library Not Found"),
    ("FUNCTION_NOT_FOUND", 13, c"Function Not Found"),
    ("CORRUPTED_INFOROM", 14, c"Corrupted infoROM"),
    ("GPU_IS_LOST", 15, c"GPU is lost"),
    ("RESET_REQUIRED", 16, c"GPU requires restart"),
    (
        "OPERATING_SYSTEM",
        17,
        c"The operating system has blocked the request.",
    ),
    (
        "LIB_RM_VERSION_MISMATCH",
        18,
        c"RM has detected an NVML/RM version mismatch.",
    ),
    ("IN_USE", 19, c"In use by another client"),
    ("MEMORY", 20, c"Insufficient Memory"),
    ("NO_DATA", 21, c"No data"),
    (
        "VGPU_ECC_NOT_SUPPORTED",
        22,
        c"The requested vgpu operation is not available on target device, because ECC is enabled",
    ),
    (
        "INSUFFICIENT_RESOURCES",
        23,
        c"Ran out of critical resources, other than memory",
    ),
    ("FREQ_NOT_SUPPORTED", 24, c"Frequency not supported"),
    (
        "ARGUMENT_VERSION_MISMATCH",
        25,
        c"Argument version mismatch",
    ),
    ("DEPRECATED", 26, c"Deprecated"),
    ("NOT_READY", 27, c"Not Ready"),
    ("GPU_NOT_FOUND", 28, c"GPU not found"),
    ("INVALID_STATE", 29, c"Invalid state"),
    ("RESET_TYPE_NOT_SUPPORTED", 30, c"Reset type not supported"),
    ("UNKNOWN", 999, c"Unknown Error"),
];

/// The code for a scenario error name (`SUCCESS` is not an error).
pub(crate) fn error_code_by_name(name: &str) -> Option<Ret> {
    CODES
        .iter()
        .find(|(n, c, _)| *n == name && *c != SUCCESS)
        .map(|&(_, c, _)| c)
}

/// The `nvmlErrorString` text of a code.
pub(crate) fn error_string(code: Ret) -> &'static CStr {
    CODES
        .iter()
        .find(|(_, c, _)| *c == code)
        .map_or(c"Unknown Error", |&(_, _, s)| s)
}
