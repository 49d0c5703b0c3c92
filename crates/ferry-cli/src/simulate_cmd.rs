//! `ferry simulate`: the evacuation model over a generated fleet, every policy compared.

use std::process::ExitCode;
use std::time::Instant;

use ferry_core::evacuate::{lower_bound, simulate, Fleet, Overheads, CONTENDERS};
use ferry_core::render::human_bytes;
use serde_json::json;

use crate::args::SimulateArgs;

pub fn run(a: &SimulateArgs) -> anyhow::Result<ExitCode> {
    if a.drain >= a.hosts {
        anyhow::bail!(
            "--drain {} leaves no host to move guests to (--hosts {})",
            a.drain,
            a.hosts
        );
    }
    if a.link_gbit.is_nan() || a.link_gbit <= 0.0 {
        anyhow::bail!("--link-gbit must be more than 0");
    }
    let fleet = Fleet::generate(a.hosts as usize, a.guests as usize, a.link_gbit, a.seed);
    let drained: Vec<usize> = (0..a.drain as usize).collect();
    let ov = Overheads::default();
    // Ferry's planning, timed: placement (every guest against every remaining host) and its
    // schedule over the model.
    let t = Instant::now();
    let drain = fleet.drain(&drained);
    let ferry = CONTENDERS
        .iter()
        .find(|c| c.name == "ferry")
        .map(|c| simulate(c.policy, &c.budgets, &ov, &fleet.links, &drain.moves));
    let planning_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(ferry);
    let lb = lower_bound(&fleet.links, &drain.moves, &ov);
    let bytes: u64 = drain.moves.iter().map(|m| m.bytes()).sum();
    let mut rows = vec![];
    for c in &CONTENDERS {
        let t = Instant::now();
        let r = simulate(c.policy, &c.budgets, &ov, &fleet.links, &drain.moves);
        rows.push((c, r, t.elapsed().as_secs_f64() * 1000.0));
    }
    if a.json {
        let v = json!({
            "hosts": a.hosts, "link_gbit": a.link_gbit, "guests": a.guests, "drained_hosts": a.drain, "seed": a.seed,
            "moves": drain.moves.len(), "unplaced": drain.unplaced, "bytes": bytes,
            "lower_bound_s": lb, "planning_ms": planning_ms,
            "policies": rows.iter().map(|(c, r, ms)| json!({
                "name": c.name, "after": c.after, "makespan_s": r.makespan_s,
                "bound_over_makespan": lb / r.makespan_s, "wire_bytes": r.wire_bytes,
                "peak_flights": r.peak_flights, "simulated_ms": ms,
            })).collect::<Vec<_>>(),
        });
        outln!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Fleet: {} hosts on {} Gbit/s links, {} guests (seed {}); {} hosts drained: {} guests to move ({}), {} \
         with no room",
        a.hosts,
        a.link_gbit,
        a.guests,
        a.seed,
        a.drain,
        drain.moves.len(),
        human_bytes(bytes),
        drain.unplaced.len()
    );
    outln!("Ferry placed and scheduled them in {planning_ms:.0} ms. Lower bound: {lb:.0} s.\n");
    outln!("| policy | as | makespan | bound / makespan | on the wire | peak in flight |");
    outln!("|---|---|---|---|---|---|");
    for (c, r, _) in &rows {
        outln!(
            "| {} | {} | {:.0} s | {:.2} | {} | {} |",
            c.name,
            c.after,
            r.makespan_s,
            lb / r.makespan_s,
            human_bytes(r.wire_bytes as u64),
            r.peak_flights
        );
    }
    Ok(ExitCode::SUCCESS)
}
