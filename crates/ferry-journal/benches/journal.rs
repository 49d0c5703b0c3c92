//! `make bench-journal`: the journal's two stores measured side by side (not a test: figures).
//!
//! 1. A migration's journal writes — what one `ferry migrate` writes from its lock to its end
//!    (run, lock, phases, two created volumes, one deleted, outcome, unlock: 11 statements) —
//!    repeated, on an SQLite file and on PostgreSQL 15 (a server started here on a Unix
//!    socket, syncing to disk as SQLite does): the time per migration (p50, p99) and the
//!    statements per second.
//! 2. 50 concurrent attempts to lock one guest, from 5 processes of 10 threads each, started
//!    together: how many took it (must be exactly one), on each store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_journal::{Journal, JournalError, Owner, RunOutcome, RunPhase};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const RUNS: usize = 100;
const PROCESSES: usize = 5;
const THREADS: usize = 10;

/// One migration's writes, as the flow makes them.
fn migration(j: &Journal, i: usize) -> std::result::Result<(), JournalError> {
    let guest = format!("g{i}");
    let r = j.begin_run(&guest, "qemu+tcp://h1/system", "", "{}")?;
    let lease = j.lock_guest(&guest, r, &owner(1), |_| true)?;
    j.set_target(r, "qemu+tcp://h2/system")?;
    j.set_phase(r, RunPhase::Prepare)?;
    j.record_created(r, "qemu+tcp://h2/system", "/srv/vdb.raw", 64 << 20)?;
    j.record_created(r, "qemu+tcp://h2/system", "/srv/vdc.raw", 64 << 20)?;
    j.set_phase(r, RunPhase::Migrate)?;
    j.set_phase(r, RunPhase::Verify)?;
    j.record_deleted(r, "qemu+tcp://h2/system", "/srv/vdc.raw")?;
    j.finish(r, RunOutcome::Migrated, "migrated")?;
    j.unlock_guest(&guest, lease.token)
}

/// This benchmark's Ferry, as process `pid`.
fn owner(pid: u32) -> Owner {
    Owner {
        instance: "bench".into(),
        machine: "bench".into(),
        pid,
        lease: Duration::from_secs(60),
    }
}
const STATEMENTS: usize = 11;

fn measure(name: &str, path: &Path) -> Result<()> {
    let j = Journal::open(path)?;
    // Warm up (connections, caches).
    for i in 0..10 {
        migration(&j, 1_000_000 + i)?;
    }
    let mut took = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let t = Instant::now();
        migration(&j, i)?;
        took.push(t.elapsed());
    }
    let total: Duration = took.iter().sum();
    took.sort();
    let p = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    println!(
        "| {name} | {:.2} ms | {:.2} ms | {:.0} |",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        (RUNS * STATEMENTS) as f64 / total.as_secs_f64()
    );
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One racer: lock guest `race` at `start_ms`; whether it took it.
fn attempt(path: &Path, start_ms: u64, pid: u32) -> std::result::Result<bool, JournalError> {
    let j = Journal::open(path)?;
    let run = j.begin_run("race", "a", "b", "{}")?;
    // All 50 go at once.
    std::thread::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms())));
    Ok(j.lock_guest("race", run, &owner(pid), |_| true).is_ok())
}

/// The child: THREADS threads each try to lock guest `race` at `start_ms`; prints the wins.
fn child(path: &Path, start_ms: u64, base: usize) -> Result<()> {
    let wins = std::thread::scope(|s| {
        let ts: Vec<_> = (0..THREADS)
            .map(|t| s.spawn(move || attempt(path, start_ms, (base * THREADS + t) as u32 + 10)))
            .collect();
        ts.into_iter()
            .map(|t| match t.join() {
                Ok(r) => r.map(usize::from).map_err(Into::into),
                Err(_) => Err("a racing thread panicked".into()),
            })
            .sum::<Result<usize>>()
    })?;
    println!("{wins}");
    Ok(())
}

fn race(name: &str, path: &Path) -> Result<()> {
    // The schema exists before the race.
    Journal::open(path)?;
    let start = now_ms() + 1500;
    let me = std::env::current_exe()?;
    let mut children = vec![];
    for p in 0..PROCESSES {
        children.push(
            Command::new(&me)
                .arg("lock-child")
                .arg(path)
                .args([start.to_string(), p.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        );
    }
    // Every child runs (and waits for the start) before any is waited for.
    let mut wins = 0;
    for c in children {
        wins += String::from_utf8_lossy(&c.wait_with_output()?.stdout)
            .trim()
            .parse::<usize>()?;
    }
    let holder = Journal::open(path)?.holder("race")?;
    println!(
        "| {name} | {} | {wins} | run #{} |",
        PROCESSES * THREADS,
        holder.map_or(0, |h| h.run.0)
    );
    if wins != 1 {
        return Err(format!("{name}: {wins} holders of one guest's lock").into());
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, cmd, path, start, base] = args.as_slice() {
        if cmd == "lock-child" {
            return child(Path::new(path), start.parse()?, base.parse()?);
        }
    }
    let Some(pg) = ferry_journal::testing::Postgres::start_durable()? else {
        return Err("bench-journal needs PostgreSQL 15 (apt install postgresql-15)".into());
    };
    let dir = std::env::temp_dir().join(format!("ferry-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite = dir.join("journal.db");
    let postgres = PathBuf::from(pg.database("bench")?);
    println!("A migration's journal writes ({STATEMENTS} statements), {RUNS} migrations:\n");
    println!("| store | p50 per migration | p99 | statements/s |");
    println!("|---|---|---|---|");
    measure("SQLite (file)", &sqlite)?;
    measure("PostgreSQL 15 (Unix socket)", &postgres)?;
    println!(
        "\n{} concurrent lock attempts on one guest from {PROCESSES} processes:\n",
        PROCESSES * THREADS
    );
    println!("| store | attempts | holders | holder |");
    println!("|---|---|---|---|");
    race("SQLite (file)", &dir.join("race.db"))?;
    race("PostgreSQL 15", &PathBuf::from(pg.database("race")?))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
