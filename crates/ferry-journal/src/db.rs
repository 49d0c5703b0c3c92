//! The journal's two stores behind one small interface: SQLite (a file, the zero-setup
//! default) and PostgreSQL (shared by every Ferry of a fleet). The journal's queries are
//! written once, in the SQL both speak (`?N` parameters, `RETURNING`, `ON CONFLICT`); this
//! module binds them, reads rows, and gives each store's way to take an exclusive write.

use std::cell::{Cell, RefCell};
use std::error::Error as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::JournalError;

/// A parameter: an integer or a text, either possibly NULL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    I(Option<i64>),
    T(Option<&'a str>),
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::I(Some(v))
    }
}

impl From<Option<i64>> for Val<'_> {
    fn from(v: Option<i64>) -> Self {
        Val::I(v)
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::T(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Val::T(v)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Val::I(v) => v.to_sql(),
            Val::T(v) => v.to_sql(),
        }
    }
}

/// A row being read, whichever store it came from.
pub(crate) trait Get {
    fn i64(&self, i: usize) -> Result<i64, JournalError>;
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, JournalError>;
    fn text(&self, i: usize) -> Result<String, JournalError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, JournalError>;
}

impl Get for rusqlite::Row<'_> {
    fn i64(&self, i: usize) -> Result<i64, JournalError> {
        Ok(self.get(i)?)
    }
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, JournalError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, JournalError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, JournalError> {
        Ok(self.get(i)?)
    }
}

impl Get for postgres::Row {
    fn i64(&self, i: usize) -> Result<i64, JournalError> {
        Ok(self.try_get(i)?)
    }
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, JournalError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, JournalError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, JournalError> {
        Ok(self.try_get(i)?)
    }
}

/// A connection to the journal's store.
pub(crate) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Postgres(_) => "Db::Postgres",
        })
    }
}

/// A PostgreSQL journal's connection, made again when the server closed it (a restart, a
/// failover): a statement outside a transaction is retried on the new connection until
/// [`RECONNECT`] has passed; a transaction ([`Db::exclusive`]) is run again whole.
pub(crate) struct Pg {
    config: postgres::Config,
    client: RefCell<Option<postgres::Client>>,
    /// Inside [`Db::exclusive`]: a lost connection lost the transaction, so no statement of it
    /// is retried alone.
    in_tx: Cell<bool>,
}

/// How long a PostgreSQL journal that closed the connection is tried again before the
/// statement fails (a restart takes seconds; a failover, tens of seconds; a migration's
/// journal write waits that long rather than lose its record).
pub(crate) const RECONNECT: Duration = Duration::from_secs(120);

/// How often a lost PostgreSQL server is tried again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// Whether the server went away (rather than refused the statement): the connection is closed,
/// or the error is one a restarting server sends (SQLSTATE class 08, 57P01–57P03).
fn connection_lost(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.is_closed()
        || e.code().is_some_and(|c| {
            c.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c)
        })
        || e.as_db_error().is_none() && e.source().is_some_and(|s| s.is::<std::io::Error>())
}

impl Pg {
    pub fn connect(config: postgres::Config) -> Result<Self, postgres::Error> {
        let client = config.connect(postgres::NoTls)?;
        Ok(Self {
            config,
            client: RefCell::new(Some(client)),
            in_tx: Cell::new(false),
        })
    }

    /// Run `f` on the connection, made again first if it was lost.
    fn once<T>(
        &self,
        f: &mut impl FnMut(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut slot = self.client.borrow_mut();
        let mut client = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.config.connect(postgres::NoTls)?,
        };
        let out = f(&mut client);
        // A lost connection is dropped; the next call makes a new one.
        if !out.as_ref().is_err_and(connection_lost) {
            *slot = Some(client);
        }
        out
    }

    /// Run `f`; when the server went away, again on a new connection until [`RECONNECT`] has
    /// passed (never inside a transaction, which the lost connection took with it).
    fn call<T>(
        &self,
        mut f: impl FnMut(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, JournalError> {
        match self.once(&mut f) {
            Err(e) if connection_lost(&e) && !self.in_tx.get() => {
                let mut last = e;
                ferry_wait::poll_until(ferry_wait::deadline_in(RECONNECT), RECONNECT_EVERY, || {
                    match self.once(&mut f) {
                        Err(e) if connection_lost(&e) => {
                            last = e;
                            None
                        }
                        other => Some(other),
                    }
                })
                .unwrap_or(Err(last))
                .map_err(JournalError::from)
            }
            other => Ok(other?),
        }
    }
}

/// `?N` parameters as PostgreSQL writes them (`$N`). The journal's SQL has no `?` elsewhere.
fn dollars(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_params<'a>(p: &'a [Val<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|v| match v {
            Val::I(x) => x as &(dyn postgres::types::ToSql + Sync),
            Val::T(x) => x as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}

impl Db {
    /// Run a statement; the rows it changed.
    pub fn exec(&self, sql: &str, p: &[Val<'_>]) -> Result<u64, JournalError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute(sql, rusqlite::params_from_iter(p.iter()))? as u64),
            Db::Postgres(c) => c.call(|cl| cl.execute(&dollars(sql), &pg_params(p))),
        }
    }

    /// Run statements without parameters (a schema, a test's rows).
    pub fn batch(&self, sql: &str) -> Result<(), JournalError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(c) => c.call(|cl| cl.batch_execute(sql)),
        }
    }

    /// Every row of a query, each read by `f`.
    pub fn rows<T>(
        &self,
        sql: &str,
        p: &[Val<'_>],
        f: impl Fn(&dyn Get) -> Result<T, JournalError>,
    ) -> Result<Vec<T>, JournalError> {
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(p.iter()))?;
                let mut out = vec![];
                while let Some(r) = rows.next()? {
                    out.push(f(r)?);
                }
                Ok(out)
            }
            Db::Postgres(c) => {
                let rows = c.call(|cl| cl.query(&dollars(sql), &pg_params(p)))?;
                rows.iter().map(|r| f(r)).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub fn row<T>(
        &self,
        sql: &str,
        p: &[Val<'_>],
        f: impl Fn(&dyn Get) -> Result<T, JournalError>,
    ) -> Result<Option<T>, JournalError> {
        Ok(self.rows(sql, p, f)?.into_iter().next())
    }

    /// Whether `table` exists (without creating anything).
    pub fn has_table(&self, table: &str) -> Result<bool, JournalError> {
        match self {
            Db::Sqlite(c) => Ok(c
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)?),
            Db::Postgres(c) => Ok(c
                .call(|cl| cl.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]))?
                .try_get(0)?),
        }
    }

    /// Run `f` as one transaction that no other writer of the journal interleaves with (two
    /// Ferry processes cannot both read "free" and both take a lock); rolled back when `f`
    /// fails. On PostgreSQL, a transaction the server's going away cut short is run again whole
    /// on a new connection, until [`RECONNECT`] has passed.
    pub fn exclusive<T>(&self, f: impl Fn() -> Result<T, JournalError>) -> Result<T, JournalError> {
        let Db::Postgres(pg) = self else {
            self.batch("BEGIN IMMEDIATE")?;
            return self.finish_tx(f());
        };
        let once = || {
            pg.in_tx.set(true);
            // The locks table's SHARE ROW EXCLUSIVE mode conflicts with itself: one such
            // transaction at a time, readers untouched.
            let out = self
                .batch("BEGIN; LOCK TABLE locks IN SHARE ROW EXCLUSIVE MODE")
                .and_then(|()| self.finish_tx(f()));
            pg.in_tx.set(false);
            out
        };
        let lost = |r: &Result<T, JournalError>| matches!(r, Err(JournalError::Postgres(e)) if connection_lost(e));
        let first = once();
        if !lost(&first) {
            return first;
        }
        let mut last = first;
        ferry_wait::poll_until(ferry_wait::deadline_in(RECONNECT), RECONNECT_EVERY, || {
            let again = once();
            if lost(&again) {
                last = again;
                None
            } else {
                Some(again)
            }
        })
        .unwrap_or(last)
    }

    /// End the transaction `result` came from: committed, or rolled back on an error.
    fn finish_tx<T>(&self, result: Result<T, JournalError>) -> Result<T, JournalError> {
        match &result {
            Ok(_) => self.batch("COMMIT")?,
            Err(_) => {
                let _ = self.batch("ROLLBACK");
            }
        }
        result
    }

    /// The store's clock, in milliseconds since the epoch: the PostgreSQL server's for a shared
    /// journal (every instance reads one clock), this machine's for SQLite.
    pub fn now_ms(&self) -> Result<i64, JournalError> {
        match self {
            Db::Sqlite(_) => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)),
            Db::Postgres(c) => Ok(c
                .call(|cl| {
                    cl.query_one(
                        "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
                        &[],
                    )
                })?
                .try_get(0)?),
        }
    }
}
