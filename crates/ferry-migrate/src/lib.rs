//! The migration flow: **inventory → plan → preflight → prepare → migrate → verify/rollback**.
//!
//! Each phase is a module; [`run`] chains them. Everything that touches a host goes through the
//! [`Hypervisor`] trait, so the flow's decisions are unit-tested against a recording fake, and
//! proven end to end in the lab against real libvirt.

pub mod abort;
pub mod cold;
pub mod evacuate;
pub mod inventory;
pub mod migrate;
pub mod preflight;
pub mod prepare;
pub mod provision;
pub mod recover;
pub mod release;
pub mod rollback;
pub mod target;
pub mod verify;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::convergence::Progress;
use ferry_core::{MigrationOptions, Plan, PlanError, Rules};
use ferry_hypervisor::{HvError, Hypervisor, JobStats};
use ferry_journal::{Journal, JournalError, RunId};
use serde::Serialize;

pub use preflight::Problem;
pub use rollback::GuestLocation;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub guest: String,
    pub from: String,
    pub to: String,
    /// The target's name in the inventory (what a hook is told), or its URI.
    pub to_name: String,
    pub rules: Rules,
    /// Copies whose volume a hook creates on the target, before the plan is made.
    pub provision: Vec<ferry_core::storage::HookCopy>,
    pub options: MigrationOptions,
    /// Plan and check only: create nothing, move nothing.
    pub dry_run: bool,
    /// A cold move: the guest is shut off; its disks are copied through storage streams and
    /// its definition moves ([`cold`]).
    pub cold: bool,
    /// Abort the migration if the whole run has not finished after this long (counted from
    /// `started`).
    pub timeout: Option<Duration>,
    /// When the operator's run began (the `--timeout` clock).
    pub started: Instant,
    /// The journal's run, when the caller began it (with the guest's lock: [`lock`]).
    pub run: Option<RunId>,
    /// How long to wait for libvirt's migration call to return after an abort. A job whose
    /// streams hang on a cut link only ends when TCP gives up (~15 min by default); Ferry stops
    /// waiting then, says so, and deletes nothing.
    pub abort_grace: Duration,
}

/// The default [`Request::abort_grace`].
pub const ABORT_GRACE: Duration = Duration::from_secs(60);

/// What the flow tells the operator while it works.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase of the flow starts.
    Step { step: &'static str, detail: String },
    /// A live figure of the running migration job.
    Job(Progress),
    /// Something done or found worth a line of its own.
    Note { message: String },
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The journal's run.
    pub run: Option<i64>,
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
    #[error("{}", failure_text(.guest, .cause, .location, .cleanup))]
    Failed {
        guest: String,
        cause: String,
        location: GuestLocation,
        cleanup: Vec<String>,
    },
    #[error("{}", no_target_text(.guest, .ranking))]
    NoTarget {
        guest: String,
        ranking: ferry_core::placement::Ranking,
    },
    #[error("the guest runs on the target, but verification found: {}", .problems.join("; "))]
    VerifyFailed {
        problems: Vec<String>,
        summary: Box<Summary>,
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

fn failure_text(guest: &str, cause: &str, loc: &GuestLocation, cleanup: &[String]) -> String {
    let mut s = format!("migration of {guest} failed: {cause}\n  the guest {loc}");
    for c in cleanup {
        s.push_str("\n  ");
        s.push_str(c);
    }
    s
}

/// A guest's lock in the journal, for one run: given back when dropped.
#[derive(Debug)]
pub struct GuestLock<'j> {
    journal: &'j Journal,
    guest: String,
    pub run: RunId,
}

impl Drop for GuestLock<'_> {
    fn drop(&mut self) {
        let _ = self.journal.unlock_guest(&self.guest, self.run);
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
/// every Ferry process sharing the journal. A live holder refuses ([`MigrateError::Busy`], with
/// its run, pid and machine); a dead one on this machine is taken over, and said.
pub fn lock<'j>(
    journal: &'j Journal,
    guest: &str,
    from: &str,
    to: &str,
    reporter: &mut dyn Reporter,
) -> Result<GuestLock<'j>, MigrateError> {
    let run = journal.begin_run(guest, from, to, "{}")?;
    match journal.lock_guest(guest, run, std::process::id(), &this_machine(), ferry_alive) {
        Ok(taken) => {
            if let Some(h) = taken {
                reporter.report(Event::Note {
                    message: format!(
                        "took over the lock of run #{} (ferry pid {} is gone)",
                        h.run, h.pid
                    ),
                });
            }
            Ok(GuestLock {
                journal,
                guest: guest.to_string(),
                run,
            })
        }
        Err(e @ JournalError::Locked { .. }) => {
            let _ = journal.finish(run, "refused", &e.to_string());
            Err(MigrateError::Busy(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Steps in which the flow only reads the hosts: nothing created, nothing moved, so stopping
/// the process there is a clean stop. From `prepare` on, the flow answers Ctrl-C and the
/// timeout itself, and rolls back.
pub const READ_ONLY_STEPS: [&str; 4] = ["target", "inventory", "preflight", "plan"];

/// What the operator asked for, before a target is chosen.
#[derive(Debug)]
pub struct Ask<'a> {
    pub select: target::SelectRequest<'a>,
    pub options: MigrationOptions,
    pub dry_run: bool,
    /// Move a shut-off guest cold ([`Request::cold`]).
    pub cold: bool,
    pub timeout: Option<Duration>,
    pub started: Instant,
    pub abort_grace: Duration,
}

/// `ferry migrate`: take the guest's lock, choose (or check) the target, migrate there — and a
/// refusal before the flow began still ends the run in the journal.
pub fn migrate(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    ask: &Ask,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Outcome, MigrateError> {
    let s = &ask.select;
    reporter.report(Event::Step {
        step: "target",
        detail: if s.explicit {
            let to = s.candidates.first().map_or("", |c| c.name.as_str());
            format!("checking {to} for {} on {}", s.guest, s.source.name)
        } else {
            format!(
                "ranking {} host(s) for {} on {}",
                s.candidates.len(),
                s.guest,
                s.source.name
            )
        },
    });
    // One guest, one migration: the lock comes before anything else touches the hosts.
    let guard = if ask.dry_run {
        None
    } else {
        let to = match (s.explicit, s.candidates.first()) {
            (true, Some(c)) => c.uri.as_str(),
            _ => "(ranked)",
        };
        Some(lock(journal, &s.guest, &s.source.uri, to, reporter)?)
    };
    let run_id = guard.as_ref().map(|l| l.run);
    let outcome = target::select(hv, s).and_then(|sel| {
        reporter.report(Event::Target(sel.ranking.clone()));
        for w in &sel.warnings {
            reporter.report(Event::Note {
                message: format!("warning: {w}"),
            });
        }
        let Some((target, derived)) = sel.chosen else {
            return Err(MigrateError::NoTarget {
                guest: s.guest.clone(),
                ranking: sel.ranking,
            });
        };
        if let Some(r) = run_id {
            let _ = journal.set_target(r, &target.uri);
        }
        let req = Request {
            guest: s.guest.clone(),
            from: s.source.uri.clone(),
            to: target.uri.clone(),
            to_name: target.name.clone(),
            rules: derived.rules,
            provision: derived.hooked,
            options: target.stream_options(ask.options.clone()),
            dry_run: ask.dry_run,
            cold: ask.cold,
            timeout: ask.timeout,
            started: ask.started,
            run: run_id,
            abort_grace: ask.abort_grace,
        };
        run(hv, journal, &req, reporter, cancel)
    });
    // A refusal before the flow began (no target, a host unread) ends the run in the journal.
    if let (Some(r), Err(e)) = (run_id, &outcome) {
        if journal.outcome(r).ok().flatten().is_none() {
            let _ = journal.finish(r, "refused", &e.to_string());
        }
    }
    outcome
}

/// The whole flow.
pub fn run(
    hv_arc: &Arc<dyn Hypervisor>,
    journal: &Journal,
    req: &Request,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Outcome, MigrateError> {
    let t0 = Instant::now();
    let hv = hv_arc.as_ref();
    reporter.report(Event::Step {
        step: "inventory",
        detail: format!("{} on {}", req.guest, req.from),
    });
    let inv = inventory::read(hv, req)?;
    // Volumes a hook makes come first: their paths go into the plan.
    let mut rules = req.rules.clone();
    let mut run_id: Option<RunId> = req.run;
    let mut provisioned: Vec<prepare::CreatedVolume> = vec![];
    if req.dry_run {
        rules
            .copy
            .extend(req.provision.iter().map(|h| h.placeholder(&req.guest)));
    } else if !req.provision.is_empty() {
        let id = match run_id {
            Some(id) => id,
            None => journal.begin_run(&req.guest, &req.from, &req.to, "{}")?,
        };
        run_id = Some(id);
        journal.set_phase(id, "prepare")?;
        reporter.report(Event::Step {
            step: "prepare",
            detail: format!(
                "{} volume(s) from a hook for {}",
                req.provision.len(),
                req.to_name
            ),
        });
        for h in &req.provision {
            match provision::create(&h.hook, &req.to_name, &req.guest, &h.disk, h.bytes) {
                Ok(path) => {
                    let provider = provision::Provider::Hook {
                        hook: h.hook.clone(),
                        host: req.to_name.clone(),
                    };
                    let json = serde_json::to_string(&provider).ok();
                    if let Err(e) =
                        journal.record_created_by(id, &req.to, &path, h.bytes, json.as_deref())
                    {
                        reporter.report(Event::Note {
                            message: format!("warning: could not journal {path}: {e}"),
                        });
                    }
                    reporter.report(Event::Note {
                        message: format!(
                            "hook {} created {path} ({} bytes) on {} for disk {}",
                            h.hook.name, h.bytes, req.to_name, h.disk
                        ),
                    });
                    rules.copy.push(h.rule(&path));
                    provisioned.push(prepare::CreatedVolume {
                        path,
                        capacity: h.bytes,
                        provider,
                    });
                }
                Err(e) => {
                    let cleanup = rollback::delete_created(hv, journal, id, &inv, &provisioned);
                    let _ = journal.finish(id, "refused", &e.to_string());
                    return Err(MigrateError::Failed {
                        guest: req.guest.clone(),
                        cause: e.to_string(),
                        location: GuestLocation::Source,
                        cleanup,
                    });
                }
            }
        }
    }
    // Facts first: where each disk goes under the rules, then what both hosts say about it;
    // storage slices follow from the answers, so the plan is made once.
    let plan_err = |source| MigrateError::Plan {
        guest: req.guest.clone(),
        source: Box::new(source),
    };
    reporter.report(Event::Step {
        step: "preflight",
        detail: format!("asking {} and {}", req.from, req.to),
    });
    let dests = ferry_core::plan::destinations(&inv.live_xml, &rules).map_err(plan_err)?;
    // In a dry run, no hook has made its volume: nothing to ask the target about those disks.
    let hooked = if req.dry_run {
        req.provision.iter().map(|h| h.disk.clone()).collect()
    } else {
        Default::default()
    };
    let facts = preflight::gather(hv, &inv, &dests, hooked, req.cold)?;
    for (disk, size) in ferry_core::preflight::slices(&dests, &facts) {
        if let Some(c) = rules.copy.iter_mut().find(|c| c.disk == disk) {
            c.slice = Some(size);
        }
    }
    reporter.report(Event::Step {
        step: "plan",
        detail: format!("to {} ({})", req.to, inv.target_facts.hostname),
    });
    let mut plan = ferry_core::plan(
        &inv.live_xml,
        inv.inactive_xml.as_deref(),
        &req.to,
        &rules,
        &req.options,
    )
    .map_err(plan_err)?;
    plan.record_copy_bytes(&ferry_core::preflight::copy_bytes(&plan, &facts));
    let checked = ferry_core::preflight::check(&plan, &facts);
    let plan_json = serde_json::to_string(&plan).unwrap_or_default();
    if !checked.problems.is_empty() {
        if !req.dry_run {
            let run = match run_id {
                Some(id) => id,
                None => journal.begin_run(&req.guest, &req.from, &req.to, &plan_json)?,
            };
            for line in rollback::delete_created(hv, journal, run, &inv, &provisioned) {
                reporter.report(Event::Note { message: line });
            }
            journal.finish(run, "refused", &preflight::render(&checked.problems))?;
        }
        return Err(MigrateError::Refused {
            problems: checked.problems,
        });
    }
    if req.dry_run {
        return Ok(Outcome::DryRun {
            plan: Box::new(plan),
            checks: checked.passed,
        });
    }
    for c in &checked.passed {
        reporter.report(Event::Note { message: c.clone() });
    }

    let run_id = match run_id {
        Some(id) => {
            journal.set_plan(id, &plan_json)?;
            id
        }
        None => journal.begin_run(&req.guest, &req.from, &req.to, &plan_json)?,
    };
    journal.set_phase(run_id, "prepare")?;
    reporter.report(Event::Step {
        step: "prepare",
        detail: format!(
            "{} volume(s) to create on {}",
            checked.to_create.len(),
            req.to
        ),
    });
    let created = match prepare::create(hv, journal, run_id, &inv, &checked.to_create, reporter) {
        Ok(c) => [provisioned, c].concat(),
        Err((e, made)) => {
            let created = [provisioned, made].concat();
            let r = rollback::after_failure(
                hv,
                journal,
                run_id,
                &inv,
                &created,
                &e.to_string(),
                None,
                reporter,
            );
            return Err(r);
        }
    };

    if req.cold {
        return cold::finish(
            hv, journal, run_id, &inv, &plan, &created, req, reporter, t0,
        );
    }

    // From here on the journal is a record, not a gate: a failing write must not turn a
    // migration's true outcome into a false one.
    let _ = journal.set_phase(run_id, "migrate");
    reporter.report(Event::Step {
        step: "migrate",
        detail: format!(
            "live, copying {}",
            if plan.migrate_disks.is_empty() {
                "no disk".to_string()
            } else {
                plan.migrate_disks.join(", ")
            }
        ),
    });
    let job = migrate::execute(hv_arc, &inv, &plan, req, reporter, cancel);
    let (last, result) = (job.last_sample, job.result);
    if let Err(cause) = result {
        // Where is the guest now? The truth decides what happens next.
        let mut loc = rollback::locate(hv, &inv);
        if loc == GuestLocation::PostcopySplit && !job.unfinished {
            // Each side holds part of the guest: finishing the post-copy is the only way on.
            reporter.report(Event::Note {
                message: format!("the post-copy failed ({cause}): resuming it (POSTCOPY_RESUME)"),
            });
            match migrate::resume_postcopy(hv_arc, &inv, &plan, migrate::RESUME_WAIT) {
                Ok(()) => {
                    reporter.report(Event::Note {
                        message: "the post-copy resumed and completed".into(),
                    });
                    loc = rollback::locate(hv, &inv);
                }
                Err(e) => reporter.report(Event::Note {
                    message: format!("the post-copy could not be resumed: {e}"),
                }),
            }
        }
        if loc != GuestLocation::Target || job.unfinished {
            let keep = job.unfinished.then_some("libvirt's job has not ended");
            return Err(rollback::after_failure(
                hv, journal, run_id, &inv, &created, &cause, keep, reporter,
            ));
        }
        reporter.report(Event::Note {
            message: format!(
                "libvirt reported an error ({cause}), but the guest runs on {}: verifying",
                req.to
            ),
        });
    }

    let _ = journal.set_phase(run_id, "verify");
    reporter.report(Event::Step {
        step: "verify",
        detail: format!("{} on {}", req.guest, req.to),
    });
    let completed = hv
        .completed_job_stats(inv.src, &req.guest)
        .ok()
        .flatten()
        .filter(|s| s.time_elapsed_ms.is_some())
        .or_else(|| hv.completed_job_stats(inv.dst, &req.guest).ok().flatten());
    let v = verify::check(hv, &inv, &plan);
    let mut summary = summarise(req, &plan, &created, completed, last.as_ref(), t0);
    summary.run = Some(run_id.0);
    summary.verified = v.passed;
    summary.warnings = plan.warnings.clone();
    if !v.problems.is_empty() {
        let _ = journal.finish(
            run_id,
            "migrated",
            &format!("verify: {}", v.problems.join("; ")),
        );
        return Err(MigrateError::VerifyFailed {
            problems: v.problems,
            summary: Box::new(summary),
        });
    }
    let _ = journal.finish(run_id, "migrated", "verified");
    Ok(Outcome::Migrated(Box::new(summary)))
}

fn summarise(
    req: &Request,
    plan: &Plan,
    created: &[prepare::CreatedVolume],
    completed: Option<JobStats>,
    last: Option<&JobStats>,
    t0: Instant,
) -> Summary {
    let c = completed.unwrap_or_default();
    let l = last.cloned().unwrap_or_default();
    Summary {
        run: None,
        guest: req.guest.clone(),
        from: req.from.clone(),
        to: req.to.clone(),
        total_ms: t0.elapsed().as_millis() as u64,
        job_ms: c.time_elapsed_ms.or(l.time_elapsed_ms),
        downtime_ms: c.downtime_ms,
        setup_ms: c.setup_time_ms,
        disk_bytes: c
            .disk_processed
            .filter(|d| *d > 0)
            .or(l.disk_processed)
            .or((!plan.migrate_disks.is_empty()).then_some(0)),
        memory_bytes: c.mem_processed.or(l.mem_processed),
        data_bytes: c.data_processed.or(l.data_processed),
        copied_disks: plan.migrate_disks.clone(),
        created: created.iter().map(|v| v.path.clone()).collect(),
        verified: vec![],
        warnings: vec![],
    }
}

#[cfg(test)]
mod tests;
