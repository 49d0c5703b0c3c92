//! The journal's vocabulary: a run's phase and outcome, an evacuation's outcome. Each is an enum
//! stored as the text it has always been stored as (journals written before these types read
//! unchanged); a value the enum does not know is an error when read, never a silent default.

/// A word of the journal's vocabulary that is not one Ferry knows (a newer Ferry's, a damaged
/// row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} in the journal")]
pub struct UnknownWord {
    pub what: &'static str,
    pub value: String,
}

/// One table per word: the variant and the text stored for it.
macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The text the journal (and JSON) stores.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(UnknownWord { what: $what, value: s.to_string() }),
                }
            }
        }
    };
}

vocabulary! {
    /// Where a run is (or was when its Ferry stopped).
    RunPhase, "run phase" {
        /// Reading the hosts and checking the plan: nothing created, nothing moved.
        Preflight = "preflight",
        /// Creating the target's volumes.
        Prepare = "prepare",
        /// Pre-seeding: the copied disks frozen onto overlays on the source.
        Freeze = "freeze",
        /// Pre-seeding: the frozen disks copied to the target outside the migration job.
        Seed = "seed",
        /// libvirt's migration job.
        Migrate = "migrate",
        /// Pre-seeding: the overlays committed into the disks where the guest runs.
        Collapse = "collapse",
        /// A cold move's storage copy.
        Copy = "copy",
        /// A cold move's definition on the target.
        Define = "define",
        /// Checking the guest on the target.
        Verify = "verify",
        /// Deleting what the run created, after a failure.
        Rollback = "rollback",
        /// A post-copy that failed: the guest is split between the hosts.
        PostcopyFailed = "postcopy_failed",
        /// The run has ended (its outcome says how).
        Done = "done",
    }
}

vocabulary! {
    /// How a run ended.
    RunOutcome, "run outcome" {
        /// The guest runs on the target, and verification found its place and disks as planned.
        Migrated = "migrated",
        /// The guest runs on the target, but verification found a problem (or could not
        /// check): nothing of the source may be released.
        MigratedUnverified = "migrated_unverified",
        /// The migration failed; the guest runs on the source and what the run created was
        /// deleted (or kept, and said why).
        RolledBack = "rolled_back",
        /// Refused before anything was created or moved.
        Refused = "refused",
        /// The migration failed and the guest is not known to run on the source.
        Failed = "failed",
        /// Its Ferry stopped during a pre-seed; a later run of the same migration took its
        /// frozen disks over and resumed the copy (the message names that run).
        Resumed = "resumed",
    }
}

impl RunOutcome {
    /// The guest runs on the target: the volumes the run created are its disks.
    pub fn guest_on_target(self) -> bool {
        matches!(self, Self::Migrated | Self::MigratedUnverified)
    }

    /// The guest's place and disks were verified on the target: only then may the source's
    /// copies be released.
    pub fn verified(self) -> bool {
        self == Self::Migrated
    }
}

vocabulary! {
    /// How an evacuation ended.
    EvacuationOutcome, "evacuation outcome" {
        /// No guest runs on the host any more.
        Emptied = "emptied",
        /// It ran to its end, but guests are left on the host (or their place is uncertain).
        Incomplete = "incomplete",
        /// Its Ferry ended before it did; `ferry recover` ended it.
        Interrupted = "interrupted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_itself_and_an_unknown_one_is_an_error() {
        for p in RunPhase::ALL {
            assert_eq!(p.as_str().parse::<RunPhase>(), Ok(*p));
        }
        for o in RunOutcome::ALL {
            assert_eq!(o.as_str().parse::<RunOutcome>(), Ok(*o));
            assert_eq!(serde_json::to_string(o).unwrap(), format!("\"{o}\""));
        }
        for o in EvacuationOutcome::ALL {
            assert_eq!(o.as_str().parse::<EvacuationOutcome>(), Ok(*o));
        }
        let e = "migratd".parse::<RunOutcome>().unwrap_err();
        assert_eq!((e.what, e.value.as_str()), ("run outcome", "migratd"));
    }

    #[test]
    fn only_a_verified_migration_counts_as_verified() {
        let verified: Vec<_> = RunOutcome::ALL.iter().filter(|o| o.verified()).collect();
        assert_eq!(verified, [&RunOutcome::Migrated]);
        let on_target: Vec<_> = RunOutcome::ALL
            .iter()
            .filter(|o| o.guest_on_target())
            .collect();
        assert_eq!(
            on_target,
            [&RunOutcome::Migrated, &RunOutcome::MigratedUnverified]
        );
    }
}
