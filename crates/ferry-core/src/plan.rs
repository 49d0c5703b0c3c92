//! The migration plan: a decision for every disk, the destination XML, the flags, and the
//! equivalent `virsh migrate` command line.

use serde::{Deserialize, Serialize};

use crate::convergence::{self, Phase};
use crate::domain::{self, Disk, DiskSource, DiskType, Domain, DomainError};
use crate::render::edits_diff;
use crate::rewrite::{self, Edit, NewSource, RewriteError};
use crate::rules::{CopyRule, Origin, Rules};

/// Why no plan can be made. Every message names the disk and says how to settle it.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the {which} domain XML")]
    Domain {
        which: &'static str,
        #[source]
        source: DomainError,
    },
    #[error("the live and inactive XML describe different guests ({live} and {inactive})")]
    DifferentGuests { live: String, inactive: String },
    #[error(
        "disk {target} ({source_desc}) has no storage rule: if the target host sees it as shared \
         storage under another path, add --map SRC=DST (e.g. --map {example_map}); if it is local \
         and must be copied, add --copy {target} (same path) or --copy {target}=DST"
    )]
    NoRule {
        target: String,
        source_desc: String,
        example_map: String,
    },
    #[error(
        "disk {target} ({source_desc}) is matched by --map {map_from}={map_to} and named by --copy \
         {target}: copying a shared disk mirrors it onto itself and destroys it; drop one of the two"
    )]
    MapAndCopy {
        target: String,
        source_desc: String,
        map_from: String,
        map_to: String,
    },
    #[error("--copy {disk}: the guest has no disk with target dev {disk} (its disks: {known})")]
    CopyUnknownDisk { disk: String, known: String },
    #[error("--copy {target}: {why}")]
    CopyNotPossible { target: String, why: String },
    #[error(
        "the guest is not migratable: it has a passthrough device ({device}); detach it first \
         (virsh detach-device), migrate, and attach the target's own device afterwards"
    )]
    Passthrough { device: String },
    #[error(
        "two disks have <target dev='{dev}'>: libvirt refuses such a domain, and a copy of one \
         would be named for both; fix the domain XML"
    )]
    DuplicateTarget { dev: String },
    #[error("{}", clash_text(.disk, .other, .path, *.shared))]
    DestinationClash {
        disk: String,
        other: String,
        path: String,
        /// The other disk is shared (its target path), not another copy.
        shared: bool,
    },
    #[error("cannot rewrite the {which} XML")]
    Rewrite {
        which: &'static str,
        #[source]
        source: RewriteError,
    },
}

/// What happens to a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The data stays where it is; the target reaches it (possibly under another name).
    Shared,
    /// The data is copied to the target while the guest runs.
    Copy,
    /// No media (an empty cdrom or floppy): nothing to do.
    NoMedia,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Copy => "copy",
            Self::NoMedia => "no media",
        }
    }
}

/// The plan for one disk. A run's plan is recorded in the journal as JSON and read back as
/// this type (fields that came later default when an older journal lacks them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskPlan {
    /// `<target dev>`.
    pub target: String,
    #[serde(default)]
    pub device: String,
    pub decision: Decision,
    /// Why: which rule (or fact) decided.
    #[serde(default)]
    pub reason: String,
    /// Where the deciding rule came from: a flag, the inventory, pool identity, a canary.
    #[serde(default)]
    pub origin: Origin,
    pub source_type: DiskType,
    pub source: Option<DiskSource>,
    pub dest_type: DiskType,
    pub dest_source: Option<DiskSource>,
    /// The image format (`raw`, `qcow2`), which a created copy target must have.
    pub format: Option<String>,
    /// Bytes the copy moves, where known (filled in by the migrate flow from the source host).
    pub bytes_to_copy: Option<u64>,
    /// A storage slice of this many bytes at the start of a larger target device.
    pub dest_slice: Option<u64>,
}

impl DiskPlan {
    /// The path the target host must provide for this disk, for path-backed destinations.
    pub fn dest_path(&self) -> Option<&str> {
        match &self.dest_source {
            Some(DiskSource::Path { path }) => Some(path),
            _ => None,
        }
    }
}

/// Options that shape the migration call, as given on the command line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationOptions {
    pub p2p: bool,
    pub tls: bool,
    pub unsafe_: bool,
    /// The whole migration's bandwidth cap in MiB/s.
    pub bandwidth_mib: Option<u64>,
    pub migrate_uri: Option<String>,
    pub disks_uri: Option<String>,
    /// The disk mirrors block the guest's writes until the target has them
    /// (`NON_SHARED_SYNCHRONOUS_WRITES`): the copy converges however hard the guest writes.
    pub sync_writes: bool,
    pub policy: convergence::Policy,
    /// Pre-seed the copied disks before the live phase (`--preseed`).
    pub preseed: Option<crate::preseed::Preseed>,
}

/// libvirt migration flags Ferry sets (`virDomainMigrateFlags`). Read back from the journal's
/// plan by `ferry recover` (to resume a failed post-copy with the run's own flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Flags {
    pub live: bool,
    pub persist_dest: bool,
    pub undefine_source: bool,
    pub abort_on_error: bool,
    pub non_shared_disk: bool,
    /// Copy only the top image of each copied disk (a pre-seeded disk's overlay): the target
    /// already holds its backing image.
    #[serde(default)]
    pub non_shared_inc: bool,
    pub peer2peer: bool,
    pub tls: bool,
    pub unsafe_: bool,
    pub auto_converge: bool,
    pub postcopy: bool,
    pub sync_writes: bool,
    /// Resume a post-copy migration that failed (set on the resume call only, never planned).
    #[serde(default)]
    pub postcopy_resume: bool,
}

/// One migration flag: its libvirt name, its value in `virDomainMigrateFlags` (libvirt's ABI),
/// the virsh option that sets it, and where [`Flags`] keeps it.
#[derive(Debug, Clone, Copy)]
pub struct FlagDef {
    pub name: &'static str,
    pub bit: u32,
    pub virsh: &'static str,
    pub get: fn(&Flags) -> bool,
}

/// Every flag Ferry sets, in libvirt's (bit) order: the one table the plan's names, the virsh
/// line and the libvirt call are made from.
pub const FLAG_TABLE: [FlagDef; 13] = [
    FlagDef {
        name: "LIVE",
        bit: 1,
        virsh: "--live",
        get: |f| f.live,
    },
    FlagDef {
        name: "PEER2PEER",
        bit: 1 << 1,
        virsh: "--p2p",
        get: |f| f.peer2peer,
    },
    FlagDef {
        name: "PERSIST_DEST",
        bit: 1 << 3,
        virsh: "--persistent",
        get: |f| f.persist_dest,
    },
    FlagDef {
        name: "UNDEFINE_SOURCE",
        bit: 1 << 4,
        virsh: "--undefinesource",
        get: |f| f.undefine_source,
    },
    FlagDef {
        name: "NON_SHARED_DISK",
        bit: 1 << 6,
        virsh: "--copy-storage-all",
        get: |f| f.non_shared_disk,
    },
    FlagDef {
        name: "NON_SHARED_INC",
        bit: 1 << 7,
        virsh: "--copy-storage-inc",
        get: |f| f.non_shared_inc,
    },
    FlagDef {
        name: "UNSAFE",
        bit: 1 << 9,
        virsh: "--unsafe",
        get: |f| f.unsafe_,
    },
    FlagDef {
        name: "ABORT_ON_ERROR",
        bit: 1 << 12,
        virsh: "--abort-on-error",
        get: |f| f.abort_on_error,
    },
    FlagDef {
        name: "AUTO_CONVERGE",
        bit: 1 << 13,
        virsh: "--auto-converge",
        get: |f| f.auto_converge,
    },
    FlagDef {
        name: "POSTCOPY",
        bit: 1 << 15,
        virsh: "--postcopy",
        get: |f| f.postcopy,
    },
    FlagDef {
        name: "TLS",
        bit: 1 << 16,
        virsh: "--tls",
        get: |f| f.tls,
    },
    FlagDef {
        name: "NON_SHARED_SYNCHRONOUS_WRITES",
        bit: 1 << 18,
        virsh: "--copy-storage-synchronous-writes",
        get: |f| f.sync_writes,
    },
    FlagDef {
        name: "POSTCOPY_RESUME",
        bit: 1 << 19,
        virsh: "--postcopy-resume",
        get: |f| f.postcopy_resume,
    },
];

impl Flags {
    /// The flags that are set, in libvirt's order.
    pub fn set(&self) -> impl Iterator<Item = &'static FlagDef> + '_ {
        FLAG_TABLE.iter().filter(|d| (d.get)(self))
    }

    /// The flags' libvirt names, in libvirt's order.
    pub fn names(&self) -> Vec<&'static str> {
        self.set().map(|d| d.name).collect()
    }

    /// The `virDomainMigrateFlags` value.
    pub fn bits(&self) -> u32 {
        // (`^` would give the same: every flag is its own bit, each set once.)
        self.set().fold(0, |b, d| b | d.bit)
    }
}

/// Everything Ferry will do, decided before anything is touched. A run records it in the
/// journal (without the XML documents) and `recover`/`release` read it back as this type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub domain: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub dest_uri: String,
    pub disks: Vec<DiskPlan>,
    /// Always explicit: libvirt copies every non-shareable disk when the list is empty.
    #[serde(default)]
    pub migrate_disks: Vec<String>,
    #[serde(default)]
    pub flags: Flags,
    #[serde(default)]
    pub options: MigrationOptions,
    /// The bandwidth handed to libvirt, which applies it to every disk mirror at once: the
    /// per-migration cap divided by the number of copied disks.
    #[serde(default)]
    pub bandwidth_per_stream_mib: Option<u64>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub dest_xml: String,
    #[serde(skip)]
    pub persist_xml: Option<String>,
    #[serde(default)]
    pub diff: String,
    #[serde(default)]
    pub persist_diff: Option<String>,
}

/// One document's rewrite: the decisions for its disks and the edited text.
#[derive(Debug, Clone)]
pub struct DomainRewrite {
    pub disks: Vec<DiskPlan>,
    /// The edited document, with the range of every edit in the input and the output.
    pub applied: rewrite::Applied,
}

/// Make the plan for migrating the guest whose live XML is `live_xml` (and whose persistent XML
/// is `inactive_xml`, when it has one) to `dest_uri`.
pub fn plan(
    live_xml: &str,
    inactive_xml: Option<&str>,
    dest_uri: &str,
    rules: &Rules,
    options: &MigrationOptions,
) -> Result<Plan, PlanError> {
    let live = domain::parse(live_xml).map_err(|source| PlanError::Domain {
        which: "live",
        source,
    })?;
    if let Some(p) = live.passthrough.first() {
        return Err(PlanError::Passthrough {
            device: p.to_string(),
        });
    }
    let live_targets: std::collections::HashSet<&str> =
        live.disks.iter().map(|d| d.target.as_str()).collect();
    for c in &rules.copy {
        if !live_targets.contains(c.disk.as_str()) {
            return Err(PlanError::CopyUnknownDisk {
                disk: c.disk.clone(),
                known: live
                    .disks
                    .iter()
                    .map(|d| d.target.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if let Some(dev) = duplicate_target(&live) {
        return Err(PlanError::DuplicateTarget { dev });
    }
    let live_plan = rewrite_domain(live_xml, &live, rules)?;
    check_destinations(&live_plan.disks)?;
    let dest_xml = live_plan.applied.text;
    let live_ranges = live_plan.applied.ranges;

    let mut warnings = Vec::new();
    let persist_xml = match inactive_xml {
        None => None,
        Some(text) => {
            let inactive = domain::parse(text).map_err(|source| PlanError::Domain {
                which: "inactive",
                source,
            })?;
            if inactive.name != live.name || inactive.uuid != live.uuid {
                return Err(PlanError::DifferentGuests {
                    live: live.name.clone(),
                    inactive: inactive.name.clone(),
                });
            }
            let p = rewrite_domain(text, &inactive, rules)?;
            for d in &p.disks {
                if !live_targets.contains(d.target.as_str()) {
                    warnings.push(format!(
                        "disk {} is only in the persistent definition (not attached now)",
                        d.target
                    ));
                }
            }
            Some((p.applied.text, p.applied.ranges))
        }
    };

    for m in &rules.map {
        let used = live.disks.iter().any(|d| match &d.source {
            Some(DiskSource::Path { path }) => m.apply(path).is_some(),
            Some(DiskSource::Volume { pool, .. }) => &m.from == pool,
            _ => false,
        });
        if !used {
            warnings.push(format!("--map {}={} matches no disk", m.from, m.to));
        }
    }
    for (d, p) in live.disks.iter().zip(&live_plan.disks) {
        let (_, unmapped) = rewrite::backing_edits(d, |path| {
            rules.map_for_path(path).and_then(|r| r.apply(path))
        });
        if p.decision == Decision::Shared && !unmapped.is_empty() {
            warnings.push(format!(
                "disk {}: no --map covers its backing image(s) {}: the target must reach them at \
                 the same path",
                d.target,
                unmapped.join(", ")
            ));
        }
    }

    let migrate_disks: Vec<String> = live_plan
        .disks
        .iter()
        .filter(|d| d.decision == Decision::Copy)
        .map(|d| d.target.clone())
        .collect();
    let flags = Flags {
        live: true,
        persist_dest: true,
        undefine_source: true,
        abort_on_error: true,
        non_shared_disk: !migrate_disks.is_empty(),
        non_shared_inc: false,
        peer2peer: options.p2p,
        tls: options.tls,
        unsafe_: options.unsafe_,
        auto_converge: options.policy.auto_converge,
        postcopy: options.policy.fallback == convergence::Fallback::Postcopy,
        // Only meaningful for disks being copied.
        sync_writes: options.sync_writes && !migrate_disks.is_empty(),
        postcopy_resume: false,
    };
    let bandwidth_per_stream_mib = options
        .bandwidth_mib
        .map(|b| convergence::bandwidth_for(Phase::StorageCopy, b, migrate_disks.len()));
    let diff = edits_diff(
        live_xml,
        &dest_xml,
        &live_ranges,
        "source (live)",
        "target (live)",
    );
    let persist_diff = inactive_xml
        .zip(persist_xml.as_ref())
        .map(|(a, (b, r))| edits_diff(a, b, r, "source (persistent)", "target (persistent)"));
    let persist_xml = persist_xml.map(|(text, _)| text);
    Ok(Plan {
        domain: live.name.clone(),
        uuid: live.uuid.clone(),
        dest_uri: dest_uri.to_string(),
        disks: live_plan.disks,
        migrate_disks,
        flags,
        options: options.clone(),
        bandwidth_per_stream_mib,
        warnings,
        dest_xml,
        persist_xml,
        diff,
        persist_diff,
    })
}

/// Decide every disk of `dom` (read from `text`) and apply the rules to `text`.
pub fn rewrite_domain(text: &str, dom: &Domain, rules: &Rules) -> Result<DomainRewrite, PlanError> {
    let mut disks = Vec::new();
    let mut edits: Vec<Edit> = Vec::new();
    let copies = rules.copy_index();
    for disk in &dom.disks {
        let copy = copies.get(disk.target.as_str()).copied();
        let (decision, mut reason, new, slice, origin) = decide(disk, copy, rules)?;
        if decision == Decision::Shared && new.is_some() {
            // The images under a shared disk are shared too: same rules for their paths.
            let (more, _) =
                rewrite::backing_edits(disk, |p| rules.map_for_path(p).and_then(|r| r.apply(p)));
            if !more.is_empty() {
                reason.push_str(&format!(
                    "; {} backing image path(s) rewritten too",
                    more.len()
                ));
            }
            edits.extend(more);
        }
        if let Some(size) = slice {
            edits.push(rewrite::slice_edit(text, disk, size).map_err(|source| {
                PlanError::Rewrite {
                    which: "domain",
                    source,
                }
            })?);
        }
        if let Some(new) = &new {
            edits.extend(
                rewrite::disk_edits(disk, new).map_err(|source| PlanError::Rewrite {
                    which: "domain",
                    source,
                })?,
            );
        }
        let dest_type = match &new {
            Some(NewSource::Path { kind, .. }) => kind.clone(),
            _ => disk.disk_type.clone(),
        };
        disks.push(DiskPlan {
            target: disk.target.clone(),
            device: disk.device.clone(),
            decision,
            reason,
            origin,
            source_type: disk.disk_type.clone(),
            source: disk.source.clone(),
            dest_type,
            dest_source: match &new {
                Some(n) => Some(rewrite::describe(n, disk.source.as_ref())),
                None => disk.source.clone(),
            },
            format: disk.format.clone(),
            bytes_to_copy: None,
            dest_slice: slice,
        });
    }
    Ok(DomainRewrite {
        disks,
        applied: rewrite::apply(text, &edits),
    })
}

fn clash_text(disk: &str, other: &str, path: &str, shared: bool) -> String {
    let (what, consequence) = if shared {
        (
            "the target path of shared",
            "the copy would overwrite the shared disk",
        )
    } else {
        (
            "the copy destination of",
            "two copies would write one device",
        )
    };
    format!(
        "disk {disk} would be copied onto {path}, which is also {what} disk {other}: \
         {consequence}. Give each copy its own destination"
    )
}

/// The first `<target dev>` two disks share.
fn duplicate_target(dom: &Domain) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    dom.disks
        .iter()
        .map(|d| d.target.as_str())
        .filter(|t| !t.is_empty())
        .find(|t| !seen.insert(*t))
        .map(str::to_string)
}

/// Every copy goes to a destination of its own: not another copy's, not a shared disk's target
/// path (mirroring onto it would destroy that disk). Paths compare after normalisation.
fn check_destinations(disks: &[DiskPlan]) -> Result<(), PlanError> {
    let mut taken: std::collections::HashMap<String, &DiskPlan> = Default::default();
    for d in disks.iter().filter(|d| d.decision == Decision::Shared) {
        if let Some(p) = d.dest_path() {
            taken.insert(crate::rules::normalise_path(p), d);
        }
    }
    for d in disks.iter().filter(|d| d.decision == Decision::Copy) {
        let Some(p) = d.dest_path() else { continue };
        let key = crate::rules::normalise_path(p);
        if let Some(o) = taken.get(&key) {
            return Err(PlanError::DestinationClash {
                disk: d.target.clone(),
                other: o.target.clone(),
                path: p.to_string(),
                shared: o.decision == Decision::Shared,
            });
        }
        taken.insert(key, d);
    }
    Ok(())
}

/// Where a disk goes, decided from the rules alone: what preflight must ask the target about
/// before the plan is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub disk: String,
    pub decision: Decision,
    /// The path the target must provide (or that Ferry must create), for path-backed disks.
    pub path: Option<String>,
    pub kind: DiskType,
    pub format: Option<String>,
}

/// Every disk's decision and target path under `rules`, without rewriting anything.
pub fn destinations(live_xml: &str, rules: &Rules) -> Result<Vec<Destination>, PlanError> {
    let dom = domain::parse(live_xml).map_err(|source| PlanError::Domain {
        which: "live",
        source,
    })?;
    let copies = rules.copy_index();
    dom.disks
        .iter()
        .map(|d| {
            let copy = copies.get(d.target.as_str()).copied();
            let (decision, _, new, _, _) = decide(d, copy, rules)?;
            let (path, kind) = match new {
                Some(NewSource::Path { kind, path }) => (Some(path), kind),
                Some(NewSource::Pool { .. }) => (None, d.disk_type.clone()),
                None => (d.path().map(str::to_string), d.disk_type.clone()),
            };
            Ok(Destination {
                disk: d.target.clone(),
                decision,
                path,
                kind,
                format: d.format.clone(),
            })
        })
        .collect()
}

/// The kind of disk a destination path makes: a block device under `/dev`, else a file.
pub fn kind_of_path(path: &str) -> DiskType {
    if path.starts_with("/dev/") {
        DiskType::Block
    } else {
        DiskType::File
    }
}

type Decided = (Decision, String, Option<NewSource>, Option<u64>, Origin);

/// Decide one disk; `copy` is the copy rule naming it, if any.
fn decide(disk: &Disk, copy: Option<&CopyRule>, rules: &Rules) -> Result<Decided, PlanError> {
    let source_desc = || match &disk.source {
        Some(s) => format!("{} {s}", disk.disk_type.as_str()),
        None => format!("{} without media", disk.device),
    };
    let Some(source) = &disk.source else {
        if copy.is_some() {
            return Err(PlanError::CopyNotPossible {
                target: disk.target.clone(),
                why: format!("the {} has no media: there is nothing to copy", disk.device),
            });
        }
        return Ok((
            Decision::NoMedia,
            "no media".into(),
            None,
            None,
            Origin::DiskKind,
        ));
    };
    let map = match source {
        DiskSource::Path { path } => rules.map_for_path(path).and_then(|r| {
            r.apply(path).map(|to| {
                (
                    r,
                    NewSource::Path {
                        kind: disk.disk_type.clone(),
                        path: to,
                    },
                )
            })
        }),
        DiskSource::Volume { pool, .. } => rules
            .map_for_pool(pool)
            .map(|r| (r, NewSource::Pool { pool: r.to.clone() })),
        _ => None,
    };
    match (copy, map) {
        (Some(_), Some((m, _))) => Err(PlanError::MapAndCopy {
            target: disk.target.clone(),
            source_desc: source_desc(),
            map_from: m.from.clone(),
            map_to: m.to.clone(),
        }),
        (Some(c), None) => {
            let not = |why: &str| {
                Err(PlanError::CopyNotPossible {
                    target: disk.target.clone(),
                    why: why.to_string(),
                })
            };
            if disk.shareable {
                return not(
                    "the disk is <shareable/>: libvirt never copies shared disks; use --map",
                );
            }
            if disk.readonly {
                return not(
                    "the disk is <readonly/>: libvirt never copies read-only disks; make the \
                     media available on the target and use --map",
                );
            }
            match (&disk.disk_type, source) {
                (DiskType::Network, _) => {
                    return not("it is a network disk: its data is not on the source host")
                }
                (DiskType::Dir, _) => {
                    return not("it is a directory disk (vvfat): libvirt cannot copy it")
                }
                _ => {}
            }
            let reason = match (&c.to, &c.origin) {
                (Some(to), Origin::Flag) => format!("--copy {}={to}", c.disk),
                (None, Origin::Flag) => format!("--copy {} (same path on the target)", c.disk),
                (Some(to), o) => format!("copied to {to} ({o})"),
                (None, o) => format!("copied to the same path ({o})"),
            };
            let new = c.to.as_ref().map(|to| NewSource::Path {
                kind: kind_of_path(to),
                path: to.clone(),
            });
            if c.slice.is_some() {
                let dest_block = match &new {
                    Some(NewSource::Path { kind, .. }) => *kind == DiskType::Block,
                    Some(NewSource::Pool { .. }) => false,
                    None => disk.disk_type == DiskType::Block,
                };
                let raw = disk.format.as_deref().unwrap_or("raw") == "raw";
                if !dest_block || !raw || disk.path().is_none() {
                    return not("a storage slice needs a raw disk copied onto a block device");
                }
            }
            Ok((Decision::Copy, reason, new, c.slice, c.origin.clone()))
        }
        (None, Some((m, new))) => Ok((
            Decision::Shared,
            match &m.origin {
                Origin::Flag => format!("--map {}={} (not copied)", m.from, m.to),
                o => format!("shared, {} seen as {} on the target ({o})", m.from, m.to),
            },
            Some(new),
            None,
            m.origin.clone(),
        )),
        (None, None) => match source {
            DiskSource::Network { protocol, .. } => Ok((
                Decision::Shared,
                format!("network disk ({protocol}): shared by nature, unchanged"),
                None,
                None,
                Origin::DiskKind,
            )),
            _ => Err(PlanError::NoRule {
                target: disk.target.clone(),
                source_desc: source_desc(),
                example_map: match disk.path() {
                    Some(p) if p.starts_with("/dev/") => format!("{p}=/dev/TARGET_DEVICE"),
                    Some(p) => {
                        let dir = p.rsplit_once('/').map(|(d, _)| d).filter(|d| !d.is_empty());
                        format!("{}=/TARGET_PATH", dir.unwrap_or(p))
                    }
                    None => "POOL=TARGET_POOL".into(),
                },
            }),
        },
    }
}

impl Plan {
    /// Record the bytes each copied disk moves (from the source's facts), for the operator.
    pub fn record_copy_bytes(&mut self, bytes: &[(String, u64)]) {
        for d in self.disks.iter_mut() {
            d.bytes_to_copy = bytes.iter().find(|(t, _)| *t == d.target).map(|(_, b)| *b);
        }
    }

    /// Total bytes the copies move, where every copied disk's size is known.
    pub fn copy_bytes(&self) -> Option<u64> {
        self.disks
            .iter()
            .filter(|d| d.decision == Decision::Copy)
            .map(|d| d.bytes_to_copy)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{shell_quote, XmlFiles};
    use crate::rules::{CopyRule, MapRule};

    const SEED: &str = include_str!("../tests/data/seed-source.xml");
    const SEED_TARGET: &str = include_str!("../tests/data/seed-target.xml");
    const BLOCK: &str = include_str!("../tests/data/seed-block-source.xml");
    const BLOCK_TARGET: &str = include_str!("../tests/data/seed-block-target.xml");

    fn rules(maps: &[&str], copies: &[&str]) -> Rules {
        Rules {
            map: maps.iter().map(|m| m.parse::<MapRule>().unwrap()).collect(),
            copy: copies
                .iter()
                .map(|c| c.parse::<CopyRule>().unwrap())
                .collect(),
        }
    }

    fn files() -> XmlFiles {
        XmlFiles {
            dest_xml: "target.xml".into(),
            persist_xml: Some("target-persistent.xml".into()),
        }
    }

    #[test]
    fn seed_nfs_plus_local_nvme() {
        let r = rules(&["/mnt/nfs=/mnt/nfs_second_mount"], &["vdb=/dev/nvme1n5"]);
        let p = plan(
            SEED,
            Some(SEED),
            "qemu+ssh://192.168.1.2/system",
            &r,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(p.dest_xml, SEED_TARGET);
        assert_eq!(p.persist_xml.as_deref(), Some(SEED_TARGET));
        assert_eq!(p.migrate_disks, vec!["vdb"]);
        assert_eq!(p.disks[0].decision, Decision::Shared);
        assert_eq!(p.disks[1].decision, Decision::Copy);
        assert_eq!(p.disks[1].dest_path(), Some("/dev/nvme1n5"));
        assert_eq!(
            p.flags.names(),
            [
                "LIVE",
                "PERSIST_DEST",
                "UNDEFINE_SOURCE",
                "NON_SHARED_DISK",
                "ABORT_ON_ERROR"
            ]
        );
        assert_eq!(
            p.virsh_command(&files(), None),
            "virsh migrate --live --persistent --undefinesource --copy-storage-all \
             --abort-on-error --migrate-disks vdb --xml target.xml --persistent-xml \
             target-persistent.xml myGuest qemu+ssh://192.168.1.2/system"
        );
        assert!(
            p.diff.contains("-      <source dev='/dev/nvme2n2'/>"),
            "{}",
            p.diff
        );
        assert!(p.diff.contains("+      <source dev='/dev/nvme1n5'/>"));
        // The bits libvirt gets are the flags' (pinned to libvirt's own values by
        // ferry-hypervisor's the_flag_table_has_libvirts_values).
        assert_eq!(p.flags.bits(), 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 12);
        // What an operator reads, disk by disk.
        let text = p.render(&files(), None, false);
        let decided: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?, w.next()?))
            })
            .filter(|(t, _)| *t == "vda" || *t == "vdb")
            .collect();
        assert_eq!(decided, [("vda", "shared"), ("vdb", "copy")], "{text}");
        assert_eq!(p.copy_bytes(), None, "no size recorded yet");
    }

    #[test]
    fn seed_block_device_renamed_is_shared_and_only_rewritten() {
        let r = rules(&["/dev/sdb2=/dev/sdb5"], &[]);
        let p = plan(BLOCK, None, "qemu+ssh://h/system", &r, &Default::default()).unwrap();
        assert_eq!(p.dest_xml, BLOCK_TARGET);
        assert_eq!(p.disks[0].decision, Decision::Shared);
        assert!(p.migrate_disks.is_empty());
        assert!(!p.flags.non_shared_disk);
        let v = p.virsh_command(&files(), None);
        assert!(
            !v.contains("--copy-storage-all") && !v.contains("--migrate-disks"),
            "{v}"
        );
    }

    #[test]
    fn a_disk_without_a_rule_names_the_disk_and_both_flags() {
        let e = plan(
            SEED,
            None,
            "u",
            &rules(&["/mnt/nfs=/x"], &[]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("disk vdb (block /dev/nvme2n2)"), "{e}");
        assert!(e.contains("--map") && e.contains("--copy vdb"), "{e}");
    }

    #[test]
    fn map_and_copy_of_one_disk_is_refused() {
        let e = plan(
            SEED,
            None,
            "u",
            &rules(&["/mnt/nfs=/x", "/dev=/dev"], &["vda"]),
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, PlanError::MapAndCopy { ref target, .. } if target == "vda"),
            "{e}"
        );
    }

    #[test]
    fn copy_of_an_unknown_disk_lists_the_disks() {
        let e = plan(SEED, None, "u", &rules(&[], &["vdz"]), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vdz") && e.contains("vda, vdb"), "{e}");
    }

    #[test]
    fn passthrough_makes_the_guest_not_migratable() {
        let doc = SEED.replace(
            "</devices>",
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev></devices>",
        );
        let e = plan(
            &doc,
            None,
            "u",
            &rules(&["/mnt/nfs=/x"], &["vdb"]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("passthrough") && e.contains("USB vendor 0x1234"),
            "{e}"
        );
    }

    #[test]
    fn copy_to_a_file_turns_a_block_disk_into_a_file_disk() {
        let r = rules(&["/mnt/nfs=/x"], &["vdb=/var/lib/ferry/vdb.raw"]);
        let p = plan(SEED, None, "u", &r, &Default::default()).unwrap();
        assert!(p
            .dest_xml
            .contains("<disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='none' />\n      <source file='/var/lib/ferry/vdb.raw'/>"));
        assert_eq!(p.disks[1].dest_type, DiskType::File);
    }

    #[test]
    fn network_disks_and_empty_cdroms_need_no_rule() {
        let doc = "<domain><name>g</name><devices>\
            <disk type='network' device='disk'><source protocol='rbd' name='p/i'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>\
            </devices></domain>";
        let p = plan(doc, None, "u", &Rules::default(), &Default::default()).unwrap();
        assert_eq!(p.dest_xml, doc);
        assert_eq!(p.disks[0].decision, Decision::Shared);
        assert_eq!(p.disks[1].decision, Decision::NoMedia);
        let e = plan(doc, None, "u", &rules(&[], &["vda"]), &Default::default()).unwrap_err();
        assert!(e.to_string().contains("network disk"), "{e}");
    }

    #[test]
    fn bandwidth_is_split_across_disk_mirrors() {
        let doc = SEED.replace("'vda'", "'vdc'");
        let doc = doc.replace(
            "<source file='/mnt/nfs/test_img.img'/>",
            "<source file='/var/lib/a.img'/>",
        );
        let opts = MigrationOptions {
            bandwidth_mib: Some(100),
            ..Default::default()
        };
        let p = plan(&doc, None, "u", &rules(&[], &["vdb", "vdc"]), &opts).unwrap();
        assert_eq!(p.migrate_disks, vec!["vdc", "vdb"]);
        assert_eq!(p.bandwidth_per_stream_mib, Some(50));
        assert!(p.virsh_command(&files(), None).contains("--bandwidth 50"));
    }

    #[test]
    fn a_larger_block_target_gets_a_storage_slice_of_the_disks_size() {
        let mut r = rules(&["/mnt/nfs=/x"], &["vdb=/dev/nvme1n7"]);
        r.copy[0].slice = Some(64 << 20);
        let p = plan(SEED, Some(SEED), "u", &r, &Default::default()).unwrap();
        let want = "<source dev='/dev/nvme1n7'><slices><slice type='storage' offset='0' size='67108864'/></slices></source>";
        assert!(p.dest_xml.contains(want), "{}", p.dest_xml);
        assert!(p.persist_xml.unwrap().contains(want));
        assert_eq!(p.disks[1].dest_slice, Some(64 << 20));
        // Only raw data onto a block device can be sliced.
        let mut r = rules(&["/dev=/dev"], &["vda=/dev/nvme1n7"]);
        r.copy[0].slice = Some(1);
        let e = plan(SEED, None, "u", &r, &Default::default()).unwrap_err();
        assert!(
            e.to_string().contains("storage slice needs a raw disk"),
            "{e}"
        );
    }

    #[test]
    fn a_storage_slice_needs_a_block_device_on_the_target_and_a_raw_disk() {
        let sliced = |copy: &str| {
            let mut r = rules(&["/mnt/nfs=/x"], &[copy]);
            r.copy[0].slice = Some(64 << 20);
            plan(SEED, None, "u", &r, &Default::default())
        };
        // vdb is raw on a block device: onto a file there is nothing to slice.
        let e = sliced("vdb=/srv/vdb.raw").unwrap_err();
        assert!(e.to_string().contains("storage slice"), "{e}");
        // Copied to the same path, vdb stays a block device: the slice stands.
        let p = sliced("vdb").unwrap();
        assert_eq!(p.disks[1].dest_slice, Some(64 << 20));
        // A qcow2 disk is never sliced, whatever it lands on.
        let mut r = rules(&[], &["vda=/dev/nvme1n7", "vdb"]);
        r.copy[0].slice = Some(1);
        let e = plan(SEED, None, "u", &r, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("storage slice"), "{e}");
    }

    #[test]
    fn a_disk_without_a_rule_is_refused_with_an_example_that_fits_it() {
        let example = |doc: &str, r: &Rules| match plan(doc, None, "u", r, &Default::default()) {
            Err(PlanError::NoRule { example_map, .. }) => example_map,
            other => panic!("expected no rule, got {other:?}"),
        };
        // vdb, a device: a device on the target.
        assert_eq!(
            example(SEED, &rules(&["/mnt/nfs=/x"], &[])),
            "/dev/nvme2n2=/dev/TARGET_DEVICE"
        );
        // vda, a file: its directory.
        assert_eq!(
            example(SEED, &rules(&[], &["vdb"])),
            "/mnt/nfs=/TARGET_PATH"
        );
        // A file at the root: the file itself.
        let root = SEED.replace("/mnt/nfs/test_img.img", "/test_img.img");
        assert_eq!(
            example(&root, &rules(&[], &["vdb"])),
            "/test_img.img=/TARGET_PATH"
        );
    }

    #[test]
    fn the_bytes_to_copy_are_known_once_every_copied_disk_has_a_size() {
        let r = rules(&["/mnt/nfs=/x"], &["vdb"]);
        let mut p = plan(SEED, None, "u", &r, &Default::default()).unwrap();
        p.record_copy_bytes(&[("vda".into(), 5)]);
        assert_eq!(p.copy_bytes(), None, "vdb's size is unknown");
        assert_eq!(p.disks[0].bytes_to_copy, Some(5));
        p.record_copy_bytes(&[("vda".into(), 5), ("vdb".into(), 64 << 20)]);
        assert_eq!(p.copy_bytes(), Some(64 << 20), "only copied disks count");
        assert_eq!(p.disks[1].bytes_to_copy, Some(64 << 20));
    }

    #[test]
    fn a_shared_overlays_backing_images_follow_the_map_or_are_warned_about() {
        let doc = SEED.replace(
            "<backingStore/>",
            "<backingStore type='file' index='1'><format type='qcow2'/><source file='/mnt/nfs/base.qcow2'/>\
             <backingStore type='file' index='2'><format type='raw'/><source file='/srv/gold.raw'/><backingStore/></backingStore></backingStore>",
        );
        let r = rules(&["/mnt/nfs=/mnt/nfs_second_mount"], &["vdb"]);
        let p = plan(&doc, None, "u", &r, &Default::default()).unwrap();
        assert!(p
            .dest_xml
            .contains("<source file='/mnt/nfs_second_mount/base.qcow2'/>"));
        assert!(p.dest_xml.contains("<source file='/srv/gold.raw'/>"));
        assert!(
            p.disks[0]
                .reason
                .contains("1 backing image path(s) rewritten too"),
            "{}",
            p.disks[0].reason
        );
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("/srv/gold.raw"), "{:?}", p.warnings);
    }

    #[test]
    fn unused_map_rule_is_a_warning() {
        let r = rules(&["/mnt/nfs=/x", "/srv/none=/y"], &["vdb"]);
        let p = plan(SEED, None, "u", &r, &Default::default()).unwrap();
        assert_eq!(p.warnings, vec!["--map /srv/none=/y matches no disk"]);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b.xml"), "/a/b.xml");
        assert_eq!(shell_quote("my guest"), "'my guest'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_persistent_definition_must_be_the_same_guest_and_its_extra_disks_are_said() {
        let r = rules(&["/mnt/nfs=/mnt/nfs_second_mount"], &["vdb=/dev/nvme1n5"]);
        let to = "qemu+ssh://h/system";
        let other_uuid = SEED.replacen("<uuid>", "<uuid>0", 1);
        assert_ne!(other_uuid, SEED, "the seed has a <uuid>");
        assert!(matches!(
            plan(SEED, Some(&other_uuid), to, &r, &Default::default()),
            Err(PlanError::DifferentGuests { .. })
        ));
        let p = plan(SEED, Some(SEED), to, &r, &Default::default()).unwrap();
        assert!(!p
            .warnings
            .iter()
            .any(|w| w.contains("only in the persistent")));
        let extra = SEED.replacen(
            "</devices>",
            "<disk type='file' device='disk'><source file='/mnt/nfs/extra.img'/>\
             <target dev='vdc' bus='virtio'/></disk></devices>",
            1,
        );
        let p = plan(SEED, Some(&extra), to, &r, &Default::default()).unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w == "disk vdc is only in the persistent definition (not attached now)"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn a_pool_map_counts_as_used_by_a_volume_disk_of_that_pool() {
        const VOL: &str = "<domain type='qemu'><name>v</name><devices>\
            <disk type='volume' device='disk'><source pool='pool1' volume='v1'/>\
            <target dev='vda'/></disk></devices></domain>";
        let p = plan(
            VOL,
            None,
            "qemu:///h",
            &rules(&["pool1=pool2"], &[]),
            &Default::default(),
        )
        .unwrap();
        assert!(
            !p.warnings.iter().any(|w| w.contains("matches no disk")),
            "{:?}",
            p.warnings
        );
        let p = plan(
            VOL,
            None,
            "qemu:///h",
            &rules(&["pool1=pool2", "pool9=pool2"], &[]),
            &Default::default(),
        )
        .unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w == "--map pool9=pool2 matches no disk"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn synchronous_writes_are_asked_only_when_a_disk_is_copied() {
        let opts = MigrationOptions {
            sync_writes: true,
            ..Default::default()
        };
        let r = rules(&["/mnt/nfs=/mnt/nfs_second_mount"], &["vdb=/dev/nvme1n5"]);
        let p = plan(SEED, None, "qemu:///h", &r, &opts).unwrap();
        assert!(p.flags.names().contains(&"NON_SHARED_SYNCHRONOUS_WRITES"));
        assert!(p
            .virsh_command(&files(), None)
            .contains("--copy-storage-synchronous-writes"));
        let r = rules(&["/dev/sdb2=/dev/sdb5"], &[]);
        let p = plan(BLOCK, None, "qemu:///h", &r, &opts).unwrap();
        assert!(!p.flags.sync_writes, "nothing is copied");
    }

    #[test]
    fn a_directory_or_network_disk_cannot_be_copied() {
        for (disk, why) in [
            (
                "<disk type='dir' device='disk'><source dir='/srv/tree'/><target dev='vdb'/></disk>",
                "directory disk (vvfat)",
            ),
            (
                "<disk type='network' device='disk'><source protocol='rbd' name='p/v'/>\
                 <target dev='vdb'/></disk>",
                "network disk",
            ),
        ] {
            let xml = format!("<domain><name>d</name><devices>{disk}</devices></domain>");
            let e = plan(&xml, None, "qemu:///h", &rules(&[], &["vdb=/srv/x.img"]), &Default::default())
                .unwrap_err();
            assert!(
                matches!(&e, PlanError::CopyNotPossible { why: w, .. } if w.contains(why)),
                "{e:?}"
            );
        }
    }
}
