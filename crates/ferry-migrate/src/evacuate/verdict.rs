//! An evacuation's end: decided from the host itself.

use super::*;

/// How an evacuation ended, decided from the host itself once every migration has: does any
/// guest still run there?
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub outcome: ferry_journal::EvacuationOutcome,
    /// Guests still running on the host (or why it could not be read).
    pub still_running: Vec<String>,
    /// Some guest's place is uncertain: `ferry recover` must look at its run.
    pub uncertain: bool,
    pub migrated: usize,
    /// The journal's message: how many moved, in how long, and what is left.
    pub message: String,
    pub makespan_ms: u64,
}

/// Read the host, decide the evacuation's outcome, and end it in the journal.
pub fn conclude(
    hv: &dyn Hypervisor,
    journal: &Journal,
    evacuation: i64,
    host: &HostSpec,
    results: &[GuestResult],
    makespan_ms: u64,
) -> Verdict {
    let still_running: Vec<String> = hv
        .connect(&host.uri)
        .and_then(|h| hv.guests(h))
        .map(|g| g.into_iter().filter(|g| g.active).map(|g| g.name).collect())
        .unwrap_or_else(|e| vec![format!("(cannot read {}: {e})", host.name)]);
    let verdict = decide_verdict(still_running, results, makespan_ms);
    let _ = journal.finish_evacuation(evacuation, verdict.outcome, &verdict.message);
    verdict
}

/// The verdict from what the host says and what each migration ended as.
pub fn decide_verdict(
    still_running: Vec<String>,
    results: &[GuestResult],
    makespan_ms: u64,
) -> Verdict {
    use ferry_journal::EvacuationOutcome;
    let migrated = results
        .iter()
        .filter(|r| r.outcome == GuestOutcome::Migrated)
        .count();
    let message = format!(
        "{migrated} of {} migrated in {:.1} s; still running there: {}",
        results.len(),
        makespan_ms as f64 / 1000.0,
        if still_running.is_empty() {
            "none".into()
        } else {
            still_running.join(", ")
        }
    );
    Verdict {
        outcome: if still_running.is_empty() {
            EvacuationOutcome::Emptied
        } else {
            EvacuationOutcome::Incomplete
        },
        uncertain: results.iter().any(|r| r.outcome == GuestOutcome::Uncertain),
        still_running,
        migrated,
        message,
        makespan_ms,
    }
}

/// An evacuation's last JSON line (with the `result` event: [`crate::report::ResultEvent`]).
#[derive(Debug, Serialize)]
pub struct EvacuationResult<'a> {
    pub outcome: ferry_journal::EvacuationOutcome,
    pub makespan_ms: u64,
    /// The model's prediction of the schedule, and the bound no schedule beats.
    pub predicted_s: f64,
    pub bound_s: f64,
    pub guests: &'a [GuestResult],
    pub still_running: &'a [String],
}

impl Verdict {
    /// The result to report, with the plan's prediction and each guest's line.
    pub fn result<'a>(
        &'a self,
        plan: &EvacPlan,
        guests: &'a [GuestResult],
    ) -> EvacuationResult<'a> {
        EvacuationResult {
            outcome: self.outcome,
            makespan_ms: self.makespan_ms,
            predicted_s: plan.predicted.makespan_s,
            bound_s: plan.bound_s,
            guests,
            still_running: &self.still_running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(guest: &str, outcome: GuestOutcome) -> GuestResult {
        GuestResult {
            guest: guest.into(),
            target: None,
            outcome,
            attempts: 1,
            duration_ms: 0,
            downtime_ms: None,
            bytes: None,
            message: None,
            runs: vec![],
        }
    }

    #[test]
    fn the_host_decides_emptied_and_an_uncertain_guest_is_said() {
        let results = [
            result("a", GuestOutcome::Migrated),
            result("b", GuestOutcome::Uncertain),
            result("c", GuestOutcome::StayedOnSource),
        ];
        let v = decide_verdict(vec![], &results, 1500);
        assert_eq!(
            (v.outcome, v.migrated, v.uncertain),
            (ferry_journal::EvacuationOutcome::Emptied, 1, true)
        );
        let v = decide_verdict(vec!["c".into()], &results[..1], 1500);
        assert_eq!(
            (v.outcome, v.migrated, v.uncertain),
            (ferry_journal::EvacuationOutcome::Incomplete, 1, false)
        );
        assert_eq!(v.still_running, ["c"]);
    }
}
