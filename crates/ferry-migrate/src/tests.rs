//! The flow's decisions, against the recording fake: what is checked, created, migrated,
//! deleted and reported. (That migration works is proven in the lab, not here.)

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ferry_core::{MigrationOptions, Rules};
use ferry_hypervisor::fake::{Call, Fake, FakeDomain, FakeHost, MigrateOutcome};
use ferry_hypervisor::{DiskSize, DomainState, HostId, Hypervisor, JobStats, PathInfo, PathKind};
use ferry_journal::{Journal, RunOutcome};

use crate::flow::run;
use crate::*;

mod preseed;

const SRC: &str = "qemu+tcp://h1/system";
const DST: &str = "qemu+tcp://h2/system";
const MIB64: u64 = 64 << 20;

const GUEST_XML: &str = "<domain type='qemu'>
  <name>g</name>
  <uuid>6f1e7a52-3c1d-4c8e-9a57-2f1e00f3c0de</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/mnt/nfs/test_img.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/nvme2n2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
";

fn file(capacity: u64, format: &str) -> PathInfo {
    PathInfo {
        kind: PathKind::File,
        capacity,
        allocation: capacity,
        format: Some(format.into()),
    }
}

fn block(capacity: u64) -> PathInfo {
    PathInfo {
        kind: PathKind::Block,
        capacity,
        allocation: capacity,
        format: Some("raw".into()),
    }
}

/// h1 runs the seed guest (vda shared qcow2 of 32 MiB, vdb a local 64 MiB block device); h2
/// sees the share at /mnt/nfs_second_mount and has /dev/nvme1n5 (64 MiB), /dev/nvme1n6
/// (32 MiB) and a directory /srv/store with 1 GiB free.
fn lab() -> Arc<Fake> {
    let fake = Arc::new(Fake::new());
    let disks = HashMap::from([
        (
            "vda".to_string(),
            DiskSize {
                capacity: 32 << 20,
                allocation: 1 << 20,
                physical: 1 << 20,
            },
        ),
        (
            "vdb".to_string(),
            DiskSize {
                capacity: MIB64,
                allocation: MIB64,
                physical: MIB64,
            },
        ),
    ]);
    fake.add_host(
        SRC,
        FakeHost {
            hostname: "h1".into(),
            uuid: "u1".into(),
            domains: HashMap::from([(
                "g".to_string(),
                FakeDomain {
                    state: DomainState::Running,
                    live_xml: GUEST_XML.into(),
                    inactive_xml: GUEST_XML.into(),
                    disks,
                },
            )]),
            paths: HashMap::from([("/mnt/nfs/test_img.img".to_string(), file(32 << 20, "qcow2"))]),
            dirs: HashMap::from([("/mnt/nfs".to_string(), 1 << 30)]),
            ..Default::default()
        },
    );
    fake.add_host(
        DST,
        FakeHost {
            hostname: "h2".into(),
            uuid: "u2".into(),
            domains: HashMap::new(),
            paths: HashMap::from([
                (
                    "/mnt/nfs_second_mount/test_img.img".to_string(),
                    file(32 << 20, "qcow2"),
                ),
                ("/dev/nvme1n5".to_string(), block(MIB64)),
                ("/dev/nvme1n6".to_string(), block(32 << 20)),
            ]),
            dirs: HashMap::from([
                ("/mnt/nfs_second_mount".to_string(), 1 << 30),
                ("/dev".to_string(), 0),
                ("/srv/store".to_string(), 1 << 30),
            ]),
            ..Default::default()
        },
    );
    fake
}

fn request(copy: &str) -> Request {
    Request {
        guest: "g".into(),
        from: SRC.into(),
        to: DST.into(),
        to_name: "h2".into(),
        provision: vec![],
        started: std::time::Instant::now(),
        run: None,
        rules: Rules {
            map: vec!["/mnt/nfs=/mnt/nfs_second_mount".parse().unwrap()],
            copy: vec![copy.parse().unwrap()],
        },
        options: MigrationOptions {
            unsafe_: true,
            ..Default::default()
        },
        dry_run: false,
        cold: false,
        timeout: None,
        abort_grace: ABORT_GRACE,
        connect_timeout: ANSWER,
    }
}

/// How long the fake's hosts may take to answer.
const ANSWER: std::time::Duration = std::time::Duration::from_secs(30);

fn hv(fake: &Arc<Fake>) -> Arc<dyn Hypervisor> {
    fake.clone()
}

fn go(fake: &Arc<Fake>, req: &Request) -> (Result<Outcome, MigrateError>, Vec<Event>, Journal) {
    let journal = Journal::in_memory().unwrap();
    let mut events = Vec::new();
    let r = run(
        &hv(fake),
        &journal,
        req,
        &mut events,
        &AtomicBool::new(false),
    );
    (r, events, journal)
}

fn mutating(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| !matches!(c, Call::Connect(_)))
        .cloned()
        .collect()
}

#[test]
fn seed_onto_an_existing_block_device_copies_only_vdb_and_verifies() {
    let fake = lab();
    let (r, _, journal) = go(&fake, &request("vdb=/dev/nvme1n5"));
    let Ok(Outcome::Migrated(s)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        mutating(&fake.calls()),
        vec![Call::Migrate {
            src: SRC.into(),
            dst: DST.into(),
            name: "g".into(),
            migrate_disks: vec!["vdb".into()],
            bandwidth: None,
            flags: ferry_hypervisor::MigrateFlags {
                live: true,
                persist_dest: true,
                undefine_source: true,
                abort_on_error: true,
                non_shared_disk: true,
                unsafe_: true,
                ..Default::default()
            },
        }],
        "nothing created: the block device exists with the exact size"
    );
    assert_eq!(s.copied_disks, vec!["vdb"]);
    assert!(s.created.is_empty());
    assert_eq!(s.verified.len(), 4, "{:?}", s.verified);
    let h2 = fake.host_snapshot(DST);
    assert!(h2.domains["g"]
        .live_xml
        .contains("<source dev='/dev/nvme1n5'/>"));
    assert!(h2.domains["g"]
        .inactive_xml
        .contains("<source file='/mnt/nfs_second_mount/test_img.img'/>"));
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::Migrated)
    );
}

#[test]
fn a_missing_file_target_is_created_at_the_exact_size_and_journaled() {
    let fake = lab();
    let (r, _, journal) = go(&fake, &request("vdb=/srv/store/vdb.raw"));
    let Ok(Outcome::Migrated(s)) = r else {
        panic!("{r:?}")
    };
    let calls = mutating(&fake.calls());
    assert_eq!(
        calls[0],
        Call::CreateVolume {
            host: DST.into(),
            path: "/srv/store/vdb.raw".into(),
            capacity: MIB64,
            format: "raw".into()
        }
    );
    assert!(matches!(calls[1], Call::Migrate { .. }));
    assert_eq!(s.created, vec!["/srv/store/vdb.raw"]);
    assert!(fake.host_snapshot(DST).domains["g"]
        .live_xml
        .contains("<disk type='file' device='disk'>"));
    assert!(
        journal.leftovers().unwrap().is_empty(),
        "a migrated run leaves no leftovers"
    );
}

#[test]
fn refusals_happen_before_anything_is_created_or_moved() {
    for (copy, maps, want) in [
        (
            "vdb=/dev/nvme1n6",
            "/mnt/nfs=/mnt/nfs_second_mount",
            "too small",
        ),
        (
            "vdb=/dev/nvme9n9",
            "/mnt/nfs=/mnt/nfs_second_mount",
            "block device does not exist",
        ),
        (
            "vdb=/srv/nodir/vdb.raw",
            "/mnt/nfs=/mnt/nfs_second_mount",
            "directory does not exist",
        ),
        (
            "vdb=/srv/store/vdb.raw",
            "/mnt/nfs=/mnt/elsewhere",
            "path does not exist",
        ),
    ] {
        let fake = lab();
        let mut req = request(copy);
        req.rules.map = vec![maps.parse().unwrap()];
        let (r, _, journal) = go(&fake, &req);
        match r {
            Err(MigrateError::Refused { problems }) => {
                let text = preflight::render(&problems);
                assert!(text.contains(want), "{copy}: {text}");
                assert!(text.contains(DST), "names the host: {text}");
            }
            other => panic!("{copy}: {other:?}"),
        }
        assert!(
            mutating(&fake.calls()).is_empty(),
            "{copy}: {:?}",
            fake.calls()
        );
        assert_eq!(
            journal.runs(1).unwrap()[0].outcome,
            Some(RunOutcome::Refused)
        );
    }
}

#[test]
fn a_guest_already_on_the_target_or_the_same_host_is_refused() {
    let fake = lab();
    let mut h2 = fake.host_snapshot(DST);
    h2.uuid = "u1".into();
    h2.domains
        .insert("g".into(), fake.host_snapshot(SRC).domains["g"].clone());
    fake.add_host(DST, h2);
    let (r, _, _) = go(&fake, &request("vdb=/dev/nvme1n5"));
    let Err(MigrateError::Refused { problems }) = r else {
        panic!("{r:?}")
    };
    let text = preflight::render(&problems);
    assert!(text.contains("already exists there"), "{text}");
    assert!(text.contains("same host UUID"), "{text}");
    // The facts carry the guest's name and both hosts into every message.
    assert!(
        text.contains("a domain named g already exists there"),
        "{text}"
    );
    assert!(
        text.contains(&format!("virsh -c {DST} undefine g")),
        "{text}"
    );
    assert!(mutating(&fake.calls()).is_empty());
}

#[test]
fn a_guest_that_is_not_running_is_refused_naming_the_source() {
    let fake = lab();
    let mut h1 = fake.host_snapshot(SRC);
    h1.domains.get_mut("g").unwrap().state = DomainState::ShutOff;
    fake.add_host(SRC, h1);
    let (r, _, _) = go(&fake, &request("vdb=/dev/nvme1n5"));
    let Err(MigrateError::Refused { problems }) = r else {
        panic!("{r:?}")
    };
    let text = preflight::render(&problems);
    assert!(text.contains(&format!("virsh -c {SRC} start g")), "{text}");
    assert!(mutating(&fake.calls()).is_empty());
}

#[test]
fn a_copy_target_in_use_by_another_domain_is_refused() {
    let fake = lab();
    let mut h2 = fake.host_snapshot(DST);
    h2.domains.insert(
        "other".into(),
        FakeDomain {
            state: DomainState::Running,
            live_xml: "<domain><name>other</name><devices><disk type='block'><source dev='/dev/nvme1n5'/><target dev='vda'/></disk></devices></domain>".into(),
            inactive_xml: String::new(),
            disks: HashMap::new(),
        },
    );
    fake.add_host(DST, h2);
    let (r, _, _) = go(&fake, &request("vdb=/dev/nvme1n5"));
    let Err(MigrateError::Refused { problems }) = r else {
        panic!("{r:?}")
    };
    assert!(preflight::render(&problems).contains("in use by domain other"));
}

#[test]
fn a_failed_migration_deletes_only_what_ferry_created_and_says_the_guest_stayed() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::FailOnSource(
        "migration of disk vdb failed: Input/output error".into(),
    ));
    let (r, _, journal) = go(&fake, &request("vdb=/srv/store/vdb.raw"));
    let Err(MigrateError::Failed {
        location, cleanup, ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::Source);
    assert_eq!(
        cleanup[0],
        rollback::Cleanup::Deleted {
            host: DST.into(),
            path: "/srv/store/vdb.raw".into()
        }
    );
    let calls = mutating(&fake.calls());
    assert_eq!(
        calls.last(),
        Some(&Call::DeleteVolume {
            host: DST.into(),
            path: "/srv/store/vdb.raw".into()
        })
    );
    assert!(fake
        .host_snapshot(DST)
        .paths
        .contains_key("/mnt/nfs_second_mount/test_img.img"));
    assert!(journal.leftovers().unwrap().is_empty());
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::RolledBack)
    );
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("keeps running on the source"));
}

#[test]
fn a_failed_migration_onto_an_existing_device_deletes_nothing() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::FailOnSource("boom".into()));
    let (r, _, _) = go(&fake, &request("vdb=/dev/nvme1n5"));
    assert!(matches!(
        r,
        Err(MigrateError::Failed {
            location: GuestLocation::Source,
            ..
        })
    ));
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert!(fake.host_snapshot(DST).paths.contains_key("/dev/nvme1n5"));
}

#[test]
fn an_error_with_the_guest_on_the_target_is_reported_as_migrated_not_failed() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::FailButMoved(
        "Unable to read from monitor".into(),
    ));
    let (r, events, _) = go(&fake, &request("vdb=/srv/store/vdb.raw"));
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message } if message.contains("but the guest runs on"))
    ));
}

#[test]
fn cancel_aborts_the_job_and_rolls_back() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    let journal = Journal::in_memory().unwrap();
    let mut events = Vec::new();
    let r = run(
        &hv(&fake),
        &journal,
        &request("vdb=/srv/store/vdb.raw"),
        &mut events,
        &AtomicBool::new(true),
    );
    let Err(MigrateError::Failed {
        location, cause, ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::Source);
    assert!(
        matches!(
            **cause,
            Cause::Aborted {
                why: migrate::AbortReason::Cancelled,
                ..
            }
        ),
        "{cause:?}"
    );
    let calls = mutating(&fake.calls());
    assert!(
        calls.contains(&Call::AbortJob {
            host: SRC.into(),
            name: "g".into()
        }),
        "{calls:?}"
    );
    assert!(matches!(calls.last(), Some(Call::DeleteVolume { .. })));
}

#[test]
fn a_job_that_outlives_its_abort_is_reported_uncertain_and_nothing_is_deleted() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::HangEvenAfterAbort);
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.timeout = Some(std::time::Duration::from_secs(1));
    req.abort_grace = std::time::Duration::from_secs(1);
    let t = std::time::Instant::now();
    let (r, _, _) = go(&fake, &req);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "Ferry stopped waiting"
    );
    let Err(MigrateError::Failed {
        location,
        cause,
        cleanup,
        ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::Unknown);
    assert!(
        matches!(
            **cause,
            Cause::Unreturned {
                why: migrate::AbortReason::TimedOut { after_s: 1 },
                grace_s: 1
            }
        ),
        "{cause:?}"
    );
    assert_eq!(
        cleanup,
        &[
            rollback::Cleanup::JobNotEnded {
                host: SRC.into(),
                guest: "g".into()
            },
            rollback::Cleanup::Left {
                host: DST.into(),
                path: "/srv/store/vdb.raw".into(),
                because: rollback::LeftBecause::JobRunning
            }
        ]
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
}

#[test]
fn bandwidth_is_split_across_mirrors_then_raised_for_memory() {
    let fake = lab();
    let mut src = fake.host_snapshot(SRC);
    let g = src.domains.get_mut("g").unwrap();
    g.live_xml = GUEST_XML.replace(
        "<source file='/mnt/nfs/test_img.img'/>",
        "<source file='/var/lib/vda.qcow2'/>",
    );
    g.inactive_xml = g.live_xml.clone();
    fake.add_host(SRC, src);
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    let storage = JobStats {
        time_elapsed_ms: Some(500),
        disk_total: Some(2 * MIB64),
        disk_processed: Some(MIB64),
        disk_remaining: Some(MIB64),
        ..Default::default()
    };
    let memory = JobStats {
        time_elapsed_ms: Some(1000),
        disk_total: Some(2 * MIB64),
        disk_processed: Some(2 * MIB64),
        disk_remaining: Some(0),
        mem_iteration: Some(1),
        mem_processed: Some(1 << 20),
        ..Default::default()
    };
    fake.set_job_script(vec![storage, memory], None);
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.rules.map.clear();
    req.rules
        .copy
        .push("vda=/srv/store/vda.qcow2".parse().unwrap());
    req.options.bandwidth_mib = Some(100);
    req.timeout = Some(std::time::Duration::from_secs(2));
    let (r, events, _) = go(&fake, &req);
    assert!(
        r.is_err(),
        "the fake job only ends when aborted (here by --timeout)"
    );
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| matches!(
            c,
            Call::Migrate {
                bandwidth: Some(50),
                ..
            }
        )),
        "{calls:?}"
    );
    assert!(
        calls.contains(&Call::SetMaxSpeed {
            host: SRC.into(),
            name: "g".into(),
            mib: 100
        }),
        "{calls:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::Job(p) if p.phase == ferry_core::convergence::Phase::StorageCopy)
    ));
    assert!(calls.iter().any(|c| matches!(c, Call::CreateVolume { path, format, .. } if path == "/srv/store/vda.qcow2" && format == "qcow2")));
}

#[test]
fn a_larger_raw_block_device_is_used_through_a_storage_slice() {
    let fake = lab();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths.insert("/dev/nvme1n7".into(), block(96 << 20));
    fake.add_host(DST, h2);
    let (r, _, _) = go(&fake, &request("vdb=/dev/nvme1n7"));
    let Ok(Outcome::Migrated(s)) = r else {
        panic!("{r:?}")
    };
    assert!(
        s.verified
            .iter()
            .any(|v| v.contains("planned sources for all 2")),
        "{:?}",
        s.verified
    );
    let xml = &fake.host_snapshot(DST).domains["g"].live_xml;
    assert!(
        xml.contains("<source dev='/dev/nvme1n7'><slices><slice type='storage' offset='0' size='67108864'/></slices></source>"),
        "{xml}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::CreateVolume { .. })));
}

/// While the flow only reads, a host that does not answer, the run's timeout and Ctrl-C end
/// the run at once, naming the step and the host — and nothing is created or moved.
#[test]
fn a_read_only_step_is_stopped_by_a_silent_host_the_timeout_or_ctrl_c() {
    use std::time::Duration;
    for (connect_timeout, timeout, cancel, want) in [
        (
            Duration::from_millis(300),
            None,
            false,
            StopReason::NoAnswer { within_s: 0 },
        ),
        (
            ANSWER,
            Some(Duration::from_millis(300)),
            false,
            StopReason::TimedOut { after_s: 0 },
        ),
        (ANSWER, None, true, StopReason::Cancelled),
    ] {
        let fake = lab();
        fake.slow_connect(DST, Duration::from_secs(3));
        let mut req = request("vdb=/dev/nvme1n5");
        req.connect_timeout = connect_timeout;
        req.timeout = timeout;
        let journal = Journal::in_memory().unwrap();
        let t = std::time::Instant::now();
        let r = run(
            &hv(&fake),
            &journal,
            &req,
            &mut vec![],
            &AtomicBool::new(cancel),
        );
        assert!(t.elapsed() < Duration::from_secs(2), "it did not wait");
        let Err(MigrateError::Stopped {
            step,
            reason,
            waiting_on,
        }) = &r
        else {
            panic!("{r:?}")
        };
        assert_eq!((*step, *reason), (Step::Inventory, want));
        assert_eq!(waiting_on, &[DST.to_string()]);
        assert!(r.as_ref().unwrap_err().before_acting());
        assert!(mutating(&fake.calls()).is_empty());
    }
}

/// `ferry migrate` (lock, target, flow): a run stopped while reading ends in the journal,
/// refused, its lock given back.
#[test]
fn a_stopped_migration_is_journaled_refused_and_unlocked() {
    let fake = lab();
    fake.slow_connect(DST, std::time::Duration::from_secs(2));
    let journal = Journal::in_memory().unwrap();
    let ask = explicit_ask(
        "g",
        request("vdb=/dev/nvme1n5").rules,
        MigrationOptions::default(),
    );
    let r = crate::migrate(
        &hv(&fake),
        &journal,
        &ask,
        &mut vec![],
        &AtomicBool::new(true),
    );
    assert!(
        matches!(
            r,
            Err(MigrateError::Stopped {
                step: Step::Target,
                reason: StopReason::Cancelled,
                ..
            })
        ),
        "{r:?}"
    );
    let row = &journal.runs(1).unwrap()[0];
    assert_eq!(row.outcome, Some(RunOutcome::Refused));
    assert_eq!(journal.holder("g").unwrap(), None);
}

/// A host another Ferry is evacuating is never a target, even when named: `ferry migrate`
/// reads the journal's evacuations itself (any front end gets that).
#[test]
fn a_host_being_evacuated_is_refused_as_a_target() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    journal
        .begin_evacuation("h2", DST, &owner(1, "another-machine", LONG))
        .unwrap();
    let ask = Ask {
        dry_run: true,
        ..explicit_ask(
            "g",
            request("vdb=/dev/nvme1n5").rules,
            MigrationOptions::default(),
        )
    };
    let r = crate::migrate(
        &hv(&fake),
        &journal,
        &ask,
        &mut vec![],
        &AtomicBool::new(false),
    );
    let Err(MigrateError::NoTarget { ranking, .. }) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(
        ranking.hosts[0].reasons[0].code,
        ferry_core::placement::Code::Draining
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::CreateVolume { .. } | Call::Migrate { .. })));
}

#[test]
fn dry_run_checks_and_touches_nothing() {
    let fake = lab();
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.dry_run = true;
    let (r, _, journal) = go(&fake, &req);
    let Ok(Outcome::DryRun { plan, checks }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(plan.migrate_disks, vec!["vdb"]);
    assert!(checks
        .iter()
        .any(|c| c.contains("Ferry will create /srv/store/vdb.raw")));
    assert!(mutating(&fake.calls()).is_empty());
    assert!(journal.runs(10).unwrap().is_empty());
}

/// A domain defined on the target but never started names the path only in its persistent
/// definition: that counts as in use, and recover keeps the volume.
#[test]
fn recover_keeps_a_volume_only_a_persistent_definition_uses() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths
        .insert("/srv/store/b.raw".into(), file(MIB64, "raw"));
    h2.domains.insert(
        "other".into(),
        FakeDomain {
            state: DomainState::ShutOff,
            live_xml: "<domain><name>other</name><devices></devices></domain>".into(),
            inactive_xml: "<domain><name>other</name><devices><disk type='file'><source file='/srv/store/b.raw'/><target dev='vda'/></disk></devices></domain>".into(),
            disks: HashMap::new(),
        },
    );
    fake.add_host(DST, h2);
    journal
        .record_created(run_id, DST, "/srv/store/b.raw", MIB64)
        .unwrap();
    let done = recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    assert_eq!(
        done[0].recovery.steps[0],
        recover::Action::Keep {
            host: DST.into(),
            path: "/srv/store/b.raw".into(),
            why: "domain other uses it".into()
        }
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
}

/// A volume the journal places on a host other than the run's target (a damaged or foreign
/// row) is never deleted there: a run creates only on its target.
#[test]
fn recover_deletes_only_on_the_runs_target() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    let mut h1 = fake.host_snapshot(SRC);
    h1.paths
        .insert("/srv/store/x.raw".into(), file(MIB64, "raw"));
    fake.add_host(SRC, h1);
    journal
        .record_created(run_id, SRC, "/srv/store/x.raw", MIB64)
        .unwrap();
    let done = recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    assert!(
        matches!(&done[0].recovery.steps[0], recover::Action::Delete { host, .. } if host == SRC),
        "{:?}",
        done[0].recovery.steps
    );
    assert_eq!(done[0].failed.len(), 1, "{:?}", done[0].failed);
    assert_eq!(done[0].failed[0].0, 0);
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert!(fake
        .host_snapshot(SRC)
        .paths
        .contains_key("/srv/store/x.raw"));
    assert_eq!(journal.leftovers().unwrap().len(), 1, "still journaled");
}

#[test]
fn recover_deletes_journaled_leftovers_but_never_what_a_domain_uses_and_dry_run_says_the_same() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths
        .insert("/srv/store/a.raw".into(), file(MIB64, "raw"));
    h2.paths
        .insert("/srv/store/b.raw".into(), file(MIB64, "raw"));
    h2.domains.insert(
        "other".into(),
        FakeDomain {
            state: DomainState::ShutOff,
            live_xml: "<domain><name>other</name><devices><disk type='file'><source file='/srv/store/b.raw'/><target dev='vda'/></disk></devices></domain>".into(),
            inactive_xml: String::new(),
            disks: HashMap::new(),
        },
    );
    fake.add_host(DST, h2);
    journal
        .record_created(run_id, DST, "/srv/store/a.raw", MIB64)
        .unwrap();
    journal
        .record_created(run_id, DST, "/srv/store/b.raw", MIB64)
        .unwrap();
    let hv = hv(&fake);

    let dry = recover::run(&hv, &journal, None, true, ANSWER).unwrap();
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0].recovery.location, GuestLocation::Source);
    assert!(
        mutating(&fake.calls()).is_empty(),
        "a dry run changes nothing"
    );
    assert_eq!(journal.runs(1).unwrap()[0].outcome, None);

    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    // Exactly what the dry run said.
    assert_eq!(done[0].recovery.steps, dry[0].recovery.steps);
    assert!(done[0].failed.is_empty(), "{:?}", done[0].failed);
    assert_eq!(
        done[0].recovery.steps,
        vec![
            recover::Action::Delete {
                host: DST.into(),
                path: "/srv/store/a.raw".into(),
                by: provision::Provider::Libvirt
            },
            recover::Action::Keep {
                host: DST.into(),
                path: "/srv/store/b.raw".into(),
                why: "domain other uses it".into()
            },
            recover::Action::Finish {
                outcome: RunOutcome::RolledBack,
                message: format!("recovered: g runs on {SRC}")
            },
        ]
    );
    let h2 = fake.host_snapshot(DST);
    assert!(!h2.paths.contains_key("/srv/store/a.raw"));
    assert!(h2.paths.contains_key("/srv/store/b.raw"));
    assert_eq!(journal.leftovers().unwrap().len(), 1);
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::RolledBack)
    );
    // Idempotent: again, b.raw is still kept and nothing else happens.
    let before = mutating(&fake.calls()).len();
    let again = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    assert!(
        matches!(again[0].recovery.steps[..], [recover::Action::Keep { .. }]),
        "{again:?}"
    );
    assert_eq!(mutating(&fake.calls()).len(), before);
}

/// A plan's JSON as the journal keeps it, for the disks of `xml`.
fn plan_json(xml: &str) -> String {
    let dom = ferry_core::domain::parse(xml).unwrap();
    let disks: Vec<serde_json::Value> = dom
        .disks
        .iter()
        .map(|d| {
            serde_json::json!({"target": d.target, "decision": "shared", "source_type": d.disk_type,
                "dest_type": d.disk_type, "dest_source": d.source})
        })
        .collect();
    serde_json::json!({"domain": "g", "dest_uri": DST, "disks": disks}).to_string()
}

/// The guest ran to the target without Ferry (p2p), its vdb on `landed`; the run had planned
/// vdb onto a device it created.
fn recover_after_p2p(landed: &str) -> (Arc<Fake>, Journal, Vec<recover::Recovered>) {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let planned = GUEST_XML
        .replace(
            "/mnt/nfs/test_img.img",
            "/mnt/nfs_second_mount/test_img.img",
        )
        .replace("/dev/nvme2n2", "/dev/nvme1n5");
    let run_id = journal
        .begin_run("g", SRC, DST, &plan_json(&planned))
        .unwrap();
    journal
        .record_created(run_id, DST, "/dev/nvme1n5", MIB64)
        .unwrap();
    let mut h1 = fake.host_snapshot(SRC);
    let mut g = h1.domains.remove("g").unwrap();
    // The source kept an inactive definition.
    h1.domains.insert(
        "g".into(),
        FakeDomain {
            state: DomainState::ShutOff,
            ..g.clone()
        },
    );
    fake.add_host(SRC, h1);
    let mut h2 = fake.host_snapshot(DST);
    g.live_xml = planned.replace("/dev/nvme1n5", landed);
    h2.domains.insert("g".into(), g);
    fake.add_host(DST, h2);
    let done = recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    (fake, journal, done)
}

#[test]
fn recover_says_when_the_guest_on_the_target_is_not_on_its_planned_disks() {
    let (_, journal, _) = recover_after_p2p("/dev/nvme1n6");
    let row = &journal.runs(1).unwrap()[0];
    assert_eq!(row.outcome, Some(RunOutcome::MigratedUnverified));
    assert!(
        row.message
            .as_deref()
            .unwrap()
            .ends_with("but verify: disk vdb is not at its planned source"),
        "{row:?}"
    );
}

#[test]
fn recover_completes_a_run_whose_guest_ended_on_the_target() {
    let (fake, journal, done) = recover_after_p2p("/dev/nvme1n5");
    let d = &done[0].recovery;
    assert_eq!(d.location, GuestLocation::Target);
    assert!(done[0].failed.is_empty(), "{:?}", done[0].failed);
    assert_eq!(
        d.steps[0],
        recover::Action::UndefineSource { host: SRC.into() }
    );
    assert!(matches!(&d.steps[1], recover::Action::Keep { path, .. } if path == "/dev/nvme1n5"));
    let row = &journal.runs(1).unwrap()[0];
    assert_eq!(row.outcome, Some(RunOutcome::Migrated));
    assert!(
        row.message
            .as_deref()
            .unwrap()
            .contains("disk source(s) as planned"),
        "{row:?}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert!(!fake.host_snapshot(SRC).domains.contains_key("g"));
}

/// An unfinished run of g (h1 → h2) that created h2's /srv/store/vdb.raw, which is there.
fn vdb_left_on_h2() -> (Arc<Fake>, Journal, RunId) {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    journal
        .record_created(run_id, DST, "/srv/store/vdb.raw", MIB64)
        .unwrap();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths
        .insert("/srv/store/vdb.raw".into(), file(MIB64, "raw"));
    fake.add_host(DST, h2);
    (fake, journal, run_id)
}

#[test]
fn recover_aborts_a_job_left_running_then_rolls_back() {
    let (fake, journal, _) = vdb_left_on_h2();
    // One sample: a job runs when recover first looks, none after the abort.
    fake.set_job_script(vec![JobStats::default()], None);
    let hv = hv(&fake);
    let dry = recover::run(&hv, &journal, None, true, ANSWER).unwrap();
    assert_eq!(
        dry[0].recovery.steps,
        vec![recover::Action::AbortJob { host: SRC.into() }]
    );
    // The job takes a few polls to end after the abort: recover waits for it.
    fake.set_job_script(vec![JobStats::default(); 3], None);
    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    let steps = &done[0].recovery.steps;
    assert_eq!(steps[0], recover::Action::AbortJob { host: SRC.into() });
    assert!(steps.contains(&recover::Action::Delete {
        host: DST.into(),
        path: "/srv/store/vdb.raw".into(),
        by: provision::Provider::Libvirt
    }));
    assert!(fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::AbortJob { .. })));
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::RolledBack)
    );
}

#[test]
fn recover_takes_over_the_lock_of_a_dead_ferry_and_gives_it_back() {
    let (fake, journal, run_id) = vdb_left_on_h2();
    // Held on this machine by a pid that is no Ferry (this test process is not named ferry).
    let me = crate::this_machine();
    journal
        .lock_guest("g", run_id, &owner(std::process::id(), &me, LONG), |_| true)
        .unwrap();
    let hv = hv(&fake);
    let dry = recover::run(&hv, &journal, None, true, ANSWER).unwrap();
    assert!(
        matches!(dry[0].recovery.steps[0], recover::Action::Delete { .. }),
        "{dry:?}"
    );
    assert_eq!(
        journal.holder("g").unwrap().map(|h| h.pid),
        Some(std::process::id()),
        "a dry run leaves the lock as it is"
    );
    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    assert!(done[0].failed.is_empty(), "{done:?}");
    assert!(fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert_eq!(journal.holder("g").unwrap(), None, "the lock is given back");
}

#[test]
fn recover_leaves_a_run_whose_ferry_still_holds_the_lock() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    journal
        .record_created(run_id, DST, "/srv/store/vdb.raw", MIB64)
        .unwrap();
    // Held from another machine: its process cannot be seen, so it counts as alive.
    journal
        .lock_guest("g", run_id, &owner(4242, "another-machine", LONG), |_| true)
        .unwrap();
    let hv = hv(&fake);
    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    assert!(
        matches!(&done[0].recovery.steps[..], [recover::Action::Leave { why }] if why.contains("ferry pid 4242 on another-machine")),
        "{done:?}"
    );
    assert!(mutating(&fake.calls()).is_empty());
    assert_eq!(journal.runs(1).unwrap()[0].outcome, None);
}

/// The flow's rollback after run `run` created h2's /srv/store/vdb.raw and failed.
fn vdb_copy_failed(
    hv: &Arc<dyn Hypervisor>,
    journal: &Journal,
    run: RunId,
    inv: &inventory::GuestOnHosts,
) -> MigrateError {
    let created = [prepare::CreatedVolume {
        path: "/srv/store/vdb.raw".into(),
        capacity: MIB64,
        provider: provision::Provider::Libvirt,
    }];
    let mut events = vec![];
    let mut ctx = flow::Ctx {
        hv,
        journal,
        run,
        inv,
        reporter: &mut events,
    };
    rollback::after_failure(
        &mut ctx,
        &created,
        Cause::NoPath { disk: "vdb".into() },
        false,
    )
}

/// A lease that holds for the whole test.
const LONG: std::time::Duration = std::time::Duration::from_secs(600);

/// A Ferry process `pid` on `machine`, taking leases of `lease`.
fn owner(pid: u32, machine: &str, lease: std::time::Duration) -> ferry_journal::Owner {
    ferry_journal::Owner {
        instance: format!("{machine}-{pid}"),
        machine: machine.into(),
        pid,
        lease,
    }
}

/// A Ferry on another machine whose lease expired (it died, or lost the journal): `recover`
/// takes its lock over, says so, and finishes the run.
#[test]
fn recover_takes_over_an_expired_lease_from_another_machine_and_says_so() {
    let (fake, journal, run_id) = vdb_left_on_h2();
    // A lease of 0 ms: expired as soon as it is taken.
    journal
        .lock_guest(
            "g",
            run_id,
            &owner(4242, "another-machine", std::time::Duration::ZERO),
            |_| true,
        )
        .unwrap();
    let hv = hv(&fake);
    // A dry run says it would take the lock over, and leaves it.
    let dry = recover::run(&hv, &journal, None, true, ANSWER).unwrap();
    let before = journal.holder("g").unwrap().map(|h| h.pid);
    assert_eq!(before, Some(4242));
    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    assert!(done[0].failed.is_empty(), "{done:?}");
    assert_eq!(
        dry[0].took_over, done[0].took_over,
        "the dry run says the same step"
    );
    let said = done[0].took_over.as_deref().unwrap_or_default();
    assert!(
        said.contains(&format!("run #{}", run_id.0)) && said.contains("another-machine"),
        "{said}"
    );
    assert!(fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::RolledBack)
    );
    assert_eq!(journal.holder("g").unwrap(), None, "the lock is given back");
}

/// Fencing: a Ferry whose lock another Ferry took over (its lease expired while it was
/// stopped) finds out at its next renewal, and its rollback then touches nothing: no volume
/// deleted, no outcome written, the taker's lock left alone.
#[test]
fn a_ferry_that_lost_its_lease_rolls_nothing_back() {
    let fake = lab();
    let hv = hv(&fake);
    let req = request("vdb=/srv/store/vdb.raw");
    let inv = inventory::read(hv.as_ref(), &req).unwrap();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths
        .insert("/srv/store/vdb.raw".into(), file(MIB64, "raw"));
    fake.add_host(DST, h2);
    let journal = Journal::in_memory().unwrap();
    let run = journal.begin_run("g", SRC, DST, "{}").unwrap();
    journal
        .record_created(run, DST, "/srv/store/vdb.raw", MIB64)
        .unwrap();
    let me = owner(std::process::id(), "this-test", std::time::Duration::ZERO);
    let mine = journal.lock_guest("g", run, &me, |_| true).unwrap();
    crate::lease::watch(&journal, run, "g", mine.token);
    // Another journal's lock of the same run number and guest, watched too: none of its
    // business what happens in the first.
    let elsewhere = Journal::in_memory().unwrap();
    let run2 = elsewhere.begin_run("g", SRC, DST, "{}").unwrap();
    assert_eq!(run2, run);
    let other = elsewhere.lock_guest("g", run2, &me, |_| true).unwrap();
    crate::lease::watch(&elsewhere, run2, "g", other.token);
    // Still ours: a renewal finds nothing lost.
    crate::lease::renew_once(&journal, &me).unwrap();
    assert_eq!(crate::lease::lost(&journal, run), None);
    // Another Ferry takes the expired lease over.
    let taker = owner(77, "other", LONG);
    let theirs = journal.lock_guest("g", run, &taker, |_| true).unwrap();
    crate::lease::renew_once(&journal, &me).unwrap();
    let lost = crate::lease::lost(&journal, run).expect("the keeper saw the lease taken");
    assert_eq!(lost.by.as_ref().map(|h| h.pid), Some(77));
    // Only in that journal: the other's lock of run #1 is still held, and not looked at.
    assert_eq!(crate::lease::lost(&elsewhere, run2), None);
    assert!(elsewhere.holds("g", other.token).unwrap());
    let e = vdb_copy_failed(&hv, &journal, run, &inv);
    assert!(
        matches!(e, MigrateError::LeaseLost { run: r, .. } if r == run),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!(
            "run #{} (instance other-77, ferry pid 77 on other)",
            run.0
        )),
        "{e}"
    );
    assert!(mutating(&fake.calls()).is_empty(), "{:?}", fake.calls());
    assert_eq!(journal.runs(1).unwrap()[0].outcome, None);
    assert_eq!(journal.leftovers().unwrap().len(), 1);
    // Its lock given back by the loser: the taker's stays, and the loss is forgotten.
    crate::lease::forget(mine.token);
    journal.unlock_guest("g", mine.token).unwrap();
    assert!(journal.holds("g", theirs.token).unwrap());
    assert_eq!(crate::lease::lost(&journal, run), None);
    crate::lease::forget(other.token);
}

/// `ferry abort` asks only a run some live Ferry drives: a live lease on another machine
/// does; an expired one, or a lock held for another run of the guest, does not.
#[test]
fn abort_asks_only_a_run_whose_lease_stands() {
    use crate::abort::{request, AbortError, Which};
    let journal = Journal::in_memory().unwrap();
    let live = journal.begin_run("a", SRC, DST, "{}").unwrap();
    journal
        .lock_guest("a", live, &owner(5, "another-machine", LONG), |_| true)
        .unwrap();
    assert_eq!(request(&journal, &Which::Run(live)).unwrap().id, live);
    let expired = journal.begin_run("b", SRC, DST, "{}").unwrap();
    journal
        .lock_guest(
            "b",
            expired,
            &owner(6, "another-machine", std::time::Duration::ZERO),
            |_| true,
        )
        .unwrap();
    assert!(matches!(
        request(&journal, &Which::Run(expired)),
        Err(AbortError::Orphaned { .. })
    ));
    // Guest a's lock is run `live`'s: another run of a is driven by nobody.
    let another = journal.begin_run("a", SRC, DST, "{}").unwrap();
    assert!(matches!(
        request(&journal, &Which::Run(another)),
        Err(AbortError::Orphaned { .. })
    ));
}

/// A host whose evacuating Ferry's lease expired (on any machine) is draining no more, and
/// its evacuation counts as cut short.
#[test]
fn an_evacuation_whose_lease_expired_no_longer_drains_its_host() {
    let j = Journal::in_memory().unwrap();
    j.begin_evacuation(
        "h2",
        DST,
        &owner(7, "another-machine", std::time::Duration::ZERO),
    )
    .unwrap();
    j.begin_evacuation("h3", H3, &owner(8, "another-machine", LONG))
        .unwrap();
    let d = evacuate::draining(&j, |_| true).unwrap();
    assert_eq!(d, vec![("h3".to_string(), H3.to_string())]);
    let cut = evacuate::interrupted(&j, |_| true).unwrap();
    assert_eq!(
        cut.iter().map(|e| e.host.as_str()).collect::<Vec<_>>(),
        ["h2"]
    );
}

fn dir_pool(name: &str, path: &str) -> ferry_core::facts::PoolFacts {
    ferry_core::facts::PoolFacts {
        name: name.into(),
        kind: ferry_core::facts::PoolKind::Dir,
        path: Some(path.into()),
        source: ferry_core::facts::PoolSource::Directory,
        active: true,
        capacity: 2 << 30,
        available: 1 << 30,
    }
}

/// The seed's hosts with pools, a third host h3 that does not see the share, and h2's share
/// and h1's one directory declared one storage (what a canary will find).
fn pooled_lab() -> Arc<Fake> {
    let fake = lab();
    let mut h1 = fake.host_snapshot(SRC);
    h1.pools = vec![dir_pool("shared-a", "/mnt/nfs"), dir_pool("nvme-a", "/dev")];
    h1.dirs.insert("/dev".into(), 0);
    fake.add_host(SRC, h1);
    let mut h2 = fake.host_snapshot(DST);
    h2.pools = vec![
        dir_pool("shared-b", "/mnt/nfs_second_mount"),
        dir_pool("store-b", "/srv/store"),
    ];
    fake.add_host(DST, h2);
    fake.add_host(
        H3,
        FakeHost {
            hostname: "h3".into(),
            uuid: "u3".into(),
            dirs: HashMap::from([("/srv/store".to_string(), 1 << 30)]),
            pools: vec![dir_pool("store-c", "/srv/store")],
            ..Default::default()
        },
    );
    fake.same_storage(&[(SRC, "/mnt/nfs"), (DST, "/mnt/nfs_second_mount")]);
    fake
}

const H3: &str = "qemu+tcp://h3/system";

/// Another instance's live run towards h2 (in the journal, its job not started yet) costs h2
/// score in this migration's ranking; once its lease expired it no longer does.
#[test]
fn another_instances_migration_towards_a_host_weighs_on_its_rank() {
    let fake = pooled_lab();
    let journal = Journal::in_memory().unwrap();
    let score = |journal: &Journal| {
        let ask = Ask {
            dry_run: true,
            ..explicit_ask("g", Rules::default(), MigrationOptions::default())
        };
        let mut events = vec![];
        let r = crate::migrate(
            &hv(&fake),
            journal,
            &ask,
            &mut events,
            &AtomicBool::new(false),
        );
        assert!(matches!(r, Ok(Outcome::DryRun { .. })), "{r:?}");
        events
            .iter()
            .find_map(|e| match e {
                Event::Target(r) => Some(r.hosts[0].score),
                _ => None,
            })
            .expect("the ranking is reported")
    };
    let idle = score(&journal);
    let other = journal.begin_run("other", H3, DST, "{}").unwrap();
    journal
        .lock_guest("other", other, &owner(9, "another-machine", LONG), |_| true)
        .unwrap();
    assert_eq!(score(&journal), idle - 15);
    // Its lease expired: it weighs no more.
    let gone = journal.begin_run("gone", H3, DST, "{}").unwrap();
    journal
        .lock_guest(
            "gone",
            gone,
            &owner(10, "another-machine", std::time::Duration::ZERO),
            |_| true,
        )
        .unwrap();
    assert_eq!(score(&journal), idle - 15);
}

#[test]
fn selection_derives_every_rule_ranks_hosts_and_leaves_no_canary() {
    use crate::target::{select, HostSpec, SelectRequest};
    let fake = pooled_lab();
    let hv: Arc<dyn Hypervisor> = fake.clone();
    let sel = select(
        &hv,
        &SelectRequest {
            guest: "g".into(),
            source: HostSpec::uri(SRC),
            candidates: vec![HostSpec::uri(H3), HostSpec::uri(DST)],
            rules: Rules::default(),
            inventory: None,
            answer_deadline: crate::target::ANSWER_DEADLINE,
            explicit: false,
        },
    )
    .unwrap();
    assert_eq!(sel.ranking.target.as_deref(), Some(DST));
    let h3 = sel.ranking.hosts.iter().find(|v| v.name == H3).unwrap();
    assert!(!h3.eligible);
    assert_eq!(
        h3.reasons[0].code,
        ferry_core::placement::Code::SharedStore,
        "{:?}",
        h3.reasons
    );
    assert!(
        h3.reasons[0].message.contains("disk vda"),
        "{:?}",
        h3.reasons
    );
    let (spec, derived) = sel.chosen.unwrap();
    assert_eq!(spec.uri, DST);
    assert_eq!(derived.rules.map[0].from, "/mnt/nfs");
    assert_eq!(derived.rules.map[0].to, "/mnt/nfs_second_mount");
    assert_eq!(
        derived.rules.copy[0].to.as_deref(),
        Some("/srv/store/g-vdb.img")
    );
    // Every canary created was deleted; nothing else was created or migrated.
    let calls = fake.calls();
    let created = calls
        .iter()
        .filter(|c| matches!(c, Call::CanaryCreate { .. }))
        .count();
    let deleted = calls
        .iter()
        .filter(|c| matches!(c, Call::CanaryDelete { .. }))
        .count();
    assert!(created > 0);
    assert_eq!(created, deleted, "{calls:?}");
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::CreateVolume { .. } | Call::Migrate { .. })));
    // The derived rules drive the flow to a verified migration.
    let mut req = request("vdb");
    req.rules = derived.rules;
    let (r, _, _) = go(&fake, &req);
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
}

#[test]
fn selection_refuses_an_unknown_disk_and_a_copy_onto_the_shared_disk() {
    use crate::target::{select, HostSpec, SelectRequest};
    let fake = pooled_lab();
    let sel = |rules: Rules| {
        let hv: Arc<dyn Hypervisor> = fake.clone();
        select(
            &hv,
            &SelectRequest {
                guest: "g".into(),
                source: HostSpec::uri(SRC),
                candidates: vec![HostSpec::uri(DST)],
                rules,
                inventory: None,
                answer_deadline: crate::target::ANSWER_DEADLINE,
                explicit: false,
            },
        )
    };
    let unknown = Rules {
        copy: vec!["vdz=/srv/store/z.img".parse().unwrap()],
        ..Default::default()
    };
    let Err(MigrateError::Plan { source, .. }) = sel(unknown) else {
        panic!("an unknown disk was not refused")
    };
    assert!(matches!(
        *source,
        ferry_core::PlanError::CopyUnknownDisk { .. }
    ));
    let onto_itself = Rules {
        copy: vec!["vda=/mnt/nfs_second_mount/test_img.img".parse().unwrap()],
        ..Default::default()
    };
    let s = sel(onto_itself).unwrap();
    assert_eq!(s.ranking.target, None);
    assert_eq!(
        s.ranking.hosts[0].reasons[0].code,
        ferry_core::placement::Code::CopyOntoSource
    );
}

/// A hook (a real process) that hands out h2's /dev/nvme1n5 and logs every request it gets.
fn logging_hook(log: &std::path::Path) -> ferry_core::storage::HookCopy {
    ferry_core::storage::HookCopy {
        disk: "vdb".into(),
        bytes: MIB64,
        hook: ferry_core::inventory::Hook {
            name: "ns".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "read -r req; echo \"$req\" >> {}; case \"$req\" in \
                     *create*) echo '{{\"path\": \"/dev/nvme1n5\"}}' ;; esac",
                    log.display()
                ),
            ],
            timeout_s: 10,
        },
        evidence: "test".into(),
    }
}

#[test]
fn a_hook_volume_is_made_before_the_plan_journaled_and_given_back_by_the_hook_on_failure() {
    let log = std::env::temp_dir().join(format!("ferry-hook-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let fake = lab();
    fake.set_outcome(MigrateOutcome::FailOnSource("target QEMU died".into()));
    let mut req = request("vdb");
    req.rules.copy.clear();
    req.provision = vec![logging_hook(&log)];
    let (r, events, journal) = go(&fake, &req);
    let Err(MigrateError::Failed {
        location, cleanup, ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(location, GuestLocation::Source);
    let said = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(lines[0].contains("\"action\":\"create\"") && lines[0].contains("\"bytes\":67108864"));
    assert!(lines[0].contains("\"host\":\"h2\"") && lines[0].contains("\"disk\":\"vdb\""));
    assert!(lines[1].contains("\"action\":\"delete\"") && lines[1].contains("/dev/nvme1n5"));
    assert!(
        cleanup.iter().any(|c| *c
            == rollback::Cleanup::Deleted {
                host: DST.into(),
                path: "/dev/nvme1n5".into()
            }),
        "{cleanup:?}"
    );
    // Given back by the hook, never through libvirt; the migration used the hook's device.
    let calls = fake.calls();
    assert!(
        !calls.iter().any(|c| matches!(c, Call::DeleteVolume { .. })),
        "{calls:?}"
    );
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::Migrate { migrate_disks, .. } if migrate_disks == &["vdb"])));
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message } if message.contains("hook ns created /dev/nvme1n5"))
    ));
    assert!(journal.leftovers().unwrap().is_empty());
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_dry_run_never_calls_the_hook() {
    let log = std::env::temp_dir().join(format!("ferry-hook-dry-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let fake = lab();
    let mut req = request("vdb");
    req.rules.copy.clear();
    req.provision = vec![logging_hook(&log)];
    req.dry_run = true;
    let (r, _, _) = go(&fake, &req);
    let Ok(Outcome::DryRun { plan, checks }) = r else {
        panic!("{r:?}")
    };
    assert!(!log.exists(), "the hook ran in a dry run");
    assert_eq!(plan.disks[1].dest_path(), Some("/dev/ferry-hook/ns/g-vdb"));
    assert!(
        checks
            .iter()
            .any(|c| c.contains("a hook creates its volume")),
        "{checks:?}"
    );
}

#[test]
fn recover_keeps_a_volume_whose_maker_it_cannot_read() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run_id = journal.begin_run("g", SRC, DST, "{}").unwrap();
    let mut h2 = fake.host_snapshot(DST);
    h2.paths.insert("/dev/nvme1n9".into(), block(MIB64));
    fake.add_host(DST, h2);
    journal
        .record_created_by(
            run_id,
            DST,
            "/dev/nvme1n9",
            MIB64,
            Some("{\"by\":\"future\"}"),
        )
        .unwrap();
    let hv = hv(&fake);
    let done = recover::run(&hv, &journal, None, false, ANSWER).unwrap();
    assert!(
        matches!(&done[0].recovery.steps[0], recover::Action::Keep { why, .. } if why.contains("cannot be read")),
        "{done:?}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
}

/// A memory phase that never shrinks: `n` samples, each 1 s of job time apart.
fn flat_memory(n: u64) -> Vec<JobStats> {
    (1..=n)
        .map(|i| JobStats {
            time_elapsed_ms: Some(i * 1000),
            mem_iteration: Some(i),
            mem_processed: Some(i << 20),
            mem_remaining: Some(50 << 20),
            mem_bps: Some(1 << 20),
            mem_dirty_rate: Some(512),
            mem_page_size: Some(4096),
            ..Default::default()
        })
        .collect()
}

#[test]
fn memory_that_will_not_converge_escalates_the_downtime_then_aborts_and_rolls_back() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    fake.set_job_script(flat_memory(6), None);
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.options.policy.stall_s = 3;
    req.options.policy.downtime_max_ms = 400;
    let (r, events, journal) = go(&fake, &req);
    let Err(MigrateError::Failed {
        cause, location, ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            **cause,
            Cause::Aborted {
                why: migrate::AbortReason::Stuck {
                    stuck: ferry_core::convergence::Stuck::MemoryStall { secs: 3, .. }
                },
                ..
            }
        ),
        "{cause:?}"
    );
    assert_eq!(*location, GuestLocation::Source);
    let calls = fake.calls();
    let downtimes: Vec<u64> = calls
        .iter()
        .filter_map(|c| match c {
            Call::SetMaxDowntime { ms, .. } => Some(*ms),
            _ => None,
        })
        .collect();
    // Start at 100 ms; passes 2 and 3 ended without a new low: 200, then the cap (400).
    assert_eq!(downtimes, vec![100, 200, 400]);
    assert!(calls.iter().any(|c| matches!(c, Call::AbortJob { .. })));
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::StartPostcopy { .. })));
    // The created copy target is gone again, and the journal says the truth.
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { path, .. } if path == "/srv/store/vdb.raw")));
    let runs = journal.runs(1).unwrap();
    assert_eq!(runs[0].outcome, Some(RunOutcome::RolledBack));
    // The forecast said so before the fallback came.
    assert!(events.iter().any(|e| matches!(e, Event::Job(p) if matches!(
        p.forecast,
        Some(ferry_core::convergence::Forecast::WillNotConverge { .. })
    ))));
}

#[test]
fn with_postcopy_allowed_a_stalled_memory_phase_switches_and_the_guest_lands() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    fake.set_job_script(flat_memory(6), None);
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.options.policy.stall_s = 3;
    req.options.policy.fallback = ferry_core::convergence::Fallback::Postcopy;
    let (r, _, _) = go(&fake, &req);
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let calls = fake.calls();
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::StartPostcopy { .. })));
    assert!(!calls.iter().any(|c| matches!(c, Call::AbortJob { .. })));
    // The migration was started able to switch.
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::Migrate { flags, .. } if flags.postcopy)));
}

#[test]
fn release_gives_the_sources_copy_back_only_through_a_store_that_hands_such_devices_out() {
    let fake = lab();
    let mut h1 = fake.host_snapshot(SRC);
    h1.pools.push(dir_pool("nvme-a", "/dev"));
    h1.paths.insert("/dev/nvme2n2".into(), block(MIB64));
    fake.add_host(SRC, h1);
    let (r, _, journal) = go(&fake, &request("vdb=/dev/nvme1n5"));
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let hv = hv(&fake);
    let run = ferry_journal::RunId(1);
    // No hook for h1: a device node in a dir pool is not "deleted" by unlinking it.
    let kept = release::run(&hv, &journal, run, None, false, ANSWER).unwrap();
    assert!(
        matches!(&kept[..], [(ferry_core::release::Release::Keep { why, .. }, None)] if why.contains("free it by hand")),
        "{kept:?}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    // With h1's hook: given back through it, journaled, and never twice.
    let dir = std::env::temp_dir().join(format!("ferry-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("hook.log");
    let hook = release::SourceHook {
        hook: logging_hook(&log).hook,
        host: "h1".into(),
    };
    // Another domain on h1 that uses the device: kept, the hook never asked.
    let mut h1 = fake.host_snapshot(SRC);
    h1.domains.insert(
        "other".into(),
        FakeDomain {
            state: DomainState::ShutOff,
            live_xml: "<domain><name>other</name><devices><disk type='block'><source dev='/dev/nvme2n2'/><target dev='vda'/></disk></devices></domain>".into(),
            inactive_xml: String::new(),
            disks: HashMap::new(),
        },
    );
    fake.add_host(SRC, h1.clone());
    let used = release::run(&hv, &journal, run, Some(&hook), false, ANSWER).unwrap();
    assert!(
        matches!(&used[..], [(ferry_core::release::Release::Keep { why, .. }, None)] if why == "domain other uses it"),
        "{used:?}"
    );
    assert!(!log.exists());
    h1.domains.remove("other");
    fake.add_host(SRC, h1);
    let dry = release::run(&hv, &journal, run, Some(&hook), true, ANSWER).unwrap();
    assert!(!log.exists(), "a dry run calls no hook");
    let done = release::run(&hv, &journal, run, Some(&hook), false, ANSWER).unwrap();
    assert_eq!(
        dry.iter().map(|d| &d.0).collect::<Vec<_>>(),
        done.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    assert!(
        matches!(&done[..], [(ferry_core::release::Release::Delete { path, .. }, None)] if path == "/dev/nvme2n2"),
        "{done:?}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains("\"delete\"") && calls.contains("/dev/nvme2n2") && calls.contains("\"h1\""),
        "{calls}"
    );
    let again = release::run(&hv, &journal, run, Some(&hook), false, ANSWER).unwrap();
    assert!(
        matches!(&again[..], [(ferry_core::release::Release::Keep { why, .. }, None)] if why == "already released"),
        "{again:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn release_refuses_a_run_that_did_not_migrate() {
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let run = journal.begin_run("g", SRC, DST, "{}").unwrap();
    journal.finish(run, RunOutcome::RolledBack, "x").unwrap();
    let e = release::run(&hv(&fake), &journal, run, None, false, ANSWER).unwrap_err();
    assert!(
        e.to_string()
            .contains("did not migrate (rolled_back): the source's copy is the guest's disk"),
        "{e}"
    );
}

#[test]
fn rollback_deletes_what_ferry_created_only_when_the_guest_is_on_the_source_alone() {
    use DomainState::{Paused, Running, ShutOff};
    // (guest on the source, on the target, target lost, source lost) -> where, deleted?
    let cases = [
        (
            Some(Running),
            None,
            false,
            false,
            GuestLocation::Source,
            true,
        ),
        (
            None,
            Some(Running),
            false,
            false,
            GuestLocation::Target,
            false,
        ),
        (
            Some(Running),
            Some(Paused),
            false,
            false,
            GuestLocation::Both,
            false,
        ),
        (
            Some(ShutOff),
            None,
            false,
            false,
            GuestLocation::Neither,
            false,
        ),
        (
            Some(Running),
            None,
            true,
            false,
            GuestLocation::Source,
            false,
        ),
        (
            Some(Running),
            None,
            false,
            true,
            GuestLocation::Unknown,
            false,
        ),
    ];
    for (on_src, on_dst, lost_dst, lost_src, want, deleted) in cases {
        let fake = lab();
        let hv = hv(&fake);
        let req = request("vdb=/srv/store/vdb.raw");
        let inv = inventory::read(hv.as_ref(), &req).unwrap();
        let mut h2 = fake.host_snapshot(DST);
        h2.paths
            .insert("/srv/store/vdb.raw".into(), file(MIB64, "raw"));
        let mut h1 = fake.host_snapshot(SRC);
        let g = h1.domains.remove("g").unwrap();
        if let Some(st) = on_src {
            h1.domains.insert(
                "g".into(),
                FakeDomain {
                    state: st,
                    ..g.clone()
                },
            );
        }
        if let Some(st) = on_dst {
            h2.domains.insert("g".into(), FakeDomain { state: st, ..g });
        }
        fake.add_host(SRC, h1);
        fake.add_host(DST, h2);
        if lost_dst {
            fake.lose_host(DST);
        }
        if lost_src {
            fake.lose_host(SRC);
        }
        let journal = Journal::in_memory().unwrap();
        let run = journal.begin_run("g", SRC, DST, "{}").unwrap();
        journal
            .record_created(run, DST, "/srv/store/vdb.raw", MIB64)
            .unwrap();
        let e = vdb_copy_failed(&hv, &journal, run, &inv);
        let MigrateError::Failed { location, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            location, want,
            "{on_src:?} {on_dst:?} {lost_dst} {lost_src}"
        );
        let gone = fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::DeleteVolume { .. }));
        assert_eq!(gone, deleted, "{want:?}");
        assert_eq!(
            journal.leftovers().unwrap().is_empty(),
            deleted,
            "the journal says what is left ({want:?})"
        );
        let outcome = journal.runs(1).unwrap()[0].outcome;
        assert_eq!(
            outcome,
            Some(if want == GuestLocation::Source {
                RunOutcome::RolledBack
            } else {
                RunOutcome::Failed
            })
        );
    }
}

/// Two volumes to create, the second fails: the first, already made, is deleted — prepare
/// hands back what it made, not nothing.
#[test]
fn a_second_creation_that_fails_rolls_back_the_first() {
    let fake = lab();
    fake.fail_creating("/srv/store/vdb.raw");
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.rules.map.clear();
    req.rules
        .copy
        .insert(0, "vda=/srv/store/vda.qcow2".parse().unwrap());
    let (r, _, journal) = go(&fake, &req);
    let Err(MigrateError::Failed {
        location, cause, ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::Source);
    assert!(matches!(**cause, Cause::Host(_)), "{cause:?}");
    let created: Vec<String> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::CreateVolume { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(created, ["/srv/store/vda.qcow2", "/srv/store/vdb.raw"]);
    let deleted: Vec<String> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::DeleteVolume { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["/srv/store/vda.qcow2"]);
    assert!(journal.leftovers().unwrap().is_empty());
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Migrate { .. })));
}

#[test]
fn verify_fails_when_the_guest_still_runs_on_the_source() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::SuccessButSourceStays);
    let (r, _, journal) = go(&fake, &request("vdb=/dev/nvme1n5"));
    let Err(MigrateError::VerifyFailed { problems, summary }) = r else {
        panic!("{r:?}")
    };
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, verify::VerifyProblem::StillOnSource { host, .. } if host == SRC)),
        "{problems:?}"
    );
    assert!(summary.verified.iter().any(|v| v.contains("is running on")));
    let row = &journal.runs(1).unwrap()[0];
    assert_eq!(row.outcome, Some(RunOutcome::MigratedUnverified));
    // A run whose verification failed never releases the source's copy.
    let before = mutating(&fake.calls()).len();
    let e = release::run(&hv(&fake), &journal, row.id, None, false, ANSWER).unwrap_err();
    assert!(
        matches!(e, release::ReleaseError::Unverified { run, .. } if run == row.id),
        "{e}"
    );
    assert_eq!(mutating(&fake.calls()).len(), before, "nothing deleted");
}

/// A failed post-copy leaves each side part of the guest: seen from either side, it is the
/// split, never "on the source" (whose rollback would delete the target's half).
#[test]
fn a_post_copy_split_is_seen_from_either_side() {
    use DomainState::{Paused, PostcopyFailed, Running};
    for (on_src, on_dst) in [(PostcopyFailed, Running), (Paused, PostcopyFailed)] {
        let fake = lab();
        let hv = hv(&fake);
        let inv = inventory::read(hv.as_ref(), &request("vdb=/dev/nvme1n5")).unwrap();
        let (mut h1, mut h2) = (fake.host_snapshot(SRC), fake.host_snapshot(DST));
        let g = h1.domains["g"].clone();
        h1.domains.insert(
            "g".into(),
            FakeDomain {
                state: on_src,
                ..g.clone()
            },
        );
        h2.domains
            .insert("g".into(), FakeDomain { state: on_dst, ..g });
        fake.add_host(SRC, h1);
        fake.add_host(DST, h2);
        assert_eq!(
            rollback::locate(hv.as_ref(), &inv),
            GuestLocation::PostcopySplit,
            "{on_src:?} {on_dst:?}"
        );
    }
}

/// The guest placed on the fake's hosts as given, and what verification says of `plan`.
struct VerifyCase<'a> {
    on_src: Option<DomainState>,
    on_dst: DomainState,
    live: &'a dyn Fn(&str) -> String,
    persistent: &'a dyn Fn(&str) -> String,
    lose: Option<&'a str>,
}

fn verify_case(plan: &ferry_core::Plan, c: VerifyCase) -> verify::Verified {
    let fake = lab();
    let hv = hv(&fake);
    let req = request("vdb=/dev/nvme1n5");
    let inv = inventory::read(hv.as_ref(), &req).unwrap();
    let guest = fake.host_snapshot(SRC).domains["g"].clone();
    let (mut h1, mut h2) = (fake.host_snapshot(SRC), fake.host_snapshot(DST));
    h1.domains.remove("g");
    if let Some(state) = c.on_src {
        h1.domains.insert(
            "g".into(),
            FakeDomain {
                state,
                ..guest.clone()
            },
        );
    }
    h2.domains.insert(
        "g".into(),
        FakeDomain {
            state: c.on_dst,
            live_xml: (c.live)(&plan.dest_xml),
            inactive_xml: (c.persistent)(plan.persist_xml.as_deref().unwrap()),
            ..guest
        },
    );
    fake.add_host(SRC, h1);
    fake.add_host(DST, h2);
    if let Some(uri) = c.lose {
        fake.lose_host(uri);
    }
    verify::check(hv.as_ref(), &inv, plan)
}

fn seed_plan() -> ferry_core::Plan {
    let fake = lab();
    let req = request("vdb=/dev/nvme1n5");
    let inv = inventory::read(hv(&fake).as_ref(), &req).unwrap();
    ferry_core::plan(
        &inv.live_xml,
        inv.inactive_xml.as_deref(),
        DST,
        &req.rules,
        &req.options,
    )
    .unwrap()
}

#[test]
fn verify_judges_each_host_and_each_disk() {
    use verify::{Definition, VerifyProblem as P};
    use DomainState::{Paused, Running, ShutOff};
    let plan = seed_plan();
    let same = |x: &str| x.to_string();
    let other_vdb = |x: &str| x.replace("/dev/nvme1n5", "/dev/nvme1n6");
    let no_vdb = |x: &str| {
        let start = x.find("<disk type='block'").unwrap();
        let end = start + x[start..].find("</disk>").unwrap() + "</disk>".len();
        format!("{}{}", &x[..start], &x[end..])
    };
    let case =
        |on_src, on_dst, live: &dyn Fn(&str) -> String, persistent: &dyn Fn(&str) -> String| {
            verify_case(
                &plan,
                VerifyCase {
                    on_src,
                    on_dst,
                    live,
                    persistent,
                    lose: None,
                },
            )
            .problems
        };
    let wrong = |which| P::WrongSource {
        which,
        disk: "vdb".into(),
        got: "/dev/nvme1n6".into(),
        want: "/dev/nvme1n5".into(),
    };
    // Where the guest runs.
    assert_eq!(case(None, Running, &same, &same), vec![]);
    assert_eq!(case(Some(ShutOff), Paused, &same, &same), vec![]);
    assert_eq!(
        case(Some(Running), Running, &same, &same),
        vec![P::StillOnSource {
            guest: "g".into(),
            host: SRC.into(),
            state: "Running".into()
        }]
    );
    assert_eq!(
        case(None, ShutOff, &same, &same),
        vec![P::NotOnTarget {
            guest: "g".into(),
            host: DST.into(),
            state: "Some(ShutOff)".into()
        }]
    );
    // Each disk, in each definition: a wrong source, a missing disk, only the persistent one.
    assert_eq!(
        case(None, Running, &other_vdb, &other_vdb),
        vec![wrong(Definition::Live), wrong(Definition::Persistent)]
    );
    assert_eq!(
        case(None, Running, &same, &other_vdb),
        vec![wrong(Definition::Persistent)]
    );
    assert_eq!(
        case(None, Running, &no_vdb, &same),
        vec![P::DiskMissing {
            which: Definition::Live,
            disk: "vdb".into()
        }]
    );
}

#[test]
fn verify_wants_the_planned_slice_and_both_hosts_answers() {
    use verify::{Definition, VerifyProblem as P};
    let mut plan = seed_plan();
    plan.disks[1].dest_slice = Some(MIB64);
    let same = |x: &str| x.to_string();
    let sliced = |x: &str| {
        x.replace(
            "<source dev='/dev/nvme1n5'/>",
            "<source dev='/dev/nvme1n5'><slices><slice type='storage' offset='0' \
             size='67108864'/></slices></source>",
        )
    };
    let run = |live: &dyn Fn(&str) -> String, lose| {
        verify_case(
            &plan,
            VerifyCase {
                on_src: None,
                on_dst: DomainState::Running,
                live,
                persistent: live,
                lose,
            },
        )
        .problems
    };
    let no_slice = |which| P::NoSlice {
        which,
        disk: "vdb".into(),
        bytes: MIB64,
    };
    assert_eq!(
        run(&same, None),
        vec![no_slice(Definition::Live), no_slice(Definition::Persistent)]
    );
    assert_eq!(run(&sliced, None), vec![], "the slice is there");
    // A host that cannot be asked is a problem, never a pass.
    for lost in [SRC, DST] {
        let p = run(&same, Some(lost));
        assert!(
            p.iter()
                .any(|p| matches!(p, P::CannotAsk { host, .. } if host == lost)),
            "{lost}: {p:?}"
        );
    }
}

#[test]
fn preflight_asks_the_size_of_every_copied_disk_even_one_without_a_path() {
    let fake = lab();
    let hv = hv(&fake);
    let req = request("vdb=/dev/nvme1n5");
    let inv = inventory::read(hv.as_ref(), &req).unwrap();
    let dest = |disk: &str, decision, path: Option<&str>| ferry_core::plan::Destination {
        disk: disk.into(),
        decision,
        path: path.map(str::to_string),
        kind: ferry_core::DiskType::Volume,
        format: None,
    };
    let dests = [
        // A copy into a pool volume: no path, but its size is what the copy needs.
        dest("vdb", ferry_core::Decision::Copy, None),
        dest("vda", ferry_core::Decision::Shared, None),
    ];
    let f = preflight::gather(hv.as_ref(), &inv, &dests, Default::default(), false).unwrap();
    assert!(f.disk_sizes.contains_key("vdb"), "{:?}", f.disk_sizes);
    assert!(
        !f.disk_sizes.contains_key("vda"),
        "a shared disk without a path has nothing to compare"
    );
    assert_eq!(f.guest, "g");
    assert_eq!(f.source_uri, SRC);
}

fn postcopy_request() -> Request {
    let mut req = request("vdb=/srv/store/vdb.raw");
    req.options.policy.fallback = ferry_core::convergence::Fallback::Postcopy;
    req
}

fn migrate_calls(fake: &Fake) -> Vec<ferry_core::plan::Flags> {
    fake.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Migrate { flags, .. } => Some(flags),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_post_copy_is_resumed_and_the_run_ends_migrated() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::PostcopyFails { resumable: true });
    let (r, events, journal) = go(&fake, &postcopy_request());
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let calls = migrate_calls(&fake);
    assert_eq!(calls.len(), 2, "the migration, then its resume");
    assert!(calls[0].postcopy && !calls[0].postcopy_resume);
    assert!(calls[1].postcopy && calls[1].postcopy_resume);
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message } if message.contains("resuming it (POSTCOPY_RESUME)"))
    ));
    assert_eq!(
        fake.domain_state(HostId(1), "g").unwrap(),
        Some(DomainState::Running)
    );
    assert_eq!(fake.domain_state(HostId(0), "g").unwrap(), None);
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::Migrated)
    );
}

#[test]
fn a_post_copy_that_cannot_be_resumed_deletes_nothing_and_stays_open_for_recover() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::PostcopyFails { resumable: false });
    let (r, _, journal) = go(&fake, &postcopy_request());
    let Err(MigrateError::Failed {
        location, cleanup, ..
    }) = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::PostcopySplit);
    assert!(
        location.to_string().contains("destroy neither"),
        "{location}"
    );
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::DeleteVolume { .. })),
        "each side holds part of the guest: nothing may go"
    );
    let run = &journal.runs(1).unwrap()[0];
    assert!(
        cleanup.contains(&rollback::Cleanup::RunOpen { run: run.id }),
        "{cleanup:?}"
    );
    assert_eq!(
        (run.outcome, run.phase),
        (None, ferry_journal::RunPhase::PostcopyFailed)
    );
    // Once the link is sound again, recover resumes it with the run's own flags.
    fake.set_outcome(MigrateOutcome::PostcopyFails { resumable: true });
    let done = crate::recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    assert_eq!(done[0].recovery.location, GuestLocation::Target, "{done:?}");
    assert!(done[0].failed.is_empty(), "{done:?}");
    let calls = migrate_calls(&fake);
    assert!(calls.last().unwrap().postcopy_resume);
    assert_eq!(
        fake.domain_state(HostId(1), "g").unwrap(),
        Some(DomainState::Running)
    );
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::Migrated)
    );
}

/// h1 runs g and g2 (the seed's disks) and has g3 defined, shut off; h2 and h3 both see the
/// share and have a store: either can take either guest.
fn evacuation_lab() -> Arc<Fake> {
    let fake = lab();
    let mut h1 = fake.host_snapshot(SRC);
    h1.pools = vec![dir_pool("shared-a", "/mnt/nfs"), dir_pool("nvme-a", "/dev")];
    h1.dirs.insert("/dev".into(), 0);
    let g = h1.domains["g"].clone();
    for (name, state) in [("g2", DomainState::Running), ("g3", DomainState::ShutOff)] {
        let xml = GUEST_XML.replace("<name>g</name>", &format!("<name>{name}</name>"));
        h1.domains.insert(
            name.into(),
            FakeDomain {
                state,
                live_xml: xml.clone(),
                inactive_xml: xml,
                disks: g.disks.clone(),
            },
        );
    }
    fake.add_host(SRC, h1);
    let mut h2 = fake.host_snapshot(DST);
    h2.pools = vec![
        dir_pool("shared-b", "/mnt/nfs_second_mount"),
        dir_pool("store-b", "/srv/store"),
    ];
    fake.add_host(DST, h2.clone());
    h2.hostname = "h3".into();
    h2.uuid = "u3".into();
    fake.add_host(H3, h2);
    fake.same_storage(&[
        (SRC, "/mnt/nfs"),
        (DST, "/mnt/nfs_second_mount"),
        (H3, "/mnt/nfs_second_mount"),
    ]);
    fake
}

fn evacuate_ask() -> evacuate::EvacuateAsk {
    use crate::target::HostSpec;
    evacuate::EvacuateAsk {
        host: HostSpec::uri(SRC),
        candidates: vec![HostSpec::uri(DST), HostSpec::uri(H3)],
        inventory: None,
        options: MigrationOptions {
            unsafe_: true,
            ..Default::default()
        },
        policy: ferry_core::evacuate::Policy::Ferry,
        budgets: ferry_core::evacuate::Budgets::FERRY,
        link_mib: vec![],
        answer_deadline: crate::target::ANSWER_DEADLINE,
        abort_grace: std::time::Duration::from_secs(1),
        retry: true,
        offline: false,
    }
}

/// A journal file of this test process, removed when dropped: a run leaves nothing behind.
struct JournalFile(std::path::PathBuf);

impl std::ops::Deref for JournalFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        for side in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(side);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn journal_file(name: &str) -> JournalFile {
    let p = std::env::temp_dir().join(format!("ferry-evac-{}-{name}.db", std::process::id()));
    let _ = std::fs::remove_file(&p);
    JournalFile(p)
}

/// No target can be read: the plan says it leaves the guests, so a dry run can say the host
/// would not be emptied.
#[test]
fn an_evacuation_that_cannot_place_a_guest_does_not_empty_the_host() {
    let fake = evacuation_lab();
    fake.fail_connect(DST);
    fake.fail_connect(H3);
    let p = evacuate::plan(&hv(&fake), &evacuate_ask()).unwrap();
    let mut unplaced: Vec<&str> = p.unplaced.iter().map(|(g, _)| g.as_str()).collect();
    unplaced.sort();
    assert_eq!(unplaced, ["g", "g2"]);
    assert!(!p.empties_the_host());
    let placed = evacuate::plan(&hv(&evacuation_lab()), &evacuate_ask()).unwrap();
    assert!(placed.empties_the_host());
}

#[test]
fn evacuation_places_each_running_guest_once_and_lists_the_shut_off_one() {
    let fake = evacuation_lab();
    let p = evacuate::plan(&hv(&fake), &evacuate_ask()).unwrap();
    let mut guests: Vec<_> = p.moves.iter().map(|m| m.guest.as_str()).collect();
    guests.sort();
    assert_eq!(guests, ["g", "g2"], "{:?}", p.unplaced);
    assert_eq!(p.shut_off, ["g3"]);
    // Spread over both targets, each with the other as its fallback.
    let mut to: Vec<_> = p.moves.iter().map(|m| m.to).collect();
    to.sort();
    assert_eq!(to, [1, 2]);
    for m in &p.moves {
        assert_eq!(m.fallback, vec![3 - m.to]);
        assert_eq!(m.disk, MIB64, "vdb is copied");
    }
    assert!(!p.bandwidth_known);
    assert!(p.predicted.makespan_s >= p.bound_s);
    // Planning moved nothing.
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::CreateVolume { .. } | Call::Migrate { .. })));
    // Each host was read once for all the guests' rankings.
    for uri in [SRC, DST, H3] {
        let n = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Connect(u) if u == uri))
            .count();
        assert_eq!(n, 1, "{uri} connected {n} times");
    }
}

#[test]
fn evacuation_migrates_every_guest_and_journals_each_run() {
    let fake = evacuation_lab();
    let hv = hv(&fake);
    let ask = evacuate_ask();
    let p = evacuate::plan(&hv, &ask).unwrap();
    let path = journal_file("all");
    let j = Journal::open(&path).unwrap();
    let e = j
        .begin_evacuation("h1", SRC, &owner(std::process::id(), "m", LONG))
        .unwrap();
    let mut events = vec![];
    let stop = std::sync::atomic::AtomicU8::new(evacuate::GO);
    let r = evacuate::execute(&hv, &path, e, &ask, &p, &mut events, &stop);
    assert!(
        r.iter()
            .all(|g| g.outcome == evacuate::GuestOutcome::Migrated && g.attempts == 1),
        "{r:?}"
    );
    for g in ["g", "g2"] {
        assert_eq!(
            fake.host_snapshot(SRC).domains.get(g).map(|d| d.state),
            None,
            "{g} left h1"
        );
    }
    assert_eq!(j.evacuation_runs(e).unwrap().len(), 2);
    // Ferry's schedule on one link: the second starts only once the first is past sending.
    let started = events
        .iter()
        .filter(|e| matches!(e, evacuate::EvacEvent::Started { .. }))
        .count();
    assert_eq!(started, 2);
    let _ = std::fs::remove_file(&*path);
}

#[test]
fn a_failed_migration_is_retried_once_on_the_next_ranked_host() {
    let fake = evacuation_lab();
    fake.fail_migrations_to(DST);
    let hv = hv(&fake);
    let ask = evacuate_ask();
    let p = evacuate::plan(&hv, &ask).unwrap();
    let path = journal_file("retry");
    let stop = std::sync::atomic::AtomicU8::new(evacuate::GO);
    let r = evacuate::execute(&hv, &path, 1, &ask, &p, &mut vec![], &stop);
    // The guest placed on h2 failed there, stayed on h1, and went to h3.
    let first_h2 = p.moves.iter().find(|m| m.to == 1).unwrap();
    let g = r.iter().find(|g| g.guest == first_h2.guest).unwrap();
    assert_eq!(g.outcome, evacuate::GuestOutcome::Migrated, "{g:?}");
    assert_eq!((g.attempts, g.target.as_deref()), (2, Some(H3)));
    assert_eq!(g.runs.len(), 2);
    assert!(fake.host_snapshot(H3).domains.contains_key(&g.guest));
    // Retried once only: with both targets failing, the guest stays where it is.
    let fake = evacuation_lab();
    fake.fail_migrations_to(DST);
    fake.fail_migrations_to(H3);
    let hv2 = super::tests::hv(&fake);
    let r = evacuate::execute(
        &hv2,
        &journal_file("retry2"),
        1,
        &ask,
        &p,
        &mut vec![],
        &stop,
    );
    for g in &r {
        assert_eq!(g.outcome, evacuate::GuestOutcome::StayedOnSource, "{g:?}");
        assert_eq!(g.attempts, 2);
    }
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| matches!(c, Call::Migrate { .. }))
            .count(),
        4
    );
    assert!(fake.host_snapshot(SRC).domains.contains_key("g"));
}

#[test]
fn a_stopped_evacuation_starts_nothing_and_says_so() {
    let fake = evacuation_lab();
    let hv = hv(&fake);
    let ask = evacuate_ask();
    let p = evacuate::plan(&hv, &ask).unwrap();
    let stop = std::sync::atomic::AtomicU8::new(evacuate::NO_NEW);
    let mut events = vec![];
    let r = evacuate::execute(&hv, &journal_file("stop"), 1, &ask, &p, &mut events, &stop);
    assert!(r
        .iter()
        .all(|g| g.outcome == evacuate::GuestOutcome::NotStarted));
    assert!(matches!(events[0], evacuate::EvacEvent::Stopping { .. }));
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Migrate { .. })));
}

#[test]
fn a_host_being_evacuated_is_draining_for_every_other_command() {
    use crate::target::HostSpec;
    let j = Journal::in_memory().unwrap();
    let me = crate::this_machine();
    j.begin_evacuation("h2", DST, &owner(std::process::id(), &me, LONG))
        .unwrap();
    // One whose Ferry died on this machine no longer drains its host.
    j.begin_evacuation("h3", H3, &owner(u32::MAX - 1, &me, LONG))
        .unwrap();
    j.begin_evacuation(
        "h4",
        "qemu+tcp://h4/system",
        &owner(7, "another-machine", LONG),
    )
    .unwrap();
    let d = evacuate::draining(&j, |pid| pid == std::process::id()).unwrap();
    assert_eq!(
        d[1].0, "h4",
        "another machine's Ferry cannot be seen: it counts"
    );
    let d = &d[..1];
    assert_eq!(d, vec![("h2".to_string(), DST.to_string())]);
    // An evacuation cut short is ended by recover's step, once.
    let cut = evacuate::interrupted(&j, |pid| pid == std::process::id()).unwrap();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].host, "h3");
    evacuate::end_interrupted(&j, &cut[0]).unwrap();
    assert!(evacuate::interrupted(&j, |pid| pid == std::process::id())
        .unwrap()
        .is_empty());
    assert_eq!(
        j.evacuations().unwrap()[1].outcome,
        Some(ferry_journal::EvacuationOutcome::Interrupted)
    );
    let mut specs = vec![HostSpec::uri(DST), HostSpec::uri(H3)];
    evacuate::mark_draining(&mut specs, d);
    assert_eq!(specs[0].state, ferry_core::inventory::HostState::Draining);
    assert_eq!(specs[1].state, ferry_core::inventory::HostState::Active);
}

#[test]
fn offline_moves_the_shut_off_guest_cold_disks_through_streams_then_the_definition() {
    let fake = evacuation_lab();
    let hv = hv(&fake);
    let mut ask = evacuate_ask();
    ask.offline = true;
    let p = evacuate::plan(&hv, &ask).unwrap();
    assert!(p.shut_off.is_empty());
    let g3 = p.moves.iter().find(|m| m.guest == "g3").unwrap();
    assert!(g3.cold);
    assert!(p.moves.iter().filter(|m| m.guest != "g3").all(|m| !m.cold));
    let to = if g3.to == 1 { DST } else { H3 };
    let stop = std::sync::atomic::AtomicU8::new(evacuate::GO);
    let r = evacuate::execute(&hv, &journal_file("cold"), 1, &ask, &p, &mut vec![], &stop);
    assert!(
        r.iter()
            .all(|g| g.outcome == evacuate::GuestOutcome::Migrated),
        "{r:?}"
    );
    // Its vdb went through the streams into the volume Ferry created, at the disk's size, then
    // the definition moved: defined (shut off) on the target, gone from the source.
    let calls = fake.calls();
    let copy = calls
        .iter()
        .find_map(|c| match c {
            Call::CopyVolume {
                from,
                to: t,
                dst,
                bytes,
                ..
            } if dst == to => Some((from.clone(), t.clone(), *bytes)),
            _ => None,
        })
        .expect("a stream copy");
    assert_eq!(
        copy,
        ("/dev/nvme2n2".into(), "/srv/store/g3-vdb.img".into(), MIB64)
    );
    let create = calls
        .iter()
        .position(
            |c| matches!(c, Call::CreateVolume { path, .. } if path == "/srv/store/g3-vdb.img"),
        )
        .unwrap();
    let stream = calls
        .iter()
        .position(|c| matches!(c, Call::CopyVolume { .. }))
        .unwrap();
    let define = calls
        .iter()
        .position(|c| matches!(c, Call::Define { name, .. } if name == "g3"))
        .unwrap();
    let undefine = calls
        .iter()
        .position(|c| matches!(c, Call::Undefine { name, host } if name == "g3" && host == SRC))
        .unwrap();
    assert!(
        create < stream && stream < define && define < undefine,
        "{calls:?}"
    );
    let there = fake.host_snapshot(to).domains["g3"].clone();
    assert_eq!(there.state, DomainState::ShutOff);
    assert!(
        there
            .inactive_xml
            .contains("/mnt/nfs_second_mount/test_img.img")
            && there.inactive_xml.contains("/srv/store/g3-vdb.img"),
        "{}",
        there.inactive_xml
    );
    assert!(!fake.host_snapshot(SRC).domains.contains_key("g3"));
    // Never migrated live.
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Migrate { name, .. } if name == "g3")));
}

/// `--offline --no-retry` evacuation of the lab: g3's result (the shut-off guest, moved cold).
fn cold_evacuation_of_g3(fake: &Arc<Fake>, journal: &str) -> evacuate::GuestResult {
    let hv = hv(fake);
    let mut ask = evacuate_ask();
    ask.offline = true;
    ask.retry = false;
    let p = evacuate::plan(&hv, &ask).unwrap();
    let stop = std::sync::atomic::AtomicU8::new(evacuate::GO);
    let path = journal_file(journal);
    let r = evacuate::execute(&hv, &path, 1, &ask, &p, &mut vec![], &stop);
    r.into_iter().find(|g| g.guest == "g3").unwrap()
}

#[test]
fn a_cold_copy_that_fails_deletes_what_it_created_and_keeps_the_definition() {
    let fake = evacuation_lab();
    fake.fail_migrations_to(DST);
    fake.fail_migrations_to(H3);
    let g3 = cold_evacuation_of_g3(&fake, "cold-fail");
    assert_eq!(g3.outcome, evacuate::GuestOutcome::StayedOnSource, "{g3:?}");
    // Said as it is: shut off on the source, not "running".
    let said = g3.message.as_deref().unwrap_or_default();
    assert!(
        said.contains("stays on the source, defined and shut off") && !said.contains("running"),
        "{said}"
    );
    let src = fake.host_snapshot(SRC);
    assert_eq!(src.domains["g3"].state, DomainState::ShutOff);
    let calls = fake.calls();
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { path, .. } if path == "/srv/store/g3-vdb.img")));
    assert!(!calls.iter().any(|c| matches!(c, Call::Define { .. })));
}

#[test]
fn ctrl_c_twice_aborts_the_running_migrations_and_starts_no_more() {
    let fake = evacuation_lab();
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    let hv = hv(&fake);
    let ask = evacuate_ask();
    let p = evacuate::plan(&hv, &ask).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(evacuate::GO));
    let path = journal_file("abort-all");
    let (events, r) = std::thread::scope(|s| {
        let run = s.spawn(|| {
            let mut events = vec![];
            let r = evacuate::execute(&hv, &path, 1, &ask, &p, &mut events, &stop);
            (events, r)
        });
        let t = std::time::Instant::now();
        // The first migration has created its target volume (its job starts next; the fake
        // records the migrate call only when it returns).
        while !fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::CreateVolume { .. }))
        {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "no migration started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(evacuate::ABORT_ALL, std::sync::atomic::Ordering::SeqCst);
        run.join().unwrap()
    });
    assert!(
        events
            .iter()
            .any(|e| matches!(e, evacuate::EvacEvent::Stopping { message } if message.contains("aborting"))),
        "{events:?}"
    );
    // The one running was aborted and rolled back; the other never started.
    let outcomes: Vec<_> = r.iter().map(|g| g.outcome).collect();
    assert!(
        outcomes.contains(&evacuate::GuestOutcome::StayedOnSource),
        "{r:?}"
    );
    assert!(
        outcomes.contains(&evacuate::GuestOutcome::NotStarted),
        "{r:?}"
    );
    assert!(fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::AbortJob { .. })));
    for g in ["g", "g2"] {
        assert!(
            fake.host_snapshot(SRC).domains.contains_key(g),
            "{g} stays on h1"
        );
    }
}

#[test]
fn with_the_links_known_each_migration_is_capped_at_its_share() {
    let fake = evacuation_lab();
    let hv = hv(&fake);
    let mut ask = evacuate_ask();
    ask.link_mib = vec![(SRC.into(), 100), (DST.into(), 100), (H3.into(), 100)];
    let p = evacuate::plan(&hv, &ask).unwrap();
    assert!(p.bandwidth_known);
    let stop = std::sync::atomic::AtomicU8::new(evacuate::GO);
    let mut events = vec![];
    let r = evacuate::execute(&hv, &journal_file("caps"), 1, &ask, &p, &mut events, &stop);
    assert!(
        r.iter()
            .all(|g| g.outcome == evacuate::GuestOutcome::Migrated),
        "{r:?}"
    );
    let caps: Vec<Option<u64>> = events
        .iter()
        .filter_map(|e| match e {
            evacuate::EvacEvent::Started { bandwidth_mib, .. } => Some(*bandwidth_mib),
            _ => None,
        })
        .collect();
    // One after the other on h1's link: each gets all of it.
    assert_eq!(caps, vec![Some(100), Some(100)]);
    // And the migration job was started with it.
    let job_caps: Vec<Option<u64>> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Migrate { bandwidth, .. } => Some(*bandwidth),
            _ => None,
        })
        .collect();
    assert_eq!(job_caps.len(), 2);
    assert!(job_caps.iter().all(|b| b.is_some()), "{job_caps:?}");
}

/// `ferry migrate GUEST --from h1 --to h2` as a front end asks it.
fn explicit_ask(guest: &str, rules: Rules, options: MigrationOptions) -> Ask {
    use crate::target::{HostSpec, SelectRequest};
    Ask {
        select: SelectRequest {
            guest: guest.into(),
            source: HostSpec::uri(SRC),
            candidates: vec![HostSpec::uri(DST)],
            rules,
            inventory: None,
            answer_deadline: ANSWER,
            explicit: true,
        },
        options,
        dry_run: false,
        cold: false,
        timeout: None,
        started: std::time::Instant::now(),
        abort_grace: ABORT_GRACE,
    }
}

/// `ferry migrate`'s cold move of the shut-off g3 from h1 to h2, on `fake`.
fn cold_move_g3(fake: &Arc<Fake>) -> (Result<Outcome, MigrateError>, Journal) {
    use crate::target::SelectRequest;
    let journal = Journal::in_memory().unwrap();
    let base = explicit_ask(
        "g3",
        Rules::default(),
        MigrationOptions {
            unsafe_: true,
            ..Default::default()
        },
    );
    let ask = Ask {
        cold: true,
        abort_grace: std::time::Duration::from_secs(1),
        select: SelectRequest {
            answer_deadline: crate::target::ANSWER_DEADLINE,
            ..base.select
        },
        ..base
    };
    let out = crate::migrate(
        &hv(fake),
        &journal,
        &ask,
        &mut vec![],
        &AtomicBool::new(false),
    );
    (out, journal)
}

/// A definition that failed on the target took no effect: the guest is where it was, and the
/// volume Ferry created for it goes.
#[test]
fn a_cold_move_whose_definition_fails_deletes_its_volume_and_keeps_the_guest() {
    let fake = evacuation_lab();
    fake.fail_defines_on(DST);
    let (out, journal) = cold_move_g3(&fake);
    let Err(MigrateError::Failed {
        location, cause, ..
    }) = &out
    else {
        panic!("{out:?}")
    };
    assert_eq!(*location, GuestLocation::SourceShutOff);
    assert!(matches!(**cause, Cause::Host(_)), "{cause:?}");
    assert!(
        fake.calls().iter().any(
            |c| matches!(c, Call::DeleteVolume { path, .. } if path == "/srv/store/g3-vdb.img")
        ),
        "{:?}",
        fake.calls()
    );
    assert!(fake.host_snapshot(SRC).domains.contains_key("g3"));
    assert!(journal.leftovers().unwrap().is_empty());
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::RolledBack)
    );
}

/// The target has the guest, defined and checked; only the source's old definition could not
/// be removed: the move happened, nothing is deleted, and the operator is told.
#[test]
fn a_cold_move_whose_source_undefine_fails_is_migrated_with_a_warning() {
    let fake = evacuation_lab();
    fake.fail_undefines_on(SRC);
    let (out, journal) = cold_move_g3(&fake);
    let Ok(Outcome::Migrated(s)) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(fake.host_snapshot(DST).domains.contains_key("g3"));
    assert!(fake.host_snapshot(SRC).domains.contains_key("g3"));
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteVolume { .. })));
    assert_eq!(
        journal.runs(1).unwrap()[0].outcome,
        Some(RunOutcome::Migrated)
    );
}

/// The cold flow alone (as an evacuation runs it for a shut-off guest): a block device is
/// copied whole, whatever its allocation, and the summary says what was done.
#[test]
fn a_cold_move_copies_a_block_device_whole_and_says_what_it_did() {
    let fake = evacuation_lab();
    let mut h1 = fake.host_snapshot(SRC);
    let vdb = h1
        .domains
        .get_mut("g3")
        .unwrap()
        .disks
        .get_mut("vdb")
        .unwrap();
    // A thin block device: libvirt's physical figure is not the bytes a copy must move.
    vdb.allocation = MIB64 / 4;
    vdb.physical = MIB64 / 4;
    fake.add_host(SRC, h1);
    let (out, journal) = cold_move_g3(&fake);
    let Ok(Outcome::Migrated(s)) = out else {
        panic!("{out:?}");
    };
    let copied = fake.calls().iter().find_map(|c| match c {
        Call::CopyVolume { bytes, .. } => Some(*bytes),
        _ => None,
    });
    assert_eq!(copied, Some(MIB64), "the whole device");
    assert_eq!((s.disk_bytes, s.data_bytes), (Some(MIB64), Some(MIB64)));
    assert_eq!(s.guest, "g3");
    assert_eq!((s.from.as_str(), s.to.as_str()), (SRC, DST));
    assert_eq!(s.copied_disks, ["vdb"]);
    assert_eq!(s.created, ["/srv/store/g3-vdb.img"]);
    assert!(
        s.verified
            .iter()
            .any(|v| v.contains("defined and shut off")),
        "{:?}",
        s.verified
    );
    let run = journal.runs(10).unwrap();
    assert_eq!(s.run, Some(run[0].id), "{run:?}");
    assert_eq!(run[0].outcome, Some(RunOutcome::Migrated));
}

/// The definition went through on the target but its reply was lost: the target's definition
/// may use the volumes Ferry created, so none is deleted, and the guest's place is unknown.
#[test]
fn a_cold_move_whose_define_reply_is_lost_deletes_nothing() {
    let fake = evacuation_lab();
    fake.lose_define_replies(DST);
    fake.lose_define_replies(H3);
    let g3 = cold_evacuation_of_g3(&fake, "define-lost");
    assert_eq!(g3.outcome, evacuate::GuestOutcome::Uncertain, "{g3:?}");
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::DeleteVolume { path, .. } if path.contains("g3"))),
        "{:?}",
        fake.calls()
    );
    let said = g3.message.as_deref().unwrap_or_default();
    assert!(said.contains("left /srv/store/g3-vdb.img"), "{said}");
}

/// Records, at each step's event, the phase the journal holds for the run then.
struct PhaseWatch<'j> {
    journal: &'j Journal,
    seen: Vec<(Step, Option<ferry_journal::RunPhase>)>,
    /// Set this flag when the flow enters this step (a Ctrl-C at that moment).
    cancel_at: Option<(Step, &'j AtomicBool)>,
}

impl Reporter for PhaseWatch<'_> {
    fn report(&mut self, event: Event) {
        if let Event::Step { step, .. } = event {
            let phase = self.journal.runs(1).unwrap().first().map(|r| r.phase);
            self.seen.push((step, phase));
            if let Some((at, flag)) = self.cancel_at {
                if at == step {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }
}

/// The journal's phase is the step's when the step is announced; a read-only step after a hook
/// made a volume does not set the run back to `preflight`.
#[test]
fn each_step_is_in_the_journal_when_it_is_said() {
    use ferry_journal::RunPhase;
    let log = journal_file("phases-hook");
    let fake = lab();
    let journal = Journal::in_memory().unwrap();
    let mut req = request("vdb");
    req.rules.copy.clear();
    req.provision = vec![logging_hook(&log)];
    let mut w = PhaseWatch {
        journal: &journal,
        seen: vec![],
        cancel_at: None,
    };
    let r = run(&hv(&fake), &journal, &req, &mut w, &AtomicBool::new(false));
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let phase_at = |s: Step| w.seen.iter().find(|(x, _)| *x == s).map(|(_, p)| *p);
    assert_eq!(phase_at(Step::Prepare), Some(Some(RunPhase::Prepare)));
    assert_eq!(
        phase_at(Step::Preflight),
        Some(Some(RunPhase::Prepare)),
        "a volume exists: the run is past preflight"
    );
    assert_eq!(phase_at(Step::Migrate), Some(Some(RunPhase::Migrate)));
    assert_eq!(phase_at(Step::Verify), Some(Some(RunPhase::Verify)));
    assert_eq!(journal.runs(1).unwrap()[0].phase, RunPhase::Done);
}

/// A timeout that has not come does not stop the run (a host slow to connect: the stop's
/// reasons are asked while the read waits).
#[test]
fn a_timeout_not_yet_reached_stops_nothing() {
    let fake = lab();
    fake.slow_connect(DST, std::time::Duration::from_millis(300));
    let mut req = request("vdb=/dev/nvme1n5");
    req.timeout = Some(std::time::Duration::from_secs(600));
    let (r, _, _) = go(&fake, &req);
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
}

/// Ctrl-C once a hook has made a volume: the flow does not stop in the middle of reading (the
/// volume would be left); it goes on, aborts, and gives the volume back through the hook.
#[test]
fn a_stop_after_a_hook_made_a_volume_rolls_it_back() {
    let log = journal_file("stop-after-hook");
    let fake = lab();
    // The job runs until it is aborted: the Ctrl-C reaches it.
    fake.set_outcome(MigrateOutcome::RunUntilAborted);
    let journal = Journal::in_memory().unwrap();
    let mut req = request("vdb");
    req.rules.copy.clear();
    req.provision = vec![logging_hook(&log)];
    let cancel = AtomicBool::new(false);
    let mut w = PhaseWatch {
        journal: &journal,
        seen: vec![],
        cancel_at: Some((Step::Preflight, &cancel)),
    };
    let r = run(&hv(&fake), &journal, &req, &mut w, &cancel);
    let Err(MigrateError::Failed { location, .. }) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(*location, GuestLocation::Source);
    let said = std::fs::read_to_string(&*log).unwrap();
    assert!(said.contains("\"action\":\"delete\""), "{said}");
    assert!(journal.leftovers().unwrap().is_empty());
}

/// Through `migrate` (lock, target, flow): a failed post-copy's run stays open for `ferry
/// recover`, never closed as refused.
#[test]
fn a_split_post_copy_stays_open_through_migrate() {
    let fake = lab();
    fake.set_outcome(MigrateOutcome::PostcopyFails { resumable: false });
    fake.same_storage(&[(SRC, "/mnt/nfs"), (DST, "/mnt/nfs_second_mount")]);
    let journal = Journal::in_memory().unwrap();
    let req = postcopy_request();
    let ask = explicit_ask("g", req.rules.clone(), req.options.clone());
    let r = crate::migrate(
        &hv(&fake),
        &journal,
        &ask,
        &mut vec![],
        &AtomicBool::new(false),
    );
    assert!(
        matches!(
            r,
            Err(MigrateError::Failed {
                location: GuestLocation::PostcopySplit,
                ..
            })
        ),
        "{r:?}"
    );
    let run = &journal.runs(1).unwrap()[0];
    assert_eq!(
        (run.outcome, run.phase),
        (None, ferry_journal::RunPhase::PostcopyFailed)
    );
}

/// `ferry recover` ends the evacuations whose Ferry is gone — not in a dry run, not when asked
/// about one run.
#[test]
fn recover_ends_an_evacuation_cut_short() {
    let j = Journal::in_memory().unwrap();
    // Its Ferry: a pid of this machine that is no Ferry (this test).
    let e = j
        .begin_evacuation(
            "h1",
            SRC,
            &owner(std::process::id(), &crate::this_machine(), LONG),
        )
        .unwrap();
    assert!(
        recover::end_cut_evacuations(&j, Some(ferry_journal::RunId(1)), false)
            .unwrap()
            .is_empty()
    );
    let dry = recover::end_cut_evacuations(&j, None, true).unwrap();
    assert_eq!(dry.iter().map(|r| r.id).collect::<Vec<_>>(), [e]);
    assert_eq!(
        j.open_evacuations().unwrap().len(),
        1,
        "a dry run ends nothing"
    );
    let done = recover::end_cut_evacuations(&j, None, false).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        j.evacuations().unwrap()[0].outcome,
        Some(ferry_journal::EvacuationOutcome::Interrupted)
    );
    assert!(recover::end_cut_evacuations(&j, None, false)
        .unwrap()
        .is_empty());
}
