//! A PostgreSQL server for tests (the journal's, and the lab's with a shared journal): Debian's
//! `postgresql-15`, in a directory of its own, listening only on a Unix socket there, stopped
//! and removed when dropped. Without the binaries a test says it is skipped (and fails under
//! CI, which installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Why a test's PostgreSQL server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("PostgreSQL 15 is missing ({BIN}): CI must install Debian's postgresql-15")]
    Missing,
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {output}")]
    Failed { program: String, output: String },
    #[error("cannot create the test's database")]
    Postgres(#[from] postgres::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    /// Run PostgreSQL's programs as this user (it refuses to run as root).
    user: Option<&'static str>,
    /// Whether it syncs to disk.
    durable: bool,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Postgres {
    /// A fresh server, or `None` (said on stderr) when PostgreSQL 15 is not installed. It
    /// does not sync to disk (tests); [`Postgres::start_durable`] does.
    pub fn start() -> Result<Option<Postgres>, HarnessError> {
        Self::start_with(false)
    }

    /// A server that syncs its writes as a production one does (benchmarks).
    pub fn start_durable() -> Result<Option<Postgres>, HarnessError> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Option<Postgres>, HarnessError> {
        if !Path::new(BIN).join("initdb").exists() {
            if std::env::var_os("CI").is_some() {
                return Err(HarnessError::Missing);
            }
            eprintln!("SKIPPED: the journal's PostgreSQL tests: {BIN} is missing (apt install postgresql-15)");
            return Ok(None);
        }
        static N: AtomicU32 = AtomicU32::new(0);
        // Under /tmp: the postgres user must reach it (a TMPDIR inside a root-only tree would
        // not do).
        let dir = PathBuf::from(format!(
            "/tmp/ferry-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let user = is_root().then_some("postgres");
        if let Some(u) = user {
            let chown = Command::new("chown")
                .args([u, &dir.display().to_string()])
                .output()
                .map_err(io("run chown"))?;
            if !chown.status.success() {
                return Err(failed("chown", &chown));
            }
        }
        let s = Postgres { dir, user, durable };
        let data = s.dir.join("data");
        s.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "ferry",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        s.start_again()?;
        Ok(Some(s))
    }

    /// Start the server (again, after [`Postgres::stop`]); back when it accepts connections.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &self.dir.join("log").display().to_string(),
                "-o",
                &format!(
                    "-k {} -c listen_addresses='' -c fsync={} -c max_connections=200",
                    self.dir.display(),
                    if self.durable { "on" } else { "off" }
                ),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stop the server as an operator's restart does (`pg_ctl stop -m fast`: every client's
    /// connection is closed).
    pub fn stop(&self) -> Result<(), HarnessError> {
        let data = self.dir.join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    }

    /// PostgreSQL's program `prog`, run as its user.
    fn command(&self, prog: &str) -> Command {
        let bin = Path::new(BIN).join(prog);
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        }
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<(), HarnessError> {
        let out = self
            .command(prog)
            .args(args)
            .output()
            .map_err(io(format!("run {prog}")))?;
        if !out.status.success() {
            return Err(failed(prog, &out));
        }
        Ok(())
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        let sock: String = self.dir.display().to_string().replace('/', "%2F");
        format!("postgresql://ferry@{sock}/{db}")
    }

    /// A new, empty database: its URL.
    pub fn database(&self, name: &str) -> Result<String, HarnessError> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn failed(program: &str, out: &std::process::Output) -> HarnessError {
    HarnessError::Failed {
        program: program.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
