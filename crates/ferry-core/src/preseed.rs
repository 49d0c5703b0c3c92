//! Pre-seeding a copied disk: the decisions, no I/O.
//!
//! A pre-seeded disk is frozen on the source (its writes go to a qcow2 overlay), its frozen base
//! is copied to the target volume outside the migration job (zero chunks sent as holes), and the
//! live migration then copies only the overlay (`NON_SHARED_INC`) into an overlay on the target
//! whose backing image is the target's copy of the base. Afterwards the overlay is committed into
//! the base where the guest runs. This module says which disks can be pre-seeded, how the
//! destination XML names the target's overlay (a byte-exact edit of one `<disk>`), how a volume
//! is cut into chunks, and which chunks the read-back verifies.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::domain::{Disk, DiskSource, DiskType};
use crate::preflight::{Problem, ProblemCode};
use crate::rewrite::{apply, Edit};
use crate::xml::{self, escape_attr, Element};

/// The relay's unit: a chunk is read, tested for zeros, sent (as data or a hole) and digested.
pub const CHUNK: u64 = 4 << 20;

/// How many chunks make one journaled window: progress is journaled after each window, so a
/// resumed copy re-sends at most this many chunks.
pub const WINDOW_CHUNKS: u64 = 16;

/// `--preseed`: where the overlays go, and how much of the copy is read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preseed {
    /// A directory on both hosts (a storage pool's, or one Ferry makes a transient pool of)
    /// that holds the qcow2 overlays while the guest runs on them.
    pub store: String,
    #[serde(default)]
    pub verify: Verify,
    /// The relay's cap in MiB/s (the migration's `--bandwidth`).
    #[serde(default)]
    pub bandwidth_mib: Option<u64>,
    /// Ferry's default: pre-seed only from this many bytes of copied disks on, and only when
    /// nothing refuses it ([`auto_declines`]), else migrate as usual. `None`: asked for
    /// (`--preseed`), and what cannot be pre-seeded is refused.
    #[serde(default)]
    pub auto_from: Option<u64>,
}

/// Where the overlays go unless told (`--preseed-store`, the inventory's `[preseed] store`).
pub const DEFAULT_STORE: &str = "/var/lib/libvirt/images";

/// Below this many bytes of copied disks, the default migrates as usual: the freeze, the
/// commit and the overlays cost more than the copy inside the job. Measured with
/// `make bench-preseed` at 1 GiB (10 % data): the live phase 51 s plain, 6.4 s pre-seeded.
pub const AUTO_MIN_BYTES: u64 = 1 << 30;

/// Why the default does not pre-seed this migration (`None`: it does): copied disks smaller
/// than `from` ([`AUTO_MIN_BYTES`] unless told) in all, or a problem that would refuse
/// `--preseed`.
pub fn auto_declines(copy_bytes: u64, from: u64, problems: &[Problem]) -> Option<String> {
    if copy_bytes < from {
        return Some(format!(
            "the copied disks hold {copy_bytes} bytes, under {from}: copied inside the migration \
             job"
        ));
    }
    problems.first().map(|p| {
        format!(
            "{}{}: {}",
            p.host,
            p.disk
                .as_deref()
                .map(|d| format!(" disk {d}"))
                .unwrap_or_default(),
            p.what
        )
    })
}

/// The problems that refuse a pre-seeded migration before anything moves: each copied disk of
/// the live XML that cannot be frozen, and a cold move (nothing runs, nothing to freeze).
pub fn problems(live_xml: &str, plan: &crate::Plan, cold: bool, host: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let problem = |disk: Option<&str>, what: String, fix: &str| Problem {
        code: ProblemCode::CannotPreseed,
        host: host.to_string(),
        disk: disk.map(str::to_string),
        path: None,
        what,
        fix: fix.to_string(),
    };
    if cold {
        out.push(problem(
            None,
            "--preseed is for a running guest; a cold move copies its disks through the storage \
             streams already"
                .into(),
            "leave out --preseed",
        ));
        return out;
    }
    let Ok(dom) = crate::domain::parse(live_xml) else {
        return out; // the plan was made from this XML: it parses
    };
    for t in &plan.migrate_disks {
        match dom.disks.iter().find(|d| &d.target == t) {
            Some(d) => {
                if let Some(r) = refusal(d) {
                    out.push(problem(
                        Some(t),
                        r.to_string(),
                        "leave out --preseed (the migration copies the disk itself)",
                    ));
                }
            }
            None => out.push(problem(
                Some(t),
                Refusal::NoDisk { target: t.clone() }.to_string(),
                "check --copy",
            )),
        }
    }
    out
}

/// The room a store must have for the overlays, as a share of the copied disks' bytes: the
/// source's overlay holds what the guest writes during the bulk copy, the target's what the
/// live phase brings. A tenth is a guess at a busy guest's writes, not a bound.
pub const STORE_ROOM_DIVISOR: u64 = 10;

/// The problems of the pre-seed store on each host (`(host, what its directory is)`): it must
/// exist, and have room for a tenth of the copied disks' `need` bytes.
pub fn store_problems(
    store: &str,
    hosts: &[(&str, &crate::facts::PathProbe)],
    need: u64,
) -> Vec<Problem> {
    let room = need / STORE_ROOM_DIVISOR;
    hosts
        .iter()
        .filter_map(|(host, p)| {
            let what = if !p.parent_exists {
                format!("the pre-seed store {store} does not exist there")
            } else {
                match p.parent_free {
                    Some(free) if free < room => format!(
                        "the pre-seed store {store} has {free} bytes free; the overlays need \
                         room for a tenth of the copied disks ({room} bytes)"
                    ),
                    _ => return None,
                }
            };
            Some(Problem {
                code: ProblemCode::CannotPreseed,
                host: host.to_string(),
                disk: None,
                path: Some(store.to_string()),
                what,
                fix: "give --preseed-store a local directory with room on both hosts".into(),
            })
        })
        .collect()
}

/// Which chunks the read-back of the target compares with what was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Every chunk: the whole target volume is read back (its bytes cross the wire again).
    All,
    /// The first and last chunk and every 16th between (about 1/16 of the volume).
    #[default]
    Sample,
    /// No read-back.
    None,
}

impl Verify {
    /// Whether chunk `i` of `n` is read back.
    pub fn checks(self, i: u64, n: u64) -> bool {
        match self {
            Verify::All => true,
            Verify::Sample => i == 0 || i + 1 == n || i.is_multiple_of(16),
            Verify::None => false,
        }
    }
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Verify::All),
            "sample" => Ok(Verify::Sample),
            "none" => Ok(Verify::None),
            o => Err(format!("'{o}' is not a verification (all, sample, none)")),
        }
    }
}

impl std::fmt::Display for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verify::All => "all",
            Verify::Sample => "sample",
            Verify::None => "none",
        })
    }
}

/// Why a copied disk cannot be pre-seeded: the migration is refused before anything moves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("disk {target} is shareable: another guest may write it, so it cannot be frozen")]
    Shareable { target: String },
    #[error("disk {target} is read-only: there is nothing to freeze (copy it without --preseed)")]
    ReadOnly { target: String },
    #[error(
        "disk {target} already has a backing chain: pre-seeding freezes disks that are one image"
    )]
    BackingChain { target: String },
    #[error("disk {target} uses a storage slice: pre-seeding copies whole volumes")]
    Slice { target: String },
    #[error("disk {target} is a {kind} disk: pre-seeding needs a file or block device path")]
    Kind { target: String, kind: String },
    #[error(
        "disk {target} is in format {format}: pre-seeding copies raw images (an image with its own \
         allocation map is copied better by the migration itself)"
    )]
    Format { target: String, format: String },
    #[error("disk {target} is not in the domain XML")]
    NoDisk { target: String },
    #[error("the domain XML cannot be read: {0}")]
    Xml(#[from] xml::XmlError),
}

/// Whether a copied disk can be frozen and pre-seeded.
pub fn refusal(disk: &Disk) -> Option<Refusal> {
    let target = disk.target.clone();
    if disk.shareable {
        return Some(Refusal::Shareable { target });
    }
    if disk.readonly {
        return Some(Refusal::ReadOnly { target });
    }
    if !disk.backing_chain.is_empty() {
        return Some(Refusal::BackingChain { target });
    }
    if disk.storage_slice.is_some() {
        return Some(Refusal::Slice { target });
    }
    if !matches!(disk.disk_type, DiskType::File | DiskType::Block)
        || !matches!(disk.source, Some(DiskSource::Path { .. }))
    {
        return Some(Refusal::Kind {
            target,
            kind: disk.disk_type.as_str().to_string(),
        });
    }
    match disk.format.as_deref() {
        None | Some("raw") => None,
        Some(f) => Some(Refusal::Format {
            target,
            format: f.to_string(),
        }),
    }
}

/// The overlay a pre-seeded disk gets in `store` (the same name on both hosts).
pub fn overlay_path(store: &str, guest: &str, disk: &str, run: i64) -> String {
    format!(
        "{}/ferry-{}-{}-run{run}.qcow2",
        store.trim_end_matches('/'),
        safe_name(guest),
        safe_name(disk)
    )
}

/// A name as it goes into a file name: letters, digits, `-` and `_`; anything else `_`.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The domain XML `doc` with disk `target` running on `overlay` (qcow2) over the disk's own
/// image as its backing store: `<disk type='file'>`, `<driver type='qcow2'>`, a `<source
/// file>` and a `<backingStore>` that names what the disk named before. Every other byte is
/// kept. Used for the destination's live and persistent XML of a pre-seeded migration.
pub fn stage(doc: &str, target: &str, overlay: &str) -> Result<String, Refusal> {
    let root = xml::parse(doc)?;
    let no_disk = || Refusal::NoDisk {
        target: target.to_string(),
    };
    let disk = find_disk(&root, target).ok_or_else(no_disk)?;
    let kind = disk.attr("type").unwrap_or("file");
    let attr = match kind {
        "file" => "file",
        "block" => "dev",
        other => {
            return Err(Refusal::Kind {
                target: target.to_string(),
                kind: other.to_string(),
            })
        }
    };
    let source = disk.child("source").ok_or_else(no_disk)?;
    let path = source.attr(attr).ok_or_else(no_disk)?;
    let format = disk
        .child("driver")
        .and_then(|d| d.attr("type"))
        .unwrap_or("raw");
    let q = source.attrs.first().map_or('\'', |a| a.quote);
    let mut edits = Vec::new();
    // Without a type attribute the disk is already a file disk.
    if let Some(a) = disk.attr_full("type") {
        edits.push(Edit {
            range: a.value_span.clone(),
            text: "file".into(),
        });
    }
    if let Some(d) = disk.child("driver") {
        edits.push(match d.attr_full("type") {
            Some(a) => Edit {
                range: a.value_span.clone(),
                text: "qcow2".into(),
            },
            None => Edit {
                range: tag_name_end(d)..tag_name_end(d),
                text: format!(" type={q}qcow2{q}"),
            },
        });
    }
    let backing = format!(
        "<backingStore type={q}{kind}{q}><format type={q}{}{q}/><source {attr}={q}{}{q}/>\
         </backingStore>",
        escape_attr(format, q),
        escape_attr(path, q)
    );
    let mut new_source = format!("<source file={q}{}{q}/>", escape_attr(overlay, q));
    if disk.child("driver").is_none() {
        // Never leave a qcow2 overlay's format to probing.
        new_source = format!("<driver type={q}qcow2{q}/>{new_source}");
    }
    // An empty `<backingStore/>` (the end of a chain, as libvirt writes it) is replaced; else
    // the backing store follows the source.
    match disk.child("backingStore").filter(|b| b.children.is_empty()) {
        Some(b) => {
            edits.push(Edit {
                range: source.span.clone(),
                text: new_source,
            });
            edits.push(Edit {
                range: b.span.clone(),
                text: backing,
            });
        }
        None => edits.push(Edit {
            range: source.span.clone(),
            text: new_source + &backing,
        }),
    }
    Ok(apply(doc, &edits).text)
}

/// The domain XML `doc` as libvirt makes it when disk `target`'s overlay is committed into
/// its backing image and the guest pivots onto it: the `<disk>`'s type, driver format and
/// `<source>` become the backing store's, and the backing store goes. The inverse of [`stage`];
/// what a run that finds a disk frozen by an earlier run plans from.
pub fn thawed(doc: &str, target: &str) -> Result<String, Refusal> {
    let root = xml::parse(doc)?;
    let no_disk = || Refusal::NoDisk {
        target: target.to_string(),
    };
    let disk = find_disk(&root, target).ok_or_else(no_disk)?;
    let (Some(src), Some(back)) = (disk.child("source"), disk.child("backingStore")) else {
        return Err(no_disk());
    };
    let (Some(bsrc), Some(kind)) = (back.child("source"), back.attr("type")) else {
        return Err(no_disk());
    };
    let format = back
        .child("format")
        .and_then(|f| f.attr("type"))
        .unwrap_or("raw");
    // The overlay's own source and whatever lies between it and its backing store (an
    // index, whitespace) go with it.
    let mut edits = vec![Edit {
        range: src.span.start..back.span.end,
        text: doc[bsrc.span.clone()].to_string(),
    }];
    if let Some(t) = disk.attr_full("type") {
        edits.push(Edit {
            range: t.value_span.clone(),
            text: kind.to_string(),
        });
    }
    if let Some(t) = disk.child("driver").and_then(|d| d.attr_full("type")) {
        edits.push(Edit {
            range: t.value_span.clone(),
            text: format.to_string(),
        });
    }
    Ok(apply(doc, &edits).text)
}

/// A disk that an earlier Ferry run froze (its source is that run's overlay): found in the
/// guest's live XML, so a run that comes later knows before it plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundFrozen {
    pub disk: String,
    pub overlay: String,
    /// The disk's own image under the overlay.
    pub base: String,
    /// The run that froze it.
    pub run: i64,
}

/// Every disk of `doc` running on an overlay Ferry made for guest `guest`.
pub fn frozen(doc: &str, guest: &str) -> Vec<FoundFrozen> {
    let Ok(dom) = crate::domain::parse(doc) else {
        return Vec::new();
    };
    dom.disks
        .iter()
        .filter_map(|d| {
            let overlay = d.path()?;
            let (disk, run) = overlay_of(overlay, guest)?;
            if disk != safe_name(&d.target) {
                return None;
            }
            let [DiskSource::Path { path: base }] = d.backing_chain.as_slice() else {
                return None;
            };
            Some(FoundFrozen {
                disk: d.target.clone(),
                overlay: overlay.to_string(),
                base: base.clone(),
                run,
            })
        })
        .collect()
}

/// Whether `path` is an overlay Ferry makes for guest `guest` (`…/ferry-GUEST-DISK-runN.qcow2`).
pub fn is_overlay(path: &str, guest: &str) -> bool {
    overlay_of(path, guest).is_some()
}

/// The disk (as [`overlay_path`] spells it) and the run of an overlay [`overlay_path`] names for
/// guest `guest`; `None` for any other path.
fn overlay_of<'p>(path: &'p str, guest: &str) -> Option<(&'p str, i64)> {
    let name = path.rsplit('/').next()?;
    let (disk, run) = name
        .strip_prefix(&format!("ferry-{}-", safe_name(guest)))?
        .strip_suffix(".qcow2")?
        .rsplit_once("-run")?;
    let all_digits = !run.is_empty() && run.chars().all(|c| c.is_ascii_digit());
    Some((disk, run.parse().ok().filter(|_| all_digits)?))
}

fn find_disk<'e>(root: &'e Element, target: &str) -> Option<&'e Element> {
    root.child("devices")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
        .find(|d| d.child("target").and_then(|t| t.attr("dev")) == Some(target))
}

/// The end of an element's name in its start tag (where an attribute can be inserted).
fn tag_name_end(e: &Element) -> usize {
    e.start_tag.start + 1 + e.name.len()
}

/// Whether every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    words.all(|w| w == [0u8; 8]) && words.remainder().iter().all(|&b| b == 0)
}

/// The chunks of a volume of `capacity` bytes from `from` on.
pub fn chunks(capacity: u64, from: u64) -> impl Iterator<Item = Range<u64>> {
    let first = from / CHUNK;
    let n = capacity.div_ceil(CHUNK);
    (first..n).map(move |i| i * CHUNK..((i + 1) * CHUNK).min(capacity))
}

/// The journaled windows of a volume of `capacity` bytes from `from` on (`from` is a window's
/// start).
pub fn windows(capacity: u64, from: u64) -> impl Iterator<Item = Range<u64>> {
    let w = CHUNK * WINDOW_CHUNKS;
    let first = from / w;
    let n = capacity.div_ceil(w);
    (first..n).map(move |i| i * w..((i + 1) * w).min(capacity))
}

/// Where a resumed copy starts: the end of the last journaled window, never past `capacity`.
pub fn resume_offset(journaled: u64, capacity: u64) -> u64 {
    let window = CHUNK * WINDOW_CHUNKS;
    (journaled / window * window).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    const BLOCK: &str = "<domain type='qemu'><name>g</name><devices>\n  <disk type='block' device='disk'>\n    <driver name='qemu' type='raw' cache='none' io='native'/>\n    <source dev='/dev/nvme1n5' index='2'/>\n    <backingStore/>\n    <target dev='vdb' bus='virtio'/>\n  </disk>\n</devices></domain>";

    #[test]
    fn stage_names_the_overlay_over_the_old_source_and_keeps_every_other_byte() {
        let out = stage(BLOCK, "vdb", "/srv/store/o.qcow2").unwrap();
        assert_eq!(
            out,
            "<domain type='qemu'><name>g</name><devices>\n  <disk type='file' device='disk'>\n    <driver name='qemu' type='qcow2' cache='none' io='native'/>\n    <source file='/srv/store/o.qcow2'/>\n    <backingStore type='block'><format type='raw'/><source dev='/dev/nvme1n5'/></backingStore>\n    <target dev='vdb' bus='virtio'/>\n  </disk>\n</devices></domain>"
        );
        let d = domain::parse(&out).unwrap().disks.remove(0);
        assert_eq!(d.format.as_deref(), Some("qcow2"));
        assert_eq!(d.backing_chain.len(), 1);
    }

    #[test]
    fn thawed_undoes_stage_and_a_frozen_disk_is_found_by_its_overlay() {
        let staged = stage(BLOCK, "vdb", "/srv/store/ferry-g-vdb-run7.qcow2").unwrap();
        let found = frozen(&staged, "g");
        assert_eq!(
            found,
            vec![FoundFrozen {
                disk: "vdb".into(),
                overlay: "/srv/store/ferry-g-vdb-run7.qcow2".into(),
                base: "/dev/nvme1n5".into(),
                run: 7
            }]
        );
        // Not Ferry's overlay (another guest's name, another disk): not Ferry's to take over.
        assert!(frozen(&staged, "h").is_empty());
        let back = thawed(&staged, "vdb").unwrap();
        let d = domain::parse(&back).unwrap().disks.remove(0);
        assert_eq!(d.disk_type, DiskType::Block);
        assert_eq!(d.format.as_deref(), Some("raw"));
        assert_eq!(d.path(), Some("/dev/nvme1n5"));
        assert!(d.backing_chain.is_empty());
        assert!(frozen(&back, "g").is_empty());
        assert!(is_overlay("/srv/store/ferry-g-vdb-run7.qcow2", "g"));
        assert!(!is_overlay("/srv/store/ferry-g-vdb-run7.qcow2", "h"));
        assert!(!is_overlay("/srv/store/ferry-g-vdb-run.qcow2", "g"));
        assert!(!is_overlay("/srv/store/vdb.raw", "g"));
        // libvirt's own form of a frozen disk (as dumped after the snapshot).
        let libvirt = "<domain><name>g</name><devices><disk type='file' device='disk'>\n  <driver name='qemu' type='qcow2' cache='none' io='native'/>\n  <source file='/srv/ferry-store/ferry-g-vdb-run1.qcow2' index='3'/>\n  <backingStore type='block' index='1'>\n    <format type='raw'/>\n    <source dev='/dev/ferry-lab/nvme2n2'/>\n    <backingStore/>\n  </backingStore>\n  <target dev='vdb' bus='virtio'/>\n</disk></devices></domain>";
        assert_eq!(frozen(libvirt, "g")[0].base, "/dev/ferry-lab/nvme2n2");
        assert_eq!(
            thawed(libvirt, "vdb").unwrap(),
            "<domain><name>g</name><devices><disk type='block' device='disk'>\n  <driver name='qemu' type='raw' cache='none' io='native'/>\n  <source dev='/dev/ferry-lab/nvme2n2'/>\n  <target dev='vdb' bus='virtio'/>\n</disk></devices></domain>"
        );
    }

    #[test]
    fn stage_adds_a_backing_store_when_there_is_none() {
        let doc = "<domain><devices><disk type=\"file\"><driver name=\"qemu\"/><source file=\"/a.img\"/><target dev=\"vdb\"/></disk></devices></domain>";
        let out = stage(doc, "vdb", "/s/o.qcow2").unwrap();
        assert_eq!(
            out,
            "<domain><devices><disk type=\"file\"><driver type=\"qcow2\" name=\"qemu\"/><source file=\"/s/o.qcow2\"/><backingStore type=\"file\"><format type=\"raw\"/><source file=\"/a.img\"/></backingStore><target dev=\"vdb\"/></disk></devices></domain>"
        );
        assert!(matches!(
            stage(doc, "vdc", "/o"),
            Err(Refusal::NoDisk { .. })
        ));
    }

    #[test]
    fn disks_that_cannot_be_frozen_are_refused_by_kind() {
        let d = |x: &str| domain::parse(x).unwrap().disks.remove(0);
        let with = |inner: &str| {
            format!("<domain><devices><disk type='block'><driver type='raw'/><source dev='/dev/x'/>{inner}<target dev='vdb'/></disk></devices></domain>")
        };
        assert_eq!(refusal(&d(&with(""))), None);
        assert!(matches!(
            refusal(&d(&with("<shareable/>"))),
            Some(Refusal::Shareable { .. })
        ));
        assert!(matches!(
            refusal(&d(&with("<readonly/>"))),
            Some(Refusal::ReadOnly { .. })
        ));
        assert!(matches!(
            refusal(&d(&with(
                "<backingStore type='file'><format type='raw'/><source file='/b'/></backingStore>"
            ))),
            Some(Refusal::BackingChain { .. })
        ));
        let q = "<domain><devices><disk type='file'><driver type='qcow2'/><source file='/a'/><target dev='vdb'/></disk></devices></domain>";
        assert!(matches!(refusal(&d(q)), Some(Refusal::Format { .. })));
        let n = "<domain><devices><disk type='network'><driver type='raw'/><source protocol='rbd' name='p/i'/><target dev='vdb'/></disk></devices></domain>";
        assert!(matches!(refusal(&d(n)), Some(Refusal::Kind { .. })));
        // A path, but a directory: not a disk image to copy.
        let dir = "<domain><devices><disk type='dir'><driver type='raw'/><source dir='/srv/d'/><target dev='vdb'/></disk></devices></domain>";
        assert!(matches!(refusal(&d(dir)), Some(Refusal::Kind { .. })));
    }

    #[test]
    fn chunks_cover_the_volume_once_and_resume_at_a_window() {
        let cap = 3 * CHUNK + 5;
        let all: Vec<_> = chunks(cap, 0).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], 3 * CHUNK..cap);
        assert_eq!(chunks(cap, 2 * CHUNK).next(), Some(2 * CHUNK..3 * CHUNK));
        let w = CHUNK * WINDOW_CHUNKS;
        assert_eq!(resume_offset(w + 7, 10 * w), w);
        assert_eq!(resume_offset(3 * w, 2 * w), 2 * w);
        assert_eq!(resume_offset(w - 1, 10 * w), 0);
        let ws: Vec<_> = windows(2 * w + 1, w).collect();
        assert_eq!(ws, vec![w..2 * w, 2 * w..2 * w + 1]);
        assert_eq!(windows(w, w).count(), 0);
    }

    #[test]
    fn zero_test_and_sampling() {
        assert!(is_zero(&[0u8; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[1] = 1;
        assert!(!is_zero(&b[1..]));
        assert!(Verify::Sample.checks(0, 40) && Verify::Sample.checks(39, 40));
        assert!(Verify::Sample.checks(16, 40) && !Verify::Sample.checks(17, 40));
        assert!(Verify::All.checks(17, 40) && !Verify::None.checks(0, 40));
    }

    #[test]
    fn problems_name_each_copied_disk_that_cannot_be_frozen_and_a_cold_move() {
        let rules = crate::Rules {
            map: vec![],
            copy: vec!["vdb=/dev/nvme1n5".parse().unwrap()],
        };
        let plan_of = |xml: &str| {
            crate::plan(
                xml,
                None,
                "qemu+tcp://h2/system",
                &rules,
                &Default::default(),
            )
            .unwrap()
        };
        let ok = plan_of(BLOCK);
        assert!(problems(BLOCK, &ok, false, "h1").is_empty());
        let cold = problems(BLOCK, &ok, true, "h1");
        assert_eq!(cold.len(), 1);
        assert_eq!(
            (cold[0].code, cold[0].disk.as_deref()),
            (ProblemCode::CannotPreseed, None)
        );
        let qcow = BLOCK.replace("type='raw' cache", "type='qcow2' cache");
        let p = problems(&qcow, &plan_of(&qcow), false, "h1");
        assert_eq!(
            p.iter()
                .map(|p| (p.code, p.host.as_str(), p.disk.as_deref()))
                .collect::<Vec<_>>(),
            vec![(ProblemCode::CannotPreseed, "h1", Some("vdb"))]
        );
        // A copied disk the live XML does not have (the plan and the XML disagree).
        let mut other = ok.clone();
        other.migrate_disks = vec!["vdc".into()];
        let p = problems(BLOCK, &other, false, "h1");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].disk.as_deref(), Some("vdc"));
    }

    #[test]
    fn a_store_must_exist_with_room_for_a_tenth_of_the_disks() {
        let probe = |exists, free| crate::facts::PathProbe {
            info: None,
            parent_exists: exists,
            parent_free: free,
            parent_pool: None,
        };
        let (ok, small, none) = (
            probe(true, Some(100)),
            probe(true, Some(99)),
            probe(false, None),
        );
        assert!(store_problems("/s", &[("a", &ok), ("b", &ok)], 1000).is_empty());
        let p = store_problems("/s", &[("a", &small), ("b", &none)], 1000);
        assert_eq!(
            p.iter()
                .map(|p| (p.host.as_str(), p.code))
                .collect::<Vec<_>>(),
            vec![
                ("a", ProblemCode::CannotPreseed),
                ("b", ProblemCode::CannotPreseed)
            ]
        );
        assert!(p[1].what.contains("does not exist"));
    }

    #[test]
    fn the_default_pre_seeds_from_a_gib_of_copied_disks_when_nothing_refuses() {
        assert_eq!(auto_declines(AUTO_MIN_BYTES, AUTO_MIN_BYTES, &[]), None);
        assert!(auto_declines(AUTO_MIN_BYTES - 1, AUTO_MIN_BYTES, &[]).is_some());
        let p = Problem {
            code: ProblemCode::CannotPreseed,
            host: "h".into(),
            disk: Some("vdb".into()),
            path: None,
            what: "w".into(),
            fix: "f".into(),
        };
        assert_eq!(
            auto_declines(AUTO_MIN_BYTES, AUTO_MIN_BYTES, &[p]).as_deref(),
            Some("h disk vdb: w")
        );
    }

    #[test]
    fn overlay_names_are_one_file_in_the_store() {
        assert_eq!(
            overlay_path("/srv/store/", "a/b", "vdb", 7),
            "/srv/store/ferry-a_b-vdb-run7.qcow2"
        );
        assert_eq!(
            overlay_path("/s", "lab-guest_2.x", "vdb", 1),
            "/s/ferry-lab-guest_2_x-vdb-run1.qcow2"
        );
        for v in [Verify::All, Verify::Sample, Verify::None] {
            assert_eq!(v.to_string().parse::<Verify>(), Ok(v));
        }
        assert!("most".parse::<Verify>().is_err());
    }
}
