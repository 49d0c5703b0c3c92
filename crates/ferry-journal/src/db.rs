//! The journal's two stores behind one small interface: SQLite (a file, the zero-setup
//! default) and PostgreSQL (shared by every Ferry of a fleet). The journal's queries are
//! written once, in the SQL both speak (`?N` parameters, `RETURNING`, `ON CONFLICT`); this
//! module binds them, reads rows, and gives each store's way to take an exclusive write.

use std::cell::RefCell;

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
    Postgres(RefCell<postgres::Client>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Postgres(_) => "Db::Postgres",
        })
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
            Db::Postgres(c) => Ok(c.borrow_mut().execute(&dollars(sql), &pg_params(p))?),
        }
    }

    /// Run statements without parameters (a schema, a test's rows).
    pub fn batch(&self, sql: &str) -> Result<(), JournalError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(c) => Ok(c.borrow_mut().batch_execute(sql)?),
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
                let rows = c.borrow_mut().query(&dollars(sql), &pg_params(p))?;
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
                .borrow_mut()
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
                .try_get(0)?),
        }
    }

    /// Run `f` as one transaction that no other writer of the journal interleaves with (two
    /// Ferry processes cannot both read "free" and both take a lock); rolled back when `f`
    /// fails.
    pub fn exclusive<T>(
        &self,
        f: impl FnOnce() -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        match self {
            Db::Sqlite(_) => self.batch("BEGIN IMMEDIATE")?,
            // The locks table's SHARE ROW EXCLUSIVE mode conflicts with itself: one such
            // transaction at a time, readers untouched.
            Db::Postgres(_) => self.batch("BEGIN; LOCK TABLE locks IN SHARE ROW EXCLUSIVE MODE")?,
        }
        let result = f();
        match &result {
            Ok(_) => self.batch("COMMIT")?,
            Err(_) => {
                let _ = self.batch("ROLLBACK");
            }
        }
        result
    }
}
