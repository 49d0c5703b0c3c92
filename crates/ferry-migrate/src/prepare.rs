//! Prepare: create the copy targets the target host lacks, at the exact byte size, and journal
//! each one before going on, so a rollback deletes exactly what Ferry created.

use ferry_hypervisor::HvError;

use crate::flow::Ctx;
use crate::preflight::ToCreate;
use crate::provision::Provider;

/// A volume Ferry created on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedVolume {
    pub path: String,
    pub capacity: u64,
    pub provider: Provider,
}

/// Create every volume in `todo`. On failure, returns the error and what was created so far.
pub(crate) fn create(
    ctx: &mut Ctx,
    todo: &[ToCreate],
) -> Result<Vec<CreatedVolume>, (HvError, Vec<CreatedVolume>)> {
    let inv = ctx.inv;
    let mut created = Vec::new();
    for t in todo {
        if let Err(e) = ctx
            .hv
            .create_volume(inv.dst, &t.path, t.capacity, &t.format)
        {
            return Err((e, created));
        }
        created.push(CreatedVolume {
            path: t.path.clone(),
            capacity: t.capacity,
            provider: Provider::Libvirt,
        });
        if let Err(e) = ctx
            .journal
            .record_created(ctx.run, &inv.dst_uri, &t.path, t.capacity)
        {
            ctx.note(format!("warning: could not journal {}: {e}", t.path));
        }
        ctx.note(format!(
            "created {} on {} ({}, {} bytes) for disk {}",
            t.path, inv.dst_uri, t.format, t.capacity, t.disk
        ));
    }
    Ok(created)
}
