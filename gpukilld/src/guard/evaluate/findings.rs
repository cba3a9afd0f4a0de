//! Findings from the guard's other judges, reported beside the rules' violations: the rogue
//! scorer's (miner and abuse) and the reservations' (a GPU used without holding it).

use std::collections::HashSet;
use std::sync::Arc;

use super::violation::{Offender, Rule, Subject, Unit, Violation};
use super::{Means, Seen};
use crate::guard::policy::{CompiledPolicy, LocalTime};
use crate::guard::rogue::{Observed, RiskLevel};
use crate::reservations::usage::Assessment;

/// Scores each process (once, on the first GPU it is on) with `[rogue]`: a finding of at
/// least low risk is reported; it is `over` (the guard acts) at `rogue_act_at` and above.
pub(super) fn rogue_findings(
    policy: &CompiledPolicy,
    seen: &[Seen<'_>],
    means: &Means,
    local: LocalTime,
    out: &mut Vec<Violation>,
) {
    let config = &policy.policy.rogue;
    let act_at = policy.policy.rogue_act_at;
    let now = means.now;
    let mut identities = policy
        .rogue_identities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut scored = HashSet::new();
    for process in seen {
        let info = process.info();
        if !scored.insert((info.pid, info.start_ticks)) {
            continue;
        }
        let window = config.high_util_window;
        let mean_util_pct = means.mean(process, window).ok().flatten();
        let observed = Observed {
            name: &info.name,
            exe_name: info.exe_name.as_deref(),
            cmdline: &info.cmdline,
            user: &info.user,
            uid: info.uid,
            running_for: now.duration_since(info.start_time).unwrap_or_default(),
            mean_util_pct,
            util_window: window,
            local_hour: u8::try_from(local.minute / 60).ok(),
        };
        let identity = identities
            .entry((info.pid, info.start_ticks))
            .or_insert_with(|| Arc::new(policy.rogue.identity(&observed)));
        let finding = policy.rogue.score_with(&observed, identity);
        if finding.level < RiskLevel::Low {
            continue;
        }
        let limit = act_at.map_or(f64::from(config.levels.low), |level| {
            f64::from(config.levels.threshold(level))
        });
        out.push(Violation {
            rule: Rule::Rogue,
            policy: format!("[rogue] {}", finding.level.as_str()),
            subject: process.subject(),
            measured: f64::from(finding.score),
            limit,
            unit: Unit::Score,
            offenders: vec![process.offender()],
            over: act_at.is_some_and(|level| finding.level >= level),
            note: finding.reasons.join("; "),
        });
    }
    // Forget processes that are gone.
    identities.retain(|key, _| scored.contains(key));
}

/// One finding per process using a GPU it does not hold (`misuse`, from the reservations):
/// reported always, `over` (the guard acts) when `[reservation] enforce` is on.
pub fn reservation_findings(policy: &CompiledPolicy, misuse: &[Assessment]) -> Vec<Violation> {
    let enforce = policy.policy.reservation.enforce;
    let mut found = Vec::new();
    for assessment in misuse {
        let gpu = &assessment.gpu;
        let note = match &assessment.holder {
            Some(holder) => format!("on {}'s reservation of GPU {}", holder.user, gpu.index),
            None => format!("GPU {} is not reserved", gpu.index),
        };
        for process in &assessment.misuse {
            found.push(Violation {
                rule: Rule::Reservation,
                policy: "[reservation]".to_owned(),
                subject: Subject::Process {
                    pid: process.info.pid,
                    start_ticks: process.info.start_ticks,
                    gpu_index: gpu.index,
                },
                measured: f64::from(gpu.index),
                limit: 0.0,
                unit: Unit::Gpu,
                offenders: vec![Offender {
                    info: Arc::clone(&process.info),
                    vendor: gpu.vendor,
                    gpu_index: gpu.index,
                    protected: None,
                }],
                over: enforce,
                note: note.clone(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::tests::{WEDNESDAY_NOON, policy, proc_info, snapshot_at};
    use super::super::{UtilHistory, evaluate};
    use super::*;

    #[test]
    fn a_renamed_miner_is_a_rogue_finding_acted_on_at_the_configured_level() {
        let text = r#"
            rogue_act_at = "high"
            [rogue.whitelist]
            names = ["^python3$"]
        "#;
        let mut miner = (*proc_info(60, 1000, "alice", 60)).clone();
        miner.exe_name = Some("xmrig".into());
        let trainer = proc_info(61, 1000, "alice", 60);
        let rows = [
            (Arc::new(miner), 0, Some(1), Some(99)),
            (trainer, 1, Some(1), Some(99)),
        ];
        let evaluation = evaluate(
            &policy(text),
            &snapshot_at(0, &rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        assert_eq!(
            evaluation.violations.len(),
            1,
            "{:?}",
            evaluation.violations
        );
        let finding = &evaluation.violations[0];
        assert_eq!(finding.rule, Rule::Rogue);
        assert_eq!(finding.offenders[0].info.pid, 60);
        assert!(finding.over, "high or critical is acted on");
        assert!(finding.policy == "[rogue] critical" || finding.policy == "[rogue] high");
        assert!(
            finding.describe().contains("xmrig"),
            "{}",
            finding.describe()
        );
        // Without rogue_act_at: reported, never acted on.
        let report_only = evaluate(
            &policy(""),
            &snapshot_at(0, &rows),
            &UtilHistory::default(),
            WEDNESDAY_NOON,
        );
        assert!(report_only.violations.iter().all(|v| !v.over));
        assert_eq!(report_only.violations.len(), 1);
    }
}
