//! The journal: what Ferry did, durably, so that a rollback deletes exactly what Ferry created —
//! even after Ferry itself was killed mid-run (`ferry recover` reads the leftovers from here).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

mod vocab;
pub use vocab::{EvacuationOutcome, RunOutcome, RunPhase, UnknownWord};

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read or write the journal")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot read the journal {path}: {why}")]
    Read { path: String, why: String },
    #[error(
        "{guest} is being migrated by run #{} (ferry pid {} on {}): one migration per guest; \
         wait for it, or stop it (Ctrl-C in its terminal)", .holder.run, .holder.pid, .holder.host
    )]
    Locked { guest: String, holder: Holder },
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

/// The journal, an SQLite database.
#[derive(Debug)]
pub struct Journal {
    db: Connection,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    message TEXT
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
    since INTEGER NOT NULL
);
";

/// Who holds a guest's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub run: RunId,
    pub pid: u32,
    /// The machine the holding Ferry runs on.
    pub host: String,
    /// Seconds since the epoch.
    pub since: i64,
}

/// The columns of [`RunRow`], in the order [`run_row`] reads them.
const RUN_COLUMNS: &str = "id, guest, source, target, started, finished, phase, outcome, message";

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    let message: Option<String> = r.get(8)?;
    let outcome: Option<RunOutcome> = r.get(7)?;
    Ok(RunRow {
        id: RunId(r.get(0)?),
        guest: r.get(1)?,
        source: r.get(2)?,
        target: r.get(3)?,
        started: r.get(4)?,
        finished: r.get(5)?,
        phase: r.get(6)?,
        outcome: outcome.map(|o| legacy_outcome(o, message.as_deref())),
        message,
    })
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

/// Journals written before a column existed get it.
fn upgrade(db: &Connection) -> rusqlite::Result<()> {
    let has_provider = db.prepare("SELECT provider FROM created LIMIT 0").is_ok();
    if !has_provider {
        db.execute_batch("ALTER TABLE created ADD COLUMN provider TEXT")?;
    }
    Ok(())
}

impl Journal {
    /// Open (or create) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Connection::open(path).map_err(open_err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        db.execute_batch(SCHEMA).map_err(open_err)?;
        upgrade(&db).map_err(open_err)?;
        Ok(Self { db })
    }

    /// Open an existing journal to read it: nothing is created — no directory, no file, no
    /// table — and a file that is not Ferry's journal is refused. (It is opened read-write so
    /// that SQLite can roll back a transaction a killed Ferry left unfinished.)
    pub fn open_existing(path: &Path) -> Result<Self, JournalError> {
        let read_err = |why: String| JournalError::Read {
            path: path.display().to_string(),
            why,
        };
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
        let db = Connection::open_with_flags(
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
        Ok(Self { db })
    }

    /// A journal that lives only as long as this value (tests, `--dry-run`).
    pub fn in_memory() -> Result<Self, JournalError> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    pub fn begin_run(
        &self,
        guest: &str,
        source: &str,
        target: &str,
        plan_json: &str,
    ) -> Result<RunId, JournalError> {
        self.db.execute(
            "INSERT INTO runs (guest, source, target, started, phase, plan) VALUES (?1, ?2, ?3, ?4, 'preflight', ?5)",
            params![guest, source, target, now(), plan_json],
        )?;
        Ok(RunId(self.db.last_insert_rowid()))
    }

    /// Set a run's target (a run begun before its target was chosen).
    pub fn set_target(&self, run: RunId, target: &str) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE runs SET target = ?1 WHERE id = ?2",
            params![target, run.0],
        )?;
        Ok(())
    }

    /// Replace a run's plan (a run begun before its plan was made).
    pub fn set_plan(&self, run: RunId, plan_json: &str) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE runs SET plan = ?1 WHERE id = ?2",
            params![plan_json, run.0],
        )?;
        Ok(())
    }

    pub fn set_phase(&self, run: RunId, phase: RunPhase) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE runs SET phase = ?1 WHERE id = ?2",
            params![phase, run.0],
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
        self.db.execute(
            "INSERT INTO created (run, host, path, bytes, created, provider) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run.0, host, path, bytes as i64, now(), provider],
        )?;
        Ok(())
    }

    pub fn record_deleted(&self, run: RunId, host: &str, path: &str) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE created SET deleted = ?1 WHERE run = ?2 AND host = ?3 AND path = ?4 AND deleted IS NULL",
            params![now(), run.0, host, path],
        )?;
        Ok(())
    }

    /// A pre-seeded disk's copy is on the target up to byte `upto` (a window ended: its
    /// streams finished). Written after each window, so a resumed copy starts there.
    pub fn record_seeded(&self, run: RunId, disk: &str, upto: u64) -> Result<(), JournalError> {
        self.db.execute(
            "INSERT OR REPLACE INTO seeded (run, disk, upto) VALUES (?1, ?2, ?3)",
            params![run.0, disk, upto as i64],
        )?;
        Ok(())
    }

    /// How far run `run` copied disk `disk` (0 when it never finished a window).
    pub fn seeded(&self, run: RunId, disk: &str) -> Result<u64, JournalError> {
        let v: Option<i64> = self
            .db
            .query_row(
                "SELECT upto FROM seeded WHERE run = ?1 AND disk = ?2",
                params![run.0, disk],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map_or(0, |v| v.max(0) as u64))
    }

    /// Run `to` takes over what run `from` created and has not deleted (a resumed pre-seed):
    /// from now on those volumes are `to`'s, deleted by its rollback or kept with its guest.
    /// Returns them.
    pub fn hand_over(&self, from: RunId, to: RunId) -> Result<Vec<Created>, JournalError> {
        let moved = self.created_of(from)?;
        self.db.execute(
            "UPDATE created SET run = ?1 WHERE run = ?2 AND deleted IS NULL",
            params![to.0, from.0],
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
        self.db.execute(
            "UPDATE runs SET finished = ?1, outcome = ?2, message = ?3, phase = ?4 WHERE id = ?5",
            params![now(), outcome, message, RunPhase::Done, run.0],
        )?;
        Ok(())
    }

    /// The latest runs, newest first.
    pub fn runs(&self, limit: u32) -> Result<Vec<RunRow>, JournalError> {
        let mut st = self.db.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = st.query_map([limit], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of runs, newest first: at most `limit`, older than `before` when given.
    pub fn runs_before(
        &self,
        before: Option<RunId>,
        limit: u32,
    ) -> Result<Vec<RunRow>, JournalError> {
        let mut st = self.db.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(rusqlite::params![before.map(|r| r.0), limit], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Runs `ferry recover` looks at: unfinished ones, and ended ones that did not migrate but
    /// left volumes undeleted; only `only` when given. Oldest first.
    pub fn runs_to_recover(&self, only: Option<RunId>) -> Result<Vec<RunRow>, JournalError> {
        let mut st = self.db.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE (?1 IS NULL OR id = ?1) AND (outcome IS NULL
               OR (outcome NOT IN {on_target} AND EXISTS
                   (SELECT 1 FROM created c WHERE c.run = r.id AND c.deleted IS NULL)))
             ORDER BY id",
            on_target = on_target_sql()
        ))?;
        let rows = st.query_map([only.map(|r| r.0)], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The volumes `run` created and has not deleted.
    pub fn created_of(&self, run: RunId) -> Result<Vec<Created>, JournalError> {
        self.leftovers_where("c.deleted IS NULL AND c.run = ?1", Some(run.0))
    }

    /// The plan (JSON) a run recorded, if it got that far.
    pub fn plan_of(&self, run: RunId) -> Result<Option<String>, JournalError> {
        Ok(self
            .db
            .query_row("SELECT plan FROM runs WHERE id = ?1", [run.0], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten()
            .filter(|p| p != "{}"))
    }

    /// Who holds `guest`'s lock.
    pub fn holder(&self, guest: &str) -> Result<Option<Holder>, JournalError> {
        Ok(self
            .db
            .query_row(
                "SELECT run, pid, host, since FROM locks WHERE guest = ?1",
                params![guest],
                |r| {
                    Ok(Holder {
                        run: RunId(r.get(0)?),
                        pid: r.get(1)?,
                        host: r.get(2)?,
                        since: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn leftovers_where(&self, cond: &str, run: Option<i64>) -> Result<Vec<Created>, JournalError> {
        let mut st = self.db.prepare(&format!(
            "SELECT c.run, c.host, c.path, c.bytes, c.provider FROM created c JOIN runs r ON r.id = c.run
             WHERE {cond} ORDER BY c.run, c.path"
        ))?;
        let map = |r: &rusqlite::Row| {
            Ok(Created {
                run: r.get(0)?,
                host: r.get(1)?,
                path: r.get(2)?,
                bytes: r.get::<_, i64>(3)? as u64,
                provider: r.get(4)?,
            })
        };
        let rows = match run {
            Some(id) => st.query_map([id], map)?.collect::<Result<_, _>>()?,
            None => st.query_map([], map)?.collect::<Result<_, _>>()?,
        };
        Ok(rows)
    }

    /// Volumes created by runs that did not end in a migration and were never deleted.
    pub fn leftovers(&self) -> Result<Vec<Created>, JournalError> {
        self.leftovers_where(
            &format!(
                "c.deleted IS NULL AND (r.outcome IS NULL OR r.outcome NOT IN {})",
                on_target_sql()
            ),
            None,
        )
    }

    /// Take `guest`'s lock for `run`, held by process `pid` on machine `host`. A holder on the
    /// same machine whose process is gone (`alive` says no) is taken over: its holder is
    /// returned, to be said. A live holder, or one on another machine (whose process Ferry
    /// cannot see), refuses with [`JournalError::Locked`].
    pub fn lock_guest(
        &self,
        guest: &str,
        run: RunId,
        pid: u32,
        host: &str,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Option<Holder>, JournalError> {
        // IMMEDIATE: two Ferry processes cannot both read "free" and both take it.
        self.db.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let holder = self.holder(guest)?;
            let taken_over = match holder {
                Some(h) if h.host != host || alive(h.pid) => {
                    return Err(JournalError::Locked {
                        guest: guest.to_string(),
                        holder: h,
                    })
                }
                other => other,
            };
            self.db.execute(
                "INSERT OR REPLACE INTO locks (guest, run, pid, host, since) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![guest, run.0, pid, host, now()],
            )?;
            Ok(taken_over)
        })();
        match &result {
            Ok(_) => self.db.execute_batch("COMMIT")?,
            Err(_) => {
                let _ = self.db.execute_batch("ROLLBACK");
            }
        }
        result
    }

    /// Give `guest`'s lock back (only if `run` holds it).
    pub fn unlock_guest(&self, guest: &str, run: RunId) -> Result<(), JournalError> {
        self.db.execute(
            "DELETE FROM locks WHERE guest = ?1 AND run = ?2",
            params![guest, run.0],
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
        self.db.execute(
            "INSERT INTO released (run, host, path, released, through) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run.0, host, path, now(), through],
        )?;
        Ok(())
    }

    /// Whether `run` released the source's copy at `path`.
    pub fn was_released(&self, run: RunId, path: &str) -> Result<bool, JournalError> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM released WHERE run = ?1 AND path = ?2",
                params![run.0, path],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Ask the Ferry running `run` to abort it (`ferry abort`), from process `pid` on `host`.
    pub fn request_abort(&self, run: RunId, pid: u32, host: &str) -> Result<(), JournalError> {
        self.db.execute(
            "INSERT OR REPLACE INTO aborts (run, requested, pid, host) VALUES (?1, ?2, ?3, ?4)",
            params![run.0, now(), pid, host],
        )?;
        Ok(())
    }

    /// Who asked to abort `run`, if anyone did: (pid, machine).
    pub fn abort_requested(&self, run: RunId) -> Result<Option<(u32, String)>, JournalError> {
        Ok(self
            .db
            .query_row(
                "SELECT pid, host FROM aborts WHERE run = ?1",
                [run.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The run `pid` on machine `host` holds a lock for, if any.
    pub fn run_held_by(&self, pid: u32, host: &str) -> Result<Option<RunId>, JournalError> {
        Ok(self
            .db
            .query_row(
                "SELECT run FROM locks WHERE pid = ?1 AND host = ?2",
                params![pid, host],
                |r| r.get(0).map(RunId),
            )
            .optional()?)
    }

    /// One run.
    pub fn run_row(&self, run: RunId) -> Result<Option<RunRow>, JournalError> {
        Ok(self
            .db
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [run.0],
                run_row,
            )
            .optional()?)
    }

    /// Begin the evacuation of `host`: from now until it ends, the host is draining.
    pub fn begin_evacuation(
        &self,
        host: &str,
        uri: &str,
        pid: u32,
        machine: &str,
    ) -> Result<i64, JournalError> {
        self.db.execute(
            "INSERT INTO evacuations (host, uri, pid, machine, started) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![host, uri, pid, machine, now()],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// Record that `run` migrated `guest` for evacuation `evacuation`.
    pub fn add_evacuation_run(
        &self,
        evacuation: i64,
        guest: &str,
        run: RunId,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "INSERT INTO evacuation_runs (evacuation, guest, run) VALUES (?1, ?2, ?3)",
            params![evacuation, guest, run.0],
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
        self.db.execute(
            "UPDATE evacuations SET finished = ?1, outcome = ?2, message = ?3 WHERE id = ?4",
            params![now(), outcome, message, evacuation],
        )?;
        Ok(())
    }

    /// Evacuations not ended (running, or cut short), oldest first.
    pub fn open_evacuations(&self) -> Result<Vec<EvacuationRow>, JournalError> {
        self.evacuations_where("finished IS NULL")
    }

    /// Every evacuation, newest first.
    pub fn evacuations(&self) -> Result<Vec<EvacuationRow>, JournalError> {
        let mut all = self.evacuations_where("1")?;
        all.reverse();
        Ok(all)
    }

    fn evacuations_where(&self, cond: &str) -> Result<Vec<EvacuationRow>, JournalError> {
        let mut st = self.db.prepare(&format!(
            "SELECT id, host, uri, pid, machine, started, finished, outcome, message
             FROM evacuations WHERE {cond} ORDER BY id"
        ))?;
        let rows = st.query_map([], |r| {
            Ok(EvacuationRow {
                id: r.get(0)?,
                host: r.get(1)?,
                uri: r.get(2)?,
                pid: r.get(3)?,
                machine: r.get(4)?,
                started: r.get(5)?,
                finished: r.get(6)?,
                outcome: r.get(7)?,
                message: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The runs of an evacuation: (guest, run), in order.
    pub fn evacuation_runs(&self, evacuation: i64) -> Result<Vec<(String, i64)>, JournalError> {
        let mut st = self.db.prepare(
            "SELECT guest, run FROM evacuation_runs WHERE evacuation = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map([evacuation], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest run of `guest` started at or after `since` (seconds since the epoch).
    pub fn latest_run_of(&self, guest: &str, since: i64) -> Result<Option<RunRow>, JournalError> {
        Ok(self
            .db
            .query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE guest = ?1 AND started >= ?2
                     ORDER BY id DESC LIMIT 1"
                ),
                params![guest, since],
                run_row,
            )
            .optional()?)
    }

    /// The outcome of a run, if it has ended.
    pub fn outcome(&self, run: RunId) -> Result<Option<RunOutcome>, JournalError> {
        Ok(self.run_row(run)?.and_then(|r| r.outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_come_a_page_at_a_time_newest_first() {
        let j = Journal::in_memory().unwrap();
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
    }

    #[test]
    fn an_evacuation_is_open_until_finished_and_keeps_its_runs() {
        let j = Journal::in_memory().unwrap();
        let e = j
            .begin_evacuation("h1", "qemu+tcp://h1/system", 42, "m")
            .unwrap();
        let open = j.open_evacuations().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].host.as_str(), open[0].pid), ("h1", 42));
        let r = j.begin_run("g", "a", "b", "{}").unwrap();
        j.add_evacuation_run(e, "g", r).unwrap();
        assert_eq!(j.evacuation_runs(e).unwrap(), vec![("g".to_string(), r.0)]);
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

    #[test]
    fn created_volumes_of_unfinished_runs_are_leftovers_until_deleted() {
        let j = Journal::in_memory().unwrap();
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
    }

    #[test]
    fn a_migrated_run_leaves_no_leftovers() {
        let j = Journal::in_memory().unwrap();
        let r = j.begin_run("g", "a", "b", "{}").unwrap();
        j.record_created(r, "b", "/srv/vdb.raw", 64).unwrap();
        j.finish(r, RunOutcome::Migrated, "ok").unwrap();
        assert!(j.leftovers().unwrap().is_empty());
        assert_eq!(j.outcome(r).unwrap(), Some(RunOutcome::Migrated));
        assert_eq!(j.runs(10).unwrap()[0].phase, RunPhase::Done);
        // Its guest runs on the target even unverified: the volumes are its disks.
        let u = j.begin_run("g", "a", "b", "{}").unwrap();
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
    }

    #[test]
    fn an_old_journals_failed_verification_reads_as_unverified_and_its_words_unchanged() {
        let j = Journal::in_memory().unwrap();
        j.db.execute_batch(
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

    #[test]
    fn a_word_the_journal_does_not_know_is_an_error_not_a_default() {
        let j = Journal::in_memory().unwrap();
        j.db.execute_batch(
            "INSERT INTO runs (guest, source, target, started, phase, outcome) VALUES
               ('a','s','t',1,'done','teleported');",
        )
        .unwrap();
        let e = j.runs(1).unwrap_err();
        let chain = format!("{:?}", std::error::Error::source(&e));
        assert!(chain.contains("teleported"), "{chain}");
    }

    #[test]
    fn one_guest_one_lock_a_dead_holder_on_this_machine_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("ferry-journal-lock-{}", std::process::id()));
        let path = dir.join("j.db");
        let (a, b) = (Journal::open(&path).unwrap(), Journal::open(&path).unwrap());
        let r1 = a.begin_run("g", "h1", "h2", "{}").unwrap();
        let r2 = b.begin_run("g", "h1", "h3", "{}").unwrap();
        assert_eq!(a.lock_guest("g", r1, 100, "m1", |_| true).unwrap(), None);
        // A second Ferry (another process, the same journal) is refused with the first's run.
        let e = b.lock_guest("g", r2, 200, "m1", |_| true).unwrap_err();
        let JournalError::Locked { holder, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            (holder.run, holder.pid, holder.host.as_str()),
            (r1, 100, "m1")
        );
        assert!(e.to_string().contains(&format!("run #{}", r1.0)), "{e}");
        // Another guest is free.
        b.lock_guest("other", r2, 200, "m1", |_| true).unwrap();
        // A holder on another machine cannot be seen dead: still refused.
        assert!(b.lock_guest("g", r2, 200, "m2", |_| false).is_err());
        // On this machine, a holder whose process is gone is taken over, and said.
        let old = b
            .lock_guest("g", r2, 200, "m1", |_| false)
            .unwrap()
            .unwrap();
        assert_eq!(old.run, r1);
        // Unlock gives back only one's own lock.
        a.unlock_guest("g", r1).unwrap();
        assert!(a.lock_guest("g", r1, 100, "m1", |_| true).is_err());
        b.unlock_guest("g", r2).unwrap();
        a.lock_guest("g", r1, 100, "m1", |_| true).unwrap();
        let _ = std::fs::remove_dir_all(dir);
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
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let e = Journal::open_existing(&foreign).unwrap_err().to_string();
        assert!(
            e.contains("it is not Ferry's journal (no runs table)"),
            "{e}"
        );
        let tables: i64 = Connection::open(&foreign)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 1, "a table was added to a foreign file");
        let real = dir.join("j.db");
        let j = Journal::open(&real).unwrap();
        j.begin_run("g", "a", "b", "{}").unwrap();
        drop(j);
        assert_eq!(
            Journal::open_existing(&real)
                .unwrap()
                .runs(5)
                .unwrap()
                .len(),
            1
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_journal_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("ferry-journal-{}", std::process::id()));
        let path = dir.join("j.db");
        {
            let j = Journal::open(&path).unwrap();
            let r = j.begin_run("g", "a", "b", "{}").unwrap();
            j.record_created(r, "b", "/x", 1).unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.leftovers().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_journal_from_before_providers_is_upgraded_and_keeps_its_rows() {
        let dir = std::env::temp_dir().join(format!("ferry-journal-old-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("j.db");
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(&SCHEMA.replace(",\n    provider TEXT", ""))
                .unwrap();
            db.execute_batch(
                "INSERT INTO runs (guest, source, target, started, phase) VALUES ('g','a','b',1,'prepare');
                 INSERT INTO created (run, host, path, bytes, created) VALUES (1,'b','/old',7,1);",
            )
            .unwrap();
            assert!(db.prepare("SELECT provider FROM created").is_err());
        }
        let j = Journal::open(&path).unwrap();
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
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_abort_request_reaches_the_run_from_another_connection() {
        let dir = std::env::temp_dir().join(format!("ferry-journal-abort-{}", std::process::id()));
        let path = dir.join("j.db");
        let running = Journal::open(&path).unwrap();
        let r = running.begin_run("g", "a", "b", "{}").unwrap();
        let other = running.begin_run("h", "a", "b", "{}").unwrap();
        running.lock_guest("g", r, 100, "m1", |_| true).unwrap();
        assert_eq!(running.run_held_by(100, "m1").unwrap(), Some(r));
        assert_eq!(running.run_held_by(100, "m2").unwrap(), None);
        assert_eq!(running.abort_requested(r).unwrap(), None);
        let aborter = Journal::open(&path).unwrap();
        aborter.request_abort(r, 200, "m2").unwrap();
        assert_eq!(
            running.abort_requested(r).unwrap(),
            Some((200, "m2".to_string()))
        );
        assert_eq!(running.abort_requested(other).unwrap(), None);
        assert_eq!(aborter.run_row(r).unwrap().unwrap().guest, "g");
        assert!(aborter.run_row(RunId(99)).unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
    #[test]
    fn a_pre_seed_is_journaled_by_window_and_its_volumes_change_hands_on_a_resume() {
        let j = Journal::in_memory().unwrap();
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
}
