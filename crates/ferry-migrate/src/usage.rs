//! What the domains on a host use: asked before a path is planned onto (preflight), before a
//! leftover is deleted (recover) and before a source copy is released (release).

use ferry_core::domain;
use ferry_hypervisor::{HostId, HvError, Hypervisor};

/// Every path the domains on `host` use (live and persistent definitions), with the domain's
/// name; `skip` names a domain to leave out. A definition that cannot be read or parsed counts
/// as using nothing.
pub fn paths_in_use(
    hv: &dyn Hypervisor,
    host: HostId,
    skip: Option<&str>,
) -> Result<Vec<(String, String)>, HvError> {
    let mut in_use = Vec::new();
    for name in hv.list_domains(host)? {
        if Some(name.as_str()) == skip {
            continue;
        }
        for inactive in [false, true] {
            let Ok(x) = hv.domain_xml(host, &name, inactive) else {
                continue;
            };
            let Ok(d) = domain::parse(&x) else { continue };
            for disk in d.disks {
                if let Some(p) = disk.path() {
                    in_use.push((p.to_string(), name.clone()));
                }
            }
        }
    }
    Ok(in_use)
}
