//! Migrate: libvirt's blocking migration call on one thread; on this one, job statistics polled
//! at ~2 Hz and turned into progress, the bandwidth moved from the disk mirrors to memory when
//! the storage copy is done, and an abort on Ctrl-C or timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::convergence::{self, Action, Fallback, Phase, Progress, Watch};
use ferry_core::Plan;
use ferry_hypervisor::{DomainState, Hypervisor, JobStats, MigrateRequest};

use crate::inventory::Inventory;
use crate::{Event, Reporter, Request};

const POLL: Duration = Duration::from_millis(500);

/// What the migration call left.
#[derive(Debug)]
pub struct JobResult {
    pub result: Result<(), String>,
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
    inv: &Inventory,
    plan: &Plan,
    wait: Duration,
) -> Result<(), String> {
    let mut req = request(plan, &inv.dst_uri);
    req.flags.postcopy_resume = true;
    let (tx, rx) = mpsc::channel();
    let (hv, src, dst, name) = (Arc::clone(hv), inv.src, inv.dst, inv.guest.clone());
    std::thread::Builder::new()
        .name("ferry-resume".into())
        .spawn(move || {
            let _ = tx.send(hv.migrate(src, dst, &name, &req));
        })
        .map_err(|e| format!("cannot start the resume thread: {e}"))?;
    match rx.recv_timeout(wait) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "libvirt's resume call has not returned in {} s (it may still be resuming: \
             virsh domjobinfo on the source)",
            wait.as_secs()
        )),
    }
}

/// Run the migration and watch it.
pub fn execute(
    hv: &Arc<dyn Hypervisor>,
    inv: &Inventory,
    plan: &Plan,
    req: &Request,
    reporter: &mut dyn Reporter,
    cancel: &AtomicBool,
) -> JobResult {
    let mreq = request(plan, &inv.dst_uri);
    let (tx, rx) = mpsc::channel();

    {
        // Not a scoped thread: if libvirt's call never returns, Ferry must still be able to
        // stop waiting for it.
        let (hv, src, dst, name) = (Arc::clone(hv), inv.src, inv.dst, inv.guest.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-migrate".into())
            .spawn(move || {
                let r = hv.migrate(src, dst, &name, &mreq);
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return JobResult {
                result: Err(format!("cannot start the migration thread: {e}")),
                last_sample: None,
                unfinished: false,
            };
        }
    }
    let hv = hv.as_ref();
    let mut last: Option<JobStats> = None;
    let mut phase = Phase::Setup;
    let mut aborted: Option<(String, Instant)> = None;
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
        match rx.recv_timeout(POLL) {
            Ok(r) => {
                let result = match (r, &aborted) {
                    (Ok(()), _) => Ok(()),
                    (Err(e), Some((why, _))) => Err(format!("{why} ({e})")),
                    (Err(e), None) => Err(e.to_string()),
                };
                return JobResult {
                    result,
                    last_sample: last,
                    unfinished: false,
                };
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return JobResult {
                    result: Err("the migration thread ended without a result".into()),
                    last_sample: last,
                    unfinished: false,
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match &aborted {
            None => {
                let why = if cancel.load(Ordering::SeqCst) {
                    Some("cancelled by the operator".to_string())
                } else {
                    req.timeout
                        .filter(|t| req.started.elapsed() > *t)
                        .map(|t| format!("timed out after {} s (--timeout)", t.as_secs()))
                };
                if let Some(why) = why {
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
                    result: Err(format!(
                        "{why}; libvirt's migration call has not returned {} s after the abort \
                         (a cut link holds it until TCP gives up)",
                        req.abort_grace.as_secs()
                    )),
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
    inv: &Inventory,
    action: &Action,
    reporter: &mut dyn Reporter,
) -> Option<String> {
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
                Some(stuck.to_string())
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
                        Some(format!("{stuck}; the switch to post-copy failed: {e}"))
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
                        Some(format!("{stuck}; pausing the guest failed: {e}"))
                    }
                }
            }
        },
    }
}
