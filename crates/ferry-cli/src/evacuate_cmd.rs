//! `ferry evacuate`: every running guest off a host, with a live view and a final table.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_core::evacuate::{Budgets, Policy};
use ferry_core::render::human_bytes;
use ferry_journal::Journal;
use ferry_migrate::evacuate::{
    self, EvacEvent, EvacPlan, EvacReporter, EvacuateAsk, GuestOutcome, GuestResult,
};
use ferry_migrate::target::HostSpec;
use ferry_migrate::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::args::{EvacuateArgs, Schedule};

fn secs(v: u64) -> String {
    crate::migrate_cmd::ms(Some(v))
}

/// The plan for a person: each guest's target and what moves, then the model's schedule.
pub(crate) fn print_plan(p: &EvacPlan) {
    let src = &p.hosts[0].name;
    outln!(
        "Evacuating {src}: {} running guest(s) to move, {} cannot be placed, {} shut off \
         (listed, not moved). Read the hosts and decided in {}.",
        p.moves.len(),
        p.unplaced.len(),
        p.shut_off.len(),
        secs(p.planning_ms)
    );
    if !p.moves.is_empty() {
        outln!("\n| guest | to | then | memory | disk copied | predicted start | end |");
        outln!("|---|---|---|---|---|---|---|");
        let mut rows: Vec<usize> = (0..p.moves.len()).collect();
        rows.sort_by(|&a, &b| p.predicted.spans[a].0.total_cmp(&p.predicted.spans[b].0));
        for i in rows {
            let m = &p.moves[i];
            let (s, e) = p.predicted.spans[i];
            let then: Vec<&str> = m
                .fallback
                .iter()
                .map(|&h| p.hosts[h].name.as_str())
                .collect();
            outln!(
                "| {} | {} | {} | {} | {} | {s:.0} s | {e:.0} s |",
                m.guest,
                p.hosts[m.to].name,
                if then.is_empty() {
                    "-".into()
                } else {
                    then.join(", ")
                },
                human_bytes(m.memory),
                human_bytes(m.disk),
            );
        }
        outln!(
            "\nPredicted makespan {:.0} s; lower bound {:.0} s (the busiest link's bytes over its \
             bandwidth, or the longest migration){}.",
            p.predicted.makespan_s,
            p.bound_s,
            if p.bandwidth_known {
                String::new()
            } else {
                format!(
                    "; links not known, modelled at {} /s and not capped (give \
                     --link-bandwidth or the inventory's link_bandwidth)",
                    human_bytes(evacuate::DEFAULT_LINK_BPS as u64)
                )
            }
        );
    }
    for (g, why) in &p.unplaced {
        outln!("cannot place {g}: {why}");
    }
    for g in &p.shut_off {
        outln!("shut off, not moved (--offline moves it cold): {g}");
    }
    for m in p.moves.iter().filter(|m| m.cold) {
        outln!(
            "shut off, moved cold: {} -> {}",
            m.guest,
            p.hosts[m.to].name
        );
    }
}

/// The live view on a terminal: a line per running migration, and an overall bar.
struct Live {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: BTreeMap<String, ProgressBar>,
    tty: bool,
    last: BTreeMap<String, Instant>,
    moved: BTreeMap<String, u64>,
    total_bytes: u64,
    started: Instant,
    predicted_s: f64,
    done: u64,
}

impl Live {
    fn new(p: &EvacPlan) -> Self {
        let multi = MultiProgress::new();
        let tty = std::io::stderr().is_terminal();
        if !tty {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let overall = multi.add(ProgressBar::new(p.moves.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} guests  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Live {
            multi,
            overall,
            bars: BTreeMap::new(),
            tty,
            last: BTreeMap::new(),
            moved: BTreeMap::new(),
            total_bytes: p.moves.iter().map(|m| m.bytes()).sum(),
            started: Instant::now(),
            predicted_s: p.predicted.makespan_s,
            done: 0,
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            self.multi.suspend(|| eprintln!("{text}"));
        } else {
            eprintln!("{text}");
        }
    }

    fn overall_msg(&self) {
        let moved: u64 = self.moved.values().sum();
        let left = (self.predicted_s - self.started.elapsed().as_secs_f64()).max(0.0);
        self.overall.set_message(format!(
            "{} / {} moved  forecast end in ~{left:.0} s",
            human_bytes(moved),
            human_bytes(self.total_bytes)
        ));
    }
}

impl EvacReporter for Live {
    fn report(&mut self, e: EvacEvent) {
        match e {
            EvacEvent::Started {
                guest,
                to,
                attempt,
                bandwidth_mib,
            } => {
                let cap = bandwidth_mib.map_or(String::new(), |m| format!(" at {m} MiB/s"));
                let again = if attempt > 1 { " (retry)" } else { "" };
                self.line(format!("==> {guest} -> {to}{again}{cap}"));
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix:<16} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(guest.clone());
                bar.set_message(format!("-> {to}: starting"));
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bars.insert(guest, bar);
            }
            EvacEvent::Migration { guest, inner } => {
                let text = match &inner {
                    Event::Step { step, detail } => format!("{step}: {detail}"),
                    Event::Job(p) => {
                        self.moved
                            .insert(guest.clone(), p.disk_processed + p.mem_processed);
                        self.overall_msg();
                        let mut s = format!("{} {}/s", p.phase, human_bytes(p.rate_bps));
                        if let Some(eta) = p.eta_s {
                            s.push_str(&format!(" ETA {eta} s"));
                        }
                        s
                    }
                    Event::Note { message } => message.clone(),
                    Event::Seed(p) => crate::migrate_cmd::seed_line(p),
                    Event::Target(_) | Event::Run { .. } => return,
                };
                if let Some(b) = self.bars.get(&guest) {
                    b.set_message(text.clone());
                }
                let due = self
                    .last
                    .get(&guest)
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                if !self.tty && (due || !matches!(inner, Event::Job(_))) {
                    eprintln!("    {guest}: {text}");
                    self.last.insert(guest, Instant::now());
                }
            }
            EvacEvent::Bandwidth { guest, mib } => {
                self.line(format!(
                    "    {guest}: bandwidth now {mib} MiB/s (its link's share)"
                ));
            }
            EvacEvent::Ended(r) => {
                if let Some(b) = self.bars.remove(&r.guest) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                if r.outcome == GuestOutcome::Migrated {
                    self.done += 1;
                    self.overall.set_position(self.done);
                    self.moved.insert(r.guest.clone(), r.bytes.unwrap_or(0));
                }
                self.overall_msg();
                let how = match r.outcome {
                    GuestOutcome::Migrated => format!(
                        "migrated to {} in {}, downtime {}",
                        r.target.as_deref().unwrap_or("?"),
                        secs(r.duration_ms),
                        r.downtime_ms.map_or("unknown".into(), secs)
                    ),
                    _ => format!(
                        "FAILED on {}: {}",
                        r.target.as_deref().unwrap_or("?"),
                        r.message.as_deref().unwrap_or("")
                    ),
                };
                self.line(format!("<== {}: {how}", r.guest));
            }
            EvacEvent::Stopping { message } => self.line(format!("ferry: {message}")),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for b in self.bars.values() {
            b.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

struct JsonLines;

impl EvacReporter for JsonLines {
    fn report(&mut self, e: EvacEvent) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &e);
        let _ = writeln!(out);
    }
}

/// The plan, as JSON or for a person.
pub(crate) fn show_plan(json: bool, plan: &EvacPlan) {
    if json {
        outln!("{}", serde_json::json!({"event": "plan", "plan": plan}));
    } else {
        print_plan(plan);
    }
}

/// A dry run's last line; success when the plan empties the host (a guest no host can take
/// stays: the host would not be emptied).
pub(crate) fn dry_run_end(json: bool, plan: &EvacPlan) -> ExitCode {
    if json {
        outln!(
            "{}",
            serde_json::json!({"event": "result", "outcome": "dry_run"})
        );
    } else {
        outln!("\nDry run: nothing was created or moved.");
    }
    if plan.empties_the_host() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How the evacuation's events are shown: JSON lines, or the live view.
pub(crate) fn reporter(json: bool, plan: &EvacPlan) -> Box<dyn EvacReporter> {
    if json {
        Box::new(JsonLines)
    } else {
        Box::new(Live::new(plan))
    }
}

pub(crate) fn print_table(results: &[GuestResult]) {
    outln!("\n| guest | target | outcome | attempts | duration | downtime | bytes |");
    outln!("|---|---|---|---|---|---|---|");
    for r in results {
        outln!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.guest,
            r.target.as_deref().unwrap_or("-"),
            serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.attempts,
            secs(r.duration_ms),
            r.downtime_ms.map_or("-".into(), secs),
            r.bytes.map_or("-".into(), human_bytes)
        );
    }
    for r in results
        .iter()
        .filter(|r| r.outcome != GuestOutcome::Migrated)
    {
        if let Some(m) = &r.message {
            outln!("\n{}: {m}", r.guest);
        }
    }
}

/// The library's request for these arguments, over the inventory `inv` and with the hosts
/// the journal says are draining (the CLI's and the daemon's one translation of `ferry
/// evacuate`'s options).
pub(crate) fn ask(
    a: &EvacuateArgs,
    inv: Option<Arc<ferry_core::inventory::Inventory>>,
    journal: &Journal,
) -> anyhow::Result<EvacuateAsk> {
    let host = HostSpec::resolve(inv.as_deref(), &a.host);
    let mut candidates = evacuate::targets(inv.as_deref(), &host, &a.to)?;
    let draining = evacuate::draining(journal, ferry_migrate::ferry_alive)?;
    evacuate::mark_draining(&mut candidates, &draining);
    let link_mib = evacuate::link_bandwidths(
        inv.as_deref(),
        std::iter::once(&host).chain(&candidates),
        a.link_bandwidth,
    );
    let policy = match a.schedule {
        Schedule::Ferry => Policy::Ferry,
        Schedule::AllAtOnce => Policy::Fixed,
    };
    Ok(EvacuateAsk {
        host,
        candidates,
        options: a.migration.options(inv.as_deref()),
        inventory: inv,
        policy,
        budgets: Budgets {
            max_out: a.max_out as usize,
            max_in: a.max_in as usize,
            fleet: None,
        },
        link_mib,
        answer_deadline: Duration::from_secs(a.connect_timeout),
        abort_grace: ferry_migrate::ABORT_GRACE,
        retry: !a.no_retry,
        offline: a.offline,
    })
}

pub fn run(a: &EvacuateArgs) -> anyhow::Result<ExitCode> {
    let inv = a.inventory.load()?.map(Arc::new);
    let journal = if a.dry_run {
        Journal::open_existing(&a.journal.journal).or_else(|_| Journal::in_memory())?
    } else {
        Journal::open(&a.journal.journal).with_context(|| {
            "Ferry records the evacuation and every migration there; give another path with \
             --journal"
                .to_string()
        })?
    };
    let ask = ask(a, inv, &journal)?;
    let host = ask.host.clone();
    let hv: Arc<dyn ferry_hypervisor::Hypervisor> =
        Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    if !a.json {
        eprintln!(
            "==> reading {} host(s) and ranking targets for every guest on {}",
            ask.candidates.len() + 1,
            host.name
        );
    }
    let plan = evacuate::plan(&hv, &ask)?;
    show_plan(a.json, &plan);
    if a.dry_run {
        return Ok(dry_run_end(a.json, &plan));
    }
    let evacuation = evacuate::begin(&journal, &host, ferry_migrate::ferry_alive)?;
    let stop = Arc::new(AtomicU8::new(evacuate::GO));
    {
        let s = stop.clone();
        let _ = ctrlc::set_handler(move || {
            let was = s.fetch_add(1, Ordering::SeqCst);
            if was >= evacuate::ABORT_ALL {
                eprintln!("ferry: the running migrations are being aborted; wait");
            }
        });
    }
    let t = Instant::now();
    let mut reporter = reporter(a.json, &plan);
    let results = evacuate::execute(
        &hv,
        &a.journal.journal,
        evacuation,
        &ask,
        &plan,
        reporter.as_mut(),
        &stop,
    );
    drop(reporter);
    let makespan_ms = t.elapsed().as_millis() as u64;
    let verdict = evacuate::conclude(
        hv.as_ref(),
        &journal,
        evacuation,
        &host,
        &results,
        makespan_ms,
    );
    if a.json {
        crate::migrate_cmd::print_json(&ferry_migrate::report::ResultEvent::new(
            &verdict.result(&plan, &results),
        ));
    } else {
        print_table(&results);
        outln!(
            "\n{}: {} (predicted {:.0} s, lower bound {:.0} s).",
            host.name,
            verdict.message,
            plan.predicted.makespan_s,
            plan.bound_s
        );
    }
    Ok(if verdict.uncertain {
        ExitCode::from(3)
    } else if verdict.still_running.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
