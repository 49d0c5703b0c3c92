//! Release: after a verified migration, delete the source's copy of every disk the plan copied
//! — only those, only when no domain on the source uses them, through the store that would
//! have created them there (libvirt's storage API, or the source's hook) — and journal it.

use ferry_core::inventory::Hook;
use ferry_core::release::{self, CopiedDisk, Release, ReleaseFacts, Through};
use std::sync::Arc;
use std::time::Duration;

use ferry_hypervisor::{wait, DomainState, HostId, HvError, Hypervisor};
use ferry_journal::{Journal, JournalError, RunId, RunOutcome, RunRow};

use crate::record::{self, RecordError};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("there is no run #{0} in the journal (`ferry history` lists them)")]
    NoRun(RunId),
    #[error("run #{run} has not ended: the source's copy may still be the guest's disk")]
    Unfinished { run: RunId },
    #[error("run #{run} did not migrate ({outcome}): the source's copy is the guest's disk")]
    NotMigrated { run: RunId, outcome: RunOutcome },
    #[error(
        "run #{run} moved the guest, but its verification failed ({why}): the source's copy is \
         the only one known good; check the guest on the target, and delete the copy by hand \
         once it is"
    )]
    Unverified { run: RunId, why: String },
    #[error("run #{0} recorded no plan: Ferry cannot tell which disks it copied")]
    NoPlan(RunId),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("no answer from {hosts} within {secs} s (--connect-timeout): nothing was released")]
    NoAnswer { hosts: String, secs: u64 },
    #[error("the thread reading the hosts failed: {0}")]
    Thread(String),
    #[error(transparent)]
    Host(#[from] HvError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Only a run whose guest's place and disks were verified on the target may release
/// anything of the source.
pub fn releasable(run: &RunRow) -> Result<(), ReleaseError> {
    match run.outcome {
        Some(RunOutcome::Migrated) => Ok(()),
        Some(RunOutcome::MigratedUnverified) => Err(ReleaseError::Unverified {
            run: run.id,
            why: run.message.clone().unwrap_or_default(),
        }),
        Some(outcome) => Err(ReleaseError::NotMigrated {
            run: run.id,
            outcome,
        }),
        None => Err(ReleaseError::Unfinished { run: run.id }),
    }
}

/// The source host's hook store (from the inventory), for devices it hands out.
#[derive(Debug, Clone)]
pub struct SourceHook {
    pub hook: Hook,
    /// The source's name in the inventory (what the hook is told).
    pub host: String,
}

/// The source's first hook store in the inventory, if the source is an inventory host.
pub fn source_hook(
    inv: Option<&ferry_core::inventory::Inventory>,
    source: &str,
) -> Option<SourceHook> {
    let h = inv?.resolve(source)?;
    h.local_stores.iter().find_map(|l| match l.store() {
        ferry_core::inventory::Store::Hook(hook) => Some(SourceHook {
            hook,
            host: h.name.clone(),
        }),
        ferry_core::inventory::Store::Pool(_) => None,
    })
}

/// What the hosts and the journal say about a migrated run's source copies.
pub fn gather(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    run: &RunRow,
    hook: Option<&SourceHook>,
    answer: Duration,
) -> Result<(ReleaseFacts, HostId), ReleaseError> {
    releasable(run)?;
    let plan = record::plan(journal, run.id)?.ok_or(ReleaseError::NoPlan(run.id))?;
    let copied = record::copied(&plan);
    // The hosts are read on a thread of their own, within `answer`: a host that accepts the
    // connection and never answers is named, not waited for.
    let seen = {
        let (hv, run, paths) = (hv.clone(), run.clone(), copied.clone());
        wait::bounded("ferry-release", wait::deadline_in(answer), move || {
            read_hosts(hv.as_ref(), &run, &paths)
        })
    };
    let seen = match seen {
        Ok(r) => r?,
        Err(wait::NoAnswer::Late) => {
            return Err(ReleaseError::NoAnswer {
                hosts: format!("{} or {}", run.source, run.target),
                secs: answer.as_secs(),
            })
        }
        Err(e) => return Err(ReleaseError::Thread(e.to_string())),
    };
    let mut disks = vec![];
    for ((disk, path), probe) in copied.into_iter().zip(seen.probes) {
        disks.push(CopiedDisk {
            used_by: seen
                .in_use
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, d)| d.clone()),
            released: journal.was_released(run.id, &path)?,
            probe,
            disk,
            path,
        });
    }
    let (src, on_target, active_on_source) = (seen.src, seen.on_target, seen.active_on_source);
    Ok((
        ReleaseFacts {
            on_target,
            active_on_source,
            source_hook: hook.map(|h| h.hook.name.clone()),
            disks,
        },
        src,
    ))
}

/// What both hosts say, for a release.
struct Seen {
    src: HostId,
    on_target: bool,
    active_on_source: bool,
    in_use: Vec<(String, String)>,
    /// Each copied disk's source path, in the plan's order.
    probes: Vec<ferry_core::facts::PathProbe>,
}

fn read_hosts(
    hv: &dyn Hypervisor,
    run: &RunRow,
    copied: &[(String, String)],
) -> Result<Seen, HvError> {
    let src = hv.connect(&run.source)?;
    let dst = hv.connect(&run.target)?;
    let on_target = hv
        .domain_state(dst, &run.guest)?
        .is_some_and(DomainState::is_active);
    let active_on_source = hv
        .domain_state(src, &run.guest)?
        .is_some_and(DomainState::is_active);
    let in_use = crate::usage::paths_in_use(hv, src, None)?;
    let probes = copied
        .iter()
        .map(|(_, path)| hv.probe_path(src, path))
        .collect::<Result<_, _>>()?;
    Ok(Seen {
        src,
        on_target,
        active_on_source,
        in_use,
        probes,
    })
}

/// Release a migrated run's source copies (with `dry_run`, only say what would happen): each
/// decision, with the error when carrying it out failed.
pub fn run(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    run: RunId,
    hook: Option<&SourceHook>,
    dry_run: bool,
    answer: Duration,
) -> Result<Vec<(Release, Option<String>)>, ReleaseError> {
    let row = journal.run_row(run)?.ok_or(ReleaseError::NoRun(run))?;
    let (facts, src) = gather(hv, journal, &row, hook, answer)?;
    let decided = release::decide(&facts);
    if dry_run {
        return Ok(decided.into_iter().map(|r| (r, None)).collect());
    }
    Ok(decided
        .into_iter()
        .map(|r| {
            let err = match &r {
                Release::Keep { .. } => None,
                Release::Delete { path, through, .. } => {
                    let done = match (through, hook) {
                        (Through::Libvirt, _) => {
                            hv.delete_volume(src, path).map_err(|e| e.to_string())
                        }
                        (Through::Hook { .. }, Some(h)) => {
                            crate::provision::delete(&h.hook, &h.host, path)
                                .map_err(|e| e.to_string())
                        }
                        (Through::Hook { name }, None) => Err(format!("hook {name} is not known")),
                    };
                    done.and_then(|()| {
                        let how = match through {
                            Through::Libvirt => "libvirt".to_string(),
                            Through::Hook { name } => format!("hook {name}"),
                        };
                        journal
                            .record_released(run, &row.source, path, &how)
                            .map_err(|e| e.to_string())
                    })
                    .err()
                }
            };
            (r, err)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::source_hook;
    use crate::record::copied;

    #[test]
    fn the_sources_hook_comes_from_the_inventory_by_name_or_uri() {
        let inv = ferry_core::inventory::Inventory::from_toml(
            r#"
            [[host]]
            name = "kvm1"
            uri = "qemu+tcp://kvm1/system"
            [[host.local_store]]
            pool = "images"
            [[host.local_store]]
            hook = ["/usr/local/bin/ns-hook"]
            name = "ns"
            [[host]]
            name = "kvm2"
            uri = "qemu+tcp://kvm2/system"
            "#,
        )
        .unwrap();
        for source in ["kvm1", "qemu+tcp://kvm1/system"] {
            let h = source_hook(Some(&inv), source).unwrap();
            assert_eq!((h.hook.name.as_str(), h.host.as_str()), ("ns", "kvm1"));
        }
        assert!(source_hook(Some(&inv), "kvm2").is_none());
        assert!(source_hook(Some(&inv), "qemu:///system").is_none());
        assert!(source_hook(None, "kvm1").is_none());
    }

    #[test]
    fn the_copied_disks_come_from_the_recorded_plan() {
        let plan = r#"{"domain":"g","dest_uri":"u","disks":[
            {"target":"vda","decision":"shared","source_type":"file","dest_type":"file",
             "source":{"kind":"path","path":"/mnt/nfs/a"}},
            {"target":"vdb","decision":"copy","source_type":"block","dest_type":"block",
             "source":{"kind":"path","path":"/dev/nvme2n2"}},
            {"target":"vdc","decision":"copy","source_type":"volume","dest_type":"volume",
             "source":{"kind":"volume","pool":"p","volume":"v","mode":null}}
        ]}"#;
        let plan = crate::record::parse(ferry_journal::RunId(1), plan).unwrap();
        assert_eq!(
            copied(&plan),
            vec![("vdb".to_string(), "/dev/nvme2n2".to_string())]
        );
        assert!(crate::record::parse(ferry_journal::RunId(1), "{}").is_err());
    }
}
