//! A cold move of a shut-off guest: after the same plan, checks and `prepare` as a live
//! migration, its local disks are copied through libvirt's storage streams into the volumes
//! created at their exact size, its definition (sources rewritten) is defined on the target,
//! checked there, and only then undefined on the source.

use std::time::Instant;

use ferry_core::plan::Decision;
use ferry_core::{DiskSource, DiskType, Plan};
use ferry_hypervisor::{DomainState, Hypervisor};
use ferry_journal::{Journal, RunId};

use crate::inventory::Inventory;
use crate::prepare::CreatedVolume;
use crate::{rollback, Event, GuestLocation, MigrateError, Outcome, Reporter, Request, Summary};

/// Copy, define, check, undefine the source's definition.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: RunId,
    inv: &Inventory,
    plan: &Plan,
    created: &[CreatedVolume],
    req: &Request,
    reporter: &mut dyn Reporter,
    t0: Instant,
) -> Result<Outcome, MigrateError> {
    let copies: Vec<_> = plan
        .disks
        .iter()
        .filter(|d| d.decision == Decision::Copy)
        .collect();
    let _ = journal.set_phase(run, "copy");
    reporter.report(Event::Step {
        step: "copy",
        detail: format!("{} disk(s) through libvirt's storage streams", copies.len()),
    });
    // Copy every disk, then define: the first failure undoes what this run created.
    let copied = copy_disks(hv, inv, &copies, reporter).and_then(|copied| {
        let xml = plan.persist_xml.as_deref().unwrap_or(&plan.dest_xml);
        let _ = journal.set_phase(run, "define");
        reporter.report(Event::Step {
            step: "define",
            detail: format!("{} on {}, its sources rewritten", inv.guest, inv.dst_uri),
        });
        hv.define(inv.dst, xml).map_err(|e| e.to_string())?;
        Ok(copied)
    });
    let copied = match copied {
        Ok(c) => c,
        Err(cause) => return Err(undo(hv, journal, run, inv, created, &cause, reporter)),
    };
    // Defined there as planned, shut off: then, and only then, the source forgets it.
    let there = hv.domain_state(inv.dst, &inv.guest);
    if !matches!(there, Ok(Some(DomainState::ShutOff))) {
        let cause = format!("after defining it, {} says {:?}", inv.dst_uri, there);
        let _ = journal.finish(run, "failed", &cause);
        return Err(MigrateError::Failed {
            guest: inv.guest.clone(),
            cause: cause.clone(),
            location: GuestLocation::Unknown,
            cleanup: vec![format!(
                "left {}'s definition on {} and the copies in place: inspect both hosts",
                inv.guest, inv.dst_uri
            )],
        });
    }
    let _ = journal.set_phase(run, "verify");
    reporter.report(Event::Step {
        step: "verify",
        detail: format!(
            "{} defined on {}; undefining it on {}",
            inv.guest, inv.dst_uri, inv.src_uri
        ),
    });
    let mut warnings = plan.warnings.clone();
    if let Err(e) = hv.undefine(inv.src, &inv.guest) {
        warnings.push(format!(
            "{} is defined on both hosts: undefining it on {} failed ({e}); do it by hand \
             (virsh -c {} undefine {}) before starting either",
            inv.guest, inv.src_uri, inv.src_uri, inv.guest
        ));
    }
    let _ = journal.finish(
        run,
        "migrated",
        "moved cold: defined on the target, disks copied",
    );
    Ok(Outcome::Migrated(Box::new(Summary {
        run: Some(run.0),
        guest: req.guest.clone(),
        from: req.from.clone(),
        to: req.to.clone(),
        total_ms: t0.elapsed().as_millis() as u64,
        disk_bytes: Some(copied),
        data_bytes: Some(copied),
        copied_disks: copies.iter().map(|d| d.target.clone()).collect(),
        created: created.iter().map(|v| v.path.clone()).collect(),
        verified: vec![format!(
            "{} is defined and shut off on {}",
            inv.guest, inv.dst_uri
        )],
        warnings,
        ..Default::default()
    })))
}

/// Each copied disk through the storage streams: the bytes moved, or why not.
fn copy_disks(
    hv: &dyn Hypervisor,
    inv: &Inventory,
    copies: &[&ferry_core::DiskPlan],
    reporter: &mut dyn Reporter,
) -> Result<u64, String> {
    let mut copied = 0u64;
    for d in copies {
        let (Some(DiskSource::Path { path: from }), Some(to)) = (&d.source, d.dest_path()) else {
            return Err(format!("disk {} has no path to copy", d.target));
        };
        // A block device's whole size; a file's bytes as they are (a qcow2 file is copied as
        // the file it is).
        let size = hv
            .disk_size(inv.src, &inv.guest, &d.target)
            .map_err(|e| e.to_string())?;
        let bytes = if d.source_type == DiskType::Block {
            size.capacity
        } else {
            size.physical
        };
        hv.copy_volume(inv.src, from, inv.dst, to, bytes)
            .map_err(|e| e.to_string())?;
        copied += bytes;
        reporter.report(Event::Note {
            message: format!("copied {from} to {to} on {} ({bytes} bytes)", inv.dst_uri),
        });
    }
    Ok(copied)
}

/// A cold move failed before the target had the definition: the guest is where it was
/// (defined, shut off, on the source), so what Ferry created on the target goes.
fn undo(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: RunId,
    inv: &Inventory,
    created: &[CreatedVolume],
    cause: &str,
    reporter: &mut dyn Reporter,
) -> MigrateError {
    reporter.report(Event::Step {
        step: "rollback",
        detail: cause.to_string(),
    });
    let on_source = matches!(
        hv.domain_state(inv.src, &inv.guest),
        Ok(Some(DomainState::ShutOff))
    );
    let not_on_target = matches!(hv.domain_state(inv.dst, &inv.guest), Ok(None));
    let (location, cleanup) = if on_source && not_on_target {
        let _ = journal.finish(run, "rolled_back", cause);
        (
            GuestLocation::SourceShutOff,
            rollback::delete_created(hv, journal, run, inv, created),
        )
    } else {
        let _ = journal.finish(run, "failed", cause);
        (
            GuestLocation::Unknown,
            created
                .iter()
                .map(|v| format!("left {} on {} in place", v.path, inv.dst_uri))
                .collect(),
        )
    };
    MigrateError::Failed {
        guest: inv.guest.clone(),
        cause: cause.to_string(),
        location,
        cleanup,
    }
}
