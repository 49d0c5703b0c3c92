//! Choosing the target from the command line: host names or URIs, the inventory, `--to` or not.

use anyhow::bail;
use ferry_core::inventory::Inventory;
use ferry_core::{MigrationOptions, Rules};
use ferry_migrate::target::{HostSpec, SelectRequest};

/// The selection to make for `guest` on `from`: the `--to` host alone, or every other
/// inventory host.
pub fn request<'a>(
    inv: Option<&'a Inventory>,
    guest: &str,
    from: &str,
    to: Option<&str>,
    rules: Rules,
    answer_deadline: std::time::Duration,
) -> anyhow::Result<SelectRequest<'a>> {
    let source = HostSpec::resolve(inv, from);
    let candidates = match (to, inv) {
        (Some(t), _) => vec![HostSpec::resolve(inv, t)],
        (None, Some(inv)) => inv
            .hosts
            .iter()
            .filter(|h| h.name != source.name && h.uri != source.uri)
            .map(HostSpec::from_entry)
            .collect(),
        (None, None) => bail!(
            "no target: give --to (a libvirt URI or a host name), or an inventory of hosts for \
             Ferry to choose from (--inventory FILE, FERRY_INVENTORY or {}; see \
             examples/inventory.toml)",
            crate::args::DEFAULT_INVENTORY
        ),
    };
    if candidates.is_empty() {
        bail!(
            "the inventory lists no host other than the source {}",
            source.name
        );
    }
    Ok(SelectRequest {
        guest: guest.to_string(),
        source,
        candidates,
        rules,
        inventory: inv,
        answer_deadline,
    })
}

/// The target's migration address (inventory), for the streams the operator did not direct.
pub fn with_address(mut o: MigrationOptions, target: &HostSpec) -> MigrationOptions {
    if let Some(addr) = &target.migration_address {
        let uri = format!("tcp://{addr}");
        o.migrate_uri.get_or_insert_with(|| uri.clone());
        o.disks_uri.get_or_insert(uri);
    }
    o
}
