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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Switched to post-copy: the guest runs on the target, which pulls the pages it lacks.
    Postcopy,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Setup => f.write_str("setup"),
            Self::StorageCopy => f.write_str("storage copy"),
            Self::Memory { iteration } => write!(f, "memory pass {iteration}"),
            Self::Switchover => f.write_str("switchover"),
            Self::Postcopy => f.write_str("post-copy"),
        }
    }
}

/// What an operator sees of a running migration.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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
    /// Bytes per second the guest dirties: of memory in the memory phase; of the copied disks
    /// (the growth of the mirrors' total) in the storage copy.
    pub dirty_rate_bps: u64,
    /// Seconds left in this phase at the current rate, when it can be told.
    pub eta_s: Option<u64>,
    /// What the convergence policy makes of the figures (set by [`Watch::forecast`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
    /// The max downtime the policy has asked of the job, in ms (set with the forecast).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
}

impl Progress {
    /// Read a sample (`paused`: the source guest is paused for the switchover); where libvirt
    /// gives no rate (QEMU 7.2 reports none for disk mirrors), derive it from the previous one.
    /// The guest's writes to its copied disks show as growth of the mirrors' total: that is
    /// the storage copy's dirty rate.
    pub fn from_samples(s: &JobStats, paused: bool, prev: Option<&JobStats>) -> Progress {
        let mut p = Self::from_sample(s, paused);
        let Some(prev) = prev else {
            return p;
        };
        let dt = s
            .time_elapsed_ms
            .unwrap_or(0)
            .saturating_sub(prev.time_elapsed_ms.unwrap_or(0));
        if dt == 0 {
            return p;
        }
        let per_s = |now: Option<u64>, before: Option<u64>| {
            now.unwrap_or(0).saturating_sub(before.unwrap_or(0)) * 1000 / dt
        };
        match p.phase {
            Phase::StorageCopy => {
                if p.rate_bps == 0 {
                    p.rate_bps = per_s(s.disk_processed, prev.disk_processed);
                }
                p.dirty_rate_bps = per_s(s.disk_total, prev.disk_total);
                let net = p.rate_bps.saturating_sub(p.dirty_rate_bps);
                let remaining = p.disk_total.saturating_sub(p.disk_processed);
                p.eta_s = (net > 0).then(|| remaining.div_ceil(net));
            }
            Phase::Memory { .. } if p.rate_bps == 0 => {
                p.rate_bps = per_s(s.mem_processed, prev.mem_processed);
                let net = p.rate_bps.saturating_sub(p.dirty_rate_bps);
                p.eta_s = (net > 0).then(|| p.mem_remaining.div_ceil(net));
            }
            _ => {}
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
        // Of memory; the storage copy's is known only from two samples (`from_samples`).
        let dirty_rate_bps = match phase {
            Phase::StorageCopy => 0,
            _ => s.mem_dirty_rate.unwrap_or(0) * s.mem_page_size.unwrap_or(4096),
        };
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
            forecast: None,
            max_downtime_ms: None,
        }
    }
}

/// The bandwidth libvirt should have in a phase, for a whole-migration cap of `total_mib`
/// with `copied_disks` disk mirrors: during the storage copy libvirt applies its figure to
/// every mirror at once, so each gets a share; afterwards memory alone gets the whole cap.
pub fn bandwidth_for(phase: Phase, total_mib: u64, copied_disks: usize) -> u64 {
    match phase {
        Phase::Setup | Phase::StorageCopy => (total_mib / copied_disks.max(1) as u64).max(1),
        Phase::Memory { .. } | Phase::Switchover | Phase::Postcopy => total_mib,
    }
}

/// What Ferry does with a migration that will not converge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Abort the job: the guest keeps running on the source, Ferry rolls back.
    #[default]
    Abort,
    /// Switch to post-copy (the migration is started with libvirt's POSTCOPY flag): the guest
    /// runs on the target at once and pulls the pages it still lacks. A failure of either host
    /// or of the link after the switch loses the running guest's state on both.
    Postcopy,
    /// Pause the guest on the source so nothing more is dirtied, and let the job finish: the
    /// guest is paused for the rest of the transfer (downtime grows), then runs on the target.
    Pause,
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "abort" => Ok(Self::Abort),
            "postcopy" => Ok(Self::Postcopy),
            "pause" => Ok(Self::Pause),
            _ => Err(format!("{s:?} is not a fallback (abort, postcopy, pause)")),
        }
    }
}

impl Fallback {
    pub const NAMES: [&'static str; 3] = ["abort", "postcopy", "pause"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abort => "abort",
            Self::Postcopy => "postcopy",
            Self::Pause => "pause",
        }
    }
}

/// The convergence policy: how long a migration may take, how its max downtime grows when
/// memory does not shrink, and what happens when it will not converge. Defaults, the
/// inventory's `[convergence]` section, and per-call flags, in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The max downtime set when the job starts, in ms (QEMU's own default is 300).
    pub downtime_ms: u64,
    /// The cap of the escalation, in ms.
    pub downtime_max_ms: u64,
    /// Memory passes that end without a new low of the remaining bytes before the max
    /// downtime doubles.
    pub escalate_after: u64,
    /// libvirt's AUTO_CONVERGE: QEMU throttles the guest's vCPUs while it does not converge.
    pub auto_converge: bool,
    /// The completion timeout: seconds per GiB of RAM plus copied disk...
    pub timeout_per_gib_s: u64,
    /// ...and never less than this many seconds.
    pub timeout_min_s: u64,
    /// Stall: the low of the remaining bytes has not improved for this many seconds (judged
    /// separately for the storage copy and for the memory phase).
    pub stall_s: u64,
    pub fallback: Fallback,
}

impl Policy {
    /// Every figure within its bound ([`crate::limits`]), and the escalation's cap not below
    /// where it starts.
    pub fn check(&self) -> Result<(), crate::limits::OutOfBounds> {
        use crate::limits::*;
        DOWNTIME_MS.check(self.downtime_ms)?;
        DOWNTIME_MS.check(self.downtime_max_ms)?;
        ESCALATE_AFTER.check(self.escalate_after)?;
        TIMEOUT_PER_GIB_S.check(self.timeout_per_gib_s)?;
        TIMEOUT_MIN_S.check(self.timeout_min_s)?;
        STALL_S.check(self.stall_s)?;
        crate::limits::Bound {
            what: "downtime_max_ms (not below downtime_ms)",
            min: self.downtime_ms,
            max: DOWNTIME_MS.max,
        }
        .check(self.downtime_max_ms)?;
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            downtime_ms: 100,
            downtime_max_ms: 2000,
            escalate_after: 1,
            auto_converge: false,
            timeout_per_gib_s: 800,
            timeout_min_s: 120,
            stall_s: 120,
            fallback: Fallback::Abort,
        }
    }
}

impl Policy {
    /// The completion timeout for `bytes` of RAM plus copied disk, in ms.
    pub fn budget_ms(&self, bytes: u64) -> u64 {
        let per_gib = (bytes as u128 * self.timeout_per_gib_s as u128 * 1000) >> 30;
        (per_gib as u64).max(self.timeout_min_s * 1000)
    }
}

/// Why a migration will not converge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Stuck {
    /// The completion timeout passed.
    Timeout { limit_s: u64 },
    /// The storage mirror's remaining bytes have not reached a new low for `secs` seconds:
    /// the guest writes its copied disks about as fast as the copy goes.
    StorageStall { remaining: u64, secs: u64 },
    /// Memory's remaining bytes have not reached a new low for `secs` seconds.
    MemoryStall { remaining: u64, secs: u64 },
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout { limit_s } => write!(
                f,
                "the migration did not complete within its timeout of {limit_s} s \
                 (timeout_per_gib_s of RAM plus copied disk)"
            ),
            Self::StorageStall { remaining, secs } => write!(
                f,
                "the storage mirror does not converge: {} still to copy, no progress below that \
                 for {secs} s; the guest writes its copied disks as fast as they copy (try \
                 --copy-storage-synchronous-writes, or more --bandwidth)",
                crate::render::human_bytes(*remaining)
            ),
            Self::MemoryStall { remaining, secs } => write!(
                f,
                "memory does not converge: {} still to send, no progress below that for {secs} s; \
                 the guest dirties memory as fast as the link sends it",
                crate::render::human_bytes(*remaining)
            ),
        }
    }
}

/// What the policy asks of the running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Set the job's max downtime (`virDomainMigrateSetMaxDowntime`).
    SetDowntime { ms: u64, why: String },
    /// Take the fallback; `Abort` also when the chosen fallback cannot apply in this phase
    /// (post-copy before the storage copy is done).
    Fallback { take: Fallback, stuck: Stuck },
}

/// What a phase sends: the copied disks, or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Disk,
    Memory,
}

/// The forecast shown with the progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Forecast {
    Converging {
        eta_s: u64,
    },
    /// The guest dirties memory (or writes its copied disks) at least as fast as the link
    /// sends it, or too fast to end the phase before the policy's fallback.
    WillNotConverge {
        stream: Stream,
        dirty_bps: u64,
        rate_bps: u64,
        fallback: Fallback,
        fallback_in_s: u64,
    },
    /// The policy's fallback has been taken.
    FallingBack {
        fallback: Fallback,
    },
}

impl std::fmt::Display for Forecast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Converging { eta_s } => write!(f, "converging, ETA {eta_s} s"),
            Self::WillNotConverge {
                stream,
                dirty_bps,
                rate_bps,
                fallback,
                fallback_in_s,
            } => write!(
                f,
                "will not converge at this rate: the guest {} {}/s, the link sends {}/s; \
                 {} in {fallback_in_s} s",
                match stream {
                    Stream::Disk => "writes its copied disks at",
                    Stream::Memory => "dirties memory at",
                },
                crate::render::human_bytes(*dirty_bps),
                crate::render::human_bytes(*rate_bps),
                fallback.as_str()
            ),
            Self::FallingBack { fallback } => write!(f, "falling back: {}", fallback.as_str()),
        }
    }
}

/// The low of a phase's remaining bytes and when it was reached (job time, ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Low {
    bytes: Option<u64>,
    at_ms: u64,
}

impl Low {
    /// Record a sample; whether it is a new low.
    fn see(&mut self, remaining: u64, now_ms: u64) -> bool {
        if self.bytes.is_none_or(|b| remaining < b) {
            *self = Low {
                bytes: Some(remaining),
                at_ms: now_ms,
            };
            true
        } else {
            false
        }
    }
}

/// The policy applied to one running job: fed every sample, it says what to do. Pure: time is
/// libvirt's elapsed time of the job.
#[derive(Debug, Clone)]
pub struct Watch {
    policy: Policy,
    budget_ms: u64,
    downtime_ms: u64,
    storage: Low,
    memory: Low,
    /// The memory pass seen last, and the low of remaining bytes when it began.
    pass: u64,
    pass_low: Option<u64>,
    flat_passes: u64,
    started: bool,
    fell_back: Option<Fallback>,
}

impl Watch {
    /// `bytes`: RAM plus copied disk, for the completion timeout.
    pub fn new(policy: Policy, bytes: u64) -> Watch {
        Watch {
            budget_ms: policy.budget_ms(bytes),
            downtime_ms: policy.downtime_ms,
            policy,
            storage: Low::default(),
            memory: Low::default(),
            pass: 0,
            pass_low: None,
            flat_passes: 0,
            started: false,
            fell_back: None,
        }
    }

    /// The completion timeout, in ms.
    pub fn budget_ms(&self) -> u64 {
        self.budget_ms
    }

    /// The max downtime asked for last.
    pub fn downtime_ms(&self) -> u64 {
        self.downtime_ms
    }

    /// Feed a sample; what to do now.
    pub fn observe(&mut self, p: &Progress) -> Vec<Action> {
        let mut out = Vec::new();
        if self.fell_back.is_some() {
            return out;
        }
        let now = p.elapsed_ms;
        if !self.started {
            self.started = true;
            out.push(Action::SetDowntime {
                ms: self.downtime_ms,
                why: "the policy's starting max downtime".into(),
            });
        }
        let stuck = match p.phase {
            Phase::StorageCopy => {
                let remaining = p.disk_total.saturating_sub(p.disk_processed);
                self.storage.see(remaining, now);
                (now.saturating_sub(self.storage.at_ms) >= self.policy.stall_s * 1000).then(|| {
                    Stuck::StorageStall {
                        remaining,
                        secs: now.saturating_sub(self.storage.at_ms) / 1000,
                    }
                })
            }
            Phase::Memory { iteration } => {
                if iteration > self.pass {
                    // A pass ended: did it bring the remaining bytes to a new low?
                    if self.pass > 0 {
                        let low = self.memory.bytes;
                        if low.is_some() && low == self.pass_low {
                            self.flat_passes += 1;
                        } else {
                            self.flat_passes = 0;
                        }
                        if self.flat_passes >= self.policy.escalate_after.max(1)
                            && self.downtime_ms < self.policy.downtime_max_ms
                        {
                            self.flat_passes = 0;
                            self.downtime_ms =
                                (self.downtime_ms * 2).min(self.policy.downtime_max_ms);
                            out.push(Action::SetDowntime {
                                ms: self.downtime_ms,
                                why: format!(
                                    "memory pass {} ended without a new low of the remaining \
                                     bytes",
                                    iteration - 1
                                ),
                            });
                        }
                    }
                    self.pass = iteration;
                    self.pass_low = self.memory.bytes;
                }
                self.memory.see(p.mem_remaining, now);
                (now.saturating_sub(self.memory.at_ms) >= self.policy.stall_s * 1000).then(|| {
                    Stuck::MemoryStall {
                        remaining: p.mem_remaining,
                        secs: now.saturating_sub(self.memory.at_ms) / 1000,
                    }
                })
            }
            Phase::Setup | Phase::Switchover | Phase::Postcopy => None,
        };
        let stuck = stuck.or_else(|| {
            (now > self.budget_ms).then_some(Stuck::Timeout {
                limit_s: self.budget_ms / 1000,
            })
        });
        if let Some(stuck) = stuck {
            // Post-copy only switches a running memory phase; before it, stopping is the
            // safe answer.
            let take = match (self.policy.fallback, p.phase) {
                (Fallback::Postcopy, Phase::Memory { .. }) => Fallback::Postcopy,
                (Fallback::Postcopy, _) => Fallback::Abort,
                (f, _) => f,
            };
            self.fell_back = Some(take);
            out.push(Action::Fallback { take, stuck });
        }
        out
    }

    /// What the figures say about the phase's end.
    pub fn forecast(&self, p: &Progress) -> Option<Forecast> {
        if let Some(fallback) = self.fell_back {
            return Some(Forecast::FallingBack { fallback });
        }
        match p.phase {
            Phase::StorageCopy | Phase::Memory { .. } if p.rate_bps > 0 => {
                let (low, remaining) = if matches!(p.phase, Phase::StorageCopy) {
                    (self.storage, p.disk_total.saturating_sub(p.disk_processed))
                } else {
                    (self.memory, p.mem_remaining)
                };
                // When the policy falls back unless the figures improve: the stall timer from
                // the last new low, or the completion timeout.
                let deadline = (low.at_ms + self.policy.stall_s * 1000).min(self.budget_ms);
                let now = p.elapsed_ms;
                // At this rate, can the phase reach a new low (the next pass ending below the
                // last one's low), and its end, before then?
                let to_new_low_ms = low.bytes.map_or(0, |l| {
                    remaining.saturating_sub(l).saturating_mul(1000) / p.rate_bps
                });
                match p.eta_s {
                    Some(eta_s)
                        if now + to_new_low_ms <= deadline
                            && now + eta_s * 1000 <= self.budget_ms =>
                    {
                        Some(Forecast::Converging { eta_s })
                    }
                    _ => Some(Forecast::WillNotConverge {
                        stream: if matches!(p.phase, Phase::StorageCopy) {
                            Stream::Disk
                        } else {
                            Stream::Memory
                        },
                        dirty_bps: p.dirty_rate_bps,
                        rate_bps: p.rate_bps,
                        fallback: self.policy.fallback,
                        fallback_in_s: deadline.saturating_sub(now).div_ceil(1000),
                    }),
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_writing_its_copied_disk_is_the_storage_copys_dirty_rate() {
        let at = |ms: u64, processed: u64, total: u64| JobStats {
            time_elapsed_ms: Some(ms),
            disk_processed: Some(processed),
            disk_total: Some(total),
            mem_dirty_rate: Some(1000),
            mem_page_size: Some(4096),
            ..JobStats::default()
        };
        let mib = 1u64 << 20;
        let a = at(1000, 10 * mib, 64 * mib);
        // The copy sends 8 MiB/s, and the guest's writes grow the mirror by 8 MiB/s.
        let b = at(2000, 18 * mib, 72 * mib);
        let p = Progress::from_samples(&b, false, Some(&a));
        assert_eq!(p.phase, Phase::StorageCopy);
        assert_eq!((p.rate_bps, p.dirty_rate_bps), (8 * mib, 8 * mib));
        assert_eq!(p.eta_s, None, "the copy cannot end at this rate");
        let mut w = Watch::new(Policy::default(), 1 << 30);
        w.observe(&Progress::from_samples(&a, false, None));
        w.observe(&p);
        let f = w.forecast(&p).unwrap();
        assert!(
            matches!(f, Forecast::WillNotConverge { stream: Stream::Disk, dirty_bps, .. } if dirty_bps == 8 * mib),
            "{f:?}"
        );
        assert!(
            f.to_string()
                .contains("the guest writes its copied disks at 8.0 MiB/s"),
            "{f}"
        );
        // Writing half as fast: the copy gains 4 MiB/s on 54 MiB.
        let c = at(2000, 18 * mib, 68 * mib);
        let p = Progress::from_samples(&c, false, Some(&a));
        assert_eq!((p.dirty_rate_bps, p.eta_s), (4 * mib, Some(13)));
        // One sample alone says nothing of the disk's writes (memory's rate is not the disk's).
        assert_eq!(Progress::from_samples(&a, false, None).dirty_rate_bps, 0);
    }

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

    fn mem(pass: u64, at_s: u64, remaining: u64, rate: u64, dirty: u64) -> Progress {
        let s = JobStats {
            time_elapsed_ms: Some(at_s * 1000),
            mem_iteration: Some(pass),
            mem_remaining: Some(remaining),
            mem_processed: Some(1),
            mem_bps: Some(rate),
            mem_dirty_rate: Some(dirty / 4096),
            mem_page_size: Some(4096),
            ..JobStats::default()
        };
        Progress::from_sample(&s, false)
    }

    fn disk(at_s: u64, processed: u64, total: u64) -> Progress {
        let s = JobStats {
            time_elapsed_ms: Some(at_s * 1000),
            disk_total: Some(total),
            disk_processed: Some(processed),
            disk_bps: Some(1 << 20),
            ..JobStats::default()
        };
        Progress::from_sample(&s, false)
    }

    fn downtimes(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetDowntime { ms, .. } => Some(*ms),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_starting_downtime_is_set_once_when_the_job_starts() {
        let mut w = Watch::new(Policy::default(), 1 << 30);
        assert_eq!(downtimes(&w.observe(&disk(1, 0, 100))), vec![100]);
        assert!(w.observe(&disk(2, 50, 100)).is_empty());
    }

    #[test]
    fn downtime_doubles_after_passes_that_bring_no_new_low_and_stops_at_the_cap() {
        let policy = Policy {
            downtime_ms: 100,
            downtime_max_ms: 300,
            ..Policy::default()
        };
        let mut w = Watch::new(policy, 1 << 30);
        let mut seen = vec![];
        // Pass 1 reaches 50 MiB; passes 2.. never go below it.
        for (pass, at, rem) in [
            (1, 1, 80),
            (1, 2, 50),
            (2, 3, 60),
            (3, 4, 55),
            (4, 5, 70),
            (5, 6, 60),
        ] {
            seen.extend(downtimes(&w.observe(&mem(
                pass,
                at,
                rem << 20,
                10 << 20,
                0,
            ))));
        }
        // Start 100; pass 2 ended flat → 200; pass 3 flat → 300 (capped); pass 4 flat → no more.
        assert_eq!(seen, vec![100, 200, 300]);
        assert_eq!(w.downtime_ms(), 300);
    }

    #[test]
    fn passes_that_shrink_keep_the_downtime() {
        let mut w = Watch::new(Policy::default(), 1 << 30);
        let mut seen = vec![];
        for (pass, at, rem) in [(1, 1, 80), (2, 2, 40), (3, 3, 20), (4, 4, 10)] {
            seen.extend(downtimes(&w.observe(&mem(
                pass,
                at,
                rem << 20,
                10 << 20,
                0,
            ))));
        }
        assert_eq!(seen, vec![100]);
    }

    #[test]
    fn a_memory_stall_takes_the_fallback_once() {
        for (fallback, taken) in [
            (Fallback::Abort, Fallback::Abort),
            (Fallback::Postcopy, Fallback::Postcopy),
            (Fallback::Pause, Fallback::Pause),
        ] {
            let policy = Policy {
                stall_s: 10,
                fallback,
                ..Policy::default()
            };
            let mut w = Watch::new(policy, 1 << 30);
            w.observe(&mem(1, 1, 50 << 20, 1 << 20, 2 << 20));
            // 9 s without a new low: not yet.
            let a = w.observe(&mem(2, 10, 60 << 20, 1 << 20, 2 << 20));
            assert!(
                !a.iter().any(|a| matches!(a, Action::Fallback { .. })),
                "{a:?}"
            );
            let a = w.observe(&mem(3, 11, 55 << 20, 1 << 20, 2 << 20));
            assert_eq!(
                a.last(),
                Some(&Action::Fallback {
                    take: taken,
                    stuck: Stuck::MemoryStall {
                        remaining: 55 << 20,
                        secs: 10
                    }
                })
            );
            assert!(w
                .observe(&mem(4, 30, 55 << 20, 1 << 20, 2 << 20))
                .is_empty());
        }
    }

    #[test]
    fn a_storage_stall_aborts_even_when_postcopy_is_allowed_and_says_what_to_try() {
        let policy = Policy {
            stall_s: 5,
            fallback: Fallback::Postcopy,
            ..Policy::default()
        };
        let mut w = Watch::new(policy, 1 << 30);
        w.observe(&disk(1, 90, 100));
        assert!(w.observe(&disk(5, 88, 100)).is_empty());
        let a = w.observe(&disk(6, 89, 100));
        let Some(Action::Fallback { take, stuck }) = a.last() else {
            panic!("{a:?}")
        };
        assert_eq!(*take, Fallback::Abort);
        assert_eq!(
            *stuck,
            Stuck::StorageStall {
                remaining: 11,
                secs: 5
            }
        );
        assert!(stuck
            .to_string()
            .contains("--copy-storage-synchronous-writes"));
    }

    #[test]
    fn the_completion_timeout_counts_ram_plus_copied_disk() {
        let p = Policy::default();
        assert_eq!(p.budget_ms(2 << 30), 1_600_000);
        assert_eq!(p.budget_ms(1 << 20), 120_000, "never below timeout_min_s");
        let mut w = Watch::new(
            Policy {
                timeout_per_gib_s: 10,
                timeout_min_s: 1,
                ..Policy::default()
            },
            1 << 30,
        );
        // Still making progress (a new low every sample), but past the budget.
        w.observe(&mem(1, 5, 50 << 20, 1 << 20, 0));
        assert!(w.observe(&mem(1, 10, 40 << 20, 1 << 20, 0)).is_empty());
        assert_eq!(
            w.observe(&mem(1, 11, 30 << 20, 1 << 20, 0)),
            vec![Action::Fallback {
                take: Fallback::Abort,
                stuck: Stuck::Timeout { limit_s: 10 }
            }]
        );
    }

    #[test]
    fn the_forecast_compares_the_dirty_rate_with_the_link() {
        let policy = Policy {
            stall_s: 30,
            ..Policy::default()
        };
        let mut w = Watch::new(policy, 1 << 30);
        let ok = mem(1, 2, 40 << 20, 10 << 20, 2 << 20);
        w.observe(&ok);
        assert_eq!(w.forecast(&ok), Some(Forecast::Converging { eta_s: 5 }));
        let bad = mem(2, 12, 45 << 20, 1 << 20, 2 << 20);
        w.observe(&bad);
        let f = w.forecast(&bad).unwrap();
        // The low (40 MiB) was reached at 2 s: the stall fires at 32 s, 20 s from now.
        assert_eq!(
            f,
            Forecast::WillNotConverge {
                stream: Stream::Memory,
                dirty_bps: 2 << 20,
                rate_bps: 1 << 20,
                fallback: Fallback::Abort,
                fallback_in_s: 20
            }
        );
        assert!(f.to_string().starts_with("will not converge at this rate"));
    }

    #[test]
    fn a_pass_too_long_to_reach_a_new_low_before_the_stall_is_forecast_as_such() {
        let policy = Policy {
            stall_s: 10,
            ..Policy::default()
        };
        let mut w = Watch::new(policy, 1 << 30);
        // Pass 1 ends near 1 MiB at 3 s; pass 2 restarts at 64 MiB, sending 4 MiB/s while the
        // guest dirties 2 MiB/s: the link outruns the guest, but this pass needs ~16 s to get
        // below 1 MiB, and the stall comes at 13 s.
        w.observe(&mem(1, 3, 1 << 20, 4 << 20, 2 << 20));
        let p = mem(2, 4, 64 << 20, 4 << 20, 2 << 20);
        w.observe(&p);
        assert_eq!(p.eta_s, Some(32));
        assert_eq!(
            w.forecast(&p),
            Some(Forecast::WillNotConverge {
                stream: Stream::Memory,
                dirty_bps: 2 << 20,
                rate_bps: 4 << 20,
                fallback: Fallback::Abort,
                fallback_in_s: 9
            })
        );
    }
}
