//! `ferry plan`: the offline plan from domain XML files.

use std::path::Path;

use anyhow::Context;
use ferry_core::XmlFiles;

use crate::args::PlanArgs;

fn read(p: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} {}", p.display()))
}

fn write(p: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    std::fs::write(p, text).with_context(|| format!("cannot write the {what} to {}", p.display()))
}

pub fn run(a: &PlanArgs) -> anyhow::Result<()> {
    let live = read(&a.domain_xml, "live domain XML")?;
    let inactive = a
        .inactive_xml
        .as_deref()
        .map(|p| read(p, "inactive domain XML"))
        .transpose()?;
    let rules = a.storage.rules()?;
    let plan = ferry_core::plan(
        &live,
        inactive.as_deref(),
        &a.to,
        &rules,
        &a.migration.options(),
    )?;
    if let Some(p) = &a.out_xml {
        write(p, &plan.dest_xml, "destination XML")?;
    }
    if let (Some(p), Some(x)) = (&a.out_persistent_xml, &plan.persist_xml) {
        write(p, x, "destination persistent XML")?;
    }
    let files = XmlFiles::for_plan(
        &plan,
        a.out_xml.as_ref().map(|p| p.display().to_string()),
        a.out_persistent_xml
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    if a.json {
        println!("{}", plan.to_json(&files, None));
    } else {
        print!("{}", plan.render(&files, None, !a.no_diff));
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
