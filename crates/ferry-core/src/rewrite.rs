//! The byte-exact rewrite of a domain XML for the target host.
//!
//! The destination XML differs from the input only inside the ranges this module edits: a
//! `<source>` attribute value, and, when a copy changes the disk's kind, the `<disk type>` value
//! and the `<source>` element. Every other byte stays as it was: whitespace, comments,
//! attribute order and quoting, elements Ferry does not know.

use std::ops::Range;

use crate::domain::{Disk, DiskSource, DiskType};
use crate::xml::escape_attr;

/// One replacement of a byte range of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: Range<usize>,
    pub text: String,
}

/// What a disk's source becomes on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewSource {
    /// A path of the given kind (`File`, `Block` or `Dir`).
    Path { kind: DiskType, path: String },
    /// The same volume in another storage pool.
    Pool { pool: String },
}

/// Why a disk's source cannot be rewritten as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("disk {target} has no <source> element to rewrite")]
    NoSource { target: String },
    #[error("disk {target}: a {from} disk cannot become a {to} disk")]
    Unsupported {
        target: String,
        from: String,
        to: String,
    },
    #[error(
        "disk {target}: its <source> has both {old}= and {new}=; turning {old}= into {new}= \
         would give it {new}= twice: remove the stray {new}= attribute"
    )]
    AttributeClash {
        target: String,
        old: String,
        new: String,
    },
}

/// The edits that give `disk` the source `new`.
pub fn disk_edits(disk: &Disk, new: &NewSource) -> Result<Vec<Edit>, RewriteError> {
    let pos = &disk.pos;
    let no_source = || RewriteError::NoSource {
        target: disk.target.clone(),
    };
    let src_attr = |name: &str| pos.source_attrs.iter().find(|a| a.name == name);
    match new {
        NewSource::Pool { pool } => {
            let a = src_attr("pool").ok_or_else(no_source)?;
            Ok(vec![Edit {
                range: a.value_span.clone(),
                text: escape_attr(pool, a.quote),
            }])
        }
        NewSource::Path { kind, path } => {
            let new_attr = kind.path_attr().ok_or_else(|| RewriteError::Unsupported {
                target: disk.target.clone(),
                from: disk.disk_type.as_str().into(),
                to: kind.as_str().into(),
            })?;
            let old_attr = disk.disk_type.path_attr().and_then(src_attr);
            let mut edits = Vec::new();
            if *kind != disk.disk_type {
                edits.push(match &pos.type_attr {
                    Some(t) => Edit {
                        range: t.value_span.clone(),
                        text: kind.as_str().to_string(),
                    },
                    None => Edit {
                        range: pos.disk_name_end..pos.disk_name_end,
                        text: format!(" type={q}{}{q}", kind.as_str(), q = pos.quote),
                    },
                });
            }
            match old_attr {
                Some(a) => {
                    if a.name != new_attr && src_attr(new_attr).is_some() {
                        return Err(RewriteError::AttributeClash {
                            target: disk.target.clone(),
                            old: a.name.clone(),
                            new: new_attr.to_string(),
                        });
                    }
                    if a.name != new_attr {
                        edits.push(Edit {
                            range: a.name_span.clone(),
                            text: new_attr.to_string(),
                        });
                    }
                    edits.push(Edit {
                        range: a.value_span.clone(),
                        text: escape_attr(path, a.quote),
                    });
                }
                None => {
                    // A volume, network or NVMe source (or a path disk without media) becomes a
                    // path: the <source> element is written anew.
                    let range = pos.source.clone().ok_or_else(no_source)?;
                    let q = pos.quote;
                    edits.push(Edit {
                        range,
                        text: format!("<source {new_attr}={q}{}{q}/>", escape_attr(path, q)),
                    });
                }
            }
            Ok(edits)
        }
    }
}

/// Edits for the backing chain of a shared disk: every backing image whose path `map` rewrites
/// gets the new path (the target reaches the same images under the new names). Returns the
/// edits and the backing paths `map` left alone.
pub fn backing_edits(
    disk: &Disk,
    map: impl Fn(&str) -> Option<String>,
) -> (Vec<Edit>, Vec<String>) {
    let mut edits = Vec::new();
    let mut unmapped = Vec::new();
    for b in &disk.pos.backing {
        let Some(attr) = b
            .disk_type
            .path_attr()
            .and_then(|n| b.source_attrs.iter().find(|a| a.name == n))
        else {
            continue;
        };
        match map(&attr.value) {
            Some(new) => edits.push(Edit {
                range: attr.value_span.clone(),
                text: escape_attr(&new, attr.quote),
            }),
            None => unmapped.push(attr.value.clone()),
        }
    }
    (edits, unmapped)
}

/// The edit that makes a disk's (path) source a storage slice of `size` bytes at offset 0 of
/// its device: `<slices><slice type='storage' offset='0' size='N'/></slices>` inside `<source>`.
/// libvirt then gives the guest exactly `size` bytes of a larger raw device.
pub fn slice_edit(doc: &str, disk: &Disk, size: u64) -> Result<Edit, RewriteError> {
    let pos = &disk.pos;
    let (Some(span), Some(tag)) = (pos.source.clone(), pos.source_start_tag.clone()) else {
        return Err(RewriteError::NoSource {
            target: disk.target.clone(),
        });
    };
    if disk.storage_slice.is_some() {
        return Err(RewriteError::Unsupported {
            target: disk.target.clone(),
            from: "sliced".into(),
            to: "re-sliced".into(),
        });
    }
    let q = pos.quote;
    let slices =
        format!("<slices><slice type={q}storage{q} offset={q}0{q} size={q}{size}{q}/></slices>");
    if tag == span {
        // `<source …/>` becomes `<source …><slices>…</slices></source>`.
        Ok(Edit {
            range: span.end - 2..span.end,
            text: format!(">{slices}</source>"),
        })
    } else {
        let close = doc[span.clone()]
            .rfind("</")
            .map(|i| span.start + i)
            .ok_or_else(|| RewriteError::NoSource {
                target: disk.target.clone(),
            })?;
        Ok(Edit {
            range: close..close,
            text: slices,
        })
    }
}

/// What a disk's source will read after `new` is applied (for the plan and for checks).
pub fn describe(new: &NewSource, old: Option<&DiskSource>) -> DiskSource {
    match (new, old) {
        (NewSource::Path { path, .. }, _) => DiskSource::Path { path: path.clone() },
        (NewSource::Pool { pool }, Some(DiskSource::Volume { volume, mode, .. })) => {
            DiskSource::Volume {
                pool: pool.clone(),
                volume: volume.clone(),
                mode: mode.clone(),
            }
        }
        (NewSource::Pool { pool }, _) => DiskSource::Volume {
            pool: pool.clone(),
            volume: String::new(),
            mode: None,
        },
    }
}

/// The result of applying edits: the new text and, for each edit, its range in the input and
/// in the output.
#[derive(Debug, Clone)]
pub struct Applied {
    pub text: String,
    pub ranges: Vec<(Range<usize>, Range<usize>)>,
}

/// Apply non-overlapping edits to `input`.
///
/// # Panics
/// If two edits overlap: the callers build edits from distinct parts of distinct disks.
pub fn apply(input: &str, edits: &[Edit]) -> Applied {
    let mut sorted: Vec<&Edit> = edits.iter().collect();
    sorted.sort_by_key(|e| (e.range.start, e.range.end));
    let mut text = String::with_capacity(input.len() + 64);
    let mut ranges = Vec::with_capacity(sorted.len());
    let mut at = 0;
    for e in sorted {
        assert!(
            e.range.start >= at,
            "overlapping XML edits at byte {}",
            e.range.start
        );
        text.push_str(&input[at..e.range.start]);
        let out_start = text.len();
        text.push_str(&e.text);
        ranges.push((e.range.clone(), out_start..text.len()));
        at = e.range.end;
    }
    text.push_str(&input[at..]);
    Applied { text, ranges }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    fn first_disk(doc: &str) -> Disk {
        domain::parse(doc).unwrap().disks.remove(0)
    }

    fn rewrite(doc: &str, new: NewSource) -> String {
        let d = first_disk(doc);
        apply(doc, &disk_edits(&d, &new).unwrap()).text
    }

    #[test]
    fn path_change_keeps_quotes_and_escapes() {
        let doc = "<domain><name>g</name><devices><disk type=\"file\"><source file=\"/a\" index=\"1\"/><target dev=\"vda\"/></disk></devices></domain>";
        let out = rewrite(
            doc,
            NewSource::Path {
                kind: DiskType::File,
                path: "/b&\"c".into(),
            },
        );
        assert_eq!(out, doc.replace("\"/a\"", "\"/b&amp;&quot;c\""));
        assert_eq!(first_disk(&out).path(), Some("/b&\"c"));
    }

    #[test]
    fn file_to_block_changes_type_and_attribute_only() {
        let doc = "<domain><name>g</name><devices><disk type='file' device='disk'>\n  <source file='/var/lib/a.img'/>\n  <target dev='vdb'/></disk></devices></domain>";
        let out = rewrite(
            doc,
            NewSource::Path {
                kind: DiskType::Block,
                path: "/dev/nvme1n5".into(),
            },
        );
        assert_eq!(
            out,
            "<domain><name>g</name><devices><disk type='block' device='disk'>\n  <source dev='/dev/nvme1n5'/>\n  <target dev='vdb'/></disk></devices></domain>"
        );
    }

    #[test]
    fn missing_type_attribute_is_inserted_in_the_documents_quote_style() {
        let doc = "<domain><name>g</name><devices><disk device='cdrom'><source file='/a.iso'/><target dev='hdc'/></disk></devices></domain>";
        let out = rewrite(
            doc,
            NewSource::Path {
                kind: DiskType::Block,
                path: "/dev/sr0".into(),
            },
        );
        assert!(
            out.contains("<disk type='block' device='cdrom'><source dev='/dev/sr0'/>"),
            "{out}"
        );
    }

    #[test]
    fn volume_to_file_writes_a_new_source_element() {
        let doc = "<domain><name>g</name><devices><disk type='volume'><source pool='p' volume='v'/><target dev='vdb'/></disk></devices></domain>";
        let out = rewrite(
            doc,
            NewSource::Path {
                kind: DiskType::File,
                path: "/x.img".into(),
            },
        );
        assert!(
            out.contains("<disk type='file'><source file='/x.img'/><target"),
            "{out}"
        );
        let pool = rewrite(doc, NewSource::Pool { pool: "q".into() });
        assert!(pool.contains("<source pool='q' volume='v'/>"), "{pool}");
    }

    #[test]
    fn a_storage_slice_goes_inside_source_whatever_its_form() {
        let empty = "<domain><name>g</name><devices><disk type='block'><source dev='/dev/a'/><target dev='vdb'/></disk></devices></domain>";
        let d = first_disk(empty);
        let out = apply(empty, &[slice_edit(empty, &d, 4096).unwrap()]).text;
        assert!(out.contains("<source dev='/dev/a'><slices><slice type='storage' offset='0' size='4096'/></slices></source><target"), "{out}");
        assert_eq!(first_disk(&out).storage_slice, Some((0, 4096)));
        let full = "<domain><name>g</name><devices><disk type=\"block\"><source dev=\"/dev/a\">\n  <seclabel model=\"dac\"/>\n</source><target dev=\"vdb\"/></disk></devices></domain>";
        let d = first_disk(full);
        let out = apply(full, &[slice_edit(full, &d, 8192).unwrap()]).text;
        assert!(out.contains("<seclabel model=\"dac\"/>\n<slices><slice type=\"storage\" offset=\"0\" size=\"8192\"/></slices></source>"), "{out}");
        assert_eq!(first_disk(&out).storage_slice, Some((0, 8192)));
        let sliced = &out;
        assert!(slice_edit(sliced, &first_disk(sliced), 1).is_err());
    }

    #[test]
    fn backing_chain_sources_follow_the_map() {
        let doc = "<domain><name>g</name><devices><disk type='file'><source file='/mnt/nfs/top.qcow2'/>\
            <backingStore type='file' index='1'><format type='qcow2'/><source file='/mnt/nfs/base.qcow2'/>\
            <backingStore type='file' index='2'><source file='/var/lib/gold.raw'/><backingStore/></backingStore>\
            </backingStore><target dev='vda'/></disk></devices></domain>";
        let d = first_disk(doc);
        let (edits, unmapped) = backing_edits(&d, |p| {
            p.strip_prefix("/mnt/nfs/")
                .map(|r| format!("/mnt/nfs2/{r}"))
        });
        assert_eq!(unmapped, vec!["/var/lib/gold.raw"]);
        let out = apply(doc, &edits).text;
        assert_eq!(
            out,
            doc.replace("/mnt/nfs/base.qcow2", "/mnt/nfs2/base.qcow2")
        );
    }

    #[test]
    fn apply_reports_input_and_output_ranges() {
        let a = apply(
            "0123456789",
            &[
                Edit {
                    range: 6..8,
                    text: "X".into(),
                },
                Edit {
                    range: 1..2,
                    text: "abc".into(),
                },
            ],
        );
        assert_eq!(a.text, "0abc2345X89");
        assert_eq!(a.ranges, vec![(1..2, 1..4), (6..8, 8..9)]);
    }
}
