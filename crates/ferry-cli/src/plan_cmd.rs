//! `ferry plan`: online from the hosts (with target selection), or offline from domain XML
//! files.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use ferry_core::{Plan, XmlFiles};

use crate::args::PlanArgs;

fn read(p: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

fn write(p: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    std::fs::write(p, text).with_context(|| format!("cannot write the {what} to {}", p.display()))
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
        &a.migration.options(),
    )?;
    output(a, &plan, None, None)
}

fn online(a: &PlanArgs, guest: &str) -> anyhow::Result<ExitCode> {
    let Some(from) = &a.from else {
        bail!("--from HOST is needed to read {guest} online")
    };
    let inv = a.inventory.load()?;
    let req = crate::target_cmd::request(
        inv.as_ref(),
        guest,
        from,
        a.to.as_deref(),
        a.storage.rules()?,
    )?;
    let hv = ferry_hypervisor::libvirt::Libvirt::new();
    let sel = ferry_migrate::target::select(&hv, &req)?;
    let Some((target, derived)) = &sel.chosen else {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"target": null, "hosts": sel.ranking.hosts})
            );
        } else {
            print!("{}", sel.ranking.render());
        }
        eprintln!("ferry: error: no host can take {guest}: each host's reasons are above");
        return Ok(ExitCode::FAILURE);
    };
    let options = crate::target_cmd::with_address(a.migration.options(), target);
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
    output(a, &plan, Some(&req.source.uri), Some(&sel))?;
    Ok(ExitCode::SUCCESS)
}

fn output(
    a: &PlanArgs,
    plan: &Plan,
    source_uri: Option<&str>,
    sel: Option<&ferry_migrate::target::Selection>,
) -> anyhow::Result<()> {
    if let Some(p) = &a.out_xml {
        write(p, &plan.dest_xml, "destination XML")?;
    }
    if let (Some(p), Some(x)) = (&a.out_persistent_xml, &plan.persist_xml) {
        write(p, x, "destination persistent XML")?;
    }
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
            o.insert("canaries".into(), serde_json::to_value(&sel.canaries)?);
        }
        println!("{v}");
    } else {
        if let Some(sel) = sel {
            print!("{}", sel.ranking.render());
            for w in &sel.warnings {
                println!("warning: {w}");
            }
            println!();
        }
        print!("{}", plan.render(&files, source_uri, !a.no_diff));
        if a.out_xml.is_none() {
            println!(
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
