//! What the daemon holds: its hosts' boundary, its journal's path, its tokens, the runs it
//! drives (each on a thread of its own, as the CLI drives one), their events and metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::inventory::Inventory;
use ferry_hypervisor::Hypervisor;
use ferry_journal::Journal;
use ferry_migrate::report::RunResult;
use ferry_migrate::{Event, MigrateError, Outcome, Reporter};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::auth::Tokens;
use super::hub::Hub;
use super::metrics::Metrics;
use super::problem::Problem;
use crate::args::MigrateArgs;

/// A run the daemon drives, as its clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub run: i64,
    pub guest: String,
    /// The flow's step now.
    pub step: Option<ferry_migrate::Step>,
    /// The job's last sample.
    pub progress: Option<ferry_core::convergence::Progress>,
    /// Each pre-seeded disk's last figures.
    pub seed: Vec<ferry_migrate::preseed::SeedProgress>,
    /// How it ended (the CLI's result line), once it has.
    pub result: Option<Value>,
    #[serde(skip)]
    pub cancel: Arc<AtomicBool>,
}

pub struct Shared {
    pub hv: Arc<dyn Hypervisor>,
    pub inventory: Option<Arc<Inventory>>,
    pub journal: PathBuf,
    pub tokens: Tokens,
    pub hub: Hub,
    pub metrics: Metrics,
    /// The runs started by this daemon, by run id (ended ones are kept until the daemon
    /// stops, for their result).
    pub runs: Mutex<BTreeMap<i64, Live>>,
    /// The evacuations started by this daemon, by id (ended ones kept, for their result).
    pub evacs: Mutex<BTreeMap<i64, super::evac::EvacLive>>,
    /// SIGTERM: no new work.
    pub closing: AtomicBool,
    /// Every run ended after `closing`: the event streams end.
    pub ended: watch::Sender<bool>,
    /// How long the daemon waits for a migration's checks before it answers `202` anyway.
    pub answer_within: Duration,
    /// How long a host's connection may take to open (`GET /v1/hosts`).
    pub connect_timeout: Duration,
}

pub type State = Arc<Shared>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("journal", &ferry_journal::shown(&self.journal))
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn runs(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Live>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn evacs(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, super::evac::EvacLive>> {
        self.evacs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many runs and evacuations are still running.
    pub fn busy(&self) -> usize {
        self.running().len() + self.evacs().values().filter(|e| e.result.is_none()).count()
    }

    /// SIGTERM: the evacuations start nothing new (`level` NO_NEW), or abort all (ABORT_ALL).
    pub fn stop_evacuations(&self, level: u8) {
        for e in self.evacs().values().filter(|e| e.result.is_none()) {
            e.stop.fetch_max(level, Ordering::SeqCst);
        }
    }

    /// The runs still running.
    pub fn running(&self) -> Vec<i64> {
        self.runs()
            .values()
            .filter(|l| l.result.is_none())
            .map(|l| l.run)
            .collect()
    }

    /// Ask every running run to abort (a second SIGTERM).
    pub fn abort_all(&self) {
        for l in self.runs().values().filter(|l| l.result.is_none()) {
            l.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// The journal, on a connection of the caller's.
    pub fn journal(&self) -> Result<Journal, Problem> {
        Journal::open(&self.journal).map_err(|e| Problem::journal(&e))
    }

    /// A daemon's own line, for the clients and its log.
    pub fn say(&self, message: String) {
        eprintln!("ferry serve: {message}");
        self.hub.publish(
            None,
            "daemon",
            json!({"event": "daemon", "message": message}),
        );
    }
}

/// How a started migration answered first.
#[derive(Debug)]
pub enum Started {
    /// It passed its checks and acts on the hosts now (or is still checking after the wait).
    Running { run: i64 },
    /// It ended before acting: refused, or (rarely) already done.
    Ended {
        run: Option<i64>,
        result: Result<Value, Problem>,
    },
}

/// The reporter of a run the daemon drives: every event to the hub, the run's state and the
/// metrics; the first answer to the request that started it.
struct Relay {
    state: State,
    guest: String,
    run: Option<i64>,
    cancel: Arc<AtomicBool>,
    first: Option<oneshot::Sender<Started>>,
}

impl Relay {
    fn update(&self, f: impl FnOnce(&mut Live)) {
        if let Some(run) = self.run {
            if let Some(l) = self.state.runs().get_mut(&run) {
                f(l);
            }
        }
    }
}

impl Reporter for Relay {
    fn report(&mut self, event: Event) {
        let value = serde_json::to_value(&event).unwrap_or(Value::Null);
        let kind = value["event"].as_str().unwrap_or("event").to_string();
        match &event {
            Event::Run { run } => {
                self.run = Some(run.0);
                self.state.runs().insert(
                    run.0,
                    Live {
                        run: run.0,
                        guest: self.guest.clone(),
                        step: None,
                        progress: None,
                        seed: vec![],
                        result: None,
                        cancel: self.cancel.clone(),
                    },
                );
            }
            Event::Step { step, .. } => {
                let step = *step;
                self.update(|l| l.step = Some(step));
                if !step.is_read_only() {
                    if let (Some(tx), Some(run)) = (self.first.take(), self.run) {
                        let _ = tx.send(Started::Running { run });
                    }
                }
            }
            Event::Job(p) => {
                if let Some(run) = self.run {
                    self.state.metrics.sample(run, &self.guest, p);
                }
                let p = p.clone();
                self.update(|l| l.progress = Some(p));
            }
            Event::Seed(s) => {
                let s = s.clone();
                self.update(|l| match l.seed.iter_mut().find(|x| x.disk == s.disk) {
                    Some(x) => *x = s,
                    None => l.seed.push(s),
                });
            }
            Event::Note { .. } | Event::Target(_) => {}
        }
        let mut value = value;
        if let Some(o) = value.as_object_mut() {
            o.insert("guest".into(), self.guest.clone().into());
        }
        self.state.hub.publish(self.run, &kind, value);
    }
}

/// The result line of a run, and its kind for the metrics.
fn result_of(outcome: &Result<Outcome, MigrateError>) -> (Value, String, Option<u64>) {
    match outcome {
        Ok(Outcome::Migrated(s)) => (
            serde_json::to_value(RunResult::Migrated { summary: s }).unwrap_or_default(),
            "migrated".into(),
            s.downtime_ms,
        ),
        Ok(Outcome::DryRun { .. }) => (json!({"outcome": "dry_run"}), "dry_run".into(), None),
        Err(e) => {
            let mut v = serde_json::to_value(e.result()).unwrap_or_default();
            // The error as the CLI prints it, a line per cause (`ferry --server` prints it).
            if let Some(o) = v.as_object_mut() {
                o.insert("text".into(), crate::because(e).into());
            }
            let kind = v["error"]["kind"].as_str().unwrap_or("error").to_string();
            let downtime = match e {
                MigrateError::VerifyFailed { summary, .. } => summary.downtime_ms,
                _ => None,
            };
            (v, kind, downtime)
        }
    }
}

/// Start `ferry migrate` on a thread of its own; the answer comes on the receiver once it
/// acts on the hosts, or ends.
pub fn start(state: &State, a: MigrateArgs) -> Result<oneshot::Receiver<Started>, Problem> {
    if state.closing.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let ask = crate::migrate_cmd::ask(&a, state.inventory.clone(), std::time::Instant::now())
        .map_err(|e| Problem::of_input(&e))?;
    let (tx, rx) = oneshot::channel();
    let st = state.clone();
    let guest = a.guest.clone();
    std::thread::Builder::new()
        .name(format!("ferry-run-{guest}"))
        .spawn(move || {
            let cancel = Arc::new(AtomicBool::new(false));
            let mut relay = Relay {
                state: st.clone(),
                guest: guest.clone(),
                run: None,
                cancel: cancel.clone(),
                first: Some(tx),
            };
            let outcome = match Journal::open(&st.journal) {
                Ok(journal) => {
                    st.metrics.started();
                    let o = ferry_migrate::migrate(&st.hv, &journal, &ask, &mut relay, &cancel);
                    let (v, kind, downtime) = result_of(&o);
                    st.metrics.ended(relay.run, &guest, &kind, downtime);
                    Ok((o, v))
                }
                Err(e) => Err(Problem::journal(&e)),
            };
            let (first, run) = (relay.first.take(), relay.run);
            let answer = match outcome {
                Ok((o, v)) => {
                    relay.update(|l| l.result = Some(v.clone()));
                    let mut line = v.clone();
                    if let Some(obj) = line.as_object_mut() {
                        obj.insert("event".into(), "result".into());
                        obj.insert("guest".into(), guest.clone().into());
                    }
                    st.hub.publish(run, "result", line);
                    match o {
                        Ok(_) => Ok(v),
                        Err(e) => Err(Problem::of_migration(&e)
                            .with("run", run.map(Value::from).unwrap_or_default())),
                    }
                }
                Err(p) => Err(p),
            };
            if let Some(tx) = first {
                let _ = tx.send(Started::Ended {
                    run,
                    result: answer,
                });
            }
            st.ended_one();
        })
        .map_err(|e| Problem::internal(format!("cannot start the run's thread: {e}")))?;
    Ok(rx)
}

impl Shared {
    /// A run ended: when closing and none runs any more, the event streams end.
    pub fn ended_one(&self) {
        if self.closing.load(Ordering::SeqCst) && self.busy() == 0 {
            let _ = self.ended.send(true);
        }
    }
}

pub fn shutting_down() -> Problem {
    Problem::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "The daemon is shutting down",
        "the daemon is shutting down (SIGTERM): it starts no new work; the running migrations \
         finish"
            .into(),
    )
}
