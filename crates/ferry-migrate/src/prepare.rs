//! Prepare: create the copy targets the target host lacks, at the exact byte size, and journal
//! each one before going on, so a rollback deletes exactly what Ferry created.

use ferry_hypervisor::{HvError, Hypervisor};
use ferry_journal::{Journal, RunId};

use crate::inventory::Inventory;
use crate::preflight::ToCreate;
use crate::provision::Provider;
use crate::{Event, Reporter};

/// A volume Ferry created on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedVolume {
    pub path: String,
    pub capacity: u64,
    pub provider: Provider,
}

/// Create every volume in `todo`. On failure, returns the error and what was created so far.
pub fn create(
    hv: &dyn Hypervisor,
    journal: &Journal,
    run: RunId,
    inv: &Inventory,
    todo: &[ToCreate],
    reporter: &mut dyn Reporter,
) -> Result<Vec<CreatedVolume>, (HvError, Vec<CreatedVolume>)> {
    let mut created = Vec::new();
    for t in todo {
        if let Err(e) = hv.create_volume(inv.dst, &t.path, t.capacity, &t.format) {
            return Err((e, created));
        }
        created.push(CreatedVolume {
            path: t.path.clone(),
            capacity: t.capacity,
            provider: Provider::Libvirt,
        });
        if let Err(e) = journal.record_created(run, &inv.dst_uri, &t.path, t.capacity) {
            reporter.report(Event::Note {
                message: format!("warning: could not journal {}: {e}", t.path),
            });
        }
        reporter.report(Event::Note {
            message: format!(
                "created {} on {} ({}, {} bytes) for disk {}",
                t.path, inv.dst_uri, t.format, t.capacity, t.disk
            ),
        });
    }
    Ok(created)
}
