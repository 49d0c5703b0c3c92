//! The migration flow: **inventory → plan → preflight → prepare → migrate → verify/rollback**.
//!
//! Each phase is a module; [`run`] chains them. Everything that touches a host goes through the
//! [`Hypervisor`] trait, so the flow's decisions are unit-tested against a recording fake, and
//! proven end to end in the lab against real libvirt.

pub mod abort;
pub mod cold;
pub mod evacuate;
pub(crate) mod flow;
pub mod inventory;
pub mod lease;
pub mod migrate;
pub mod preflight;
pub mod prepare;
pub mod preseed;
pub mod provision;
pub mod record;
pub mod recover;
pub mod release;
pub mod report;
pub mod rollback;
mod step;
pub mod target;
pub mod usage;
pub mod verify;

use ferry_core::convergence::Progress;
use ferry_core::{Plan, PlanError};
use ferry_hypervisor::HvError;
use ferry_journal::{Journal, JournalError, RunId, RunOutcome};
use serde::Serialize;

// A front end asks with an `Ask` and `migrate`; `Request` and `run` are the flow's own, once
// the target is chosen.
pub(crate) use flow::Request;
pub use flow::{migrate, Ask, StopReason, ABORT_GRACE};
pub use preflight::Problem;
pub use rollback::GuestLocation;
pub use step::Step;

/// An error and every cause under it, one line: how Ferry shows an error chain, everywhere.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A wrapper that repeats its cause's text adds nothing.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// What the flow tells the operator while it works.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The journal's run for this migration, once the guest's lock is taken: the first event
    /// of a migration that is not a dry run.
    Run { run: RunId },
    /// A phase of the flow starts.
    Step { step: Step, detail: String },
    /// A live figure of the running migration job.
    Job(Progress),
    /// Something done or found worth a line of its own.
    Note { message: String },
    /// A pre-seeded disk's copy, as it goes.
    Seed(preseed::SeedProgress),
    /// The target chosen, and every host's verdict.
    Target(ferry_core::placement::Ranking),
}

/// Where the flow's events go (a terminal bar, JSON lines, a test's Vec).
pub trait Reporter {
    fn report(&mut self, event: Event);
}

impl Reporter for Vec<Event> {
    fn report(&mut self, event: Event) {
        self.push(event);
    }
}

/// A finished migration's figures.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The journal's run.
    pub run: Option<RunId>,
    pub guest: String,
    pub from: String,
    pub to: String,
    /// Ferry's whole run, from the first connection to the verified guest.
    pub total_ms: u64,
    /// libvirt's migration job.
    pub job_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Everything libvirt sent (disk + memory + device state).
    pub data_bytes: Option<u64>,
    pub copied_disks: Vec<String>,
    pub created: Vec<String>,
    pub verified: Vec<String>,
    pub warnings: Vec<String>,
    /// Each pre-seeded disk's copy (`--preseed`): data and holes sent, chunks read back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeded: Vec<preseed::SeedProgress>,
}

/// The result of [`run`].
#[derive(Debug)]
pub enum Outcome {
    Migrated(Box<Summary>),
    /// `--dry-run`: the plan, and the checks it passed.
    DryRun {
        plan: Box<Plan>,
        checks: Vec<String>,
    },
}

/// Why a step that acts on the hosts failed: the error, its chain kept.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Host(#[from] HvError),
    #[error(transparent)]
    Hook(#[from] provision::HookError),
    /// Ferry aborted the migration job (the operator, `--timeout`, the convergence policy);
    /// libvirt's call then ended with `source`.
    #[error("{why}")]
    Aborted {
        why: migrate::AbortReason,
        #[source]
        source: Option<Box<HvError>>,
    },
    /// libvirt's migration call had not returned this long after Ferry aborted the job.
    #[error(
        "{why}; libvirt's migration call has not returned {grace_s} s after the abort (a cut \
         link holds it until TCP gives up)"
    )]
    Unreturned {
        why: migrate::AbortReason,
        grace_s: u64,
    },
    /// libvirt's resume of a failed post-copy had not returned after this long.
    #[error(
        "libvirt's resume call has not returned in {wait_s} s (it may still be resuming: virsh \
         domjobinfo on the source)"
    )]
    ResumeUnreturned { wait_s: u64 },
    /// The thread carrying libvirt's call could not be started, or ended without an answer.
    #[error("the thread carrying libvirt's {what} call failed: {why}")]
    Thread { what: &'static str, why: String },
    /// Pre-seeding failed (a stream, a read-back, a stop).
    #[error(transparent)]
    Seed(#[from] preseed::SeedError),
    /// A copied disk's plan has no path on one of the hosts.
    #[error("disk {disk} has no path to copy")]
    NoPath { disk: String },
    /// After a cold move defined the guest on the target, the target said otherwise.
    #[error("after defining it, {host} says {state}")]
    NotDefined { host: String, state: String },
}

/// Why a migration did not happen (or did, but not cleanly). Every variant says where the
/// guest is.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no plan can be made for {guest}: nothing was changed")]
    Plan {
        guest: String,
        #[source]
        source: Box<PlanError>,
    },
    #[error(transparent)]
    Host(#[from] HvError),
    #[error("the journal failed")]
    Journal(#[from] JournalError),
    #[error("refused before anything was created or moved: {0}")]
    Busy(JournalError),
    #[error("refused before anything was created or moved: {}", preflight::render(.problems))]
    Refused { problems: Vec<Problem> },
    #[error("{}", failure_text(.guest, .location, .cleanup))]
    Failed {
        guest: String,
        #[source]
        cause: Box<Cause>,
        location: GuestLocation,
        cleanup: Vec<rollback::Cleanup>,
    },
    /// A step that only reads the hosts was stopped: nothing was created or moved.
    #[error(
        "{reason} in step {step}{}; nothing was created or moved",
        waiting_text(.waiting_on)
    )]
    Stopped {
        step: Step,
        reason: StopReason,
        /// The hosts whose connection had not opened.
        waiting_on: Vec<String>,
    },
    /// The thread carrying a step's reads failed.
    #[error("the {step} step's thread failed ({why}); nothing was created or moved")]
    StepThread { step: Step, why: String },
    #[error("{}", no_target_text(.guest, .ranking))]
    NoTarget {
        guest: String,
        ranking: ferry_core::placement::Ranking,
    },
    #[error("the guest runs on the target, but verification found: {}", problems_text(.problems))]
    VerifyFailed {
        problems: Vec<verify::VerifyProblem>,
        summary: Box<Summary>,
    },
    /// Another Ferry took the guest's lock over (this one had not renewed its lease in time):
    /// this one left the guest and the journal as they were.
    #[error(
        "run #{run} of {guest} is no longer this Ferry's: {lost} took the guest's lock over \
         after this Ferry's lease expired; this Ferry touched nothing more (the run's end is \
         the other's: `ferry history`)"
    )]
    LeaseLost {
        run: RunId,
        guest: String,
        lost: Box<lease::Lost>,
    },
}

fn no_target_text(guest: &str, r: &ferry_core::placement::Ranking) -> String {
    let mut s = if r.hosts.len() == 1 {
        format!(
            "refused before anything was created or moved: {} cannot take {guest}:",
            r.hosts[0].name
        )
    } else {
        format!("no host can take {guest}:")
    };
    for v in &r.hosts {
        for why in &v.reasons {
            s.push_str(&format!(
                "\n  - {} [{}]: {}",
                v.name,
                why.code.as_str(),
                why.message
            ));
        }
    }
    s
}

fn failure_text(guest: &str, loc: &GuestLocation, cleanup: &[rollback::Cleanup]) -> String {
    let mut s = format!("migration of {guest} failed; the guest {loc}");
    for c in cleanup {
        s.push_str(&format!("\n  {c}"));
    }
    s
}

/// Verification's problems, on one line.
pub fn problems_text(problems: &[verify::VerifyProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn waiting_text(waiting: &[String]) -> String {
    if waiting.is_empty() {
        String::new()
    } else {
        format!(": no answer from {}", waiting.join(", "))
    }
}

impl MigrateError {
    /// Nothing was created or moved: the error came before the flow acted on a host.
    pub fn before_acting(&self) -> bool {
        !matches!(
            self,
            Self::Failed { .. }
                | Self::VerifyFailed { .. }
                | Self::Journal(_)
                | Self::LeaseLost { .. }
        )
    }
}

/// A guest's lock in the journal, for one run, held by this process's lease: given back when
/// dropped (unless another Ferry took it over meanwhile).
#[derive(Debug)]
pub struct GuestLock<'j> {
    journal: &'j Journal,
    guest: String,
    pub run: RunId,
    token: i64,
}

impl Drop for GuestLock<'_> {
    fn drop(&mut self) {
        lease::forget(self.token);
        let _ = self.journal.unlock_guest(&self.guest, self.token);
    }
}

/// This machine's name, for the lock's holder.
pub fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether process `pid` on this machine is a running Ferry.
pub fn ferry_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) holds nothing any more.
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    });
    running
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ferry")
}

/// One guest, one migration: begin the run in the journal and take the guest's lock across
/// every Ferry sharing the journal, by this instance's lease (renewed by the keeper, which
/// this starts). A live holder refuses ([`MigrateError::Busy`], with its run, instance, pid
/// and machine); a dead one on this machine, or one whose lease expired, is taken over, and
/// said.
pub fn lock<'j>(
    journal: &'j Journal,
    guest: &str,
    from: &str,
    to: &str,
    reporter: &mut dyn Reporter,
) -> Result<GuestLock<'j>, MigrateError> {
    let run = journal.begin_run(guest, from, to, "{}")?;
    match journal.lock_guest(guest, run, &lease::me(), ferry_alive) {
        Ok(taken) => {
            if let Some((h, why)) = taken.took_over {
                reporter.report(Event::Note {
                    message: format!("took over {}", lock_of(&h, why)),
                });
            }
            lease::watch(journal, run, guest, taken.token);
            lease::keep(journal);
            Ok(GuestLock {
                journal,
                guest: guest.to_string(),
                run,
                token: taken.token,
            })
        }
        Err(e @ JournalError::Locked { .. }) => {
            let _ = journal.finish(run, RunOutcome::Refused, &e.to_string());
            Err(MigrateError::Busy(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// The lock taken over from `h`, and why, for a person: `the lock of run #7 (ferry pid 42 is
/// gone)`, or `the lock of run #7 from instance A, ferry pid 42 on m1: its lease expired`.
pub fn lock_of(h: &ferry_journal::Holder, why: ferry_journal::Standing) -> String {
    match why {
        ferry_journal::Standing::Expired => format!(
            "the lock of run #{} from {}: its lease expired",
            h.run,
            h.who()
        ),
        _ => format!("the lock of run #{} (ferry pid {} is gone)", h.run, h.pid),
    }
}

#[cfg(test)]
mod tests;
