//! Property tests of the rewrite: arbitrary rules over real XML.

mod common;

use ferry_core::domain::{self, DiskSource};
use ferry_core::plan::{kind_of_path, rewrite_domain, Decision, PlanError};
use ferry_core::{CopyRule, MapRule, Rules};
use proptest::prelude::*;

/// What to do with one disk.
#[derive(Debug, Clone)]
enum Choice {
    Nothing,
    Map(String),
    /// A map of the first path component (`/mnt=/m/…/mnt`): it also covers backing images.
    MapTop(String),
    CopyKeep,
    CopyTo(String),
    /// A copy onto a block device, into a storage slice of this many bytes.
    CopyToSlice(String, u64),
}

fn path_part() -> impl Strategy<Value = String> {
    // Characters that need escaping in attributes, and spaces, on purpose.
    "[a-zA-Z0-9_. &<>'\"-]{1,12}"
}

fn choice() -> impl Strategy<Value = Choice> {
    prop_oneof![
        Just(Choice::Nothing),
        path_part().prop_map(|p| Choice::Map(format!("/m/{p}"))),
        path_part().prop_map(|p| Choice::MapTop(format!("/m/{p}"))),
        Just(Choice::CopyKeep),
        path_part().prop_map(|p| Choice::CopyTo(format!("/var/{p}"))),
        path_part().prop_map(|p| Choice::CopyTo(format!("/dev/{p}"))),
        (path_part(), 1u64..1 << 40).prop_map(|(p, n)| Choice::CopyToSlice(format!("/dev/{p}"), n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn rewrite_is_byte_exact_outside_the_edits(
        file_idx in 0usize..1000,
        choices in proptest::collection::vec(choice(), 16),
    ) {
        let corpus = common::corpus();
        // One case in five: our own document with a backing chain (the corpus has none).
        let chain = ("overlay-chain.xml".to_string(), include_str!("data/overlay-chain.xml").to_string());
        let (name, text) = if file_idx % 5 == 0 { &chain } else { &corpus[file_idx % corpus.len()] };
        let dom = domain::parse(text).unwrap();
        let mut rules = Rules::default();
        for (d, c) in dom.disks.iter().zip(choices.iter().cycle()) {
            match c {
                Choice::Nothing => {}
                Choice::Map(to) => {
                    if let Some(p) = d.path() {
                        rules.map.push(MapRule { from: p.to_string(), to: format!("{to}{p}"), origin: Default::default() });
                    }
                }
                Choice::MapTop(to) => {
                    if let Some(top) = d.path().and_then(|p| p.split('/').nth(1)).filter(|t| !t.is_empty()) {
                        rules.map.push(MapRule { from: format!("/{top}"), to: format!("{to}/{top}"), origin: Default::default() });
                    }
                }
                Choice::CopyKeep | Choice::CopyTo(_) | Choice::CopyToSlice(..) => {
                    if !d.target.is_empty() && rules.copy_for(&d.target).is_none() {
                        rules.copy.push(CopyRule {
                            disk: d.target.clone(),
                            to: match c {
                                Choice::CopyTo(t) | Choice::CopyToSlice(t, _) => Some(t.clone()),
                                _ => None,
                            },
                            slice: match c { Choice::CopyToSlice(_, n) => Some(*n), _ => None },
                            origin: Default::default(),
                        });
                    }
                }
            }
        }
        match rewrite_domain(text, &dom, &rules) {
            Ok(rw) => {
                let out = common::check_byte_exact(text, &dom, &rw);
                for ((before, after), planned) in dom.disks.iter().zip(&out.disks).zip(&rw.disks) {
                    prop_assert_eq!(&after.source, &planned.dest_source, "{}: {}", name, before.target);
                    // Backing images of a shared disk follow the same rules.
                    if planned.decision == Decision::Shared && planned.reason.starts_with("--map") {
                        for (b, a) in before.backing_chain.iter().zip(&after.backing_chain) {
                            if let DiskSource::Path { path } = b {
                                let want = rules.map_for_path(path).and_then(|r| r.apply(path)).unwrap_or(path.clone());
                                prop_assert_eq!(a, &DiskSource::Path { path: want });
                            }
                        }
                    }
                    if planned.decision == Decision::Copy {
                        if let Some(DiskSource::Path { path }) = &planned.dest_source {
                            if before.source != planned.dest_source {
                                prop_assert_eq!(&after.disk_type, &kind_of_path(path));
                            }
                        }
                    }
                    prop_assert_eq!(after.storage_slice, planned.dest_slice.map(|n| (0, n)).or(before.storage_slice));
                    if planned.dest_source == before.source && planned.dest_type == planned.source_type && planned.dest_slice.is_none() {
                        // An unchanged disk is byte-identical.
                        prop_assert_eq!(
                            &text[before.pos.element.clone()],
                            &rw.applied.text[after.pos.element.clone()]
                        );
                    }
                }
            }
            // Refusals are fine as long as they are the documented ones.
            Err(PlanError::NoRule { .. } | PlanError::MapAndCopy { .. } | PlanError::CopyNotPossible { .. }) => {}
            Err(e) => prop_assert!(false, "{}: unexpected error {}", name, e),
        }
    }
}
