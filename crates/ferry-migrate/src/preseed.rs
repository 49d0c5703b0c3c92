//! Pre-seeding (`--preseed`): freeze the copied disks on the source, copy the frozen disks to
//! the target outside the migration job, migrate only what the guest wrote since, and commit
//! the overlay where the guest ends up.
//!
//! ```text
//! freeze   source: vdb = overlay(qcow2, in the store) -> base (the disk, no longer written)
//! seed     base --(storage streams, zero chunks as holes, digested)--> target volume
//! stage    target: overlay(qcow2) -> target volume; the destination XML names the overlay
//! migrate  NON_SHARED_INC: the mirror copies the source overlay into the target overlay
//! collapse target: commit the overlay into the volume, pivot; define the plan's XML; delete
//!          both overlays
//! thaw     (a failure with the guest on the source) commit the overlay back into the disk,
//!          define the guest's own persistent XML again, delete the overlay
//! ```

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ferry_core::domain::DiskSource;
use ferry_core::preseed::{self as core, Preseed, CHUNK};
use ferry_core::Plan;
use ferry_hypervisor::{HvError, VolumeReader, VolumeWriter};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::flow::{Ctx, Request};
use crate::inventory::GuestOnHosts;
use crate::migrate::AbortReason;
use crate::prepare::CreatedVolume;
use crate::provision::Provider;
use crate::rollback::Cleanup;
use crate::step::Step;
use crate::{Cause, Event};
use ferry_core::preflight::{Problem, ProblemCode};
use ferry_journal::{RunId, RunOutcome};

/// How long a commit may take to be ready (its copy is what the guest wrote since the freeze,
/// at local disk speed).
pub const COMMIT_WAIT: Duration = Duration::from_secs(600);

/// One frozen disk: where its parts are on both hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenDisk {
    /// `<target dev>`.
    pub disk: String,
    /// The disk's own image on the source (the frozen base).
    pub base: String,
    /// The qcow2 overlay the guest writes to on the source.
    pub overlay: String,
    /// The copy's volume on the target.
    pub dest: String,
    /// The overlay on the target, over `dest`.
    pub dest_overlay: String,
    pub capacity: u64,
}

/// The relay's figures for one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SeedProgress {
    pub disk: String,
    /// Bytes of the disk done (sent as data or as holes).
    pub done: u64,
    pub total: u64,
    /// Bytes sent as data.
    pub data: u64,
    /// Bytes sent as holes (zero chunks: only their length crossed the wire).
    pub zeros: u64,
    /// Bytes per second of the disk so far.
    pub rate_bps: u64,
    pub eta_s: Option<u64>,
    /// Chunks read back from the target and found equal to what was sent.
    pub verified_chunks: u64,
}

/// Why pre-seeding stopped.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Host(#[from] HvError),
    #[error("{0}")]
    Stopped(AbortReason),
    #[error(
        "disk {disk}: the target's bytes {start}..{end} differ from what was sent (read back \
         after the copy): the copy is not trusted"
    )]
    Mismatch { disk: String, start: u64, end: u64 },
    #[error("disk {disk}: the stream reading {path} ended at byte {at}, before byte {end}")]
    Short {
        disk: String,
        path: String,
        at: u64,
        end: u64,
    },
    #[error("disk {disk}: {why}")]
    Stage {
        disk: String,
        #[source]
        why: core::Refusal,
    },
}

/// The disks frozen, the staged plan the live phase runs, and the relay's figures.
#[derive(Debug)]
pub(crate) struct Seeded {
    pub frozen: Vec<FrozenDisk>,
    /// The plan with each copied disk on its target overlay, migrated with `NON_SHARED_INC`.
    pub plan: Plan,
    pub progress: Vec<SeedProgress>,
    /// This run froze the disks: a thaw gives the guest back its persistent definition as this
    /// run read it. (A run that took the freeze over never read it unfrozen.)
    pub restore_inactive: bool,
}

/// A pre-seed taken over from an earlier run whose Ferry stopped: its frozen disks, found in
/// the guest's live XML.
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    pub from: RunId,
    pub disks: Vec<core::FoundFrozen>,
}

/// Facts first: disks an earlier run froze (the guest runs on that run's overlays). With
/// `--preseed` the pre-seed is taken over: the plan is made from the guest as it will be once
/// thawed, and the copy resumes where that run's journal says. Without, refused: planning from
/// an overlay would copy the overlay, and the frozen disk would be lost to the guest.
pub(crate) fn adopt(
    inv: &mut GuestOnHosts,
    preseed: bool,
) -> Result<Option<Resume>, crate::MigrateError> {
    let found = core::frozen(&inv.live_xml, &inv.guest);
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let refuse = |what: String, fix: &str| crate::MigrateError::Refused {
        problems: vec![Problem {
            code: ProblemCode::Frozen,
            host: inv.src_uri.clone(),
            disk: Some(first.disk.clone()),
            path: Some(first.overlay.clone()),
            what,
            fix: fix.to_string(),
        }],
    };
    if !preseed {
        return Err(refuse(
            format!(
                "runs on Ferry's overlay {} over {}: run #{}'s pre-seed stopped before its end",
                first.overlay, first.base, first.run
            ),
            "run the same `ferry migrate` with --preseed to resume it, or `ferry recover` to \
             commit the overlay back",
        ));
    }
    if found.iter().any(|f| f.run != first.run) {
        return Err(refuse(
            "the guest's disks run on overlays of several runs".into(),
            "`ferry recover` each of those runs first",
        ));
    }
    for f in &found {
        inv.live_xml = core::thawed(&inv.live_xml, &f.disk)
            .map_err(|e| refuse(e.to_string(), "`ferry recover` the run that froze it"))?;
        if let Some(x) = &inv.inactive_xml {
            // The snapshot changed the persistent definition too (when it has the disk).
            if let Ok(t) = core::thawed(x, &f.disk) {
                inv.inactive_xml = Some(t);
            }
        }
    }
    Ok(Some(Resume {
        from: RunId(first.run),
        disks: found,
    }))
}

/// Freeze (or take over an earlier run's frozen disks), seed and stage. On failure the guest
/// is thawed and what was created is rolled back: the error says what was done.
pub(crate) fn before_live(
    ctx: &mut Ctx,
    plan: &Plan,
    created: &mut Vec<CreatedVolume>,
    req: &Request,
    pre: &Preseed,
    resume: Option<&Resume>,
    cancel: &AtomicBool,
) -> Result<Seeded, crate::MigrateError> {
    let mut disks = match layout(ctx, plan, pre) {
        Ok(d) => d,
        Err(e) => return Err(crate::rollback::after_failure(ctx, created, e, false)),
    };
    let starts = match resume {
        None => {
            ctx.enter(
                Step::Freeze,
                format!(
                    "{} onto overlays in {} on {}",
                    plan.migrate_disks.join(", "),
                    pre.store,
                    ctx.inv.src_uri
                ),
            );
            if let Err(e) = freeze(ctx, &disks) {
                // The snapshot is atomic: nothing was frozen.
                return Err(crate::rollback::after_failure(
                    ctx,
                    created,
                    e.into(),
                    false,
                ));
            }
            vec![0; disks.len()]
        }
        Some(r) => take_over(ctx, r, &mut disks, created),
    };
    let seeded = seed_all(ctx, &disks, &starts, pre, req, cancel)
        .map_err(Cause::from)
        .and_then(|progress| {
            let plan = stage(ctx, plan, &disks, created)?;
            Ok((plan, progress))
        });
    match seeded {
        Ok((plan, progress)) => Ok(Seeded {
            frozen: disks,
            plan,
            progress,
            restore_inactive: resume.is_none(),
        }),
        Err(cause) => Err(with_thaw(ctx, created, &disks, cause, resume.is_none())),
    }
}

/// Take over run `r`'s frozen disks: its overlays are this run's, its volumes on the target
/// too (journaled under this run from now on), and each copy starts where `r`'s journaled
/// windows end. `r` ends as resumed.
fn take_over(
    ctx: &mut Ctx,
    r: &Resume,
    disks: &mut [FrozenDisk],
    created: &mut Vec<CreatedVolume>,
) -> Vec<u64> {
    let (inv, journal, run) = (ctx.inv, ctx.journal, ctx.run);
    ctx.enter(
        Step::Freeze,
        format!(
            "already frozen by run #{}: taking its pre-seed over",
            r.from
        ),
    );
    if journal.outcome(r.from).ok().flatten().is_none() {
        let _ = journal.finish(
            r.from,
            RunOutcome::Resumed,
            &format!("run #{run} took its frozen disks over and resumed the copy"),
        );
    }
    match journal.hand_over(r.from, run) {
        Ok(moved) => {
            for c in moved {
                // The flow's list holds the target's volumes (its rollback deletes them
                // there); the source's overlay is the freeze's, thawed or collapsed.
                match crate::recover::provider(&c) {
                    Ok(provider)
                        if c.host == inv.dst_uri && !created.iter().any(|v| v.path == c.path) =>
                    {
                        created.push(CreatedVolume {
                            path: c.path.clone(),
                            capacity: c.bytes,
                            provider,
                        })
                    }
                    _ => {}
                }
                ctx.note(format!(
                    "{} on {} (created by run #{}) is this run's now",
                    c.path, c.host, r.from
                ));
            }
        }
        Err(e) => ctx.note(format!(
            "warning: could not take over run #{}'s volumes in the journal: {e}",
            r.from
        )),
    }
    let mut starts = Vec::new();
    for d in disks.iter_mut() {
        let start = match r.disks.iter().find(|f| f.disk == d.disk) {
            Some(f) => {
                d.overlay = f.overlay.clone();
                let done = journal.seeded(r.from, &d.disk).unwrap_or(0);
                core::resume_offset(done, d.capacity)
            }
            None => 0,
        };
        let _ = journal.record_seeded(run, &d.disk, start);
        ctx.note(format!(
            "{} runs on {} on {}: its copy resumes at byte {start} of {}",
            d.disk, d.overlay, inv.src_uri, d.capacity
        ));
        starts.push(start);
    }
    starts
}

/// The live phase failed: roll back as always, and thaw the guest when it is on the source.
pub(crate) fn after_live_failure(
    ctx: &mut Ctx,
    seeded: &Seeded,
    err: crate::MigrateError,
) -> crate::MigrateError {
    thaw_if_on_source(ctx, &seeded.frozen, err, seeded.restore_inactive)
}

fn with_thaw(
    ctx: &mut Ctx,
    created: &[CreatedVolume],
    disks: &[FrozenDisk],
    cause: Cause,
    restore_inactive: bool,
) -> crate::MigrateError {
    let err = crate::rollback::after_failure(ctx, created, cause, false);
    thaw_if_on_source(ctx, disks, err, restore_inactive)
}

fn thaw_if_on_source(
    ctx: &mut Ctx,
    disks: &[FrozenDisk],
    mut err: crate::MigrateError,
    restore_inactive: bool,
) -> crate::MigrateError {
    if let crate::MigrateError::Failed {
        location, cleanup, ..
    } = &mut err
    {
        if *location == crate::GuestLocation::Source {
            let thawed = thaw(ctx, disks, restore_inactive);
            let stuck: Vec<String> = thawed
                .iter()
                .filter(|c| matches!(c, Cleanup::NotThawed { .. }))
                .map(|c| c.to_string())
                .collect();
            if !stuck.is_empty() {
                // The journal says the guest still runs on an overlay.
                let message = ctx
                    .journal
                    .run_row(ctx.run)
                    .ok()
                    .flatten()
                    .and_then(|r| r.message);
                let _ = ctx.journal.finish(
                    ctx.run,
                    RunOutcome::RolledBack,
                    &format!("{}; {}", message.unwrap_or_default(), stuck.join("; ")),
                );
            }
            cleanup.extend(thawed);
        } else {
            for d in disks {
                cleanup.push(Cleanup::OverlayLeft {
                    host: ctx.inv.src_uri.clone(),
                    disk: d.disk.clone(),
                    overlay: d.overlay.clone(),
                });
            }
        }
    }
    err
}

/// Where each copied disk's parts go, and its size (read before the freeze).
fn layout(ctx: &mut Ctx, plan: &Plan, pre: &Preseed) -> Result<Vec<FrozenDisk>, Cause> {
    let (hv, inv) = (ctx.hv.as_ref(), ctx.inv);
    let mut out = Vec::new();
    for d in plan
        .disks
        .iter()
        .filter(|d| plan.migrate_disks.contains(&d.target))
    {
        let (Some(DiskSource::Path { path: base }), Some(dest)) = (&d.source, d.dest_path()) else {
            return Err(Cause::NoPath {
                disk: d.target.clone(),
            });
        };
        let capacity = hv.disk_size(inv.src, &inv.guest, &d.target)?.capacity;
        let overlay = core::overlay_path(&pre.store, &inv.guest, &d.target, ctx.run.0);
        out.push(FrozenDisk {
            disk: d.target.clone(),
            base: base.clone(),
            dest: dest.to_string(),
            dest_overlay: overlay.clone(),
            overlay,
            capacity,
        });
    }
    Ok(out)
}

fn freeze(ctx: &mut Ctx, disks: &[FrozenDisk]) -> Result<(), HvError> {
    let inv = ctx.inv;
    let keep: Vec<String> = ferry_core::domain::parse(&inv.live_xml)
        .map(|d| d.disks.into_iter().map(|d| d.target).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !disks.iter().any(|d| &d.disk == t))
        .collect();
    let overlays: Vec<(String, String)> = disks
        .iter()
        .map(|d| (d.disk.clone(), d.overlay.clone()))
        .collect();
    ctx.hv.freeze_disks(inv.src, &inv.guest, &overlays, &keep)?;
    for d in disks {
        // Journaled on the source: `ferry recover` commits it back (or, once the guest runs
        // on the target, deletes it) when this Ferry is gone.
        if let Err(e) = ctx
            .journal
            .record_created(ctx.run, &inv.src_uri, &d.overlay, 0)
        {
            ctx.note(format!("warning: could not journal {}: {e}", d.overlay));
        }
        ctx.note(format!(
            "froze {} ({}): the guest now writes to {} on {}",
            d.disk, d.base, d.overlay, inv.src_uri
        ));
    }
    Ok(())
}

fn seed_all(
    ctx: &mut Ctx,
    disks: &[FrozenDisk],
    starts: &[u64],
    pre: &Preseed,
    req: &Request,
    cancel: &AtomicBool,
) -> Result<Vec<SeedProgress>, SeedError> {
    let total: u64 = disks.iter().zip(starts).map(|(d, s)| d.capacity - s).sum();
    ctx.enter(
        Step::Seed,
        format!(
            "{} bytes of {} disk(s) to {} (zero chunks as holes; read-back: {})",
            total,
            disks.len(),
            ctx.inv.dst_uri,
            pre.verify
        ),
    );
    let mut out = Vec::new();
    for (d, start) in disks.iter().zip(starts) {
        let p = seed_disk(ctx, d, *start, pre, req, cancel)?;
        ctx.note(format!(
            "seeded {} to {}: {} bytes as data, {} as holes{}",
            d.disk,
            d.dest,
            p.data,
            p.zeros,
            if p.verified_chunks > 0 {
                format!(", {} chunk(s) read back and equal", p.verified_chunks)
            } else {
                String::new()
            }
        ));
        out.push(p);
    }
    Ok(out)
}

/// Read exactly `buf.len()` bytes unless the stream ends first; the bytes read.
fn fill(r: &mut dyn VolumeReader, buf: &mut [u8]) -> Result<usize, HvError> {
    let mut at = 0;
    while at < buf.len() {
        let n = r.read(&mut buf[at..])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(at)
}

/// One disk through the relay, from byte `start` on (0, or where an earlier run's journaled
/// windows end): window by window, each through its own pair of streams, journaled once both
/// streams finished (the target has the window). Every chunk is read from the frozen base,
/// sent as data or as a hole, and digested when the read-back will check it; then the
/// read-back.
fn seed_disk(
    ctx: &mut Ctx,
    d: &FrozenDisk,
    start: u64,
    pre: &Preseed,
    req: &Request,
    cancel: &AtomicBool,
) -> Result<SeedProgress, SeedError> {
    let (hv, inv) = (ctx.hv.clone(), ctx.inv);
    let n = d.capacity.div_ceil(CHUNK);
    let mut p = SeedProgress {
        disk: d.disk.clone(),
        total: d.capacity,
        done: start,
        ..Default::default()
    };
    let mut digests: Vec<(u64, u64, [u8; 32])> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let t0 = Instant::now();
    let cap_bps = pre.bandwidth_mib.map(|m| m.saturating_mul(1 << 20));
    let mut last_report = Instant::now();
    for window in core::windows(d.capacity, start) {
        let len = window.end - window.start;
        let mut reader = hv.read_volume(inv.src, &d.base, window.start, len)?;
        let mut writer: Box<dyn VolumeWriter> =
            hv.write_volume(inv.dst, &d.dest, window.start, len)?;
        for range in core::chunks(window.end, window.start) {
            if let Some(why) = AbortReason::asked(req, cancel) {
                return Err(SeedError::Stopped(why));
            }
            let len = (range.end - range.start) as usize;
            let got = fill(reader.as_mut(), &mut buf[..len])?;
            if got < len {
                return Err(SeedError::Short {
                    disk: d.disk.clone(),
                    path: d.base.clone(),
                    at: range.start + got as u64,
                    end: range.end,
                });
            }
            let chunk = &buf[..len];
            if core::is_zero(chunk) {
                writer.zeros(len as u64)?;
                p.zeros += len as u64;
            } else {
                writer.write(chunk)?;
                p.data += len as u64;
            }
            if pre.verify.checks(range.start / CHUNK, n) {
                digests.push((range.start, range.end, Sha256::digest(chunk).into()));
            }
            p.done = range.end;
            let secs = t0.elapsed().as_secs_f64();
            // The cap counts what crossed the wire: the data (a hole is a few bytes).
            if let Some(cap) = cap_bps {
                let due = p.data as f64 / cap as f64;
                if due > secs {
                    // Wait out the cap, still answering Ctrl-C and the timeout.
                    let until = Instant::now() + Duration::from_secs_f64(due - secs);
                    if let Some(why) =
                        ferry_hypervisor::wait::poll_until(until, crate::flow::STOP_CHECK, || {
                            AbortReason::asked(req, cancel)
                        })
                    {
                        return Err(SeedError::Stopped(why));
                    }
                }
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            p.rate_bps = ((p.done - start) as f64 / secs) as u64;
            p.eta_s = (p.rate_bps > 0).then(|| (p.total - p.done) / p.rate_bps);
            if last_report.elapsed() >= Duration::from_millis(500) || p.done == p.total {
                last_report = Instant::now();
                ctx.reporter.report(Event::Seed(p.clone()));
            }
        }
        reader.finish()?;
        writer.finish()?;
        if let Err(e) = ctx.journal.record_seeded(ctx.run, &d.disk, window.end) {
            ctx.note(format!(
                "warning: could not journal the copy of {} up to byte {}: {e}",
                d.disk, window.end
            ));
        }
    }
    // The read-back: the target's bytes, as it now holds them, against what was sent — and,
    // for what an earlier run sent, against the frozen base read again.
    let mut check = |start: u64, end: u64, want: Option<[u8; 32]>| -> Result<(), SeedError> {
        let want = match want {
            Some(w) => w,
            None => digest_of(hv.as_ref(), inv.src, &d.disk, &d.base, start..end, &mut buf)?,
        };
        if digest_of(hv.as_ref(), inv.dst, &d.disk, &d.dest, start..end, &mut buf)? != want {
            return Err(SeedError::Mismatch {
                disk: d.disk.clone(),
                start,
                end,
            });
        }
        p.verified_chunks += 1;
        Ok(())
    };
    for range in core::chunks(start.min(d.capacity), 0) {
        if pre.verify.checks(range.start / CHUNK, n) {
            check(range.start, range.end, None)?;
        }
    }
    for (start, end, want) in digests {
        check(start, end, Some(want))?;
    }
    Ok(p)
}

/// The SHA-256 of bytes `start..end` of a volume, read through a stream.
fn digest_of(
    hv: &dyn ferry_hypervisor::Hypervisor,
    host: ferry_hypervisor::HostId,
    disk: &str,
    path: &str,
    range: std::ops::Range<u64>,
    buf: &mut [u8],
) -> Result<[u8; 32], SeedError> {
    let len = (range.end - range.start) as usize;
    let mut r = hv.read_volume(host, path, range.start, range.end - range.start)?;
    let got = fill(r.as_mut(), &mut buf[..len])?;
    r.finish()?;
    if got != len {
        return Err(SeedError::Short {
            disk: disk.to_string(),
            path: path.to_string(),
            at: range.start + got as u64,
            end: range.end,
        });
    }
    Ok(Sha256::digest(&buf[..len]).into())
}

/// The target's overlays (journaled, deleted by a rollback like any volume Ferry made) and the
/// plan that runs on them.
fn stage(
    ctx: &mut Ctx,
    plan: &Plan,
    disks: &[FrozenDisk],
    created: &mut Vec<CreatedVolume>,
) -> Result<Plan, Cause> {
    let inv = ctx.inv;
    let mut staged = plan.clone();
    for d in disks {
        let stage_err = |why| {
            Cause::Seed(SeedError::Stage {
                disk: d.disk.clone(),
                why,
            })
        };
        staged.dest_xml =
            core::stage(&staged.dest_xml, &d.disk, &d.dest_overlay).map_err(stage_err)?;
        if let Some(p) = &staged.persist_xml {
            // A disk only in the live definition stays out of the persistent one.
            match core::stage(p, &d.disk, &d.dest_overlay) {
                Ok(x) => staged.persist_xml = Some(x),
                Err(core::Refusal::NoDisk { .. }) => {}
                Err(e) => return Err(stage_err(e)),
            }
        }
        ctx.hv
            .create_overlay(inv.dst, &d.dest_overlay, d.capacity, &d.dest, "raw")?;
        created.push(CreatedVolume {
            path: d.dest_overlay.clone(),
            capacity: d.capacity,
            provider: Provider::Libvirt,
        });
        if let Err(e) = ctx
            .journal
            .record_created(ctx.run, &inv.dst_uri, &d.dest_overlay, 0)
        {
            ctx.note(format!(
                "warning: could not journal {}: {e}",
                d.dest_overlay
            ));
        }
        ctx.note(format!(
            "created overlay {} on {} over {}",
            d.dest_overlay, inv.dst_uri, d.dest
        ));
    }
    staged.flags.non_shared_disk = false;
    staged.flags.non_shared_inc = true;
    Ok(staged)
}

/// After the switchover: commit each target overlay into its volume (the guest pivots onto
/// it), define the plan's persistent XML, delete both overlays. A failure is a problem the
/// verification reports (the guest runs on the target, on its overlay).
pub(crate) fn collapse(
    ctx: &mut Ctx,
    seeded: &Seeded,
    plan: &Plan,
    created: &mut Vec<CreatedVolume>,
) -> Result<(), HvError> {
    let inv = ctx.inv;
    ctx.enter(
        Step::Collapse,
        format!(
            "committing {} into the target's volumes",
            seeded
                .frozen
                .iter()
                .map(|d| d.disk.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for d in &seeded.frozen {
        ctx.hv
            .commit_active(inv.dst, &inv.guest, &d.disk, COMMIT_WAIT)?;
        ctx.note(format!(
            "committed {} into {} on {}: the guest runs on it alone",
            d.dest_overlay, d.dest, inv.dst_uri
        ));
    }
    if let Some(x) = &plan.persist_xml {
        ctx.hv.define(inv.dst, x)?;
    }
    for d in &seeded.frozen {
        match ctx.hv.delete_volume(inv.dst, &d.dest_overlay) {
            Ok(()) => {
                let _ = ctx
                    .journal
                    .record_deleted(ctx.run, &inv.dst_uri, &d.dest_overlay);
                created.retain(|v| v.path != d.dest_overlay);
            }
            Err(e) => ctx.note(format!(
                "warning: could not delete the overlay {} on {}: {}",
                d.dest_overlay,
                inv.dst_uri,
                crate::error_chain(&e)
            )),
        }
        // The source's overlay: its guest is gone from there.
        match ctx.hv.delete_volume(inv.src, &d.overlay) {
            Ok(()) => {
                let _ = ctx
                    .journal
                    .record_deleted(ctx.run, &inv.src_uri, &d.overlay);
            }
            Err(e) => ctx.note(format!(
                "warning: could not delete the overlay {} on {}: {}",
                d.overlay,
                inv.src_uri,
                crate::error_chain(&e)
            )),
        }
    }
    Ok(())
}

/// The guest stays on the source: commit each overlay back into its disk, give the guest its
/// own persistent definition again, delete the overlays.
fn thaw(ctx: &mut Ctx, disks: &[FrozenDisk], restore_inactive: bool) -> Vec<Cleanup> {
    let inv = ctx.inv;
    let mut out = Vec::new();
    let mut all = true;
    for d in disks {
        match ctx
            .hv
            .commit_active(inv.src, &inv.guest, &d.disk, COMMIT_WAIT)
        {
            Ok(()) => match ctx.hv.delete_volume(inv.src, &d.overlay) {
                Ok(()) => out.push({
                    let _ = ctx
                        .journal
                        .record_deleted(ctx.run, &inv.src_uri, &d.overlay);
                    Cleanup::Thawed {
                        host: inv.src_uri.clone(),
                        disk: d.disk.clone(),
                        overlay: d.overlay.clone(),
                    }
                }),
                Err(e) => out.push(Cleanup::NotDeleted {
                    host: inv.src_uri.clone(),
                    path: d.overlay.clone(),
                    error: crate::error_chain(&e),
                }),
            },
            Err(e) => {
                all = false;
                out.push(Cleanup::NotThawed {
                    host: inv.src_uri.clone(),
                    disk: d.disk.clone(),
                    overlay: d.overlay.clone(),
                    error: crate::error_chain(&e),
                });
            }
        }
    }
    // The commit rewrote the persistent definition too: where it differs from the guest's
    // own, give that back.
    if all && restore_inactive {
        let now = ctx.hv.domain_xml(inv.src, &inv.guest, true).ok();
        if let Some(x) = inv
            .inactive_xml
            .as_ref()
            .filter(|x| now.as_ref() != Some(*x))
        {
            if let Err(e) = ctx.hv.define(inv.src, x) {
                out.push(Cleanup::NotRedefined {
                    host: inv.src_uri.clone(),
                    guest: inv.guest.clone(),
                    error: crate::error_chain(&e),
                });
            }
        }
    }
    out
}
