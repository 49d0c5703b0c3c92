//! The reader against arbitrary input: random bytes, and real documents mutated at random. It
//! never panics, and every document it accepts is rewritten byte-exactly. (Its speed on large
//! documents is measured by `make bench`, not here.)

mod common;

use ferry_core::domain::{self, DiskSource};
use ferry_core::plan::rewrite_domain;
use ferry_core::{MapRule, Rules};
use proptest::prelude::*;

/// A rule for every path disk: each path mapped to itself under `/t`.
fn map_everything(dom: &ferry_core::Domain) -> Rules {
    let mut r = Rules::default();
    for d in &dom.disks {
        if let Some(DiskSource::Path { path }) = &d.source {
            if path.starts_with('/') && r.map_for_path(path).is_none() {
                r.map.push(MapRule {
                    from: path.clone(),
                    to: format!("/t{path}"),
                    origin: Default::default(),
                });
            }
        }
    }
    r
}

/// Read, and when the document is accepted, rewrite it and check the rewrite.
fn read_and_rewrite(text: &str) {
    let Ok(dom) = domain::parse(text) else { return };
    let rules = map_everything(&dom);
    if let Ok(rw) = rewrite_domain(text, &dom, &rules) {
        common::check_byte_exact(text, &dom, &rw);
    }
}

/// One mutation of a document.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just("<".to_string()),
        Just(">".to_string()),
        Just("/>".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("&".to_string()),
        Just("&#10;".to_string()),
        Just("&#0;".to_string()),
        Just("<![CDATA[".to_string()),
        Just("<!--".to_string()),
        Just("<!DOCTYPE x [<!ENTITY a 'b'>]>".to_string()),
        Just("<disk type='file'><source file='/x'/><target dev='vdq'/></disk>".to_string()),
        Just(" file='/y'".to_string()),
        "[ -~]{0,8}".prop_map(|s| s),
    ];
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), snippet).prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::Replace(at, c)),
    ]
}

/// Apply at char boundaries (the reader takes text).
fn apply(text: &str, m: &Mutation) -> String {
    let at = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match m {
        Mutation::Delete(i, n) => {
            let a = at(*i);
            let mut b = (a + n).min(text.len());
            while !text.is_char_boundary(b) {
                b += 1;
            }
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert(i, s) => {
            let a = at(*i);
            format!("{}{s}{}", &text[..a], &text[a..])
        }
        Mutation::Replace(i, c) => {
            let a = at(*i);
            let b = text[a..].chars().next().map_or(a, |ch| a + ch.len_utf8());
            format!("{}{c}{}", &text[..a], &text[b..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        read_and_rewrite(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_corpus_documents_are_refused_or_rewritten_exactly(
        file_idx in 0usize..1000,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let corpus = common::corpus();
        let (_, text) = &corpus[file_idx % corpus.len()];
        let mut t = text.clone();
        for m in &mutations {
            t = apply(&t, m);
        }
        read_and_rewrite(&t);
    }
}
