//! Running an evacuation: the migrations started as the core's dispatch decides over live
//! figures, each link shared, a failure retried once, stops answered.

use super::*;

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
        Step::Target
        | Step::Inventory
        | Step::Preflight
        | Step::Plan
        | Step::Prepare
        | Step::Freeze => Some(FlightPhase::Setup),
        Step::Migrate => None,
        // A cold move's or a pre-seed's disks going through the storage streams.
        Step::Copy | Step::Seed => Some(FlightPhase::Transfer),
        Step::Collapse | Step::Define | Step::Verify | Step::Rollback => Some(FlightPhase::Finish),
    }
}

/// Run the evacuation: start migrations as [`dispatch`] decides, retry a failure once on the
/// next-ranked host, and stop as `stop` says. Each migration is the whole `ferry migrate`
/// flow, with its own journal run (recorded under `evacuation`).
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
                    // `ferry migrate GUEST --to TARGET`, as the operator would have asked.
                    let one_ask = Ask {
                        select: SelectRequest {
                            guest: m.guest.clone(),
                            source: plan.hosts[m.from].clone(),
                            candidates: vec![plan.hosts[m.to].clone()],
                            rules: Rules::default(),
                            inventory: ask.inventory.clone(),
                            answer_deadline: ask.answer_deadline,
                            explicit: true,
                        },
                        options,
                        dry_run: false,
                        cold: m.cold,
                        timeout: None,
                        started: Instant::now(),
                        abort_grace: ask.abort_grace,
                    };
                    let (tx, hv) = (tx.clone(), hv.clone());
                    scope.spawn(move || {
                        let a = one(&hv, journal_path, &one_ask, i, &tx, &cancel);
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
fn one(
    hv: &Arc<dyn Hypervisor>,
    journal_path: &Path,
    ask: &Ask,
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
    let guest = ask.select.guest.clone();
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
    let outcome = crate::migrate(hv, &journal, ask, &mut Forward { i, tx }, cancel);
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
