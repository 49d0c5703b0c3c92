//! Helpers shared by the corpus and property tests.

#![allow(dead_code)]

use std::path::PathBuf;

use ferry_core::domain::{self, Domain};
use ferry_core::plan::DomainRewrite;
use ferry_core::rewrite::Applied;

/// The corpus of real domain XML written by others, kept in the repository
/// (`tests/corpus/`, with its origin and licence in the README there).
pub fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/virt-manager-domains");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus is missing at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 70, "corpus has only {} files", out.len());
    out
}

/// `text` with the given byte ranges cut out.
pub fn cut(text: &str, ranges: impl Iterator<Item = std::ops::Range<usize>>) -> String {
    let mut out = String::new();
    let mut at = 0;
    for r in ranges {
        out.push_str(&text[at..r.start]);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The invariants of a rewrite: outside the edits the output is the input byte for byte; every
/// edit lies in a disk's `type` attribute value or `<source>` element; the output parses.
pub fn check_byte_exact(input: &str, dom: &Domain, rw: &DomainRewrite) -> Domain {
    let Applied { text, ranges } = &rw.applied;
    assert_eq!(
        cut(input, ranges.iter().map(|r| r.0.clone())),
        cut(text, ranges.iter().map(|r| r.1.clone())),
        "bytes outside the edits changed"
    );
    for (r, _) in ranges {
        let allowed = dom.disks.iter().any(|d| {
            let p = &d.pos;
            p.source
                .iter()
                .chain(p.backing.iter().map(|b| &b.source))
                .any(|s| s.start <= r.start && r.end <= s.end)
                || p.type_attr.as_ref().is_some_and(|t| t.value_span == *r)
                || (r.start == p.disk_name_end && r.end == p.disk_name_end)
        });
        assert!(
            allowed,
            "edit {r:?} is outside every <source> and disk type: {:?}",
            &input[r.clone()]
        );
    }
    domain::parse(text).unwrap_or_else(|e| panic!("the output does not parse: {e:?}\n{text}"))
}
