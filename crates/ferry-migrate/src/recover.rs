//! Recover: finish every run the journal says is unfinished (Ferry killed, a host lost during
//! the rollback, a peer-to-peer migration that went on without Ferry), and delete what such runs
//! left behind — from the truth the hosts tell now.
//!
//! Facts first, decide once: [`gather`] asks both hosts of a run where the guest is, whether a
//! job still runs, and which paths their domains use; [`decide`] (pure) turns that into steps;
//! [`run`] carries them out, or with `dry_run` only says them — the same steps either way.

use ferry_core::domain;
use ferry_hypervisor::{DomainState, HostId, HvError, Hypervisor, MigrateRequest};
use ferry_journal::{Created, Holder, Journal, JournalError, RunId, RunRow};
use serde::Serialize;

use crate::provision::Provider;
use crate::GuestLocation;

/// One disk of the plan a run recorded in the journal (the plan's JSON, read back).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct RecordedDisk {
    pub target: String,
    #[serde(default)]
    pub decision: String,
    #[serde(default)]
    pub source: serde_json::Value,
    #[serde(default)]
    pub dest_source: serde_json::Value,
}

/// The plan a run recorded in the journal, read back: the one reader of that JSON.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct RecordedPlan {
    pub disks: Vec<RecordedDisk>,
    #[serde(default)]
    pub flags: ferry_core::plan::Flags,
    #[serde(default)]
    pub migrate_disks: Vec<String>,
    #[serde(default)]
    pub options: RecordedOptions,
}

/// The addresses a recorded plan's migration used.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct RecordedOptions {
    pub migrate_uri: Option<String>,
    pub disks_uri: Option<String>,
}

/// A recorded plan, or why it cannot be read as one.
pub(crate) fn recorded_plan(plan_json: &str) -> Result<RecordedPlan, serde_json::Error> {
    serde_json::from_str(plan_json)
}

/// The disks of a recorded plan; `None` when it cannot be read as one.
pub(crate) fn recorded_disks(plan_json: &str) -> Option<Vec<RecordedDisk>> {
    recorded_plan(plan_json).ok().map(|p| p.disks)
}

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
    /// Each disk's planned source on the target (`<target dev>`, the source as the plan's JSON
    /// has it), to check a guest found on the target.
    pub planned: Option<Vec<(String, serde_json::Value)>>,
}

/// One thing recover does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Abort the guest's migration job on the source (its Ferry is gone), then look again.
    AbortJob { host: String },
    /// Resume the run's failed post-copy (`POSTCOPY_RESUME`, with the run's own flags), then
    /// look again.
    ResumePostcopy { from: String, to: String },
    /// Undefine the guest's leftover (inactive) definition on the source.
    UndefineSource { host: String },
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
    Finish { outcome: String, message: String },
    /// Nothing is done for this run now, and why.
    Leave { why: String },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AbortJob { host } => write!(
                f,
                "abort the migration job on {host} (its Ferry is gone), then look again"
            ),
            Self::UndefineSource { host } => {
                write!(f, "undefine the guest's leftover definition on {host}")
            }
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
pub struct Decision {
    pub run: i64,
    pub guest: String,
    pub location: GuestLocation,
    pub steps: Vec<Step>,
}

/// Decide what to do with one run. Pure: the same facts give the same steps, in a dry run and
/// a real one.
pub fn decide(f: &RunFacts) -> Decision {
    let r = &f.run;
    let mut d = Decision {
        run: r.id,
        guest: r.guest.clone(),
        location: GuestLocation::Unknown,
        steps: vec![],
    };
    let unfinished = r.outcome.is_none();
    if let Some(h) = &f.held_by {
        d.steps.push(Step::Leave {
            why: format!(
                "run #{} still holds {}'s lock (ferry pid {} on {}); `ferry abort {}` stops it",
                h.run, r.guest, h.pid, h.host, h.run
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
            d.steps.push(Step::Finish {
                outcome: "failed".into(),
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
            d.steps.push(Step::Leave {
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
        d.steps.push(Step::ResumePostcopy {
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
            d.steps.push(Step::Leave {
                why: "the job is completing (post-copy: the guest already runs on the target); \
                      run `ferry recover` again when it has ended"
                    .into(),
            });
        } else {
            d.steps.push(Step::AbortJob {
                host: r.source.clone(),
            });
        }
        return d;
    }
    let in_use_on_target = |path: &str| match target {
        HostView::Seen { in_use, .. } => in_use
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, dom)| dom.clone()),
        HostView::Unreachable(_) => None,
    };
    let keep_all = |d: &mut Decision, why: &str| {
        for c in &f.created {
            d.steps.push(Step::Keep {
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
                d.steps.push(Step::UndefineSource {
                    host: r.source.clone(),
                });
            }
            keep_all(&mut d, "the migrated guest's disk");
            if unfinished {
                let live = match target {
                    HostView::Seen { live_xml, .. } => live_xml.as_deref(),
                    HostView::Unreachable(_) => None,
                };
                let message = match check_sources(f.planned.as_deref(), live) {
                    Ok(n) => format!(
                        "recovered: {} runs on {}, its {n} disk source(s) as planned",
                        r.guest, r.target
                    ),
                    Err(why) => format!(
                        "recovered: {} runs on {}, but verify: {why}",
                        r.guest, r.target
                    ),
                };
                d.steps.push(Step::Finish {
                    outcome: "migrated".into(),
                    message,
                });
            }
        }
        GuestLocation::Source | GuestLocation::SourceShutOff => {
            for c in &f.created {
                match in_use_on_target(&c.path) {
                    Some(dom) => d.steps.push(Step::Keep {
                        host: c.host.clone(),
                        path: c.path.clone(),
                        why: format!("domain {dom} uses it"),
                    }),
                    None => match provider(c) {
                        Err(()) => d.steps.push(Step::Keep {
                            host: c.host.clone(),
                            path: c.path.clone(),
                            why: format!(
                                "the journal's record of who made it cannot be read ({}); delete \
                                 it by hand",
                                c.provider.as_deref().unwrap_or("")
                            ),
                        }),
                        Ok(by) => d.steps.push(Step::Delete {
                            host: c.host.clone(),
                            path: c.path.clone(),
                            by,
                        }),
                    },
                }
            }
            if unfinished {
                d.steps.push(Step::Finish {
                    outcome: "rolled_back".into(),
                    message: format!("recovered: {} runs on {}", r.guest, r.source),
                });
            }
        }
        GuestLocation::Both
        | GuestLocation::Neither
        | GuestLocation::Unknown
        | GuestLocation::PostcopySplit => {
            keep_all(&mut d, "the guest is not safely on one host");
            d.steps.push(Step::Leave {
                why: format!("the guest {}", d.location),
            });
        }
    }
    d
}

/// Who made a volume: no record means libvirt's storage API; a record Ferry cannot read (another
/// Ferry's, damaged) is an error, and the volume is kept rather than deleted the wrong way.
fn provider(c: &Created) -> Result<Provider, ()> {
    match c.provider.as_deref() {
        None => Ok(Provider::Libvirt),
        Some(p) => serde_json::from_str(p).map_err(|_| ()),
    }
}

/// Whether the target's live definition has the planned disk sources: how many matched, or
/// what differs.
fn check_sources(
    planned: Option<&[(String, serde_json::Value)]>,
    live: Option<&str>,
) -> Result<usize, String> {
    let Some(planned) = planned else {
        return Err("the run recorded no plan to check against".into());
    };
    let got = live
        .ok_or("the running definition could not be read")
        .and_then(|x| domain::parse(x).map_err(|_| "the running definition could not be parsed"))?;
    let mut bad = vec![];
    for (target, want) in planned {
        let source = got
            .disks
            .iter()
            .find(|g| g.target == *target)
            .map(|g| serde_json::to_value(&g.source).unwrap_or_default());
        if source.as_ref() != Some(want) {
            bad.push(format!("disk {target} is not at its planned source"));
        }
    }
    if bad.is_empty() {
        Ok(planned.len())
    } else {
        Err(bad.join("; "))
    }
}

/// Every path the domains on `host` use (live and persistent definitions), with the domain's
/// name; `skip` names a domain to leave out. A definition that cannot be read or parsed counts
/// as using nothing.
pub fn paths_in_use(
    hv: &dyn Hypervisor,
    host: HostId,
    skip: Option<&str>,
) -> Result<Vec<(String, String)>, HvError> {
    let mut in_use = Vec::new();
    for name in hv.list_domains(host)? {
        if Some(name.as_str()) == skip {
            continue;
        }
        for inactive in [false, true] {
            let Ok(x) = hv.domain_xml(host, &name, inactive) else {
                continue;
            };
            let Ok(d) = domain::parse(&x) else { continue };
            for disk in d.disks {
                if let Some(p) = disk.path() {
                    in_use.push((p.to_string(), name.clone()));
                }
            }
        }
    }
    Ok(in_use)
}

/// What a host says of the guest. Only the source is asked about a job: libvirt refuses job
/// statistics of an incoming migration ("available only on the source host").
fn view(hv: &dyn Hypervisor, uri: &str, guest: &str, source: bool) -> (Option<HostId>, HostView) {
    let look = || -> Result<(HostId, HostView), HvError> {
        let h = hv.connect(uri)?;
        let state = hv.domain_state(h, guest)?;
        let active = state.is_some_and(DomainState::is_active);
        let job = source && active && hv.job_stats(h, guest)?.is_some();
        let in_use = paths_in_use(hv, h, None)?;
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
    };
    match look() {
        Ok((h, v)) => (Some(h), v),
        Err(e) => (None, HostView::Unreachable(e.to_string())),
    }
}

/// A run's facts, from the journal and both hosts.
pub fn gather(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: &RunRow,
    held_by: Option<Holder>,
) -> Result<(RunFacts, Option<HostId>, Option<HostId>), JournalError> {
    let created = journal.created_of(RunId(run.id))?;
    let planned = journal
        .plan_of(RunId(run.id))?
        .and_then(|p| recorded_disks(&p))
        .map(|disks| {
            disks
                .into_iter()
                .map(|d| (d.target, d.dest_source))
                .collect()
        });
    let (src, source) = view(hv, &run.source, &run.guest, true);
    let chosen = run.target.contains("://");
    let (dst, target) = if chosen {
        let (h, v) = view(hv, &run.target, &run.guest, false);
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
    pub decision: Decision,
    /// Per step: `None` done (or, dry, to do), `Some(error)` when it failed.
    pub failed: Vec<(usize, String)>,
}

/// Resume a run's failed post-copy with the flags, disks and addresses its plan recorded.
fn resume_postcopy(
    hv: &dyn Hypervisor,
    journal: &Journal,
    r: &RunRow,
    src: HostId,
    dst: HostId,
) -> Result<(), String> {
    let plan = journal
        .plan_of(RunId(r.id))
        .map_err(|e| e.to_string())?
        .ok_or("the journal has no plan for this run")?;
    let req = resume_request(&plan, &r.target)?;
    hv.migrate(src, dst, &r.guest, &req)
        .map_err(|e| format!("resuming the post-copy: {e}"))
}

/// The request that resumes a failed post-copy: the run's own flags with `POSTCOPY_RESUME`,
/// its disks and addresses; no XML (the target has the guest already).
pub fn resume_request(plan_json: &str, target: &str) -> Result<MigrateRequest, String> {
    let p = recorded_plan(plan_json)
        .map_err(|e| format!("the journal's plan of this run cannot be read: {e}"))?;
    if !p.flags.postcopy {
        return Err("the run was not started with post-copy allowed".into());
    }
    let mut flags = p.flags;
    flags.postcopy_resume = true;
    Ok(MigrateRequest {
        flags,
        dest_uri: target.to_string(),
        migrate_disks: p.migrate_disks,
        dest_xml: String::new(),
        persist_xml: None,
        bandwidth_mib: None,
        migrate_uri: p.options.migrate_uri,
        disks_uri: p.options.disks_uri,
    })
}

/// How long to wait for an aborted job to end.
const JOB_END: std::time::Duration = std::time::Duration::from_secs(60);

/// Recover every run to recover (or only `only`).
pub fn run(
    hv: &dyn Hypervisor,
    journal: &Journal,
    only: Option<RunId>,
    dry_run: bool,
) -> Result<Vec<Recovered>, JournalError> {
    let mut out = vec![];
    for r in journal.runs_to_recover(only)? {
        let me = crate::this_machine();
        // Hold the guest's lock while acting (a dead holder's is taken over); a live one means
        // the run is not over.
        let held_by = match journal.holder(&r.guest)? {
            Some(h) if h.host != me || crate::ferry_alive(h.pid) => Some(h),
            _ => None,
        };
        let locked = !dry_run
            && held_by.is_none()
            && journal
                .lock_guest(
                    &r.guest,
                    RunId(r.id),
                    std::process::id(),
                    &me,
                    crate::ferry_alive,
                )
                .is_ok();
        let (mut facts, mut src, mut dst) = gather(hv, journal, &r, held_by)?;
        let mut d = decide(&facts);
        let mut failed = vec![];
        // An abort or a resumed post-copy changes the facts: look again once the job has
        // ended.
        if !dry_run {
            let changed = match (d.steps.first(), src, dst) {
                (Some(Step::AbortJob { .. }), Some(s), _) => Some(
                    hv.abort_job(s, &r.guest)
                        .map_err(|e| e.to_string())
                        .map(|()| {
                            let t = std::time::Instant::now();
                            // (`<` or `<=`: the same on a clock that never stands still.)
                            while t.elapsed() < JOB_END
                                && matches!(hv.job_stats(s, &r.guest), Ok(Some(_)))
                            {
                                std::thread::sleep(std::time::Duration::from_millis(250));
                            }
                        }),
                ),
                (Some(Step::ResumePostcopy { .. }), Some(s), Some(t)) => {
                    Some(resume_postcopy(hv, journal, &r, s, t))
                }
                (Some(Step::ResumePostcopy { .. }), _, _) => Some(Err(
                    "both hosts must answer to resume a post-copy".to_string(),
                )),
                _ => None,
            };
            match changed {
                Some(Ok(())) => {
                    (facts, src, dst) = gather(hv, journal, &r, None)?;
                    let mut again = decide(&facts);
                    match again.steps.first() {
                        Some(Step::AbortJob { host }) => {
                            again.steps = vec![Step::Leave {
                                why: format!(
                                    "the job on {host} has not ended {} s after the abort; run \
                                     `ferry recover` again later",
                                    JOB_END.as_secs()
                                ),
                            }];
                        }
                        Some(Step::ResumePostcopy { .. }) => {
                            again.steps = vec![Step::Leave {
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
                Some(Err(e)) => failed.push((0, e)),
                None => {}
            }
        }
        if !dry_run {
            for (i, step) in d.steps.iter().enumerate() {
                let res = act(hv, journal, &r, step, src, dst);
                if let Err(e) = res {
                    failed.push((i, e));
                }
            }
        }
        if locked {
            let _ = journal.unlock_guest(&r.guest, RunId(r.id));
        }
        out.push(Recovered {
            decision: d,
            failed,
        });
    }
    Ok(out)
}

fn act(
    hv: &dyn Hypervisor,
    journal: &Journal,
    r: &RunRow,
    step: &Step,
    src: Option<HostId>,
    dst: Option<HostId>,
) -> Result<(), String> {
    match step {
        // Done before the other steps, by `run`.
        Step::AbortJob { .. }
        | Step::ResumePostcopy { .. }
        | Step::Keep { .. }
        | Step::Leave { .. } => Ok(()),
        Step::UndefineSource { .. } => {
            let h = src.ok_or("the source did not answer")?;
            hv.undefine(h, &r.guest).map_err(|e| e.to_string())
        }
        Step::Delete { host, path, by } => {
            let h = if *host == r.target { dst } else { None }
                .ok_or_else(|| format!("{host} is not the run's target"))?;
            crate::provision::give_back(hv, h, path, by).map_err(|e| e.to_string())?;
            journal
                .record_deleted(RunId(r.id), host, path)
                .map_err(|e| e.to_string())
        }
        Step::Finish { outcome, message } => journal
            .finish(RunId(r.id), outcome, message)
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str) -> RunRow {
        RunRow {
            id: 7,
            guest: "g".into(),
            source: "qemu+tcp://h1/system".into(),
            target: target.into(),
            started: 0,
            finished: None,
            phase: "migrate".into(),
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
                vec![Step::ResumePostcopy {
                    from: "qemu+tcp://h1/system".into(),
                    to: "qemu+tcp://h2/system".into()
                }],
                "nothing deleted, nothing aborted ({src:?}, {dst:?})"
            );
        }
    }

    #[test]
    fn the_resume_carries_the_runs_own_flags_and_no_xml() {
        let plan = r#"{"disks":[],"flags":{"live":true,"peer2peer":true,"postcopy":true,"non_shared_disk":true},
            "migrate_disks":["vdb"],"options":{"migrate_uri":"tcp://10.0.0.2","disks_uri":null}}"#;
        let req = resume_request(plan, "qemu+tcp://h2/system").unwrap();
        assert!(req.flags.postcopy_resume && req.flags.postcopy && req.flags.peer2peer);
        assert!(req.flags.live && req.flags.non_shared_disk);
        assert_eq!(req.migrate_disks, vec!["vdb"]);
        assert_eq!(req.migrate_uri.as_deref(), Some("tcp://10.0.0.2"));
        assert_eq!(req.dest_uri, "qemu+tcp://h2/system");
        assert!(req.dest_xml.is_empty());
        let e = resume_request(r#"{"disks":[],"flags":{"live":true}}"#, "u").unwrap_err();
        assert!(e.contains("not started with post-copy"), "{e}");
        assert!(resume_request("{", "u").is_err());
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

    #[test]
    fn a_run_cut_before_its_target_was_chosen_only_ends_in_the_journal() {
        let mut f = facts(seen(RUNNING, false), None);
        f.created.clear();
        let d = decide(&f);
        assert_eq!(d.location, GuestLocation::Source);
        assert!(
            matches!(&d.steps[..], [Step::Finish { outcome, message }] if outcome == "failed" && message.contains("before a target was chosen")),
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
                matches!(&d.steps[..], [Step::Leave { why }] if why.starts_with(&format!("{who} did not answer (refused)"))),
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
            assert!(matches!(&d.steps[0], Step::Keep { .. }), "{d:?}");
            assert!(matches!(&d.steps[1], Step::Leave { .. }), "{d:?}");
            assert!(!d
                .steps
                .iter()
                .any(|s| matches!(s, Step::Delete { .. } | Step::Finish { .. })));
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
            vec![Step::AbortJob {
                host: "qemu+tcp://h1/system".into()
            }]
        );
        let d = decide(&facts(
            seen(Some(DomainState::Paused), true),
            Some(seen(RUNNING, false)),
        ));
        assert!(
            matches!(&d.steps[..], [Step::Leave { why }] if why.contains("post-copy")),
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
            Step::AbortJob { host: "h1".into() },
            Step::UndefineSource { host: "h1".into() },
            Step::Delete {
                host: "h2".into(),
                path: "/a".into(),
                by: Provider::Libvirt,
            },
            Step::Delete {
                host: "h2".into(),
                path: "/dev/n1".into(),
                by: Provider::Hook {
                    hook,
                    host: "kvm2".into(),
                },
            },
            Step::Keep {
                host: "h2".into(),
                path: "/b".into(),
                why: "domain x uses it".into(),
            },
            Step::Finish {
                outcome: "migrated".into(),
                message: "m".into(),
            },
            Step::Leave { why: "w".into() },
        ]
        .iter()
        .map(Step::to_string)
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
        f.run.outcome = Some("rolled_back".into());
        let d = decide(&f);
        assert_eq!(
            d.steps,
            vec![Step::Delete {
                host: "qemu+tcp://h2/system".into(),
                path: "/srv/g-vdb.img".into(),
                by: Provider::Libvirt
            }]
        );
    }
}
