//! Release: after a verified migration, delete the source's copy of every disk the plan copied
//! — only those, only when no domain on the source uses them, through the store that would
//! have created them there (libvirt's storage API, or the source's hook) — and journal it.

use ferry_core::inventory::Hook;
use ferry_core::release::{self, CopiedDisk, Release, ReleaseFacts, Through};
use ferry_hypervisor::{DomainState, HostId, HvError, Hypervisor};
use ferry_journal::{Journal, JournalError, RunId, RunRow};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("there is no run #{0} in the journal (`ferry history` lists them)")]
    NoRun(i64),
    #[error("run #{run} did not migrate ({outcome}): the source's copy is the guest's disk")]
    NotMigrated { run: i64, outcome: String },
    #[error("run #{0} recorded no plan: Ferry cannot tell which disks it copied")]
    NoPlan(i64),
    #[error(transparent)]
    Host(#[from] HvError),
    #[error(transparent)]
    Journal(#[from] JournalError),
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

/// The disks a run's plan copied: (`<target dev>`, path on the source).
fn copied(plan_json: &str) -> Vec<(String, String)> {
    crate::recover::recorded_disks(plan_json)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.decision == "copy")
        .filter_map(|d| Some((d.target, d.source.get("path")?.as_str()?.to_string())))
        .collect()
}

/// What the hosts and the journal say about a migrated run's source copies.
pub fn gather(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: &RunRow,
    hook: Option<&SourceHook>,
) -> Result<(ReleaseFacts, HostId), ReleaseError> {
    match run.outcome.as_deref() {
        Some("migrated") => {}
        other => {
            return Err(ReleaseError::NotMigrated {
                run: run.id,
                outcome: other.unwrap_or("unfinished").to_string(),
            })
        }
    }
    let plan = journal
        .plan_of(RunId(run.id))?
        .ok_or(ReleaseError::NoPlan(run.id))?;
    let src = hv.connect(&run.source)?;
    let dst = hv.connect(&run.target)?;
    let on_target = hv
        .domain_state(dst, &run.guest)?
        .is_some_and(DomainState::is_active);
    let active_on_source = hv
        .domain_state(src, &run.guest)?
        .is_some_and(DomainState::is_active);
    let in_use = crate::recover::paths_in_use(hv, src, None)?;
    let mut disks = vec![];
    for (disk, path) in copied(&plan) {
        disks.push(CopiedDisk {
            used_by: in_use
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, d)| d.clone()),
            released: journal.was_released(RunId(run.id), &path)?,
            probe: hv.probe_path(src, &path)?,
            disk,
            path,
        });
    }
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

/// Release a migrated run's source copies (with `dry_run`, only say what would happen): each
/// decision, with the error when carrying it out failed.
pub fn run(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: RunId,
    hook: Option<&SourceHook>,
    dry_run: bool,
) -> Result<Vec<(Release, Option<String>)>, ReleaseError> {
    let row = journal.run_row(run)?.ok_or(ReleaseError::NoRun(run.0))?;
    let (facts, src) = gather(hv, journal, &row, hook)?;
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
    use super::{copied, source_hook};

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
    fn the_copied_disks_come_from_the_plan() {
        let plan = r#"{"disks":[
            {"target":"vda","decision":"shared","source":{"kind":"path","path":"/mnt/nfs/a"}},
            {"target":"vdb","decision":"copy","source":{"kind":"path","path":"/dev/nvme2n2"}},
            {"target":"vdc","decision":"copy","source":{"kind":"volume","pool":"p","volume":"v"}}
        ]}"#;
        assert_eq!(
            copied(plan),
            vec![("vdb".to_string(), "/dev/nvme2n2".to_string())]
        );
        assert!(copied("{}").is_empty());
    }
}
