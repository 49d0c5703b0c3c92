//! `ferry evacuate`: every running guest off a host.
//!
//! Facts first, decided once: [`plan`] reads every host and ranks the targets of each guest
//! ([`crate::target::select`]), then the core places them all
//! ([`ferry_core::evacuate::place`]: no two guests promised the same memory or room) and
//! predicts the schedule with the model. [`execute`] then runs the migrations — each one the
//! whole `ferry migrate` flow, with its own lock, journal run, checks and rollback — starting
//! them when the core's [`dispatch`] says so, fed with the live figures of those in flight, and
//! sharing each link among them by setting each migration's bandwidth.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::evacuate::schedule::{live_transfer_left, order, share_on_start};
use ferry_core::evacuate::{
    dispatch, lower_bound, place, shares, simulate, Budgets, Flight, FlightPhase, HostRoom, Link,
    Move, Overheads, Policy, SimResult, Wanted,
};
use ferry_core::inventory::{HostState, Inventory, Store};
use ferry_core::placement::Ranking;
use ferry_core::{MigrationOptions, Rules};
use ferry_hypervisor::{HvError, Hypervisor};
use ferry_journal::{Journal, JournalError};
use serde::Serialize;

use crate::target::{self, HostSpec, SelectRequest};
use crate::{Ask, Event, MigrateError, Outcome, Reporter, Step, Summary};

const MIB: f64 = (1u64 << 20) as f64;

/// A link whose bandwidth nobody gave is modelled at 10 Gbit/s, and no migration is capped.
pub const DEFAULT_LINK_BPS: f64 = 10e9 / 8.0;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct EvacuateAsk {
    pub host: HostSpec,
    /// The hosts the guests may go to (`--to`, or every other inventory host).
    pub candidates: Vec<HostSpec>,
    pub inventory: Option<Arc<Inventory>>,
    /// The transport and policy every migration uses (its bandwidth is set per migration).
    pub options: MigrationOptions,
    pub policy: Policy,
    pub budgets: Budgets,
    /// Every host's link in MiB/s, by host name (`--link-bandwidth` for all, or the
    /// inventory's); a host not listed is not known.
    pub link_mib: Vec<(String, u64)>,
    pub answer_deadline: Duration,
    pub abort_grace: Duration,
    /// Retry a migration that failed with the guest still on the source once, on the
    /// next-ranked host.
    pub retry: bool,
    /// Move the shut-off guests too, cold ([`crate::cold`]); otherwise they are listed.
    pub offline: bool,
}

/// The evacuation decided: where each guest goes, and the schedule the model predicts.
#[derive(Debug, Clone, Serialize)]
pub struct EvacPlan {
    /// The source first, then the candidates.
    pub hosts: Vec<HostSpec>,
    pub links: Vec<Link>,
    /// Whether every link's bandwidth is known (then each migration's bandwidth is capped at
    /// its share).
    pub bandwidth_known: bool,
    pub moves: Vec<Move>,
    /// Running guests no host can take, and why.
    pub unplaced: Vec<(String, String)>,
    /// Guests defined on the host but not running, not moved (without `offline`).
    pub shut_off: Vec<String>,
    pub rankings: Vec<(String, Ranking)>,
    /// The model's prediction of this schedule, and the bound no schedule beats.
    pub predicted: SimResult,
    pub bound_s: f64,
    /// Seconds Ferry took to read the hosts and decide.
    pub planning_ms: u64,
}

/// The hosts a running evacuation is emptying (their name and URI): no Ferry command picks
/// them. An evacuation whose Ferry died on this machine (`alive` says no, as
/// [`crate::ferry_alive`]) no longer counts; one from another machine does.
pub fn draining(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<(String, String)>, JournalError> {
    let me = crate::this_machine();
    Ok(journal
        .open_evacuations()?
        .into_iter()
        .filter(|e| e.machine != me || alive(e.pid))
        .map(|e| (e.host, e.uri))
        .collect())
}

/// Evacuations cut short: not ended in the journal, and their Ferry (on this machine) is gone.
/// `ferry recover` recovers their runs one by one, then ends them with
/// [`end_interrupted`].
pub fn interrupted(
    journal: &Journal,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<ferry_journal::EvacuationRow>, JournalError> {
    let me = crate::this_machine();
    Ok(journal
        .open_evacuations()?
        .into_iter()
        .filter(|e| e.machine == me && !alive(e.pid))
        .collect())
}

/// End an evacuation cut short, saying why.
pub fn end_interrupted(
    journal: &Journal,
    e: &ferry_journal::EvacuationRow,
) -> Result<(), JournalError> {
    journal.finish_evacuation(
        e.id,
        ferry_journal::EvacuationOutcome::Interrupted,
        &format!(
            "its Ferry (pid {}) ended before the evacuation did; `ferry recover` finished its runs \
             one by one",
            e.pid
        ),
    )
}

/// Mark the hosts of running evacuations as draining.
pub fn mark_draining(specs: &mut [HostSpec], draining: &[(String, String)]) {
    for s in specs {
        if draining.iter().any(|(n, u)| *n == s.name || *u == s.uri) {
            s.state = HostState::Draining;
        }
    }
}

fn room_of(spec: &HostSpec, report: &ferry_core::facts::HostReport) -> Option<u64> {
    let pools: Vec<u64> = spec
        .local_stores
        .iter()
        .filter_map(|s| match s {
            Store::Pool(name) => report.pools.iter().find(|p| &p.name == name),
            Store::Hook(_) => None,
        })
        .map(|p| p.available)
        .collect();
    // A hook's room is not known: the hook itself answers when asked for a device.
    if pools.is_empty()
        || spec
            .local_stores
            .iter()
            .any(|s| matches!(s, Store::Hook(_)))
    {
        return None;
    }
    Some(pools.into_iter().sum())
}

/// Read every host, rank each running guest's targets, place them all, predict the schedule.
pub fn plan(hv: &Arc<dyn Hypervisor>, ask: &EvacuateAsk) -> Result<EvacPlan, MigrateError> {
    let t = Instant::now();
    let mut hosts = vec![ask.host.clone()];
    hosts.extend(ask.candidates.iter().cloned());
    let all = target::gather(hv, &hosts, ask.answer_deadline);
    let gather_ms = t.elapsed().as_millis() as u64;
    let src = &all[0];
    if src.id.is_none() {
        return Err(MigrateError::Host(HvError::Connect {
            uri: ask.host.uri.clone(),
            message: src.report.error.clone().unwrap_or_default(),
        }));
    }
    // The guests to move: the running ones, and with `offline` the shut-off ones too.
    let running: Vec<_> = src
        .report
        .guests
        .iter()
        .filter(|g| g.active || ask.offline)
        .collect();
    let shut_off = src
        .report
        .guests
        .iter()
        .filter(|g| !g.active && !ask.offline)
        .map(|g| g.name.clone())
        .collect();
    let cold = |name: &str| {
        src.report
            .guests
            .iter()
            .any(|g| g.name == name && !g.active)
    };
    let rooms: Vec<HostRoom> = all
        .iter()
        .map(|g| {
            let f = g.report.facts.as_ref();
            HostRoom {
                name: g.spec.name.clone(),
                memory_free: f.map_or(0, |f| {
                    f.memory_free
                        .saturating_sub(g.spec.reserve_memory)
                        .saturating_sub(g.report.incoming_memory())
                }),
                memory_total: f.map_or(0, |f| f.memory_total),
                room: room_of(&g.spec, &g.report),
            }
        })
        .collect();
    let mut wanted = vec![];
    let mut unplaced = vec![];
    let mut rankings = vec![];
    for g in &running {
        let req = SelectRequest {
            guest: g.name.clone(),
            source: ask.host.clone(),
            candidates: ask.candidates.clone(),
            rules: Rules::default(),
            inventory: ask.inventory.clone(),
            answer_deadline: ask.answer_deadline,
            explicit: false,
        };
        // The facts read once above serve every guest's ranking.
        match target::select_among(hv.as_ref(), &req, &all, gather_ms) {
            Ok(sel) => {
                let copy = sel.chosen.as_ref().map_or(0, |(_, d)| d.copy_bytes);
                let options = sel
                    .ranking
                    .hosts
                    .iter()
                    .filter(|v| v.eligible)
                    .filter_map(|v| {
                        let i = hosts.iter().position(|h| h.name == v.name)?;
                        Some((i, v.score, copy))
                    })
                    .collect();
                wanted.push(Wanted {
                    guest: g.name.clone(),
                    memory: g.memory,
                    options,
                });
                rankings.push((g.name.clone(), sel.ranking));
            }
            Err(e) => unplaced.push((g.name.clone(), crate::error_chain(&e))),
        }
    }
    let link_of = |h: &HostSpec| {
        ask.link_mib
            .iter()
            .find(|(n, _)| *n == h.name)
            .map(|(_, m)| *m as f64 * MIB)
    };
    let bandwidth_known = hosts.iter().all(|h| link_of(h).is_some());
    let links: Vec<Link> = hosts
        .iter()
        .map(|h| Link::symmetric(link_of(h).unwrap_or(DEFAULT_LINK_BPS)))
        .collect();
    let mut moves = vec![];
    for (w, p) in wanted.iter().zip(place(&wanted, &rooms)) {
        match p.to {
            Some(to) => moves.push(Move {
                guest: w.guest.clone(),
                from: 0,
                to,
                fallback: p.fallback,
                memory: w.memory,
                disk: p.copy_bytes,
                dirty_bps: 0.0,
                cold: cold(&w.guest),
            }),
            None => unplaced.push((
                w.guest.clone(),
                p.why_not.unwrap_or_else(|| "no host".into()),
            )),
        }
    }
    let ov = Overheads::default();
    let predicted = simulate(ask.policy, &ask.budgets, &ov, &links, &moves);
    let bound_s = lower_bound(&links, &moves, &ov);
    Ok(EvacPlan {
        hosts,
        links,
        bandwidth_known,
        moves,
        unplaced,
        shut_off,
        rankings,
        predicted,
        bound_s,
        planning_ms: t.elapsed().as_millis() as u64,
    })
}

/// How one guest's evacuation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestOutcome {
    /// Migrated and verified on its target.
    Migrated,
    /// Failed; the guest runs on the source still (its target cleaned).
    StayedOnSource,
    /// Failed, and the guest is not (only) on the source: read the message; `ferry recover`.
    Uncertain,
    /// Never started: Ctrl-C, or no host could take it.
    NotStarted,
}

/// One guest's line in the final table.
#[derive(Debug, Clone, Serialize)]
pub struct GuestResult {
    pub guest: String,
    /// The last target tried.
    pub target: Option<String>,
    pub outcome: GuestOutcome,
    pub attempts: u32,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub message: Option<String>,
    /// The journal's runs, one per attempt.
    pub runs: Vec<ferry_journal::RunId>,
}

/// What the evacuation reports while it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EvacEvent {
    /// A migration starts (again, for a retry), at this bandwidth cap.
    Started {
        guest: String,
        to: String,
        attempt: u32,
        bandwidth_mib: Option<u64>,
    },
    /// One of a migration's own events.
    Migration { guest: String, inner: Event },
    /// A migration's bandwidth changed: the link's share moved.
    Bandwidth { guest: String, mib: u64 },
    /// A migration ended.
    Ended(GuestResult),
    /// Ctrl-C or a stop: what happens now.
    Stopping { message: String },
}

/// What the evacuation's live view is told.
pub trait EvacReporter {
    fn report(&mut self, e: EvacEvent);
}

impl EvacReporter for Vec<EvacEvent> {
    fn report(&mut self, e: EvacEvent) {
        self.push(e);
    }
}

/// How often a running job's figures come (the flow samples twice a second).
const SAMPLE_S: f64 = 0.5;

/// [`execute`]'s stop levels (an `AtomicU8`): run on, start nothing new, abort all.
pub const GO: u8 = 0;
pub const NO_NEW: u8 = 1;
pub const ABORT_ALL: u8 = 2;

enum Msg {
    Flow(usize, Event),
    Done(usize, Attempt),
}

struct Attempt {
    result: Result<Box<Summary>, (GuestOutcome, String)>,
    run: Option<ferry_journal::RunId>,
    took: Duration,
}

/// One move in flight, as the loop tracks it.
struct Live {
    mv: usize,
    phase: FlightPhase,
    transfer_left_s: f64,
    /// When `transfer_left_s` was figured: it counts down from there.
    sampled: Instant,
    started: Instant,
    cap_mib: Option<u64>,
    cancel: Arc<AtomicBool>,
}

/// The schedule's phase of a migration in this step of its flow (`None`: the job's own
/// figures tell).
fn flight_phase(step: Step) -> Option<FlightPhase> {
    match step {
        Step::Target | Step::Inventory | Step::Preflight | Step::Plan | Step::Prepare => {
            Some(FlightPhase::Setup)
        }
        Step::Migrate => None,
        // A cold move's disks going through the storage streams.
        Step::Copy => Some(FlightPhase::Transfer),
        Step::Define | Step::Verify | Step::Rollback => Some(FlightPhase::Finish),
    }
}

/// Run the evacuation: start migrations as [`dispatch`] decides, retry a failure once on the
/// next-ranked host, and stop as `stop` says. Each migration is the whole `ferry migrate`
/// flow, with its own journal run (recorded under `evacuation`).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    hv: &Arc<dyn Hypervisor>,
    journal_path: &Path,
    evacuation: i64,
    ask: &EvacuateAsk,
    plan: &EvacPlan,
    reporter: &mut dyn EvacReporter,
    stop: &AtomicU8,
) -> Vec<GuestResult> {
    // The model's overheads until migrations measure them: a real setup's length replaces the
    // estimate (the next migration starts that long before the current one stops sending).
    let mut ov = Overheads::default();
    let mut moves = plan.moves.clone();
    let mut waiting = order(ask.policy, &plan.links, &moves);
    let mut live: Vec<Live> = vec![];
    let mut results: Vec<Option<GuestResult>> = vec![None; moves.len()];
    // Per move: the original move it retries (its result line).
    let mut line_of: Vec<usize> = (0..moves.len()).collect();
    let journal = Journal::open(journal_path).ok();
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut announced_stop = GO;
    let mut conns = vec![];
    std::thread::scope(|scope| {
        loop {
            let level = stop.load(Ordering::SeqCst);
            if level != announced_stop {
                announced_stop = level;
                let message = if level >= ABORT_ALL {
                    for l in &live {
                        l.cancel.store(true, Ordering::SeqCst);
                    }
                    format!(
                        "aborting the {} running migration(s); each rolls back (its guest stays \
                         on the source)",
                        live.len()
                    )
                } else {
                    format!(
                        "no new migration starts; the {} running finish (Ctrl-C again aborts \
                         them)",
                        live.len()
                    )
                };
                reporter.report(EvacEvent::Stopping { message });
            }
            let flights: Vec<Flight> = live
                .iter()
                .map(|l| Flight {
                    mv: l.mv,
                    phase: l.phase,
                    transfer_left_s: (l.transfer_left_s - l.sampled.elapsed().as_secs_f64())
                        .max(0.0),
                })
                .collect();
            // The link's share of each sending migration: re-applied when it moved.
            if plan.bandwidth_known {
                let share = shares(&plan.links, &moves, &flights);
                for (l, s) in live.iter_mut().zip(share) {
                    let mib = (s / MIB).floor().max(1.0) as u64;
                    // A cold copy has no migration job to re-cap. A failed call is not
                    // repeated: the share it missed is the one it keeps until the next change.
                    let m = &moves[l.mv];
                    if l.phase == FlightPhase::Transfer && !m.cold && l.cap_mib != Some(mib) {
                        l.cap_mib = Some(mib);
                        let uri = &plan.hosts[m.from].uri;
                        if set_speed(hv.as_ref(), &mut conns, uri, &m.guest, mib) {
                            reporter.report(EvacEvent::Bandwidth {
                                guest: m.guest.clone(),
                                mib,
                            });
                        }
                    }
                }
            }
            if level == GO {
                let start = dispatch(
                    ask.policy,
                    &ask.budgets,
                    &ov,
                    &plan.links,
                    &moves,
                    &waiting,
                    &flights,
                );
                waiting.retain(|i| !start.contains(i));
                for i in start {
                    let m = &moves[i];
                    let attempt = 1 + (i >= plan.moves.len()) as u32;
                    // Its bandwidth: the share it will get once it sends, with those that will
                    // still be sending then.
                    let cap = plan.bandwidth_known.then(|| {
                        let s = share_on_start(&plan.links, &moves, &flights, i, ov.setup_s);
                        (s / MIB).floor().max(1.0) as u64
                    });
                    reporter.report(EvacEvent::Started {
                        guest: m.guest.clone(),
                        to: plan.hosts[m.to].name.clone(),
                        attempt,
                        bandwidth_mib: cap,
                    });
                    let cancel = Arc::new(AtomicBool::new(false));
                    live.push(Live {
                        mv: i,
                        phase: FlightPhase::Setup,
                        transfer_left_s: f64::INFINITY,
                        sampled: Instant::now(),
                        started: Instant::now(),
                        cap_mib: cap,
                        cancel: cancel.clone(),
                    });
                    let mut options = ask.options.clone();
                    if cap.is_some() {
                        options.bandwidth_mib = cap;
                    }
                    let select = SelectRequest {
                        guest: m.guest.clone(),
                        source: plan.hosts[m.from].clone(),
                        candidates: vec![plan.hosts[m.to].clone()],
                        rules: Rules::default(),
                        inventory: ask.inventory.clone(),
                        answer_deadline: ask.answer_deadline,
                        explicit: true,
                    };
                    let (tx, hv) = (tx.clone(), hv.clone());
                    let (grace, cold) = (ask.abort_grace, m.cold);
                    scope.spawn(move || {
                        let a = one(
                            &hv,
                            journal_path,
                            select,
                            options,
                            grace,
                            cold,
                            i,
                            &tx,
                            &cancel,
                        );
                        let _ = tx.send(Msg::Done(i, a));
                    });
                }
            }
            if live.is_empty() && (waiting.is_empty() || level != GO) {
                break;
            }
            let msg = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match msg {
                Msg::Flow(i, e) => {
                    if let Some(l) = live.iter_mut().find(|l| l.mv == i) {
                        match &e {
                            Event::Step { step, .. } => {
                                if let Some(p) = flight_phase(*step) {
                                    if p == FlightPhase::Transfer && l.phase == FlightPhase::Setup {
                                        // A cold copy: no job figures, the model's estimate.
                                        let m = &moves[i];
                                        let bps =
                                            plan.links[m.from].out_bps.min(plan.links[m.to].in_bps);
                                        l.transfer_left_s = m.transfer_s(bps);
                                        l.sampled = Instant::now();
                                    }
                                    l.phase = p;
                                }
                            }
                            Event::Job(p) => {
                                let (phase, left) = live_transfer_left(p, moves[i].memory);
                                // A measured setup replaces the estimate, plus the age a
                                // figure may have when the loop reads it (one sample).
                                if l.phase == FlightPhase::Setup && phase == FlightPhase::Transfer {
                                    ov.setup_s = l.started.elapsed().as_secs_f64() + SAMPLE_S;
                                }
                                l.phase = phase;
                                if let Some(left) = left {
                                    l.transfer_left_s = left;
                                    l.sampled = Instant::now();
                                }
                                if p.dirty_rate_bps > 0 {
                                    moves[i].dirty_bps = p.dirty_rate_bps as f64;
                                }
                            }
                            _ => {}
                        }
                    }
                    reporter.report(EvacEvent::Migration {
                        guest: moves[i].guest.clone(),
                        inner: e,
                    });
                }
                Msg::Done(i, a) => {
                    live.retain(|l| l.mv != i);
                    let line = line_of[i];
                    let prev = results[line].take();
                    let mut runs = prev.as_ref().map(|p| p.runs.clone()).unwrap_or_default();
                    if let (Some(r), Some(j)) = (a.run, &journal) {
                        runs.push(r);
                        let _ = j.add_evacuation_run(evacuation, &moves[i].guest, r);
                    }
                    let attempts = prev.as_ref().map_or(0, |p| p.attempts) + 1;
                    let target = Some(plan.hosts[moves[i].to].name.clone());
                    let (outcome, downtime_ms, bytes, message) = match a.result {
                        Ok(s) => (GuestOutcome::Migrated, s.downtime_ms, s.data_bytes, None),
                        Err((outcome, message)) => (outcome, None, None, Some(message)),
                    };
                    let r = GuestResult {
                        guest: moves[i].guest.clone(),
                        target,
                        outcome,
                        attempts,
                        duration_ms: a.took.as_millis() as u64,
                        downtime_ms,
                        bytes,
                        message,
                        runs,
                    };
                    // A failure that left the guest where it was: once more, on the next host.
                    let retry_to = (ask.retry
                        && r.outcome == GuestOutcome::StayedOnSource
                        && attempts == 1
                        && stop.load(Ordering::SeqCst) == GO)
                        .then(|| moves[i].fallback.first().copied())
                        .flatten();
                    reporter.report(EvacEvent::Ended(r.clone()));
                    results[line] = Some(r);
                    if let Some(to) = retry_to {
                        let mut m = moves[i].clone();
                        m.to = to;
                        m.fallback.retain(|&h| h != to);
                        moves.push(m);
                        line_of.push(line);
                        waiting.insert(0, moves.len() - 1);
                    }
                }
            }
        }
    });
    plan.moves
        .iter()
        .zip(results)
        .map(|(m, r)| {
            r.unwrap_or_else(|| GuestResult {
                guest: m.guest.clone(),
                target: Some(plan.hosts[m.to].name.clone()),
                outcome: GuestOutcome::NotStarted,
                attempts: 0,
                duration_ms: 0,
                downtime_ms: None,
                bytes: None,
                message: Some("not started: the evacuation was stopped".into()),
                runs: vec![],
            })
        })
        .collect()
}

/// Set a running migration's bandwidth, on one connection per source host for the whole run.
fn set_speed(
    hv: &dyn Hypervisor,
    conns: &mut Vec<(String, ferry_hypervisor::HostId)>,
    uri: &str,
    guest: &str,
    mib: u64,
) -> bool {
    let id = match conns.iter().find(|(u, _)| u == uri) {
        Some((_, id)) => *id,
        None => match hv.connect(uri) {
            Ok(id) => {
                conns.push((uri.to_string(), id));
                id
            }
            Err(_) => return false,
        },
    };
    hv.set_max_speed(id, guest, mib).is_ok()
}

/// One migration: `ferry migrate GUEST --to TARGET`, its events forwarded.
#[allow(clippy::too_many_arguments)]
fn one(
    hv: &Arc<dyn Hypervisor>,
    journal_path: &Path,
    select: SelectRequest,
    options: MigrationOptions,
    abort_grace: Duration,
    cold: bool,
    i: usize,
    tx: &mpsc::Sender<Msg>,
    cancel: &AtomicBool,
) -> Attempt {
    struct Forward<'a> {
        i: usize,
        tx: &'a mpsc::Sender<Msg>,
    }
    impl Reporter for Forward<'_> {
        fn report(&mut self, event: Event) {
            let _ = self.tx.send(Msg::Flow(self.i, event));
        }
    }
    let t = Instant::now();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let guest = select.guest.clone();
    let journal = match Journal::open(journal_path) {
        Ok(j) => j,
        Err(e) => {
            return Attempt {
                result: Err((GuestOutcome::StayedOnSource, crate::error_chain(&e))),
                run: None,
                took: t.elapsed(),
            }
        }
    };
    let ask = Ask {
        select,
        options,
        dry_run: false,
        cold,
        timeout: None,
        started: t,
        abort_grace,
    };
    let outcome = crate::migrate(hv, &journal, &ask, &mut Forward { i, tx }, cancel);
    let run = journal
        .latest_run_of(&guest, since)
        .ok()
        .flatten()
        .map(|r| r.id);
    let result = match outcome {
        Ok(Outcome::Migrated(s)) => Ok(s),
        Ok(Outcome::DryRun { .. }) => Err((GuestOutcome::NotStarted, "dry run".into())),
        Err(e) => {
            let where_ = match &e {
                MigrateError::Failed { location, .. } if !location.on_source() => {
                    GuestOutcome::Uncertain
                }
                MigrateError::VerifyFailed { .. } => GuestOutcome::Uncertain,
                _ => GuestOutcome::StayedOnSource,
            };
            Err((where_, crate::error_chain(&e)))
        }
    };
    Attempt {
        result,
        run,
        took: t.elapsed(),
    }
}

/// How an evacuation ended, decided from the host itself once every migration has: does any
/// guest still run there?
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub outcome: ferry_journal::EvacuationOutcome,
    /// Guests still running on the host (or why it could not be read).
    pub still_running: Vec<String>,
    /// Some guest's place is uncertain: `ferry recover` must look at its run.
    pub uncertain: bool,
    pub migrated: usize,
    /// The journal's message: how many moved, in how long, and what is left.
    pub message: String,
    pub makespan_ms: u64,
}

/// Read the host, decide the evacuation's outcome, and end it in the journal.
pub fn conclude(
    hv: &dyn Hypervisor,
    journal: &Journal,
    evacuation: i64,
    host: &HostSpec,
    results: &[GuestResult],
    makespan_ms: u64,
) -> Verdict {
    let still_running: Vec<String> = hv
        .connect(&host.uri)
        .and_then(|h| hv.guests(h))
        .map(|g| g.into_iter().filter(|g| g.active).map(|g| g.name).collect())
        .unwrap_or_else(|e| vec![format!("(cannot read {}: {e})", host.name)]);
    let verdict = decide_verdict(still_running, results, makespan_ms);
    let _ = journal.finish_evacuation(evacuation, verdict.outcome, &verdict.message);
    verdict
}

/// The verdict from what the host says and what each migration ended as.
pub fn decide_verdict(
    still_running: Vec<String>,
    results: &[GuestResult],
    makespan_ms: u64,
) -> Verdict {
    use ferry_journal::EvacuationOutcome;
    let migrated = results
        .iter()
        .filter(|r| r.outcome == GuestOutcome::Migrated)
        .count();
    let message = format!(
        "{migrated} of {} migrated in {:.1} s; still running there: {}",
        results.len(),
        makespan_ms as f64 / 1000.0,
        if still_running.is_empty() {
            "none".into()
        } else {
            still_running.join(", ")
        }
    );
    Verdict {
        outcome: if still_running.is_empty() {
            EvacuationOutcome::Emptied
        } else {
            EvacuationOutcome::Incomplete
        },
        uncertain: results.iter().any(|r| r.outcome == GuestOutcome::Uncertain),
        still_running,
        migrated,
        message,
        makespan_ms,
    }
}
