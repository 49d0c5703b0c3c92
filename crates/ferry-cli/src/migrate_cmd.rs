//! `ferry migrate`: the flow, with progress on a terminal or as JSON lines.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::convergence::Progress;
use ferry_core::render::human_bytes;
use ferry_core::XmlFiles;
use ferry_journal::Journal;
use ferry_migrate::report::{ResultEvent, RunResult};
use ferry_migrate::target::SelectRequest;
use ferry_migrate::{Ask, Event, MigrateError, Outcome, Reporter, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::MigrateArgs;

/// Progress for a person: a line per step, a bar while the job runs.
struct Terminal {
    bar: Option<ProgressBar>,
    tty: bool,
    last_line: std::time::Instant,
    /// Print the ranking of targets (not when the operator named the target).
    show_ranking: bool,
}

impl Terminal {
    fn finish_bar(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// The bytes done and in all of the running phase's stream.
    fn done_total(p: &Progress) -> (u64, u64) {
        match p.phase {
            ferry_core::convergence::Phase::StorageCopy => (p.disk_processed, p.disk_total),
            _ => (p.mem_processed, p.mem_total.max(p.mem_processed)),
        }
    }

    fn job_line(p: &Progress) -> String {
        match p.phase {
            ferry_core::convergence::Phase::Setup => {
                return "setup: the target's QEMU is starting".into()
            }
            ferry_core::convergence::Phase::Switchover => {
                return "switchover: guest paused; last pages and disk mirrors completing".into()
            }
            ferry_core::convergence::Phase::Postcopy => {
                return "post-copy: the guest runs on the target and pulls the pages it lacks"
                    .into()
            }
            _ => {}
        }
        let (done, total) = Self::done_total(p);
        let mut s = format!(
            "{:<14} {:>10} / {:<10} {:>10}/s",
            p.phase.to_string(),
            human_bytes(done),
            human_bytes(total),
            human_bytes(p.rate_bps)
        );
        if p.dirty_rate_bps > 0 {
            s.push_str(&format!("  dirty {}/s", human_bytes(p.dirty_rate_bps)));
        }
        match (&p.forecast, p.eta_s) {
            (Some(f), _) => s.push_str(&format!("  {f}")),
            (None, Some(eta)) => s.push_str(&format!("  ETA {eta} s")),
            (None, None) => {}
        }
        s
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.finish_bar();
    }
}

impl Reporter for Terminal {
    fn report(&mut self, event: Event) {
        match event {
            Event::Step { step, detail } => {
                self.finish_bar();
                eprintln!("==> {step}: {detail}");
            }
            Event::Note { message } => match &self.bar {
                Some(b) => b.println(format!("    {message}")),
                None => eprintln!("    {message}"),
            },
            Event::Target(r) if self.show_ranking => {
                for line in r.render().lines() {
                    eprintln!("    {line}");
                }
            }
            Event::Target(_) | Event::Run { .. } => {}
            Event::Job(p) => {
                let line = Self::job_line(&p);
                let (done, total) = Self::done_total(&p);
                self.progress(line, done, total);
            }
            Event::Seed(p) => {
                let line = seed_line(&p);
                self.progress(line, p.done, p.total);
            }
        }
    }
}

/// A pre-seeded disk's copy in one line: done, rate, what went as data and as holes, ETA.
pub(crate) fn seed_line(p: &ferry_migrate::preseed::SeedProgress) -> String {
    let mut s = format!(
        "seed {:<6} {:>10} / {:<10} {:>10}/s  data {} holes {}",
        p.disk,
        human_bytes(p.done),
        human_bytes(p.total),
        human_bytes(p.rate_bps),
        human_bytes(p.data),
        human_bytes(p.zeros)
    );
    if let Some(eta) = p.eta_s {
        s.push_str(&format!("  ETA {eta} s"));
    }
    s
}

impl Terminal {
    /// A progress line: a bar on a terminal, one line a second elsewhere.
    fn progress(&mut self, line: String, done: u64, total: u64) {
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let b = ProgressBar::new(1);
                b.set_style(
                    ProgressStyle::with_template("    [{bar:30}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b
            });
            bar.set_length(total.max(1));
            bar.set_position(done);
            bar.set_message(line);
        } else if self.last_line.elapsed() >= Duration::from_secs(1) {
            // Not a terminal (a log, CI): one line a second.
            eprintln!("    {line}");
            self.last_line = std::time::Instant::now();
        }
    }
}

/// Progress for a script: one JSON object per line on stdout.
struct JsonLines;

impl Reporter for JsonLines {
    fn report(&mut self, event: Event) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &event);
        let _ = writeln!(out);
    }
}

/// Milliseconds for a person: `850 ms`, `12.3 s`, or `unknown`.
pub(crate) fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) if ms >= 1000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms} ms"),
        None => "unknown".into(),
    }
}

pub(crate) fn print_summary(s: &Summary) {
    outln!("Migrated {}: {} -> {}", s.guest, s.from, s.to);
    outln!(
        "  total {} (libvirt job {}, setup {}), downtime {}",
        ms(Some(s.total_ms)),
        ms(s.job_ms),
        ms(s.setup_ms),
        ms(s.downtime_ms)
    );
    let disks = if s.copied_disks.is_empty() {
        "no disk copied".to_string()
    } else {
        format!(
            "disk copied: {} ({})",
            s.disk_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "unknown".into()),
            s.copied_disks.join(", ")
        )
    };
    outln!(
        "  {disks}; memory sent: {}; all data: {}",
        s.memory_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into()),
        s.data_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into())
    );
    for p in &s.seeded {
        outln!(
            "  pre-seeded {}: {} before the live phase: {} as data, {} as holes; {} chunk(s) \
             read back and equal",
            p.disk,
            human_bytes(p.total),
            human_bytes(p.data),
            human_bytes(p.zeros),
            p.verified_chunks
        );
    }
    for c in &s.created {
        outln!("  created on the target: {c}");
    }
    for v in &s.verified {
        outln!("  verified: {v}");
    }
    for w in &s.warnings {
        outln!("  warning: {w}");
    }
}

/// How the flow's events are shown for these arguments: JSON lines, or a person's lines and bar.
pub(crate) fn reporter(a: &MigrateArgs) -> Box<dyn Reporter> {
    if a.json {
        Box::new(JsonLines)
    } else {
        Box::new(Terminal {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            last_line: std::time::Instant::now() - Duration::from_secs(2),
            // With --to, a refusal names the host's reasons in the error: no ranking to show.
            show_ranking: a.to.is_none(),
        })
    }
}

/// The flow's request for these arguments, over the inventory `inv` (the CLI's and the
/// daemon's one translation of `ferry migrate`'s options).
pub(crate) fn ask(
    a: &MigrateArgs,
    inv: Option<Arc<ferry_core::inventory::Inventory>>,
    started: std::time::Instant,
) -> anyhow::Result<Ask> {
    let select = SelectRequest::new(
        inv.clone(),
        &a.guest,
        &a.from,
        a.to.as_deref(),
        a.storage.rules()?,
        Duration::from_secs(a.connect_timeout),
    )?;
    Ok(Ask {
        select,
        options: a.migration.options(inv.as_deref()),
        dry_run: a.dry_run,
        cold: false,
        timeout: a.timeout.map(Duration::from_secs),
        started,
        abort_grace: ferry_migrate::ABORT_GRACE,
    })
}

pub fn run(a: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let inv = a.inventory.load()?.map(Arc::new);
    let ask = ask(a, inv.clone(), started)?;
    let journal = if a.dry_run {
        // Read, never written: a dry run sees what the real run would (a host another Ferry
        // is evacuating is draining); without a journal yet, one in memory.
        Journal::open_existing(&a.journal.journal).or_else(|_| Journal::in_memory())?
    } else {
        Journal::open(&a.journal.journal).with_context(|| {
            "Ferry records every volume it creates there, to roll back exactly those; \
             give another path with --journal"
                .to_string()
        })?
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if c.swap(true, Ordering::SeqCst) {
                eprintln!("ferry: Ctrl-C again: Ferry is still aborting and cleaning up; wait");
            } else {
                eprintln!("ferry: Ctrl-C: aborting the migration (the guest stays on the source)");
            }
        });
    }
    if !a.dry_run {
        ferry_migrate::abort::watch(a.journal.journal.clone(), cancel.clone(), |by, host| {
            eprintln!(
                "ferry: `ferry abort` (pid {by} on {host}): aborting the migration (the guest \
                 stays on the source)"
            );
        });
    }
    let hv: Arc<dyn ferry_hypervisor::Hypervisor> =
        Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    let mut reporter = reporter(a);
    let source_uri = ask.select.source.uri.clone();
    let outcome = ferry_migrate::migrate(&hv, &journal, &ask, reporter.as_mut(), &cancel);
    drop(reporter);
    match outcome {
        Ok(Outcome::Migrated(s)) => {
            if a.json {
                print_json(&ResultEvent::new(&RunResult::Migrated { summary: &s }));
            } else {
                print_summary(&s);
            }
            match (a.release_source, s.run) {
                (Some(after), Some(run)) => Ok(release_source(
                    a,
                    &hv,
                    &journal,
                    inv.as_deref(),
                    run,
                    after,
                    &cancel,
                )),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Ok(Outcome::DryRun { plan, checks }) => {
            print_dry_run(a.json, &plan, &source_uri, &checks);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report_error(a, e)),
    }
}

/// `--dry-run`: the plan and the checks it passed.
pub(crate) fn print_dry_run(
    json: bool,
    plan: &ferry_core::Plan,
    source_uri: &str,
    checks: &[String],
) {
    let files = XmlFiles::for_plan(plan, None, None);
    if json {
        let mut v = plan.to_json(&files, Some(source_uri));
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), "result".into());
            o.insert("outcome".into(), "dry_run".into());
            o.insert("checks".into(), checks.into());
        }
        outln!("{v}");
    } else {
        out!("{}", plan.render(&files, Some(source_uri), true));
        outln!("\nChecks passed:");
        for c in checks {
            outln!("  {c}");
        }
        outln!("\nDry run: nothing was created or moved.");
    }
}

/// Say why the run failed (and where the guest is), as text and with `--json` as JSON; the
/// exit status is the error's.
fn report_error(a: &MigrateArgs, e: MigrateError) -> ExitCode {
    if a.json {
        print_json(&ResultEvent::new(&e.result()));
    }
    eprintln!("ferry: error: {}", crate::because(&e));
    ExitCode::from(e.exit_status())
}

/// One JSON document on a line of stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = writeln!(out);
}

/// --release-source: after the grace period (Ctrl-C keeps the copies), delete the source's
/// copies of the disks the run copied.
fn release_source(
    a: &MigrateArgs,
    hv: &Arc<dyn ferry_hypervisor::Hypervisor>,
    journal: &Journal,
    inv: Option<&ferry_core::inventory::Inventory>,
    run: ferry_journal::RunId,
    after: u64,
    cancel: &AtomicBool,
) -> ExitCode {
    // Ctrl-C during the migration was answered by the flow; a fresh one keeps the copies.
    cancel.store(false, Ordering::SeqCst);
    if after > 0 {
        eprintln!(
            "==> release: the source's copies go in {after} s (Ctrl-C keeps them; `ferry release \
             {run}` later)"
        );
        let cancelled = ferry_hypervisor::wait::poll_until(
            ferry_hypervisor::wait::deadline_in(Duration::from_secs(after)),
            Duration::from_millis(100),
            || cancel.load(Ordering::SeqCst).then_some(()),
        );
        if cancelled.is_some() {
            eprintln!(
                "ferry: release cancelled: the source keeps its copies (`ferry release {run}`)"
            );
            return ExitCode::SUCCESS;
        }
    } else {
        eprintln!("==> release: the source's copies of the disks run #{run} copied");
    }
    let Ok(Some(row)) = journal.run_row(run) else {
        eprintln!("ferry: error: run #{run} is not in the journal: nothing released");
        return ExitCode::FAILURE;
    };
    let hook = ferry_migrate::release::source_hook(inv, &row.source);
    match ferry_migrate::release::run(
        hv,
        journal,
        run,
        hook.as_ref(),
        a.dry_run,
        Duration::from_secs(a.connect_timeout),
    ) {
        Ok(done) => crate::journal_cmd::print_released(&done, false, &row.source, a.json),
        Err(e) => {
            eprintln!("ferry: error: release: {e}");
            ExitCode::FAILURE
        }
    }
}
