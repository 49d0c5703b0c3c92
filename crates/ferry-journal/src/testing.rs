//! A PostgreSQL server for tests (the journal's, and the lab's with a shared journal): Debian's
//! `postgresql-15`, in a directory of its own, listening only on a Unix socket there, stopped
//! and removed when dropped. Without the binaries a test says it is skipped (and fails under
//! CI, which installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    /// Run PostgreSQL's programs as this user (it refuses to run as root).
    user: Option<&'static str>,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Postgres {
    /// A fresh server, or `None` (said on stderr) when PostgreSQL 15 is not installed. It
    /// does not sync to disk (tests); [`Postgres::start_durable`] does.
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// A server that syncs its writes as a production one does (benchmarks).
    pub fn start_durable() -> Option<Postgres> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Option<Postgres> {
        if !Path::new(BIN).join("initdb").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL 15 is missing ({BIN}): CI must install Debian's postgresql-15"
            );
            eprintln!("SKIPPED: the journal's PostgreSQL tests: {BIN} is missing (apt install postgresql-15)");
            return None;
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
        std::fs::create_dir_all(&dir).unwrap();
        let user = is_root().then_some("postgres");
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args([u, &dir.display().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {u} {}", dir.display());
        }
        let s = Postgres { dir, user };
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
        );
        s.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &s.dir.join("log").display().to_string(),
                "-o",
                &format!(
                    "-k {} -c listen_addresses='' -c fsync={} -c max_connections=200",
                    s.dir.display(),
                    if durable { "on" } else { "off" }
                ),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(s)
    }

    fn run(&self, prog: &str, args: &[&str]) {
        let bin = Path::new(BIN).join(prog);
        let mut c = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        let sock: String = self.dir.display().to_string().replace('/', "%2F");
        format!("postgresql://ferry@{sock}/{db}")
    }

    /// A new, empty database: its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let bin = Path::new(BIN).join("pg_ctl");
        let mut c = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let _ = c
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
