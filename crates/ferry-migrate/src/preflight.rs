//! Preflight, the gathering half: ask both hosts what the checks need — the guest's state on
//! each, host UUIDs, the guest's disk sizes, what every planned path is on the target, which
//! paths the target's other domains use — into [`MigrationFacts`]. Only reads. The deciding
//! half is pure: [`ferry_core::preflight`].

use ferry_core::facts::MigrationFacts;
use ferry_core::plan::{Decision, Destination};
use ferry_hypervisor::{HvError, Hypervisor};

use crate::inventory::GuestOnHosts;

pub use ferry_core::preflight::{render, Checked, Problem, ToCreate};

/// Gather the facts preflight decides from, for the disks going to `dests`; `hooked` names the
/// disks whose volume a hook has yet to make.
pub fn gather(
    hv: &dyn Hypervisor,
    inv: &GuestOnHosts,
    dests: &[Destination],
    hooked: std::collections::BTreeSet<String>,
    cold: bool,
) -> Result<MigrationFacts, HvError> {
    let mut f = MigrationFacts {
        guest: inv.guest.clone(),
        source_uri: inv.src_uri.clone(),
        target_uri: inv.dst_uri.clone(),
        source_state: inv.source_state,
        target_state: inv.target_state,
        source_uuid: inv.source_facts.uuid.clone(),
        target_uuid: inv.target_facts.uuid.clone(),
        in_use: crate::usage::paths_in_use(hv, inv.dst, Some(&inv.guest))?,
        hooked,
        cold,
        ..Default::default()
    };
    for d in dests.iter().filter(|d| d.decision != Decision::NoMedia) {
        if d.decision == Decision::Copy || d.path.is_some() {
            f.disk_sizes
                .insert(d.disk.clone(), hv.disk_size(inv.src, &inv.guest, &d.disk)?);
        }
    }
    for p in ferry_core::preflight::paths_to_probe(dests, &f.hooked) {
        if let std::collections::btree_map::Entry::Vacant(e) = f.probes.entry(p) {
            let probe = hv.probe_path(inv.dst, e.key())?;
            e.insert(probe);
        }
    }
    Ok(f)
}
