//! The flow, as phases over one run: **target → inventory → (hook volumes) → preflight → plan →
//! prepare → migrate (or a cold copy) → verify**, with rollback on failure. Every front end
//! (the CLI, a daemon) drives it through [`migrate`] (or [`run`], once a target is chosen).
//!
//! The steps that only read the hosts run on a thread of their own and are waited for while
//! nothing stops them: Ctrl-C (`cancel`), `--timeout`, or a connection that has not opened
//! within the connect timeout end the run at once ([`MigrateError::Stopped`]), naming the host
//! it waits on — libvirt's calls cannot be interrupted, and a silent host would hold them for
//! good. From `prepare` on, the flow answers the same reasons itself, and rolls back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::facts::MigrationFacts;
use ferry_core::preflight::Checked;
use ferry_core::{MigrationOptions, Plan, Rules};
use ferry_hypervisor::wait::{self, NoAnswer};
use ferry_hypervisor::{Hypervisor, JobStats, PathProbe};
use ferry_journal::{Journal, JournalError, RunId, RunOutcome};
use serde::Serialize;

use crate::inventory::GuestOnHosts;
use crate::prepare::CreatedVolume;
use crate::preseed;
use crate::{
    cold, inventory, lock, migrate as job, preflight, prepare, provision, rollback, target, verify,
    Cause, Event, GuestLocation, MigrateError, Outcome, Reporter, Step, Summary,
};

/// A run whose target is chosen: what to migrate, where, under which rules. The flow's own:
/// a front end asks with an [`Ask`].
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
    /// How long a libvirt connection may take to open while the flow only reads: past it, the
    /// run stops, naming the host.
    pub connect_timeout: Duration,
}

/// The default [`Request::abort_grace`].
pub const ABORT_GRACE: Duration = Duration::from_secs(60);

/// What the operator asked for, before a target is chosen: the one request a front end (the
/// CLI, a daemon) makes of the flow, through [`migrate`].
#[derive(Debug)]
pub struct Ask {
    pub select: target::SelectRequest,
    pub options: MigrationOptions,
    pub dry_run: bool,
    /// Move a shut-off guest cold ([`Request::cold`]).
    pub cold: bool,
    pub timeout: Option<Duration>,
    pub started: Instant,
    pub abort_grace: Duration,
}

/// Why a step that only reads the hosts was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// Ctrl-C, or `ferry abort` from another process.
    Cancelled,
    /// The run's `--timeout` passed.
    TimedOut { after_s: u64 },
    /// A libvirt connection did not open within the connect timeout.
    NoAnswer { within_s: u64 },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled by the operator (Ctrl-C or ferry abort)"),
            Self::TimedOut { after_s } => write!(f, "timed out after {after_s} s (--timeout)"),
            Self::NoAnswer { within_s } => write!(
                f,
                "a libvirt connection did not open within {within_s} s (--connect-timeout)"
            ),
        }
    }
}

/// How often a read-only step's (and a throttled relay's) stop reasons are looked at.
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(100);

/// Whether to stop now: the operator, the run's timeout, a connection that does not open.
fn stop_reason(
    hv: &dyn Hypervisor,
    cancel: &AtomicBool,
    timeout: Option<Duration>,
    started: Instant,
    connect_timeout: Duration,
) -> Option<StopReason> {
    if cancel.load(Ordering::SeqCst) {
        return Some(StopReason::Cancelled);
    }
    if let Some(t) = timeout.filter(|t| started.elapsed() > *t) {
        return Some(StopReason::TimedOut {
            after_s: t.as_secs(),
        });
    }
    hv.waiting_on()
        .iter()
        .any(|(_, w)| *w > connect_timeout)
        .then_some(StopReason::NoAnswer {
            within_s: connect_timeout.as_secs(),
        })
}

/// Run a step that only reads the hosts on a thread of its own, and wait for it while nothing
/// stops the run.
fn read_only<T: Send + 'static>(
    hv: &dyn Hypervisor,
    step: Step,
    stop: impl FnMut() -> Option<StopReason>,
    f: impl FnOnce() -> Result<T, MigrateError> + Send + 'static,
) -> Result<T, MigrateError> {
    let pending = wait::spawn(&format!("ferry-{step}"), f);
    match pending.wait_while(wait::deadline_in(Duration::MAX), STOP_CHECK, stop) {
        Ok(r) => r,
        Err(NoAnswer::Stopped(reason)) => Err(MigrateError::Stopped {
            step,
            reason,
            waiting_on: hv.waiting_on().into_iter().map(|(u, _)| u).collect(),
        }),
        Err(NoAnswer::Late) => Err(MigrateError::StepThread {
            step,
            why: "no answer".into(),
        }),
        Err(NoAnswer::Failed(why)) => Err(MigrateError::StepThread { step, why }),
    }
}

/// Enter a step: the run's phase in the journal (from `prepare` on, when there is a run), then
/// the event. A journal that cannot be written is the caller's to judge: a gate before
/// anything is created, a record after.
pub(crate) fn enter(
    journal: &Journal,
    run: Option<RunId>,
    reporter: &mut dyn Reporter,
    step: Step,
    detail: String,
) -> Result<(), JournalError> {
    let written = match run {
        Some(r) if !step.is_read_only() => journal.set_phase(r, step.phase()),
        _ => Ok(()),
    };
    reporter.report(Event::Step { step, detail });
    written
}

/// `ferry migrate`: take the guest's lock, choose (or check) the target, migrate there — and a
/// refusal before the flow acted still ends the run in the journal.
pub fn migrate(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    ask: &Ask,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Outcome, MigrateError> {
    let s = &ask.select;
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
    if let Some(run) = run_id {
        reporter.report(Event::Run { run });
    }
    reporter.report(Event::Step {
        step: Step::Target,
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
    let outcome = choose(hv, journal, run_id, ask, reporter, cancel).and_then(|sel| {
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
            connect_timeout: s.answer_deadline,
        };
        run(hv, journal, &req, reporter, cancel)
    });
    // An error before the flow acted on a host (no target, a host unread, stopped while
    // reading) ends the run here; the flow journals every later end itself, and a failed
    // post-copy's run stays open for `ferry recover`.
    if let (Some(r), Err(e)) = (run_id, &outcome) {
        if e.before_acting() && journal.outcome(r).ok().flatten().is_none() {
            let _ = journal.finish(r, RunOutcome::Refused, &crate::error_chain(e));
        }
    }
    outcome
}

/// The target step: every candidate read and ranked (or the one named checked).
fn choose(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    run: Option<RunId>,
    ask: &Ask,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> Result<target::Selection, MigrateError> {
    let (hv2, mut select) = (hv.clone(), ask.select.clone());
    // A host being evacuated is draining: never a target.
    let draining = crate::evacuate::draining(journal, crate::ferry_alive)?;
    crate::evacuate::mark_draining(&mut select.candidates, &draining);
    // Every instance's migrations to or from a candidate weigh on its rank.
    let load = crate::lease::migrations_by_host(journal, run)?;
    for c in &mut select.candidates {
        c.journal_migrations = load.get(&c.uri).copied().unwrap_or(0);
    }
    let stop = || {
        stop_reason(
            hv.as_ref(),
            cancel,
            ask.timeout,
            ask.started,
            ask.select.answer_deadline,
        )
    };
    let sel = read_only(hv.as_ref(), Step::Target, stop, move || {
        target::select(&hv2, &select)
    })?;
    reporter.report(Event::Target(sel.ranking.clone()));
    for w in &sel.warnings {
        reporter.report(Event::Note {
            message: format!("warning: {w}"),
        });
    }
    Ok(sel)
}

/// The whole flow, to a chosen target.
pub fn run(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    req: &Request,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Outcome, MigrateError> {
    let mut flow = Flow {
        hv,
        journal,
        req,
        reporter,
        cancel,
        run: req.run,
        t0: Instant::now(),
    };
    let mut inv = flow.inventory()?;
    let resume = preseed::adopt(&mut inv, req.options.preseed.is_some())?;
    let (rules, provisioned) = flow.provision(&inv)?;
    let (mut plan, mut checked) = flow.plan(&inv, rules, &provisioned)?;
    if let Some(pre) = plan.options.preseed.clone() {
        let copy_bytes = plan.copy_bytes().unwrap_or(0);
        // The default asks the hosts nothing for a migration it would not pre-seed anyway.
        let small = resume.is_none() && pre.auto_from.is_some_and(|from| copy_bytes < from);
        let problems = if small {
            vec![]
        } else {
            flow.preseed_problems(&inv, &plan, &pre)?
        };
        match pre.auto_from {
            None => checked.problems.extend(problems),
            // Taking over an earlier run's frozen disks: pre-seeding goes on.
            Some(_) if resume.is_some() => {}
            // The default: pre-seed where it wins, else migrate as usual, and say which.
            Some(from) => match ferry_core::preseed::auto_declines(copy_bytes, from, &problems) {
                Some(why) => {
                    plan.options.preseed = None;
                    checked
                        .passed
                        .push(format!("pre-seeding: not used ({why})"));
                }
                None => checked.passed.push(format!(
                    "pre-seeding: used, {copy_bytes} bytes of copied disks (from {from} on by \
                     default; --no-preseed copies inside the job)"
                )),
            },
        }
    }
    if !checked.problems.is_empty() {
        return Err(flow.refuse(&inv, &plan, checked, &provisioned));
    }
    if req.dry_run {
        return Ok(Outcome::DryRun {
            plan: Box::new(plan),
            checks: checked.passed,
        });
    }
    for c in &checked.passed {
        flow.note(c.clone());
    }
    let run = flow.record_plan(&plan)?;
    let mut created = flow.prepare(run, &inv, &checked, provisioned)?;
    let mut ctx = Ctx {
        hv: flow.hv,
        journal,
        run,
        inv: &inv,
        reporter: &mut *flow.reporter,
    };
    if req.cold {
        return cold::finish(&mut ctx, &plan, &created, req, flow.t0);
    }
    let Some(pre) = &plan.options.preseed else {
        let last = live(&mut ctx, &plan, &created, req, cancel)?;
        return verify_run(&mut ctx, &plan, &created, req, last.as_ref(), flow.t0);
    };
    // Pre-seeded: the live phase runs the staged plan (each copied disk on an overlay); the
    // guest ends on the plan's own definition once the overlays are committed.
    let seeded = preseed::before_live(
        &mut ctx,
        &plan,
        &mut created,
        req,
        pre,
        resume.as_ref(),
        cancel,
    )?;
    let last = match live(&mut ctx, &seeded.plan, &created, req, cancel) {
        Ok(l) => l,
        Err(e) => return Err(preseed::after_live_failure(&mut ctx, &seeded, e)),
    };
    if let Err(e) = preseed::collapse(&mut ctx, &seeded, &plan, &mut created) {
        ctx.note(format!(
            "the overlays could not be committed on {}: {}",
            req.to,
            crate::error_chain(&e)
        ));
    }
    let mut out = verify_run(&mut ctx, &plan, &created, req, last.as_ref(), flow.t0);
    match &mut out {
        Ok(Outcome::Migrated(s)) => s.seeded = seeded.progress,
        Err(MigrateError::VerifyFailed { summary, .. }) => summary.seeded = seeded.progress,
        _ => {}
    }
    out
}

/// The flow before its run has acted: what the steps up to the plan need.
struct Flow<'a> {
    hv: &'a Arc<dyn Hypervisor>,
    journal: &'a Journal,
    req: &'a Request,
    reporter: &'a mut dyn Reporter,
    cancel: &'a AtomicBool,
    /// The journal's run, once there is one (a dry run has none).
    run: Option<RunId>,
    t0: Instant,
}

impl Flow<'_> {
    fn enter(&mut self, step: Step, detail: String) -> Result<(), JournalError> {
        enter(self.journal, self.run, self.reporter, step, detail)
    }

    fn note(&mut self, message: String) {
        self.reporter.report(Event::Note { message });
    }

    fn stop(&self) -> impl FnMut() -> Option<StopReason> + use<'_> {
        let (hv, cancel, req) = (self.hv.as_ref(), self.cancel, self.req);
        move || stop_reason(hv, cancel, req.timeout, req.started, req.connect_timeout)
    }

    /// Everything that refuses `--preseed` for this plan: the disks, a cold move, the store
    /// on both hosts (read only when the disks allow it).
    fn preseed_problems(
        &mut self,
        inv: &GuestOnHosts,
        plan: &Plan,
        pre: &ferry_core::preseed::Preseed,
    ) -> Result<Vec<ferry_core::preflight::Problem>, MigrateError> {
        let req = self.req;
        let mut problems = ferry_core::preseed::problems(&inv.live_xml, plan, req.cold, &req.from);
        if problems.is_empty() {
            let stores = self.store_facts(inv, &pre.store)?;
            problems.extend(ferry_core::preseed::store_problems(
                &pre.store,
                &[(req.from.as_str(), &stores.0), (req.to.as_str(), &stores.1)],
                plan.copy_bytes().unwrap_or(0),
            ));
        }
        Ok(problems)
    }

    /// What the pre-seed store is on the source and on the target (read like every preflight
    /// fact: stopped by Ctrl-C, the timeout, a silent host).
    fn store_facts(
        &mut self,
        inv: &GuestOnHosts,
        store: &str,
    ) -> Result<(PathProbe, PathProbe), MigrateError> {
        let (hv, src, dst) = (self.hv.clone(), inv.src, inv.dst);
        let probe = format!("{}/.ferry-store-probe", store.trim_end_matches('/'));
        read_only(self.hv.as_ref(), Step::Preflight, self.stop(), move || {
            Ok((hv.probe_path(src, &probe)?, hv.probe_path(dst, &probe)?))
        })
    }

    /// The journal's run, begun now if the caller began none.
    fn ensure_run(&mut self, plan_json: &str) -> Result<RunId, JournalError> {
        if let Some(r) = self.run {
            return Ok(r);
        }
        let r = self
            .journal
            .begin_run(&self.req.guest, &self.req.from, &self.req.to, plan_json)?;
        self.run = Some(r);
        Ok(r)
    }

    /// Connect to both hosts and read the guest.
    fn inventory(&mut self) -> Result<GuestOnHosts, MigrateError> {
        self.enter(
            Step::Inventory,
            format!("{} on {}", self.req.guest, self.req.from),
        )?;
        let (hv, req) = (self.hv.clone(), self.req.clone());
        read_only(self.hv.as_ref(), Step::Inventory, self.stop(), move || {
            inventory::read(hv.as_ref(), &req).map_err(MigrateError::from)
        })
    }

    /// Volumes a hook makes come first: their paths go into the plan. A dry run makes none
    /// (its plan shows where each will go).
    fn provision(
        &mut self,
        inv: &GuestOnHosts,
    ) -> Result<(Rules, Vec<CreatedVolume>), MigrateError> {
        let req = self.req;
        let mut rules = req.rules.clone();
        let mut made: Vec<CreatedVolume> = vec![];
        if req.dry_run {
            rules
                .copy
                .extend(req.provision.iter().map(|h| h.placeholder(&req.guest)));
            return Ok((rules, made));
        }
        if req.provision.is_empty() {
            return Ok((rules, made));
        }
        let run = self.ensure_run("{}")?;
        self.enter(
            Step::Prepare,
            format!(
                "{} volume(s) from a hook for {}",
                req.provision.len(),
                req.to_name
            ),
        )?;
        for h in &req.provision {
            match provision::create(&h.hook, &req.to_name, &req.guest, &h.disk, h.bytes) {
                Ok(path) => {
                    let provider = provision::Provider::Hook {
                        hook: h.hook.clone(),
                        host: req.to_name.clone(),
                    };
                    let json = serde_json::to_string(&provider).ok();
                    if let Err(e) = self.journal.record_created_by(
                        run,
                        &req.to,
                        &path,
                        h.bytes,
                        json.as_deref(),
                    ) {
                        self.note(format!("warning: could not journal {path}: {e}"));
                    }
                    self.note(format!(
                        "hook {} created {path} ({} bytes) on {} for disk {}",
                        h.hook.name, h.bytes, req.to_name, h.disk
                    ));
                    rules.copy.push(h.rule(&path));
                    made.push(CreatedVolume {
                        path,
                        capacity: h.bytes,
                        provider,
                    });
                }
                Err(e) => {
                    let ctx = Ctx {
                        hv: self.hv,
                        journal: self.journal,
                        run,
                        inv,
                        reporter: &mut *self.reporter,
                    };
                    let cleanup = rollback::delete_created(&ctx, &made);
                    let _ = self
                        .journal
                        .finish(run, RunOutcome::Refused, &crate::error_chain(&e));
                    return Err(MigrateError::Failed {
                        guest: req.guest.clone(),
                        cause: Box::new(Cause::Hook(e)),
                        location: GuestLocation::Source,
                        cleanup,
                    });
                }
            }
        }
        Ok((rules, made))
    }

    /// Facts first — where each disk goes under the rules, then what both hosts say about it;
    /// storage slices follow from the answers — then the plan, made once, and its checks.
    fn plan(
        &mut self,
        inv: &GuestOnHosts,
        mut rules: Rules,
        provisioned: &[CreatedVolume],
    ) -> Result<(Plan, Checked), MigrateError> {
        let req = self.req;
        let plan_err = |source| MigrateError::Plan {
            guest: req.guest.clone(),
            source: Box::new(source),
        };
        self.enter(
            Step::Preflight,
            format!("asking {} and {}", req.from, req.to),
        )?;
        let dests = ferry_core::plan::destinations(&inv.live_xml, &rules).map_err(plan_err)?;
        // In a dry run, no hook has made its volume: nothing to ask the target about those.
        let hooked: std::collections::BTreeSet<String> = if req.dry_run {
            req.provision.iter().map(|h| h.disk.clone()).collect()
        } else {
            Default::default()
        };
        let facts = self.preflight_facts(inv, &dests, hooked, provisioned.is_empty())?;
        for (disk, size) in ferry_core::preflight::slices(&dests, &facts) {
            if let Some(c) = rules.copy.iter_mut().find(|c| c.disk == disk) {
                c.slice = Some(size);
            }
        }
        self.enter(
            Step::Plan,
            format!("to {} ({})", req.to, inv.target_facts.hostname),
        )?;
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
        Ok((plan, checked))
    }

    /// The facts preflight decides from. Stopped like any read while nothing was created; once
    /// a hook has made a volume, the flow must get to its end (and roll back), so it waits.
    fn preflight_facts(
        &mut self,
        inv: &GuestOnHosts,
        dests: &[ferry_core::plan::Destination],
        hooked: std::collections::BTreeSet<String>,
        nothing_made: bool,
    ) -> Result<MigrationFacts, MigrateError> {
        let cold = self.req.cold;
        if !nothing_made {
            return Ok(preflight::gather(
                self.hv.as_ref(),
                inv,
                dests,
                hooked,
                cold,
            )?);
        }
        let (hv, inv, dests) = (self.hv.clone(), inv.clone(), dests.to_vec());
        read_only(self.hv.as_ref(), Step::Preflight, self.stop(), move || {
            preflight::gather(hv.as_ref(), &inv, &dests, hooked, cold).map_err(MigrateError::from)
        })
    }

    /// The checks found problems: give back what a hook made, end the run, say every problem.
    fn refuse(
        &mut self,
        inv: &GuestOnHosts,
        plan: &Plan,
        checked: Checked,
        provisioned: &[CreatedVolume],
    ) -> MigrateError {
        if !self.req.dry_run {
            let plan_json = serde_json::to_string(plan).unwrap_or_default();
            match self.ensure_run(&plan_json) {
                Ok(run) => {
                    let ctx = Ctx {
                        hv: self.hv,
                        journal: self.journal,
                        run,
                        inv,
                        reporter: &mut *self.reporter,
                    };
                    for done in rollback::delete_created(&ctx, provisioned) {
                        self.note(done.to_string());
                    }
                    if let Err(e) = self.journal.finish(
                        run,
                        RunOutcome::Refused,
                        &preflight::render(&checked.problems),
                    ) {
                        return e.into();
                    }
                }
                Err(e) => return e.into(),
            }
        }
        MigrateError::Refused {
            problems: checked.problems,
        }
    }

    /// The plan the run will carry out, in the journal before anything is created.
    fn record_plan(&mut self, plan: &Plan) -> Result<RunId, MigrateError> {
        let plan_json = serde_json::to_string(plan).unwrap_or_default();
        match self.run {
            Some(id) => {
                self.journal.set_plan(id, &plan_json)?;
                Ok(id)
            }
            None => Ok(self.ensure_run(&plan_json)?),
        }
    }

    /// Create the copy targets the target lacks; a failure rolls back what was made.
    fn prepare(
        &mut self,
        run: RunId,
        inv: &GuestOnHosts,
        checked: &Checked,
        provisioned: Vec<CreatedVolume>,
    ) -> Result<Vec<CreatedVolume>, MigrateError> {
        self.enter(
            Step::Prepare,
            format!(
                "{} volume(s) to create on {}",
                checked.to_create.len(),
                self.req.to
            ),
        )?;
        let mut ctx = Ctx {
            hv: self.hv,
            journal: self.journal,
            run,
            inv,
            reporter: &mut *self.reporter,
        };
        match prepare::create(&mut ctx, &checked.to_create) {
            Ok(c) => Ok([provisioned, c].concat()),
            Err((e, made)) => {
                let created = [provisioned, made].concat();
                Err(rollback::after_failure(&mut ctx, &created, e.into(), false))
            }
        }
    }
}

/// A run under way: its journal run and the hosts read. What the phases from `prepare` on act
/// with.
pub(crate) struct Ctx<'a> {
    pub hv: &'a Arc<dyn Hypervisor>,
    pub journal: &'a Journal,
    pub run: RunId,
    pub inv: &'a GuestOnHosts,
    pub reporter: &'a mut dyn Reporter,
}

impl Ctx<'_> {
    /// Enter a step; from here on the journal is a record, not a gate: a failing write must
    /// not turn a migration's true outcome into a false one.
    pub fn enter(&mut self, step: Step, detail: String) {
        let _ = enter(self.journal, Some(self.run), self.reporter, step, detail);
    }

    pub fn note(&mut self, message: String) {
        self.reporter.report(Event::Note { message });
    }
    /// Fencing: the error to end with, once another Ferry took this run's guest over (this
    /// process's lease was lost): from then on the run touches nothing.
    pub fn fenced(&self) -> Option<MigrateError> {
        crate::lease::lost(self.journal, self.run).map(|lost| MigrateError::LeaseLost {
            run: self.run,
            guest: self.inv.guest.clone(),
            lost: Box::new(lost),
        })
    }
}

/// The live migration: libvirt's job, watched; on failure, where the guest is decides what
/// follows. `Ok`: the guest runs on the target (the last progress sample with it).
fn live(
    ctx: &mut Ctx,
    plan: &Plan,
    created: &[CreatedVolume],
    req: &Request,
    cancel: &AtomicBool,
) -> Result<Option<JobStats>, MigrateError> {
    ctx.enter(
        Step::Migrate,
        format!(
            "live, copying {}",
            if plan.migrate_disks.is_empty() {
                "no disk".to_string()
            } else {
                plan.migrate_disks.join(", ")
            }
        ),
    );
    let j = job::execute(ctx.hv, ctx.inv, plan, req, &mut *ctx.reporter, cancel);
    let Err(cause) = j.result else {
        return Ok(j.last_sample);
    };
    // Where is the guest now? The truth decides what happens next.
    let mut loc = rollback::locate(ctx.hv.as_ref(), ctx.inv);
    if loc == GuestLocation::PostcopySplit && !j.unfinished {
        // Each side holds part of the guest: finishing the post-copy is the only way on.
        ctx.note(format!(
            "the post-copy failed ({}): resuming it (POSTCOPY_RESUME)",
            crate::error_chain(&cause)
        ));
        match job::resume_postcopy(ctx.hv, ctx.inv, plan, job::RESUME_WAIT) {
            Ok(()) => {
                ctx.note("the post-copy resumed and completed".into());
                loc = rollback::locate(ctx.hv.as_ref(), ctx.inv);
            }
            Err(e) => ctx.note(format!(
                "the post-copy could not be resumed: {}",
                crate::error_chain(&e)
            )),
        }
    }
    if loc != GuestLocation::Target || j.unfinished {
        return Err(rollback::after_failure(ctx, created, cause, j.unfinished));
    }
    ctx.note(format!(
        "libvirt reported an error ({}), but the guest runs on {}: verifying",
        crate::error_chain(&cause),
        req.to
    ));
    Ok(j.last_sample)
}

/// The guest runs on the target: check it there, sum up, and end the run — `migrated` only
/// when verification found everything as planned.
fn verify_run(
    ctx: &mut Ctx,
    plan: &Plan,
    created: &[CreatedVolume],
    req: &Request,
    last: Option<&JobStats>,
    t0: Instant,
) -> Result<Outcome, MigrateError> {
    // Fencing: another Ferry took the guest over; its `recover` verifies and ends the run.
    if let Some(e) = ctx.fenced() {
        return Err(e);
    }
    ctx.enter(Step::Verify, format!("{} on {}", req.guest, req.to));
    let (hv, inv) = (ctx.hv.as_ref(), ctx.inv);
    let completed = hv
        .completed_job_stats(inv.src, &req.guest)
        .ok()
        .flatten()
        .filter(|s| s.time_elapsed_ms.is_some())
        .or_else(|| hv.completed_job_stats(inv.dst, &req.guest).ok().flatten());
    let v = verify::check(hv, inv, plan);
    let mut summary = summarise(req, plan, created, completed, last, t0);
    summary.run = Some(ctx.run);
    summary.verified = v.passed;
    summary.warnings = plan.warnings.clone();
    if !v.problems.is_empty() {
        // The guest runs on the target, but its place or disks are not as planned: never
        // "migrated", so nothing of the source can be released.
        let _ = ctx.journal.finish(
            ctx.run,
            RunOutcome::MigratedUnverified,
            &format!("verify: {}", crate::problems_text(&v.problems)),
        );
        return Err(MigrateError::VerifyFailed {
            problems: v.problems,
            summary: Box::new(summary),
        });
    }
    let _ = ctx
        .journal
        .finish(ctx.run, RunOutcome::Migrated, "verified");
    Ok(Outcome::Migrated(Box::new(summary)))
}

fn summarise(
    req: &Request,
    plan: &Plan,
    created: &[CreatedVolume],
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
        seeded: vec![],
    }
}
