//! The journal's tests. The journal's contract (every case in `both!`) runs on both stores: an
//! SQLite file, and a PostgreSQL database (a server started for the test from Debian's
//! `postgresql-15`). The file's own behaviours (a foreign file, an old file upgraded) are
//! SQLite's alone.

use std::path::PathBuf;

use super::*;

/// A fresh journal of one store: every `open` is a new connection to it.
struct Fresh {
    path: PathBuf,
    /// The SQLite file's directory, removed when dropped.
    dir: Option<PathBuf>,
}

impl Fresh {
    fn sqlite(name: &str) -> Fresh {
        let dir = std::env::temp_dir().join(format!("ferry-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Fresh {
            path: dir.join("j.db"),
            dir: Some(dir),
        }
    }

    fn open(&self) -> Journal {
        Journal::open(&self.path).unwrap()
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Each case as a test on SQLite, and all of them on one PostgreSQL server, each in a
/// database of its own.
macro_rules! both {
    ($($case:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::Fresh::sqlite(stringify!($case)));
                }
            )+
        }

        #[test]
        fn every_case_holds_on_postgresql() {
            let Some(pg) = crate::testing::Postgres::start().unwrap() else { return };
            $(
                $case(&Fresh {
                    path: PathBuf::from(pg.database(stringify!($case)).unwrap()),
                    dir: None,
                });
            )+
        }
    };
}

both!(
    runs_come_a_page_at_a_time_newest_first,
    an_evacuation_is_open_until_finished_and_keeps_its_runs,
    created_volumes_of_unfinished_runs_are_leftovers_until_deleted,
    a_migrated_run_leaves_no_leftovers,
    an_old_journals_failed_verification_reads_as_unverified_and_its_words_unchanged,
    a_word_the_journal_does_not_know_is_an_error_not_a_default,
    one_guest_one_lock_a_dead_holder_on_this_machine_is_taken_over,
    an_expired_lease_is_taken_over_and_renewing_keeps_only_ones_own,
    the_journal_survives_reopening,
    an_abort_request_reaches_the_run_from_another_connection,
    a_pre_seed_is_journaled_by_window_and_its_volumes_change_hands_on_a_resume,
    a_journal_of_a_newer_schema_is_refused_and_one_without_a_version_gets_it,
    only_one_of_many_connections_takes_a_guests_lock,
);

fn runs_come_a_page_at_a_time_newest_first(f: &Fresh) {
    let j = f.open();
    let ids: Vec<RunId> = (0..5)
        .map(|i| j.begin_run(&format!("g{i}"), "a", "b", "{}").unwrap())
        .collect();
    let page = |before: Option<RunId>, limit| {
        j.runs_before(before, limit)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2), [ids[4], ids[3]]);
    assert_eq!(page(Some(ids[3]), 2), [ids[2], ids[1]]);
    assert_eq!(page(Some(ids[1]), 2), [ids[0]]);
    assert_eq!(page(Some(ids[0]), 2), []);
    assert_eq!(j.runs(3).unwrap().len(), 3);
}

fn an_evacuation_is_open_until_finished_and_keeps_its_runs(f: &Fresh) {
    let j = f.open();
    let e = j
        .begin_evacuation("h1", "qemu+tcp://h1/system", &owner("A", "m", 42, 60_000))
        .unwrap();
    let open = j.open_evacuations().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].host.as_str(), open[0].pid), ("h1", 42));
    let r = j.begin_run("g", "a", "b", "{}").unwrap();
    let r2 = j.begin_run("g2", "a", "b", "{}").unwrap();
    // In the order added, not by run.
    j.add_evacuation_run(e, "g2", r2).unwrap();
    j.add_evacuation_run(e, "g", r).unwrap();
    assert_eq!(
        j.evacuation_runs(e).unwrap(),
        vec![("g2".to_string(), r2.0), ("g".to_string(), r.0)]
    );
    assert_eq!(j.latest_run_of("g", 0).unwrap().map(|x| x.id), Some(r));
    assert!(j.latest_run_of("g", i64::MAX).unwrap().is_none());
    assert!(j.latest_run_of("other", 0).unwrap().is_none());
    j.finish_evacuation(e, EvacuationOutcome::Emptied, "3 guests")
        .unwrap();
    assert!(j.open_evacuations().unwrap().is_empty());
    assert_eq!(
        j.evacuations().unwrap()[0].outcome,
        Some(EvacuationOutcome::Emptied)
    );
}

fn created_volumes_of_unfinished_runs_are_leftovers_until_deleted(f: &Fresh) {
    let j = f.open();
    let r = j
        .begin_run("g", "qemu+tcp://a/system", "qemu+tcp://b/system", "{}")
        .unwrap();
    j.record_created(r, "qemu+tcp://b/system", "/srv/vdb.raw", 64)
        .unwrap();
    j.record_created(r, "qemu+tcp://b/system", "/srv/vdc.raw", 32)
        .unwrap();
    assert_eq!(j.leftovers().unwrap().len(), 2);
    j.record_deleted(r, "qemu+tcp://b/system", "/srv/vdb.raw")
        .unwrap();
    let left = j.leftovers().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].path, "/srv/vdc.raw");
    assert_eq!(left[0].bytes, 32);
    // Released copies are remembered per run and path.
    assert!(!j.was_released(r, "/srv/vdc.raw").unwrap());
    j.record_released(r, "qemu+tcp://a/system", "/srv/vdc.raw", "pool")
        .unwrap();
    assert!(j.was_released(r, "/srv/vdc.raw").unwrap());
    assert!(!j.was_released(r, "/srv/vdb.raw").unwrap());
}

fn a_migrated_run_leaves_no_leftovers(f: &Fresh) {
    let j = f.open();
    let r = j.begin_run("g", "a", "b", "{\"x\":1}").unwrap();
    assert_eq!(j.plan_of(r).unwrap().as_deref(), Some("{\"x\":1}"));
    j.set_target(r, "c").unwrap();
    j.set_phase(r, RunPhase::Migrate).unwrap();
    let row = j.run_row(r).unwrap().unwrap();
    assert_eq!((row.target.as_str(), row.phase), ("c", RunPhase::Migrate));
    j.record_created(r, "b", "/srv/vdb.raw", 64).unwrap();
    j.finish(r, RunOutcome::Migrated, "ok").unwrap();
    assert!(j.leftovers().unwrap().is_empty());
    assert_eq!(j.outcome(r).unwrap(), Some(RunOutcome::Migrated));
    assert_eq!(j.runs(10).unwrap()[0].phase, RunPhase::Done);
    // Its guest runs on the target even unverified: the volumes are its disks.
    let u = j.begin_run("g", "a", "b", "{}").unwrap();
    assert_eq!(j.plan_of(u).unwrap(), None);
    j.record_created(u, "b", "/srv/vdc.raw", 64).unwrap();
    j.finish(u, RunOutcome::MigratedUnverified, "verify: x")
        .unwrap();
    assert!(j.leftovers().unwrap().is_empty());
    assert!(j.runs_to_recover(None).unwrap().is_empty());
    // A rolled-back run's undeleted volume is a leftover recover looks at.
    let b = j.begin_run("g", "a", "b", "{}").unwrap();
    j.record_created(b, "b", "/srv/vdd.raw", 64).unwrap();
    j.finish(b, RunOutcome::RolledBack, "x").unwrap();
    assert_eq!(j.leftovers().unwrap().len(), 1);
    assert_eq!(
        j.runs_to_recover(None)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [b]
    );
    assert_eq!(j.runs_to_recover(Some(b)).unwrap().len(), 1);
    assert!(j.runs_to_recover(Some(r)).unwrap().is_empty());
}

fn an_old_journals_failed_verification_reads_as_unverified_and_its_words_unchanged(f: &Fresh) {
    let j = f.open();
    j.db.batch(
        "INSERT INTO runs (guest, source, target, started, phase, outcome, message) VALUES
           ('a','s','t',1,'done','migrated','verified'),
           ('b','s','t',1,'done','migrated','verify: disk vdb is not at its planned source'),
           ('c','s','t',1,'done','migrated','recovered: c runs on t, but verify: no plan'),
           ('d','s','t',1,'done','rolled_back','x'),
           ('e','s','t',1,'postcopy_failed',NULL,NULL);",
    )
    .unwrap();
    let by_guest: Vec<_> = j
        .runs(10)
        .unwrap()
        .into_iter()
        .rev()
        .map(|r| (r.guest, r.phase, r.outcome))
        .collect();
    let done = RunPhase::Done;
    assert_eq!(
        by_guest,
        [
            ("a".to_string(), done, Some(RunOutcome::Migrated)),
            ("b".into(), done, Some(RunOutcome::MigratedUnverified)),
            ("c".into(), done, Some(RunOutcome::MigratedUnverified)),
            ("d".into(), done, Some(RunOutcome::RolledBack)),
            ("e".into(), RunPhase::PostcopyFailed, None),
        ]
    );
}

fn a_word_the_journal_does_not_know_is_an_error_not_a_default(f: &Fresh) {
    let j = f.open();
    j.db.batch(
        "INSERT INTO runs (guest, source, target, started, phase, outcome) VALUES
           ('a','s','t',1,'done','teleported');",
    )
    .unwrap();
    let e = j.runs(1).unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&e));
    assert!(chain.contains("teleported"), "{chain}");
}

/// A Ferry process taking leases: instance `name`, process `pid` on `machine`, leases of
/// `lease_ms`.
fn owner(name: &str, machine: &str, pid: u32, lease_ms: u64) -> Owner {
    Owner {
        instance: name.into(),
        machine: machine.into(),
        pid,
        lease: std::time::Duration::from_millis(lease_ms),
    }
}

fn one_guest_one_lock_a_dead_holder_on_this_machine_is_taken_over(f: &Fresh) {
    let (a, b) = (f.open(), f.open());
    let r1 = a.begin_run("g", "h1", "h2", "{}").unwrap();
    let r2 = b.begin_run("g", "h1", "h3", "{}").unwrap();
    let (oa, ob) = (owner("A", "m1", 100, 60_000), owner("B", "m1", 200, 60_000));
    let first = a.lock_guest("g", r1, &oa, |_| true).unwrap();
    assert_eq!(first.took_over, None);
    // A second Ferry (another process, the same journal) is refused with the first's run.
    let e = b.lock_guest("g", r2, &ob, |_| true).unwrap_err();
    let JournalError::Locked { holder, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (holder.run, holder.pid, holder.host.as_str()),
        (r1, 100, "m1")
    );
    assert_eq!(holder.instance.as_deref(), Some("A"));
    assert_eq!(holder.token, Some(first.token));
    assert!(e.to_string().contains(&format!("run #{}", r1.0)), "{e}");
    // Another guest is free.
    b.lock_guest("other", r2, &ob, |_| true).unwrap();
    // A holder on another machine whose lease holds cannot be seen dead: still refused.
    let on_m2 = owner("B", "m2", 200, 60_000);
    assert!(b.lock_guest("g", r2, &on_m2, |_| false).is_err());
    // On this machine, a holder whose process is gone is taken over at once, and said.
    let second = b.lock_guest("g", r2, &ob, |_| false).unwrap();
    let (old, why) = second.took_over.unwrap();
    assert_eq!((old.run, why), (r1, Standing::Gone));
    assert_eq!(b.holder("g").unwrap().map(|h| h.run), Some(r2));
    // Fencing: the first lease no longer holds; unlocking with it gives back nothing.
    assert!(!a.holds("g", first.token).unwrap());
    assert!(b.holds("g", second.token).unwrap());
    a.unlock_guest("g", first.token).unwrap();
    assert!(a.lock_guest("g", r1, &oa, |_| true).is_err());
    b.unlock_guest("g", second.token).unwrap();
    a.lock_guest("g", r1, &oa, |_| true).unwrap();
}

fn an_expired_lease_is_taken_over_and_renewing_keeps_only_ones_own(f: &Fresh) {
    let (a, b) = (f.open(), f.open());
    let r1 = a.begin_run("g", "h1", "h2", "{}").unwrap();
    let r2 = b.begin_run("g", "h1", "h2", "{}").unwrap();
    // A on machine m1 takes a lease that has run out by the time B looks (0 ms).
    let oa = owner("A", "m1", 100, 0);
    let ob = owner("B", "m2", 200, 60_000);
    let first = a.lock_guest("g", r1, &oa, |_| true).unwrap();
    let expired = a.holder("g").unwrap().unwrap();
    assert!(expired.expires_ms.is_some());
    // From m2, A's process cannot be seen; its lease says it is over.
    let second = b.lock_guest("g", r2, &ob, |_| true).unwrap();
    let (old, why) = second.took_over.unwrap();
    assert_eq!(
        (old.run, old.token, why),
        (r1, Some(first.token), Standing::Expired)
    );
    // A comes back and renews: the lock stays B's (A renews only its own leases).
    a.renew(&owner("A", "m1", 100, 60_000)).unwrap();
    let now = b.holder("g").unwrap().unwrap();
    assert_eq!(
        (now.instance.as_deref(), now.token, now.pid),
        (Some("B"), Some(second.token), 200)
    );
    assert!(!a.holds("g", first.token).unwrap());
    // B's renewal moves its expiry on.
    let before = now.expires_ms.unwrap();
    b.renew(&owner("B", "m2", 200, 600_000)).unwrap();
    let after = b.holder("g").unwrap().unwrap().expires_ms.unwrap();
    assert!(after >= before + 500_000, "{before} -> {after}");
    // An evacuation is held the same way: renewed while open, not once finished.
    let e = b
        .begin_evacuation("h1", "qemu+tcp://h1/system", &ob)
        .unwrap();
    let open = b.open_evacuations().unwrap();
    assert_eq!(open[0].instance.as_deref(), Some("B"));
    let e0 = open[0].expires_ms.unwrap();
    b.renew(&owner("B", "m2", 200, 600_000)).unwrap();
    let e1 = b.open_evacuations().unwrap()[0].expires_ms.unwrap();
    assert!(e1 >= e0 + 500_000, "{e0} -> {e1}");
    b.finish_evacuation(e, EvacuationOutcome::Emptied, "")
        .unwrap();
    b.renew(&owner("B", "m2", 200, 6_000_000)).unwrap();
    assert_eq!(b.evacuations().unwrap()[0].expires_ms, Some(e1));
}

/// PostgreSQL restarted under an open journal: a write waits for it (bounded) on a new
/// connection and lands; so does a lock's transaction.
#[test]
fn a_postgresql_restart_is_waited_out_and_the_write_lands() {
    let Some(pg) = crate::testing::Postgres::start().unwrap() else {
        return;
    };
    let url = pg.database("restart").unwrap();
    let j = Journal::open(Path::new(&url)).unwrap();
    let r = j.begin_run("g", "a", "b", "{}").unwrap();
    pg.stop().unwrap();
    std::thread::scope(|s| {
        let back = s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(2));
            pg.start_again()
        });
        // Written while the server is down: lands once it is back.
        j.set_phase(r, RunPhase::Migrate).unwrap();
        back.join().unwrap().unwrap();
    });
    assert_eq!(j.run_row(r).unwrap().unwrap().phase, RunPhase::Migrate);
    // And a transaction, after another restart.
    pg.stop().unwrap();
    pg.start_again().unwrap();
    let lease = j
        .lock_guest("g", r, &owner("A", "m", 1, 60_000), |_| true)
        .unwrap();
    assert!(j.holds("g", lease.token).unwrap());
    j.finish(r, RunOutcome::Migrated, "verified").unwrap();
    assert_eq!(j.outcome(r).unwrap(), Some(RunOutcome::Migrated));
}

#[test]
fn a_lease_stands_by_its_process_here_and_by_its_expiry_anywhere() {
    let alive = |_: u32| true;
    let dead = |_: u32| false;
    // This machine: a gone process holds nothing, whatever its expiry says.
    assert_eq!(
        standing("m1", 1, Some(i64::MAX), 10, "m1", dead),
        Standing::Gone
    );
    assert_eq!(standing("m1", 1, Some(11), 10, "m1", alive), Standing::Live);
    assert_eq!(
        standing("m1", 1, Some(10), 10, "m1", alive),
        Standing::Expired
    );
    // Another machine: only the expiry tells.
    assert_eq!(standing("m2", 1, Some(11), 10, "m1", dead), Standing::Live);
    assert_eq!(
        standing("m2", 1, Some(9), 10, "m1", alive),
        Standing::Expired
    );
    // A lock from before leases: its process here, always live elsewhere.
    assert_eq!(standing("m2", 1, None, 10, "m1", dead), Standing::Live);
    assert_eq!(standing("m1", 1, None, 10, "m1", alive), Standing::Live);
    assert_eq!(standing("m1", 1, None, 10, "m1", dead), Standing::Gone);
}

fn the_journal_survives_reopening(f: &Fresh) {
    {
        let j = f.open();
        let r = j.begin_run("g", "a", "b", "{}").unwrap();
        j.record_created(r, "b", "/x", 1).unwrap();
    }
    let j = f.open();
    assert_eq!(j.leftovers().unwrap().len(), 1);
    let read = Journal::open_existing(&f.path).unwrap();
    assert_eq!(read.runs(5).unwrap().len(), 1);
}

fn an_abort_request_reaches_the_run_from_another_connection(f: &Fresh) {
    let running = f.open();
    let r = running.begin_run("g", "a", "b", "{}").unwrap();
    let other = running.begin_run("h", "a", "b", "{}").unwrap();
    running
        .lock_guest("g", r, &owner("A", "m1", 100, 60_000), |_| true)
        .unwrap();
    assert_eq!(running.run_held_by(100, "m1").unwrap(), Some(r));
    assert_eq!(running.run_held_by(100, "m2").unwrap(), None);
    assert_eq!(running.abort_requested(r).unwrap(), None);
    let aborter = f.open();
    aborter.request_abort(r, 200, "m2").unwrap();
    // Asked again (another terminal): the latest asker.
    aborter.request_abort(r, 300, "m3").unwrap();
    assert_eq!(
        running.abort_requested(r).unwrap(),
        Some((300, "m3".to_string()))
    );
    assert_eq!(running.abort_requested(other).unwrap(), None);
    assert_eq!(aborter.run_row(r).unwrap().unwrap().guest, "g");
    assert!(aborter.run_row(RunId(99)).unwrap().is_none());
}

fn a_pre_seed_is_journaled_by_window_and_its_volumes_change_hands_on_a_resume(f: &Fresh) {
    let j = f.open();
    let a = j.begin_run("g", "s", "t", "{}").unwrap();
    assert_eq!(j.seeded(a, "vdb").unwrap(), 0);
    j.record_seeded(a, "vdb", 64).unwrap();
    j.record_seeded(a, "vdb", 128).unwrap();
    assert_eq!(j.seeded(a, "vdb").unwrap(), 128);
    assert_eq!(j.seeded(a, "vdc").unwrap(), 0);
    j.record_created(a, "s", "/store/ferry-g-vdb-run1.qcow2", 0)
        .unwrap();
    j.record_created(a, "t", "/store/g-vdb.img", 5).unwrap();
    j.record_created(a, "t", "/store/gone", 5).unwrap();
    j.record_deleted(a, "t", "/store/gone").unwrap();
    let b = j.begin_run("g", "s", "t", "{}").unwrap();
    let moved = j.hand_over(a, b).unwrap();
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|c| c.run == b.0));
    assert!(j.created_of(a).unwrap().is_empty());
    assert_eq!(j.created_of(b).unwrap(), moved);
    j.finish(a, RunOutcome::Resumed, "run #2 resumed it")
        .unwrap();
    assert_eq!(j.outcome(a).unwrap(), Some(RunOutcome::Resumed));
    // A resumed run leaves nothing to recover: its volumes are the taker's.
    assert!(j.runs_to_recover(Some(a)).unwrap().is_empty());
}

fn a_journal_of_a_newer_schema_is_refused_and_one_without_a_version_gets_it(f: &Fresh) {
    let j = f.open();
    let version = |j: &Journal| {
        j.db.rows("SELECT version FROM ferry_schema", &[], |r| r.i64(0))
            .unwrap()
    };
    assert_eq!(version(&j), [SCHEMA_VERSION]);
    // A journal from before the version was kept: it gets it on open.
    j.db.batch("DELETE FROM ferry_schema").unwrap();
    drop(j);
    let j = f.open();
    assert_eq!(version(&j), [SCHEMA_VERSION]);
    // A newer Ferry's journal: refused, and left as it is.
    j.db.batch(&format!(
        "UPDATE ferry_schema SET version = {}",
        SCHEMA_VERSION + 1
    ))
    .unwrap();
    let e = Journal::open(&f.path).unwrap_err();
    assert!(
        matches!(e, JournalError::Newer { version, .. } if version == SCHEMA_VERSION + 1),
        "{e}"
    );
    assert_eq!(version(&j), [SCHEMA_VERSION + 1]);
}

/// Many connections race for one guest's lock: exactly one takes it.
fn only_one_of_many_connections_takes_a_guests_lock(f: &Fresh) {
    let j = f.open();
    let runs: Vec<RunId> = (0..8)
        .map(|_| j.begin_run("g", "a", "b", "{}").unwrap())
        .collect();
    let won: Vec<bool> = std::thread::scope(|s| {
        let tries: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let path = f.path.clone();
                s.spawn(move || {
                    let j = Journal::open(&path).unwrap();
                    let o = owner("A", "m", 1000 + i as u32, 60_000);
                    j.lock_guest("g", r, &o, |_| true).is_ok()
                })
            })
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let holder = j.holder("g").unwrap().unwrap();
    assert!(runs.contains(&holder.run));
}

#[test]
fn reading_a_missing_or_foreign_file_creates_nothing() {
    let dir = std::env::temp_dir().join(format!("ferry-journal-ro-{}", std::process::id()));
    let missing = dir.join("sub/j.db");
    let e = Journal::open_existing(&missing).unwrap_err().to_string();
    assert!(e.starts_with("cannot read the journal"), "{e}");
    assert!(e.contains("sub/j.db"), "{e}");
    assert!(!dir.exists(), "a directory was created");
    std::fs::create_dir_all(&dir).unwrap();
    let foreign = dir.join("other.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let e = Journal::open_existing(&foreign).unwrap_err().to_string();
    assert!(
        e.contains("it is not Ferry's journal (no runs table)"),
        "{e}"
    );
    let tables: i64 = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "a table was added to a foreign file");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_journal_from_before_providers_is_upgraded_and_keeps_its_rows() {
    let f = Fresh::sqlite("old");
    std::fs::create_dir_all(f.dir.as_ref().unwrap()).unwrap();
    {
        let db = rusqlite::Connection::open(&f.path).unwrap();
        let old = SCHEMA
            .replace(",\n    provider TEXT", "")
            .replace(
                ",\n    instance TEXT,\n    token INTEGER,\n    expires INTEGER",
                "",
            )
            .replace(",\n    instance TEXT,\n    expires INTEGER", "");
        assert!(!old.contains("expires"));
        db.execute_batch(&old.replace(
            "CREATE TABLE IF NOT EXISTS ferry_schema (\n    version INTEGER NOT NULL\n);",
            "",
        ))
        .unwrap();
        db.execute_batch(
            "INSERT INTO runs (guest, source, target, started, phase) VALUES ('g','a','b',1,'prepare');
             INSERT INTO created (run, host, path, bytes, created) VALUES (1,'b','/old',7,1);
             INSERT INTO locks (guest, run, pid, host, since) VALUES ('old', 1, 7, 'elsewhere', 1);",
        )
        .unwrap();
        assert!(db.prepare("SELECT provider FROM created").is_err());
        assert!(db.prepare("SELECT version FROM ferry_schema").is_err());
    }
    let j = f.open();
    let r = j.begin_run("g", "a", "b", "{}").unwrap();
    j.record_created_by(r, "b", "/dev/ns1", 9, Some("{\"by\":\"hook\"}"))
        .unwrap();
    let left = j.leftovers().unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(
        (left[0].path.as_str(), left[0].provider.as_deref()),
        ("/old", None)
    );
    assert_eq!(left[1].provider.as_deref(), Some("{\"by\":\"hook\"}"));
    // Its locks get leases: the old one (no expiry, on another machine) still holds.
    let o = Owner {
        instance: "A".into(),
        machine: "here".into(),
        pid: 1,
        lease: std::time::Duration::from_secs(60),
    };
    assert!(j.lock_guest("old", r, &o, |_| true).is_err());
    let lease = j.lock_guest("g", r, &o, |_| true).unwrap();
    assert!(j.holds("g", lease.token).unwrap());
}

#[test]
fn a_postgresql_password_is_never_shown() {
    let shown = |s: &str| shown(std::path::Path::new(s));
    assert_eq!(
        shown("postgres://ferry:s3cret@db.example:5432/ferry"),
        "postgres://ferry:***@db.example:5432/ferry"
    );
    assert_eq!(
        shown("postgresql://ferry@%2Ftmp/ferry"),
        "postgresql://ferry@%2Ftmp/ferry"
    );
    assert_eq!(shown("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
    assert_eq!(
        shown("/var/lib/ferry/journal.db"),
        "/var/lib/ferry/journal.db"
    );
    // Nor in an error.
    let e = Journal::open(std::path::Path::new(
        "postgres://ferry:s3cret@%2Fnonexistent-ferry-socket-dir/ferry",
    ))
    .unwrap_err();
    let text = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("ferry:***@%2Fnonexistent"), "{text}");
}
