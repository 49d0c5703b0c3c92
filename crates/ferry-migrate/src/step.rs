//! The flow's steps: what the operator is told ([`crate::Event::Step`]), what the journal
//! records as the run's phase, and which steps only read the hosts.

use ferry_journal::RunPhase;
use serde::Serialize;

/// A step of the flow, in the order a run goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Reading the candidate hosts and choosing (or checking) the target.
    Target,
    /// Reading the guest's definitions on the source, and both hosts' facts.
    Inventory,
    /// Asking both hosts about every disk's planned path.
    Preflight,
    /// Deciding every disk and rewriting the XML.
    Plan,
    /// Creating the target's volumes (libvirt's storage API, or a hook).
    Prepare,
    /// Pre-seeding: the copied disks frozen onto overlays on the source.
    Freeze,
    /// Pre-seeding: the frozen disks copied to the target volumes, outside the migration job.
    Seed,
    /// libvirt's live migration job.
    Migrate,
    /// Pre-seeding: the overlay committed into the disk where the guest runs, and deleted.
    Collapse,
    /// A cold move's disks through libvirt's storage streams.
    Copy,
    /// A cold move's definition on the target.
    Define,
    /// Checking the guest on the target.
    Verify,
    /// Deleting what the run created after a failure.
    Rollback,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 13] = [
        Step::Target,
        Step::Inventory,
        Step::Preflight,
        Step::Plan,
        Step::Prepare,
        Step::Freeze,
        Step::Seed,
        Step::Migrate,
        Step::Collapse,
        Step::Copy,
        Step::Define,
        Step::Verify,
        Step::Rollback,
    ];

    /// The flow only reads the hosts in this step: nothing created, nothing moved, so ending
    /// the process there is a clean stop. From [`Step::Prepare`] on, the flow answers Ctrl-C
    /// and the timeout itself, and rolls back.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Self::Target | Self::Inventory | Self::Preflight | Self::Plan
        )
    }

    /// The journal's phase of a run in this step.
    pub fn phase(self) -> RunPhase {
        match self {
            Self::Target | Self::Inventory | Self::Preflight | Self::Plan => RunPhase::Preflight,
            Self::Prepare => RunPhase::Prepare,
            Self::Freeze => RunPhase::Freeze,
            Self::Seed => RunPhase::Seed,
            Self::Migrate => RunPhase::Migrate,
            Self::Collapse => RunPhase::Collapse,
            Self::Copy => RunPhase::Copy,
            Self::Define => RunPhase::Define,
            Self::Verify => RunPhase::Verify,
            Self::Rollback => RunPhase::Rollback,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::Inventory => "inventory",
            Self::Preflight => "preflight",
            Self::Plan => "plan",
            Self::Prepare => "prepare",
            Self::Freeze => "freeze",
            Self::Seed => "seed",
            Self::Migrate => "migrate",
            Self::Collapse => "collapse",
            Self::Copy => "copy",
            Self::Define => "define",
            Self::Verify => "verify",
            Self::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_steps_before_prepare_are_read_only() {
        let read_only: Vec<Step> = Step::ALL.into_iter().filter(|s| s.is_read_only()).collect();
        assert_eq!(
            read_only,
            [Step::Target, Step::Inventory, Step::Preflight, Step::Plan]
        );
        // A read-only step is the journal's preflight; no other step is.
        for s in Step::ALL {
            assert_eq!(s.is_read_only(), s.phase() == RunPhase::Preflight, "{s}");
        }
    }

    #[test]
    fn a_step_is_shown_and_serialised_as_its_name() {
        for s in Step::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
