//! Preflight, decided: everything that can be checked before anything is created or moved, as
//! a pure function of the plan and the facts both hosts gave ([`MigrationFacts`]). Each problem
//! names the host, the disk, the path and the fix.
//!
//! The facts come first: [`crate::plan::destinations`] says which paths the target must
//! answer for; the flow asks the hosts; [`slices`] decides storage slices from the answers, so
//! the plan is made once, with them; [`check`] judges it.

use serde::Serialize;

use crate::domain::{DiskSource, DiskType};
use crate::facts::{DomainState, MigrationFacts, PathKind, PoolKind};
use crate::plan::{Decision, Destination, Plan};

/// Why preflight refuses: one stable code per check, for scripts and tests (JSON carries it as
/// `code`), the prose beside it for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// A cold move of a guest that is not shut off.
    SourceNotShutOff,
    /// A live migration of a guest that is not running (or paused) on the source.
    SourceNotRunning,
    /// A domain of the guest's name exists on the target.
    OnTarget,
    /// The target reports the source's host UUID.
    SameHost,
    /// The source could not give a disk's size.
    DiskSizeUnknown,
    /// A shared disk's path does not exist on the target.
    SharedPathMissing,
    /// A shared disk's path on the target has another size: not the same data.
    SharedSizeMismatch,
    /// A copy's destination is not a file or block device path.
    DestNotPath,
    /// A copy's destination is used by another domain on the target.
    DestInUse,
    /// The target was not asked about a copy's destination (a bug).
    NotProbed,
    /// A copy's destination is a file where the plan writes a block device, or the reverse.
    KindMismatch,
    /// A copy's destination is smaller than the disk.
    TooSmall,
    /// A copy's destination is larger than the disk (and no slice can be used).
    TooLarge,
    /// A disk in another format than raw onto a block device.
    FormatOnBlock,
    /// A block device destination that does not exist and cannot be created.
    BlockMissing,
    /// A file destination whose directory does not exist.
    DirMissing,
    /// Not enough room in the destination's directory.
    NoRoom,
    /// `--preseed` and a copied disk that cannot be frozen (shareable, read-only, a chain, a
    /// slice, not a raw file or device), or a cold move.
    CannotPreseed,
    /// A disk runs on an overlay of an earlier run's pre-seed that did not end.
    Frozen,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceNotShutOff => "source_not_shut_off",
            Self::SourceNotRunning => "source_not_running",
            Self::OnTarget => "on_target",
            Self::SameHost => "same_host",
            Self::DiskSizeUnknown => "disk_size_unknown",
            Self::SharedPathMissing => "shared_path_missing",
            Self::SharedSizeMismatch => "shared_size_mismatch",
            Self::DestNotPath => "dest_not_path",
            Self::DestInUse => "dest_in_use",
            Self::NotProbed => "not_probed",
            Self::KindMismatch => "kind_mismatch",
            Self::TooSmall => "too_small",
            Self::TooLarge => "too_large",
            Self::FormatOnBlock => "format_on_block",
            Self::BlockMissing => "block_missing",
            Self::DirMissing => "dir_missing",
            Self::NoRoom => "no_room",
            Self::CannotPreseed => "cannot_preseed",
            Self::Frozen => "frozen",
        }
    }
}

/// One reason the migration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: ProblemCode,
    pub host: String,
    pub disk: Option<String>,
    pub path: Option<String>,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(d) = &self.disk {
            write!(f, ", disk {d}")?;
        }
        if let Some(p) = &self.path {
            write!(f, ", {p}")?;
        }
        write!(f, ": {} [{}] — {}", self.what, self.code.as_str(), self.fix)
    }
}

/// The problems as a list an operator reads.
pub fn render(problems: &[Problem]) -> String {
    let mut s = format!("{} problem(s)", problems.len());
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    s
}

/// A copy target Ferry must create on the target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToCreate {
    pub disk: String,
    pub path: String,
    pub capacity: u64,
    pub format: String,
}

/// What preflight found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub problems: Vec<Problem>,
    /// The checks that passed, for the operator.
    pub passed: Vec<String>,
    pub to_create: Vec<ToCreate>,
}

/// The paths the target must answer for: every planned path, except those of disks whose
/// volume a hook has yet to make (`hooked`).
pub fn paths_to_probe(
    dests: &[Destination],
    hooked: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    dests
        .iter()
        .filter(|d| d.decision != Decision::NoMedia && !hooked.contains(&d.disk))
        .filter_map(|d| d.path.clone())
        .collect()
}

/// Storage slices: a raw disk copied onto a block device larger than it uses the device's
/// first bytes, exactly its size. `(disk, size)` for each.
pub fn slices(dests: &[Destination], f: &MigrationFacts) -> Vec<(String, u64)> {
    dests
        .iter()
        .filter(|d| d.decision == Decision::Copy && d.kind == DiskType::Block)
        .filter(|d| d.format.as_deref().unwrap_or("raw") == "raw")
        .filter_map(|d| {
            let size = f.disk_sizes.get(&d.disk)?.capacity;
            let probe = f.probes.get(d.path.as_deref()?)?;
            match &probe.info {
                Some(info) => (info.kind == PathKind::Block && info.capacity > size)
                    .then(|| (d.disk.clone(), size)),
                // An LV Ferry creates: LVM rounds it up to the extent size.
                None => {
                    (probe.parent_pool == Some(PoolKind::Logical)).then(|| (d.disk.clone(), size))
                }
            }
        })
        .collect()
}

/// Bytes each copied disk moves: a block device's whole size, a file's allocation.
pub fn copy_bytes(plan: &Plan, f: &MigrationFacts) -> Vec<(String, u64)> {
    plan.disks
        .iter()
        .filter(|d| d.decision == Decision::Copy)
        .filter_map(|d| {
            let s = f.disk_sizes.get(&d.target)?;
            Some((
                d.target.clone(),
                s.copy_bytes(d.source_type == DiskType::Block),
            ))
        })
        .collect()
}

fn state_name(s: Option<DomainState>) -> &'static str {
    match s {
        None => "not defined",
        Some(DomainState::Running) => "running",
        Some(DomainState::Paused) => "paused",
        Some(DomainState::ShutOff) => "shut off",
        Some(DomainState::PostcopyFailed) => "split by a failed post-copy migration",
        Some(DomainState::Other) => "in another state",
    }
}

fn kind_name(k: PathKind) -> &'static str {
    match k {
        PathKind::File => "file",
        PathKind::Block => "block device",
        PathKind::Dir => "directory",
        PathKind::Other => "special file",
    }
}

/// Judge the plan against the facts.
pub fn check(plan: &Plan, f: &MigrationFacts) -> Checked {
    let mut c = Checked::default();
    let (src, dst, guest) = (&f.source_uri, &f.target_uri, &f.guest);
    let problem = |code: ProblemCode,
                   host: &str,
                   disk: Option<&str>,
                   path: Option<&str>,
                   what: String,
                   fix: String| Problem {
        code,
        host: host.to_string(),
        disk: disk.map(str::to_string),
        path: path.map(str::to_string),
        what,
        fix,
    };

    // The guest runs on the source (shut off there, for a cold move) and not on the target.
    match f.source_state {
        Some(DomainState::ShutOff) if f.cold => c
            .passed
            .push(format!("{src}: {guest} is shut off (a cold move)")),
        s if f.cold => c.problems.push(problem(
            ProblemCode::SourceNotShutOff,
            src,
            None,
            None,
            format!(
                "{guest} is not shut off ({}): a cold move needs it shut off",
                state_name(s)
            ),
            format!("move it live (ferry migrate {guest}), or shut it down first"),
        )),
        Some(s @ (DomainState::Running | DomainState::Paused)) => c
            .passed
            .push(format!("{src}: {guest} is {}", state_name(Some(s)))),
        s => c.problems.push(problem(
            ProblemCode::SourceNotRunning,
            src,
            None,
            None,
            format!("{guest} is not running ({})", state_name(s)),
            format!("start it (virsh -c {src} start {guest}) or move it cold"),
        )),
    }
    if let Some(s) = f.target_state {
        c.problems.push(problem(
            ProblemCode::OnTarget,
            dst,
            None,
            None,
            format!(
                "a domain named {guest} already exists there ({})",
                state_name(Some(s))
            ),
            format!("if it is a stale definition, remove it: virsh -c {dst} undefine {guest}"),
        ));
    }
    if f.source_uuid.is_some() && f.source_uuid == f.target_uuid {
        c.problems.push(problem(
            ProblemCode::SameHost,
            dst,
            None,
            None,
            format!(
                "it reports the same host UUID as the source ({})",
                f.source_uuid.as_deref().unwrap_or("")
            ),
            "libvirt refuses to migrate to the same host: give each host its own host_uuid in libvirtd.conf".into(),
        ));
    }

    for d in &plan.disks {
        let disk = d.target.as_str();
        let size = f.disk_sizes.get(disk);
        let no_size = || {
            problem(
                ProblemCode::DiskSizeUnknown,
                src,
                Some(disk),
                None,
                "its size could not be read on the source".into(),
                "check that the guest runs and the disk is attached (virsh domblkinfo)".into(),
            )
        };
        match d.decision {
            Decision::NoMedia => {}
            Decision::Shared => {
                let Some(dest) = d.dest_path() else {
                    c.passed.push(format!("disk {disk}: {}", d.reason));
                    continue;
                };
                let Some(info) = f.probes.get(dest).and_then(|p| p.info.as_ref()) else {
                    c.problems.push(problem(
                        ProblemCode::SharedPathMissing,
                        dst,
                        Some(disk),
                        Some(dest),
                        "the shared disk's path does not exist there".to_string(),
                        "mount the shared storage on the target, or correct --map".into(),
                    ));
                    continue;
                };
                let Some(size) = size else {
                    c.problems.push(no_size());
                    continue;
                };
                if info.capacity != size.capacity {
                    c.problems.push(problem(
                        ProblemCode::SharedSizeMismatch,
                        dst,
                        Some(disk),
                        Some(dest),
                        format!(
                            "it is {} bytes, the guest's disk is {} bytes: not the same data",
                            info.capacity, size.capacity
                        ),
                        "check --map: it must point at the same shared image".into(),
                    ));
                    continue;
                }
                c.passed.push(format!(
                    "disk {disk}: shared, {dest} exists on the target with the same size ({} bytes)",
                    size.capacity
                ));
            }
            Decision::Copy => {
                if f.hooked.contains(disk) {
                    // A dry run: the hook has not made the volume yet.
                    c.passed.push(format!(
                        "disk {disk}: a hook creates its volume on the target before the \
                             migration ({})",
                        d.reason
                    ));
                    continue;
                }
                let dest = match &d.dest_source {
                    Some(DiskSource::Path { path }) => path.clone(),
                    _ => {
                        c.problems.push(problem(
                            ProblemCode::DestNotPath,
                            dst,
                            Some(disk),
                            None,
                            "Ferry can only copy to a file or block device path".into(),
                            format!("name one: --copy {disk}=/path"),
                        ));
                        continue;
                    }
                };
                let Some(size) = size else {
                    c.problems.push(no_size());
                    continue;
                };
                let format = d.format.clone().unwrap_or_else(|| "raw".into());
                if let Some((_, user)) = f.in_use.iter().find(|(p, _)| *p == dest) {
                    c.problems.push(problem(
                        ProblemCode::DestInUse,
                        dst,
                        Some(disk),
                        Some(&dest),
                        format!("it is in use by domain {user}"),
                        format!("choose a free target: --copy {disk}=OTHER_PATH"),
                    ));
                    continue;
                }
                let Some(probe) = f.probes.get(&dest) else {
                    c.problems.push(problem(
                        ProblemCode::NotProbed,
                        dst,
                        Some(disk),
                        Some(&dest),
                        "the target was not asked about this path".into(),
                        "this is a bug in Ferry: report it".into(),
                    ));
                    continue;
                };
                let want_block = d.dest_type == DiskType::Block;
                match &probe.info {
                    Some(info) => {
                        let is_block = info.kind == PathKind::Block;
                        if is_block != want_block {
                            c.problems.push(problem(
                                ProblemCode::KindMismatch,
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!(
                                    "it is a {} but the plan writes a {} disk",
                                    kind_name(info.kind),
                                    d.dest_type
                                ),
                                "block devices go under /dev; files elsewhere".into(),
                            ));
                        } else if info.capacity < size.capacity {
                            c.problems.push(problem(
                                ProblemCode::TooSmall,
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!(
                                    "the target is too small: {} bytes, the disk needs exactly {}",
                                    info.capacity, size.capacity
                                ),
                                format!("give a target of exactly {} bytes, or a path Ferry creates", size.capacity),
                            ));
                        } else if info.capacity > size.capacity
                            // (`>=` would read the same: a slice is only planned for a larger
                            // device, and an equal one passes below as an exact copy.)
                            && d.dest_slice == Some(size.capacity)
                        {
                            c.passed.push(format!(
                                "disk {disk}: copy into the first {} bytes of block device {dest} ({} bytes) as a storage slice",
                                size.capacity, info.capacity
                            ));
                        } else if info.capacity > size.capacity {
                            c.problems.push(problem(
                                ProblemCode::TooLarge,
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!(
                                    "the target is larger: {} bytes, the {format} disk is {}; the copy needs the exact size",
                                    info.capacity, size.capacity
                                ),
                                format!(
                                    "give a target of exactly {} bytes, or a path Ferry creates",
                                    size.capacity
                                ),
                            ));
                        } else if is_block && format != "raw" {
                            c.problems.push(problem(
                                ProblemCode::FormatOnBlock,
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!("the disk is {format}; a block device target holds raw data only"),
                                format!("copy it to a file instead: --copy {disk}=/path/{disk}.{format}"),
                            ));
                        } else {
                            c.passed.push(format!(
                                "disk {disk}: copy to existing {} {dest} of exactly {} bytes",
                                kind_name(info.kind),
                                size.capacity
                            ));
                        }
                    }
                    None if want_block && probe.parent_pool != Some(PoolKind::Logical) => c.problems.push(problem(
                        ProblemCode::BlockMissing,
                        dst,
                        Some(disk),
                        Some(&dest),
                        "the block device does not exist".into(),
                        "create it on the target (a namespace, an LV) at the disk's exact size, or copy to a file".into(),
                    )),
                    None if !probe.parent_exists => c.problems.push(problem(
                        ProblemCode::DirMissing,
                        dst,
                        Some(disk),
                        Some(&dest),
                        "its directory does not exist".into(),
                        "create the directory on the target, or choose another --copy destination".into(),
                    )),
                    None => {
                        // A file may be sparse; an LV takes its whole size.
                        let need = if want_block {
                            size.capacity
                        } else {
                            size.allocation.max(1)
                        };
                        match probe.parent_free {
                            Some(free) if free < need => c.problems.push(problem(
                                ProblemCode::NoRoom,
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!("not enough free space: {free} bytes free, the disk holds {need}"),
                                "free space there, or copy elsewhere".into(),
                            )),
                            _ => {
                                c.passed.push(if want_block {
                                    format!(
                                        "disk {disk}: Ferry will create the logical volume {dest} ({} bytes, \
                                         rounded up by LVM; the guest uses a storage slice of exactly that)",
                                        size.capacity
                                    )
                                } else {
                                    format!(
                                        "disk {disk}: Ferry will create {dest} ({format}, exactly {} bytes)",
                                        size.capacity
                                    )
                                });
                                c.to_create.push(ToCreate {
                                    disk: disk.to_string(),
                                    path: dest.clone(),
                                    capacity: size.capacity,
                                    format,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{DiskSize, PathInfo, PathProbe};
    use crate::{plan, MigrationOptions, Rules};

    const GUEST: &str = "<domain type='qemu'><name>g</name><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/mnt/nfs/a.img'/><target dev='vda'/></disk>\
        <disk type='block' device='disk'><driver name='qemu' type='raw'/>\
        <source dev='/dev/nvme2n2'/><target dev='vdb'/></disk></devices></domain>";
    const MIB: u64 = 1 << 20;

    fn rules(copy: &str) -> Rules {
        Rules {
            map: vec!["/mnt/nfs=/mnt/b".parse().unwrap()],
            copy: vec![copy.parse().unwrap()],
        }
    }

    fn probe(kind: PathKind, capacity: u64) -> PathProbe {
        PathProbe {
            info: Some(PathInfo {
                kind,
                capacity,
                allocation: capacity,
                format: None,
            }),
            parent_exists: true,
            parent_free: Some(1 << 30),
            parent_pool: None,
        }
    }

    fn facts() -> MigrationFacts {
        let size = |c| DiskSize {
            capacity: c,
            allocation: c / 2,
            physical: c,
        };
        MigrationFacts {
            guest: "g".into(),
            source_uri: "h1".into(),
            target_uri: "h2".into(),
            source_state: Some(DomainState::Running),
            source_uuid: Some("u1".into()),
            target_uuid: Some("u2".into()),
            disk_sizes: [
                ("vda".into(), size(32 * MIB)),
                ("vdb".into(), size(64 * MIB)),
            ]
            .into(),
            probes: [
                ("/mnt/b/a.img".into(), probe(PathKind::File, 32 * MIB)),
                ("/dev/n5".into(), probe(PathKind::Block, 64 * MIB)),
                ("/dev/n6".into(), probe(PathKind::Block, 32 * MIB)),
                ("/dev/n7".into(), probe(PathKind::Block, 96 * MIB)),
            ]
            .into(),
            ..Default::default()
        }
    }

    /// The flow's order: destinations, facts, slices, one plan, the check.
    fn judge(copy: &str, f: &MigrationFacts) -> (Plan, Checked) {
        let mut r = rules(copy);
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        for (disk, size) in slices(&dests, f) {
            r.copy.iter_mut().find(|c| c.disk == disk).unwrap().slice = Some(size);
        }
        let p = plan(GUEST, None, "h2", &r, &MigrationOptions::default()).unwrap();
        let c = check(&p, f);
        (p, c)
    }

    fn whats(c: &Checked) -> Vec<&str> {
        c.problems.iter().map(|p| p.what.as_str()).collect()
    }

    #[test]
    fn the_seed_passes_and_asks_only_about_the_planned_paths() {
        let r = rules("vdb=/dev/n5");
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        assert_eq!(
            paths_to_probe(&dests, &Default::default()),
            vec!["/mnt/b/a.img", "/dev/n5"]
        );
        let (p, c) = judge("vdb=/dev/n5", &facts());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(c.to_create.is_empty());
        assert_eq!(c.passed.len(), 3, "{:?}", c.passed);
        assert!(
            c.passed.iter().any(|p| p
                == "disk vdb: copy to existing block device /dev/n5 of exactly 67108864 bytes"),
            "{:?}",
            c.passed
        );
        assert_eq!(
            copy_bytes(&p, &facts()),
            vec![("vdb".to_string(), 64 * MIB)]
        );
    }

    #[test]
    fn a_larger_raw_device_gets_a_slice_in_the_one_plan_a_smaller_one_is_refused() {
        let (p, c) = judge("vdb=/dev/n7", &facts());
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(p.disks[1].dest_slice, Some(64 * MIB));
        assert!(p
            .dest_xml
            .contains("<slice type='storage' offset='0' size='67108864'/>"));
        let (_, c) = judge("vdb=/dev/n6", &facts());
        assert_eq!(
            whats(&c),
            vec!["the target is too small: 33554432 bytes, the disk needs exactly 67108864"]
        );
    }

    #[test]
    fn every_refusal_names_the_host_disk_and_path() {
        let mut f = facts();
        f.probes.remove("/mnt/b/a.img");
        f.in_use.push(("/dev/n5".into(), "other".into()));
        f.target_state = Some(DomainState::ShutOff);
        f.target_uuid = Some("u1".into());
        let (_, c) = judge("vdb=/dev/n5", &f);
        let w = whats(&c);
        assert!(
            w.contains(&"a domain named g already exists there (shut off)"),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|x| x.starts_with("it reports the same host UUID")),
            "{w:?}"
        );
        assert!(
            w.contains(&"the shared disk's path does not exist there"),
            "{w:?}"
        );
        assert!(w.contains(&"it is in use by domain other"), "{w:?}");
        let shared = c
            .problems
            .iter()
            .find(|p| p.disk.as_deref() == Some("vda"))
            .unwrap();
        assert_eq!(
            (shared.host.as_str(), shared.path.as_deref()),
            ("h2", Some("/mnt/b/a.img"))
        );
        // A guest that does not run, a size the source could not give.
        let mut f = facts();
        f.source_state = Some(DomainState::ShutOff);
        f.disk_sizes.remove("vdb");
        let (_, c) = judge("vdb=/dev/n5", &f);
        assert!(whats(&c).contains(&"g is not running (shut off)"));
        assert!(whats(&c).contains(&"its size could not be read on the source"));
    }

    #[test]
    fn a_cold_move_needs_the_guest_shut_off_and_a_live_one_needs_it_running() {
        let mut f = facts();
        f.cold = true;
        f.source_state = Some(DomainState::ShutOff);
        let (_, c) = judge("vdb=/dev/n5", &f);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(c
            .passed
            .iter()
            .any(|p| p.contains("shut off (a cold move)")));
        for s in [Some(DomainState::Running), Some(DomainState::Paused), None] {
            f.source_state = s;
            let (_, c) = judge("vdb=/dev/n5", &f);
            assert!(
                whats(&c)
                    .iter()
                    .any(|w| w.contains("a cold move needs it shut off")),
                "{s:?}: {:?}",
                c.problems
            );
        }
        // Live, the same guest running passes.
        f.cold = false;
        f.source_state = Some(DomainState::Running);
        let (_, c) = judge("vdb=/dev/n5", &f);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn an_lv_is_created_in_a_logical_pool_and_used_through_a_slice_a_missing_device_is_refused() {
        let mut f = facts();
        let lv = |pool| PathProbe {
            info: None,
            parent_exists: true,
            parent_free: Some(1 << 30),
            parent_pool: pool,
        };
        f.probes
            .insert("/dev/vg0/g-vdb".into(), lv(Some(PoolKind::Logical)));
        let (p, c) = judge("vdb=/dev/vg0/g-vdb", &f);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(p.disks[1].dest_slice, Some(64 * MIB));
        assert_eq!(c.to_create[0].path, "/dev/vg0/g-vdb");
        assert_eq!(c.to_create[0].capacity, 64 * MIB);
        // Not in a logical pool: a block device Ferry cannot make.
        f.probes.insert("/dev/vg0/g-vdb".into(), lv(None));
        let (_, c) = judge("vdb=/dev/vg0/g-vdb", &f);
        assert_eq!(whats(&c), vec!["the block device does not exist"]);
        assert!(c.to_create.is_empty());
    }

    #[test]
    fn a_missing_file_is_created_when_its_directory_has_room() {
        let mut f = facts();
        let absent = |free| PathProbe {
            info: None,
            parent_exists: true,
            parent_free: Some(free),
            parent_pool: None,
        };
        f.probes.insert("/srv/vdb.img".into(), absent(1 << 30));
        let (_, c) = judge("vdb=/srv/vdb.img", &f);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.to_create[0].capacity, 64 * MIB);
        assert_eq!(c.to_create[0].format, "raw");
        f.probes.insert("/srv/vdb.img".into(), absent(MIB));
        let (_, c) = judge("vdb=/srv/vdb.img", &f);
        assert!(
            whats(&c)[0].starts_with("not enough free space"),
            "{:?}",
            whats(&c)
        );
        assert!(c.to_create.is_empty());
    }

    /// A file target at `/srv/s/vdb.raw` whose directory answers `parent`.
    fn file_target(parent: PathProbe) -> (Plan, Checked) {
        let mut f = facts();
        f.probes.insert("/srv/s/vdb.raw".into(), parent);
        judge("vdb=/srv/s/vdb.raw", &f)
    }

    fn dir(free: Option<u64>, exists: bool) -> PathProbe {
        PathProbe {
            info: None,
            parent_exists: exists,
            parent_free: free,
            parent_pool: None,
        }
    }

    #[test]
    fn a_copy_target_is_judged_to_the_byte() {
        let mut f = facts();
        for (cap, want) in [
            (64 * MIB - 1, "the target is too small"),
            (64 * MIB + 1, "the target is larger"),
        ] {
            // A file target: no slice for a file, so one byte either way is refused.
            f.probes
                .insert("/srv/s/x.raw".into(), probe(PathKind::File, cap));
            let (_, c) = judge("vdb=/srv/s/x.raw", &f);
            assert!(
                whats(&c).iter().any(|w| w.starts_with(want)),
                "{cap}: {:?}",
                whats(&c)
            );
        }
        f.probes
            .insert("/srv/s/x.raw".into(), probe(PathKind::File, 64 * MIB));
        let (_, c) = judge("vdb=/srv/s/x.raw", &f);
        assert!(whats(&c).is_empty(), "{:?}", whats(&c));
    }

    #[test]
    fn a_device_one_byte_larger_gets_a_slice_one_of_the_same_size_does_not() {
        let mut f = facts();
        f.probes
            .insert("/dev/n8".into(), probe(PathKind::Block, 64 * MIB + 1));
        let r = rules("vdb=/dev/n8");
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        assert_eq!(slices(&dests, &f), vec![("vdb".to_string(), 64 * MIB)]);
        let r = rules("vdb=/dev/n5");
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        assert!(slices(&dests, &f).is_empty(), "same size: no slice");
        // A shared device is never sliced, whatever the target's size.
        let r = Rules {
            map: vec![
                "/mnt/nfs=/mnt/b".parse().unwrap(),
                "/dev/nvme2n2=/dev/n7".parse().unwrap(),
            ],
            copy: vec![],
        };
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        assert!(slices(&dests, &f).is_empty());
        // A larger *file* is not a device: no slice, refused.
        f.probes
            .insert("/srv/big.raw".into(), probe(PathKind::File, 96 * MIB));
        let r = rules("vdb=/srv/big.raw");
        let dests = crate::plan::destinations(GUEST, &r).unwrap();
        assert!(slices(&dests, &f).is_empty());
    }

    #[test]
    fn a_file_ferry_creates_needs_its_directory_and_room_for_what_the_disk_holds() {
        // vdb holds 32 MiB (allocation) of 64.
        let (_, c) = file_target(dir(Some(32 * MIB), true));
        assert!(whats(&c).is_empty(), "exactly enough room: {:?}", whats(&c));
        assert_eq!(c.to_create.len(), 1);
        let (_, c) = file_target(dir(Some(32 * MIB - 1), true));
        assert!(
            whats(&c)[0].starts_with("not enough free space: 33554431 bytes free"),
            "{:?}",
            whats(&c)
        );
        assert!(c.to_create.is_empty());
        let (_, c) = file_target(dir(None, false));
        assert_eq!(whats(&c), vec!["its directory does not exist"]);
    }

    #[test]
    fn the_problem_text_carries_host_disk_path_and_fix() {
        let (_, c) = judge("vdb=/dev/n6", &facts());
        let text = render(&c.problems);
        assert!(text.contains("h2"), "{text}");
        assert!(text.contains("vdb"), "{text}");
        assert!(text.contains("/dev/n6"), "{text}");
        assert!(
            text.contains("give a target of exactly 67108864 bytes"),
            "{text}"
        );
        let one = c.problems[0].to_string();
        assert!(one.contains("the target is too small"), "{one}");
        assert!(one.contains("give a target of exactly"), "{one}");
        assert!(one.contains("/dev/n6"), "{one}");
    }

    fn codes(c: &Checked) -> Vec<ProblemCode> {
        c.problems.iter().map(|p| p.code).collect()
    }

    #[test]
    fn a_shared_image_of_another_size_is_not_the_same_data() {
        let mut f = facts();
        for (cap, want) in [
            (32 * MIB + 1, vec![ProblemCode::SharedSizeMismatch]),
            (32 * MIB - 1, vec![ProblemCode::SharedSizeMismatch]),
            (32 * MIB, vec![]),
        ] {
            f.probes
                .insert("/mnt/b/a.img".into(), probe(PathKind::File, cap));
            let (_, c) = judge("vdb=/dev/n5", &f);
            assert_eq!(codes(&c), want, "{cap}");
        }
        let p = &judge("vdb=/dev/n5", &{
            f.probes
                .insert("/mnt/b/a.img".into(), probe(PathKind::File, 1));
            f
        })
        .1
        .problems[0];
        assert_eq!(
            (p.host.as_str(), p.disk.as_deref(), p.path.as_deref()),
            ("h2", Some("vda"), Some("/mnt/b/a.img"))
        );
    }

    #[test]
    fn a_copy_onto_the_other_kind_of_target_is_refused() {
        let mut f = facts();
        // A block disk planned onto a path that is a file on the target, and the reverse.
        f.probes
            .insert("/dev/n5".into(), probe(PathKind::File, 64 * MIB));
        let (_, c) = judge("vdb=/dev/n5", &f);
        assert_eq!(codes(&c), vec![ProblemCode::KindMismatch]);
        f.probes
            .insert("/srv/s/x.raw".into(), probe(PathKind::Block, 64 * MIB));
        let (_, c) = judge("vdb=/srv/s/x.raw", &f);
        assert_eq!(codes(&c), vec![ProblemCode::KindMismatch]);
        // The same kind passes.
        f.probes
            .insert("/srv/s/x.raw".into(), probe(PathKind::File, 64 * MIB));
        assert!(codes(&judge("vdb=/srv/s/x.raw", &f).1).is_empty());
    }

    #[test]
    fn a_qcow2_disk_onto_a_block_device_is_refused_a_raw_one_is_not() {
        let mut f = facts();
        f.probes
            .insert("/dev/n9".into(), probe(PathKind::Block, 32 * MIB));
        let r = Rules {
            map: vec![],
            copy: vec![
                "vda=/dev/n9".parse().unwrap(),
                "vdb=/dev/n5".parse().unwrap(),
            ],
        };
        let p = plan(GUEST, None, "h2", &r, &MigrationOptions::default()).unwrap();
        let c = check(&p, &f);
        assert_eq!(codes(&c), vec![ProblemCode::FormatOnBlock]);
        assert_eq!(c.problems[0].disk.as_deref(), Some("vda"));
    }

    #[test]
    fn a_copy_whose_destination_is_not_a_path_is_refused() {
        let (mut p, c) = judge("vdb=/dev/n5", &facts());
        assert!(c.problems.is_empty());
        p.disks[1].dest_source = Some(DiskSource::Volume {
            pool: "p".into(),
            volume: "v".into(),
            mode: None,
        });
        assert_eq!(codes(&check(&p, &facts())), vec![ProblemCode::DestNotPath]);
    }

    #[test]
    fn a_paused_guest_migrates_live_a_shut_off_or_missing_one_does_not() {
        let mut f = facts();
        for (state, want) in [
            (Some(DomainState::Running), vec![]),
            (Some(DomainState::Paused), vec![]),
            (
                Some(DomainState::ShutOff),
                vec![ProblemCode::SourceNotRunning],
            ),
            (None, vec![ProblemCode::SourceNotRunning]),
        ] {
            f.source_state = state;
            assert_eq!(codes(&judge("vdb=/dev/n5", &f).1), want, "{state:?}");
        }
    }

    #[test]
    fn every_refusal_of_the_seed_carries_its_code() {
        let mut f = facts();
        f.probes.remove("/mnt/b/a.img");
        f.in_use.push(("/dev/n5".into(), "other".into()));
        f.target_state = Some(DomainState::ShutOff);
        f.target_uuid = Some("u1".into());
        let (_, c) = judge("vdb=/dev/n5", &f);
        assert_eq!(
            codes(&c),
            vec![
                ProblemCode::OnTarget,
                ProblemCode::SameHost,
                ProblemCode::SharedPathMissing,
                ProblemCode::DestInUse
            ]
        );
        let json = serde_json::to_value(&c.problems[0]).unwrap();
        assert_eq!(json["code"], "on_target");
        for p in &c.problems {
            assert_eq!(serde_json::to_value(p.code).unwrap(), p.code.as_str());
        }
    }

    #[test]
    fn hooked_and_empty_disks_are_not_probed() {
        const CD: &str = "<domain type='qemu'><name>g</name><devices>\
            <disk type='file' device='cdrom'><target dev='hdc'/></disk>\
            <disk type='block' device='disk'><driver name='qemu' type='raw'/>\
            <source dev='/dev/nvme2n2'/><target dev='vdb'/></disk></devices></domain>";
        let r = Rules {
            map: vec![],
            copy: vec!["vdb=/dev/n5".parse().unwrap()],
        };
        let dests = crate::plan::destinations(CD, &r).unwrap();
        assert_eq!(paths_to_probe(&dests, &Default::default()), vec!["/dev/n5"]);
        let hooked = ["vdb".to_string()].into();
        assert!(paths_to_probe(&dests, &hooked).is_empty());
    }
}
