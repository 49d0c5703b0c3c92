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

/// A domain of `n` disks: half on shared storage (mapped), half local (copied), one in ten a
/// media-less cdrom; and the rules for it.
fn big(n: usize) -> (String, Rules) {
    let mut xml = String::from("<domain type='kvm'><name>big</name><devices>\n");
    let mut copy = Vec::new();
    for i in 0..n {
        if i % 10 == 9 {
            xml.push_str(&format!("<disk><target dev='hd{i}'/></disk>\n"));
        } else if i % 2 == 0 {
            xml.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='/mnt/nfs/d{i}.qcow2'/><target dev='vd{i}'/></disk>\n"
            ));
        } else {
            xml.push_str(&format!(
                "<disk type='block' device='disk'><driver name='qemu' type='raw'/>\
                 <source dev='/dev/local/d{i}'/><target dev='vd{i}'/></disk>\n"
            ));
            copy.push(format!("vd{i}=/dev/target/d{i}").parse().unwrap());
        }
    }
    xml.push_str("</devices></domain>\n");
    let rules = Rules {
        map: vec!["/mnt/nfs=/mnt/nfs_second_mount".parse().unwrap()],
        copy,
    };
    (xml, rules)
}

/// Planning grows linearly with the disks (maps, copies, media-less drives, the diff).
#[divan::bench(args = [10, 1_000, 50_000], sample_count = 10)]
fn plan_n_disks(bencher: divan::Bencher, n: usize) {
    let (xml, rules) = big(n);
    bencher.bench_local(|| {
        plan(
            divan::black_box(&xml),
            Some(&xml),
            "qemu+tcp://host2/system",
            &rules,
            &MigrationOptions::default(),
        )
        .unwrap()
    });
}
