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

use ferry_journal::{Journal, RunOutcome, RunPhase};

const RUNS: usize = 100;
const PROCESSES: usize = 5;
const THREADS: usize = 10;

/// One migration's writes, as the flow makes them.
fn migration(j: &Journal, i: usize) {
    let guest = format!("g{i}");
    let r = j
        .begin_run(&guest, "qemu+tcp://h1/system", "", "{}")
        .unwrap();
    j.lock_guest(&guest, r, 1, "bench", |_| true).unwrap();
    j.set_target(r, "qemu+tcp://h2/system").unwrap();
    j.set_phase(r, RunPhase::Prepare).unwrap();
    j.record_created(r, "qemu+tcp://h2/system", "/srv/vdb.raw", 64 << 20)
        .unwrap();
    j.record_created(r, "qemu+tcp://h2/system", "/srv/vdc.raw", 64 << 20)
        .unwrap();
    j.set_phase(r, RunPhase::Migrate).unwrap();
    j.set_phase(r, RunPhase::Verify).unwrap();
    j.record_deleted(r, "qemu+tcp://h2/system", "/srv/vdc.raw")
        .unwrap();
    j.finish(r, RunOutcome::Migrated, "migrated").unwrap();
    j.unlock_guest(&guest, r).unwrap();
}
const STATEMENTS: usize = 11;

fn measure(name: &str, path: &Path) {
    let j = Journal::open(path).unwrap();
    // Warm up (connections, caches).
    for i in 0..10 {
        migration(&j, 1_000_000 + i);
    }
    let mut took: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let t = Instant::now();
            migration(&j, i);
            t.elapsed()
        })
        .collect();
    let total: Duration = took.iter().sum();
    took.sort();
    let p = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    println!(
        "| {name} | {:.2} ms | {:.2} ms | {:.0} |",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        (RUNS * STATEMENTS) as f64 / total.as_secs_f64()
    );
}

/// The child: THREADS threads each try to lock guest `race` at `start_ms`; prints the wins.
fn child(path: &str, start_ms: u64, base: usize) {
    let path = PathBuf::from(path);
    let wins: usize = std::thread::scope(|s| {
        let ts: Vec<_> = (0..THREADS)
            .map(|t| {
                let path = path.clone();
                s.spawn(move || {
                    let j = Journal::open(&path).unwrap();
                    let run = j.begin_run("race", "a", "b", "{}").unwrap();
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    // All 50 go at once.
                    std::thread::sleep(Duration::from_millis(start_ms.saturating_sub(now)));
                    let pid = (base * THREADS + t) as u32 + 10;
                    usize::from(j.lock_guest("race", run, pid, "bench", |_| true).is_ok())
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).sum()
    });
    println!("{wins}");
}

fn race(name: &str, path: &Path) {
    // The schema exists before the race.
    Journal::open(path).unwrap();
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(&me)
                .args([
                    "lock-child",
                    path.to_str().unwrap(),
                    &start.to_string(),
                    &p.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every child runs (and waits for the start) before any is waited for.
    let wins: usize = children
        .into_iter()
        .map(|c| {
            String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout)
                .trim()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    let holder = Journal::open(path).unwrap().holder("race").unwrap();
    println!(
        "| {name} | {} | {wins} | run #{} |",
        PROCESSES * THREADS,
        holder.map_or(0, |h| h.run.0)
    );
    assert_eq!(wins, 1, "{name}: {wins} holders of one guest's lock");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("lock-child") {
        child(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let Some(pg) = ferry_journal::testing::Postgres::start_durable() else {
        eprintln!("bench-journal needs PostgreSQL 15 (apt install postgresql-15)");
        std::process::exit(1);
    };
    let dir = std::env::temp_dir().join(format!("ferry-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = dir.join("journal.db");
    let postgres = PathBuf::from(pg.database("bench"));
    println!("A migration's journal writes ({STATEMENTS} statements), {RUNS} migrations:\n");
    println!("| store | p50 per migration | p99 | statements/s |");
    println!("|---|---|---|---|");
    measure("SQLite (file)", &sqlite);
    measure("PostgreSQL 15 (Unix socket)", &postgres);
    println!(
        "\n{} concurrent lock attempts on one guest from {PROCESSES} processes:\n",
        PROCESSES * THREADS
    );
    println!("| store | attempts | holders | holder |");
    println!("|---|---|---|---|");
    race("SQLite (file)", &dir.join("race.db"));
    race("PostgreSQL 15", &PathBuf::from(pg.database("race")));
    let _ = std::fs::remove_dir_all(&dir);
}
