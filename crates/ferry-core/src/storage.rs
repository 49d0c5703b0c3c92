//! Storage identity: which storage a disk lives on, whether the target sees the same storage,
//! and so the rules (shared → map, local → copy) that nobody had to write.
//!
//! Decided from facts only ([`PoolFacts`] of both hosts, [`Canary`] probes), in this order for
//! each disk; the first that speaks decides, and the plan says which:
//! 1. the operator's `--map`/`--copy` (and rules file);
//! 2. the inventory's shared stores;
//! 3. pool identity: the source pool that holds the disk and a target pool that is the same
//!    storage — NFS (same server and export), iSCSI (same IQN), Ceph (same pool and monitors) by
//!    their definitions; `dir`/`fs` pools by a canary (a volume created in the target's pool
//!    that appears in the source's). The disk is shared, at the same place under the target
//!    pool's path.
//! 4. otherwise, a disk in a local pool (LVM, a partitioned disk, or a directory pool that no
//!    other host's canary showed) is copied into a local store of the target with room, named
//!    `GUEST-DISK.img` (`.qcow2` for qcow2 disks; `GUEST-DISK` in an LVM pool).
//!
//! A disk on network storage, or in a directory pool another host shares, whose storage the
//! target lacks, is not copied: the target does not qualify.
//!
//! [`check_rules`] guards against the two worst mistakes, with the canary as evidence: a copy
//! whose destination is the source disk itself (mirroring a disk onto itself destroys it), and
//! a map onto a different file that merely has the same size.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::domain::{Disk, DiskSource, DiskType, Domain};
use crate::facts::{Canary, PoolFacts, PoolKind, PoolSource};
use crate::inventory::{Hook, Store};
use crate::placement::Code;
use crate::rules::{CopyRule, MapRule, Origin, Rules};

/// A reason the target cannot take the guest's storage as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageProblem {
    pub code: Code,
    pub disk: String,
    pub message: String,
}

/// What both hosts' storage says, for one (source, target) pair.
#[derive(Debug, Clone, Copy)]
pub struct StorageFacts<'a> {
    pub source_name: &'a str,
    pub target_name: &'a str,
    pub source_pools: &'a [PoolFacts],
    pub target_pools: &'a [PoolFacts],
    /// Canaries created on this target, looked for on the source.
    pub canaries: &'a [Canary],
    /// Source pools (by name) some host's canary showed to be shared storage.
    pub shared_elsewhere: &'a BTreeSet<String>,
    /// The inventory's local stores for the target, in order; empty: any local pool that can
    /// create volumes.
    pub local_stores: &'a [Store],
}

/// Bytes a copy of each disk needs on the target, by target dev.
pub type DiskBytes = std::collections::BTreeMap<String, u64>;

/// The rules that follow from storage identity, with what they rest on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Derived {
    /// The operator's rules, then the derived ones.
    pub rules: Rules,
    pub problems: Vec<StorageProblem>,
    /// Bytes to copy onto the target.
    pub copy_bytes: u64,
    /// Copies whose volume a hook creates: their rule is made once the hook names the path.
    pub hooked: Vec<HookCopy>,
}

/// A copy into a volume a hook creates on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookCopy {
    pub disk: String,
    pub bytes: u64,
    pub hook: Hook,
    /// Why the disk is local and where its copy goes.
    pub evidence: String,
}

/// Where the plan shows a hook's volume before the hook has made it (plans and dry runs).
pub const HOOK_PLACEHOLDER: &str = "/dev/ferry-hook";

impl HookCopy {
    /// The copy rule once the hook created `path`.
    pub fn rule(&self, path: &str) -> CopyRule {
        CopyRule {
            disk: self.disk.clone(),
            to: Some(path.to_string()),
            slice: None,
            origin: Origin::LocalStore {
                evidence: self.evidence.clone(),
            },
        }
    }

    /// The copy rule before the hook ran: a placeholder path under [`HOOK_PLACEHOLDER`].
    pub fn placeholder(&self, guest: &str) -> CopyRule {
        let mut r = self.rule(&format!(
            "{HOOK_PLACEHOLDER}/{}/{guest}-{}",
            self.hook.name, self.disk
        ));
        if let Origin::LocalStore { evidence } = &mut r.origin {
            evidence.push_str(" (the path is known once it has)");
        }
        r
    }
}

enum Placed {
    Pool(usize),
    Hook(Hook),
}

/// The pool among `pools` holding `path` (the longest target path wins).
pub fn pool_holding<'p>(pools: &'p [PoolFacts], path: &str) -> Option<&'p PoolFacts> {
    pools
        .iter()
        .filter(|p| p.active && p.holds(path))
        .max_by_key(|p| p.path.as_deref().map_or(0, str::len))
}

/// Why `a` (a source pool) and `b` (a target pool) are one storage, if they are.
pub fn same_storage(a: &PoolFacts, b: &PoolFacts, canaries: &[Canary]) -> Option<Origin> {
    match (&a.source, &b.source) {
        (PoolSource::Netfs { host: h1, dir: d1 }, PoolSource::Netfs { host: h2, dir: d2 })
            if h1 == h2 && d1.trim_end_matches('/') == d2.trim_end_matches('/') =>
        {
            Some(Origin::PoolIdentity {
                evidence: format!("pools {} and {} both mount {h1}:{d1}", a.name, b.name),
            })
        }
        (PoolSource::Iscsi { iqn: i1, .. }, PoolSource::Iscsi { iqn: i2, .. }) if i1 == i2 => {
            Some(Origin::PoolIdentity {
                evidence: format!("pools {} and {} are iSCSI target {i1}", a.name, b.name),
            })
        }
        (
            PoolSource::Rbd {
                pool: p1,
                hosts: m1,
            },
            PoolSource::Rbd {
                pool: p2,
                hosts: m2,
            },
        ) if p1 == p2 && m1.iter().any(|m| m2.contains(m)) => Some(Origin::PoolIdentity {
            evidence: format!(
                "pools {} and {} are Ceph pool {p1} on monitors {}",
                a.name,
                b.name,
                m1.join(",")
            ),
        }),
        (PoolSource::Directory, PoolSource::Directory) => {
            let (pa, pb) = (a.path.as_deref()?, b.path.as_deref()?);
            canaries
                .iter()
                .find(|c| c.seen && c.src_dir == pa && c.dst_dir == pb)
                .map(|c| Origin::Canary {
                    evidence: format!(
                        "volume {} created in pool {} ({pb}) on the target appeared in pool {} \
                         ({pa}) on the source",
                        c.name, b.name, a.name
                    ),
                })
        }
        _ => None,
    }
}

/// The directory pairs (source dir, target dir) whose identity only a canary can tell, for
/// deriving rules: every source `dir`/`fs` pool holding one of the guest's disks against every
/// target `dir`/`fs` pool; and, for checking the operator's rules, each mapped or copied
/// path's directory against the source directories of the disks.
pub fn canary_pairs(
    dom: &Domain,
    rules: &Rules,
    source_pools: &[PoolFacts],
    target_pools: &[PoolFacts],
) -> Vec<(String, String)> {
    let mut pairs = BTreeSet::new();
    // A directory of device nodes gets no canary: Ferry creates no file under /dev.
    let dir_pool = |p: &&PoolFacts| {
        p.active
            && p.source == PoolSource::Directory
            && !p.path.as_deref().is_some_and(|x| x.starts_with("/dev/"))
    };
    let src_pool_dirs: BTreeSet<&str> = dom
        .disks
        .iter()
        .filter_map(Disk::path)
        .filter_map(|p| pool_holding(source_pools, p))
        .filter(dir_pool)
        .filter_map(|p| p.path.as_deref())
        .collect();
    for t in target_pools.iter().filter(dir_pool) {
        for s in &src_pool_dirs {
            if let Some(tp) = &t.path {
                pairs.insert((s.to_string(), tp.clone()));
            }
        }
    }
    for (src, dst) in rule_paths(dom, rules) {
        if let (Some(sd), Some(dd)) = (parent(&src), parent(&dst)) {
            pairs.insert((sd.to_string(), dd.to_string()));
        }
    }
    pairs.into_iter().collect()
}

/// (source path, target path) pairs the operator's rules make whose identity matters: every
/// mapped path; every copy destination against every disk's source.
fn rule_paths(dom: &Domain, rules: &Rules) -> Vec<(String, String)> {
    let mut out = vec![];
    for d in &dom.disks {
        let Some(src) = d.path() else { continue };
        if let Some(to) = rules.map_for_path(src).and_then(|m| m.apply(src)) {
            out.push((src.to_string(), to));
        }
        for c in &rules.copy {
            if let Some(to) = &c.to {
                out.push((src.to_string(), to.clone()));
            }
        }
    }
    out.retain(|(s, t)| !s.starts_with("/dev/") && !t.starts_with("/dev/"));
    out
}

fn parent(p: &str) -> Option<&str> {
    std::path::Path::new(p).parent()?.to_str()
}

fn file_name(p: &str) -> Option<&str> {
    std::path::Path::new(p).file_name()?.to_str()
}

/// Refuse what would destroy data, with the canary as evidence: a copy whose destination is a
/// disk's own source, and a map whose destination is not the same storage.
pub fn check_rules(dom: &Domain, rules: &Rules, canaries: &[Canary]) -> Vec<StorageProblem> {
    let mut problems = vec![];
    let probe = |src_dir: &str, dst_dir: &str| {
        canaries
            .iter()
            .find(|c| c.src_dir == src_dir && c.dst_dir == dst_dir)
    };
    for d in &dom.disks {
        let Some(src) = d.path() else { continue };
        if let Some(m) = rules.map_for_path(src) {
            let Some(to) = m.apply(src) else { continue };
            if let (Some(sd), Some(dd)) = (parent(src), parent(&to)) {
                if let Some(c) = probe(sd, dd).filter(|c| !c.seen) {
                    problems.push(StorageProblem {
                        code: Code::MapNotSameStorage,
                        disk: d.target.clone(),
                        message: format!(
                            "disk {}: {} is not the same storage as {src}: volume {} created in \
                             {dd} on the target did not appear in {sd} on the source; a \
                             same-sized file there is another disk. Correct the map ({}={})",
                            d.target, to, c.name, m.from, m.to
                        ),
                    });
                }
            }
        }
    }
    for c in &rules.copy {
        let Some(to) = &c.to else { continue };
        let (Some(dd), Some(base)) = (parent(to), file_name(to)) else {
            continue;
        };
        for d in &dom.disks {
            let Some(src) = d.path() else { continue };
            let Some(sd) = parent(src) else { continue };
            let Some(k) = probe(sd, dd).filter(|k| k.seen) else {
                continue;
            };
            let same_file = std::path::Path::new(sd).join(base);
            let hits = std::iter::once(src).chain(d.backing_chain.iter().filter_map(|b| match b {
                DiskSource::Path { path } => Some(path.as_str()),
                _ => None,
            }));
            for h in hits {
                if std::path::Path::new(h) == same_file {
                    problems.push(StorageProblem {
                        code: Code::CopyOntoSource,
                        disk: c.disk.clone(),
                        message: format!(
                            "--copy {}={to}: on the target {to} is {h} on the source (volume {} \
                             created in {dd} on the target appeared in {sd} on the source): the \
                             copy would mirror disk {} onto itself and destroy it. Copy to local \
                             storage of the target, or --map it if it is shared",
                            c.disk, k.name, d.target
                        ),
                    });
                }
            }
        }
    }
    problems
}

/// Derive a rule for every disk the operator's rules and the inventory leave open.
pub fn derive(
    dom: &Domain,
    user: &Rules,
    inventory_maps: &[MapRule],
    f: &StorageFacts,
    disk_bytes: &DiskBytes,
) -> Derived {
    let mut out = Derived {
        rules: user.clone(),
        ..Default::default()
    };
    // Room left in each target pool as copies are placed.
    let mut room: Vec<u64> = f.target_pools.iter().map(|p| p.available).collect();
    for d in &dom.disks {
        let Some(source) = &d.source else { continue };
        let path = match source {
            DiskSource::Path { path } => path.as_str(),
            // Network disks need no rule; volume disks follow pool maps the operator gives.
            _ => {
                if let Some(c) = user.copy_for(&d.target) {
                    out.copy_bytes += disk_bytes.get(&c.disk).copied().unwrap_or(0);
                }
                continue;
            }
        };
        let why_local = if let Some(c) = user.copy_for(&d.target) {
            if c.to.is_some() {
                out.copy_bytes += disk_bytes.get(&c.disk).copied().unwrap_or(0);
                continue;
            }
            // `--copy DEV`: local by the operator's word; Ferry places the copy.
            out.rules.copy.retain(|r| r.disk != d.target);
            format!("--copy {} says it is local", d.target)
        } else {
            match identity(d, path, user, inventory_maps, f, &mut out) {
                Some(why) => why,
                None => continue,
            }
        };
        if d.readonly || d.shareable || d.disk_type == DiskType::Dir {
            out.problems.push(StorageProblem {
                code: Code::StorageUnknown,
                disk: d.target.clone(),
                message: format!(
                    "disk {}: {path} is local to {} but libvirt cannot copy a read-only, \
                     shareable or directory disk: make it available on the target and --map it",
                    d.target, f.source_name
                ),
            });
            continue;
        }
        place(dom, d, why_local, f, disk_bytes, &mut room, &mut out);
    }
    out
}

/// What storage identity says of a disk no flag decided: a map it pushes into `out` (or a
/// problem), `None`; or why the disk is local, for [`place`].
fn identity(
    d: &Disk,
    path: &str,
    user: &Rules,
    inventory_maps: &[MapRule],
    f: &StorageFacts,
    out: &mut Derived,
) -> Option<String> {
    if user.map_for_path(path).is_some() {
        return None;
    }
    if let Some(m) = inventory_maps
        .iter()
        .filter_map(|m| m.match_len(path).map(|n| (n, m)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, m)| m)
    {
        if out.rules.map_for_path(path) != Some(m) {
            out.rules.map.push(m.clone());
        }
        return None;
    }
    if d.readonly && d.device == "cdrom" {
        // Install media: the target must have it at the same path (preflight checks).
        return None;
    }
    let Some(sp) = pool_holding(f.source_pools, path) else {
        out.problems.push(StorageProblem {
            code: Code::StorageUnknown,
            disk: d.target.clone(),
            message: format!(
                "disk {} ({} {path}) has no storage rule and is in no storage pool on {}, so \
                     Ferry cannot tell shared from local: if the target sees it as shared \
                     storage under another path, add --map SRC=DST (or a shared store to the \
                     inventory); if it is local, add --copy {}[=DST]; or define a libvirt pool \
                     for its storage",
                d.target,
                d.disk_type.as_str(),
                f.source_name,
                d.target
            ),
        });
        return None;
    };
    let same = f
        .target_pools
        .iter()
        .filter(|t| t.active)
        .find_map(|t| same_storage(sp, t, f.canaries).map(|o| (t, o)));
    if let Some((tp, origin)) = same {
        let (Some(from), Some(to)) = (sp.path.clone(), tp.path.clone()) else {
            return None;
        };
        let rule = MapRule { from, to, origin };
        if !out.rules.map.iter().any(|m| m.from == rule.from) {
            out.rules.map.push(rule);
        }
        return None;
    }
    let local = match &sp.source {
        PoolSource::Local { .. } => true,
        PoolSource::Directory => !f.shared_elsewhere.contains(&sp.name),
        _ => false,
    };
    if !local {
        out.problems.push(StorageProblem {
            code: Code::SharedStore,
            disk: d.target.clone(),
            message: format!(
                "disk {}: {path} is on shared storage (pool {} on {}, {}) that {} does not \
                     see: no pool there is the same storage{}",
                d.target,
                sp.name,
                f.source_name,
                describe(sp),
                f.target_name,
                if sp.source == PoolSource::Directory {
                    " (no canary created in its pools appeared in it)"
                } else {
                    ""
                }
            ),
        });
        return None;
    }
    Some(format!(
        "pool {} on {} is {}",
        sp.name,
        f.source_name,
        match sp.source {
            PoolSource::Directory => "a directory no other host sees".to_string(),
            _ => format!("local ({})", sp.kind.as_str()),
        }
    ))
}

/// Place a local disk's copy: the inventory's stores in their order, or any local pool with room.
fn place(
    dom: &Domain,
    d: &Disk,
    why_local: String,
    f: &StorageFacts,
    disk_bytes: &DiskBytes,
    room: &mut [u64],
    out: &mut Derived,
) {
    let need = disk_bytes.get(&d.target).copied().unwrap_or(0);
    let raw = d.format.as_deref().unwrap_or("raw") == "raw";
    // The inventory's stores in their order; without any, every pool that may hold copies.
    let fits = |i: usize, room: &[u64]| room[i] >= need;
    let placed = if f.local_stores.is_empty() {
        (0..f.target_pools.len())
            .find(|&i| is_local_store(f, &f.target_pools[i]) && fits(i, room))
            .map(Placed::Pool)
    } else {
        f.local_stores.iter().find_map(|s| match s {
            Store::Pool(name) => (0..f.target_pools.len())
                .find(|&i| {
                    let p = &f.target_pools[i];
                    p.active && &p.name == name && fits(i, room)
                })
                .map(Placed::Pool),
            // A hook makes block devices: they hold raw data only.
            Store::Hook(h) if raw => Some(Placed::Hook(h.clone())),
            Store::Hook(_) => None,
        })
    };
    out.copy_bytes += need;
    match placed {
        None => {
            out.copy_bytes -= need;
            out.problems.push(StorageProblem {
                code: Code::LocalRoom,
                disk: d.target.clone(),
                message: format!(
                    "disk {}: {why_local}, and {} has no local store with {} free{}",
                    d.target,
                    f.target_name,
                    crate::render::human_bytes(need),
                    local_store_list(f)
                ),
            });
        }
        Some(Placed::Hook(hook)) => out.hooked.push(HookCopy {
            disk: d.target.clone(),
            bytes: need,
            evidence: format!(
                "{why_local}; hook {} of {} creates its volume",
                hook.name, f.target_name
            ),
            hook,
        }),
        Some(Placed::Pool(i)) => {
            room[i] -= need;
            let tp = &f.target_pools[i];
            let Some(dir) = tp.path.as_deref() else {
                return;
            };
            let name = copy_name(&dom.name, d, &tp.kind);
            out.rules.copy.push(CopyRule {
                disk: d.target.clone(),
                to: Some(format!("{}/{name}", dir.trim_end_matches('/'))),
                slice: None,
                origin: Origin::LocalStore {
                    evidence: format!(
                        "{why_local}; pool {} on {} has {} free",
                        tp.name,
                        f.target_name,
                        crate::render::human_bytes(tp.available)
                    ),
                },
            });
        }
    }
}

fn describe(p: &PoolFacts) -> String {
    match &p.source {
        PoolSource::Netfs { host, dir } => format!("NFS {host}:{dir}"),
        PoolSource::Iscsi { iqn, .. } => format!("iSCSI {iqn}"),
        PoolSource::Rbd { pool, .. } => format!("Ceph pool {pool}"),
        _ => format!(
            "{} {}",
            p.kind.as_str(),
            p.path.as_deref().unwrap_or("(no path)")
        ),
    }
}

/// Whether copies may be created in target pool `p` when the inventory names no local store:
/// an active pool that creates volumes, is not a directory of device nodes, and is not the
/// same storage as one of the source's pools.
fn is_local_store(f: &StorageFacts, p: &PoolFacts) -> bool {
    p.active
        && p.creates_volumes()
        && !(p.kind != PoolKind::Logical
            && p.path.as_deref().is_some_and(|x| x.starts_with("/dev/")))
        && !f
            .source_pools
            .iter()
            .any(|s| same_storage(s, p, f.canaries).is_some())
}

fn local_store_list(f: &StorageFacts) -> String {
    let pool = |p: &PoolFacts| {
        format!(
            "{} ({} free)",
            p.name,
            crate::render::human_bytes(p.available)
        )
    };
    let list: Vec<String> = if f.local_stores.is_empty() {
        f.target_pools
            .iter()
            .filter(|p| is_local_store(f, p))
            .map(pool)
            .collect()
    } else {
        f.local_stores
            .iter()
            .map(|s| match s {
                Store::Pool(n) => f
                    .target_pools
                    .iter()
                    .find(|p| &p.name == n)
                    .map(pool)
                    .unwrap_or_else(|| format!("{n} (no such pool there)")),
                Store::Hook(h) => format!("hook {} (raw disks only)", h.name),
            })
            .collect()
    };
    if list.is_empty() {
        " (it has no pool Ferry can create volumes in)".into()
    } else {
        format!(" (its stores: {})", list.join(", "))
    }
}

/// The name of a copy Ferry creates in a store: `GUEST-DISK.img`, `.qcow2` for a qcow2 disk,
/// and `GUEST-DISK` in an LVM pool.
pub fn copy_name(guest: &str, d: &Disk, kind: &PoolKind) -> String {
    let base = format!("{guest}-{}", d.target);
    match (kind, d.format.as_deref()) {
        (PoolKind::Logical, _) => base,
        (_, Some("qcow2")) => format!("{base}.qcow2"),
        _ => format!("{base}.img"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    const GUEST: &str = "<domain type='qemu'><name>g</name><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/mnt/nfs/test_img.img'/><target dev='vda'/></disk>\
        <disk type='block' device='disk'><driver name='qemu' type='raw'/>\
        <source dev='/dev/lab/nvme2n2'/><target dev='vdb'/></disk>\
        </devices></domain>";

    fn pool(name: &str, kind: PoolKind, path: &str, source: PoolSource, free: u64) -> PoolFacts {
        PoolFacts {
            name: name.into(),
            kind,
            path: Some(path.into()),
            source,
            active: true,
            capacity: free * 2,
            available: free,
        }
    }

    fn dir(name: &str, path: &str, free: u64) -> PoolFacts {
        pool(name, PoolKind::Dir, path, PoolSource::Directory, free)
    }

    fn canary(src: &str, dst: &str, seen: bool) -> Canary {
        Canary {
            src_dir: src.into(),
            dst_dir: dst.into(),
            name: "ferry-canary-1".into(),
            seen,
        }
    }

    fn bytes() -> DiskBytes {
        [("vda".to_string(), 32 << 20), ("vdb".to_string(), 64 << 20)]
            .into_iter()
            .collect()
    }

    struct World {
        src: Vec<PoolFacts>,
        dst: Vec<PoolFacts>,
        canaries: Vec<Canary>,
        shared: BTreeSet<String>,
        stores: Vec<Store>,
    }

    impl World {
        fn seed() -> World {
            World {
                src: vec![dir("nfs", "/mnt/nfs", 1 << 30), dir("nvme", "/dev/lab", 0)],
                dst: vec![
                    dir("shared-b", "/mnt/nfs_second_mount", 1 << 30),
                    dir("store-b", "/srv/store", 1 << 30),
                ],
                canaries: vec![
                    canary("/mnt/nfs", "/mnt/nfs_second_mount", true),
                    canary("/mnt/nfs", "/srv/store", false),
                    canary("/dev/lab", "/mnt/nfs_second_mount", false),
                    canary("/dev/lab", "/srv/store", false),
                ],
                shared: ["nfs".to_string()].into(),
                stores: vec![],
            }
        }

        fn derive(&self, user: &Rules) -> Derived {
            let dom = domain::parse(GUEST).unwrap();
            derive(
                &dom,
                user,
                &[],
                &StorageFacts {
                    source_name: "h1",
                    target_name: "h2",
                    source_pools: &self.src,
                    target_pools: &self.dst,
                    canaries: &self.canaries,
                    shared_elsewhere: &self.shared,
                    local_stores: &self.stores,
                },
                &bytes(),
            )
        }
    }

    #[test]
    fn the_seed_needs_no_rule_a_canary_maps_vda_and_vdb_goes_to_the_local_store() {
        let w = World::seed();
        let d = w.derive(&Rules::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        // The canaries asked for: the shared pool's directory against each target directory
        // pool; none for the directory of device nodes.
        let dom = domain::parse(GUEST).unwrap();
        let pairs = canary_pairs(&dom, &Rules::default(), &w.src, &w.dst);
        assert_eq!(
            pairs,
            vec![
                ("/mnt/nfs".to_string(), "/mnt/nfs_second_mount".to_string()),
                ("/mnt/nfs".to_string(), "/srv/store".to_string())
            ]
        );
        assert_eq!(d.rules.map.len(), 1);
        assert_eq!(d.rules.map[0].from, "/mnt/nfs");
        assert_eq!(d.rules.map[0].to, "/mnt/nfs_second_mount");
        assert!(matches!(d.rules.map[0].origin, Origin::Canary { .. }));
        assert_eq!(d.rules.copy.len(), 1);
        assert_eq!(d.rules.copy[0].disk, "vdb");
        assert_eq!(d.rules.copy[0].to.as_deref(), Some("/srv/store/g-vdb.img"));
        assert!(matches!(d.rules.copy[0].origin, Origin::LocalStore { .. }));
        assert_eq!(d.copy_bytes, 64 << 20);
        // And the plan made from them says so per disk.
        let plan = crate::plan(GUEST, None, "u", &d.rules, &Default::default()).unwrap();
        assert_eq!(plan.migrate_disks, vec!["vdb"]);
        assert!(
            plan.disks[0].reason.contains("canary"),
            "{}",
            plan.disks[0].reason
        );
        assert!(
            plan.disks[1].reason.contains("local storage"),
            "{}",
            plan.disks[1].reason
        );
    }

    #[test]
    fn a_target_without_the_shared_store_is_told_which_disk_and_store() {
        let mut w = World::seed();
        w.dst.remove(0);
        w.canaries.retain(|c| c.dst_dir != "/mnt/nfs_second_mount");
        let d = w.derive(&Rules::default());
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        let p = &d.problems[0];
        assert_eq!((p.code, p.disk.as_str()), (Code::SharedStore, "vda"));
        assert!(p.message.contains("pool nfs on h1"), "{}", p.message);
        // Were nfs not shared with any host, vda would be local and copied instead.
        w.shared.clear();
        let d = w.derive(&Rules::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.rules.copy.len(), 2);
    }

    #[test]
    fn network_pools_match_by_their_definition_not_their_name() {
        let nfs = |name: &str, path: &str, export: &str| {
            pool(
                name,
                PoolKind::Netfs,
                path,
                PoolSource::Netfs {
                    host: "filer".into(),
                    dir: export.into(),
                },
                1 << 30,
            )
        };
        let mut w = World::seed();
        w.src[0] = nfs("a", "/mnt/nfs", "/export/vm");
        w.dst[0] = nfs("b", "/var/lib/b", "/export/other");
        w.canaries.clear();
        assert_eq!(
            w.derive(&Rules::default()).problems[0].code,
            Code::SharedStore
        );
        w.dst[0] = nfs("b", "/var/lib/b", "/export/vm/");
        let d = w.derive(&Rules::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.rules.map[0].to, "/var/lib/b");
        assert!(matches!(d.rules.map[0].origin, Origin::PoolIdentity { .. }));
    }

    #[test]
    fn flags_override_identity_and_stores_need_room() {
        let mut w = World::seed();
        let user = Rules {
            copy: vec!["vdb=/dev/nvme1n5".parse().unwrap()],
            ..Default::default()
        };
        let d = w.derive(&user);
        assert_eq!(d.rules.copy, user.copy);
        w.dst[1].available = 10 << 20;
        let d = w.derive(&Rules::default());
        assert_eq!(d.problems[0].code, Code::LocalRoom);
        assert!(
            d.problems[0].message.contains("store-b (10.0 MiB free)"),
            "{}",
            d.problems[0].message
        );
        // The shared pool is never a local store, however much room it has.
        assert!(!d
            .rules
            .copy
            .iter()
            .any(|c| c.to.as_deref().unwrap_or("").starts_with("/mnt")));
    }

    #[test]
    fn inventory_stores_are_tried_in_order_and_a_hook_takes_raw_disks_only() {
        let mut w = World::seed();
        let hook = Hook {
            name: "nvme".into(),
            command: vec!["/usr/lib/ferry/hook".into()],
            timeout_s: 5,
        };
        w.stores = vec![Store::Pool("store-b".into()), Store::Hook(hook.clone())];
        // store-b has room: it comes first.
        let d = w.derive(&Rules::default());
        assert!(d.hooked.is_empty());
        assert_eq!(d.rules.copy[0].to.as_deref(), Some("/srv/store/g-vdb.img"));
        // Too small: the hook creates vdb's volume (raw).
        w.dst[1].available = 10 << 20;
        let d = w.derive(&Rules::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert!(d.rules.copy.is_empty());
        assert_eq!(d.hooked.len(), 1);
        assert_eq!(
            (d.hooked[0].disk.as_str(), d.hooked[0].bytes),
            ("vdb", 64 << 20)
        );
        assert_eq!(d.copy_bytes, 64 << 20);
        let r = d.hooked[0].placeholder("g");
        assert_eq!(r.to.as_deref(), Some("/dev/ferry-hook/nvme/g-vdb"));
        assert_eq!(
            d.hooked[0].rule("/dev/nvme1n9").to.as_deref(),
            Some("/dev/nvme1n9")
        );
        // vda is qcow2: never given to a hook (a block device holds raw data only).
        w.shared.clear();
        w.canaries.clear();
        let d = w.derive(&Rules::default());
        let vda = d.problems.iter().find(|p| p.disk == "vda").unwrap();
        assert_eq!(vda.code, Code::LocalRoom);
        assert!(
            vda.message.contains("hook nvme (raw disks only)"),
            "{}",
            vda.message
        );
    }

    #[test]
    fn an_lvm_pool_takes_a_copy_as_a_logical_volume_named_after_guest_and_disk() {
        let mut w = World::seed();
        w.dst[1] = pool(
            "vg0",
            PoolKind::Logical,
            "/dev/vg0",
            PoolSource::Local {
                device: Some("/dev/nvme0n1p3".into()),
            },
            1 << 30,
        );
        let d = w.derive(&Rules::default());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.rules.copy[0].to.as_deref(), Some("/dev/vg0/g-vdb"));
        // A block destination: the plan turns vdb into a block disk on the new LV.
        let plan = crate::plan(GUEST, None, "u", &d.rules, &Default::default()).unwrap();
        assert_eq!(plan.disks[1].dest_type, DiskType::Block);
    }

    #[test]
    fn a_bare_copy_flag_says_local_and_ferry_places_the_copy() {
        let mut w = World::seed();
        // Even with vdb's pool gone: the operator's word makes it local.
        w.src.remove(1);
        let user = Rules {
            copy: vec!["vdb".parse().unwrap()],
            ..Default::default()
        };
        let d = w.derive(&user);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.rules.copy.len(), 1);
        assert_eq!(d.rules.copy[0].to.as_deref(), Some("/srv/store/g-vdb.img"));
        let Origin::LocalStore { evidence } = &d.rules.copy[0].origin else {
            panic!("{:?}", d.rules.copy[0].origin)
        };
        assert!(
            evidence.starts_with("--copy vdb says it is local"),
            "{evidence}"
        );
        // No room anywhere: said so, with the flag as the reason it is local.
        w.dst[1].available = 0;
        let d = w.derive(&user);
        assert_eq!(d.problems[0].code, Code::LocalRoom);
        assert!(d.problems[0]
            .message
            .contains("--copy vdb says it is local"));
    }

    #[test]
    fn a_disk_in_no_pool_is_not_guessed() {
        let mut w = World::seed();
        w.src.remove(1);
        let d = w.derive(&Rules::default());
        assert_eq!(d.problems[0].code, Code::StorageUnknown);
        assert_eq!(d.problems[0].disk, "vdb");
    }

    #[test]
    fn a_copy_onto_the_source_disk_itself_is_refused_with_the_canary() {
        let dom = domain::parse(GUEST).unwrap();
        let rules = Rules {
            copy: vec!["vda=/mnt/nfs_second_mount/test_img.img".parse().unwrap()],
            ..Default::default()
        };
        let pairs = canary_pairs(&dom, &rules, &[], &[]);
        assert!(pairs.contains(&("/mnt/nfs".into(), "/mnt/nfs_second_mount".into())));
        let p = check_rules(
            &dom,
            &rules,
            &[canary("/mnt/nfs", "/mnt/nfs_second_mount", true)],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].code, Code::CopyOntoSource);
        assert!(
            p[0].message.contains("/mnt/nfs/test_img.img"),
            "{}",
            p[0].message
        );
        // Another file in the same shared directory is not the source disk.
        let other = Rules {
            copy: vec!["vda=/mnt/nfs_second_mount/copy.img".parse().unwrap()],
            ..Default::default()
        };
        let c = [canary("/mnt/nfs", "/mnt/nfs_second_mount", true)];
        assert!(check_rules(&dom, &other, &c).is_empty());
        // Unprobed or different storage: nothing to refuse on this ground.
        assert!(check_rules(&dom, &rules, &[]).is_empty());
        let c = [canary("/mnt/nfs", "/mnt/nfs_second_mount", false)];
        assert!(check_rules(&dom, &rules, &c).is_empty());
    }

    #[test]
    fn a_map_onto_other_storage_is_refused_even_when_a_same_sized_file_is_there() {
        let dom = domain::parse(GUEST).unwrap();
        let rules = Rules {
            map: vec!["/mnt/nfs=/srv/store".parse().unwrap()],
            copy: vec!["vdb=/dev/nvme1n5".parse().unwrap()],
        };
        let pairs = canary_pairs(&dom, &rules, &[], &[]);
        assert!(pairs.contains(&("/mnt/nfs".into(), "/srv/store".into())));
        let p = check_rules(&dom, &rules, &[canary("/mnt/nfs", "/srv/store", false)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].code, Code::MapNotSameStorage);
        assert!(check_rules(&dom, &rules, &[canary("/mnt/nfs", "/srv/store", true)]).is_empty());
    }
}
