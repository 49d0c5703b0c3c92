//! Preflight: everything that can be checked before anything is created or moved. Each problem
//! names the host, the disk, the path and the fix. Only reads.

use ferry_core::domain::{DiskSource, DiskType};
use ferry_core::{Decision, Plan};
use ferry_hypervisor::{DomainState, HvError, Hypervisor, PathKind};
use serde::Serialize;

use crate::inventory::Inventory;

/// One reason the migration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
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
        write!(f, ": {} — {}", self.what, self.fix)
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
    /// Disks whose target is a larger raw block device: (disk, size) for a storage slice. The
    /// plan must be made again with them.
    pub slices: Vec<(String, u64)>,
}

/// Check both hosts against the plan. Fills in each copied disk's bytes to copy.
pub fn check(hv: &dyn Hypervisor, inv: &Inventory, plan: &mut Plan) -> Result<Checked, HvError> {
    let mut c = Checked::default();
    let (src, dst) = (&inv.src_uri, &inv.dst_uri);
    let problem =
        |host: &str, disk: Option<&str>, path: Option<&str>, what: String, fix: String| Problem {
            host: host.to_string(),
            disk: disk.map(str::to_string),
            path: path.map(str::to_string),
            what,
            fix,
        };

    // The guest runs on the source and not on the target.
    match inv.source_state {
        Some(DomainState::Running) | Some(DomainState::Paused) => c.passed.push(format!(
            "{}: {} is {}",
            src,
            inv.guest,
            if inv.source_state == Some(DomainState::Running) {
                "running"
            } else {
                "paused"
            }
        )),
        s => c.problems.push(problem(
            src,
            None,
            None,
            format!("{} is not running ({})", inv.guest, state_name(s)),
            format!(
                "start it (virsh -c {src} start {}) or move it cold",
                inv.guest
            ),
        )),
    }
    if let Some(s) = inv.target_state {
        c.problems.push(problem(
            dst,
            None,
            None,
            format!(
                "a domain named {} already exists there ({})",
                inv.guest,
                state_name(Some(s))
            ),
            format!(
                "if it is a stale definition, remove it: virsh -c {dst} undefine {}",
                inv.guest
            ),
        ));
    }
    if inv.source_facts.uuid.is_some() && inv.source_facts.uuid == inv.target_facts.uuid {
        c.problems.push(problem(
            dst,
            None,
            None,
            format!(
                "it reports the same host UUID as the source ({})",
                inv.source_facts.uuid.as_deref().unwrap_or("")
            ),
            "libvirt refuses to migrate to the same host: give each host its own host_uuid in libvirtd.conf".into(),
        ));
    }

    // Disks the target's other domains use, running or defined.
    let in_use = crate::cleanup::paths_in_use(hv, inv.dst, Some(&inv.guest))?;

    for d in plan.disks.iter_mut() {
        let disk = d.target.as_str();
        match d.decision {
            Decision::NoMedia => {}
            Decision::Shared => {
                let Some(dest) = d.dest_path().map(str::to_string) else {
                    c.passed.push(format!("disk {disk}: {}", d.reason));
                    continue;
                };
                let probe = hv.probe_path(inv.dst, &dest)?;
                let Some(info) = probe.info else {
                    c.problems.push(problem(
                        dst,
                        Some(disk),
                        Some(&dest),
                        "the shared disk's path does not exist there".to_string(),
                        "mount the shared storage on the target, or correct --map".into(),
                    ));
                    continue;
                };
                let size = hv.disk_size(inv.src, &inv.guest, disk)?;
                if info.capacity != size.capacity {
                    c.problems.push(problem(
                        dst,
                        Some(disk),
                        Some(&dest),
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
                let dest = match (&d.dest_source, &d.source) {
                    (Some(DiskSource::Path { path }), _)
                        if path.starts_with(ferry_core::storage::HOOK_PLACEHOLDER) =>
                    {
                        // A dry run: the hook has not made the volume yet.
                        c.passed.push(format!(
                            "disk {disk}: a hook creates its volume on the target before the \
                             migration ({})",
                            d.reason
                        ));
                        continue;
                    }
                    (Some(DiskSource::Path { path }), _) => path.clone(),
                    _ => {
                        c.problems.push(problem(
                            dst,
                            Some(disk),
                            None,
                            "Ferry can only copy to a file or block device path".into(),
                            format!("name one: --copy {disk}=/path"),
                        ));
                        continue;
                    }
                };
                let size = hv.disk_size(inv.src, &inv.guest, disk)?;
                d.bytes_to_copy = Some(if d.source_type == DiskType::Block {
                    size.capacity
                } else {
                    size.allocation
                });
                let format = d.format.clone().unwrap_or_else(|| "raw".into());
                if let Some((_, user)) = in_use.iter().find(|(p, _)| *p == dest) {
                    c.problems.push(problem(
                        dst,
                        Some(disk),
                        Some(&dest),
                        format!("it is in use by domain {user}"),
                        format!("choose a free target: --copy {disk}=OTHER_PATH"),
                    ));
                    continue;
                }
                let probe = hv.probe_path(inv.dst, &dest)?;
                let want_block = d.dest_type == DiskType::Block;
                match probe.info {
                    Some(info) => {
                        let is_block = info.kind == PathKind::Block;
                        if is_block != want_block {
                            c.problems.push(problem(
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
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!(
                                    "the target is too small: {} bytes, the disk needs exactly {}",
                                    info.capacity, size.capacity
                                ),
                                format!("give a target of exactly {} bytes, or a path Ferry creates", size.capacity),
                            ));
                        } else if info.capacity > size.capacity && is_block && format == "raw" {
                            // A larger raw device: the guest gets a storage slice of exactly
                            // its disk's size at the device's start.
                            if d.dest_slice == Some(size.capacity) {
                                c.passed.push(format!(
                                    "disk {disk}: copy into the first {} bytes of block device {dest} ({} bytes) as a storage slice",
                                    size.capacity, info.capacity
                                ));
                            } else {
                                c.slices.push((disk.to_string(), size.capacity));
                            }
                        } else if info.capacity > size.capacity {
                            c.problems.push(problem(
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
                    None if want_block => c.problems.push(problem(
                        dst,
                        Some(disk),
                        Some(&dest),
                        "the block device does not exist".into(),
                        "create it on the target (a namespace, an LV) at the disk's exact size, or copy to a file".into(),
                    )),
                    None if !probe.parent_exists => c.problems.push(problem(
                        dst,
                        Some(disk),
                        Some(&dest),
                        "its directory does not exist".into(),
                        "create the directory on the target, or choose another --copy destination".into(),
                    )),
                    None => {
                        let need = size.allocation.max(1);
                        match probe.parent_free {
                            Some(free) if free < need => c.problems.push(problem(
                                dst,
                                Some(disk),
                                Some(&dest),
                                format!("not enough free space: {free} bytes free, the disk holds {need}"),
                                "free space there, or copy elsewhere".into(),
                            )),
                            _ => {
                                c.passed.push(format!(
                                    "disk {disk}: Ferry will create {dest} ({format}, exactly {} bytes)",
                                    size.capacity
                                ));
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
    Ok(c)
}

fn state_name(s: Option<DomainState>) -> &'static str {
    match s {
        None => "not defined",
        Some(DomainState::Running) => "running",
        Some(DomainState::Paused) => "paused",
        Some(DomainState::ShutOff) => "shut off",
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
