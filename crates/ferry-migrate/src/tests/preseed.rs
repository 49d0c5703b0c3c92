//! `--preseed` against the fake: what crosses the relay, what the target ends up holding, and
//! what a failure undoes. (That it migrates a real guest is proven in the lab.)

use super::*;
use ferry_core::preseed::{Preseed, Verify, CHUNK};

const OVERLAY: &str = "/srv/store/ferry-g-vdb-run1.qcow2";

/// 64 MiB of vdb: chunk 0 and chunk 5 hold data (the rest is zero); the target's device is
/// full of garbage.
fn seeded_lab() -> (Arc<Fake>, Vec<u8>) {
    let fake = lab();
    let mut vdb = vec![0u8; MIB64 as usize];
    vdb[..1000].fill(7);
    vdb[5 * CHUNK as usize + 17] = 1;
    let mut src = fake.host_snapshot(SRC);
    src.paths.insert("/dev/nvme2n2".into(), block(MIB64));
    src.contents.insert("/dev/nvme2n2".into(), vdb.clone());
    src.dirs.insert("/srv/store".into(), 1 << 30);
    fake.add_host(SRC, src);
    let mut dst = fake.host_snapshot(DST);
    dst.contents
        .insert("/dev/nvme1n5".into(), vec![0xAA; MIB64 as usize]);
    fake.add_host(DST, dst);
    (fake, vdb)
}

fn preseed_request(verify: Verify) -> Request {
    let mut r = request("vdb=/dev/nvme1n5");
    r.options.preseed = Some(Preseed {
        store: "/srv/store".into(),
        verify,
        bandwidth_mib: None,
        auto_from: None,
    });
    r
}

/// A failure with the guest on the source whose cleanup committed an overlay back there: the
/// cleanup.
fn thawed_on_source(r: Result<Outcome, MigrateError>) -> Vec<rollback::Cleanup> {
    let Err(MigrateError::Failed {
        location, cleanup, ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(location, GuestLocation::Source);
    assert!(
        cleanup
            .iter()
            .any(|c| matches!(c, rollback::Cleanup::Thawed { .. })),
        "{cleanup:?}"
    );
    cleanup
}

/// How the journal's latest run ended.
fn last_outcome(journal: &Journal) -> Option<RunOutcome> {
    journal.runs(1).unwrap()[0].outcome
}

fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls.iter().position(f).expect("no such call")
}

#[test]
fn zero_chunks_cross_as_holes_and_the_target_holds_every_byte() {
    let (fake, vdb) = seeded_lab();
    let (r, events, journal) = go(&fake, &preseed_request(Verify::All));
    let Ok(Outcome::Migrated(s)) = r else {
        panic!("{r:?}")
    };
    // Two chunks of data, fourteen of holes; the garbage under the holes is gone.
    assert_eq!(
        fake.host_snapshot(DST).contents["/dev/nvme1n5"],
        vdb,
        "the target's bytes"
    );
    let calls = fake.calls();
    let writes: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::WriteVolume {
                path, data, zeros, ..
            } => Some((path.clone(), *data, *zeros)),
            _ => None,
        })
        .collect();
    assert_eq!(
        writes,
        vec![("/dev/nvme1n5".to_string(), 2 * CHUNK, MIB64 - 2 * CHUNK)]
    );
    assert_eq!(s.seeded.len(), 1);
    assert_eq!(
        (
            s.seeded[0].data,
            s.seeded[0].zeros,
            s.seeded[0].verified_chunks
        ),
        (2 * CHUNK, MIB64 - 2 * CHUNK, MIB64 / CHUNK)
    );
    // The order: freeze, relay, target overlay, live (incremental), commit, overlays deleted.
    let freeze = position(&calls, |c| matches!(c, Call::Freeze { .. }));
    let read = position(&calls, |c| matches!(c, Call::ReadVolume { .. }));
    let overlay = position(&calls, |c| matches!(c, Call::CreateOverlay { .. }));
    let migrate = position(&calls, |c| matches!(c, Call::Migrate { .. }));
    let commit = position(&calls, |c| matches!(c, Call::CommitActive { .. }));
    assert!(freeze < read && read < overlay && overlay < migrate && migrate < commit);
    let Call::Freeze { overlays, keep, .. } = &calls[freeze] else {
        unreachable!()
    };
    assert_eq!(overlays, &[("vdb".to_string(), OVERLAY.to_string())]);
    assert_eq!(keep, &["vda".to_string()]);
    let Call::Migrate {
        flags,
        migrate_disks,
        ..
    } = &calls[migrate]
    else {
        unreachable!()
    };
    assert!(flags.non_shared_inc && !flags.non_shared_disk, "{flags:?}");
    assert_eq!(migrate_disks, &["vdb".to_string()]);
    assert_eq!(
        calls[commit],
        Call::CommitActive {
            host: DST.into(),
            name: "g".into(),
            disk: "vdb".into()
        }
    );
    for host in [SRC, DST] {
        assert!(
            calls.contains(&Call::DeleteVolume {
                host: host.into(),
                path: OVERLAY.into()
            }),
            "{host}"
        );
        assert!(!fake.host_snapshot(host).paths.contains_key(OVERLAY));
    }
    // The guest ends on the plan's definition: the target volume alone.
    let g = &fake.host_snapshot(DST).domains["g"];
    assert!(
        g.live_xml.contains("<source dev='/dev/nvme1n5'/>"),
        "{}",
        g.live_xml
    );
    assert!(
        !g.live_xml.contains("qcow2'/>\n      <source dev"),
        "{}",
        g.live_xml
    );
    assert_eq!(last_outcome(&journal), Some(RunOutcome::Migrated));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Seed(p) if p.done == MIB64)));
}

#[test]
fn a_failed_live_phase_commits_the_overlay_back_on_the_source() {
    let (fake, _) = seeded_lab();
    fake.fail_migrations_to(DST);
    let (r, _, journal) = go(&fake, &preseed_request(Verify::Sample));
    let cleanup = thawed_on_source(r);
    assert!(
        cleanup.contains(&rollback::Cleanup::Thawed {
            host: SRC.into(),
            disk: "vdb".into(),
            overlay: OVERLAY.into()
        }),
        "{cleanup:?}"
    );
    let calls = fake.calls();
    assert!(calls.contains(&Call::CommitActive {
        host: SRC.into(),
        name: "g".into(),
        disk: "vdb".into()
    }));
    // The target's overlay went with the rollback; the source's after the commit.
    for host in [SRC, DST] {
        assert!(
            !fake.host_snapshot(host).paths.contains_key(OVERLAY),
            "{host}"
        );
    }
    assert_eq!(last_outcome(&journal), Some(RunOutcome::RolledBack));
}

#[test]
fn a_cut_relay_thaws_the_guest_before_any_overlay_or_migration() {
    let (fake, _) = seeded_lab();
    fake.fail_writing_after("/dev/nvme1n5", 3 * CHUNK);
    let (r, _, _) = go(&fake, &preseed_request(Verify::Sample));
    thawed_on_source(r);
    let calls = fake.calls();
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Migrate { .. } | Call::CreateOverlay { .. })));
    assert!(calls.contains(&Call::CommitActive {
        host: SRC.into(),
        name: "g".into(),
        disk: "vdb".into()
    }));
}

#[test]
fn a_read_back_that_differs_refuses_the_copy() {
    let (fake, _) = seeded_lab();
    fake.corrupt_writes_to("/dev/nvme1n5");
    let (r, _, _) = go(&fake, &preseed_request(Verify::Sample));
    let Err(MigrateError::Failed { cause, .. }) = &r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            **cause,
            Cause::Seed(crate::preseed::SeedError::Mismatch { start: 0, end, .. }) if end == CHUNK
        ),
        "{cause:?}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Migrate { .. })));
    // Without a read-back, the same corruption would have gone on to the live phase: the
    // verification is what caught it.
    let (fake, _) = seeded_lab();
    fake.corrupt_writes_to("/dev/nvme1n5");
    let (r, _, _) = go(&fake, &preseed_request(Verify::None));
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn a_disk_that_cannot_be_frozen_is_refused_before_anything_moves() {
    let (fake, _) = seeded_lab();
    let mut src = fake.host_snapshot(SRC);
    let g = src.domains.get_mut("g").unwrap();
    // A qcow2 image on the device: the plan could copy it, pre-seeding cannot.
    g.live_xml = g.live_xml.replace(
        "<driver name='qemu' type='raw' cache='none' io='native'/>",
        "<driver name='qemu' type='qcow2' cache='none' io='native'/>",
    );
    fake.add_host(SRC, src);
    let (r, _, journal) = go(&fake, &preseed_request(Verify::Sample));
    let Err(MigrateError::Refused { problems }) = &r else {
        panic!("{r:?}")
    };
    assert!(
        problems.iter().any(
            |p| p.code == ferry_core::preflight::ProblemCode::CannotPreseed
                && p.disk.as_deref() == Some("vdb")
        ),
        "{problems:?}"
    );
    assert_eq!(mutating(&fake.calls()), vec![]);
    assert_eq!(last_outcome(&journal), Some(RunOutcome::Refused));
    // A cold move has nothing to freeze.
    let (fake, _) = seeded_lab();
    let mut req = preseed_request(Verify::Sample);
    req.cold = true;
    let mut src = fake.host_snapshot(SRC);
    src.domains.get_mut("g").unwrap().state = DomainState::ShutOff;
    fake.add_host(SRC, src);
    let (r, _, _) = go(&fake, &req);
    let Err(MigrateError::Refused { problems }) = &r else {
        panic!("{r:?}")
    };
    assert!(problems
        .iter()
        .any(|p| p.code == ferry_core::preflight::ProblemCode::CannotPreseed && p.disk.is_none()));
}

#[test]
fn ctrl_c_during_the_relay_stops_it_and_thaws() {
    let (fake, _) = seeded_lab();
    let journal = Journal::in_memory().unwrap();
    let mut req = preseed_request(Verify::None);
    // 1 MiB/s: the first data chunk (4 MiB) holds the relay for 4 s; Ctrl-C comes at once.
    if let Some(p) = req.options.preseed.as_mut() {
        p.bandwidth_mib = Some(1);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        c2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t0 = std::time::Instant::now();
    let r = run(&hv(&fake), &journal, &req, &mut Vec::new(), &cancel);
    t.join().unwrap();
    let Err(MigrateError::Failed { cause, cleanup, .. }) = &r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            **cause,
            Cause::Seed(crate::preseed::SeedError::Stopped(
                migrate::AbortReason::Cancelled
            ))
        ),
        "{cause:?}"
    );
    assert!(cleanup
        .iter()
        .any(|c| matches!(c, rollback::Cleanup::Thawed { .. })));
    // Stopped within the throttle's wait, not after it.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
}

/// `seeded_lab` with vdb and its target three windows long (192 MiB): data in each window.
fn three_window_lab() -> (Arc<Fake>, Vec<u8>) {
    let (fake, _) = seeded_lab();
    let size = 3 * MIB64;
    let mut vdb = vec![0u8; size as usize];
    for w in 0..3usize {
        vdb[w * MIB64 as usize + 100] = 1 + w as u8;
    }
    let mut src = fake.host_snapshot(SRC);
    src.paths.insert("/dev/nvme2n2".into(), block(size));
    src.contents.insert("/dev/nvme2n2".into(), vdb.clone());
    src.domains.get_mut("g").unwrap().disks.insert(
        "vdb".into(),
        DiskSize {
            capacity: size,
            allocation: size,
            physical: size,
        },
    );
    fake.add_host(SRC, src);
    let mut dst = fake.host_snapshot(DST);
    dst.paths.insert("/dev/nvme1n5".into(), block(size));
    dst.contents
        .insert("/dev/nvme1n5".into(), vec![0xAA; size as usize]);
    fake.add_host(DST, dst);
    (fake, vdb)
}

#[test]
fn a_stopped_pre_seed_is_resumed_by_the_same_migrate_from_its_last_window() {
    let (fake, vdb) = three_window_lab();
    let journal = Journal::in_memory().unwrap();
    // Run 1: the relay is cut in its second window, and the guest cannot be thawed (as if
    // Ferry had been killed): it stays frozen on run 1's overlay.
    fake.fail_writing_after("/dev/nvme1n5", MIB64 + CHUNK);
    fake.fail_commits_on(SRC);
    let req = preseed_request(Verify::Sample);
    let mut r1 = req.clone();
    r1.run = Some(journal.begin_run("g", SRC, DST, "{}").unwrap());
    let r = run(
        &hv(&fake),
        &journal,
        &r1,
        &mut Vec::new(),
        &AtomicBool::new(false),
    );
    let Err(MigrateError::Failed { cleanup, .. }) = &r else {
        panic!("{r:?}")
    };
    assert!(cleanup
        .iter()
        .any(|c| matches!(c, rollback::Cleanup::NotThawed { .. })));
    let frozen = fake.host_snapshot(SRC).domains["g"].live_xml.clone();
    assert!(frozen.contains(OVERLAY), "{frozen}");
    // Without --preseed, a frozen guest is refused, naming the run that froze it.
    fake.heal_writing("/dev/nvme1n5");
    fake.heal_commits_on(SRC);
    let mut plain = request("vdb=/dev/nvme1n5");
    plain.run = Some(journal.begin_run("g", SRC, DST, "{}").unwrap());
    let r = run(
        &hv(&fake),
        &journal,
        &plain,
        &mut Vec::new(),
        &AtomicBool::new(false),
    );
    let Err(MigrateError::Refused { problems }) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(problems[0].code, ferry_core::preflight::ProblemCode::Frozen);
    assert_eq!(problems[0].path.as_deref(), Some(OVERLAY));
    let before = fake.calls().len();
    // Run 3, the same command again: it takes the freeze over and resumes at the window run 1
    // journaled, re-sending nothing before it.
    let mut r3 = req.clone();
    let id3 = journal.begin_run("g", SRC, DST, "{}").unwrap();
    r3.run = Some(id3);
    let r = run(
        &hv(&fake),
        &journal,
        &r3,
        &mut Vec::new(),
        &AtomicBool::new(false),
    );
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let calls = &fake.calls()[before..];
    assert!(!calls.iter().any(|c| matches!(c, Call::Freeze { .. })));
    let writes: Vec<(u64, u64)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::WriteVolume {
                offset,
                data,
                zeros,
                ..
            } => Some((*offset, data + zeros)),
            _ => None,
        })
        .collect();
    assert_eq!(writes, vec![(MIB64, MIB64), (2 * MIB64, MIB64)]);
    assert_eq!(fake.host_snapshot(DST).contents["/dev/nvme1n5"], vdb);
    // The source's overlay, run 1's, was committed on the target side's success and deleted.
    assert!(calls.contains(&Call::DeleteVolume {
        host: SRC.into(),
        path: OVERLAY.into()
    }));
    let runs = journal.runs(5).unwrap();
    let outcome = |id: ferry_journal::RunId| runs.iter().find(|r| r.id == id).unwrap().outcome;
    // Run 1 had ended itself (rolled back, its thaw failed); a run whose Ferry was killed
    // has no end, and the taker ends it as resumed (proven in the lab's fault matrix).
    assert_eq!(outcome(r1.run.unwrap()), Some(RunOutcome::RolledBack));
    assert_eq!(outcome(id3), Some(RunOutcome::Migrated));
}

#[test]
fn recover_commits_a_frozen_guest_back_and_never_deletes_an_overlay_it_could_not_commit() {
    let (fake, vdb) = seeded_lab();
    let journal = Journal::in_memory().unwrap();
    fake.fail_writing_after("/dev/nvme1n5", CHUNK);
    fake.fail_commits_on(SRC);
    let mut req = preseed_request(Verify::Sample);
    req.run = Some(journal.begin_run("g", SRC, DST, "{}").unwrap());
    let r = run(
        &hv(&fake),
        &journal,
        &req,
        &mut Vec::new(),
        &AtomicBool::new(false),
    );
    assert!(r.is_err());
    assert!(fake.host_snapshot(SRC).paths.contains_key(OVERLAY));
    // The commit still fails: recover stops there; the overlay the guest writes to stays.
    let out = recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    assert_eq!(out.len(), 1);
    let steps = &out[0].recovery.steps;
    assert!(
        matches!(steps[0], recover::Action::Commit { .. }),
        "{steps:?}"
    );
    assert_eq!(
        out[0].failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..steps.len()).collect::<Vec<_>>(),
        "{:?}",
        out[0].failed
    );
    assert!(fake.host_snapshot(SRC).paths.contains_key(OVERLAY));
    // It works: committed back, the overlay deleted, the guest on its own disk.
    fake.heal_commits_on(SRC);
    let out = recover::run(&hv(&fake), &journal, None, false, ANSWER).unwrap();
    assert!(out[0].failed.is_empty(), "{:?}", out[0].failed);
    let src = fake.host_snapshot(SRC);
    assert!(!src.paths.contains_key(OVERLAY));
    assert!(src.domains["g"]
        .live_xml
        .contains("<source dev='/dev/nvme2n2'/>"));
    assert_eq!(src.contents["/dev/nvme2n2"], vdb);
    assert!(recover::run(&hv(&fake), &journal, None, true, ANSWER)
        .unwrap()
        .is_empty());
}

#[test]
fn a_store_missing_on_the_target_is_refused_before_anything_moves() {
    let (fake, _) = seeded_lab();
    let mut dst = fake.host_snapshot(DST);
    dst.dirs.remove("/srv/store");
    fake.add_host(DST, dst);
    let (r, _, _) = go(&fake, &preseed_request(Verify::Sample));
    let Err(MigrateError::Refused { problems }) = &r else {
        panic!("{r:?}")
    };
    assert!(
        problems.iter().any(
            |p| p.code == ferry_core::preflight::ProblemCode::CannotPreseed
                && p.host == DST
                && p.path.as_deref() == Some("/srv/store")
        ),
        "{problems:?}"
    );
    assert_eq!(mutating(&fake.calls()), vec![]);
}

#[test]
fn the_default_pre_seeds_from_its_threshold_and_copies_inside_the_job_below_it() {
    let auto = |from: u64| {
        let mut r = preseed_request(Verify::Sample);
        if let Some(p) = r.options.preseed.as_mut() {
            p.auto_from = Some(from);
        }
        r
    };
    // Under the threshold: no freeze, a plain copy inside the job, and said.
    let (fake, _) = seeded_lab();
    let (r, events, _) = go(&fake, &auto(MIB64 + 1));
    assert!(matches!(r, Ok(Outcome::Migrated(_))), "{r:?}");
    let calls = fake.calls();
    assert!(!calls.iter().any(|c| matches!(c, Call::Freeze { .. })));
    assert!(calls.iter().any(
        |c| matches!(c, Call::Migrate { flags, .. } if flags.non_shared_disk && !flags.non_shared_inc)
    ));
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message } if message.starts_with("pre-seeding: not used"))
    ));
    // At it: pre-seeded.
    let (fake, vdb) = seeded_lab();
    let (r, _, _) = go(&fake, &auto(MIB64));
    let Ok(Outcome::Migrated(s)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(s.seeded.len(), 1);
    assert_eq!(fake.host_snapshot(DST).contents["/dev/nvme1n5"], vdb);
    // At it, but a disk that cannot be frozen: copied inside the job, not refused.
    let (fake, _) = seeded_lab();
    let mut src = fake.host_snapshot(SRC);
    src.dirs.remove("/srv/store");
    fake.add_host(SRC, src);
    let (r, _, _) = go(&fake, &auto(MIB64));
    assert!(
        matches!(r, Ok(Outcome::Migrated(ref s)) if s.seeded.is_empty()),
        "{r:?}"
    );
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Freeze { .. })));
}
