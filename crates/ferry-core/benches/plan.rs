//! Reading + planning + rewriting a typical domain XML (the seed guest, live and inactive).
//! Run: `cargo bench -p ferry-core`.

use ferry_core::{plan, MigrationOptions, Rules};

const SEED: &str = include_str!("../tests/data/seed-source.xml");

fn main() {
    divan::main();
}

#[divan::bench]
fn read_plan_rewrite_seed() -> ferry_core::Plan {
    let rules = Rules {
        map: vec!["/mnt/nfs=/mnt/nfs_second_mount".parse().unwrap()],
        copy: vec!["vdb=/dev/nvme1n5".parse().unwrap()],
    };
    plan(
        divan::black_box(SEED),
        Some(divan::black_box(SEED)),
        "qemu+tcp://host2/system",
        &rules,
        &MigrationOptions::default(),
    )
    .unwrap()
}

#[divan::bench]
fn read_only_seed() -> ferry_core::Domain {
    ferry_core::domain::parse(divan::black_box(SEED)).unwrap()
}
