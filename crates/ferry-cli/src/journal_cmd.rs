//! `ferry history` and `ferry cleanup`: the journal, read and acted on.

use std::process::ExitCode;

use ferry_core::domain;
use ferry_hypervisor::Hypervisor;
use ferry_journal::{Journal, RunId};

use crate::args::{CleanupArgs, HistoryArgs};

pub fn history(a: &HistoryArgs) -> anyhow::Result<()> {
    let j = Journal::open(&a.journal.journal)?;
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
    let left = j.leftovers()?;
    if left.is_empty() {
        println!(
            "nothing to clean: every volume Ferry created is in use by a migrated guest or deleted"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let hv = ferry_hypervisor::libvirt::Libvirt::new();
    let mut failed = false;
    for c in left {
        let what = format!("{} on {} (run #{})", c.path, c.host, c.run);
        if a.dry_run {
            println!("would delete {what}");
            continue;
        }
        let host = match hv.connect(&c.host) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("skipped {what}: {e}");
                failed = true;
                continue;
            }
        };
        // Never delete what a domain uses, whoever created it.
        let mut user = None;
        for name in hv.list_domains(host)? {
            let xml = hv.domain_xml(host, &name, false)?;
            if domain::parse(&xml)
                .map(|d| d.disks.iter().any(|k| k.path() == Some(c.path.as_str())))
                .unwrap_or(true)
            {
                user = Some(name);
            }
        }
        if let Some(u) = user {
            eprintln!("kept {what}: domain {u} uses it");
            failed = true;
            continue;
        }
        match hv.delete_volume(host, &c.path) {
            Ok(()) => {
                j.record_deleted(RunId(c.run), &c.host, &c.path)?;
                println!("deleted {what}");
            }
            Err(e) => {
                eprintln!("could not delete {what}: {e}");
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
