//! Inventory: connect to both hosts and read what the guest is.

use ferry_hypervisor::{DomainState, HostFacts, HostId, HvError, Hypervisor};

use crate::Request;

/// The guest as both hosts see it: what Ferry knows before it decides anything. (Not the
/// inventory of hosts, [`ferry_core::inventory::Inventory`].)
#[derive(Debug, Clone)]
pub struct GuestOnHosts {
    pub guest: String,
    pub src: HostId,
    pub dst: HostId,
    pub src_uri: String,
    pub dst_uri: String,
    pub source_facts: HostFacts,
    pub target_facts: HostFacts,
    /// The guest's state on the source (`None`: not there).
    pub source_state: Option<DomainState>,
    /// The guest's state on the target (`None`: not there, as it should be).
    pub target_state: Option<DomainState>,
    pub live_xml: String,
    /// The persistent definition, when the guest has one.
    pub inactive_xml: Option<String>,
}

/// Connect to both hosts and read the guest's XML from the source.
pub fn read(hv: &dyn Hypervisor, req: &Request) -> Result<GuestOnHosts, HvError> {
    let src = hv.connect(&req.from)?;
    let dst = hv.connect(&req.to)?;
    let source_facts = hv.host_facts(src)?;
    let target_facts = hv.host_facts(dst)?;
    let source_state = hv.domain_state(src, &req.guest)?;
    let target_state = hv.domain_state(dst, &req.guest)?;
    let (live_xml, inactive_xml) = match source_state {
        Some(_) => (
            hv.domain_xml(src, &req.guest, false)?,
            hv.domain_xml(src, &req.guest, true).ok(),
        ),
        None => {
            return Err(HvError::NoDomain {
                host: req.from.clone(),
                name: req.guest.clone(),
            })
        }
    };
    Ok(GuestOnHosts {
        guest: req.guest.clone(),
        src,
        dst,
        src_uri: req.from.clone(),
        dst_uri: req.to.clone(),
        source_facts,
        target_facts,
        source_state,
        target_state,
        live_xml,
        inactive_xml,
    })
}
