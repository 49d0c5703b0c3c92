//! Verify: the guest runs on the target and not on the source; its live disks are the planned
//! sources; its persistent definition on the target has them too.

use ferry_core::domain::{self, DiskSource};
use ferry_core::Plan;
use ferry_hypervisor::{DomainState, Hypervisor};
use serde::Serialize;

use crate::inventory::GuestOnHosts;

/// Which of the guest's definitions on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Definition {
    Live,
    Persistent,
}

impl std::fmt::Display for Definition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::Persistent => "persistent",
        })
    }
}

/// What verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum VerifyProblem {
    #[error("{guest} is not running on {host} ({state})")]
    NotOnTarget {
        guest: String,
        host: String,
        state: String,
    },
    #[error("{guest} is still {state} on {host}")]
    StillOnSource {
        guest: String,
        host: String,
        state: String,
    },
    #[error("cannot ask {host}: {error}")]
    CannotAsk { host: String, error: String },
    #[error("cannot read the {which} XML on the target: {error}")]
    Unreadable { which: Definition, error: String },
    #[error("{which}: disk {disk} is missing")]
    DiskMissing { which: Definition, disk: String },
    #[error("{which}: disk {disk} has no storage slice of {bytes} bytes")]
    NoSlice {
        which: Definition,
        disk: String,
        bytes: u64,
    },
    #[error("{which}: disk {disk} has {got}, the plan said {want}")]
    WrongSource {
        which: Definition,
        disk: String,
        got: String,
        want: String,
    },
}

#[derive(Debug, Default)]
pub struct Verified {
    pub passed: Vec<String>,
    pub problems: Vec<VerifyProblem>,
}

fn source_text(s: Option<&DiskSource>) -> String {
    s.map(|s| s.to_string())
        .unwrap_or_else(|| "no source".into())
}

fn compare(
    which: Definition,
    xml: Result<String, ferry_hypervisor::HvError>,
    plan: &Plan,
    v: &mut Verified,
) {
    let dom = match xml
        .map_err(|e| e.to_string())
        .and_then(|x| domain::parse(&x).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(error) => {
            v.problems.push(VerifyProblem::Unreadable { which, error });
            return;
        }
    };
    let mut ok = 0;
    for want in &plan.disks {
        let disk = want.target.clone();
        let Some(got) = dom.disks.iter().find(|d| d.target == want.target) else {
            v.problems.push(VerifyProblem::DiskMissing { which, disk });
            continue;
        };
        match want.dest_slice {
            Some(bytes) if got.storage_slice.map(|s| s.1) != Some(bytes) => {
                v.problems
                    .push(VerifyProblem::NoSlice { which, disk, bytes });
                continue;
            }
            _ => {}
        }
        if got.source.as_ref() != want.dest_source.as_ref() {
            v.problems.push(VerifyProblem::WrongSource {
                which,
                disk,
                got: source_text(got.source.as_ref()),
                want: source_text(want.dest_source.as_ref()),
            });
            continue;
        }
        ok += 1;
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
        Ok(s) => v.problems.push(VerifyProblem::NotOnTarget {
            guest: inv.guest.clone(),
            host: inv.dst_uri.clone(),
            state: format!("{s:?}"),
        }),
        Err(e) => v.problems.push(VerifyProblem::CannotAsk {
            host: inv.dst_uri.clone(),
            error: e.to_string(),
        }),
    }
    match hv.domain_state(inv.src, &inv.guest) {
        Ok(None) => v.passed.push(format!(
            "{} is gone from {} (undefined there)",
            inv.guest, inv.src_uri
        )),
        Ok(Some(s)) if !s.is_active() => v
            .passed
            .push(format!("{} is not running on {}", inv.guest, inv.src_uri)),
        Ok(Some(s)) => v.problems.push(VerifyProblem::StillOnSource {
            guest: inv.guest.clone(),
            host: inv.src_uri.clone(),
            state: format!("{s:?}"),
        }),
        Err(e) => v.problems.push(VerifyProblem::CannotAsk {
            host: inv.src_uri.clone(),
            error: e.to_string(),
        }),
    }
    compare(
        Definition::Live,
        hv.domain_xml(inv.dst, &inv.guest, false),
        plan,
        &mut v,
    );
    if plan.persist_xml.is_some() {
        compare(
            Definition::Persistent,
            hv.domain_xml(inv.dst, &inv.guest, true),
            plan,
            &mut v,
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_the_definition_and_the_disk() {
        let p = VerifyProblem::DiskMissing {
            which: Definition::Persistent,
            disk: "vdb".into(),
        };
        assert_eq!(p.to_string(), "persistent: disk vdb is missing");
        let p = VerifyProblem::NoSlice {
            which: Definition::Live,
            disk: "vdb".into(),
            bytes: 64,
        };
        assert_eq!(
            p.to_string(),
            "live: disk vdb has no storage slice of 64 bytes"
        );
    }
}
