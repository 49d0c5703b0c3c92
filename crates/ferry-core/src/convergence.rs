//! Convergence: what a migration job's statistics mean to an operator (phase, rate, ETA), and
//! the bandwidth policy across its phases.

use serde::Serialize;

/// A migration job's statistics (`virDomainGetJobStats`, or the job-completed event): the one
/// model of a job sample, read by the hypervisor boundary and interpreted here. Every figure is
/// optional, as libvirt gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobStats {
    pub time_elapsed_ms: Option<u64>,
    pub time_remaining_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub setup_time_ms: Option<u64>,
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub mem_total: Option<u64>,
    pub mem_processed: Option<u64>,
    pub mem_remaining: Option<u64>,
    pub mem_bps: Option<u64>,
    /// Pages per second the guest dirties.
    pub mem_dirty_rate: Option<u64>,
    pub mem_page_size: Option<u64>,
    pub mem_iteration: Option<u64>,
    pub disk_total: Option<u64>,
    pub disk_processed: Option<u64>,
    pub disk_remaining: Option<u64>,
    pub disk_bps: Option<u64>,
    pub success: Option<bool>,
    pub error_message: Option<String>,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// No figures yet: connections, the target's QEMU starting, NBD servers.
    Setup,
    /// The local disks are mirrored to the target.
    StorageCopy,
    /// Memory pass `iteration` (1 is the bulk copy, later ones resend dirtied pages).
    Memory { iteration: u64 },
    /// The guest is paused: last dirty pages, disk mirrors completing, the target resuming.
    Switchover,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Setup => f.write_str("setup"),
            Self::StorageCopy => f.write_str("storage copy"),
            Self::Memory { iteration } => write!(f, "memory pass {iteration}"),
            Self::Switchover => f.write_str("switchover"),
        }
    }
}

/// What an operator sees of a running migration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    #[serde(flatten)]
    pub phase: Phase,
    pub elapsed_ms: u64,
    pub disk_processed: u64,
    pub disk_total: u64,
    pub mem_processed: u64,
    pub mem_total: u64,
    pub mem_remaining: u64,
    /// Bytes per second of the phase's stream.
    pub rate_bps: u64,
    /// Bytes per second the guest dirties.
    pub dirty_rate_bps: u64,
    /// Seconds left in this phase at the current rate, when it can be told.
    pub eta_s: Option<u64>,
}

impl Progress {
    /// Read a sample (`paused`: the source guest is paused for the switchover); where libvirt
    /// gives no rate (QEMU 7.2 reports none for disk mirrors), derive it from the previous one.
    pub fn from_samples(s: &JobStats, paused: bool, prev: Option<&JobStats>) -> Progress {
        let mut p = Self::from_sample(s, paused);
        if p.rate_bps == 0 {
            if let Some(prev) = prev {
                let dt = s
                    .time_elapsed_ms
                    .unwrap_or(0)
                    .saturating_sub(prev.time_elapsed_ms.unwrap_or(0));
                let (now, before) = match p.phase {
                    Phase::StorageCopy => (s.disk_processed, prev.disk_processed),
                    Phase::Memory { .. } => (s.mem_processed, prev.mem_processed),
                    _ => (None, None),
                };
                if let (Some(now), Some(before), true) = (now, before, dt > 0) {
                    p.rate_bps = now.saturating_sub(before) * 1000 / dt;
                    let remaining = match p.phase {
                        Phase::StorageCopy => p.disk_total.saturating_sub(p.disk_processed),
                        _ => p.mem_remaining,
                    };
                    p.eta_s = (p.rate_bps > 0).then(|| remaining.div_ceil(p.rate_bps));
                }
            }
        }
        p
    }

    /// Read a sample.
    pub fn from_sample(s: &JobStats, paused: bool) -> Progress {
        let disk_total = s.disk_total.unwrap_or(0);
        let disk_remaining = s
            .disk_remaining
            .unwrap_or_else(|| disk_total.saturating_sub(s.disk_processed.unwrap_or(0)));
        let phase = if paused {
            Phase::Switchover
        } else if disk_total > 0 && disk_remaining > 0 && s.mem_iteration.unwrap_or(0) == 0 {
            Phase::StorageCopy
        } else if let Some(i) = s.mem_iteration.filter(|i| *i > 0) {
            Phase::Memory { iteration: i }
        } else if s.mem_processed.unwrap_or(0) > 0 {
            Phase::Memory { iteration: 1 }
        } else if disk_total > 0 {
            Phase::StorageCopy
        } else {
            Phase::Setup
        };
        let (rate, remaining) = match phase {
            Phase::StorageCopy => (s.disk_bps.unwrap_or(0), disk_remaining),
            Phase::Memory { .. } => (s.mem_bps.unwrap_or(0), s.mem_remaining.unwrap_or(0)),
            _ => (0, 0),
        };
        let dirty_rate_bps = s.mem_dirty_rate.unwrap_or(0) * s.mem_page_size.unwrap_or(4096);
        let eta_s = match phase {
            Phase::StorageCopy | Phase::Memory { .. } if rate > 0 => {
                // Memory converges only while the link outruns the guest's dirtying.
                let net = if matches!(phase, Phase::Memory { .. }) {
                    rate.saturating_sub(dirty_rate_bps)
                } else {
                    rate
                };
                (net > 0).then(|| remaining.div_ceil(net))
            }
            _ => None,
        };
        Progress {
            phase,
            elapsed_ms: s.time_elapsed_ms.unwrap_or(0),
            disk_processed: s.disk_processed.unwrap_or(0),
            disk_total,
            mem_processed: s.mem_processed.unwrap_or(0),
            mem_total: s.mem_total.unwrap_or(0),
            mem_remaining: s.mem_remaining.unwrap_or(0),
            rate_bps: rate,
            dirty_rate_bps,
            eta_s,
        }
    }
}

/// The bandwidth libvirt should have in a phase, for a whole-migration cap of `total_mib`
/// with `copied_disks` disk mirrors: during the storage copy libvirt applies its figure to
/// every mirror at once, so each gets a share; afterwards memory alone gets the whole cap.
pub fn bandwidth_for(phase: Phase, total_mib: u64, copied_disks: usize) -> u64 {
    match phase {
        Phase::Setup | Phase::StorageCopy => (total_mib / copied_disks.max(1) as u64).max(1),
        Phase::Memory { .. } | Phase::Switchover => total_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_job() {
        let mut s = JobStats::default();
        assert_eq!(Progress::from_sample(&s, false).phase, Phase::Setup);
        s.disk_total = Some(100);
        s.disk_processed = Some(40);
        s.disk_remaining = Some(60);
        s.disk_bps = Some(20);
        let p = Progress::from_sample(&s, false);
        assert_eq!(p.phase, Phase::StorageCopy);
        assert_eq!(p.eta_s, Some(3));
        s.disk_remaining = Some(0);
        s.disk_processed = Some(100);
        s.mem_iteration = Some(2);
        s.mem_remaining = Some(1000);
        s.mem_bps = Some(300);
        s.mem_dirty_rate = Some(0);
        let p = Progress::from_sample(&s, false);
        assert_eq!(p.phase, Phase::Memory { iteration: 2 });
        assert_eq!(p.eta_s, Some(4));
        assert_eq!(Progress::from_sample(&s, true).phase, Phase::Switchover);
    }

    #[test]
    fn a_missing_rate_is_derived_from_the_previous_sample() {
        let prev = JobStats {
            time_elapsed_ms: Some(1000),
            disk_total: Some(100 << 20),
            disk_processed: Some(10 << 20),
            disk_remaining: Some(90 << 20),
            ..JobStats::default()
        };
        let now = JobStats {
            time_elapsed_ms: Some(1500),
            disk_processed: Some(20 << 20),
            disk_remaining: Some(80 << 20),
            ..prev.clone()
        };
        let p = Progress::from_samples(&now, false, Some(&prev));
        assert_eq!(p.rate_bps, 20 << 20);
        assert_eq!(p.eta_s, Some(4));
        assert_eq!(Progress::from_samples(&now, false, None).rate_bps, 0);
    }

    #[test]
    fn memory_that_dirties_faster_than_the_link_has_no_eta() {
        let s = JobStats {
            mem_iteration: Some(5),
            mem_remaining: Some(1 << 20),
            mem_bps: Some(4096 * 10),
            mem_dirty_rate: Some(20),
            mem_page_size: Some(4096),
            ..JobStats::default()
        };
        let p = Progress::from_sample(&s, false);
        assert_eq!(p.dirty_rate_bps, 4096 * 20);
        assert_eq!(p.eta_s, None);
    }

    #[test]
    fn bandwidth_is_shared_by_mirrors_then_given_to_memory() {
        assert_eq!(bandwidth_for(Phase::StorageCopy, 100, 2), 50);
        assert_eq!(bandwidth_for(Phase::StorageCopy, 1, 3), 1);
        assert_eq!(bandwidth_for(Phase::StorageCopy, 100, 0), 100);
        assert_eq!(bandwidth_for(Phase::Memory { iteration: 1 }, 100, 2), 100);
    }
}
