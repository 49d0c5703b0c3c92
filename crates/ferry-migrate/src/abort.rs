//! `ferry abort`: ask the Ferry running a migration, from another process, to abort it; the
//! running Ferry rolls back as after Ctrl-C.

use std::time::{Duration, Instant};

use ferry_journal::{Journal, JournalError, RunId, RunRow};

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
    NoRun(i64),
    #[error("no Ferry is migrating {0} (no run holds its lock)")]
    NotMigrating(String),
    #[error("run #{run} has already ended: {outcome}")]
    Ended { run: i64, outcome: String },
    #[error(
        "run #{run} of {guest} is unfinished, but no Ferry runs it any more; `ferry recover {run}` \
         finishes it"
    )]
    Orphaned { run: i64, guest: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Record the request for the run `which` names, after checking that a live Ferry runs it.
pub fn request(journal: &Journal, which: &Which) -> Result<RunRow, AbortError> {
    let run = match which {
        Which::Run(r) => *r,
        Which::Guest(g) => RunId(
            journal
                .holder(g)?
                .ok_or_else(|| AbortError::NotMigrating(g.clone()))?
                .run,
        ),
    };
    let row = journal.run_row(run)?.ok_or(AbortError::NoRun(run.0))?;
    if let Some(outcome) = &row.outcome {
        return Err(AbortError::Ended {
            run: row.id,
            outcome: outcome.clone(),
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

/// Whether a live Ferry holds the run's guest lock (one on another machine counts as live).
fn running(journal: &Journal, row: &RunRow) -> Result<bool, JournalError> {
    Ok(journal.holder(&row.guest)?.is_some_and(|h| {
        h.run == row.id && (h.host != crate::this_machine() || crate::ferry_alive(h.pid))
    }))
}

/// How a requested abort ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The run ended with this outcome and message.
    Outcome(String, String),
    /// Its Ferry stopped without ending the run (it was only reading the hosts).
    Stopped,
    /// Still running after the wait.
    StillRunning,
}

/// Wait (bounded) for the run to end.
pub fn wait(journal: &Journal, run: RunId, wait: Duration) -> Result<Ended, JournalError> {
    let t = Instant::now();
    loop {
        let Some(row) = journal.run_row(run)? else {
            return Ok(Ended::Stopped);
        };
        if let Some(o) = row.outcome {
            return Ok(Ended::Outcome(o, row.message.unwrap_or_default()));
        }
        if !running(journal, &row)? {
            return Ok(Ended::Stopped);
        }
        if t.elapsed() > wait {
            return Ok(Ended::StillRunning);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
