//! Evacuations the daemon drives: `ferry evacuate` on a thread of its own, its events (and its
//! migrations') to the hub with the evacuation's id, each guest's times for the timeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use ferry_migrate::evacuate::{self, AskError, EvacEvent, EvacReporter};
use ferry_migrate::Event;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::problem::Problem;
use super::state::{shutting_down, State};
use crate::args::EvacuateArgs;

/// One guest of an evacuation, as the page draws it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestLive {
    /// The target of the attempt running or last run.
    pub to: Option<String>,
    pub attempt: u32,
    pub run: Option<i64>,
    /// Milliseconds from the evacuation's start.
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub progress: Option<ferry_core::convergence::Progress>,
    /// How it ended (`ferry evacuate`'s line for the guest).
    pub result: Option<Value>,
}

/// An evacuation the daemon drives.
#[derive(Debug, Clone, Serialize)]
pub struct EvacLive {
    pub evacuation: i64,
    pub host: String,
    /// Where each guest goes and the model's schedule (`plan.predicted.spans`: each move's
    /// predicted start and end, in seconds).
    pub plan: Value,
    pub guests: BTreeMap<String, GuestLive>,
    /// The verdict, once it ended.
    pub result: Option<Value>,
    #[serde(skip)]
    pub stop: Arc<AtomicU8>,
}

struct Relay {
    st: State,
    evacuation: i64,
    host: String,
    started: Instant,
    /// Each move's bytes (memory and copied disks), by guest.
    bytes: BTreeMap<String, u64>,
    /// When the model says the evacuation ends (Unix seconds).
    end_s: f64,
}

impl Relay {
    fn guest(&self, guest: &str, f: impl FnOnce(&mut GuestLive)) {
        let mut evacs = self.st.evacs();
        if let Some(e) = evacs.get_mut(&self.evacuation) {
            f(e.guests.entry(guest.to_string()).or_default());
        }
    }

    fn run_of(&self, guest: &str) -> Option<i64> {
        self.st
            .evacs()
            .get(&self.evacuation)
            .and_then(|e| e.guests.get(guest))
            .and_then(|g| g.run)
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The evacuation's metrics from its guests now.
    fn figures(&self) {
        let evacs = self.st.evacs();
        let Some(e) = evacs.get(&self.evacuation) else {
            return;
        };
        let total = self.bytes.len() as u64;
        let done = e.guests.values().filter(|g| g.result.is_some()).count() as u64;
        let running = e
            .guests
            .values()
            .filter(|g| g.started_ms.is_some() && g.ended_ms.is_none())
            .count() as u64;
        let remaining: u64 = e
            .guests
            .iter()
            .filter(|(_, g)| g.result.is_none())
            .map(|(name, g)| {
                let sent = g
                    .progress
                    .as_ref()
                    .map_or(0, |p| p.disk_processed + p.mem_processed);
                self.bytes
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(sent)
            })
            .sum();
        self.st.metrics.evacuation(
            self.evacuation,
            &self.host,
            [total, done, running],
            remaining,
            self.end_s,
        );
    }
}

impl EvacReporter for Relay {
    fn report(&mut self, e: EvacEvent) {
        let at = self.ms();
        let (kind, run, mut value) = match &e {
            EvacEvent::Migration { guest, inner } => {
                match inner {
                    Event::Run { run } => self.guest(guest, |g| g.run = Some(run.0)),
                    Event::Job(p) => {
                        if let Some(run) = self.run_of(guest) {
                            self.st.metrics.sample(run, guest, p);
                        }
                        let p = p.clone();
                        self.guest(guest, |g| g.progress = Some(p));
                    }
                    _ => {}
                }
                let mut v = serde_json::to_value(inner).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("guest".into(), guest.clone().into());
                }
                let kind = v["event"].as_str().unwrap_or("event").to_string();
                (kind, self.run_of(guest), v)
            }
            EvacEvent::Started {
                guest, to, attempt, ..
            } => {
                self.st.metrics.started();
                let (to, attempt) = (to.clone(), *attempt);
                self.guest(guest, |g| {
                    g.to = Some(to);
                    g.attempt = attempt;
                    g.run = None;
                    g.started_ms = Some(at);
                    g.ended_ms = None;
                    g.progress = None;
                });
                (
                    "started".into(),
                    None,
                    serde_json::to_value(&e).unwrap_or_default(),
                )
            }
            EvacEvent::Ended(r) => {
                let run = self.run_of(&r.guest);
                let outcome = serde_json::to_value(r.outcome).unwrap_or_default();
                self.st.metrics.ended(
                    run,
                    &r.guest,
                    outcome.as_str().unwrap_or("ended"),
                    r.downtime_ms,
                );
                let line = serde_json::to_value(r).unwrap_or_default();
                self.guest(&r.guest, |g| {
                    g.ended_ms = Some(at);
                    g.result = Some(line);
                });
                (
                    "ended".into(),
                    run,
                    serde_json::to_value(&e).unwrap_or_default(),
                )
            }
            EvacEvent::Bandwidth { guest, .. } => {
                let run = self.run_of(guest);
                (
                    "bandwidth".into(),
                    run,
                    serde_json::to_value(&e).unwrap_or_default(),
                )
            }
            EvacEvent::Stopping { .. } => (
                "stopping".into(),
                None,
                serde_json::to_value(&e).unwrap_or_default(),
            ),
        };
        if let Some(o) = value.as_object_mut() {
            o.insert("at_ms".into(), at.into());
        }
        self.figures();
        self.st
            .hub
            .publish_in(Some(self.evacuation), run, &kind, value);
    }
}

fn ask_problem(e: anyhow::Error) -> Problem {
    match e.downcast_ref::<AskError>() {
        Some(AskError::AlreadyEvacuating(host)) => Problem::new(
            StatusCode::CONFLICT,
            "busy",
            "The host is already being evacuated",
            format!("{host} is already being evacuated (one evacuation per host)"),
        ),
        _ => Problem::of_input(&e),
    }
}

/// `ferry evacuate --dry-run`: the plan, nothing started.
pub fn dry_run(st: &State, a: &EvacuateArgs) -> Result<Value, Problem> {
    let journal = st.journal()?;
    let ask = crate::evacuate_cmd::ask(a, st.inventory.clone(), &journal).map_err(ask_problem)?;
    let plan = evacuate::plan(&st.hv, &ask).map_err(|e| Problem::of_migration(&e))?;
    Ok(json!({"outcome": "dry_run", "empties_the_host": plan.empties_the_host(), "plan": plan}))
}

/// Start `ferry evacuate` on a thread of its own; the answer (its id, or why not) comes once
/// it is planned and begun in the journal.
pub fn start(
    st: &State,
    a: EvacuateArgs,
) -> Result<oneshot::Receiver<Result<i64, Problem>>, Problem> {
    if st.closing.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let (tx, rx) = oneshot::channel();
    let st = st.clone();
    std::thread::Builder::new()
        .name(format!("ferry-evacuate-{}", a.host))
        .spawn(move || {
            let begun = (|| -> Result<_, Problem> {
                let journal = st.journal()?;
                let ask = crate::evacuate_cmd::ask(&a, st.inventory.clone(), &journal)
                    .map_err(ask_problem)?;
                // A host already draining is refused before any host is read (reading them
                // creates canaries beside a running evacuation's migrations).
                let draining = evacuate::draining(&journal, ferry_migrate::ferry_alive)
                    .map_err(|e| Problem::journal(&e))?;
                if let Some((n, _)) = draining
                    .iter()
                    .find(|(n, u)| *n == ask.host.name || *u == ask.host.uri)
                {
                    return Err(ask_problem(AskError::AlreadyEvacuating(n.clone()).into()));
                }
                let plan = evacuate::plan(&st.hv, &ask).map_err(|e| Problem::of_migration(&e))?;
                let id = evacuate::begin(&journal, &ask.host, ferry_migrate::ferry_alive)
                    .map_err(|e| ask_problem(e.into()))?;
                Ok((journal, ask, plan, id))
            })();
            let (journal, ask, plan, id) = match begun {
                Ok(b) => b,
                Err(p) => {
                    let _ = tx.send(Err(p));
                    return;
                }
            };
            let stop = Arc::new(AtomicU8::new(evacuate::GO));
            let plan_json = serde_json::to_value(&plan).unwrap_or_default();
            st.evacs().insert(
                id,
                EvacLive {
                    evacuation: id,
                    host: ask.host.name.clone(),
                    plan: plan_json.clone(),
                    guests: plan
                        .moves
                        .iter()
                        .map(|m| (m.guest.clone(), GuestLive::default()))
                        .collect(),
                    result: None,
                    stop: stop.clone(),
                },
            );
            st.hub.publish_in(
                Some(id),
                None,
                "evacuation",
                json!({"event": "evacuation", "host": ask.host.name, "plan": plan_json}),
            );
            let _ = tx.send(Ok(id));
            let started = Instant::now();
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let mut relay = Relay {
                st: st.clone(),
                evacuation: id,
                host: ask.host.name.clone(),
                started,
                bytes: plan
                    .moves
                    .iter()
                    .map(|m| (m.guest.clone(), m.bytes()))
                    .collect(),
                end_s: unix_now + plan.predicted.makespan_s,
            };
            relay.figures();
            let results =
                evacuate::execute(&st.hv, &st.journal, id, &ask, &plan, &mut relay, &stop);
            let verdict = evacuate::conclude(
                st.hv.as_ref(),
                &journal,
                id,
                &ask.host,
                &results,
                started.elapsed().as_millis() as u64,
            );
            let v = serde_json::to_value(verdict.result(&plan, &results)).unwrap_or_default();
            if let Some(e) = st.evacs().get_mut(&id) {
                e.result = Some(v.clone());
            }
            st.metrics.evacuation_ended(id, &ask.host.name);
            let mut line = v;
            if let Some(o) = line.as_object_mut() {
                o.insert("event".into(), "evacuation_result".into());
                o.insert("host".into(), ask.host.name.clone().into());
                // The verdict as the CLI says it, and whether a guest's place is uncertain.
                o.insert("message".into(), verdict.message.clone().into());
                o.insert("uncertain".into(), verdict.uncertain.into());
            }
            st.hub.publish_in(Some(id), None, "evacuation_result", line);
            st.ended_one();
        })
        .map_err(|e| Problem::internal(format!("cannot start the evacuation's thread: {e}")))?;
    Ok(rx)
}
