//! `ferry history` and `ferry cleanup`: the journal, read and acted on.

use std::process::ExitCode;

use ferry_journal::Journal;
use ferry_migrate::cleanup::Cleaned;

use crate::args::{CleanupArgs, HistoryArgs};

pub fn history(a: &HistoryArgs) -> anyhow::Result<()> {
    let j = Journal::open_existing(&a.journal.journal)?;
    let runs = j.runs(a.last)?;
    if a.json {
        println!("{}", serde_json::to_string(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs in {}", a.journal.journal.display());
    }
    for r in runs {
        println!(
            "#{:<4} {} {} -> {}  {}{}",
            r.id,
            r.guest,
            r.source,
            r.target,
            r.outcome
                .as_deref()
                .unwrap_or(&format!("unfinished (last phase: {})", r.phase)),
            r.message.map(|m| format!(": {m}")).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn cleanup(a: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let j = Journal::open(&a.journal.journal)?;
    let hv = ferry_hypervisor::libvirt::Libvirt::new();
    let done = ferry_migrate::cleanup::run(&hv, &j, a.dry_run)?;
    if done.is_empty() {
        println!(
            "nothing to clean: every volume Ferry created is in use by a migrated guest or deleted"
        );
    }
    let mut failed = false;
    for c in done {
        match c {
            Cleaned::WouldDelete { what } => println!("would delete {what}"),
            Cleaned::Deleted { what } => println!("deleted {what}"),
            Cleaned::Kept { what, why } => {
                eprintln!("kept {what}: {why}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
