//! Every domain in the shared corpus (real XML written by others) goes through the rewrite with
//! a rule for each of its disks, and comes out byte-exact outside the edits.

mod common;

use ferry_core::domain::{self, DiskSource, DiskType};
use ferry_core::plan::{rewrite_domain, Decision};
use ferry_core::{CopyRule, MapRule, Rules};

/// A rule for every disk: shared disks mapped to `/ferry-target…`, volumes to another pool.
/// With `flip_copies`, local file/block disks are copied instead, to the other kind of path.
fn rules_for(dom: &ferry_core::Domain, flip_copies: bool) -> Rules {
    let mut rules = Rules::default();
    let dup = |t: &str| dom.disks.iter().filter(|d| d.target == t).count() > 1;
    // A disk is copied only if no other disk's exact-path map would also match it.
    let others_cover = |me: &ferry_core::Disk| {
        me.path().is_some_and(|p| {
            dom.disks.iter().any(|o| {
                !std::ptr::eq(o, me)
                    && o.path().is_some_and(|op| {
                        MapRule {
                            from: op.into(),
                            to: op.into(),
                            origin: Default::default(),
                        }
                        .apply(p)
                        .is_some()
                    })
            })
        })
    };
    for d in &dom.disks {
        let copyable = !d.readonly
            && !d.shareable
            && !d.target.is_empty()
            && !dup(&d.target)
            && !others_cover(d)
            && matches!(
                d.disk_type,
                DiskType::File | DiskType::Block | DiskType::Nvme | DiskType::Volume
            );
        match &d.source {
            None | Some(DiskSource::Network { .. }) => {}
            Some(DiskSource::Nvme { .. }) => rules.copy.push(CopyRule {
                disk: d.target.clone(),
                to: Some(format!("/dev/ferry-{}", d.target)),
                slice: None,
                origin: Default::default(),
            }),
            Some(_) if flip_copies && copyable => {
                let to = if d.disk_type == DiskType::Block {
                    format!("/var/lib/ferry/{}.img", d.target)
                } else {
                    format!("/dev/ferry/{}", d.target)
                };
                rules.copy.push(CopyRule {
                    disk: d.target.clone(),
                    to: Some(to),
                    slice: None,
                    origin: Default::default(),
                });
            }
            Some(DiskSource::Path { path }) => {
                if rules.map_for_path(path).is_none() {
                    rules.map.push(MapRule {
                        from: path.clone(),
                        to: mapped(path),
                        origin: Default::default(),
                    });
                }
            }
            Some(DiskSource::Volume { pool, .. }) => {
                if rules.map_for_pool(pool).is_none() {
                    rules.map.push(MapRule {
                        from: pool.clone(),
                        to: format!("{pool}-target"),
                        origin: Default::default(),
                    });
                }
            }
        }
    }
    rules
}

fn mapped(path: &str) -> String {
    format!("/ferry-target/{}", path.trim_start_matches('/'))
}

fn run_corpus(flip_copies: bool) {
    let mut disks_seen = 0;
    let mut edits_seen = 0;
    for (name, text) in common::corpus() {
        let dom = domain::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let rules = rules_for(&dom, flip_copies);
        let rw = rewrite_domain(&text, &dom, &rules).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = common::check_byte_exact(&text, &dom, &rw);
        assert_eq!(out.disks.len(), dom.disks.len(), "{name}");
        for ((before, after), planned) in dom.disks.iter().zip(&out.disks).zip(&rw.disks) {
            disks_seen += 1;
            assert_eq!(
                after.source, planned.dest_source,
                "{name}: disk {}",
                before.target
            );
            assert_eq!(
                after.disk_type, planned.dest_type,
                "{name}: {}",
                before.target
            );
            assert_eq!(after.target, before.target, "{name}");
            assert_eq!(after.format, before.format, "{name}");
            if let (Some(DiskSource::Path { path }), Decision::Shared) =
                (&before.source, planned.decision)
            {
                let rule = rules.map_for_path(path).unwrap();
                assert_eq!(after.path().unwrap(), rule.apply(path).unwrap(), "{name}");
                assert!(
                    after.path().unwrap().starts_with("/ferry-target"),
                    "{name}: {path} -> {:?}",
                    after.path()
                );
            }
        }
        edits_seen += rw.applied.ranges.len();
        // The diff made from the edits (linear) is the general diff algorithm's.
        assert_eq!(
            ferry_core::render::edits_diff(&text, &rw.applied.text, &rw.applied.ranges, "a", "b"),
            ferry_core::render::unified_diff(&text, &rw.applied.text, "a", "b"),
            "{name}"
        );
    }
    assert!(disks_seen > 200, "only {disks_seen} disks");
    assert!(edits_seen > 150, "only {edits_seen} edits");
}

#[test]
fn every_corpus_domain_is_rewritten_byte_exactly_with_maps() {
    run_corpus(false);
}

#[test]
fn every_corpus_domain_is_rewritten_byte_exactly_with_kind_changing_copies() {
    run_corpus(true);
}

#[test]
fn corpus_disk_kinds_are_all_read() {
    let mut kinds = std::collections::BTreeSet::new();
    for (_, text) in common::corpus() {
        for d in domain::parse(&text).unwrap().disks {
            kinds.insert(d.disk_type.as_str().to_string());
        }
    }
    for k in ["file", "block", "network", "volume", "dir", "nvme"] {
        assert!(
            kinds.contains(k),
            "no {k} disk read from the corpus: {kinds:?}"
        );
    }
}
