//! Recover: finish every run the journal says is unfinished (Ferry killed, a host lost during
//! the rollback, a peer-to-peer migration that went on without Ferry), and delete what such runs
//! left behind — from the truth the hosts tell now.
//!
//! Facts first, decide once: [`gather`] asks both hosts of a run where the guest is, whether a
//! job still runs, and which paths their domains use; [`decide`] (pure) turns that into steps;
//! [`run`] carries them out, or with `dry_run` only says them — the same steps either way.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::domain::{self, DiskSource};
use ferry_core::Plan;
use ferry_hypervisor::wait;
use ferry_hypervisor::{DomainState, HostId, HvError, Hypervisor, MigrateRequest};
use ferry_journal::{Created, Holder, Journal, JournalError, RunId, RunOutcome, RunRow, Standing};
use serde::Serialize;

use crate::provision::Provider;
use crate::GuestLocation;

/// What one host says, for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostView {
    /// The host did not answer.
    Unreachable(String),
    Seen {
        /// The guest's state there (`None`: no such domain).
        state: Option<DomainState>,
        /// A migration job runs for the guest there (asked of the source only).
        job: bool,
        /// Every path a domain there uses, with the domain's name.
        in_use: Vec<(String, String)>,
        /// The guest's live definition there, when it is active.
        live_xml: Option<String>,
    },
}

impl HostView {
    fn active(&self) -> Option<bool> {
        match self {
            Self::Unreachable(_) => None,
            Self::Seen { state, .. } => Some(state.is_some_and(DomainState::is_active)),
        }
    }
}

/// Everything [`decide`] needs about one run.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub run: RunRow,
    /// The volumes it created and did not delete.
    pub created: Vec<Created>,
    /// Another Ferry still holds the guest's lock for this run (alive, or on another machine).
    pub held_by: Option<Holder>,
    pub source: HostView,
    /// `None`: the run ended before a target was chosen.
    pub target: Option<HostView>,
    /// Each disk's planned source on the target (`<target dev>`, its source there), from the
    /// plan the run recorded, to check a guest found on the target.
    pub planned: Option<Vec<(String, Option<DiskSource>)>>,
}

/// One thing recover does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Action {
    /// Abort the guest's migration job on the source (its Ferry is gone), then look again.
    AbortJob { host: String },
    /// Resume the run's failed post-copy (`POSTCOPY_RESUME`, with the run's own flags), then
    /// look again.
    ResumePostcopy { from: String, to: String },
    /// Undefine the guest's leftover (inactive) definition on the source.
    UndefineSource { host: String },
    /// Commit a pre-seeded disk's overlay into the disk where the guest runs (it pivots onto
    /// the disk alone); the overlay is deleted by a later step.
    Commit {
        host: String,
        disk: String,
        overlay: String,
    },
    /// Delete a volume the run created, through whoever made it.
    Delete {
        host: String,
        path: String,
        by: Provider,
    },
    /// Keep a volume the run created, and why.
    Keep {
        host: String,
        path: String,
        why: String,
    },
    /// End the run in the journal.
    Finish {
        outcome: RunOutcome,
        message: String,
    },
    /// Nothing is done for this run now, and why.
    Leave { why: String },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AbortJob { host } => write!(
                f,
                "abort the migration job on {host} (its Ferry is gone), then look again"
            ),
            Self::UndefineSource { host } => {
                write!(f, "undefine the guest's leftover definition on {host}")
            }
            Self::Commit {
                host,
                disk,
                overlay,
            } => write!(
                f,
                "commit {overlay} into disk {disk} on {host} (the guest runs on it there)"
            ),
            Self::ResumePostcopy { from, to } => write!(
                f,
                "resume the failed post-copy from {from} to {to}, then look again"
            ),
            Self::Delete {
                host,
                path,
                by: Provider::Libvirt,
            } => write!(f, "delete {path} on {host}"),
            Self::Delete {
                host,
                path,
                by: Provider::Hook { hook, .. },
            } => write!(f, "give {path} on {host} back through hook {}", hook.name),
            Self::Keep { host, path, why } => write!(f, "keep {path} on {host}: {why}"),
            Self::Finish { outcome, message } => write!(f, "journal: {outcome} ({message})"),
            Self::Leave { why } => write!(f, "leave it: {why}"),
        }
    }
}

/// What recover decided for one run.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub run: RunId,
    pub guest: String,
    pub location: GuestLocation,
    pub steps: Vec<Action>,
}

/// Decide what to do with one run. Pure: the same facts give the same steps, in a dry run and
/// a real one.
pub fn decide(f: &RunFacts) -> Recovery {
    let r = &f.run;
    let mut d = Recovery {
        run: r.id,
        guest: r.guest.clone(),
        location: GuestLocation::Unknown,
        steps: vec![],
    };
    let unfinished = r.outcome.is_none();
    if let Some(h) = &f.held_by {
        d.steps.push(Action::Leave {
            why: format!(
                "run #{} still holds {}'s lock ({}); `ferry abort {}` stops it",
                h.run,
                r.guest,
                h.who(),
                h.run
            ),
        });
        return d;
    }
    let Some(target) = &f.target else {
        // Nothing is ever created before a target is chosen.
        if unfinished {
            d.location = match f.source.active() {
                Some(true) => GuestLocation::Source,
                _ => GuestLocation::Unknown,
            };
            d.steps.push(Action::Finish {
                outcome: RunOutcome::Failed,
                message: "recovered: interrupted before a target was chosen; nothing was \
                          created or moved"
                    .into(),
            });
        }
        return d;
    };
    let (src_active, dst_active) = match (f.source.active(), target.active()) {
        (Some(s), Some(t)) => (s, t),
        _ => {
            let (which, why) = match (&f.source, target) {
                (HostView::Unreachable(e), _) => (&r.source, e),
                (_, HostView::Unreachable(e)) => (&r.target, e),
                _ => (&r.source, &String::new()),
            };
            d.steps.push(Action::Leave {
                why: format!("{which} did not answer ({why}); nothing is done without both hosts"),
            });
            return d;
        }
    };
    d.location = match (src_active, dst_active) {
        (true, false) => GuestLocation::Source,
        (false, true) => GuestLocation::Target,
        (true, true) => GuestLocation::Both,
        (false, false) => GuestLocation::Neither,
    };
    // A failed post-copy: each side holds part of the guest; only finishing it is safe.
    let split = |v: &HostView| {
        matches!(
            v,
            HostView::Seen {
                state: Some(DomainState::PostcopyFailed),
                ..
            }
        )
    };
    if split(&f.source) || split(target) {
        d.location = GuestLocation::PostcopySplit;
        d.steps.push(Action::ResumePostcopy {
            from: r.source.clone(),
            to: r.target.clone(),
        });
        return d;
    }
    let job_on_source = matches!(f.source, HostView::Seen { job: true, .. });
    let target_running = matches!(
        target,
        HostView::Seen {
            state: Some(DomainState::Running),
            ..
        }
    );
    if job_on_source {
        if target_running {
            d.steps.push(Action::Leave {
                why: "the job is completing (post-copy: the guest already runs on the target); \
                      run `ferry recover` again when it has ended"
                    .into(),
            });
        } else {
            d.steps.push(Action::AbortJob {
                host: r.source.clone(),
            });
        }
        return d;
    }
    // A pre-seed the run left: the guest runs on its overlay where it is. The overlay is
    // committed first; then it is a leftover like any other.
    let live_of = |v: &HostView| match v {
        HostView::Seen { live_xml, .. } => live_xml.clone(),
        HostView::Unreachable(_) => None,
    };
    let (host_of_guest, view_of_guest) = match d.location {
        GuestLocation::Target => (&r.target, target),
        _ => (&r.source, &f.source),
    };
    let frozen: Vec<ferry_core::preseed::FoundFrozen> = live_of(view_of_guest)
        .map(|x| ferry_core::preseed::frozen(&x, &r.guest))
        .unwrap_or_default()
        .into_iter()
        .filter(|z| {
            f.created
                .iter()
                .any(|c| &c.host == host_of_guest && c.path == z.overlay)
        })
        .collect();
    let committed = |path: &str| frozen.iter().any(|z| z.overlay == path);
    let in_use_on_target = |path: &str| match target {
        HostView::Seen { in_use, .. } => in_use
            .iter()
            .find(|(p, _)| p == path && !committed(p))
            .map(|(_, dom)| dom.clone()),
        HostView::Unreachable(_) => None,
    };
    let in_use_on_source = |path: &str| match &f.source {
        HostView::Seen { in_use, .. } => in_use
            .iter()
            .find(|(p, _)| p == path && !committed(p))
            .map(|(_, dom)| dom.clone()),
        HostView::Unreachable(_) => None,
    };
    let commits: Vec<Action> = frozen
        .iter()
        .map(|z| Action::Commit {
            host: host_of_guest.clone(),
            disk: z.disk.clone(),
            overlay: z.overlay.clone(),
        })
        .collect();
    let is_overlay = |c: &Created| ferry_core::preseed::is_overlay(&c.path, &r.guest);
    // A volume the run created, as a leftover: deleted unless a domain uses it.
    let leftover = |c: &Created| {
        let used = if c.host == r.source {
            in_use_on_source(&c.path)
        } else {
            in_use_on_target(&c.path)
        };
        match used {
            Some(dom) => Action::Keep {
                host: c.host.clone(),
                path: c.path.clone(),
                why: format!("domain {dom} uses it"),
            },
            None => match provider(c) {
                Err(()) => Action::Keep {
                    host: c.host.clone(),
                    path: c.path.clone(),
                    why: format!(
                        "the journal's record of who made it cannot be read ({}); delete it by \
                         hand",
                        c.provider.as_deref().unwrap_or("")
                    ),
                },
                Ok(by) => Action::Delete {
                    host: c.host.clone(),
                    path: c.path.clone(),
                    by,
                },
            },
        }
    };
    let keep_all = |d: &mut Recovery, why: &str| {
        for c in &f.created {
            d.steps.push(Action::Keep {
                host: c.host.clone(),
                path: c.path.clone(),
                why: why.to_string(),
            });
        }
    };
    match d.location {
        GuestLocation::Target => {
            if matches!(
                f.source,
                HostView::Seen {
                    state: Some(s),
                    ..
                } if !s.is_active()
            ) {
                d.steps.push(Action::UndefineSource {
                    host: r.source.clone(),
                });
            }
            d.steps.extend(commits);
            for c in &f.created {
                d.steps.push(if is_overlay(c) {
                    leftover(c)
                } else {
                    Action::Keep {
                        host: c.host.clone(),
                        path: c.path.clone(),
                        why: "the migrated guest's disk".into(),
                    }
                });
            }
            if unfinished {
                // As it runs once its overlays are committed.
                let live = live_of(target).map(|mut x| {
                    for z in &frozen {
                        if let Ok(t) = ferry_core::preseed::thawed(&x, &z.disk) {
                            x = t;
                        }
                    }
                    x
                });
                let live = live.as_deref();
                // Found on the target with its disks as planned: migrated. Otherwise the guest
                // runs there unverified, and nothing of the source may be released.
                let (outcome, message) = match check_sources(f.planned.as_deref(), live) {
                    Ok(n) => (
                        RunOutcome::Migrated,
                        format!(
                            "recovered: {} runs on {}, its {n} disk source(s) as planned",
                            r.guest, r.target
                        ),
                    ),
                    Err(why) => (
                        RunOutcome::MigratedUnverified,
                        format!(
                            "recovered: {} runs on {}, but verify: {why}",
                            r.guest, r.target
                        ),
                    ),
                };
                d.steps.push(Action::Finish { outcome, message });
            }
        }
        GuestLocation::Source | GuestLocation::SourceShutOff => {
            d.steps.extend(commits);
            for c in &f.created {
                d.steps.push(leftover(c));
            }
            if unfinished {
                d.steps.push(Action::Finish {
                    outcome: RunOutcome::RolledBack,
                    message: format!("recovered: {} runs on {}", r.guest, r.source),
                });
            }
        }
        GuestLocation::Both
        | GuestLocation::Neither
        | GuestLocation::Unknown
        | GuestLocation::PostcopySplit => {
            keep_all(&mut d, "the guest is not safely on one host");
            d.steps.push(Action::Leave {
                why: format!("the guest {}", d.location),
            });
        }
    }
    d
}

/// Who made a volume: no record means libvirt's storage API; a record Ferry cannot read (another
/// Ferry's, damaged) is an error, and the volume is kept rather than deleted the wrong way.
pub(crate) fn provider(c: &Created) -> Result<Provider, ()> {
    match c.provider.as_deref() {
        None => Ok(Provider::Libvirt),
        Some(p) => serde_json::from_str(p).map_err(|_| ()),
    }
}

/// Why a guest found on the target could not be verified against its run's plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the run recorded no plan to check against")]
    NoPlan,
    #[error("the running definition could not be read")]
    Unread,
    #[error("the running definition could not be parsed")]
    Unparsed,
    #[error("{}", .0.iter().map(|d| format!("disk {d} is not at its planned source")).collect::<Vec<_>>().join("; "))]
    Disks(Vec<String>),
}

/// Whether the target's live definition has the planned disk sources: how many matched, or
/// what differs.
fn check_sources(
    planned: Option<&[(String, Option<DiskSource>)]>,
    live: Option<&str>,
) -> Result<usize, Unverified> {
    let planned = planned.ok_or(Unverified::NoPlan)?;
    let got = domain::parse(live.ok_or(Unverified::Unread)?).map_err(|_| Unverified::Unparsed)?;
    let bad: Vec<String> = planned
        .iter()
        .filter(|(target, want)| {
            got.disks
                .iter()
                .find(|g| g.target == *target)
                .map(|g| &g.source)
                != Some(want)
        })
        .map(|(target, _)| target.clone())
        .collect();
    if bad.is_empty() {
        Ok(planned.len())
    } else {
        Err(Unverified::Disks(bad))
    }
}

/// Why one of recover's actions could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the source did not answer")]
    SourceUnanswered,
    #[error("{host} is not the run's target")]
    NotTarget { host: String },
    #[error("both hosts must answer to resume a post-copy")]
    BothHosts,
    #[error("the journal has no plan for this run")]
    NoPlan,
    #[error("the run was not started with post-copy allowed")]
    NotPostcopy,
    #[error(transparent)]
    Host(#[from] HvError),
    #[error(transparent)]
    Cause(#[from] crate::Cause),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
}

/// What a host says of the guest. Only the source is asked about a job: libvirt refuses job
/// statistics of an incoming migration ("available only on the source host").
fn view(
    hv: &Arc<dyn Hypervisor>,
    uri: &str,
    guest: &str,
    source: bool,
    answer: Duration,
) -> (Option<HostId>, HostView) {
    let (hv, uri2, guest) = (hv.clone(), uri.to_string(), guest.to_string());
    let looked = wait::bounded("ferry-recover-view", wait::deadline_in(answer), move || {
        look(hv.as_ref(), &uri2, &guest, source)
    });
    match looked {
        Ok(Ok((h, v))) => (Some(h), v),
        Ok(Err(e)) => (None, HostView::Unreachable(e.to_string())),
        Err(wait::NoAnswer::Late) => (
            None,
            HostView::Unreachable(format!("no answer within {} s", answer.as_secs())),
        ),
        Err(e) => (None, HostView::Unreachable(e.to_string())),
    }
}

fn look(
    hv: &dyn Hypervisor,
    uri: &str,
    guest: &str,
    source: bool,
) -> Result<(HostId, HostView), HvError> {
    let h = hv.connect(uri)?;
    let state = hv.domain_state(h, guest)?;
    let active = state.is_some_and(DomainState::is_active);
    let job = source && active && hv.job_stats(h, guest)?.is_some();
    let in_use = crate::usage::paths_in_use(hv, h, None)?;
    let live_xml = if active {
        hv.domain_xml(h, guest, false).ok()
    } else {
        None
    };
    Ok((
        h,
        HostView::Seen {
            state,
            job,
            in_use,
            live_xml,
        },
    ))
}

/// A run's facts, from the journal and both hosts.
pub fn gather(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    run: &RunRow,
    held_by: Option<Holder>,
    answer: Duration,
) -> Result<(RunFacts, Option<HostId>, Option<HostId>), JournalError> {
    let created = journal.created_of(run.id)?;
    // A plan that cannot be read leaves nothing to check against: the guest found on the
    // target is then journaled unverified.
    let planned = crate::record::plan(journal, run.id)
        .ok()
        .flatten()
        .map(|p| {
            p.disks
                .into_iter()
                .map(|d| (d.target, d.dest_source))
                .collect()
        });
    let (src, source) = view(hv, &run.source, &run.guest, true, answer);
    let chosen = run.target.contains("://");
    let (dst, target) = if chosen {
        let (h, v) = view(hv, &run.target, &run.guest, false, answer);
        (h, Some(v))
    } else {
        (None, None)
    };
    Ok((
        RunFacts {
            run: run.clone(),
            created,
            held_by,
            source,
            target,
            planned,
        },
        src,
        dst,
    ))
}

/// What recover did (or, in a dry run, would do) for one run.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    #[serde(flatten)]
    pub recovery: Recovery,
    /// Per step: `None` done (or, dry, to do), `Some(error)` when it failed.
    pub failed: Vec<(usize, String)>,
    /// The guest's lock, taken over (in a dry run: to take over) from a Ferry that is gone or
    /// whose lease expired: `take over the lock of run #7 …`, said as the first step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_over: Option<String>,
}

/// Resume a run's failed post-copy with the flags, disks and addresses its plan recorded,
/// bounded as the flow's resume is.
fn resume_postcopy(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    r: &RunRow,
    src: HostId,
    dst: HostId,
) -> Result<(), ActionError> {
    let plan = crate::record::plan(journal, r.id)?.ok_or(ActionError::NoPlan)?;
    let req = resume_request(&plan, &r.target)?;
    Ok(crate::migrate::resume(
        hv,
        src,
        dst,
        &r.guest,
        req,
        crate::migrate::RESUME_WAIT,
    )?)
}

/// The request that resumes a failed post-copy: the run's own flags with `POSTCOPY_RESUME`,
/// its disks and addresses; no XML (the target has the guest already).
pub fn resume_request(p: &Plan, target: &str) -> Result<MigrateRequest, ActionError> {
    if !p.flags.postcopy {
        return Err(ActionError::NotPostcopy);
    }
    let mut flags = p.flags;
    flags.postcopy_resume = true;
    Ok(MigrateRequest {
        flags,
        dest_uri: target.to_string(),
        migrate_disks: p.migrate_disks.clone(),
        dest_xml: String::new(),
        persist_xml: None,
        bandwidth_mib: None,
        migrate_uri: p.options.migrate_uri.clone(),
        disks_uri: p.options.disks_uri.clone(),
    })
}

/// How long to wait for an aborted job to end.
const JOB_END: Duration = Duration::from_secs(60);

/// Recover every run to recover (or only `only`). Each host is read within `answer` (a host
/// that accepts the connection and never answers counts as not answering).
pub fn run(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    only: Option<RunId>,
    dry_run: bool,
    answer: Duration,
) -> Result<Vec<Recovered>, JournalError> {
    let mut out = vec![];
    if let Some(id) = only {
        if journal.run_row(id)?.is_none() {
            return Err(JournalError::NoRun(id.0));
        }
    }
    for r in journal.runs_to_recover(only)? {
        // Hold the guest's lock while acting (one whose holder is gone, or whose lease
        // expired, is taken over); a live one means the run is not over.
        let (mut held_by, mut dead) = (None, None);
        if let Some(h) = journal.holder(&r.guest)? {
            match crate::lease::stands(journal, &h)? {
                Standing::Live => held_by = Some(h),
                why => dead = Some((h, why)),
            }
        }
        let lease = if !dry_run && held_by.is_none() {
            match journal.lock_guest(&r.guest, r.id, &crate::lease::me(), crate::ferry_alive) {
                Ok(l) => Some(l),
                // Another Ferry took it in between: its run is not over.
                Err(JournalError::Locked { holder, .. }) => {
                    held_by = Some(*holder);
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if let Some(l) = &lease {
            crate::lease::watch(journal, r.id, &r.guest, l.token);
            crate::lease::keep(journal);
        }
        // Said as a step: what a dry run would take over, what the real one did.
        let took_over = match &lease {
            Some(l) => l.took_over.as_ref(),
            None if dry_run => dead.as_ref(),
            None => None,
        }
        .map(|(h, why)| format!("take over {}", crate::lock_of(h, *why)));
        let (mut facts, mut src, mut dst) = gather(hv, journal, &r, held_by, answer)?;
        let mut d = decide(&facts);
        let mut failed = vec![];
        // An abort or a resumed post-copy changes the facts: look again once the job has
        // ended.
        if !dry_run {
            let changed = match (d.steps.first(), src, dst) {
                (Some(Action::AbortJob { .. }), Some(s), _) => {
                    Some(
                        hv.abort_job(s, &r.guest)
                            .map_err(ActionError::from)
                            .map(|()| {
                                // Wait (bounded) for the job to end; the next look says if it did.
                                wait::poll_until(
                                    wait::deadline_in(JOB_END),
                                    Duration::from_millis(250),
                                    || {
                                        (!matches!(hv.job_stats(s, &r.guest), Ok(Some(_))))
                                            .then_some(())
                                    },
                                );
                            }),
                    )
                }
                (Some(Action::ResumePostcopy { .. }), Some(s), Some(t)) => {
                    Some(resume_postcopy(hv, journal, &r, s, t))
                }
                (Some(Action::ResumePostcopy { .. }), _, _) => Some(Err(ActionError::BothHosts)),
                _ => None,
            };
            match changed {
                Some(Ok(())) => {
                    (facts, src, dst) = gather(hv, journal, &r, None, answer)?;
                    let mut again = decide(&facts);
                    match again.steps.first() {
                        Some(Action::AbortJob { host }) => {
                            again.steps = vec![Action::Leave {
                                why: format!(
                                    "the job on {host} has not ended {} s after the abort; run \
                                     `ferry recover` again later",
                                    JOB_END.as_secs()
                                ),
                            }];
                        }
                        Some(Action::ResumePostcopy { .. }) => {
                            again.steps = vec![Action::Leave {
                                why: "the post-copy is still split after the resume; run \
                                      `ferry recover` again once the link is sound"
                                    .into(),
                            }];
                        }
                        _ => {}
                    }
                    d.steps.extend(again.steps);
                    d.location = again.location;
                }
                Some(Err(e)) => failed.push((0, crate::error_chain(&e))),
                None => {}
            }
        }
        if !dry_run {
            for (i, step) in d.steps.iter().enumerate() {
                if let Err(e) = act(hv.as_ref(), journal, &r, step, src, dst) {
                    failed.push((i, crate::error_chain(&e)));
                    // The guest still runs on the overlay: deleting it, or ending the run,
                    // would lose its writes. Nothing after a failed commit is done.
                    if matches!(step, Action::Commit { .. }) {
                        for j in i + 1..d.steps.len() {
                            failed.push((j, "not done: the commit before it failed".into()));
                        }
                        break;
                    }
                }
            }
        }
        if let Some(l) = &lease {
            crate::lease::forget(l.token);
            let _ = journal.unlock_guest(&r.guest, l.token);
        }
        out.push(Recovered {
            recovery: d,
            failed,
            took_over,
        });
    }
    Ok(out)
}

/// After the runs: the evacuations whose Ferry died on this machine end in the journal (with a
/// run number, `only`, none does: the operator asked about one run). With `dry_run`, the ones
/// that would.
pub fn end_cut_evacuations(
    journal: &Journal,
    only: Option<RunId>,
    dry_run: bool,
) -> Result<Vec<ferry_journal::EvacuationRow>, JournalError> {
    if only.is_some() {
        return Ok(vec![]);
    }
    let cut = crate::evacuate::interrupted(journal, crate::ferry_alive)?;
    if !dry_run {
        for e in &cut {
            crate::evacuate::end_interrupted(journal, e)?;
        }
    }
    Ok(cut)
}

fn act(
    hv: &dyn Hypervisor,
    journal: &Journal,
    r: &RunRow,
    step: &Action,
    src: Option<HostId>,
    dst: Option<HostId>,
) -> Result<(), ActionError> {
    match step {
        // Done before the other steps, by `run`.
        Action::AbortJob { .. }
        | Action::ResumePostcopy { .. }
        | Action::Keep { .. }
        | Action::Leave { .. } => Ok(()),
        Action::UndefineSource { .. } => {
            let h = src.ok_or(ActionError::SourceUnanswered)?;
            Ok(hv.undefine(h, &r.guest)?)
        }
        Action::Commit { host, disk, .. } => {
            let h = if *host == r.target { dst } else { src }
                .ok_or_else(|| ActionError::NotTarget { host: host.clone() })?;
            Ok(hv.commit_active(h, &r.guest, disk, crate::preseed::COMMIT_WAIT)?)
        }
        Action::Delete { host, path, by } => {
            // On the run's own target, the host it created its volumes on; on the source, only
            // a pre-seed's overlay.
            let h = if *host == r.target {
                dst
            } else if *host == r.source && ferry_core::preseed::is_overlay(path, &r.guest) {
                src
            } else {
                None
            }
            .ok_or_else(|| ActionError::NotTarget { host: host.clone() })?;
            crate::provision::give_back(hv, h, path, by)?;
            Ok(journal.record_deleted(r.id, host, path)?)
        }
        Action::Finish { outcome, message } => Ok(journal.finish(r.id, *outcome, message)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str) -> RunRow {
        RunRow {
            id: RunId(7),
            guest: "g".into(),
            source: "qemu+tcp://h1/system".into(),
            target: target.into(),
            started: 0,
            finished: None,
            phase: ferry_journal::RunPhase::Migrate,
            outcome: None,
            message: None,
        }
    }

    fn seen(state: Option<DomainState>, job: bool) -> HostView {
        HostView::Seen {
            state,
            job,
            in_use: vec![],
            live_xml: None,
        }
    }

    fn created() -> Created {
        Created {
            run: 7,
            host: "qemu+tcp://h2/system".into(),
            path: "/srv/g-vdb.img".into(),
            bytes: 1,
            provider: None,
        }
    }

    #[test]
    fn a_post_copy_split_between_the_hosts_is_resumed_not_cleaned() {
        for (src, dst) in [
            (DomainState::PostcopyFailed, DomainState::PostcopyFailed),
            (DomainState::PostcopyFailed, DomainState::Running),
            (DomainState::Paused, DomainState::PostcopyFailed),
        ] {
            let d = decide(&facts(seen(Some(src), true), Some(seen(Some(dst), false))));
            assert_eq!(d.location, GuestLocation::PostcopySplit);
            assert_eq!(
                d.steps,
                vec![Action::ResumePostcopy {
                    from: "qemu+tcp://h1/system".into(),
                    to: "qemu+tcp://h2/system".into()
                }],
                "nothing deleted, nothing aborted ({src:?}, {dst:?})"
            );
        }
    }

    #[test]
    fn the_resume_carries_the_runs_own_flags_and_no_xml() {
        let read = |json: &str| crate::record::parse(RunId(7), json);
        let plan = read(
            r#"{"domain":"g","dest_uri":"u","disks":[],"flags":{"live":true,"peer2peer":true,"postcopy":true,"non_shared_disk":true},
            "migrate_disks":["vdb"],"options":{"migrate_uri":"tcp://10.0.0.2","disks_uri":null}}"#,
        )
        .unwrap();
        let req = resume_request(&plan, "qemu+tcp://h2/system").unwrap();
        assert!(req.flags.postcopy_resume && req.flags.postcopy && req.flags.peer2peer);
        assert!(req.flags.live && req.flags.non_shared_disk);
        assert_eq!(req.migrate_disks, vec!["vdb"]);
        assert_eq!(req.migrate_uri.as_deref(), Some("tcp://10.0.0.2"));
        assert_eq!(req.dest_uri, "qemu+tcp://h2/system");
        assert!(req.dest_xml.is_empty());
        let plain = read(r#"{"domain":"g","dest_uri":"u","disks":[],"flags":{"live":true}}"#);
        let e = resume_request(&plain.unwrap(), "u").unwrap_err();
        assert!(matches!(e, ActionError::NotPostcopy), "{e}");
        let e = read("{").unwrap_err();
        assert!(matches!(
            e,
            crate::record::RecordError::Unreadable { run: RunId(7), .. }
        ));
    }

    fn facts(source: HostView, target: Option<HostView>) -> RunFacts {
        RunFacts {
            run: row(if target.is_some() {
                "qemu+tcp://h2/system"
            } else {
                "(ranked)"
            }),
            created: vec![created()],
            held_by: None,
            source,
            target,
            planned: None,
        }
    }

    const RUNNING: Option<DomainState> = Some(DomainState::Running);

    const OVERLAY: &str = "/srv/store/ferry-g-vdb-run7.qcow2";
    const FROZEN: &str = "<domain><name>g</name><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/store/ferry-g-vdb-run7.qcow2'/><backingStore type='block'><format type='raw'/><source dev='/dev/nvme1n5'/></backingStore><target dev='vdb'/></disk></devices></domain>";

    fn on_overlay(host_of_guest: &str) -> HostView {
        HostView::Seen {
            state: RUNNING,
            job: false,
            in_use: vec![(OVERLAY.into(), "g".into())],
            live_xml: Some(FROZEN.replace("/dev/nvme1n5", host_of_guest)),
        }
    }

    fn overlay_on(host: &str) -> Created {
        Created {
            host: host.into(),
            path: OVERLAY.into(),
            bytes: 0,
            ..created()
        }
    }

    #[test]
    fn a_pre_seed_cut_with_the_guest_on_the_source_is_committed_back_before_its_overlay_goes() {
        let mut f = facts(on_overlay("/dev/nvme2n2"), Some(seen(None, false)));
        f.created = vec![overlay_on("qemu+tcp://h1/system")];
        let d = decide(&f);
        assert_eq!(d.location, GuestLocation::Source);
        assert_eq!(
            d.steps,
            vec![
                Action::Commit {
                    host: "qemu+tcp://h1/system".into(),
                    disk: "vdb".into(),
                    overlay: OVERLAY.into()
                },
                Action::Delete {
                    host: "qemu+tcp://h1/system".into(),
                    path: OVERLAY.into(),
                    by: Provider::Libvirt
                },
                Action::Finish {
                    outcome: RunOutcome::RolledBack,
                    message: "recovered: g runs on qemu+tcp://h1/system".into()
                }
            ]
        );
        // Another guest's overlay is not this run's to commit or delete.
        let mut other = f.clone();
        other.source = HostView::Seen {
            state: RUNNING,
            job: false,
            in_use: vec![(OVERLAY.into(), "g2".into())],
            live_xml: Some(String::new()),
        };
        assert!(matches!(
            &decide(&other).steps[..],
            [Action::Keep { why, .. }, Action::Finish { .. }] if why.contains("g2")
        ));
    }

    #[test]
    fn a_pre_seed_cut_after_the_switchover_is_committed_on_the_target_and_verified_as_thawed() {
        let mut f = facts(seen(None, false), Some(on_overlay("/dev/nvme1n5")));
        f.created = vec![
            overlay_on("qemu+tcp://h1/system"),
            overlay_on("qemu+tcp://h2/system"),
            created(),
        ];
        f.planned = Some(vec![(
            "vdb".into(),
            Some(DiskSource::Path {
                path: "/dev/nvme1n5".into(),
            }),
        )]);
        let d = decide(&f);
        assert_eq!(d.location, GuestLocation::Target);
        assert_eq!(
            d.steps[..4],
            [
                Action::Commit {
                    host: "qemu+tcp://h2/system".into(),
                    disk: "vdb".into(),
                    overlay: OVERLAY.into()
                },
                Action::Delete {
                    host: "qemu+tcp://h1/system".into(),
                    path: OVERLAY.into(),
                    by: Provider::Libvirt
                },
                Action::Delete {
                    host: "qemu+tcp://h2/system".into(),
                    path: OVERLAY.into(),
                    by: Provider::Libvirt
                },
                Action::Keep {
                    host: "qemu+tcp://h2/system".into(),
                    path: "/srv/g-vdb.img".into(),
                    why: "the migrated guest's disk".into()
                },
            ]
        );
        assert!(
            matches!(
                &d.steps[4],
                Action::Finish {
                    outcome: RunOutcome::Migrated,
                    ..
                }
            ),
            "{:?}",
            d.steps[4]
        );
    }

    #[test]
    fn a_run_cut_before_its_target_was_chosen_only_ends_in_the_journal() {
        let mut f = facts(seen(RUNNING, false), None);
        f.created.clear();
        let d = decide(&f);
        assert_eq!(d.location, GuestLocation::Source);
        assert!(
            matches!(&d.steps[..], [Action::Finish { outcome, message }] if *outcome == RunOutcome::Failed && message.contains("before a target was chosen")),
            "{d:?}"
        );
        f.source = seen(None, false);
        assert_eq!(decide(&f).location, GuestLocation::Unknown);
    }

    #[test]
    fn a_host_that_does_not_answer_is_named_and_nothing_is_done() {
        for (source, target, who) in [
            (
                HostView::Unreachable("refused".into()),
                seen(None, false),
                "qemu+tcp://h1/system",
            ),
            (
                seen(RUNNING, false),
                HostView::Unreachable("refused".into()),
                "qemu+tcp://h2/system",
            ),
        ] {
            let d = decide(&facts(source, Some(target)));
            assert!(
                matches!(&d.steps[..], [Action::Leave { why }] if why.starts_with(&format!("{who} did not answer (refused)"))),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_guest_on_both_hosts_or_neither_keeps_everything() {
        for (s, t, loc) in [
            (RUNNING, Some(DomainState::Paused), GuestLocation::Both),
            (Some(DomainState::ShutOff), None, GuestLocation::Neither),
        ] {
            let d = decide(&facts(seen(s, false), Some(seen(t, false))));
            assert_eq!(d.location, loc);
            assert!(matches!(&d.steps[0], Action::Keep { .. }), "{d:?}");
            assert!(matches!(&d.steps[1], Action::Leave { .. }), "{d:?}");
            assert!(!d
                .steps
                .iter()
                .any(|s| matches!(s, Action::Delete { .. } | Action::Finish { .. })));
        }
    }

    #[test]
    fn a_job_still_running_is_aborted_unless_post_copy_runs_the_guest_on_the_target() {
        let d = decide(&facts(
            seen(RUNNING, true),
            Some(seen(Some(DomainState::Paused), false)),
        ));
        assert_eq!(
            d.steps,
            vec![Action::AbortJob {
                host: "qemu+tcp://h1/system".into()
            }]
        );
        let d = decide(&facts(
            seen(Some(DomainState::Paused), true),
            Some(seen(RUNNING, false)),
        ));
        assert!(
            matches!(&d.steps[..], [Action::Leave { why }] if why.contains("post-copy")),
            "{d:?}"
        );
    }

    #[test]
    fn every_step_reads_as_what_it_does() {
        let hook = ferry_core::inventory::Hook {
            name: "ns".into(),
            command: vec!["x".into()],
            timeout_s: 1,
        };
        let lines: Vec<String> = [
            Action::AbortJob { host: "h1".into() },
            Action::UndefineSource { host: "h1".into() },
            Action::Delete {
                host: "h2".into(),
                path: "/a".into(),
                by: Provider::Libvirt,
            },
            Action::Delete {
                host: "h2".into(),
                path: "/dev/n1".into(),
                by: Provider::Hook {
                    hook,
                    host: "kvm2".into(),
                },
            },
            Action::Keep {
                host: "h2".into(),
                path: "/b".into(),
                why: "domain x uses it".into(),
            },
            Action::Finish {
                outcome: RunOutcome::Migrated,
                message: "m".into(),
            },
            Action::Leave { why: "w".into() },
        ]
        .iter()
        .map(Action::to_string)
        .collect();
        assert_eq!(
            lines,
            [
                "abort the migration job on h1 (its Ferry is gone), then look again",
                "undefine the guest's leftover definition on h1",
                "delete /a on h2",
                "give /dev/n1 on h2 back through hook ns",
                "keep /b on h2: domain x uses it",
                "journal: migrated (m)",
                "leave it: w",
            ]
        );
    }

    #[test]
    fn an_ended_run_is_not_finished_again() {
        let mut f = facts(seen(RUNNING, false), Some(seen(None, false)));
        f.run.outcome = Some(RunOutcome::RolledBack);
        let d = decide(&f);
        assert_eq!(
            d.steps,
            vec![Action::Delete {
                host: "qemu+tcp://h2/system".into(),
                path: "/srv/g-vdb.img".into(),
                by: Provider::Libvirt
            }]
        );
    }
}
