//! Planning an evacuation: every host read once, each guest's targets ranked, all placed at
//! once, the schedule predicted.

use super::*;

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
        return Err(MigrateError::Host(src.unread()));
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
