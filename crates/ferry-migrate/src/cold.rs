//! A cold move of a shut-off guest: after the same plan, checks and `prepare` as a live
//! migration, its local disks are copied through libvirt's storage streams into the volumes
//! created at their exact size, its definition (sources rewritten) is defined on the target,
//! checked there, and only then undefined on the source.

use std::time::Instant;

use ferry_core::plan::Decision;
use ferry_core::{DiskSource, DiskType, Plan};
use ferry_hypervisor::DomainState;
use ferry_journal::RunOutcome;

use crate::flow::Ctx;
use crate::prepare::CreatedVolume;
use crate::{rollback, Cause, GuestLocation, MigrateError, Outcome, Request, Step, Summary};

/// Copy, define, check, undefine the source's definition.
pub(crate) fn finish(
    ctx: &mut Ctx,
    plan: &Plan,
    created: &[CreatedVolume],
    req: &Request,
    t0: Instant,
) -> Result<Outcome, MigrateError> {
    let (inv, run, journal) = (ctx.inv, ctx.run, ctx.journal);
    let copies: Vec<_> = plan
        .disks
        .iter()
        .filter(|d| d.decision == Decision::Copy)
        .collect();
    ctx.enter(
        Step::Copy,
        format!("{} disk(s) through libvirt's storage streams", copies.len()),
    );
    // Copy every disk, then define: the first failure undoes what this run created.
    let copied = copy_disks(ctx, &copies).and_then(|copied| {
        let xml = plan.persist_xml.as_deref().unwrap_or(&plan.dest_xml);
        ctx.enter(
            Step::Define,
            format!("{} on {}, its sources rewritten", inv.guest, inv.dst_uri),
        );
        ctx.hv.define(inv.dst, xml)?;
        Ok(copied)
    });
    let copied = match copied {
        Ok(c) => c,
        Err(cause) => return Err(undo(ctx, created, cause)),
    };
    let hv = ctx.hv.as_ref();
    // Defined there as planned, shut off: then, and only then, the source forgets it.
    let there = hv.domain_state(inv.dst, &inv.guest);
    if !matches!(there, Ok(Some(DomainState::ShutOff))) {
        let cause = Cause::NotDefined {
            host: inv.dst_uri.clone(),
            state: match there {
                Ok(Some(s)) => format!("{s:?}"),
                Ok(None) => "no such domain".into(),
                Err(e) => e.to_string(),
            },
        };
        let _ = journal.finish(run, RunOutcome::Failed, &cause.to_string());
        return Err(MigrateError::Failed {
            guest: inv.guest.clone(),
            cause: Box::new(cause),
            location: GuestLocation::Unknown,
            cleanup: vec![rollback::Cleanup::DefinitionLeft {
                host: inv.dst_uri.clone(),
                guest: inv.guest.clone(),
            }],
        });
    }
    ctx.enter(
        Step::Verify,
        format!(
            "{} defined on {}; undefining it on {}",
            inv.guest, inv.dst_uri, inv.src_uri
        ),
    );
    let hv = ctx.hv.as_ref();
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
        RunOutcome::Migrated,
        "moved cold: defined on the target, disks copied",
    );
    Ok(Outcome::Migrated(Box::new(Summary {
        run: Some(run),
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
fn copy_disks(ctx: &mut Ctx, copies: &[&ferry_core::DiskPlan]) -> Result<u64, Cause> {
    let (hv, inv) = (ctx.hv.as_ref(), ctx.inv);
    let mut copied = 0u64;
    for d in copies {
        let (Some(DiskSource::Path { path: from }), Some(to)) = (&d.source, d.dest_path()) else {
            return Err(Cause::NoPath {
                disk: d.target.clone(),
            });
        };
        // A block device's whole size; a file's bytes as they are (a qcow2 file is copied as
        // the file it is).
        let size = hv.disk_size(inv.src, &inv.guest, &d.target)?;
        let bytes = if d.source_type == DiskType::Block {
            size.capacity
        } else {
            size.physical
        };
        hv.copy_volume(inv.src, from, inv.dst, to, bytes)?;
        copied += bytes;
        ctx.note(format!(
            "copied {from} to {to} on {} ({bytes} bytes)",
            inv.dst_uri
        ));
    }
    Ok(copied)
}

/// A cold move failed before the target had the definition: the guest is where it was
/// (defined, shut off, on the source), so what Ferry created on the target goes.
fn undo(ctx: &mut Ctx, created: &[CreatedVolume], cause: Cause) -> MigrateError {
    let text = crate::error_chain(&cause);
    ctx.enter(Step::Rollback, text.clone());
    let (hv, inv, run, journal) = (ctx.hv.as_ref(), ctx.inv, ctx.run, ctx.journal);
    let on_source = matches!(
        hv.domain_state(inv.src, &inv.guest),
        Ok(Some(DomainState::ShutOff))
    );
    let not_on_target = matches!(hv.domain_state(inv.dst, &inv.guest), Ok(None));
    let (location, cleanup) = if on_source && not_on_target {
        let _ = journal.finish(run, RunOutcome::RolledBack, &text);
        (
            GuestLocation::SourceShutOff,
            rollback::delete_created(ctx, created),
        )
    } else {
        let _ = journal.finish(run, RunOutcome::Failed, &text);
        (
            GuestLocation::Unknown,
            rollback::left(inv, created, rollback::LeftBecause::GuestNotOnSource),
        )
    };
    MigrateError::Failed {
        guest: inv.guest.clone(),
        cause: Box::new(cause),
        location,
        cleanup,
    }
}
