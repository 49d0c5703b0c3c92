//! The bounds of every number an operator gives Ferry, whether by a flag or in the inventory:
//! one table, one check. A value outside its bound is refused with the bound, never clamped,
//! never left to overflow.

/// A setting's bounds (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// What the number is, for the message.
    pub what: &'static str,
    pub min: u64,
    pub max: u64,
}

/// A value outside its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be from {min} to {max}, not {value}")]
pub struct OutOfBounds {
    pub what: &'static str,
    pub min: u64,
    pub max: u64,
    pub value: u64,
}

impl Bound {
    /// `value`, when it is within the bound.
    pub fn check(self, value: u64) -> Result<u64, OutOfBounds> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(OutOfBounds {
                what: self.what,
                min: self.min,
                max: self.max,
                value,
            })
        }
    }
}

const DAY_S: u64 = 24 * 3600;

/// How long a host may take to connect and answer (`--connect-timeout`).
pub const CONNECT_TIMEOUT_S: Bound = Bound {
    what: "the connect timeout (seconds)",
    min: 1,
    max: 3600,
};
/// A whole run's `--timeout`.
pub const RUN_TIMEOUT_S: Bound = Bound {
    what: "the run's timeout (seconds)",
    min: 1,
    max: 30 * DAY_S,
};
/// A migration's bandwidth cap (`--bandwidth`), MiB/s: up to about 8 Tbit/s.
pub const BANDWIDTH_MIB: Bound = Bound {
    what: "the bandwidth (MiB/s)",
    min: 1,
    max: 1_000_000,
};
/// A host's link (`--link-bandwidth`, `link_bandwidth`), MiB/s.
pub const LINK_MIB: Bound = Bound {
    what: "a link's bandwidth (MiB/s)",
    min: 1,
    max: 1_000_000,
};
/// The max downtime and its cap (`--max-downtime`, `downtime_ms`, …), ms.
pub const DOWNTIME_MS: Bound = Bound {
    what: "a max downtime (ms)",
    min: 1,
    max: 3_600_000,
};
/// Memory passes without a new low before the max downtime doubles.
pub const ESCALATE_AFTER: Bound = Bound {
    what: "escalate_after (memory passes)",
    min: 1,
    max: 1000,
};
/// The completion timeout per GiB (`--timeout-per-gib`, `timeout_per_gib_s`).
pub const TIMEOUT_PER_GIB_S: Bound = Bound {
    what: "the timeout per GiB (seconds)",
    min: 1,
    max: DAY_S,
};
/// The least completion timeout (`timeout_min_s`).
pub const TIMEOUT_MIN_S: Bound = Bound {
    what: "the least completion timeout (seconds)",
    min: 1,
    max: 30 * DAY_S,
};
/// A stall (`--stall-timeout`, `stall_s`).
pub const STALL_S: Bound = Bound {
    what: "the stall timeout (seconds)",
    min: 1,
    max: DAY_S,
};
/// A hook call (`timeout` of a `[[host.local_store]]` hook).
pub const HOOK_TIMEOUT_S: Bound = Bound {
    what: "a hook's timeout (seconds)",
    min: 1,
    max: 3600,
};
/// Migrations out of or into one host at once (`--max-out`, `--max-in`).
pub const CONCURRENCY: Bound = Bound {
    what: "migrations at once",
    min: 1,
    max: 1000,
};
/// Memory kept free on a host (`reserve_memory`): up to 1 PiB.
pub const RESERVE_MEMORY: Bound = Bound {
    what: "reserve_memory (bytes)",
    min: 0,
    max: 1 << 50,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_within_its_bound_or_refused_with_it() {
        assert_eq!(CONNECT_TIMEOUT_S.check(1), Ok(1));
        assert_eq!(CONNECT_TIMEOUT_S.check(3600), Ok(3600));
        let e = CONNECT_TIMEOUT_S.check(u64::MAX).unwrap_err();
        assert_eq!((e.min, e.max, e.value), (1, 3600, u64::MAX));
        assert!(CONNECT_TIMEOUT_S.check(0).is_err());
        assert!(RESERVE_MEMORY.check(0).is_ok());
    }

    #[test]
    fn the_bounds_are_the_documented_ones() {
        // README, "Careless and hostile input".
        assert_eq!(CONNECT_TIMEOUT_S.max, 3600);
        assert_eq!(RUN_TIMEOUT_S.max, 30 * 86_400);
        assert_eq!(TIMEOUT_PER_GIB_S.max, 86_400);
        assert_eq!(TIMEOUT_MIN_S.max, 30 * 86_400);
        assert_eq!(STALL_S.max, 86_400);
        assert_eq!(DOWNTIME_MS.max, 3_600_000);
        assert_eq!(BANDWIDTH_MIB.max, 1_000_000);
        assert_eq!(HOOK_TIMEOUT_S.max, 3600);
        assert_eq!(RESERVE_MEMORY.max, 1 << 50);
    }

    #[test]
    fn every_bound_fits_the_arithmetic_done_with_it() {
        // Seconds as an Instant offset, ms as libvirt's downtime (unsigned long long), MiB/s
        // as QEMU's bytes per second (int64).
        for b in [
            CONNECT_TIMEOUT_S,
            RUN_TIMEOUT_S,
            TIMEOUT_PER_GIB_S,
            TIMEOUT_MIN_S,
            STALL_S,
            HOOK_TIMEOUT_S,
        ] {
            assert!(std::time::Instant::now()
                .checked_add(std::time::Duration::from_secs(b.max))
                .is_some());
        }
        for b in [BANDWIDTH_MIB, LINK_MIB] {
            assert!(b
                .max
                .checked_mul(1 << 20)
                .is_some_and(|v| v < i64::MAX as u64));
        }
        assert!(i64::try_from(RESERVE_MEMORY.max).is_ok());
    }
}
