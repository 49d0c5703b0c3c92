//! Cleanup: delete the volumes the journal says Ferry created for runs that did not migrate
//! (Ferry killed, target unreachable during the rollback) — only those, and only when no domain
//! on that host uses them.

use ferry_core::domain;
use ferry_hypervisor::{HostId, HvError, Hypervisor};
use ferry_journal::{Journal, JournalError, RunId};
use serde::Serialize;

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

/// What happened to one leftover volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Cleaned {
    WouldDelete {
        what: String,
    },
    Deleted {
        what: String,
    },
    /// Kept: a domain uses it, the host did not answer, or the delete failed.
    Kept {
        what: String,
        why: String,
    },
}

/// Delete (or with `dry_run`, list) the journal's leftovers.
pub fn run(
    hv: &dyn Hypervisor,
    journal: &Journal,
    dry_run: bool,
) -> Result<Vec<Cleaned>, JournalError> {
    let mut out = Vec::new();
    for c in journal.leftovers()? {
        let what = format!("{} on {} (run #{})", c.path, c.host, c.run);
        if dry_run {
            out.push(Cleaned::WouldDelete { what });
            continue;
        }
        let kept = |why: String| Cleaned::Kept {
            what: what.clone(),
            why,
        };
        let host = match hv.connect(&c.host) {
            Ok(h) => h,
            Err(e) => {
                out.push(kept(e.to_string()));
                continue;
            }
        };
        match paths_in_use(hv, host, None) {
            Err(e) => out.push(kept(e.to_string())),
            Ok(users) => match users.iter().find(|(p, _)| *p == c.path) {
                Some((_, user)) => out.push(kept(format!("domain {user} uses it"))),
                None => {
                    // No record: libvirt's storage API made it. A record Ferry cannot read
                    // (another Ferry's, damaged): keep it rather than delete it the wrong way.
                    let provider = match c.provider.as_deref() {
                        None => Some(crate::provision::Provider::Libvirt),
                        Some(p) => serde_json::from_str(p).ok(),
                    };
                    match provider {
                        None => out.push(kept(format!(
                            "the journal's record of who made it cannot be read ({}); delete it \
                             by hand",
                            c.provider.as_deref().unwrap_or("")
                        ))),
                        Some(provider) => {
                            match crate::provision::give_back(hv, host, &c.path, &provider) {
                                Ok(()) => {
                                    journal.record_deleted(RunId(c.run), &c.host, &c.path)?;
                                    out.push(Cleaned::Deleted { what });
                                }
                                Err(e) => out.push(kept(e.to_string())),
                            }
                        }
                    }
                }
            },
        }
    }
    Ok(out)
}
