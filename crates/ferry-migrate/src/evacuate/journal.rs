//! The journal's side of evacuations: which hosts are draining, which evacuations were cut
//! short, and their end.

use super::*;
use ferry_journal::Standing;

/// The hosts a running evacuation is emptying (their name and URI): no Ferry command picks
/// them. An evacuation holds its host by its Ferry's lease: one whose Ferry died on this
/// machine (`alive` says no, as [`crate::ferry_alive`]), or whose lease expired, no longer
/// counts; any other does, on whichever machine it runs.
pub fn draining(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<(String, String)>, JournalError> {
    Ok(open(journal, &alive, |s| s == Standing::Live)?
        .into_iter()
        .map(|e| (e.host, e.uri))
        .collect())
}

/// Evacuations cut short: not ended in the journal, and their Ferry is gone (on this machine)
/// or its lease expired. `ferry recover` recovers their runs one by one, then ends them with
/// [`end_interrupted`].
pub fn interrupted(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<ferry_journal::EvacuationRow>, JournalError> {
    open(journal, &alive, |s| s != Standing::Live)
}

/// The evacuations not ended whose lease's standing `wanted` accepts.
fn open(
    journal: &Journal,
    alive: &impl Fn(u32) -> bool,
    wanted: impl Fn(Standing) -> bool,
) -> Result<Vec<ferry_journal::EvacuationRow>, JournalError> {
    let (now, me) = (journal.now_ms()?, crate::this_machine());
    Ok(journal
        .open_evacuations()?
        .into_iter()
        .filter(|e| {
            wanted(ferry_journal::standing(
                &e.machine,
                e.pid,
                e.expires_ms,
                now,
                &me,
                alive,
            ))
        })
        .collect())
}

/// End an evacuation cut short, saying why.
pub fn end_interrupted(
    journal: &Journal,
    e: &ferry_journal::EvacuationRow,
) -> Result<(), JournalError> {
    journal.finish_evacuation(
        e.id,
        ferry_journal::EvacuationOutcome::Interrupted,
        &format!(
            "its Ferry (pid {} on {}) ended or stopped renewing its lease before the evacuation \
             did; `ferry recover` finished its runs one by one",
            e.pid, e.machine
        ),
    )
}

/// Mark the hosts of running evacuations as draining.
pub fn mark_draining(specs: &mut [HostSpec], draining: &[(String, String)]) {
    for s in specs {
        if draining.iter().any(|(n, u)| *n == s.name || *u == s.uri) {
            s.state = HostState::Draining;
        }
    }
}
