//! `ferry abort`: ask the Ferry running a migration, from another process, to abort it; the
//! running Ferry rolls back as after Ctrl-C.

use std::time::Duration;

use ferry_journal::{Journal, JournalError, RunId, RunOutcome, RunRow};

/// Which run to abort: by its number, or by the guest it migrates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Run(RunId),
    Guest(String),
}

impl Which {
    /// A number is a run; anything else, a guest's name.
    pub fn parse(s: &str) -> Which {
        match s.parse::<i64>() {
            Ok(n) => Which::Run(RunId(n)),
            Err(_) => Which::Guest(s.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("there is no run #{0} in the journal (`ferry history` lists them)")]
    NoRun(RunId),
    #[error("no Ferry is migrating {0} (no run holds its lock)")]
    NotMigrating(String),
    #[error("run #{run} has already ended: {outcome}")]
    Ended { run: RunId, outcome: RunOutcome },
    #[error(
        "run #{run} of {guest} is unfinished, but no Ferry runs it any more; `ferry recover {run}` \
         finishes it"
    )]
    Orphaned { run: RunId, guest: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Record the request for the run `which` names, after checking that a live Ferry runs it.
pub fn request(journal: &Journal, which: &Which) -> Result<RunRow, AbortError> {
    let run = match which {
        Which::Run(r) => *r,
        Which::Guest(g) => {
            journal
                .holder(g)?
                .ok_or_else(|| AbortError::NotMigrating(g.clone()))?
                .run
        }
    };
    let row = journal.run_row(run)?.ok_or(AbortError::NoRun(run))?;
    if let Some(outcome) = row.outcome {
        return Err(AbortError::Ended {
            run: row.id,
            outcome,
        });
    }
    if !running(journal, &row)? {
        return Err(AbortError::Orphaned {
            run: row.id,
            guest: row.guest,
        });
    }
    journal.request_abort(run, std::process::id(), &crate::this_machine())?;
    Ok(row)
}

/// Whether a live Ferry holds the run's guest lock (its lease stands, on any machine).
fn running(journal: &Journal, row: &RunRow) -> Result<bool, JournalError> {
    crate::lease::drives(journal, row)
}

/// How a requested abort ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The run ended with this outcome and message.
    Outcome(RunOutcome, String),
    /// Its Ferry stopped without ending the run (it was only reading the hosts).
    Stopped,
    /// Still running after the wait.
    StillRunning,
}

/// Wait (bounded) for the run to end.
pub fn wait(journal: &Journal, run: RunId, wait: Duration) -> Result<Ended, JournalError> {
    let look = || -> Result<Option<Ended>, JournalError> {
        let Some(row) = journal.run_row(run)? else {
            return Ok(Some(Ended::Stopped));
        };
        if let Some(o) = row.outcome {
            return Ok(Some(Ended::Outcome(o, row.message.unwrap_or_default())));
        }
        Ok((!running(journal, &row)?).then_some(Ended::Stopped))
    };
    let ended = ferry_hypervisor::wait::poll_until(
        ferry_hypervisor::wait::deadline_in(wait),
        Duration::from_millis(200),
        || look().transpose(),
    );
    ended.unwrap_or(Ok(Ended::StillRunning))
}

/// `ferry abort` from another process reaches this one: a thread reads the journal at `path`
/// (on its own connection) and, once an abort of the run this process holds is requested,
/// calls `on_request` with who asked (pid, machine) and sets `cancel`, as Ctrl-C does. It ends
/// when `cancel` is set.
pub fn watch(
    path: std::path::PathBuf,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_request: impl FnOnce(u32, &str) + Send + 'static,
) {
    use std::sync::atomic::Ordering;
    let _ = std::thread::Builder::new()
        .name("abort-watch".into())
        .spawn(move || {
            let (pid, me) = (std::process::id(), crate::this_machine());
            let mut journal = None;
            let asked = ferry_hypervisor::wait::poll_until(
                ferry_hypervisor::wait::deadline_in(Duration::MAX),
                Duration::from_millis(250),
                || {
                    if cancel.load(Ordering::SeqCst) {
                        return Some(None);
                    }
                    if journal.is_none() {
                        journal = Journal::open_existing(&path).ok();
                    }
                    let j = journal.as_ref()?;
                    let run = j.run_held_by(pid, &me).ok()??;
                    j.abort_requested(run).ok()?.map(Some)
                },
            );
            if let Some(Some((by, host))) = asked {
                on_request(by, &host);
                cancel.store(true, Ordering::SeqCst);
            }
        });
}
