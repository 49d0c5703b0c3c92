//! The journal's side of evacuations: which hosts are draining, which evacuations were cut
//! short, and their end.

use super::*;

/// The hosts a running evacuation is emptying (their name and URI): no Ferry command picks
/// them. An evacuation whose Ferry died on this machine (`alive` says no, as
/// [`crate::ferry_alive`]) no longer counts; one from another machine does.
pub fn draining(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<(String, String)>, JournalError> {
    let me = crate::this_machine();
    Ok(journal
        .open_evacuations()?
        .into_iter()
        .filter(|e| e.machine != me || alive(e.pid))
        .map(|e| (e.host, e.uri))
        .collect())
}

/// Evacuations cut short: not ended in the journal, and their Ferry (on this machine) is gone.
/// `ferry recover` recovers their runs one by one, then ends them with
/// [`end_interrupted`].
pub fn interrupted(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<ferry_journal::EvacuationRow>, JournalError> {
    let me = crate::this_machine();
    Ok(journal
        .open_evacuations()?
        .into_iter()
        .filter(|e| e.machine == me && !alive(e.pid))
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
            "its Ferry (pid {}) ended before the evacuation did; `ferry recover` finished its runs \
             one by one",
            e.pid
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
