//! The journal: what Ferry did, durably, so that a rollback deletes exactly what Ferry created —
//! even after Ferry itself was killed mid-run (`ferry recover` reads the leftovers from here).
//!
//! Two stores behind one interface: an SQLite file (the default, `--journal PATH`) or a
//! PostgreSQL database shared by every Ferry of a fleet (`--journal postgres://…`). The same
//! schema, versioned, and the same queries on both.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod db;
mod vocab;
use db::{Db, Get, Val};
pub use vocab::{EvacuationOutcome, RunOutcome, RunPhase, UnknownWord};

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read or write the journal")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot read or write the journal (PostgreSQL)")]
    Postgres(#[from] postgres::Error),
    #[error("cannot read the journal")]
    Word(#[from] UnknownWord),
    #[error("cannot read the journal {path}: {why}")]
    Read { path: String, why: String },
    #[error(
        "the journal {path} was written by a newer Ferry (its schema is version {version}; this \
         Ferry knows up to {SCHEMA_VERSION}): use that Ferry, or another journal"
    )]
    Newer { path: String, version: i64 },
    #[error(
        "{guest} is being migrated by run #{} ({}): one migration per guest; wait for it, or \
         stop it (`ferry abort {guest}`)", .holder.run, .holder.who()
    )]
    Locked { guest: String, holder: Box<Holder> },
    #[error("there is no run #{0} in the journal (`ferry history` lists them)")]
    NoRun(i64),
}

/// A run's id in the journal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One run, as listed by `ferry history`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunRow {
    pub id: RunId,
    pub guest: String,
    pub source: String,
    pub target: String,
    pub started: i64,
    pub finished: Option<i64>,
    pub phase: RunPhase,
    pub outcome: Option<RunOutcome>,
    pub message: Option<String>,
}

/// An evacuation of a host, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EvacuationRow {
    pub id: i64,
    pub host: String,
    pub uri: String,
    pub pid: u32,
    /// The machine the evacuating Ferry runs on.
    pub machine: String,
    pub started: i64,
    pub finished: Option<i64>,
    pub outcome: Option<EvacuationOutcome>,
    pub message: Option<String>,
    /// The evacuating Ferry's instance name (none before leases were kept).
    #[serde(default)]
    pub instance: Option<String>,
    /// Until when its lease holds the host draining, in ms since the epoch (the store's
    /// clock); renewed while its Ferry lives.
    #[serde(default)]
    pub expires_ms: Option<i64>,
}

/// A volume Ferry created and has not deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Created {
    pub run: i64,
    pub host: String,
    pub path: String,
    pub bytes: u64,
    /// Who created it, as the flow recorded it (JSON); `None`: libvirt's storage API.
    pub provider: Option<String>,
}

/// The journal: an SQLite file, or a PostgreSQL database.
#[derive(Debug)]
pub struct Journal {
    db: Db,
    /// Where it was opened from (none in memory): a second connection for a thread of its own.
    location: Option<std::path::PathBuf>,
    /// This process's number for it (what tells journals in memory apart).
    serial: u64,
}

/// The next journal's [`Journal::serial`].
fn next_serial() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The schema's version: 1 was every journal before the version was kept (upgraded on open),
/// 2 kept it, 3 holds locks and evacuations by leases (instance, token, expiry). A journal of a higher version is refused: a newer Ferry wrote it.
pub const SCHEMA_VERSION: i64 = 3;

/// The schema, in SQLite's words; [`pg_schema`] says it in PostgreSQL's.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guest TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    started INTEGER NOT NULL,
    finished INTEGER,
    phase TEXT NOT NULL,
    outcome TEXT,
    message TEXT,
    plan TEXT
);
CREATE TABLE IF NOT EXISTS created (
    run INTEGER NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER,
    provider TEXT
);
CREATE TABLE IF NOT EXISTS released (
    run INTEGER NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    released INTEGER NOT NULL,
    through TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aborts (
    run INTEGER PRIMARY KEY,
    requested INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evacuations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    uri TEXT NOT NULL,
    pid INTEGER NOT NULL,
    machine TEXT NOT NULL,
    started INTEGER NOT NULL,
    finished INTEGER,
    outcome TEXT,
    message TEXT,
    instance TEXT,
    expires INTEGER
);
CREATE TABLE IF NOT EXISTS evacuation_runs (
    evacuation INTEGER NOT NULL REFERENCES evacuations(id),
    guest TEXT NOT NULL,
    run INTEGER NOT NULL REFERENCES runs(id)
);
CREATE TABLE IF NOT EXISTS seeded (
    run INTEGER NOT NULL REFERENCES runs(id),
    disk TEXT NOT NULL,
    upto INTEGER NOT NULL,
    PRIMARY KEY (run, disk)
);
CREATE TABLE IF NOT EXISTS locks (
    guest TEXT PRIMARY KEY,
    run INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since INTEGER NOT NULL,
    instance TEXT,
    token INTEGER,
    expires INTEGER
);
CREATE TABLE IF NOT EXISTS ferry_schema (
    version INTEGER NOT NULL
);
";

/// The schema in PostgreSQL's words: 64-bit integers, sequences for ids, and an explicit
/// order for an evacuation's runs (SQLite's `rowid`).
fn pg_schema() -> String {
    SCHEMA
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace(
            "CREATE TABLE IF NOT EXISTS evacuation_runs (\n",
            "CREATE TABLE IF NOT EXISTS evacuation_runs (\n    n BIGSERIAL,\n",
        )
}

/// Who holds a guest's lock: a run of a Ferry instance, by a lease it renews while it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub run: RunId,
    pub pid: u32,
    /// The machine the holding Ferry runs on.
    pub host: String,
    /// Seconds since the epoch.
    pub since: i64,
    /// The holding Ferry's instance name (none in a lock taken before leases were kept).
    pub instance: Option<String>,
    /// The lease's fencing token: each taking of the lock has its own, so the Ferry that took
    /// it can tell it still holds it.
    pub token: Option<i64>,
    /// Until when the lease holds, in ms since the epoch (the store's clock).
    pub expires_ms: Option<i64>,
}

impl Holder {
    /// The holder for a person: `instance NAME, pid P on MACHINE`.
    pub fn who(&self) -> String {
        match &self.instance {
            Some(i) => format!("instance {i}, ferry pid {} on {}", self.pid, self.host),
            None => format!("ferry pid {} on {}", self.pid, self.host),
        }
    }

    /// Where this holder stands at `now_ms`, seen from `me` (see [`standing`]).
    pub fn standing(&self, now_ms: i64, me: &str, alive: impl Fn(u32) -> bool) -> Standing {
        standing(&self.host, self.pid, self.expires_ms, now_ms, me, alive)
    }
}

/// Where a lease's holder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// It holds: never taken from it.
    Live,
    /// It was not renewed in time (its Ferry died, hangs, or lost the journal): taken over.
    Expired,
    /// Its process on this machine is gone: taken over at once.
    Gone,
}

/// The one rule for a lease held by process `pid` on `machine` until `expires_ms`, judged at
/// `now_ms` by a Ferry on machine `me` (`alive` says whether a pid of this machine is a
/// running Ferry): a process of this machine that is gone holds nothing; a lease past its
/// expiry holds nothing; any other holds. A lock written before leases were kept (no expiry)
/// holds while its process lives when it is on this machine, and always when it is on another,
/// whose processes Ferry cannot see.
pub fn standing(
    machine: &str,
    pid: u32,
    expires_ms: Option<i64>,
    now_ms: i64,
    me: &str,
    alive: impl Fn(u32) -> bool,
) -> Standing {
    if machine == me && !alive(pid) {
        Standing::Gone
    } else if expires_ms.is_some_and(|e| e <= now_ms) {
        Standing::Expired
    } else {
        Standing::Live
    }
}

/// Who takes leases: a Ferry instance (a name the operator gives, the machine's by default),
/// as a process on a machine, and how long its leases hold unless renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
    pub machine: String,
    pub pid: u32,
    pub lease: std::time::Duration,
}

/// A lock taken: its fencing token, and the holder it was taken over from, if any (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: i64,
    pub took_over: Option<(Holder, Standing)>,
}

/// A fencing token no other taking of a lock has: random (std's hasher keys are), positive.
fn new_token(guest: &str, pid: u32) -> i64 {
    use std::hash::BuildHasher;
    let h =
        std::collections::hash_map::RandomState::new().hash_one((guest, pid, SystemTime::now()));
    (h >> 1) as i64
}

/// A duration in ms as the journal keeps it.
fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The columns of [`Holder`], in the order [`holder_row`] reads them.
const HOLDER_COLUMNS: &str = "run, pid, host, since, instance, token, expires";

/// A [`Holder`] from the row's columns from `at` on.
fn holder_row(r: &dyn Get, at: usize) -> Result<Holder, JournalError> {
    Ok(Holder {
        run: RunId(r.i64(at)?),
        pid: pid_of(r.i64(at + 1)?),
        host: r.text(at + 2)?,
        since: r.i64(at + 3)?,
        instance: r.opt_text(at + 4)?,
        token: r.opt_i64(at + 5)?,
        expires_ms: r.opt_i64(at + 6)?,
    })
}

/// The columns of [`RunRow`], in the order [`run_row`] reads them.
const RUN_COLUMNS: &str = "id, guest, source, target, started, finished, phase, outcome, message";

fn run_row(r: &dyn Get) -> Result<RunRow, JournalError> {
    let message = r.opt_text(8)?;
    let outcome: Option<RunOutcome> = r.opt_text(7)?.map(|o| o.parse()).transpose()?;
    Ok(RunRow {
        id: RunId(r.i64(0)?),
        guest: r.text(1)?,
        source: r.text(2)?,
        target: r.text(3)?,
        started: r.i64(4)?,
        finished: r.opt_i64(5)?,
        phase: r.text(6)?.parse()?,
        outcome: outcome.map(|o| legacy_outcome(o, message.as_deref())),
        message,
    })
}

/// A pid as the journal keeps it (an integer column), read back.
fn pid_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Journals written before [`RunOutcome::MigratedUnverified`] existed recorded a failed
/// verification as `migrated`, with the problems in the message (`verify: …` from the flow,
/// `…, but verify: …` from `ferry recover`): such a run reads as unverified, so nothing of its
/// source is ever released.
fn legacy_outcome(o: RunOutcome, message: Option<&str>) -> RunOutcome {
    let unverified =
        message.is_some_and(|m| m.starts_with("verify: ") || m.contains(", but verify: "));
    if o == RunOutcome::Migrated && unverified {
        RunOutcome::MigratedUnverified
    } else {
        o
    }
}

/// The SQL list of the outcomes whose guest runs on the target (its created volumes are its
/// disks, never leftovers).
fn on_target_sql() -> String {
    let words: Vec<String> = RunOutcome::ALL
        .iter()
        .filter(|o| o.guest_on_target())
        .map(|o| format!("'{}'", o.as_str()))
        .collect();
    format!("({})", words.join(", "))
}

/// The PostgreSQL URL `path` is, if it is one (`postgres://` or `postgresql://`).
pub fn postgres_url(path: &Path) -> Option<&str> {
    path.to_str()
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// The journal's location for a person: a path, or a URL without its password.
pub fn shown(path: &Path) -> String {
    let Some(url) = postgres_url(path) else {
        return path.display().to_string();
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    // userinfo ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// How long opening a connection to a PostgreSQL journal may take.
const PG_CONNECT: std::time::Duration = std::time::Duration::from_secs(10);

fn connect_pg(url: &str, shown: &str) -> Result<Db, JournalError> {
    use std::str::FromStr;
    let open_err = |source: postgres::Error| JournalError::Open {
        path: shown.to_string(),
        source: Box::new(source),
    };
    let mut config = postgres::Config::from_str(url).map_err(open_err)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_CONNECT);
    }
    // A server that vanishes mid-query is noticed, not waited on for good.
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(30));
    Ok(Db::Postgres(Box::new(
        db::Pg::connect(config).map_err(open_err)?,
    )))
}

/// Add `column` (`NAME TYPE`, in SQLite's words) to `table` unless it has it.
fn add_column(db: &Db, table: &str, column: &str) -> Result<(), JournalError> {
    match db {
        Db::Sqlite(c) => {
            let name = column.split(' ').next().unwrap_or(column);
            if c.prepare(&format!("SELECT {name} FROM {table} LIMIT 0"))
                .is_err()
            {
                db.batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
            }
            Ok(())
        }
        Db::Postgres(_) => db.batch(&format!(
            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {}",
            column.replace("INTEGER", "BIGINT")
        )),
    }
}

/// Journals written before a column existed get it; the version is kept from now on. A
/// journal a newer Ferry wrote is refused.
fn upgrade(db: &Db, shown: &str) -> Result<(), JournalError> {
    for (table, column) in [
        ("created", "provider TEXT"),
        ("locks", "instance TEXT"),
        ("locks", "token INTEGER"),
        ("locks", "expires INTEGER"),
        ("evacuations", "instance TEXT"),
        ("evacuations", "expires INTEGER"),
    ] {
        add_column(db, table, column)?;
    }
    let version = db.row("SELECT max(version) FROM ferry_schema", &[], |r| {
        r.opt_i64(0)
    })?;
    match version.flatten() {
        Some(v) if v > SCHEMA_VERSION => Err(JournalError::Newer {
            path: shown.to_string(),
            version: v,
        }),
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        _ => {
            db.exec("DELETE FROM ferry_schema", &[])?;
            db.exec(
                "INSERT INTO ferry_schema (version) VALUES (?1)",
                &[SCHEMA_VERSION.into()],
            )?;
            Ok(())
        }
    }
}

impl Journal {
    /// Open (or create) the journal at `path`: an SQLite file, or a PostgreSQL URL
    /// (`postgres://user@host/db`), whose schema is made or upgraded on open.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let shown = shown(path);
        if let Some(url) = postgres_url(path) {
            let db = connect_pg(url, &shown)?;
            // Two Ferry instances opening a new database at once: one makes the schema.
            db.batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7340041); {} ",
                pg_schema()
            ))?;
            let upgraded = upgrade(&db, &shown);
            match upgraded {
                Ok(()) => db.batch("COMMIT")?,
                Err(e) => {
                    let _ = db.batch("ROLLBACK");
                    return Err(e);
                }
            }
            return Ok(Self {
                db,
                location: Some(path.to_path_buf()),
                serial: next_serial(),
            });
        }
        let open_err = |source: rusqlite::Error| JournalError::Open {
            path: shown.clone(),
            source: Box::new(source),
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let c = rusqlite::Connection::open(path).map_err(open_err)?;
        c.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        c.execute_batch(SCHEMA).map_err(open_err)?;
        let db = Db::Sqlite(c);
        upgrade(&db, &shown)?;
        Ok(Self {
            db,
            location: Some(path.to_path_buf()),
            serial: next_serial(),
        })
    }

    /// Open an existing journal to read it: nothing is created — no directory, no file, no
    /// table — and a file that is not Ferry's journal is refused. (It is opened read-write so
    /// that SQLite can roll back a transaction a killed Ferry left unfinished.)
    pub fn open_existing(path: &Path) -> Result<Self, JournalError> {
        let read_err = |why: String| JournalError::Read {
            path: shown(path),
            why,
        };
        if let Some(url) = postgres_url(path) {
            let db = connect_pg(url, &shown(path))?;
            for table in ["runs", "created"] {
                if !db.has_table(table)? {
                    return Err(read_err(format!(
                        "it is not Ferry's journal (no {table} table)"
                    )));
                }
            }
            return Ok(Self {
                db,
                location: Some(path.to_path_buf()),
                serial: next_serial(),
            });
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => {
                return Err(read_err(
                    "it is a directory: give the journal's file (e.g. journal.db in it)".into(),
                ))
            }
            Ok(_) => return Err(read_err("it is not a regular file".into())),
            Err(_) => {
                return Err(read_err(
                    "there is no such file (Ferry writes it at its first migration; give \
                     another with --journal)"
                        .into(),
                ))
            }
        }
        let db = rusqlite::Connection::open_with_flags(
            path,
            // Read-write without CREATE: nothing is created, but a transaction a killed Ferry
            // left unfinished (a hot rollback journal) is rolled back instead of making every
            // read fail with "attempt to write a readonly database".
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| read_err(e.to_string()))?;
        // A writer (a running Ferry) may hold the lock for a moment.
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| read_err(e.to_string()))?;
        for table in ["runs", "created"] {
            db.prepare(&format!("SELECT * FROM {table} LIMIT 0"))
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::DatabaseBusy
                            || f.code == rusqlite::ErrorCode::DatabaseLocked =>
                    {
                        read_err(format!("it is busy ({e}); try again"))
                    }
                    rusqlite::Error::SqliteFailure(..)
                        if e.to_string().starts_with("no such table") =>
                    {
                        read_err(format!("it is not Ferry's journal (no {table} table)"))
                    }
                    _ => read_err(format!("it cannot be read as Ferry's journal ({e})")),
                })?;
        }
        Ok(Self {
            db: Db::Sqlite(db),
            location: Some(path.to_path_buf()),
            serial: next_serial(),
        })
    }

    /// A journal that lives only as long as this value (tests, `--dry-run`).
    pub fn in_memory() -> Result<Self, JournalError> {
        let c = rusqlite::Connection::open_in_memory()?;
        c.execute_batch(SCHEMA)?;
        Ok(Self {
            db: Db::Sqlite(c),
            location: None,
            serial: next_serial(),
        })
    }

    /// Where the journal was opened from (`None` in memory).
    pub fn location(&self) -> Option<&Path> {
        self.location.as_deref()
    }

    /// Which journal this is: the same for every connection to one file or database, another
    /// for each journal in memory.
    pub fn identity(&self) -> String {
        match &self.location {
            Some(p) => p.display().to_string(),
            None => format!("memory:{}", self.serial),
        }
    }

    /// The journal's clock, in ms since the epoch: the PostgreSQL server's for a shared
    /// journal, so that every instance judges leases by one clock.
    pub fn now_ms(&self) -> Result<i64, JournalError> {
        self.db.now_ms()
    }

    pub fn begin_run(
        &self,
        guest: &str,
        source: &str,
        target: &str,
        plan_json: &str,
    ) -> Result<RunId, JournalError> {
        let id = self.db.row(
            "INSERT INTO runs (guest, source, target, started, phase, plan) \
             VALUES (?1, ?2, ?3, ?4, 'preflight', ?5) RETURNING id",
            &[
                guest.into(),
                source.into(),
                target.into(),
                now().into(),
                plan_json.into(),
            ],
            |r| r.i64(0),
        )?;
        Ok(RunId(id.unwrap_or(0)))
    }

    /// Set a run's target (a run begun before its target was chosen).
    pub fn set_target(&self, run: RunId, target: &str) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE runs SET target = ?1 WHERE id = ?2",
            &[target.into(), run.0.into()],
        )?;
        Ok(())
    }

    /// Replace a run's plan (a run begun before its plan was made).
    pub fn set_plan(&self, run: RunId, plan_json: &str) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE runs SET plan = ?1 WHERE id = ?2",
            &[plan_json.into(), run.0.into()],
        )?;
        Ok(())
    }

    pub fn set_phase(&self, run: RunId, phase: RunPhase) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE runs SET phase = ?1 WHERE id = ?2",
            &[phase.as_str().into(), run.0.into()],
        )?;
        Ok(())
    }

    /// Record a volume Ferry created: written before Ferry goes on, so a crash leaves a trace.
    pub fn record_created(
        &self,
        run: RunId,
        host: &str,
        path: &str,
        bytes: u64,
    ) -> Result<(), JournalError> {
        self.record_created_by(run, host, path, bytes, None)
    }

    /// Record a volume made by someone other than libvirt's storage API (`provider`: how to
    /// delete it, as JSON the flow understands).
    pub fn record_created_by(
        &self,
        run: RunId,
        host: &str,
        path: &str,
        bytes: u64,
        provider: Option<&str>,
    ) -> Result<(), JournalError> {
        self.db.exec(
            "INSERT INTO created (run, host, path, bytes, created, provider) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[
                run.0.into(),
                host.into(),
                path.into(),
                (bytes as i64).into(),
                now().into(),
                provider.into(),
            ],
        )?;
        Ok(())
    }

    pub fn record_deleted(&self, run: RunId, host: &str, path: &str) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE created SET deleted = ?1 \
             WHERE run = ?2 AND host = ?3 AND path = ?4 AND deleted IS NULL",
            &[now().into(), run.0.into(), host.into(), path.into()],
        )?;
        Ok(())
    }

    /// A pre-seeded disk's copy is on the target up to byte `upto` (a window ended: its
    /// streams finished). Written after each window, so a resumed copy starts there.
    pub fn record_seeded(&self, run: RunId, disk: &str, upto: u64) -> Result<(), JournalError> {
        self.db.exec(
            "INSERT INTO seeded (run, disk, upto) VALUES (?1, ?2, ?3) \
             ON CONFLICT (run, disk) DO UPDATE SET upto = excluded.upto",
            &[run.0.into(), disk.into(), (upto as i64).into()],
        )?;
        Ok(())
    }

    /// How far run `run` copied disk `disk` (0 when it never finished a window).
    pub fn seeded(&self, run: RunId, disk: &str) -> Result<u64, JournalError> {
        let v = self.db.row(
            "SELECT upto FROM seeded WHERE run = ?1 AND disk = ?2",
            &[run.0.into(), disk.into()],
            |r| r.i64(0),
        )?;
        Ok(v.map_or(0, |v| v.max(0) as u64))
    }

    /// Run `to` takes over what run `from` created and has not deleted (a resumed pre-seed):
    /// from now on those volumes are `to`'s, deleted by its rollback or kept with its guest.
    /// Returns them.
    pub fn hand_over(&self, from: RunId, to: RunId) -> Result<Vec<Created>, JournalError> {
        let moved = self.created_of(from)?;
        self.db.exec(
            "UPDATE created SET run = ?1 WHERE run = ?2 AND deleted IS NULL",
            &[to.0.into(), from.0.into()],
        )?;
        Ok(moved
            .into_iter()
            .map(|c| Created { run: to.0, ..c })
            .collect())
    }

    /// End a run.
    pub fn finish(
        &self,
        run: RunId,
        outcome: RunOutcome,
        message: &str,
    ) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE runs SET finished = ?1, outcome = ?2, message = ?3, phase = ?4 WHERE id = ?5",
            &[
                now().into(),
                outcome.as_str().into(),
                message.into(),
                RunPhase::Done.as_str().into(),
                run.0.into(),
            ],
        )?;
        Ok(())
    }

    /// The latest runs, newest first.
    pub fn runs(&self, limit: u32) -> Result<Vec<RunRow>, JournalError> {
        self.runs_before(None, limit)
    }

    /// A page of runs, newest first: at most `limit`, older than `before` when given.
    pub fn runs_before(
        &self,
        before: Option<RunId>,
        limit: u32,
    ) -> Result<Vec<RunRow>, JournalError> {
        self.db.rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (CAST(?1 AS BIGINT) IS NULL OR id < ?1) \
                 ORDER BY id DESC LIMIT ?2"
            ),
            &[before.map(|r| r.0).into(), i64::from(limit).into()],
            run_row,
        )
    }

    /// Runs `ferry recover` looks at: unfinished ones, and ended ones that did not migrate but
    /// left volumes undeleted; only `only` when given. Oldest first.
    pub fn runs_to_recover(&self, only: Option<RunId>) -> Result<Vec<RunRow>, JournalError> {
        self.db.rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs r WHERE (CAST(?1 AS BIGINT) IS NULL OR id = ?1) \
                 AND (outcome IS NULL
                   OR (outcome NOT IN {on_target} AND EXISTS
                       (SELECT 1 FROM created c WHERE c.run = r.id AND c.deleted IS NULL)))
                 ORDER BY id",
                on_target = on_target_sql()
            ),
            &[only.map(|r| r.0).into()],
            run_row,
        )
    }

    /// The volumes `run` created and has not deleted.
    pub fn created_of(&self, run: RunId) -> Result<Vec<Created>, JournalError> {
        self.leftovers_where("c.deleted IS NULL AND c.run = ?1", &[run.0.into()])
    }

    /// The plan (JSON) a run recorded, if it got that far.
    pub fn plan_of(&self, run: RunId) -> Result<Option<String>, JournalError> {
        Ok(self
            .db
            .row(
                "SELECT plan FROM runs WHERE id = ?1",
                &[run.0.into()],
                |r| r.opt_text(0),
            )?
            .flatten()
            .filter(|p| p != "{}"))
    }

    /// Who holds `guest`'s lock.
    pub fn holder(&self, guest: &str) -> Result<Option<Holder>, JournalError> {
        self.db.row(
            &format!("SELECT {HOLDER_COLUMNS} FROM locks WHERE guest = ?1"),
            &[guest.into()],
            |r| holder_row(r, 0),
        )
    }

    /// Unfinished runs that hold their guest's lock, with the holder (whose lease the caller
    /// judges): the migrations Ferry instances sharing the journal are running.
    pub fn held_runs(&self) -> Result<Vec<(RunRow, Holder)>, JournalError> {
        let run_cols = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let lock_cols = HOLDER_COLUMNS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.db.rows(
            &format!(
                "SELECT {run_cols}, {lock_cols} FROM runs r \
                 JOIN locks l ON l.run = r.id AND l.guest = r.guest \
                 WHERE r.outcome IS NULL ORDER BY r.id"
            ),
            &[],
            |r| Ok((run_row(r)?, holder_row(r, 9)?)),
        )
    }

    fn leftovers_where(&self, cond: &str, p: &[Val<'_>]) -> Result<Vec<Created>, JournalError> {
        self.db.rows(
            &format!(
                "SELECT c.run, c.host, c.path, c.bytes, c.provider FROM created c \
                 JOIN runs r ON r.id = c.run WHERE {cond} ORDER BY c.run, c.path"
            ),
            p,
            |r| {
                Ok(Created {
                    run: r.i64(0)?,
                    host: r.text(1)?,
                    path: r.text(2)?,
                    bytes: r.i64(3)?.max(0) as u64,
                    provider: r.opt_text(4)?,
                })
            },
        )
    }

    /// Volumes created by runs that did not end in a migration and were never deleted.
    pub fn leftovers(&self) -> Result<Vec<Created>, JournalError> {
        self.leftovers_where(
            &format!(
                "c.deleted IS NULL AND (r.outcome IS NULL OR r.outcome NOT IN {})",
                on_target_sql()
            ),
            &[],
        )
    }

    /// Take `guest`'s lock for `run`, for `owner`, by a lease of `owner.lease` (renewed by
    /// [`Journal::renew`]). A holder that does not stand ([`standing`]: its process on this
    /// machine is gone, or its lease expired) is taken over: it is returned with why, to be
    /// said. A live one refuses with [`JournalError::Locked`].
    pub fn lock_guest(
        &self,
        guest: &str,
        run: RunId,
        owner: &Owner,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Lease, JournalError> {
        let token = new_token(guest, owner.pid);
        self.db.exclusive(|| {
            let now = self.db.now_ms()?;
            let took_over = match self.holder(guest)? {
                None => None,
                Some(h) => match h.standing(now, &owner.machine, &alive) {
                    Standing::Live => {
                        return Err(JournalError::Locked {
                            guest: guest.to_string(),
                            holder: Box::new(h),
                        })
                    }
                    why => Some((h, why)),
                },
            };
            self.db.exec(
                "INSERT INTO locks (guest, run, pid, host, since, instance, token, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (guest) DO UPDATE SET run = excluded.run, pid = excluded.pid, \
                 host = excluded.host, since = excluded.since, instance = excluded.instance, \
                 token = excluded.token, expires = excluded.expires",
                &[
                    guest.into(),
                    run.0.into(),
                    i64::from(owner.pid).into(),
                    owner.machine.as_str().into(),
                    (now / 1000).into(),
                    owner.instance.as_str().into(),
                    token.into(),
                    now.saturating_add(ms(owner.lease)).into(),
                ],
            )?;
            Ok(Lease {
                token,
                took_over: took_over.clone(),
            })
        })
    }

    /// Renew every lease `owner`'s process holds (its guests' locks, its evacuations' draining
    /// hosts) for another `owner.lease`. A lock another Ferry took over is not this process's
    /// any more, and stays the other's.
    pub fn renew(&self, owner: &Owner) -> Result<(), JournalError> {
        let until = self.db.now_ms()?.saturating_add(ms(owner.lease));
        let (machine, pid) = (owner.machine.as_str(), i64::from(owner.pid));
        self.db.exec(
            "UPDATE locks SET expires = ?1 WHERE host = ?2 AND pid = ?3",
            &[until.into(), machine.into(), pid.into()],
        )?;
        self.db.exec(
            "UPDATE evacuations SET expires = ?1 WHERE machine = ?2 AND pid = ?3 \
             AND finished IS NULL",
            &[until.into(), machine.into(), pid.into()],
        )?;
        Ok(())
    }

    /// Whether the lease with `token` still holds `guest`'s lock (fencing: a Ferry whose lease
    /// was taken over stops touching the guest).
    pub fn holds(&self, guest: &str, token: i64) -> Result<bool, JournalError> {
        Ok(self
            .db
            .row(
                "SELECT run FROM locks WHERE guest = ?1 AND token = ?2",
                &[guest.into(), token.into()],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Give `guest`'s lock back (only the lease with `token`: never one another Ferry took
    /// over).
    pub fn unlock_guest(&self, guest: &str, token: i64) -> Result<(), JournalError> {
        self.db.exec(
            "DELETE FROM locks WHERE guest = ?1 AND token = ?2",
            &[guest.into(), token.into()],
        )?;
        Ok(())
    }

    /// Record that the source's copy at `path` on `host` was released after `run` migrated.
    pub fn record_released(
        &self,
        run: RunId,
        host: &str,
        path: &str,
        through: &str,
    ) -> Result<(), JournalError> {
        self.db.exec(
            "INSERT INTO released (run, host, path, released, through) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                run.0.into(),
                host.into(),
                path.into(),
                now().into(),
                through.into(),
            ],
        )?;
        Ok(())
    }

    /// Whether `run` released the source's copy at `path`.
    pub fn was_released(&self, run: RunId, path: &str) -> Result<bool, JournalError> {
        Ok(self
            .db
            .row(
                "SELECT run FROM released WHERE run = ?1 AND path = ?2",
                &[run.0.into(), path.into()],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Ask the Ferry running `run` to abort it (`ferry abort`), from process `pid` on `host`.
    pub fn request_abort(&self, run: RunId, pid: u32, host: &str) -> Result<(), JournalError> {
        self.db.exec(
            "INSERT INTO aborts (run, requested, pid, host) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (run) DO UPDATE SET requested = excluded.requested, \
             pid = excluded.pid, host = excluded.host",
            &[
                run.0.into(),
                now().into(),
                i64::from(pid).into(),
                host.into(),
            ],
        )?;
        Ok(())
    }

    /// Who asked to abort `run`, if anyone did: (pid, machine).
    pub fn abort_requested(&self, run: RunId) -> Result<Option<(u32, String)>, JournalError> {
        self.db.row(
            "SELECT pid, host FROM aborts WHERE run = ?1",
            &[run.0.into()],
            |r| Ok((pid_of(r.i64(0)?), r.text(1)?)),
        )
    }

    /// The run `pid` on machine `host` holds a lock for, if any.
    pub fn run_held_by(&self, pid: u32, host: &str) -> Result<Option<RunId>, JournalError> {
        self.db.row(
            "SELECT run FROM locks WHERE pid = ?1 AND host = ?2",
            &[i64::from(pid).into(), host.into()],
            |r| r.i64(0).map(RunId),
        )
    }

    /// One run.
    pub fn run_row(&self, run: RunId) -> Result<Option<RunRow>, JournalError> {
        self.db.row(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            &[run.0.into()],
            run_row,
        )
    }

    /// Begin the evacuation of `host`: from now until it ends, the host is draining.
    /// The host is held draining by `owner`'s lease, renewed as its locks are.
    pub fn begin_evacuation(
        &self,
        host: &str,
        uri: &str,
        owner: &Owner,
    ) -> Result<i64, JournalError> {
        let until = self.db.now_ms()?.saturating_add(ms(owner.lease));
        let id = self.db.row(
            "INSERT INTO evacuations (host, uri, pid, machine, started, instance, expires) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            &[
                host.into(),
                uri.into(),
                i64::from(owner.pid).into(),
                owner.machine.as_str().into(),
                now().into(),
                owner.instance.as_str().into(),
                until.into(),
            ],
            |r| r.i64(0),
        )?;
        Ok(id.unwrap_or(0))
    }

    /// Record that `run` migrated `guest` for evacuation `evacuation`.
    pub fn add_evacuation_run(
        &self,
        evacuation: i64,
        guest: &str,
        run: RunId,
    ) -> Result<(), JournalError> {
        self.db.exec(
            "INSERT INTO evacuation_runs (evacuation, guest, run) VALUES (?1, ?2, ?3)",
            &[evacuation.into(), guest.into(), run.0.into()],
        )?;
        Ok(())
    }

    /// End an evacuation.
    pub fn finish_evacuation(
        &self,
        evacuation: i64,
        outcome: EvacuationOutcome,
        message: &str,
    ) -> Result<(), JournalError> {
        self.db.exec(
            "UPDATE evacuations SET finished = ?1, outcome = ?2, message = ?3 WHERE id = ?4",
            &[
                now().into(),
                outcome.as_str().into(),
                message.into(),
                evacuation.into(),
            ],
        )?;
        Ok(())
    }

    /// Evacuations not ended (running, or cut short), oldest first.
    pub fn open_evacuations(&self) -> Result<Vec<EvacuationRow>, JournalError> {
        self.evacuations_where("finished IS NULL")
    }

    /// Every evacuation, newest first.
    pub fn evacuations(&self) -> Result<Vec<EvacuationRow>, JournalError> {
        let mut all = self.evacuations_where("TRUE")?;
        all.reverse();
        Ok(all)
    }

    fn evacuations_where(&self, cond: &str) -> Result<Vec<EvacuationRow>, JournalError> {
        self.db.rows(
            &format!(
                "SELECT id, host, uri, pid, machine, started, finished, outcome, message,
                 instance, expires FROM evacuations WHERE {cond} ORDER BY id"
            ),
            &[],
            |r| {
                Ok(EvacuationRow {
                    id: r.i64(0)?,
                    host: r.text(1)?,
                    uri: r.text(2)?,
                    pid: pid_of(r.i64(3)?),
                    machine: r.text(4)?,
                    started: r.i64(5)?,
                    finished: r.opt_i64(6)?,
                    outcome: r.opt_text(7)?.map(|o| o.parse()).transpose()?,
                    message: r.opt_text(8)?,
                    instance: r.opt_text(9)?,
                    expires_ms: r.opt_i64(10)?,
                })
            },
        )
    }

    /// The runs of an evacuation: (guest, run), in the order they were added.
    pub fn evacuation_runs(&self, evacuation: i64) -> Result<Vec<(String, i64)>, JournalError> {
        let order = match self.db {
            Db::Sqlite(_) => "rowid",
            Db::Postgres(_) => "n",
        };
        self.db.rows(
            &format!(
                "SELECT guest, run FROM evacuation_runs WHERE evacuation = ?1 ORDER BY {order}"
            ),
            &[evacuation.into()],
            |r| Ok((r.text(0)?, r.i64(1)?)),
        )
    }

    /// The newest run of `guest` started at or after `since` (seconds since the epoch).
    pub fn latest_run_of(&self, guest: &str, since: i64) -> Result<Option<RunRow>, JournalError> {
        self.db.row(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE guest = ?1 AND started >= ?2
                 ORDER BY id DESC LIMIT 1"
            ),
            &[guest.into(), since.into()],
            run_row,
        )
    }

    /// The outcome of a run, if it has ended.
    pub fn outcome(&self, run: RunId) -> Result<Option<RunOutcome>, JournalError> {
        Ok(self.run_row(run)?.and_then(|r| r.outcome))
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
