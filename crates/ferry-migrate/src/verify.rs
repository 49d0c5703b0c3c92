//! Verify: the guest runs on the target and not on the source; its live disks are the planned
//! sources; its persistent definition on the target has them too.

use ferry_core::domain::{self, DiskSource};
use ferry_core::Plan;
use ferry_hypervisor::{DomainState, Hypervisor};

use crate::inventory::GuestOnHosts;

#[derive(Debug, Default)]
pub struct Verified {
    pub passed: Vec<String>,
    pub problems: Vec<String>,
}

fn compare(
    which: &str,
    xml: Result<String, ferry_hypervisor::HvError>,
    plan: &Plan,
    v: &mut Verified,
) {
    let dom = match xml
        .map_err(|e| e.to_string())
        .and_then(|x| domain::parse(&x).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            v.problems
                .push(format!("cannot read the {which} XML on the target: {e}"));
            return;
        }
    };
    let mut ok = 0;
    for want in &plan.disks {
        let got = dom.disks.iter().find(|d| d.target == want.target);
        let got_src: Option<&DiskSource> = got.and_then(|d| d.source.as_ref());
        if got.is_none() {
            v.problems
                .push(format!("{which}: disk {} is missing", want.target));
        } else if got.and_then(|d| d.storage_slice).map(|s| s.1) != want.dest_slice
            && want.dest_slice.is_some()
        {
            v.problems.push(format!(
                "{which}: disk {} has no storage slice of {} bytes",
                want.target,
                want.dest_slice.unwrap_or(0)
            ));
        } else if got_src != want.dest_source.as_ref() {
            v.problems.push(format!(
                "{which}: disk {} has {}, the plan said {}",
                want.target,
                got_src
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no source".into()),
                want.dest_source
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no source".into())
            ));
        } else {
            ok += 1;
        }
    }
    if ok == plan.disks.len() {
        v.passed.push(format!(
            "{which} definition on the target has the planned sources for all {ok} disk(s)"
        ));
    }
}

/// Check the target after a migration.
pub fn check(hv: &dyn Hypervisor, inv: &GuestOnHosts, plan: &Plan) -> Verified {
    let mut v = Verified::default();
    match hv.domain_state(inv.dst, &inv.guest) {
        Ok(Some(s)) if s.is_active() => v.passed.push(format!(
            "{} is {} on {}",
            inv.guest,
            if s == DomainState::Running {
                "running"
            } else {
                "paused"
            },
            inv.dst_uri
        )),
        Ok(s) => v.problems.push(format!(
            "{} is not running on {} ({s:?})",
            inv.guest, inv.dst_uri
        )),
        Err(e) => v.problems.push(format!("cannot ask {}: {e}", inv.dst_uri)),
    }
    match hv.domain_state(inv.src, &inv.guest) {
        Ok(None) => v.passed.push(format!(
            "{} is gone from {} (undefined there)",
            inv.guest, inv.src_uri
        )),
        Ok(Some(s)) if !s.is_active() => v
            .passed
            .push(format!("{} is not running on {}", inv.guest, inv.src_uri)),
        Ok(Some(s)) => v
            .problems
            .push(format!("{} is still {s:?} on {}", inv.guest, inv.src_uri)),
        Err(e) => v.problems.push(format!("cannot ask {}: {e}", inv.src_uri)),
    }
    compare(
        "live",
        hv.domain_xml(inv.dst, &inv.guest, false),
        plan,
        &mut v,
    );
    if plan.persist_xml.is_some() {
        compare(
            "persistent",
            hv.domain_xml(inv.dst, &inv.guest, true),
            plan,
            &mut v,
        );
    }
    v
}
