//! Which migrations run now, and at what bandwidth.
//!
//! [`dispatch`] is the one decision: given the migrations waiting (in the policy's order) and
//! those in flight, which to start now. `ferry evacuate` calls it whenever a migration changes
//! phase or ends, with live figures; the simulator calls it at every event of the model. The
//! peers' policies are here too, so the simulator compares them with the same model.
//!
//! Ferry's policy keeps each link busy and no busier: a link already carries enough streams to
//! fill it, so another migration would only split the bandwidth (and a guest that dirties
//! memory re-sends more the less bandwidth it has). It starts the next migration on a link when
//! the streams that will still be sending once the newcomer's setup is over no longer fill it —
//! so the newcomer's setup (QEMU start, volumes, connections) overlaps the tail of the current
//! transfer, and the current one's switchover and verification overlap the newcomer's
//! transfer. The longest migrations go first: the last to start is a short one.

use serde::Serialize;

use super::model::{Link, Move, Overheads, MIN_NET_SHARE};
use crate::convergence::{Phase, Progress};

/// How migrations are chosen and started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Policy {
    /// Ferry's: longest first, a link's next migration starts when the streams still sending
    /// after its setup no longer fill the link (and within [`Budgets`]).
    Ferry,
    /// Name order, as many as `Budgets` allow, no bandwidth model.
    Fixed,
}

/// Limits on concurrency: migrations out of one host, into one host, and in the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budgets {
    pub max_out: usize,
    pub max_in: usize,
    pub fleet: Option<usize>,
}

impl Budgets {
    /// Ferry's defaults: its link rule decides; these only bound a fast link's many streams.
    pub const FERRY: Budgets = Budgets {
        max_out: 4,
        max_in: 4,
        fleet: None,
    };
    /// No limit at all (all at once).
    pub const NONE: Budgets = Budgets {
        max_out: usize::MAX,
        max_in: usize::MAX,
        fleet: None,
    };
}

/// Where a migration in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlightPhase {
    /// Not yet sending: connections, target volumes, QEMU.
    Setup,
    /// Sending disks or memory.
    Transfer,
    /// Switchover, verification, clean-up: the link is free again.
    Finish,
}

/// A migration in flight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Flight {
    /// Index into the moves.
    pub mv: usize,
    pub phase: FlightPhase,
    /// Seconds of sending left at its present bandwidth (an estimate: the model's, or the
    /// live job's remaining bytes over its rate).
    pub transfer_left_s: f64,
}

/// The bandwidth each flight gets: an equal share of its source's out-link and of its target's
/// in-link, the smaller of the two. Flights not sending get 0. Ferry sets this as each
/// migration's bandwidth (`--bandwidth`), so that no stream starves another.
pub fn shares(links: &[Link], moves: &[Move], flights: &[Flight]) -> Vec<f64> {
    let mut n_out = vec![0usize; links.len()];
    let mut n_in = vec![0usize; links.len()];
    for f in flights.iter().filter(|f| f.phase == FlightPhase::Transfer) {
        n_out[moves[f.mv].from] += 1;
        n_in[moves[f.mv].to] += 1;
    }
    flights
        .iter()
        .map(|f| {
            if f.phase != FlightPhase::Transfer {
                return 0.0;
            }
            let m = &moves[f.mv];
            equal_share(links, m, n_out[m.from], n_in[m.to])
        })
        .collect()
}

/// The share of a stream from `m.from` to `m.to` when `n_out` streams leave its source and
/// `n_in` enter its target: an equal part of each end, the smaller.
pub fn equal_share(links: &[Link], m: &Move, n_out: usize, n_in: usize) -> f64 {
    (links[m.from].out_bps / n_out as f64).min(links[m.to].in_bps / n_in as f64)
}

/// Two figures of seconds closer than this are equal (the model's own rounding).
pub const TIE_S: f64 = 1e-9;

/// Whether a flight will still be sending once a migration starting now has set up
/// (`setup_s`): one setting up will be, one with less than `setup_s` of sending left will not.
pub fn sends_after(f: &Flight, setup_s: f64) -> bool {
    match f.phase {
        FlightPhase::Setup => true,
        FlightPhase::Transfer => f.transfer_left_s > setup_s + TIE_S,
        FlightPhase::Finish => false,
    }
}

/// The flights as they will be once a migration starting now has set up: see [`sends_after`].
fn after_setup(flights: &[Flight], setup_s: f64) -> Vec<Flight> {
    flights
        .iter()
        .map(|f| {
            let phase = if sends_after(f, setup_s) {
                FlightPhase::Transfer
            } else {
                FlightPhase::Finish
            };
            Flight { phase, ..*f }
        })
        .collect()
}

/// What a migration about to start finds on one end of its link (its source's out-link, or its
/// target's in-link): the migrations there in any phase, and the bandwidth those still sending
/// once its setup is over will ask — each its equal share then.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EndLoad {
    pub flights: usize,
    pub busy_bps: f64,
}

/// Whether move `m` starts now, given the load on its two link ends and the migrations running
/// in all. The one rule: [`dispatch`] applies it for `ferry evacuate`, the simulator to every
/// event of the model.
pub fn admits(
    policy: Policy,
    budgets: &Budgets,
    links: &[Link],
    m: &Move,
    out: EndLoad,
    inn: EndLoad,
    running: usize,
) -> bool {
    if running >= budgets.fleet.unwrap_or(usize::MAX)
        || out.flights >= budgets.max_out
        || inn.flights >= budgets.max_in
    {
        return false;
    }
    if policy == Policy::Ferry && out.flights > 0 {
        let (o, i) = (links[m.from].out_bps, links[m.to].in_bps);
        // The link is full: another stream would only split it.
        if out.busy_bps >= 0.95 * o || inn.busy_bps >= 0.95 * i {
            return false;
        }
        // Its share would not outrun its own guest's dirtying: wait for a fuller share.
        let would_get = (o - out.busy_bps).min(i - inn.busy_bps);
        if m.dirty_bps > 0.0 && would_get < 2.0 * m.dirty_bps {
            return false;
        }
    }
    true
}

/// The share migration `mv`, starting now, will get once it sends: every flight still setting
/// up will be sending by then too, and every one with less than `setup_s` of sending left will
/// be done. Ferry starts a migration capped at this share.
pub fn share_on_start(
    links: &[Link],
    moves: &[Move],
    flights: &[Flight],
    mv: usize,
    setup_s: f64,
) -> f64 {
    let mut then = after_setup(flights, setup_s);
    then.push(Flight {
        mv,
        phase: FlightPhase::Transfer,
        transfer_left_s: f64::INFINITY,
    });
    shares(links, moves, &then).last().copied().unwrap_or(0.0)
}

/// Where a live migration job is, and the seconds of sending it has left, from its figures
/// (`None`: the figures say nothing new about it).
///
/// During the storage copy libvirt does not count memory yet (its total reads 0): the whole
/// of the guest's `memory` is still to come after the disks. The first memory pass's end is
/// not the transfer's: the next pass re-sends what the guest dirtied meanwhile, unknown until
/// QEMU measures the dirty rate as that pass ends. From then on, libvirt's remaining bytes
/// count, drained at the rate less the dirty rate — not the policy's ETA: that one is whole
/// seconds, and reads 1 s through the last passes. Between two passes libvirt may say 0
/// remaining while the next pass has yet to count its dirty pages.
pub fn live_transfer_left(p: &Progress, memory: u64) -> (FlightPhase, Option<f64>) {
    let rate = (p.rate_bps.max(1)) as f64;
    match p.phase {
        Phase::Setup => (FlightPhase::Setup, Some(f64::INFINITY)),
        Phase::StorageCopy => {
            let left = p.disk_total.saturating_sub(p.disk_processed) + p.mem_total.max(memory);
            (FlightPhase::Transfer, Some(left as f64 / rate))
        }
        Phase::Memory { .. } if p.mem_remaining == 0 => (FlightPhase::Transfer, None),
        // The first pass: the next carries what the guest dirties meanwhile, and QEMU measures
        // that only when this pass ends. Its end is not the transfer's.
        Phase::Memory { iteration: 1 } if p.dirty_rate_bps == 0 => {
            (FlightPhase::Transfer, Some(f64::INFINITY))
        }
        // Each pass re-sends what the guest dirtied during the previous one: the passes left
        // add up to the remaining bytes over the rate less the dirty rate.
        Phase::Memory { .. } => {
            let net = (rate - p.dirty_rate_bps as f64).max(rate * MIN_NET_SHARE);
            (FlightPhase::Transfer, Some(p.mem_remaining as f64 / net))
        }
        Phase::Switchover | Phase::Postcopy => (FlightPhase::Finish, Some(0.0)),
    }
}

/// The order in which a policy takes the waiting migrations.
pub fn order(policy: Policy, links: &[Link], moves: &[Move]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..moves.len()).collect();
    match policy {
        Policy::Fixed => idx.sort_by(|&a, &b| moves[a].guest.cmp(&moves[b].guest)),
        Policy::Ferry => {
            // Longest transfer (at its link's full bandwidth) first; ties by name.
            let t = |m: &Move| m.transfer_s(links[m.from].out_bps.min(links[m.to].in_bps));
            idx.sort_by(|&a, &b| {
                t(&moves[b])
                    .total_cmp(&t(&moves[a]))
                    .then_with(|| moves[a].guest.cmp(&moves[b].guest))
            });
        }
    }
    idx
}

/// Which of `waiting` (move indexes, in the policy's [`order`]) to start now, given the
/// flights, in the order they start: always the first in `waiting` that [`admits`] allows,
/// then the first again with it counted — a start can leave room for one it passed over (it
/// lowers the share of those it will share a link with, on their other link ends).
pub fn dispatch(
    policy: Policy,
    budgets: &Budgets,
    ov: &Overheads,
    links: &[Link],
    moves: &[Move],
    waiting: &[usize],
    flights: &[Flight],
) -> Vec<usize> {
    // Each flight as it will be after a newcomer's setup: what it asks of the link then is
    // its share among those still sending (not its share now: a stream about to end no
    // longer halves the link).
    let mut then = after_setup(flights, ov.setup_s);
    let mut start: Vec<usize> = vec![];
    loop {
        let share = shares(links, moves, &then);
        let next = waiting.iter().copied().find(|&i| {
            if start.contains(&i) {
                return false;
            }
            let m = &moves[i];
            let mut out = EndLoad::default();
            let mut inn = EndLoad::default();
            for (f, s) in then.iter().zip(&share) {
                let fm = &moves[f.mv];
                if fm.from == m.from {
                    out.flights += 1;
                    out.busy_bps += s;
                }
                if fm.to == m.to {
                    inn.flights += 1;
                    inn.busy_bps += s;
                }
            }
            admits(policy, budgets, links, m, out, inn, then.len())
        });
        let Some(i) = next else {
            return start;
        };
        then.push(Flight {
            mv: i,
            phase: FlightPhase::Transfer,
            transfer_left_s: f64::INFINITY,
        });
        start.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = (1u64 << 20) as f64;

    fn mv(guest: &str, from: usize, to: usize, mem_mib: u64, disk_mib: u64) -> Move {
        Move {
            guest: guest.into(),
            from,
            to,
            fallback: vec![],
            memory: mem_mib << 20,
            disk: disk_mib << 20,
            dirty_bps: 0.0,
            cold: false,
        }
    }

    fn links(n: usize, mib_s: f64) -> Vec<Link> {
        vec![Link::symmetric(mib_s * MIB); n]
    }

    fn flight(mv: usize, phase: FlightPhase, left: f64) -> Flight {
        Flight {
            mv,
            phase,
            transfer_left_s: left,
        }
    }

    #[test]
    fn ferry_takes_the_longest_first_and_fixed_takes_name_order() {
        let l = links(2, 100.0);
        let m = [
            mv("a", 0, 1, 256, 0),
            mv("b", 0, 1, 256, 4096),
            mv("c", 0, 1, 512, 0),
        ];
        assert_eq!(order(Policy::Ferry, &l, &m), vec![1, 2, 0]);
        assert_eq!(order(Policy::Fixed, &l, &m), vec![0, 1, 2]);
    }

    #[test]
    fn one_stream_fills_a_link_the_next_starts_to_overlap_its_tail() {
        let (l, ov) = (links(3, 100.0), Overheads::default());
        let m = [mv("a", 0, 1, 256, 1024), mv("b", 0, 2, 256, 1024)];
        let b = Budgets::FERRY;
        // Nothing in flight: the first starts, not the second (it would split the link).
        assert_eq!(
            dispatch(Policy::Ferry, &b, &ov, &l, &m, &[0, 1], &[]),
            vec![0]
        );
        // a sends for another 30 s: b waits.
        let f = [flight(0, FlightPhase::Transfer, 30.0)];
        assert!(dispatch(Policy::Ferry, &b, &ov, &l, &m, &[1], &f).is_empty());
        // a in setup counts as sending soon: b waits.
        let f = [flight(0, FlightPhase::Setup, 0.0)];
        assert!(dispatch(Policy::Ferry, &b, &ov, &l, &m, &[1], &f).is_empty());
        // a has less left than b's setup takes: b starts, its setup overlapping a's tail.
        let f = [flight(0, FlightPhase::Transfer, ov.setup_s - 0.5)];
        assert_eq!(dispatch(Policy::Ferry, &b, &ov, &l, &m, &[1], &f), vec![1]);
        // a ends within c's setup and b has just begun: b alone fills the link then, so c
        // waits, although b's share now is half the link.
        let m3 = [m[0].clone(), m[1].clone(), mv("c", 0, 1, 256, 0)];
        let f = [
            flight(0, FlightPhase::Transfer, ov.setup_s - 0.5),
            flight(1, FlightPhase::Transfer, 30.0),
        ];
        assert!(dispatch(Policy::Ferry, &b, &ov, &l, &m3, &[2], &f).is_empty());
        // a switching over: the link is free.
        let f = [flight(0, FlightPhase::Finish, 0.0)];
        assert_eq!(dispatch(Policy::Ferry, &b, &ov, &l, &m, &[1], &f), vec![1]);
    }

    #[test]
    fn a_slow_target_leaves_room_for_a_second_stream() {
        // h0 sends at 100 MiB/s; h1 and h2 each take only 40.
        let mut l = links(3, 100.0);
        l[1].in_bps = 40.0 * MIB;
        l[2].in_bps = 40.0 * MIB;
        let m = [
            mv("a", 0, 1, 256, 1024),
            mv("b", 0, 2, 256, 1024),
            mv("c", 0, 1, 256, 0),
        ];
        let ov = Overheads::default();
        let started = dispatch(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m, &[0, 1, 2], &[]);
        // a and b (to different targets) fill 80 of 100; c would share h1's full in-link.
        assert_eq!(started, vec![0, 1]);
    }

    #[test]
    fn budgets_bound_every_policy() {
        let (l, ov) = (links(4, 100.0), Overheads::default());
        let m: Vec<_> = (0..6)
            .map(|i| mv(&format!("g{i}"), 0, 1 + i % 3, 256, 0))
            .collect();
        let w: Vec<usize> = (0..6).collect();
        let b = Budgets {
            max_out: 2,
            max_in: usize::MAX,
            fleet: None,
        };
        assert_eq!(
            dispatch(Policy::Fixed, &b, &ov, &l, &m, &w, &[]),
            vec![0, 1]
        );
        let b = Budgets {
            max_out: usize::MAX,
            max_in: 1,
            fleet: None,
        };
        assert_eq!(
            dispatch(Policy::Fixed, &b, &ov, &l, &m, &w, &[]),
            vec![0, 1, 2]
        );
        let b = Budgets {
            max_out: usize::MAX,
            max_in: usize::MAX,
            fleet: Some(4),
        };
        let f = [flight(5, FlightPhase::Transfer, 100.0)];
        assert_eq!(
            dispatch(Policy::Fixed, &b, &ov, &l, &m, &w[..5], &f),
            vec![0, 1, 2]
        );
        assert_eq!(
            dispatch(Policy::Fixed, &Budgets::NONE, &ov, &l, &m, &w, &[]).len(),
            6
        );
        // max_out 1 makes Ferry serial even on a link a slow target leaves half empty.
        let mut l = l;
        l[1].in_bps = 10.0 * MIB;
        let b = Budgets {
            max_out: 1,
            ..Budgets::FERRY
        };
        assert_eq!(dispatch(Policy::Ferry, &b, &ov, &l, &m, &w, &[]), vec![0]);
    }

    #[test]
    fn a_dirtying_guest_waits_for_a_share_that_outruns_it() {
        let mut l = links(3, 100.0);
        l[1].in_bps = 50.0 * MIB;
        let mut m = vec![mv("a", 0, 1, 256, 1024), mv("b", 0, 2, 256, 0)];
        m[1].dirty_bps = 30.0 * MIB;
        let ov = Overheads::default();
        let f = [flight(0, FlightPhase::Transfer, 60.0)];
        // 50 MiB/s left on h0's link; b needs twice its 30 MiB/s.
        assert!(dispatch(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m, &[1], &f).is_empty());
        m[1].dirty_bps = 20.0 * MIB;
        assert_eq!(
            dispatch(Policy::Ferry, &Budgets::FERRY, &ov, &l, &m, &[1], &f),
            vec![1]
        );
    }

    fn progress(phase: Phase, rate: u64) -> Progress {
        let mut p = Progress::from_samples(&crate::convergence::JobStats::default(), false, None);
        p.phase = phase;
        p.rate_bps = rate;
        p
    }

    #[test]
    fn a_storage_copy_has_the_whole_memory_still_to_send() {
        const MIB: u64 = 1 << 20;
        // 10 MiB of disk left at 10 MiB/s, and 256 MiB of memory after it: 26.6 s, not 1 s
        // (taking libvirt's zero memory total at its word let the next migration start early).
        let mut p = progress(Phase::StorageCopy, 10 * MIB);
        p.disk_total = 96 * MIB;
        p.disk_processed = 86 * MIB;
        let (phase, left) = live_transfer_left(&p, 256 * MIB);
        assert_eq!(phase, FlightPhase::Transfer);
        let left = left.unwrap_or(f64::NAN);
        assert!((left - 26.6).abs() < 1e-9, "{left}");
        // The first memory pass: however little it has left, the passes after it are unknown
        // (the end of the first pass let the next migration start under a 2 s tail).
        let mut p = progress(Phase::Memory { iteration: 1 }, 10 * MIB);
        p.mem_remaining = MIB;
        p.eta_s = Some(1);
        assert_eq!(
            live_transfer_left(&p, 256 * MIB),
            (FlightPhase::Transfer, Some(f64::INFINITY))
        );
        // Later passes: libvirt's remaining bytes (not the policy's ETA), drained at the rate
        // less the dirty rate, which re-fills each next pass.
        p.phase = Phase::Memory { iteration: 2 };
        p.mem_remaining = 40 * MIB;
        p.dirty_rate_bps = 2 * MIB;
        assert_eq!(
            live_transfer_left(&p, 256 * MIB),
            (FlightPhase::Transfer, Some(5.0))
        );
        // A guest dirtying faster than its stream: the model's floor keeps it finite.
        p.dirty_rate_bps = 20 * MIB;
        assert_eq!(live_transfer_left(&p, 256 * MIB).1, Some(80.0));
        p.mem_remaining = 0;
        assert!(
            live_transfer_left(&p, 256 * MIB).1.is_none(),
            "0 between passes says nothing"
        );
        let p = progress(Phase::Switchover, 0);
        assert_eq!(live_transfer_left(&p, 256 * MIB).0, FlightPhase::Finish);
        assert_eq!(
            live_transfer_left(&progress(Phase::Setup, 0), 1).0,
            FlightPhase::Setup
        );
    }

    #[test]
    fn a_starting_migration_is_capped_at_the_share_it_will_have() {
        let l = links(3, 100.0);
        let m = [
            mv("a", 0, 1, 256, 0),
            mv("b", 0, 1, 256, 0),
            mv("c", 0, 2, 256, 0),
        ];
        // Nothing else on the link: all of it.
        assert_eq!(share_on_start(&l, &m, &[], 2, 2.0), 100.0 * MIB);
        // a sends for long, b is setting up: a third each once c sends.
        let f = [
            flight(0, FlightPhase::Transfer, 30.0),
            flight(1, FlightPhase::Setup, f64::INFINITY),
        ];
        assert!((share_on_start(&l, &m, &f, 2, 2.0) - 100.0 * MIB / 3.0).abs() < 1e-6);
        // a ends within c's setup: it no longer counts.
        let f = [flight(0, FlightPhase::Transfer, 1.0)];
        assert_eq!(share_on_start(&l, &m, &f, 2, 2.0), 100.0 * MIB);
    }

    #[test]
    fn shares_split_each_link_end_equally_and_idle_flights_get_none() {
        let mut l = links(3, 100.0);
        l[2].in_bps = 30.0 * MIB;
        let m = [
            mv("a", 0, 1, 1, 0),
            mv("b", 0, 2, 1, 0),
            mv("c", 0, 1, 1, 0),
        ];
        let f = [
            flight(0, FlightPhase::Transfer, 1.0),
            flight(1, FlightPhase::Transfer, 1.0),
            flight(2, FlightPhase::Setup, 1.0),
        ];
        let s = shares(&l, &m, &f);
        assert_eq!(s, vec![50.0 * MIB, 30.0 * MIB, 0.0]);
    }
}
