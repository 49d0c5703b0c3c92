//! `ferry --server URL …`: the command line as a client of a Ferry daemon (`ferry serve`).
//! The daemon reads the hosts, keeps the journal and drives the flow; this process sends the
//! options typed (as the body the daemon reads with the same parser) and shows the daemon's
//! events and results with the standalone command's own printers, so the output is the same.

mod argv;
mod evacuate;
mod http;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{ArgMatches, Command as ClapCommand, CommandFactory};
use ferry_journal::{EvacuationRow, RunRow};
use ferry_migrate::report::{ResultEvent, RunResult};
use ferry_migrate::{Event, Summary};
use serde_json::Value;

use crate::args::{AbortArgs, Cli, Command, HistoryArgs, MigrateArgs, PlanArgs, RemoteArgs};
use crate::serve::body;
pub use http::{RemoteError, Server};

/// The daemon this command runs through (`None`: it runs here). A command the daemon does
/// not offer is refused rather than run here against another journal.
pub fn through(cli: &Cli) -> anyhow::Result<Option<&str>> {
    let Some(url) = cli.remote.server.as_deref() else {
        return Ok(None);
    };
    match &cli.command {
        // Offline, a plan reads files and asks no host.
        Command::Plan(a) if a.domain_xml.is_some() => Ok(None),
        Command::Completions { .. } | Command::Man | Command::Simulate(_) => Ok(None),
        Command::Plan(_)
        | Command::Migrate(_)
        | Command::Evacuate(_)
        | Command::Abort(_)
        | Command::History(_) => Ok(Some(url)),
        Command::Serve(_) => bail!(
            "`ferry serve` is the daemon: it does not run through another (unset FERRY_SERVER, or \
             drop --server)"
        ),
        Command::Hosts(_) => bail!(
            "`ferry hosts` does not run through a daemon: run it where the inventory is, or ask \
             the daemon (GET {url}/v1/hosts)"
        ),
        Command::Recover(_) => bail!(
            "`ferry recover` does not run through a daemon from the command line: run it where \
             the journal is, or ask the daemon (POST {url}/v1/recover)"
        ),
        Command::Release(a) => bail!(
            "`ferry release` does not run through a daemon from the command line: run it where \
             the journal is, or ask the daemon (POST {url}/v1/runs/{}/release)",
            a.id
        ),
    }
}

/// Run the command through the daemon at `url`.
pub fn run(url: &str, cli: &Cli, m: &ArgMatches) -> anyhow::Result<ExitCode> {
    let server = Server::new(url, token(&cli.remote)?, cli.remote.ca_cert.as_deref())?;
    let (name, sub) = m.subcommand().context("no command given")?;
    let cmd = Cli::command()
        .find_subcommand(name)
        .cloned()
        .with_context(|| format!("no command `{name}`"))?;
    match &cli.command {
        Command::Migrate(a) => migrate(&server, a, &cmd, sub),
        Command::Plan(a) => plan(&server, a, &cmd, sub),
        Command::Abort(a) => abort(&server, a),
        Command::History(a) => history(&server, a),
        Command::Evacuate(a) => evacuate::run(&server, a, &cmd, sub),
        _ => bail!("`ferry {name}` does not run through a daemon"),
    }
}

/// The token: `--token-file`'s first line that is not a comment, or FERRY_TOKEN. Never an
/// option's value (a command line is visible to every user of the machine).
fn token(r: &RemoteArgs) -> anyhow::Result<Option<String>> {
    if let Some(f) = &r.token_file {
        let text = crate::input::read_text(f, "token file", 64 << 10, crate::input::Accept::File)?;
        let t = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("the token file {} holds no token", f.display()))?;
        return Ok(Some(t.to_string()));
    }
    Ok(std::env::var("FERRY_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// A path segment with every byte but the unreserved ones percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Follow the event stream at `path` from the start of what the daemon holds, reconnecting
/// after the last event seen when the stream breaks (for a minute at most), until `each`
/// says stop. `false` when the daemon ended the stream first.
fn follow(
    s: &Server,
    path: &str,
    mut each: impl FnMut(http::SseEvent) -> bool,
) -> Result<bool, RemoteError> {
    let mut last = 0u64;
    let mut done = false;
    let mut broke = None;
    let ended = ferry_hypervisor::wait::poll_until(
        ferry_hypervisor::wait::deadline_in(Duration::from_secs(60)),
        Duration::from_secs(1),
        || {
            let r = s.events(path, last, |e| {
                if let Some(id) = e.id {
                    last = id;
                }
                done = !each(e);
                !done
            });
            match r {
                Ok(()) => Some(Ok(done)),
                // A refusal is an answer; a broken stream or connection is tried again.
                Err(e @ RemoteError::Problem { .. }) => Some(Err(e)),
                Err(e) => {
                    eprintln!("ferry: {}: reconnecting", crate::because(&e));
                    broke = Some(e);
                    None
                }
            }
        },
    );
    match (ended, broke) {
        (Some(r), _) => r,
        (None, Some(e)) => Err(e),
        (None, None) => Ok(false),
    }
}

/// `ferry migrate` through the daemon: started there, its events shown here as they come, its
/// result printed as the standalone command prints it. Ctrl-C asks the daemon to abort.
fn migrate(
    s: &Server,
    a: &MigrateArgs,
    cmd: &ClapCommand,
    m: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    if a.dry_run {
        let b = argv::body(cmd, m, &body::MIGRATE, &["json", "dry-run"])?;
        let v = s.post("/v1/plans", &b)?;
        let plan = plan_of(&v)?;
        let checks: Vec<String> = serde_json::from_value(v["checks"].clone())?;
        crate::migrate_cmd::print_dry_run(
            a.json,
            &plan,
            v["source_uri"].as_str().unwrap_or_default(),
            &checks,
        );
        return Ok(ExitCode::SUCCESS);
    }
    let b = argv::body(cmd, m, &body::MIGRATE, &["json"])?;
    let run = Arc::new(AtomicI64::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    {
        let (run, asked, s) = (run.clone(), asked.clone(), s.clone());
        let _ = ctrlc::set_handler(move || {
            if asked.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "ferry: Ctrl-C again: the daemon is still aborting and cleaning up; wait"
                );
                return;
            }
            eprintln!("ferry: Ctrl-C: aborting the migration (the guest stays on the source)");
            let r = run.load(Ordering::SeqCst);
            if r > 0 {
                abort_run(&s, r);
            }
        });
    }
    let answer = s.post("/v1/migrations", &b);
    let id = match &answer {
        Ok(v) => v["run"].as_i64(),
        Err(e) => e.member("run").and_then(Value::as_i64),
    };
    let Some(id) = id else {
        return Err(match answer {
            Err(e) => e.into(),
            Ok(_) => anyhow!(
                "the daemon at {} started a migration without a run",
                s.url()
            ),
        });
    };
    run.store(id, Ordering::SeqCst);
    if asked.load(Ordering::SeqCst) {
        abort_run(s, id);
    }
    // Every event of the run, from its first (the daemon holds them): as standalone shows them.
    let mut reporter = crate::migrate_cmd::reporter(a);
    let mut result = None;
    follow(s, &format!("/v1/events?run={id}"), |e| {
        match e.kind.as_str() {
            "result" => {
                result = Some(e.data);
                false
            }
            "resync" => {
                eprintln!("ferry: the daemon no longer holds some of run #{id}'s events");
                true
            }
            _ => {
                // A kind this Ferry does not know (a newer daemon's) is skipped.
                if let Ok(ev) = serde_json::from_value::<Event>(e.data) {
                    reporter.report(ev);
                }
                true
            }
        }
    })?;
    drop(reporter);
    let result = result.with_context(|| {
        format!(
            "the daemon at {0} ended run #{id}'s events before its result (is it shutting down?): \
             `ferry --server {0} history` says how the run ended",
            s.url()
        )
    })?;
    print_result(a.json, &result)
}

fn abort_run(s: &Server, run: i64) {
    if let Err(e) = s.delete(&format!("/v1/migrations/{run}")) {
        eprintln!("ferry: error: {}", crate::because(&e));
    }
}

/// A run's result line from the daemon, printed as standalone `ferry migrate` prints its own;
/// the exit status is the run's.
fn print_result(json: bool, v: &Value) -> anyhow::Result<ExitCode> {
    match v["outcome"].as_str() {
        Some("migrated") => {
            let summary: Summary = serde_json::from_value(v["summary"].clone())
                .context("the daemon's summary of the run")?;
            if json {
                crate::migrate_cmd::print_json(&ResultEvent::new(&RunResult::Migrated {
                    summary: &summary,
                }));
            } else {
                crate::migrate_cmd::print_summary(&summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("error") => {
            if json {
                // The result as standalone prints it: without the daemon's envelope.
                let mut line = v.clone();
                if let Some(o) = line.as_object_mut() {
                    // The run's own additions: its guest, the CLI's error text.
                    for k in crate::serve::hub::ENVELOPE.iter().chain(&["guest", "text"]) {
                        o.remove(*k);
                    }
                }
                crate::migrate_cmd::print_json(&line);
            }
            let text = v["text"].as_str().or(v["message"].as_str()).unwrap_or("");
            eprintln!("ferry: error: {text}");
            let exit = v["exit"].as_u64().and_then(|e| u8::try_from(e).ok());
            Ok(ExitCode::from(exit.unwrap_or(1)))
        }
        other => bail!(
            "the daemon's result (outcome {}) is not one this Ferry knows",
            other.unwrap_or("none")
        ),
    }
}

/// The plan in a daemon's `POST /v1/plans` answer, with its documents.
fn plan_of(v: &Value) -> anyhow::Result<ferry_core::Plan> {
    let mut plan: ferry_core::Plan =
        serde_json::from_value(v.clone()).context("the daemon's plan")?;
    plan.dest_xml = v["dest_xml"].as_str().unwrap_or_default().to_string();
    plan.persist_xml = v["persist_xml"].as_str().map(str::to_string);
    Ok(plan)
}

/// `ferry plan GUEST --from HOST` through the daemon (its online dry run): the same plan, the
/// files written here.
fn plan(s: &Server, a: &PlanArgs, cmd: &ClapCommand, m: &ArgMatches) -> anyhow::Result<ExitCode> {
    crate::plan_cmd::check_outputs(a)?;
    let b = argv::body(
        cmd,
        m,
        &body::MIGRATE,
        &["json", "out-xml", "out-persistent-xml", "no-diff"],
    )?;
    let v = match s.post("/v1/plans", &b) {
        Ok(v) => v,
        Err(e) if e.member("hosts").is_some() => {
            // No host can take the guest: each one's reasons, as standalone shows them.
            let hosts = e.member("hosts").cloned().unwrap_or_default();
            if a.json {
                outln!("{}", serde_json::json!({"target": null, "hosts": hosts}));
            } else {
                let ranking = ferry_core::placement::Ranking {
                    target: None,
                    hosts: serde_json::from_value(hosts)?,
                };
                out!("{}", ranking.render());
            }
            eprintln!("ferry: error: {}", crate::because(&e));
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let plan = plan_of(&v)?;
    let ranking = ferry_core::placement::Ranking {
        target: v["target"].as_str().map(str::to_string),
        hosts: serde_json::from_value(v["hosts"].clone()).unwrap_or_default(),
    };
    let found = crate::plan_cmd::Found {
        ranking: &ranking,
        warnings: &[],
        canaries: None,
    };
    crate::plan_cmd::output(a, &plan, v["source_uri"].as_str(), Some(&found))?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry abort ID|GUEST` through the daemon: asked there, waited for here.
fn abort(s: &Server, a: &AbortArgs) -> anyhow::Result<ExitCode> {
    let v = s.delete(&format!("/v1/migrations/{}", segment(&a.which)))?;
    let id = v["run"]
        .as_i64()
        .with_context(|| format!("the daemon at {} named no run", s.url()))?;
    let row_of = |v: Value| -> Option<RunRow> { serde_json::from_value(v["run"].clone()).ok() };
    let row = row_of(s.get(&format!("/v1/migrations/{id}"))?)
        .with_context(|| format!("the daemon at {} has no row for run #{id}", s.url()))?;
    crate::journal_cmd::print_abort_asked(&row);
    let ended = ferry_hypervisor::wait::poll_until(
        ferry_hypervisor::wait::deadline_in(Duration::from_secs(a.wait)),
        Duration::from_millis(250),
        || {
            let r = row_of(s.get(&format!("/v1/migrations/{id}")).ok()?)?;
            r.outcome
                .map(|o| ferry_migrate::abort::Ended::Outcome(o, r.message.unwrap_or_default()))
        },
    );
    Ok(crate::journal_cmd::print_abort_ended(
        &row,
        ended.unwrap_or(ferry_migrate::abort::Ended::StillRunning),
        a.wait,
    ))
}

/// `ferry history` through the daemon: its journal's runs and evacuations.
fn history(s: &Server, a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let v = s.get(&format!("/v1/runs?limit={}", a.last))?;
    let runs: Vec<RunRow> =
        serde_json::from_value(v["runs"].clone()).context("the daemon's runs")?;
    let mut evacs = vec![];
    if !a.json {
        let v = s.get(&format!("/v1/evacuations?limit={}", a.last))?;
        for e in v["evacuations"].as_array().into_iter().flatten() {
            let row: EvacuationRow = serde_json::from_value(e["evacuation"].clone())
                .context("the daemon's evacuations")?;
            let runs: Vec<(String, i64)> = e["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| Some((r["guest"].as_str()?.to_string(), r["run"].as_i64()?)))
                .collect();
            evacs.push((row, runs));
        }
    }
    crate::journal_cmd::print_history(
        &runs,
        &evacs,
        a.json,
        &format!("the journal of {}", s.url()),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the daemon sends is what this process reads back: every field, the empty and
    /// absent ones too.
    #[test]
    fn a_result_and_the_events_read_back_as_they_were_sent() {
        let s = Summary {
            guest: "g".into(),
            run: Some(ferry_journal::RunId(4)),
            ..Summary::default()
        };
        let v =
            serde_json::to_value(ResultEvent::new(&RunResult::Migrated { summary: &s })).unwrap();
        let back: Summary = serde_json::from_value(v["summary"].clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v["summary"]);
        for e in [
            Event::Run {
                run: ferry_journal::RunId(4),
            },
            Event::Note {
                message: "n".into(),
            },
            Event::Step {
                step: ferry_migrate::Step::Preflight,
                detail: "d".into(),
            },
        ] {
            let mut v = serde_json::to_value(&e).unwrap();
            // The daemon's envelope is ignored.
            v["id"] = 9.into();
            v["time_ms"] = 1.into();
            let back: Event = serde_json::from_value(v).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&e).unwrap()
            );
        }
    }

    #[test]
    fn a_guest_name_is_one_path_segment() {
        assert_eq!(segment("lab-guest_1.x~"), "lab-guest_1.x~");
        assert_eq!(segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
