//! What a run recorded in the journal, read back: its plan is the [`Plan`] itself (one model),
//! and the disks it copied.

use ferry_core::plan::Decision;
use ferry_core::Plan;
use ferry_journal::{Journal, JournalError, RunId};

/// Why a run's recorded plan cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the journal's plan of run #{run} cannot be read")]
    Unreadable {
        run: RunId,
        #[source]
        source: serde_json::Error,
    },
}

/// The plan `run` recorded, if it got that far.
pub fn plan(journal: &Journal, run: RunId) -> Result<Option<Plan>, RecordError> {
    match journal.plan_of(run)? {
        None => Ok(None),
        Some(json) => parse(run, &json).map(Some),
    }
}

/// A recorded plan's JSON, read as the plan.
pub fn parse(run: RunId, json: &str) -> Result<Plan, RecordError> {
    serde_json::from_str(json).map_err(|source| RecordError::Unreadable { run, source })
}

/// The disks a plan copied: (`<target dev>`, its path on the source).
pub fn copied(plan: &Plan) -> Vec<(String, String)> {
    plan.disks
        .iter()
        .filter(|d| d.decision == Decision::Copy)
        .filter_map(|d| match &d.source {
            Some(ferry_core::domain::DiskSource::Path { path }) => {
                Some((d.target.clone(), path.clone()))
            }
            _ => None,
        })
        .collect()
}
