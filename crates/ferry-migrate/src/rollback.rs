//! Rollback: after a failure, find out where the guest really runs; if it is on the source,
//! delete what Ferry created on the target (and nothing else), and say so.

use ferry_hypervisor::{DomainState, Hypervisor};
use ferry_journal::RunOutcome;
use serde::Serialize;

use crate::flow::Ctx;
use crate::inventory::GuestOnHosts;
use crate::prepare::CreatedVolume;
use crate::{Cause, MigrateError, Step};

/// Where the guest is, as the hosts say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestLocation {
    Source,
    /// A cold move that did not happen: the guest is defined and shut off on the source, as
    /// before.
    SourceShutOff,
    Target,
    /// Active on both (one paused): libvirt has not finished deciding.
    Both,
    /// Active on neither.
    Neither,
    /// A host did not answer.
    Unknown,
    /// A post-copy migration failed after the switch: the guest runs on the target, and the
    /// pages it has not pulled yet are on the source (paused there).
    PostcopySplit,
}

impl std::fmt::Display for GuestLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Source => "keeps running on the source",
            Self::SourceShutOff => "stays on the source, defined and shut off as before",
            Self::Target => "runs on the target",
            Self::Both => "is active on both hosts (one side paused): inspect both before acting",
            Self::Neither => "runs on neither host: start it where its disks are current (the source, if the copy did not finish)",
            Self::Unknown => "is in an unknown place: a host did not answer; check both with virsh domstate",
            Self::PostcopySplit => "is split by a failed post-copy: it runs on the target, and the memory it has not pulled yet is on the source, paused there; destroy neither (each alone is incomplete), nothing was deleted; `ferry recover` resumes the post-copy once both hosts and the link between them answer",
        })
    }
}

impl GuestLocation {
    /// Where it was before the migration: nothing of it moved.
    pub fn on_source(self) -> bool {
        matches!(self, Self::Source | Self::SourceShutOff)
    }
}

/// Ask both hosts where the guest runs.
pub fn locate(hv: &dyn Hypervisor, inv: &GuestOnHosts) -> GuestLocation {
    let (src, dst) = (
        hv.domain_state(inv.src, &inv.guest),
        hv.domain_state(inv.dst, &inv.guest),
    );
    let split =
        |s: &Result<Option<DomainState>, _>| matches!(s, Ok(Some(DomainState::PostcopyFailed)));
    if split(&src) || split(&dst) {
        return GuestLocation::PostcopySplit;
    }
    let on = |s: Result<Option<DomainState>, _>| s.map(|s| s.is_some_and(DomainState::is_active));
    match (on(src), on(dst)) {
        (Ok(true), Ok(false)) => GuestLocation::Source,
        (Ok(false), Ok(true)) => GuestLocation::Target,
        (Ok(true), Ok(true)) => GuestLocation::Both,
        (Ok(false), Ok(false)) => GuestLocation::Neither,
        // The source answers and has it running; the target is unreachable: the guest is on the
        // source, but Ferry cannot clean up the target.
        (Ok(true), Err(_)) => GuestLocation::Source,
        _ => GuestLocation::Unknown,
    }
}

/// Why a volume Ferry created was left in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftBecause {
    /// libvirt's job had not ended: the guest may still be moving onto it.
    JobRunning,
    /// The guest is not safely on the source: the volume may be its disk.
    GuestNotOnSource,
}

/// One thing a rollback did, or left, for the operator (and JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cleanup", rename_all = "snake_case")]
pub enum Cleanup {
    /// Ferry had created nothing on the target.
    NothingCreated { host: String },
    /// Deleted, through whoever had made it, and journaled.
    Deleted { host: String, path: String },
    /// The deletion failed: the volume is journaled, for `ferry recover`.
    NotDeleted {
        host: String,
        path: String,
        error: String,
    },
    /// Kept, and why.
    Left {
        host: String,
        path: String,
        because: LeftBecause,
    },
    /// libvirt's job had not ended when Ferry stopped waiting: watch it.
    JobNotEnded { host: String, guest: String },
    /// The guest was defined on the target and its place could not be confirmed: nothing was
    /// deleted.
    DefinitionLeft { host: String, guest: String },
    /// The run stays open: `ferry recover` resumes the failed post-copy.
    RunOpen { run: ferry_journal::RunId },
    /// A pre-seeded disk's overlay committed back into the disk on the source, and deleted.
    Thawed {
        host: String,
        disk: String,
        overlay: String,
    },
    /// The commit back failed: the guest still runs on the overlay.
    NotThawed {
        host: String,
        disk: String,
        overlay: String,
        error: String,
    },
    /// The guest is not on the source: its overlay there is left as it is.
    OverlayLeft {
        host: String,
        disk: String,
        overlay: String,
    },
    /// After the commit back, the guest's own persistent definition could not be restored.
    NotRedefined {
        host: String,
        guest: String,
        error: String,
    },
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Thawed {
                host,
                disk,
                overlay,
            } => write!(
                f,
                "committed {overlay} back into disk {disk} on {host} and deleted it: the guest \
                 runs on its own disk again"
            ),
            Self::NotThawed {
                host,
                disk,
                overlay,
                error,
            } => write!(
                f,
                "could NOT commit {overlay} back into disk {disk} on {host}: {error}; the guest \
                 still writes to the overlay: `virsh blockcommit GUEST {disk} --active --pivot` \
                 there, then delete {overlay}"
            ),
            Self::OverlayLeft {
                host,
                disk,
                overlay,
            } => write!(
                f,
                "left the overlay {overlay} of disk {disk} on {host}: the guest is not known to \
                 run there; `ferry recover` decides once it is"
            ),
            Self::NotRedefined { host, guest, error } => write!(
                f,
                "could NOT restore the persistent definition of {guest} on {host}: {error}"
            ),
            Self::NothingCreated { host } => write!(f, "Ferry had created nothing on {host}"),
            Self::Deleted { host, path } => {
                write!(f, "deleted {path} on {host} (Ferry had created it)")
            }
            Self::NotDeleted { host, path, error } => write!(
                f,
                "could NOT delete {path} on {host}: {error}; remove it by hand, or run `ferry \
                 recover` later"
            ),
            Self::Left {
                host,
                path,
                because: LeftBecause::JobRunning,
            } => write!(
                f,
                "left {path} on {host} in place; once the job has ended and the guest runs on \
                 the source, `ferry recover` deletes it"
            ),
            Self::Left {
                host,
                path,
                because: LeftBecause::GuestNotOnSource,
            } => write!(
                f,
                "left {path} on {host} in place: the guest is not safely on the source"
            ),
            Self::JobNotEnded { host, guest } => write!(
                f,
                "libvirt's job has not ended: watch it with virsh -c {host} domjobinfo {guest}"
            ),
            Self::DefinitionLeft { host, guest } => write!(
                f,
                "left {guest}'s definition on {host} and the copies in place: inspect both hosts"
            ),
            Self::RunOpen { run } => write!(
                f,
                "the run stays open in the journal: `ferry recover {run}` resumes the post-copy"
            ),
        }
    }
}

/// Delete what Ferry created on the target, each through whoever made it (libvirt or a hook),
/// journaling each deletion.
pub(crate) fn delete_created(ctx: &Ctx, created: &[CreatedVolume]) -> Vec<Cleanup> {
    let inv = ctx.inv;
    created
        .iter()
        .map(|v| {
            let (host, path) = (inv.dst_uri.clone(), v.path.clone());
            match crate::provision::give_back(ctx.hv.as_ref(), inv.dst, &v.path, &v.provider) {
                Ok(()) => {
                    let _ = ctx.journal.record_deleted(ctx.run, &inv.dst_uri, &v.path);
                    Cleanup::Deleted { host, path }
                }
                Err(e) => Cleanup::NotDeleted {
                    host,
                    path,
                    error: crate::error_chain(&e),
                },
            }
        })
        .collect()
}

/// What was kept, and why, for each volume.
pub(crate) fn left(
    inv: &GuestOnHosts,
    created: &[CreatedVolume],
    because: LeftBecause,
) -> Vec<Cleanup> {
    created
        .iter()
        .map(|v| Cleanup::Left {
            host: inv.dst_uri.clone(),
            path: v.path.clone(),
            because,
        })
        .collect()
}

/// Handle a failure after preflight: locate the guest, clean up if (and only if) it is safe.
/// `keep` gives a reason to delete nothing whatever the guest's place (a job still running).
pub(crate) fn after_failure(
    ctx: &mut Ctx,
    created: &[CreatedVolume],
    cause: Cause,
    keep_job: bool,
) -> MigrateError {
    // Fencing: another Ferry took the guest over; what to undo is its decision now.
    if let Some(e) = ctx.fenced() {
        return e;
    }
    let text = crate::error_chain(&cause);
    ctx.enter(Step::Rollback, text.clone());
    let (inv, run, journal) = (ctx.inv, ctx.run, ctx.journal);
    let location = match locate(ctx.hv.as_ref(), inv) {
        GuestLocation::Source if keep_job => GuestLocation::Unknown,
        l => l,
    };
    let mut cleanup = Vec::new();
    if keep_job {
        cleanup.push(Cleanup::JobNotEnded {
            host: inv.src_uri.clone(),
            guest: inv.guest.clone(),
        });
        cleanup.extend(left(inv, created, LeftBecause::JobRunning));
    } else if location == GuestLocation::Source {
        if created.is_empty() {
            cleanup.push(Cleanup::NothingCreated {
                host: inv.dst_uri.clone(),
            });
        }
        cleanup.extend(delete_created(ctx, created));
    } else {
        cleanup.extend(left(inv, created, LeftBecause::GuestNotOnSource));
    }
    if location == GuestLocation::PostcopySplit {
        // Not an end: `ferry recover` resumes it.
        let _ = journal.set_phase(run, ferry_journal::RunPhase::PostcopyFailed);
        cleanup.push(Cleanup::RunOpen { run });
    } else {
        let _ = journal.finish(
            run,
            if location == GuestLocation::Source {
                RunOutcome::RolledBack
            } else {
                RunOutcome::Failed
            },
            &format!("{text}; the guest {location}"),
        );
    }
    MigrateError::Failed {
        guest: inv.guest.clone(),
        cause: Box::new(cause),
        location,
        cleanup,
    }
}
