//! Releasing the source's copy: after a verified migration, the source still holds every disk
//! the plan copied. [`decide`] says, per disk, whether Ferry may delete it and through which
//! store — the same kind of store that would have created it there — or why it keeps it.

use serde::Serialize;

use crate::facts::{PathKind, PathProbe, PoolKind};

/// One copied disk of a migrated run, as the source host sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedDisk {
    /// `<target dev>`.
    pub disk: String,
    /// Its path on the source.
    pub path: String,
    pub probe: PathProbe,
    /// The domain on the source that uses the path, if one does.
    pub used_by: Option<String>,
    /// Ferry already released it (journaled).
    pub released: bool,
}

/// What the hosts say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFacts {
    /// The migrated guest runs on the run's target.
    pub on_target: bool,
    /// The guest is active on the source.
    pub active_on_source: bool,
    /// The source host's first hook store in the inventory (its name), if any.
    pub source_hook: Option<String>,
    pub disks: Vec<CopiedDisk>,
}

/// Who deletes a released volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Through {
    /// libvirt's storage API (a file in a dir/fs pool, an LV in a logical pool).
    Libvirt,
    /// The source host's hook, which hands such devices out.
    Hook { name: String },
}

/// One disk's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Release {
    Delete {
        disk: String,
        path: String,
        through: Through,
    },
    Keep {
        disk: String,
        path: String,
        why: String,
    },
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Delete {
                disk,
                path,
                through: Through::Libvirt,
            } => write!(
                f,
                "delete {path} (disk {disk}) through libvirt's storage API"
            ),
            Self::Delete {
                disk,
                path,
                through: Through::Hook { name },
            } => write!(f, "give {path} (disk {disk}) back through hook {name}"),
            Self::Keep { disk, path, why } => write!(f, "keep {path} (disk {disk}): {why}"),
        }
    }
}

/// Decide, per copied disk. Nothing is deleted unless the guest runs on the target and not on
/// the source; a path a domain uses, or one that no store of the source would have created, is
/// kept with its reason.
pub fn decide(f: &ReleaseFacts) -> Vec<Release> {
    let guard = if !f.on_target {
        Some("the guest does not run on the run's target: the source's copy may be its only one")
    } else if f.active_on_source {
        Some("the guest is active on the source")
    } else {
        None
    };
    f.disks
        .iter()
        .map(|d| {
            let keep = |why: String| Release::Keep {
                disk: d.disk.clone(),
                path: d.path.clone(),
                why,
            };
            if let Some(g) = guard {
                return keep(g.into());
            }
            if d.released {
                return keep("already released".into());
            }
            if let Some(dom) = &d.used_by {
                return keep(format!("domain {dom} uses it"));
            }
            let Some(info) = &d.probe.info else {
                return keep("it is not there any more".into());
            };
            let delete = |through| Release::Delete {
                disk: d.disk.clone(),
                path: d.path.clone(),
                through,
            };
            match (info.kind, &d.probe.parent_pool, &f.source_hook) {
                (PathKind::File, Some(PoolKind::Dir | PoolKind::Fs), _) => delete(Through::Libvirt),
                (PathKind::Block, Some(PoolKind::Logical), _) => delete(Through::Libvirt),
                (PathKind::File, Some(PoolKind::Netfs), _) => {
                    keep("it is on a network filesystem: Ferry does not delete shared files".into())
                }
                (PathKind::Block, _, Some(hook)) => delete(Through::Hook { name: hook.clone() }),
                (PathKind::Block, _, None) => keep(
                    "a block device that no store of the source gives back (no hook for it in \
                     the inventory): free it by hand"
                        .into(),
                ),
                (_, None, _) => keep(
                    "it is in no storage pool of the source: Ferry deletes only through the store \
                     that would have created it; delete it by hand"
                        .into(),
                ),
                (kind, Some(pool), _) => keep(format!(
                    "a {kind:?} in a {pool:?} pool: not a volume Ferry would have created there"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PathInfo;

    fn disk(path: &str, kind: PathKind, pool: Option<PoolKind>) -> CopiedDisk {
        CopiedDisk {
            disk: "vdb".into(),
            path: path.into(),
            probe: PathProbe {
                info: Some(PathInfo {
                    kind,
                    capacity: 1 << 26,
                    allocation: 1 << 20,
                    format: Some("raw".into()),
                }),
                parent_exists: true,
                parent_free: None,
                parent_pool: pool,
            },
            used_by: None,
            released: false,
        }
    }

    fn facts(disks: Vec<CopiedDisk>) -> ReleaseFacts {
        ReleaseFacts {
            on_target: true,
            active_on_source: false,
            source_hook: None,
            disks,
        }
    }

    #[test]
    fn files_and_lvs_go_through_libvirt_devices_through_the_hook() {
        let mut f = facts(vec![
            disk(
                "/var/lib/store/g-vdb.img",
                PathKind::File,
                Some(PoolKind::Dir),
            ),
            disk("/dev/vg0/g-vdc", PathKind::Block, Some(PoolKind::Logical)),
            disk("/dev/nvme1n5", PathKind::Block, Some(PoolKind::Dir)),
        ]);
        let r = decide(&f);
        assert!(matches!(
            &r[0],
            Release::Delete {
                through: Through::Libvirt,
                ..
            }
        ));
        assert!(matches!(
            &r[1],
            Release::Delete {
                through: Through::Libvirt,
                ..
            }
        ));
        assert!(
            matches!(&r[2], Release::Keep { why, .. } if why.contains("free it by hand")),
            "a device node in a dir pool is not deleted by unlinking it: {r:?}"
        );
        f.source_hook = Some("nvme".into());
        assert_eq!(
            decide(&f)[2],
            Release::Delete {
                disk: "vdb".into(),
                path: "/dev/nvme1n5".into(),
                through: Through::Hook {
                    name: "nvme".into()
                }
            }
        );
    }

    #[test]
    fn each_release_reads_as_what_it_does() {
        let mut f = facts(vec![
            disk("/s/a.img", PathKind::File, Some(PoolKind::Dir)),
            disk("/dev/n5", PathKind::Block, Some(PoolKind::Dir)),
        ]);
        f.source_hook = Some("ns".into());
        let lines: Vec<String> = decide(&f).iter().map(Release::to_string).collect();
        assert_eq!(
            lines,
            [
                "delete /s/a.img (disk vdb) through libvirt's storage API",
                "give /dev/n5 (disk vdb) back through hook ns",
            ]
        );
        f.on_target = false;
        assert!(decide(&f)[0]
            .to_string()
            .starts_with("keep /s/a.img (disk vdb): the guest does not run"));
    }

    #[test]
    fn nothing_is_deleted_unless_the_guest_runs_on_the_target_only() {
        let mut f = facts(vec![disk("/s/a.img", PathKind::File, Some(PoolKind::Dir))]);
        f.on_target = false;
        assert!(matches!(&decide(&f)[0], Release::Keep { why, .. } if why.contains("only one")));
        f.on_target = true;
        f.active_on_source = true;
        assert!(
            matches!(&decide(&f)[0], Release::Keep { why, .. } if why.contains("active on the source"))
        );
    }

    #[test]
    fn a_used_released_gone_shared_or_unpooled_path_is_kept() {
        let mut used = disk("/s/a.img", PathKind::File, Some(PoolKind::Dir));
        used.used_by = Some("other".into());
        let mut released = disk("/s/b.img", PathKind::File, Some(PoolKind::Dir));
        released.released = true;
        let mut gone = disk("/s/c.img", PathKind::File, Some(PoolKind::Dir));
        gone.probe.info = None;
        let r = decide(&facts(vec![
            used,
            released,
            gone,
            disk("/nfs/d.img", PathKind::File, Some(PoolKind::Netfs)),
            disk("/srv/e.img", PathKind::File, None),
        ]));
        let whys: Vec<&str> = r
            .iter()
            .map(|r| match r {
                Release::Keep { why, .. } => why.as_str(),
                Release::Delete { .. } => "DELETE",
            })
            .collect();
        assert_eq!(whys[0], "domain other uses it");
        assert_eq!(whys[1], "already released");
        assert_eq!(whys[2], "it is not there any more");
        assert!(whys[3].contains("network filesystem"), "{whys:?}");
        assert!(whys[4].contains("in no storage pool"), "{whys:?}");
    }
}
