//! What the common Xid codes mean, and which of them leave a GPU `critical`. From NVIDIA's
//! "Xid Errors" catalogue (docs.nvidia.com/deploy/xid-errors); the meaning is a short hint
//! for the person reading `gpukillctl health`, not a diagnosis.

/// Xid codes, their short meaning, and whether they are serious (the GPU stays `critical`
/// until an admin clears it or the GPU is reset).
const XIDS: &[(u64, &str, bool)] = &[
    (
        13,
        "graphics engine exception (usually the application)",
        false,
    ),
    (31, "GPU memory page fault (usually the application)", false),
    (32, "invalid or corrupted push buffer stream", false),
    (38, "driver firmware error", true),
    (
        43,
        "GPU stopped processing (the application hit an error)",
        false,
    ),
    (45, "preemptive cleanup after an earlier error", false),
    (48, "double-bit ECC error", true),
    (61, "internal micro-controller breakpoint or warning", true),
    (62, "internal micro-controller halt", true),
    (63, "ECC page retirement or row remapping recorded", false),
    (64, "ECC page retirement or row remapping failed", true),
    (68, "video processor exception", false),
    (69, "graphics engine class error", false),
    (74, "NVLink error", true),
    (79, "GPU has fallen off the bus", true),
    (92, "high single-bit ECC error rate", false),
    (
        94,
        "contained ECC error (the application was stopped)",
        false,
    ),
    (
        95,
        "uncontained ECC error (every application on the GPU is affected)",
        true,
    ),
    (109, "context switch timeout", false),
    (119, "GSP RPC timeout", true),
    (120, "GSP error", true),
    (121, "C2C link error", true),
    (140, "unrecovered ECC error", true),
];

/// The short meaning of `code`, or "see NVIDIA's Xid catalogue" for one not in the table.
pub fn meaning(code: u64) -> &'static str {
    XIDS.iter().find(|(known, _, _)| *known == code).map_or(
        "unlisted Xid: see NVIDIA's Xid catalogue",
        |(_, meaning, _)| meaning,
    )
}

/// Whether `code` leaves the GPU `critical`.
pub fn is_serious(code: u64) -> bool {
    XIDS.iter()
        .any(|(known, _, serious)| *known == code && *serious)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_have_a_meaning_and_the_fatal_ones_are_serious() {
        assert_eq!(meaning(79), "GPU has fallen off the bus");
        assert!(is_serious(79) && is_serious(48) && is_serious(95));
        assert!(!is_serious(13) && !is_serious(31) && !is_serious(43));
        assert!(meaning(9999).starts_with("unlisted"));
        assert!(!is_serious(9999));
        for (code, _, _) in XIDS {
            assert_eq!(
                XIDS.iter().filter(|(c, _, _)| c == code).count(),
                1,
                "{code}"
            );
        }
    }
}
