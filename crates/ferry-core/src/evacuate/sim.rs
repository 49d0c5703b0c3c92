//! The model driven over time: a fluid simulation of an evacuation under a policy.
//!
//! Between two events every flight's bandwidth is constant (an equal share of each link end,
//! as [`shares`](super::schedule::shares) says); an event is a flight changing phase, or
//! reaching the moment a newcomer's setup would overlap its tail (so Ferry's rule is asked
//! then). After every instant's events the waiting moves are offered to [`admits`], the rule
//! [`dispatch`](super::schedule::dispatch) applies during a real evacuation; here the model's
//! figures stand in for the live ones.
//!
//! The simulation is event-driven so that a fleet's plan stays fast: a flight's figures are
//! brought up to date only when its rate changes or its own event comes (a queue holds the
//! next), and only the moves whose links were freed are offered. A test runs it against the
//! plain simulation (every flight advanced, `dispatch` asked, at every event) on random fleets.

use serde::Serialize;

use super::model::{Link, Move, Overheads};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::schedule::{
    admits, equal_share, order, sends_after, Budgets, EndLoad, Flight, FlightPhase, Policy, TIE_S,
};

/// What a simulated evacuation did.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SimResult {
    /// Seconds from the first start to the last migration's end.
    pub makespan_s: f64,
    /// Each move's start and end, in seconds.
    pub spans: Vec<(f64, f64)>,
    /// Bytes every migration put on the wire (memory re-sent included).
    pub wire_bytes: f64,
    /// The most migrations in flight at once.
    pub peak_flights: usize,
    /// Events simulated.
    pub events: usize,
}

/// The bound no schedule beats: the busiest link end's bytes (each sent once) over its
/// bandwidth, or the longest single migration alone on its links — whichever is larger.
pub fn lower_bound(links: &[Link], moves: &[Move], ov: &Overheads) -> f64 {
    let mut out = vec![0.0f64; links.len()];
    let mut inn = vec![0.0f64; links.len()];
    let mut longest = 0.0f64;
    for m in moves {
        out[m.from] += m.bytes() as f64;
        inn[m.to] += m.bytes() as f64;
        let alone = m.duration_s(links[m.from].out_bps.min(links[m.to].in_bps), ov);
        longest = longest.max(alone);
    }
    let link = links
        .iter()
        .enumerate()
        .map(|(i, l)| (out[i] / l.out_bps).max(inn[i] / l.in_bps))
        .fold(0.0, f64::max);
    link.max(longest)
}

/// The model's rounding: figures of seconds (or bytes left over a second) this close are equal.
const EPS: f64 = TIE_S;

/// A migration in flight in the simulation: its state as of `since`.
#[derive(Debug, Clone)]
struct Fl {
    mv: usize,
    phase: FlightPhase,
    /// When the figures below were last brought up to date.
    since: f64,
    /// Bytes per second while it sends: its share of its two link ends.
    rate: f64,
    setup_left: f64,
    disk_left: f64,
    mem_left: f64,
    finish_left: f64,
    /// Still sending once a newcomer's setup is over ([`sends_after`]): it loads its links.
    sends_after: bool,
    /// Bumped at every change, so that an event queued before it is ignored.
    version: u64,
    done: bool,
}

impl Fl {
    /// Seconds of sending left at its present rate.
    fn transfer_left(&self, m: &Move) -> f64 {
        if self.rate <= 0.0 {
            return f64::INFINITY;
        }
        self.disk_left / self.rate + self.mem_left / m.net_memory_bps(self.rate)
    }

    fn as_flight(&self, m: &Move) -> Flight {
        Flight {
            mv: self.mv,
            phase: self.phase,
            transfer_left_s: match self.phase {
                FlightPhase::Transfer => self.transfer_left(m),
                _ => f64::INFINITY,
            },
        }
    }

    /// Bring the figures up to `now`; the bytes sent meanwhile.
    fn advance(&mut self, m: &Move, now: f64) -> f64 {
        let mut dt = (now - self.since).max(0.0);
        self.since = now;
        // What is left for less than the clock can tell apart at `now` is done: the next
        // event could only fall on `now` again, and nothing would ever move (months-long runs
        // over very slow links leave such residues).
        let tick = now.abs() * f64::EPSILON * 4.0;
        match self.phase {
            FlightPhase::Setup => {
                self.setup_left -= dt;
                if self.setup_left <= tick {
                    self.setup_left = 0.0;
                }
                0.0
            }
            FlightPhase::Finish => {
                self.finish_left -= dt;
                if self.finish_left <= tick {
                    self.finish_left = 0.0;
                }
                0.0
            }
            FlightPhase::Transfer if self.rate > 0.0 => {
                let sent = self.rate * dt;
                let disk = self.disk_left.min(sent);
                self.disk_left -= disk;
                dt -= disk / self.rate;
                let mem_bps = m.net_memory_bps(self.rate);
                self.mem_left = (self.mem_left - mem_bps * dt).max(0.0);
                if self.disk_left / self.rate <= tick {
                    self.disk_left = 0.0;
                }
                if self.mem_left / mem_bps <= tick {
                    self.mem_left = 0.0;
                }
                sent
            }
            FlightPhase::Transfer => 0.0,
        }
    }

    /// When it next changes: a phase's end, the disks' end, or the moment a newcomer's setup
    /// would overlap its tail (it stops loading its links then).
    fn next_event(&self, m: &Move, setup_s: f64) -> f64 {
        match self.phase {
            FlightPhase::Setup => self.since + self.setup_left.max(0.0),
            FlightPhase::Finish => self.since + self.finish_left.max(0.0),
            FlightPhase::Transfer if self.rate <= 0.0 => f64::INFINITY,
            FlightPhase::Transfer => {
                let part = if self.disk_left > EPS {
                    self.disk_left / self.rate
                } else {
                    self.mem_left / m.net_memory_bps(self.rate)
                };
                let wake = self.transfer_left(m) - setup_s;
                let t = if self.sends_after && wake > EPS {
                    part.min(wake)
                } else {
                    part
                };
                self.since + t
            }
        }
    }
}

/// A time in the event queue, ordered (the model's times are finite or +inf, never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct At(f64);
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for At {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The simulation's state: flights, the load of every link end, the event queue.
struct Run<'a> {
    ov: &'a Overheads,
    links: &'a [Link],
    moves: &'a [Move],
    fl: Vec<Fl>,
    /// Flights (indexes into `fl`) out of each host, and into each host.
    out_of: Vec<Vec<usize>>,
    into: Vec<Vec<usize>>,
    /// Per link end: flights sending now (their rate's divisor), and flights still sending
    /// after a newcomer's setup (their share's divisor then).
    tx_out: Vec<usize>,
    tx_in: Vec<usize>,
    then_out: Vec<usize>,
    then_in: Vec<usize>,
    running: usize,
    queue: BinaryHeap<Reverse<(At, usize, u64)>>,
    wire: f64,
}

impl Run<'_> {
    fn push(&mut self, f: usize) {
        let m = &self.moves[self.fl[f].mv];
        self.fl[f].version += 1;
        // An event never falls on the instant its flight was brought up to: a change too
        // small for the clock there (a residue of a months-long run) would be handled at that
        // instant again and again. The next representable instant moves it on.
        let since = self.fl[f].since;
        let t = self.fl[f]
            .next_event(m, self.ov.setup_s)
            .max(since.next_up());
        if t.is_finite() {
            self.queue.push(Reverse((At(t), f, self.fl[f].version)));
        }
    }

    fn advance(&mut self, f: usize, now: f64) {
        let m = &self.moves[self.fl[f].mv];
        self.wire += self.fl[f].advance(m, now);
    }

    /// Count (or stop counting) flight `f` among those sending now.
    fn set_sending(&mut self, f: usize, on: bool) {
        let m = &self.moves[self.fl[f].mv];
        let (tx_out, tx_in) = (&mut self.tx_out[m.from], &mut self.tx_in[m.to]);
        if on {
            *tx_out += 1;
            *tx_in += 1;
        } else {
            *tx_out -= 1;
            *tx_in -= 1;
        }
    }

    /// Re-figure whether `f` loads its links after a newcomer's setup; `true` when it stopped.
    fn refresh_then(&mut self, f: usize) -> bool {
        let m = &self.moves[self.fl[f].mv];
        let now = sends_after(&self.fl[f].as_flight(m), self.ov.setup_s);
        if now == self.fl[f].sends_after {
            return false;
        }
        self.fl[f].sends_after = now;
        if now {
            self.then_out[m.from] += 1;
            self.then_in[m.to] += 1;
        } else {
            self.then_out[m.from] -= 1;
            self.then_in[m.to] -= 1;
        }
        !now
    }

    /// Bandwidth a flight sending now gets: an equal share of each end, the smaller.
    fn rate_of(&self, f: usize) -> f64 {
        let m = &self.moves[self.fl[f].mv];
        if self.fl[f].phase != FlightPhase::Transfer {
            return 0.0;
        }
        equal_share(self.links, m, self.tx_out[m.from], self.tx_in[m.to])
    }

    /// What a newcomer from `from` to `to` finds on its two link ends (as `dispatch` figures it).
    fn loads(&self, from: usize, to: usize) -> (EndLoad, EndLoad) {
        let then_share = |f: usize| {
            let m = &self.moves[self.fl[f].mv];
            if !self.fl[f].sends_after {
                return 0.0;
            }
            equal_share(self.links, m, self.then_out[m.from], self.then_in[m.to])
        };
        let end = |list: &Vec<usize>| EndLoad {
            flights: list.len(),
            busy_bps: list.iter().map(|&f| then_share(f)).sum(),
        };
        (end(&self.out_of[from]), end(&self.into[to]))
    }

    fn start(&mut self, i: usize, now: f64) -> usize {
        let m = &self.moves[i];
        let f = self.fl.len();
        self.fl.push(Fl {
            mv: i,
            phase: FlightPhase::Setup,
            since: now,
            rate: 0.0,
            setup_left: self.ov.setup_s,
            disk_left: m.disk as f64,
            mem_left: m.sent_memory() as f64,
            finish_left: self.ov.finish_s,
            sends_after: true,
            version: 0,
            done: false,
        });
        self.out_of[m.from].push(f);
        self.into[m.to].push(f);
        self.then_out[m.from] += 1;
        self.then_in[m.to] += 1;
        self.running += 1;
        self.push(f);
        f
    }
}

/// Simulate the evacuation of `moves` under `policy` and `budgets`.
///
/// An event-driven fluid model: each flight's rate holds until a flight on one of its link
/// ends starts or stops sending; each flight's next change waits in a queue. After every
/// instant's changes, the waiting moves whose links were freed are offered to [`admits`] in
/// the policy's order — the rule [`dispatch`](super::schedule::dispatch) applies in a real
/// evacuation. Moves on other links would find what they found before, and stay waiting.
pub fn simulate(
    policy: Policy,
    budgets: &Budgets,
    ov: &Overheads,
    links: &[Link],
    moves: &[Move],
) -> SimResult {
    let order = order(policy, links, moves);
    let mut rank = vec![0usize; moves.len()];
    let mut by_from: Vec<Vec<usize>> = vec![vec![]; links.len()];
    let mut by_to: Vec<Vec<usize>> = vec![vec![]; links.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
        by_from[moves[i].from].push(i);
        by_to[moves[i].to].push(i);
    }
    let mut started = vec![false; moves.len()];
    let mut spans = vec![(0.0, 0.0); moves.len()];
    let n = links.len();
    let mut run = Run {
        ov,
        links,
        moves,
        fl: vec![],
        out_of: vec![vec![]; n],
        into: vec![vec![]; n],
        tx_out: vec![0; n],
        tx_in: vec![0; n],
        then_out: vec![0; n],
        then_in: vec![0; n],
        running: 0,
        queue: BinaryHeap::new(),
        wire: 0.0,
    };
    let (mut now, mut peak, mut events) = (0.0f64, 0usize, 0usize);
    let mut unstarted = moves.len();
    // Link ends freed at this instant (sources' out-links, targets' in-links), and whether
    // a migration ended (the fleet's budget: any waiting move may start).
    let mut freed_out: Vec<usize> = vec![];
    let mut freed_in: Vec<usize> = vec![];
    let mut everyone = true;
    let mut offer: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
    loop {
        // Offer the waiting moves the freed links concern: always the first in the policy's
        // order that `admits` allows, as `dispatch` does. A start lowers the shares of those
        // it will share a link with: their other link ends' moves are offered again.
        offer.clear();
        if everyone {
            offer.extend(
                order
                    .iter()
                    .filter(|&&i| !started[i])
                    .map(|&i| Reverse(rank[i])),
            );
        }
        loop {
            let freed = freed_out
                .iter()
                .flat_map(|&h| &by_from[h])
                .chain(freed_in.iter().flat_map(|&h| &by_to[h]));
            offer.extend(freed.filter(|&&i| !started[i]).map(|&i| Reverse(rank[i])));
            freed_out.clear();
            freed_in.clear();
            everyone = false;
            let mut admitted = None;
            while let Some(Reverse(r)) = offer.pop() {
                let i = order[r];
                if started[i] || run.running >= budgets.fleet.unwrap_or(usize::MAX) {
                    continue;
                }
                let m = &moves[i];
                let (out, inn) = run.loads(m.from, m.to);
                if admits(policy, budgets, links, m, out, inn, run.running) {
                    admitted = Some(i);
                    break;
                }
            }
            let Some(i) = admitted else {
                break;
            };
            let m = &moves[i];
            started[i] = true;
            unstarted -= 1;
            spans[i].0 = now;
            run.start(i, now);
            for &g in &run.into[m.to] {
                freed_out.push(moves[run.fl[g].mv].from);
            }
            for &g in &run.out_of[m.from] {
                freed_in.push(moves[run.fl[g].mv].to);
            }
        }
        peak = peak.max(run.running);
        // The next instant: every change due then, together.
        let Some(Reverse((At(t), _, _))) = run.queue.peek().copied() else {
            break;
        };
        events += 1;
        now = t;
        let mut rerate_out: Vec<usize> = vec![];
        let mut rerate_in: Vec<usize> = vec![];
        while let Some(Reverse((At(t), f, version))) = run.queue.peek().copied() {
            if t > now + EPS {
                break;
            }
            run.queue.pop();
            if run.fl[f].done || run.fl[f].version != version {
                continue;
            }
            run.advance(f, now);
            let m = &moves[run.fl[f].mv];
            let (from, to) = (m.from, m.to);
            match run.fl[f].phase {
                FlightPhase::Setup if run.fl[f].setup_left <= EPS => {
                    run.fl[f].phase = FlightPhase::Transfer;
                    run.set_sending(f, true);
                    rerate_out.push(from);
                    rerate_in.push(to);
                }
                // Below a byte per megabyte: rounding, not data.
                FlightPhase::Transfer if run.fl[f].disk_left <= m.disk as f64 * 1e-6 => {
                    run.fl[f].disk_left = 0.0;
                    if run.fl[f].mem_left <= m.sent_memory() as f64 * 1e-6 {
                        run.fl[f].mem_left = 0.0;
                        run.fl[f].phase = FlightPhase::Finish;
                        run.fl[f].rate = 0.0;
                        run.set_sending(f, false);
                        rerate_out.push(from);
                        rerate_in.push(to);
                    }
                }
                FlightPhase::Finish if run.fl[f].finish_left <= EPS => {
                    run.fl[f].done = true;
                    run.running -= 1;
                    run.out_of[from].retain(|&x| x != f);
                    run.into[to].retain(|&x| x != f);
                    spans[run.fl[f].mv].1 = now;
                    freed_out.push(from);
                    freed_in.push(to);
                    everyone |= budgets.fleet.is_some();
                    continue;
                }
                _ => {}
            }
            if run.refresh_then(f) {
                freed_out.push(from);
                freed_in.push(to);
            }
            run.push(f);
        }
        // A flight started or stopped sending: the rates on its link ends change.
        rerate_out.sort_unstable();
        rerate_out.dedup();
        rerate_in.sort_unstable();
        rerate_in.dedup();
        let mut touched: Vec<usize> = rerate_out
            .iter()
            .flat_map(|&h| run.out_of[h].iter().copied())
            .chain(rerate_in.iter().flat_map(|&h| run.into[h].iter().copied()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for f in touched {
            run.advance(f, now);
            run.fl[f].rate = run.rate_of(f);
            if run.refresh_then(f) {
                let m = &moves[run.fl[f].mv];
                freed_out.push(m.from);
                freed_in.push(m.to);
            }
            run.push(f);
        }
        if run.running == 0 && unstarted == 0 {
            break;
        }
    }
    SimResult {
        makespan_s: now,
        spans,
        wire_bytes: run.wire,
        peak_flights: peak,
        events,
    }
}

/// A simulated fleet: hosts, their links and memory, and their guests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub hosts: usize,
    pub links: Vec<Link>,
    pub memory_total: u64,
    /// (guest name, host, memory, local disk bytes, dirty bytes/s).
    pub guests: Vec<(String, usize, u64, u64, f64)>,
}

/// A deterministic pseudo-random sequence (xorshift64*): the same seed, the same fleet.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

impl Fleet {
    /// `guests` guests spread over `hosts` hosts of 512 GiB on links of `link_gbit` Gbit/s:
    /// memory 2–32 GiB; 60 % with a local disk of 20–200 GiB (the rest on shared storage);
    /// most dirty little memory, some a lot.
    pub fn generate(hosts: usize, guests: usize, link_gbit: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let link = Link::symmetric(link_gbit * 1e9 / 8.0);
        let guests = (0..guests)
            .map(|i| {
                let mem = rng.pick(&[2, 4, 4, 8, 8, 16, 32]) * GIB;
                let disk = if rng.next_u64() % 10 < 6 {
                    rng.pick(&[20, 50, 100, 200]) * GIB
                } else {
                    0
                };
                let dirty = (rng.pick(&[0, 1, 5, 10, 20, 50, 200]) * MIB) as f64;
                (format!("vm{i:05}"), i % hosts, mem, disk, dirty)
            })
            .collect();
        Fleet {
            hosts,
            links: vec![link; hosts],
            memory_total: 512 * GIB,
            guests,
        }
    }
}

/// A policy to compare: its name, what it stands for, and its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Contender {
    pub name: &'static str,
    pub after: &'static str,
    pub policy: Policy,
    pub budgets: Budgets,
}

/// The policies the simulator compares.
pub const CONTENDERS: [Contender; 5] = [
    Contender {
        name: "serial",
        after: "one migration per drained host at a time (Nova's host-evacuate-live)",
        policy: Policy::Fixed,
        budgets: Budgets {
            max_out: 1,
            max_in: usize::MAX,
            fleet: None,
        },
    },
    Contender {
        name: "fixed-4",
        after: "4 workers per host in name order, no bandwidth model (Proxmox migrateall)",
        policy: Policy::Fixed,
        budgets: Budgets {
            max_out: 4,
            max_in: usize::MAX,
            fleet: None,
        },
    },
    Contender {
        name: "kubevirt",
        after: "2 outbound per host, 5 in the whole fleet (KubeVirt's defaults)",
        policy: Policy::Fixed,
        budgets: Budgets {
            max_out: 2,
            max_in: usize::MAX,
            fleet: Some(5),
        },
    },
    Contender {
        name: "all-at-once",
        after: "every migration started at once",
        policy: Policy::Fixed,
        budgets: Budgets::NONE,
    },
    Contender {
        name: "ferry",
        after: "longest first, a link's next migration overlapping the current one's tail",
        policy: Policy::Ferry,
        budgets: Budgets::FERRY,
    },
];

/// An evacuation of a simulated fleet, placed: the moves and the hosts they go to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drain {
    pub moves: Vec<Move>,
    /// Guests no host had room for.
    pub unplaced: Vec<String>,
}

impl Fleet {
    /// Place every guest of the `drained` hosts onto the others, as `ferry evacuate` does: each
    /// placement consumes the target's memory (every host scores the same to begin with: the
    /// headroom and per-guest terms decide).
    pub fn drain(&self, drained: &[usize]) -> Drain {
        let draining = |h: usize| drained.contains(&h);
        let mut used = vec![0u64; self.hosts];
        for g in &self.guests {
            used[g.1] += g.2;
        }
        let hosts: Vec<super::place::HostRoom> = (0..self.hosts)
            .map(|h| super::place::HostRoom {
                name: format!("host{h:04}"),
                memory_free: self.memory_total.saturating_sub(used[h]),
                memory_total: self.memory_total,
                room: None,
            })
            .collect();
        let targets: Vec<usize> = (0..self.hosts).filter(|&h| !draining(h)).collect();
        let leaving: Vec<&(String, usize, u64, u64, f64)> =
            self.guests.iter().filter(|g| draining(g.1)).collect();
        let wanted: Vec<super::place::Wanted> = leaving
            .iter()
            .map(|g| super::place::Wanted {
                guest: g.0.clone(),
                memory: g.2,
                options: targets.iter().map(|&h| (h, 0, g.3)).collect(),
            })
            .collect();
        let placed = super::place::place(&wanted, &hosts);
        let mut moves = vec![];
        let mut unplaced = vec![];
        for (g, p) in leaving.iter().zip(placed) {
            match p.to {
                Some(to) => moves.push(Move {
                    guest: g.0.clone(),
                    from: g.1,
                    to,
                    fallback: p.fallback,
                    memory: g.2,
                    disk: g.3,
                    dirty_bps: g.4,
                    cold: false,
                }),
                None => unplaced.push(g.0.clone()),
            }
        }
        Drain { moves, unplaced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evacuate::schedule::{dispatch, shares};

    #[derive(Debug, Clone, Copy)]
    struct State {
        flight: Flight,
        setup_left: f64,
        disk_left: f64,
        mem_left: f64,
        finish_left: f64,
    }

    impl State {
        fn transfer_left_s(&self, m: &Move, bps: f64) -> f64 {
            if bps <= 0.0 {
                return f64::INFINITY;
            }
            self.disk_left / bps + self.mem_left / m.net_memory_bps(bps)
        }
    }

    /// The plain simulation the event-driven one must agree with: every flight advanced and
    /// `dispatch` asked at every event.
    fn reference(
        policy: Policy,
        budgets: &Budgets,
        ov: &Overheads,
        links: &[Link],
        moves: &[Move],
    ) -> SimResult {
        let mut waiting = order(policy, links, moves);
        let mut live: Vec<State> = vec![];
        let mut spans = vec![(0.0, 0.0); moves.len()];
        let (mut now, mut wire, mut peak, mut events) = (0.0f64, 0.0f64, 0usize, 0usize);
        // The per-flight view `dispatch` and `shares` read, rebuilt after every change.
        let mut flights: Vec<Flight> = vec![];
        loop {
            flights.clear();
            flights.extend(live.iter().map(|s| s.flight));
            let mut rates = shares(links, moves, &flights);
            for (s, r) in live.iter_mut().zip(&rates) {
                if s.flight.phase == FlightPhase::Transfer {
                    s.flight.transfer_left_s = s.transfer_left_s(&moves[s.flight.mv], *r);
                }
            }
            // Until nothing more starts at this instant: a start lowers the shares of those it
            // will share a link with, which can leave room on their other link ends.
            loop {
                flights.clear();
                flights.extend(live.iter().map(|s| s.flight));
                let start = dispatch(policy, budgets, ov, links, moves, &waiting, &flights);
                if start.is_empty() {
                    break;
                }
                waiting.retain(|i| !start.contains(i));
                for i in start {
                    spans[i].0 = now;
                    live.push(State {
                        flight: Flight {
                            mv: i,
                            phase: FlightPhase::Setup,
                            transfer_left_s: f64::INFINITY,
                        },
                        setup_left: ov.setup_s,
                        disk_left: moves[i].disk as f64,
                        mem_left: moves[i].sent_memory() as f64,
                        finish_left: ov.finish_s,
                    });
                    // In setup, a newcomer sends nothing: the others' shares stand until it does
                    // (a phase change, hence an event), and `dispatch` counted it already.
                    rates.push(0.0);
                }
                peak = peak.max(live.len());
            }
            if live.is_empty() {
                break;
            }
            events += 1;
            // The next event: a phase's end, or a transfer reaching a setup's length from its end.
            let mut dt = f64::INFINITY;
            for (s, r) in live.iter().zip(&rates) {
                let m = &moves[s.flight.mv];
                let t = match s.flight.phase {
                    FlightPhase::Setup => s.setup_left,
                    FlightPhase::Finish => s.finish_left,
                    FlightPhase::Transfer if s.disk_left > EPS => s.disk_left / r,
                    FlightPhase::Transfer => s.mem_left / m.net_memory_bps(*r),
                };
                dt = dt.min(t);
                let wake = s.flight.transfer_left_s - ov.setup_s;
                if s.flight.phase == FlightPhase::Transfer && wake > EPS {
                    dt = dt.min(wake);
                }
            }
            let dt = dt.max(0.0);
            now += dt;
            for (s, r) in live.iter_mut().zip(&rates) {
                let m = &moves[s.flight.mv];
                match s.flight.phase {
                    FlightPhase::Setup => {
                        s.setup_left -= dt;
                        if s.setup_left <= EPS {
                            s.flight.phase = FlightPhase::Transfer;
                        }
                    }
                    FlightPhase::Transfer => {
                        wire += r * dt;
                        if s.disk_left > EPS {
                            s.disk_left = (s.disk_left - r * dt).max(0.0);
                        } else {
                            s.mem_left = (s.mem_left - m.net_memory_bps(*r) * dt).max(0.0);
                        }
                        // Below a byte per megabyte: rounding, not data.
                        if s.disk_left <= m.disk as f64 * 1e-6
                            && s.mem_left <= m.sent_memory() as f64 * 1e-6
                        {
                            s.disk_left = 0.0;
                            s.mem_left = 0.0;
                            s.flight.phase = FlightPhase::Finish;
                        } else if s.disk_left <= m.disk as f64 * 1e-6 {
                            s.disk_left = 0.0;
                        }
                    }
                    FlightPhase::Finish => s.finish_left -= dt,
                }
            }
            live.retain(|s| {
                let done = s.flight.phase == FlightPhase::Finish && s.finish_left <= EPS;
                if done {
                    spans[s.flight.mv].1 = now;
                }
                !done
            });
        }
        SimResult {
            makespan_s: now,
            spans,
            wire_bytes: wire,
            peak_flights: peak,
            events,
        }
    }

    const MIB_F: f64 = MIB as f64;

    fn mv(guest: &str, to: usize, mem_mib: u64, disk_mib: u64) -> Move {
        Move {
            guest: guest.into(),
            from: 0,
            to,
            fallback: vec![],
            memory: mem_mib * MIB,
            disk: disk_mib * MIB,
            dirty_bps: 0.0,
            cold: false,
        }
    }

    fn three_hosts() -> Vec<Link> {
        vec![Link::symmetric(100.0 * MIB_F); 3]
    }

    #[test]
    fn the_event_driven_simulation_decides_as_the_plain_one() {
        // Random fleets, every policy, fast and slow links (where the dirty-rate guard and
        // re-sent memory matter): the same starts, ends and bytes as advancing every flight
        // and asking `dispatch` at every event.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
        let mut compared = 0;
        for seed in 1..=60 {
            let gbit = if seed % 3 == 0 { 1.0 } else { 10.0 };
            let f = Fleet::generate(12, 72, gbit, seed);
            let d = f.drain(&[0, 1, 2 + seed as usize % 5, 7, 9, 11][..3 + seed as usize % 4]);
            let ov = Overheads::default();
            for c in CONTENDERS {
                let fast = simulate(c.policy, &c.budgets, &ov, &f.links, &d.moves);
                let plain = reference(c.policy, &c.budgets, &ov, &f.links, &d.moves);
                let what = format!("seed {seed}, {}", c.name);
                assert!(
                    close(fast.makespan_s, plain.makespan_s),
                    "{what}: {fast:?} {plain:?}"
                );
                assert!(close(fast.wire_bytes, plain.wire_bytes), "{what}");
                assert_eq!(fast.peak_flights, plain.peak_flights, "{what}");
                for (a, b) in fast.spans.iter().zip(&plain.spans) {
                    assert!(close(a.0, b.0) && close(a.1, b.1), "{what}: {a:?} {b:?}");
                }
                compared += 1;
            }
        }
        assert_eq!(compared, 60 * CONTENDERS.len());
    }

    #[test]
    fn one_migration_takes_what_the_model_says() {
        let (l, ov) = (three_hosts(), Overheads::default());
        let m = [mv("a", 1, 1000, 1000)];
        let r = simulate(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m);
        assert!(
            (r.makespan_s - m[0].duration_s(100.0 * MIB_F, &ov)).abs() < 1e-6,
            "{r:?}"
        );
        assert!((r.wire_bytes - 2000.0 * MIB_F).abs() < 1.0);
        assert!((lower_bound(&l, &m, &ov) - r.makespan_s).abs() < 1e-6);
    }

    #[test]
    fn ferry_overlaps_setup_with_the_previous_transfer() {
        let (l, ov) = (three_hosts(), Overheads::default());
        let m = [mv("a", 1, 500, 1500), mv("b", 2, 500, 1500)];
        let ferry = simulate(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m);
        let serial = simulate(
            Policy::Fixed,
            &Budgets {
                max_out: 1,
                ..Budgets::NONE
            },
            &ov,
            &l,
            &m,
        );
        // Serial: two whole migrations end to end (2 × 23.5 s).
        assert!((serial.makespan_s - 47.0).abs() < 1e-6, "{serial:?}");
        // Ferry: b's setup and a's finish both overlap a transfer: 2 + 20 + 20 + 1.5 s.
        assert!((ferry.makespan_s - 43.5).abs() < 1e-6, "{ferry:?}");
        assert_eq!(ferry.peak_flights, 2);
        let lb = lower_bound(&l, &m, &ov);
        assert!((lb - 40.0).abs() < 1e-6, "{lb}");
    }

    #[test]
    fn all_at_once_resends_a_dirtying_guests_memory() {
        let (l, ov) = (three_hosts(), Overheads::default());
        let mut m = vec![
            mv("a", 1, 1024, 0),
            mv("b", 2, 1024, 0),
            mv("c", 1, 1024, 0),
        ];
        for x in &mut m {
            x.dirty_bps = 30.0 * MIB_F;
        }
        let ferry = simulate(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m);
        let all = simulate(Policy::Fixed, &Budgets::NONE, &ov, &l, &m);
        assert_eq!(all.peak_flights, 3);
        assert!(all.wire_bytes > ferry.wire_bytes * 1.5, "{all:?} {ferry:?}");
        assert!(all.makespan_s > ferry.makespan_s, "{all:?} {ferry:?}");
        // Every migration ended, after it started.
        for (s, e) in ferry.spans.iter().chain(&all.spans) {
            assert!(e > s);
        }
    }

    #[test]
    fn the_lower_bound_is_the_busiest_link_or_the_longest_migration() {
        let ov = Overheads::default();
        let mut l = three_hosts();
        let m = [mv("a", 1, 1000, 0), mv("b", 2, 1000, 0)];
        // h0 sends 2000 MiB at 100 MiB/s.
        assert!((lower_bound(&l, &m, &ov) - 20.0).abs() < 1e-9);
        // A slow target in-link: b alone takes 3.5 s + 1000/10 s.
        l[2].in_bps = 10.0 * MIB_F;
        assert!((lower_bound(&l, &m, &ov) - 103.5).abs() < 1e-9);
    }

    #[test]
    fn the_fleet_is_the_same_for_the_same_seed() {
        let a = Fleet::generate(10, 100, 10.0, 7);
        assert_eq!(a, Fleet::generate(10, 100, 10.0, 7));
        assert_ne!(a, Fleet::generate(10, 100, 10.0, 8));
        assert_eq!(a.guests.len(), 100);
        assert!(a.guests.iter().all(|g| g.1 < 10));
    }

    #[test]
    fn a_drained_fleet_moves_every_guest_of_the_drained_hosts_elsewhere() {
        let f = Fleet::generate(20, 200, 10.0, 1);
        let d = f.drain(&[0, 1]);
        assert_eq!(d.moves.len(), 20);
        assert!(d.unplaced.is_empty());
        assert!(d.moves.iter().all(|m| m.from <= 1 && m.to > 1));
        // Spread: no target takes more than two of the twenty.
        let mut on = [0; 20];
        for m in &d.moves {
            on[m.to] += 1;
        }
        assert!(on.iter().all(|&n| n <= 2), "{on:?}");
    }

    #[test]
    fn on_a_fleet_ferry_beats_the_peers_and_no_one_beats_the_bound() {
        let f = Fleet::generate(40, 400, 10.0, 3);
        let d = f.drain(&[0, 1, 2, 3]);
        let ov = Overheads::default();
        let lb = lower_bound(&f.links, &d.moves, &ov);
        let times: Vec<(&str, f64)> = CONTENDERS
            .iter()
            .map(|c| {
                let r = simulate(c.policy, &c.budgets, &ov, &f.links, &d.moves);
                assert!(r.makespan_s >= lb - 1e-6, "{} beat the bound", c.name);
                assert!(r.spans.iter().all(|(s, e)| e > s), "{} left a move", c.name);
                (c.name, r.makespan_s)
            })
            .collect();
        let ferry = times.iter().find(|t| t.0 == "ferry").map_or(0.0, |t| t.1);
        for (name, t) in &times {
            assert!(ferry <= *t, "ferry {ferry} s, {name} {t} s");
        }
    }
}

#[cfg(test)]
mod slow_links {
    use super::*;
    use crate::evacuate::CONTENDERS;

    /// A link so slow that the evacuation lasts months: residues of bytes and seconds fall
    /// below the clock's resolution there, and must end rather than be rescheduled at the same
    /// instant for ever (`ferry simulate --link-gbit 0.001` once spun without end).
    #[test]
    fn a_very_slow_link_ends_its_simulation() {
        for gbit in [0.001, 0.0003, 0.01, 1e-9] {
            let f = Fleet::generate(2, 20, gbit, 1);
            let d = f.drain(&[0]);
            let ov = Overheads::default();
            let (tx, rx) = std::sync::mpsc::channel();
            let (links, moves) = (f.links.clone(), d.moves.clone());
            std::thread::spawn(move || {
                for c in CONTENDERS {
                    let r = simulate(c.policy, &c.budgets, &ov, &links, &moves);
                    let _ = tx.send((c.name, r.makespan_s));
                }
            });
            for _ in CONTENDERS {
                let (name, makespan) = rx
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("{gbit} Gbit/s: a simulation did not end"));
                assert!(
                    makespan.is_finite() && makespan > 0.0,
                    "{gbit} {name}: {makespan}"
                );
            }
        }
    }
}
