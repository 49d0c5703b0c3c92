//! `ferry evacuate` through the daemon: planned and driven there; the plan, the live view and
//! the final table shown here with the standalone command's printers. Ctrl-C once stops it
//! (no new migration), twice aborts the running ones, as standalone.

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{ArgMatches, Command as ClapCommand};
use ferry_migrate::evacuate::{EvacEvent, EvacPlan, GuestResult};
use ferry_migrate::Event;
use serde_json::Value;

use super::{argv, follow, Server};
use crate::args::EvacuateArgs;
use crate::serve::body;

pub fn run(
    s: &Server,
    a: &EvacuateArgs,
    cmd: &ClapCommand,
    m: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    let b = argv::body(cmd, m, &body::EVACUATE, &["json"])?;
    if !a.json {
        eprintln!(
            "==> the daemon at {} reads the hosts and ranks targets for every guest on {}",
            s.url(),
            a.host
        );
    }
    if a.dry_run {
        let v = s.post("/v1/evacuations", &b)?;
        let plan: EvacPlan =
            serde_json::from_value(v["plan"].clone()).context("the daemon's plan")?;
        crate::evacuate_cmd::show_plan(a.json, &plan);
        return Ok(crate::evacuate_cmd::dry_run_end(a.json, &plan));
    }
    let id = Arc::new(AtomicI64::new(0));
    let presses = Arc::new(AtomicU8::new(0));
    {
        let (id, presses, s) = (id.clone(), presses.clone(), s.clone());
        let _ = ctrlc::set_handler(move || {
            let n = presses.fetch_add(1, Ordering::SeqCst) + 1;
            stop(&s, id.load(Ordering::SeqCst), n);
        });
    }
    let v = s.post("/v1/evacuations", &b)?;
    let evacuation = v["evacuation"]
        .as_i64()
        .with_context(|| format!("the daemon at {} named no evacuation", s.url()))?;
    id.store(evacuation, Ordering::SeqCst);
    let n = presses.load(Ordering::SeqCst);
    if n > 0 {
        stop(s, evacuation, n);
    }
    let mut plan: Option<EvacPlan> = None;
    let mut reporter = None;
    let mut result = None;
    let mut bad = None;
    follow(
        s,
        &format!("/v1/events?evacuation={evacuation}"),
        |e| match e.kind.as_str() {
            "evacuation" => {
                match serde_json::from_value::<EvacPlan>(e.data["plan"].clone()) {
                    Ok(p) => {
                        crate::evacuate_cmd::show_plan(a.json, &p);
                        reporter = Some(crate::evacuate_cmd::reporter(a.json, &p));
                        plan = Some(p);
                    }
                    Err(err) => {
                        bad = Some(err);
                        return false;
                    }
                }
                true
            }
            "evacuation_result" => {
                result = Some(e.data);
                false
            }
            "resync" => {
                eprintln!(
                    "ferry: the daemon no longer holds some of evacuation #{evacuation}'s events"
                );
                true
            }
            _ => {
                if let (Some(r), Some(ev)) = (reporter.as_mut(), evac_event(&e.kind, e.data)) {
                    r.report(ev);
                }
                true
            }
        },
    )?;
    drop(reporter);
    if let Some(e) = bad {
        return Err(e).context("the daemon's plan of the evacuation");
    }
    let (Some(plan), Some(v)) = (plan, result) else {
        bail!(
            "the daemon at {0} ended evacuation #{evacuation}'s events before its verdict (is it \
             shutting down?): `ferry --server {0} history` says how it ended",
            s.url()
        );
    };
    print_verdict(a.json, &plan, &v)
}

/// Ctrl-C pressed the `n`th time: stop the evacuation (no new migration), or abort them all.
fn stop(s: &Server, evacuation: i64, n: u8) {
    match n {
        1 => eprintln!(
            "ferry: Ctrl-C: no new migration starts; those running finish (Ctrl-C again aborts \
             them)"
        ),
        2 => eprintln!("ferry: Ctrl-C again: aborting the running migrations"),
        _ => {
            eprintln!("ferry: the running migrations are being aborted; wait");
            return;
        }
    }
    if evacuation > 0 {
        let force = if n >= 2 { "?force=true" } else { "" };
        if let Err(e) = s.delete(&format!("/v1/evacuations/{evacuation}{force}")) {
            eprintln!("ferry: error: {}", crate::because(&e));
        }
    }
}

/// One of the daemon's evacuation events as the library's: a migration's own events carry
/// their guest.
fn evac_event(kind: &str, data: Value) -> Option<EvacEvent> {
    match kind {
        "started" | "bandwidth" | "ended" | "stopping" => serde_json::from_value(data).ok(),
        _ => {
            let guest = data["guest"].as_str()?.to_string();
            let inner: Event = serde_json::from_value(data).ok()?;
            Some(EvacEvent::Migration { guest, inner })
        }
    }
}

/// The final table and verdict, as standalone prints them; the exit status is the verdict's.
fn print_verdict(json: bool, plan: &EvacPlan, v: &Value) -> anyhow::Result<ExitCode> {
    let guests: Vec<GuestResult> =
        serde_json::from_value(v["guests"].clone()).context("the daemon's results")?;
    if json {
        let mut line = v.clone();
        if let Some(o) = line.as_object_mut() {
            // The evacuation's own additions: its host, the verdict's words.
            for k in crate::serve::hub::ENVELOPE
                .iter()
                .chain(&["host", "message", "uncertain"])
            {
                o.remove(*k);
            }
            o.insert("event".into(), "result".into());
        }
        crate::migrate_cmd::print_json(&line);
    } else {
        crate::evacuate_cmd::print_table(&guests);
        outln!(
            "\n{}: {} (predicted {:.0} s, lower bound {:.0} s).",
            plan.hosts.first().map_or("?", |h| h.name.as_str()),
            v["message"].as_str().unwrap_or_default(),
            plan.predicted.makespan_s,
            plan.bound_s
        );
    }
    let still_running = v["still_running"].as_array().is_some_and(|a| !a.is_empty());
    Ok(if v["uncertain"].as_bool().unwrap_or(false) {
        ExitCode::from(3)
    } else if still_running {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
