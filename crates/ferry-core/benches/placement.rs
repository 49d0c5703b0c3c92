//! Target selection at fleet scale: deriving the storage rules and ranking 1,000 simulated hosts
//! for one guest (the seed guest: a shared qcow2 on a canary-identified directory pool, a local
//! block device copied into each host's local pool). Run: `cargo bench -p ferry-core`.

use std::collections::BTreeSet;

use ferry_core::facts::{
    Canary, CpuCompat, GuestFacts, GuestType, HostFacts, HostReport, PoolFacts, PoolKind,
    PoolSource,
};
use ferry_core::inventory::HostState;
use ferry_core::placement::{rank, Candidate, GuestNeeds, Ranking};
use ferry_core::storage::{derive, Derived, DiskBytes, StorageFacts};
use ferry_core::Rules;

const SEED: &str = include_str!("../tests/data/seed-source.xml");
const GIB: u64 = 1 << 30;

fn main() {
    divan::main();
}

fn pool(name: &str, path: &str, free: u64) -> PoolFacts {
    PoolFacts {
        name: name.into(),
        kind: PoolKind::Dir,
        path: Some(path.into()),
        source: PoolSource::Directory,
        active: true,
        capacity: free * 2,
        available: free,
    }
}

struct Fleet {
    source: HostReport,
    names: Vec<String>,
    reports: Vec<HostReport>,
    canaries: Vec<Vec<Canary>>,
}

/// `n` hosts of varied free memory, load and pools; one in ten misses the shared store.
fn fleet(n: usize) -> Fleet {
    let facts = |i: usize| HostFacts {
        hostname: format!("host{i}"),
        uuid: Some(format!("uuid-{i}")),
        libvirt_version: 9_000_000,
        qemu_version: 7_002_000,
        arch: "x86_64".into(),
        cpu_model: Some("Skylake".into()),
        cpu_xml: None,
        memory_total: 256 * GIB,
        memory_free: (i as u64 * 7919 % 200 + 1) * GIB,
        guest_types: vec![GuestType {
            arch: "x86_64".into(),
            domain_type: "kvm".into(),
            machines: vec!["pc".into(), "pc-q35-7.2".into()],
        }],
    };
    let source = HostReport {
        facts: Some(facts(0)),
        pools: vec![pool("nfs", "/mnt/nfs", GIB), pool("nvme", "/dev", 0)],
        ..Default::default()
    };
    let mut names = vec![];
    let mut reports = vec![];
    let mut canaries = vec![];
    for i in 1..=n {
        let sees_share = i % 10 != 0;
        // One in seven has too little room for the 20 GiB copy.
        let room = if i % 7 == 0 { 5 } else { 20 + i as u64 % 50 };
        let mut pools = vec![pool("store", "/srv/store", room * GIB)];
        if sees_share {
            pools.push(pool("shared", "/mnt/nfs_b", GIB));
        }
        names.push(format!("host{i}"));
        reports.push(HostReport {
            facts: Some(facts(i)),
            guests: (0..i % 4)
                .map(|g| GuestFacts {
                    name: format!("g{g}"),
                    active: true,
                    memory: 4 * GIB,
                    job: g == 0 && i % 3 == 0,
                })
                .collect(),
            pools,
            networks: vec!["default".into()],
            error: None,
        });
        canaries.push(vec![
            Canary {
                src_dir: "/mnt/nfs".into(),
                dst_dir: "/mnt/nfs_b".into(),
                name: "c".into(),
                seen: sees_share,
            },
            Canary {
                src_dir: "/mnt/nfs".into(),
                dst_dir: "/srv/store".into(),
                name: "c".into(),
                seen: false,
            },
        ]);
    }
    Fleet {
        source,
        names,
        reports,
        canaries,
    }
}

#[divan::bench]
fn derive_and_rank_1000_hosts(bencher: divan::Bencher) {
    let f = fleet(1000);
    let dom = ferry_core::domain::parse(SEED).unwrap();
    let bytes: DiskBytes = [("vda".to_string(), 10 * GIB), ("vdb".to_string(), 20 * GIB)]
        .into_iter()
        .collect();
    let shared: BTreeSet<String> = ["nfs".to_string()].into();
    let once = || -> Ranking {
        let derived: Vec<Derived> = f
            .reports
            .iter()
            .zip(&f.canaries)
            .zip(&f.names)
            .map(|((r, c), n)| {
                derive(
                    &dom,
                    &Rules::default(),
                    &[],
                    &StorageFacts {
                        source_name: "host0",
                        target_name: n,
                        source_pools: &f.source.pools,
                        target_pools: &r.pools,
                        canaries: c,
                        shared_elsewhere: &shared,
                        local_stores: &[],
                    },
                    &bytes,
                )
            })
            .collect();
        let cands: Vec<Candidate> = f
            .reports
            .iter()
            .zip(&derived)
            .zip(&f.names)
            .map(|((r, d), n)| Candidate {
                name: n,
                uri: n,
                state: HostState::Active,
                reserve_memory: 2 * GIB,
                report: r,
                cpu: CpuCompat::Superset,
                storage: &d.problems,
                copy_bytes: d.copy_bytes,
                journal_migrations: 0,
            })
            .collect();
        rank(&GuestNeeds::of(&dom), &f.source, divan::black_box(&cands))
    };
    // A fleet where most hosts qualify and some do not (no share, no room, no memory).
    let r = once();
    let eligible = r.hosts.iter().filter(|v| v.eligible).count();
    assert!(
        r.target.is_some() && eligible > 500 && eligible < 1000,
        "{eligible}: {:?}",
        r.hosts[0].reasons
    );
    bencher.bench_local(once);
}
