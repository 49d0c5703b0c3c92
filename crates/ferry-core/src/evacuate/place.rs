//! Placement: each guest's target, every decision consuming what it promised.
//!
//! The ranking ([`crate::placement`]) judges one guest against hosts as they are. Evacuating
//! places many guests at once: a host's free memory and local room promised to one guest are
//! gone for the next. [`place`] decides the hardest guests first (most memory plus copied disk),
//! each onto its best-scored host that still has room, the score lowered for what the host has
//! already been promised (its headroom term, as the ranking computes it, and 15 per guest
//! already headed there, as the ranking counts running migrations).

use serde::Serialize;

/// What a host can still take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRoom {
    pub name: String,
    /// Free memory less the host's reserve and its incoming migrations.
    pub memory_free: u64,
    pub memory_total: u64,
    /// Free bytes in the local store copies go to (`None`: not known, not limited here — a
    /// hook's devices, say; the migration's own checks still apply).
    pub room: Option<u64>,
}

/// One guest to place: what it needs, and its eligible hosts with their ranking scores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wanted {
    pub guest: String,
    pub memory: u64,
    /// (host index, ranking score, bytes of disk copied there), best first.
    pub options: Vec<(usize, i64, u64)>,
}

/// Where a guest goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placed {
    pub guest: String,
    /// The chosen host, or `None` when no eligible host has room left.
    pub to: Option<usize>,
    /// The other hosts that still had room, best first: the targets of a retry.
    pub fallback: Vec<usize>,
    /// Bytes of disk copied to the chosen host.
    pub copy_bytes: u64,
    /// Why no host was chosen.
    pub why_not: Option<String>,
}

/// How many fallbacks each placement keeps.
pub const FALLBACKS: usize = 2;

/// Place every guest; the result is in `wanted`'s order.
pub fn place(wanted: &[Wanted], hosts: &[HostRoom]) -> Vec<Placed> {
    let mut used_mem = vec![0u64; hosts.len()];
    let mut used_room = vec![0u64; hosts.len()];
    let mut count = vec![0i64; hosts.len()];
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    // Hardest first: the most memory plus the most disk to copy (its smallest copy).
    let weight = |w: &Wanted| w.memory + w.options.iter().map(|o| o.2).min().unwrap_or(0);
    order.sort_by_key(|&i| std::cmp::Reverse(weight(&wanted[i])));
    let mut out: Vec<Option<Placed>> = vec![None; wanted.len()];
    for i in order {
        let w = &wanted[i];
        let fits = |h: usize, copy: u64| {
            let r = &hosts[h];
            r.memory_free.saturating_sub(used_mem[h]) >= w.memory
                && !matches!(r.room, Some(room) if room.saturating_sub(used_room[h]) < copy)
        };
        let score = |h: usize, base: i64| {
            let total = hosts[h].memory_total.max(1) as f64;
            base - (100.0 * used_mem[h] as f64 / total).round() as i64 - 15 * count[h]
        };
        // (score, position in the ranking) of every host that still fits; best first.
        let mut fit: Vec<(i64, usize, usize, u64)> = w
            .options
            .iter()
            .enumerate()
            .filter(|(_, &(h, _, copy))| h < hosts.len() && fits(h, copy))
            .map(|(pos, &(h, base, copy))| (score(h, base), pos, h, copy))
            .collect();
        fit.sort_by_key(|&(s, pos, _, _)| (std::cmp::Reverse(s), pos));
        let placed = match fit.first() {
            Some(&(_, _, h, copy)) => {
                used_mem[h] += w.memory;
                used_room[h] += copy;
                count[h] += 1;
                Placed {
                    guest: w.guest.clone(),
                    to: Some(h),
                    fallback: fit.iter().skip(1).take(FALLBACKS).map(|f| f.2).collect(),
                    copy_bytes: copy,
                    why_not: None,
                }
            }
            None => Placed {
                guest: w.guest.clone(),
                to: None,
                fallback: vec![],
                copy_bytes: 0,
                why_not: Some(if w.options.is_empty() {
                    "no eligible host (see `ferry migrate --dry-run` for each host's reasons)"
                        .into()
                } else {
                    "every eligible host's free memory or local room is promised to guests \
                     placed before it"
                        .into()
                }),
            },
        };
        out[i] = Some(placed);
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(name: &str, free_gib: u64, room: Option<u64>) -> HostRoom {
        HostRoom {
            name: name.into(),
            memory_free: free_gib * GIB,
            memory_total: 64 * GIB,
            room,
        }
    }

    fn want(guest: &str, mem_gib: u64, opts: &[(usize, i64, u64)]) -> Wanted {
        Wanted {
            guest: guest.into(),
            memory: mem_gib * GIB,
            options: opts.to_vec(),
        }
    }

    #[test]
    fn no_two_guests_are_promised_the_same_memory() {
        // h0 has room for one 6 GiB guest; both rank it first.
        let hosts = [host("h0", 8, None), host("h1", 7, None)];
        let w = [
            want("a", 6, &[(0, 50, 0), (1, 40, 0)]),
            want("b", 6, &[(0, 50, 0), (1, 40, 0)]),
        ];
        let p = place(&w, &hosts);
        let targets: Vec<_> = p.iter().map(|p| p.to).collect();
        assert!(
            targets.contains(&Some(0)) && targets.contains(&Some(1)),
            "{p:?}"
        );
    }

    #[test]
    fn local_room_is_consumed_too() {
        let hosts = [host("h0", 60, Some(100)), host("h1", 60, Some(100))];
        let w = [
            want("a", 1, &[(0, 90, 80), (1, 10, 80)]),
            want("b", 1, &[(0, 90, 30), (1, 10, 30)]),
        ];
        let p = place(&w, &hosts);
        assert_eq!(p[0].to, Some(0));
        assert_eq!(p[1].to, Some(1), "h0 has 20 bytes left, b needs 30: {p:?}");
        // A host whose room is unknown is not limited by it.
        let hosts = [host("h0", 60, None)];
        let p = place(&[want("a", 1, &[(0, 0, u64::MAX)])], &hosts);
        assert_eq!(p[0].to, Some(0));
    }

    #[test]
    fn a_guest_that_fits_nowhere_says_why_and_the_rest_are_placed() {
        let hosts = [host("h0", 4, None)];
        let w = [
            want("big", 8, &[(0, 10, 0)]),
            want("small", 2, &[(0, 10, 0)]),
            want("x", 1, &[]),
        ];
        let p = place(&w, &hosts);
        assert_eq!(p[0].to, None);
        assert!(p[0].why_not.as_deref().unwrap_or("").contains("promised"));
        assert_eq!(p[1].to, Some(0));
        assert!(p[2]
            .why_not
            .as_deref()
            .unwrap_or("")
            .contains("no eligible host"));
    }

    #[test]
    fn placements_spread_and_keep_the_next_ranked_as_fallbacks() {
        // Equal hosts: the headroom and per-guest terms spread four guests two and two.
        let hosts = [
            host("h0", 60, None),
            host("h1", 60, None),
            host("h2", 60, None),
        ];
        let opts = [(0, 50, 0), (1, 50, 0), (2, 0, 0)];
        let w: Vec<_> = (0..4).map(|i| want(&format!("g{i}"), 8, &opts)).collect();
        let p = place(&w, &hosts);
        let on = |h| p.iter().filter(|x| x.to == Some(h)).count();
        assert_eq!((on(0), on(1)), (2, 2), "{p:?}");
        assert_eq!(p[0].to, Some(0));
        assert_eq!(p[0].fallback, vec![1, 2]);
        // The hardest guest is placed first, whatever the input order.
        let w = [
            want("small", 1, &[(0, 0, 0)]),
            want("big", 59, &[(0, 0, 0)]),
        ];
        let p = place(&w, &[host("h0", 60, None)]);
        assert_eq!((p[0].to, p[1].to), (Some(0), Some(0)));
        let p = place(&w, &[host("h0", 59, None)]);
        assert_eq!((p[0].to, p[1].to), (None, Some(0)), "{p:?}");
    }
}
