//! Migrate: libvirt's blocking migration call on one thread; on this one, job statistics polled
//! at ~2 Hz and turned into progress, the bandwidth moved from the disk mirrors to memory when
//! the storage copy is done, and an abort on Ctrl-C or timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::convergence::{self, Action, Fallback, Phase, Progress, Watch};
use ferry_core::Plan;
use ferry_hypervisor::wait::{self, NoAnswer};
use ferry_hypervisor::{DomainState, Hypervisor, JobStats, MigrateRequest};

use crate::inventory::GuestOnHosts;
use crate::{Cause, Event, Reporter, Request};

const POLL: Duration = Duration::from_millis(500);

/// Why Ferry aborted a migration job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum AbortReason {
    /// Ctrl-C, or `ferry abort` from another process.
    Cancelled,
    /// The run's `--timeout` passed.
    TimedOut { after_s: u64 },
    /// The convergence policy's fallback is to abort.
    Stuck { stuck: convergence::Stuck },
    /// The fallback (post-copy, pause) could not be taken, so the job was aborted instead.
    FallbackFailed {
        stuck: convergence::Stuck,
        fallback: Fallback,
        error: String,
    },
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled by the operator"),
            Self::TimedOut { after_s } => write!(f, "timed out after {after_s} s (--timeout)"),
            Self::Stuck { stuck } => write!(f, "{stuck}"),
            Self::FallbackFailed {
                stuck,
                fallback: Fallback::Postcopy,
                error,
            } => write!(f, "{stuck}; the switch to post-copy failed: {error}"),
            Self::FallbackFailed {
                stuck,
                fallback: Fallback::Pause,
                error,
            } => write!(f, "{stuck}; pausing the guest failed: {error}"),
            Self::FallbackFailed { stuck, error, .. } => write!(f, "{stuck}: {error}"),
        }
    }
}

impl AbortReason {
    /// The operator's reasons to stop acting now: Ctrl-C or `ferry abort` (`cancel`), or the
    /// run's `--timeout` passed.
    pub fn asked(req: &Request, cancel: &AtomicBool) -> Option<AbortReason> {
        if cancel.load(Ordering::SeqCst) {
            return Some(AbortReason::Cancelled);
        }
        req.timeout
            .filter(|t| req.started.elapsed() > *t)
            .map(|t| AbortReason::TimedOut {
                after_s: t.as_secs(),
            })
    }
}

/// What the migration call left.
#[derive(Debug)]
pub struct JobResult {
    pub result: Result<(), Cause>,
    /// The last statistics polled while the job ran.
    pub last_sample: Option<JobStats>,
    /// libvirt's call had not returned when Ferry stopped waiting: the job may still run.
    pub unfinished: bool,
}

/// The request libvirt gets for this plan.
pub fn request(plan: &Plan, dest_uri: &str) -> MigrateRequest {
    MigrateRequest {
        flags: plan.flags,
        dest_uri: dest_uri.to_string(),
        migrate_disks: plan.migrate_disks.clone(),
        dest_xml: plan.dest_xml.clone(),
        persist_xml: plan.persist_xml.clone(),
        bandwidth_mib: plan.bandwidth_per_stream_mib,
        migrate_uri: plan.options.migrate_uri.clone(),
        disks_uri: plan.options.disks_uri.clone(),
    }
}

/// How long Ferry waits for libvirt's resume of a failed post-copy.
pub const RESUME_WAIT: Duration = Duration::from_secs(180);

/// Resume the plan's migration after its post-copy failed (`POSTCOPY_RESUME`): libvirt's call
/// returns when the post-copy has completed. Bounded by `wait`: libvirt 9.0's resume call was
/// seen never to return (in the lab); Ferry then stops waiting and says so.
pub fn resume_postcopy(
    hv: &Arc<dyn Hypervisor>,
    inv: &GuestOnHosts,
    plan: &Plan,
    wait: Duration,
) -> Result<(), Cause> {
    let mut req = request(plan, &inv.dst_uri);
    req.flags.postcopy_resume = true;
    resume(hv, inv.src, inv.dst, &inv.guest, req, wait)
}

/// libvirt's resume of a failed post-copy (`req` carries `POSTCOPY_RESUME`), waited for at
/// most `wait`: the flow's and `ferry recover`'s.
pub fn resume(
    hv: &Arc<dyn Hypervisor>,
    src: ferry_hypervisor::HostId,
    dst: ferry_hypervisor::HostId,
    guest: &str,
    req: MigrateRequest,
    wait: Duration,
) -> Result<(), Cause> {
    let (hv, name) = (Arc::clone(hv), guest.to_string());
    match wait::bounded("ferry-resume", wait::deadline_in(wait), move || {
        hv.migrate(src, dst, &name, &req)
    }) {
        Ok(r) => Ok(r?),
        Err(NoAnswer::Late) => Err(Cause::ResumeUnreturned {
            wait_s: wait.as_secs(),
        }),
        Err(NoAnswer::Failed(why)) => Err(Cause::Thread {
            what: "resume",
            why,
        }),
        Err(NoAnswer::Stopped(never)) => match never {},
    }
}

/// Run the migration and watch it.
pub fn execute(
    hv: &Arc<dyn Hypervisor>,
    inv: &GuestOnHosts,
    plan: &Plan,
    req: &Request,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> JobResult {
    let mreq = request(plan, &inv.dst_uri);
    // Not a scoped thread: if libvirt's call never returns, Ferry must still be able to stop
    // waiting for it.
    let call = {
        let (hv, src, dst, name) = (Arc::clone(hv), inv.src, inv.dst, inv.guest.clone());
        wait::spawn("ferry-migrate", move || hv.migrate(src, dst, &name, &mreq))
    };
    let hv = hv.as_ref();
    let mut last: Option<JobStats> = None;
    let mut phase = Phase::Setup;
    let mut aborted: Option<(AbortReason, Instant)> = None;
    // The convergence policy, fed every sample: RAM plus copied disk set its timeout.
    let ram = ferry_core::domain::parse(&inv.live_xml)
        .ok()
        .and_then(|d| d.memory_kib)
        .unwrap_or(0)
        * 1024;
    let mut postcopy = false;
    let mut watch = Watch::new(
        plan.options.policy.clone(),
        ram + plan.copy_bytes().unwrap_or(0),
    );
    loop {
        match call.wait(wait::deadline_in(POLL)) {
            Ok(r) => {
                let result = match (r, aborted) {
                    (Ok(()), _) => Ok(()),
                    (Err(e), Some((why, _))) => Err(Cause::Aborted {
                        why,
                        source: Some(Box::new(e)),
                    }),
                    (Err(e), None) => Err(Cause::Host(e)),
                };
                return JobResult {
                    result,
                    last_sample: last,
                    unfinished: false,
                };
            }
            Err(NoAnswer::Failed(why)) => {
                return JobResult {
                    result: Err(Cause::Thread {
                        what: "migration",
                        why,
                    }),
                    last_sample: last,
                    unfinished: false,
                }
            }
            Err(NoAnswer::Late) => {}
            Err(NoAnswer::Stopped(never)) => match never {},
        }
        match &aborted {
            None => {
                if let Some(why) = AbortReason::asked(req, cancel) {
                    reporter.report(Event::Note {
                        message: format!("{why}: aborting the migration job on {}", inv.src_uri),
                    });
                    if let Err(e) = hv.abort_job(inv.src, &inv.guest) {
                        reporter.report(Event::Note {
                            message: format!("abort failed: {e}"),
                        });
                    }
                    aborted = Some((why, Instant::now()));
                }
            }
            Some((why, at)) if at.elapsed() > req.abort_grace => {
                return JobResult {
                    result: Err(Cause::Unreturned {
                        why: why.clone(),
                        grace_s: req.abort_grace.as_secs(),
                    }),
                    last_sample: last,
                    unfinished: true,
                };
            }
            Some(_) => {}
        }
        let Ok(Some(stats)) = hv.job_stats(inv.src, &inv.guest) else {
            continue;
        };
        let paused = matches!(
            hv.domain_state(inv.src, &inv.guest),
            Ok(Some(DomainState::Paused))
        ) && inv.source_state == Some(DomainState::Running);
        let mut p = Progress::from_samples(&stats, paused, last.as_ref());
        // A job being torn down (after an abort) reads as not yet begun: not news.
        if p.phase == Phase::Setup && phase != Phase::Setup {
            continue;
        }
        // After the switch to post-copy the source is paused, but the guest runs on the target.
        if postcopy && p.phase == Phase::Switchover {
            p.phase = Phase::Postcopy;
        }
        if aborted.is_none() {
            for action in watch.observe(&p) {
                match apply(hv, inv, &action, reporter) {
                    Some(why) => aborted = Some((why, Instant::now())),
                    None => {
                        postcopy |= matches!(
                            action,
                            Action::Fallback {
                                take: Fallback::Postcopy,
                                ..
                            }
                        )
                    }
                }
            }
        }
        p.forecast = watch.forecast(&p);
        p.max_downtime_ms = Some(watch.downtime_ms());
        if p.phase != phase {
            if let (Some(total), Phase::Memory { .. }) = (plan.options.bandwidth_mib, p.phase) {
                if !matches!(phase, Phase::Memory { .. }) && !plan.migrate_disks.is_empty() {
                    let mib = convergence::bandwidth_for(p.phase, total, plan.migrate_disks.len());
                    match hv.set_max_speed(inv.src, &inv.guest, mib) {
                        Ok(()) => reporter.report(Event::Note {
                            message: format!(
                                "storage copied: bandwidth for memory raised to {mib} MiB/s"
                            ),
                        }),
                        Err(e) => reporter.report(Event::Note {
                            message: format!("could not raise the bandwidth to {mib} MiB/s: {e}"),
                        }),
                    }
                }
            }
            phase = p.phase;
        }
        reporter.report(Event::Job(p));
        last = Some(stats);
    }
}

/// Carry out what the convergence policy asks; `Some(why)` when the job was aborted.
fn apply(
    hv: &dyn Hypervisor,
    inv: &GuestOnHosts,
    action: &Action,
    reporter: &mut dyn Reporter,
) -> Option<AbortReason> {
    let note = |reporter: &mut dyn Reporter, message: String| {
        reporter.report(Event::Note { message });
    };
    match action {
        Action::SetDowntime { ms, why } => {
            match hv.set_max_downtime(inv.src, &inv.guest, *ms) {
                Ok(()) => note(reporter, format!("max downtime {ms} ms ({why})")),
                Err(e) => note(reporter, format!("could not set the max downtime: {e}")),
            }
            None
        }
        Action::Fallback { take, stuck } => match take {
            Fallback::Abort => {
                note(
                    reporter,
                    format!("{stuck}: aborting the migration job on {}", inv.src_uri),
                );
                if let Err(e) = hv.abort_job(inv.src, &inv.guest) {
                    note(reporter, format!("abort failed: {e}"));
                }
                Some(AbortReason::Stuck {
                    stuck: stuck.clone(),
                })
            }
            Fallback::Postcopy => {
                note(reporter, format!("{stuck}: switching to post-copy"));
                match hv.start_postcopy(inv.src, &inv.guest) {
                    Ok(()) => {
                        note(
                            reporter,
                            format!(
                                "post-copy: {} now runs on {} and fetches the pages it lacks from \
                                 {}; until the job ends, losing either host or the link loses \
                                 the guest",
                                inv.guest, inv.dst_uri, inv.src_uri
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        note(
                            reporter,
                            format!("could not switch to post-copy ({e}): aborting instead"),
                        );
                        let _ = hv.abort_job(inv.src, &inv.guest);
                        Some(AbortReason::FallbackFailed {
                            stuck: stuck.clone(),
                            fallback: Fallback::Postcopy,
                            error: e.to_string(),
                        })
                    }
                }
            }
            Fallback::Pause => {
                note(
                    reporter,
                    format!(
                        "{stuck}: pausing {} on {} so the copy can finish",
                        inv.guest, inv.src_uri
                    ),
                );
                match hv.suspend(inv.src, &inv.guest) {
                    Ok(()) => None,
                    Err(e) => {
                        note(reporter, format!("could not pause ({e}): aborting instead"));
                        let _ = hv.abort_job(inv.src, &inv.guest);
                        Some(AbortReason::FallbackFailed {
                            stuck: stuck.clone(),
                            fallback: Fallback::Pause,
                            error: e.to_string(),
                        })
                    }
                }
            }
        },
    }
}
