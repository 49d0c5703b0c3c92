//! `ferry history`, `ferry recover` and `ferry abort`: the journal, read and acted on.

use std::process::ExitCode;

use ferry_core::render::inert;
use ferry_journal::Journal;
use ferry_journal::{EvacuationRow, RunId, RunRow};
use ferry_migrate::recover::Action;

use anyhow::Context;

use crate::args::{AbortArgs, HistoryArgs, RecoverArgs, ReleaseArgs};

/// Which journal an error came from.
fn in_journal(a: &HistoryArgs) -> String {
    format!(
        "reading the journal {}",
        ferry_journal::shown(&a.journal.journal)
    )
}

pub fn history(a: &HistoryArgs) -> anyhow::Result<()> {
    let j = Journal::open_existing(&a.journal.journal)?;
    let runs = j.runs(a.last).with_context(|| in_journal(a))?;
    // Evacuations, newest first (a journal from before they existed has none).
    let evacs: Vec<_> = if a.json {
        vec![]
    } else {
        j.evacuations()
            .unwrap_or_default()
            .into_iter()
            .take(a.last as usize)
            .map(|e| {
                let runs = j.evacuation_runs(e.id).unwrap_or_default();
                (e, runs)
            })
            .collect()
    };
    print_history(
        &runs,
        &evacs,
        a.json,
        &ferry_journal::shown(&a.journal.journal),
    )
}

/// `ferry history`'s output: the runs, then the evacuations with their runs (`journal` names
/// where they were read, for an empty list).
pub(crate) fn print_history(
    runs: &[RunRow],
    evacs: &[(EvacuationRow, Vec<(String, i64)>)],
    json: bool,
    journal: &str,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string(runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        outln!("no runs in {journal}");
    }
    for r in runs {
        // Every text from the journal is inert on a terminal.
        outln!(
            "#{:<4} {} {} -> {}  {}{}",
            r.id,
            inert(&r.guest),
            inert(&r.source),
            inert(&r.target),
            r.outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| format!("unfinished (last phase: {})", r.phase)),
            r.message
                .as_ref()
                .map(|m| format!(": {}", inert(m)))
                .unwrap_or_default()
        );
    }
    for (e, runs) in evacs {
        let runs: Vec<String> = runs
            .iter()
            .map(|(g, r)| format!("{} #{r}", inert(g)))
            .collect();
        outln!(
            "evacuation #{} of {}: {}{}; runs: {}",
            e.id,
            inert(&e.host),
            e.outcome.map_or("running (or cut short)", |o| o.as_str()),
            e.message
                .as_ref()
                .map(|m| format!(": {}", inert(m)))
                .unwrap_or_default(),
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.join(", ")
            }
        );
    }
    Ok(())
}

pub fn recover(a: &RecoverArgs) -> anyhow::Result<ExitCode> {
    // Recover acts on what a journal holds: it creates none where there is none.
    let j = Journal::open_existing(&a.journal.journal)?;
    let hv: std::sync::Arc<dyn ferry_hypervisor::Hypervisor> =
        std::sync::Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    let done = ferry_migrate::recover::run(
        &hv,
        &j,
        a.id.map(RunId),
        a.dry_run,
        std::time::Duration::from_secs(a.connect_timeout),
    )
    .with_context(|| {
        format!(
            "in the journal {}",
            ferry_journal::shown(&a.journal.journal)
        )
    })?;
    // Evacuations whose Ferry died: their runs are recovered above; the evacuation ends.
    let cut = ferry_migrate::recover::end_cut_evacuations(&j, a.id.map(RunId), a.dry_run)?;
    for e in &cut {
        if !a.json {
            outln!(
                "evacuation #{} of {}: cut short (its Ferry, pid {} on {}, is gone or its lease \
                 expired): {}",
                e.id,
                e.host,
                e.pid,
                e.machine,
                if a.dry_run {
                    "would end it in the journal"
                } else {
                    "ended in the journal"
                }
            );
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string(&done)?);
    } else if done.is_empty() && cut.is_empty() {
        outln!(
            "nothing to recover: every run in {} has ended and left nothing behind",
            ferry_journal::shown(&a.journal.journal)
        );
    }
    let mut clean = true;
    for r in &done {
        let d = &r.recovery;
        if !a.json {
            outln!(
                "run #{} {}: the guest {}",
                d.run,
                inert(&d.guest),
                d.location
            );
            if let Some(t) = &r.took_over {
                if a.dry_run {
                    outln!("  would {}", inert(t));
                } else {
                    outln!("  {}: done", inert(t));
                }
            }
        }
        for (i, step) in d.steps.iter().enumerate() {
            let failed = r.failed.iter().find(|(n, _)| *n == i);
            clean &= failed.is_none() && !matches!(step, Action::Leave { .. });
            if a.json {
                continue;
            }
            let step_text = step.to_string();
            let step = inert(&step_text);
            match (&r.recovery.steps[i], failed, a.dry_run) {
                (_, Some((_, e)), _) => outln!("  {step}: FAILED: {}", inert(e)),
                (Action::Keep { .. } | Action::Leave { .. }, _, _) => outln!("  {step}"),
                (_, None, true) => outln!("  would {step}"),
                (_, None, false) => outln!("  {step}: done"),
            }
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn abort(a: &AbortArgs) -> anyhow::Result<ExitCode> {
    use ferry_migrate::abort::{self, Which};
    let which = Which::parse(&a.which);
    // Nothing can be running without a journal: none is created to say so.
    if ferry_journal::postgres_url(&a.journal.journal).is_none() && !a.journal.journal.exists() {
        let what = match &which {
            Which::Run(r) => format!("there is no run #{r}"),
            Which::Guest(g) => format!("no Ferry is migrating {g}"),
        };
        anyhow::bail!(
            "{what}: there is no journal at {} (give the one it uses with --journal)",
            ferry_journal::shown(&a.journal.journal)
        );
    }
    let j = Journal::open_existing(&a.journal.journal)?;
    let row = abort::request(&j, &which)?;
    print_abort_asked(&row);
    Ok(print_abort_ended(
        &row,
        abort::wait(&j, row.id, std::time::Duration::from_secs(a.wait))?,
        a.wait,
    ))
}

/// `ferry abort` asked: which run, waiting.
pub(crate) fn print_abort_asked(row: &RunRow) {
    eprintln!(
        "asked the Ferry running run #{} ({} {} -> {}) to abort; waiting for it",
        row.id,
        inert(&row.guest),
        inert(&row.source),
        inert(&row.target)
    );
}

/// How the aborted run ended (or did not within `wait` seconds), and the exit status.
pub(crate) fn print_abort_ended(
    row: &RunRow,
    ended: ferry_migrate::abort::Ended,
    wait: u64,
) -> ExitCode {
    use ferry_migrate::abort::Ended;
    match ended {
        Ended::Outcome(outcome, message) => {
            outln!("run #{}: {outcome}: {}", row.id, inert(&message));
            ExitCode::SUCCESS
        }
        Ended::Stopped => {
            outln!(
                "run #{}: its Ferry stopped before anything was created or moved; `ferry \
                 recover {}` ends the run in the journal",
                row.id,
                row.id
            );
            ExitCode::SUCCESS
        }
        Ended::StillRunning => {
            eprintln!(
                "ferry: run #{} has not ended within {} s; its Ferry is still rolling back \
                 (`ferry history` shows when it ends)",
                row.id, wait
            );
            ExitCode::FAILURE
        }
    }
}

pub fn release(a: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    // Release needs a run in an existing journal: none is created.
    let j = Journal::open_existing(&a.journal.journal)?;
    let inv = a.inventory.load()?;
    let row = j.run_row(RunId(a.id))?.ok_or_else(|| {
        anyhow::anyhow!(
            "there is no run #{} in {}",
            a.id,
            ferry_journal::shown(&a.journal.journal)
        )
    })?;
    let hook = ferry_migrate::release::source_hook(inv.as_ref(), &row.source);
    let hv: std::sync::Arc<dyn ferry_hypervisor::Hypervisor> =
        std::sync::Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    let done = ferry_migrate::release::run(
        &hv,
        &j,
        RunId(a.id),
        hook.as_ref(),
        a.dry_run,
        std::time::Duration::from_secs(a.connect_timeout),
    )?;
    Ok(print_released(&done, a.dry_run, &row.source, false))
}

/// One line per copied disk; failure when a deletion failed or a disk was kept.
pub fn print_released(
    done: &[(ferry_core::release::Release, Option<String>)],
    dry_run: bool,
    source: &str,
    json: bool,
) -> ExitCode {
    use ferry_core::release::Release;
    if json {
        for (r, err) in done {
            outln!(
                "{}",
                serde_json::json!({"event": "release", "source": source, "release": r, "error": err})
            );
        }
    }
    if done.is_empty() {
        outln!("the run copied no disk: nothing to release on {source}");
    }
    let mut clean = true;
    for (r, err) in done {
        clean &= err.is_none() && matches!(r, Release::Delete { .. });
        if json {
            continue;
        }
        match (r, err, dry_run) {
            (_, Some(e), _) => eprintln!("{r} on {source}: FAILED: {e}"),
            (Release::Keep { .. }, None, _) => outln!("{r}"),
            (Release::Delete { .. }, None, true) => outln!("would {r} on {source}"),
            (Release::Delete { .. }, None, false) => outln!("{r} on {source}: done"),
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
