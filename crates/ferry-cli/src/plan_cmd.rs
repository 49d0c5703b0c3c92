//! `ferry plan`: online from the hosts (with target selection), or offline from domain XML
//! files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use ferry_core::{Plan, XmlFiles};

use crate::args::PlanArgs;

/// The largest domain XML Ferry reads: libvirt's are kilobytes; this leaves room for guests
/// with thousands of disks and stops `/dev/urandom` at once.
const MAX_INPUT: u64 = 64 << 20;

fn read(p: &Path, what: &str) -> anyhow::Result<String> {
    crate::input::read_text(p, what, MAX_INPUT, crate::input::Accept::Stream)
}

/// The path as the filesystem resolves it (its directory, for a file not yet there).
fn resolved(p: &Path) -> std::path::PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (dir.canonicalize(), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// No output file may be an input, nor the other output.
pub(crate) fn check_outputs(a: &PlanArgs) -> anyhow::Result<()> {
    let inputs = [&a.domain_xml, &a.inactive_xml];
    let outputs = [
        ("--out-xml", &a.out_xml),
        ("--out-persistent-xml", &a.out_persistent_xml),
    ];
    for (flag, out) in outputs {
        let Some(out) = out else { continue };
        for input in inputs.iter().copied().flatten() {
            if resolved(out) == resolved(input) {
                bail!(
                    "{flag} {} is the input {}: Ferry does not overwrite what it reads; write \
                     the plan elsewhere",
                    out.display(),
                    input.display()
                );
            }
        }
    }
    if let (Some(x), Some(p)) = (&a.out_xml, &a.out_persistent_xml) {
        if resolved(x) == resolved(p) {
            bail!(
                "--out-xml and --out-persistent-xml are one file ({}): the live and the \
                 persistent XML need a file each",
                x.display()
            );
        }
    }
    Ok(())
}

/// Where one output goes, decided from what its path is now.
enum Sink {
    /// A regular file or a new path: written to a temporary file beside it, then renamed over
    /// it, so a full disk leaves the old file intact.
    Replace(PathBuf),
    /// A character device or a FIFO (`/dev/stdout`, a pipe): written through, never replaced.
    Through(PathBuf),
}

/// Decide how to write `p`: a symlink is followed on purpose (the file it points to is
/// written, the link itself stays); a directory, a block device or a socket is refused.
fn sink(p: &Path, what: &str) -> anyhow::Result<Sink> {
    use std::os::unix::fs::FileTypeExt;
    let mut target = p.to_path_buf();
    // A chain of links, bounded as the kernel bounds it.
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&target) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sink::Replace(target)),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot write the {what} to {}", p.display()))
            }
        };
        let t = meta.file_type();
        if t.is_symlink() {
            let to = std::fs::read_link(&target)
                .with_context(|| format!("cannot follow the link {}", target.display()))?;
            target = match target.parent() {
                Some(dir) if to.is_relative() => dir.join(to),
                _ => to,
            };
            continue;
        }
        if t.is_file() {
            return Ok(Sink::Replace(target));
        }
        if t.is_char_device() || t.is_fifo() {
            return Ok(Sink::Through(target));
        }
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_block_device() {
            "a block device"
        } else {
            "a socket"
        };
        bail!(
            "the {what} path {} is {kind}: give a file (or a character device or FIFO, such as \
             /dev/stdout, to write through)",
            p.display()
        );
    }
    bail!("the {what} path {} is a loop of links", p.display())
}

/// Write every file or none of the regular ones: each goes to a temporary file in its own
/// directory, synced; only when all are written are they renamed into place. A device or FIFO
/// is written through, after the temporary files (a failure there leaves the regular files
/// untouched).
fn write_all(files: &[(&Path, &str, &str)]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut sinks = vec![];
    for (p, text, what) in files {
        sinks.push((sink(p, what)?, *p, *text, *what));
    }
    let mut temps: Vec<(PathBuf, PathBuf, &str)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (sink, shown, text, what) in &sinks {
            let Sink::Replace(p) = sink else { continue };
            let name = p
                .file_name()
                .with_context(|| format!("the {what} path {} names no file", shown.display()))?;
            let tmp = p.with_file_name(format!(
                ".{}.ferry-{}.tmp",
                name.to_string_lossy(),
                std::process::id()
            ));
            temps.push((tmp.clone(), p.clone(), what));
            let cannot = || format!("cannot write the {what} to {}", shown.display());
            let mut f = std::fs::File::create(&tmp).with_context(cannot)?;
            f.write_all(text.as_bytes()).with_context(cannot)?;
            f.sync_all().with_context(cannot)?;
        }
        for (sink, shown, text, what) in &sinks {
            let Sink::Through(p) = sink else { continue };
            let cannot = || format!("cannot write the {what} to {}", shown.display());
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(cannot)?;
            f.write_all(text.as_bytes()).with_context(cannot)?;
        }
        for (tmp, p, what) in &temps {
            std::fs::rename(tmp, p)
                .with_context(|| format!("cannot write the {what} to {}", p.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (t, _, _) in &temps {
            let _ = std::fs::remove_file(t);
        }
    }
    result
}

pub fn run(a: &PlanArgs) -> anyhow::Result<ExitCode> {
    match (&a.guest, &a.domain_xml) {
        (Some(guest), _) => online(a, guest),
        (None, Some(live)) => offline(a, live).map(|()| ExitCode::SUCCESS),
        (None, None) => bail!("give a guest and --from HOST, or --domain-xml FILE"),
    }
}

fn offline(a: &PlanArgs, live_path: &Path) -> anyhow::Result<()> {
    let Some(to) = &a.to else {
        bail!("--to is needed with --domain-xml: the target's libvirt URI")
    };
    check_outputs(a)?;
    if a.out_persistent_xml.is_some() && a.inactive_xml.is_none() {
        bail!("--out-persistent-xml needs --inactive-xml offline (the persistent definition)");
    }
    let live = read(live_path, "live domain XML")?;
    let inactive = a
        .inactive_xml
        .as_deref()
        .map(|p| read(p, "inactive domain XML"))
        .transpose()?;
    let rules = a.storage.rules()?;
    let plan = ferry_core::plan(
        &live,
        inactive.as_deref(),
        to,
        &rules,
        &a.migration.options(None),
    )
    .map_err(|e| {
        // A document that cannot be read: say which file.
        let file = match &e {
            ferry_core::PlanError::Domain {
                which: "inactive", ..
            } => a.inactive_xml.as_deref(),
            ferry_core::PlanError::Domain { .. } => Some(live_path),
            _ => None,
        };
        match file {
            Some(f) => anyhow::Error::new(e).context(format!("in {}", f.display())),
            None => e.into(),
        }
    })?;
    output(a, &plan, None, None)
}

fn online(a: &PlanArgs, guest: &str) -> anyhow::Result<ExitCode> {
    let Some(from) = &a.from else {
        bail!("--from HOST is needed to read {guest} online")
    };
    check_outputs(a)?;
    let inv = a.inventory.load()?;
    let req = ferry_migrate::target::SelectRequest::new(
        inv.clone().map(std::sync::Arc::new),
        guest,
        from,
        a.to.as_deref(),
        a.storage.rules()?,
        std::time::Duration::from_secs(a.connect_timeout),
    )?;
    let hv: std::sync::Arc<dyn ferry_hypervisor::Hypervisor> =
        std::sync::Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    let sel = ferry_migrate::target::select(&hv, &req)?;
    let Some((target, derived)) = &sel.chosen else {
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"target": null, "hosts": sel.ranking.hosts})
            );
        } else {
            out!("{}", sel.ranking.render());
        }
        eprintln!("ferry: error: no host can take {guest}: each host's reasons are above");
        return Ok(ExitCode::FAILURE);
    };
    let options = target.stream_options(a.migration.options(inv.as_ref()));
    // A hook makes its volume only when the migration runs: the plan shows a placeholder.
    let mut rules = derived.rules.clone();
    rules
        .copy
        .extend(derived.hooked.iter().map(|h| h.placeholder(guest)));
    let plan = ferry_core::plan(
        &sel.live_xml,
        sel.inactive_xml.as_deref(),
        &target.uri,
        &rules,
        &options,
    )?;
    let found = Found {
        ranking: &sel.ranking,
        warnings: &sel.warnings,
        canaries: Some(serde_json::to_value(&sel.canaries)?),
    };
    output(a, &plan, Some(&req.source.uri), Some(&found))?;
    Ok(ExitCode::SUCCESS)
}

/// What reading the hosts found, besides the plan: every host's verdict, warnings, canaries.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    pub ranking: &'a ferry_core::placement::Ranking,
    pub warnings: &'a [String],
    /// Canaries created and looked for (`None`: not known, through a daemon).
    pub canaries: Option<serde_json::Value>,
}

/// The plan's files (`--out-xml`, `--out-persistent-xml`) and its text or JSON.
pub(crate) fn output(
    a: &PlanArgs,
    plan: &Plan,
    source_uri: Option<&str>,
    sel: Option<&Found<'_>>,
) -> anyhow::Result<()> {
    let mut files: Vec<(&Path, &str, &str)> = vec![];
    if let Some(p) = &a.out_xml {
        files.push((p, &plan.dest_xml, "destination XML"));
    }
    if let (Some(p), Some(x)) = (&a.out_persistent_xml, &plan.persist_xml) {
        files.push((p, x, "destination persistent XML"));
    }
    write_all(&files)?;
    let files = XmlFiles::for_plan(
        plan,
        a.out_xml.as_ref().map(|p| p.display().to_string()),
        a.out_persistent_xml
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    if a.json {
        let mut v = plan.to_json(&files, source_uri);
        if let (Some(o), Some(sel)) = (v.as_object_mut(), sel) {
            o.insert("target".into(), sel.ranking.target.clone().into());
            o.insert("hosts".into(), serde_json::to_value(&sel.ranking.hosts)?);
            if let Some(c) = &sel.canaries {
                o.insert("canaries".into(), c.clone());
            }
        }
        outln!("{v}");
    } else {
        if let Some(sel) = sel {
            out!("{}", sel.ranking.render());
            for w in sel.warnings {
                outln!("warning: {w}");
            }
            outln!();
        }
        out!("{}", plan.render(&files, source_uri, !a.no_diff));
        if a.out_xml.is_none() {
            outln!(
                "note: the virsh command reads {}: write it with --out-xml{}",
                files.dest_xml,
                if files.persist_xml.is_some() {
                    " and --out-persistent-xml"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
