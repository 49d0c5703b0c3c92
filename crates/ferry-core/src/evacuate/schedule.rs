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

use super::model::{Link, Move, Overheads};

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
            (links[m.from].out_bps / n_out[m.from] as f64)
                .min(links[m.to].in_bps / n_in[m.to] as f64)
        })
        .collect()
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
/// flights. The result keeps `waiting`'s order.
pub fn dispatch(
    policy: Policy,
    budgets: &Budgets,
    ov: &Overheads,
    links: &[Link],
    moves: &[Move],
    waiting: &[usize],
    flights: &[Flight],
) -> Vec<usize> {
    let mut n_out = vec![0usize; links.len()];
    let mut n_in = vec![0usize; links.len()];
    // Streams that will still be sending once a newcomer's setup is over, per link end.
    let mut busy_out = vec![0.0f64; links.len()];
    let mut busy_in = vec![0.0f64; links.len()];
    let share = shares(links, moves, flights);
    for (f, s) in flights.iter().zip(&share) {
        let m = &moves[f.mv];
        n_out[m.from] += 1;
        n_in[m.to] += 1;
        let sending_later = match f.phase {
            FlightPhase::Setup => true,
            FlightPhase::Transfer => f.transfer_left_s > ov.setup_s,
            FlightPhase::Finish => false,
        };
        if sending_later {
            // What it will ask of the link: its share now, or (not yet sending) all it can get.
            let want = if *s > 0.0 {
                *s
            } else {
                links[m.from].out_bps.min(links[m.to].in_bps)
            };
            busy_out[m.from] += want;
            busy_in[m.to] += want;
        }
    }
    let mut running = flights.len();
    let mut start = vec![];
    for &i in waiting {
        let m = &moves[i];
        if running >= budgets.fleet.unwrap_or(usize::MAX)
            || n_out[m.from] >= budgets.max_out
            || n_in[m.to] >= budgets.max_in
        {
            continue;
        }
        if policy == Policy::Ferry && n_out[m.from] > 0 {
            let (out, inn) = (links[m.from].out_bps, links[m.to].in_bps);
            // The link is full: another stream would only split it.
            if busy_out[m.from] >= 0.95 * out || busy_in[m.to] >= 0.95 * inn {
                continue;
            }
            // Its share would not outrun its own guest's dirtying: wait for a fuller share.
            let would_get = (out - busy_out[m.from]).min(inn - busy_in[m.to]);
            if m.dirty_bps > 0.0 && would_get < 2.0 * m.dirty_bps {
                continue;
            }
        }
        let want = links[m.from].out_bps.min(links[m.to].in_bps);
        busy_out[m.from] += want;
        busy_in[m.to] += want;
        n_out[m.from] += 1;
        n_in[m.to] += 1;
        running += 1;
        start.push(i);
    }
    start
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
