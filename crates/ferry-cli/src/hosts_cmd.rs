//! `ferry hosts`: every inventory host, read concurrently.

use std::process::ExitCode;

use anyhow::Context;
use ferry_core::facts::version_text;
use ferry_core::render::human_bytes;
use ferry_migrate::target::{self, HostSpec};

use crate::args::HostsArgs;

/// Every inventory host, read concurrently (each bounded by `connect_timeout`).
pub(crate) fn gather(
    inv: &ferry_core::inventory::Inventory,
    hv: &std::sync::Arc<dyn ferry_hypervisor::Hypervisor>,
    connect_timeout: std::time::Duration,
) -> Vec<target::Gathered> {
    let specs: Vec<HostSpec> = inv.hosts.iter().map(HostSpec::from_entry).collect();
    target::gather(hv, &specs, connect_timeout)
}

/// The hosts as `ferry hosts --json` prints them (and `GET /v1/hosts` answers).
pub(crate) fn to_json(
    inv: &ferry_core::inventory::Inventory,
    all: &[target::Gathered],
    total_ms: u64,
) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = all
        .iter()
        .map(|g| {
            let mut v = serde_json::to_value(g).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("name".into(), g.spec.name.clone().into());
                o.insert("uri".into(), g.spec.uri.clone().into());
                o.insert("reachable".into(), g.report.reachable().into());
                o.insert(
                    "shared_stores_seen".into(),
                    inv.stores_seen(&g.spec.name, &g.report.pools).into(),
                );
                o.insert(
                    "migrations".into(),
                    g.report
                        .migrations()
                        .map(|m| m.name.clone())
                        .collect::<Vec<_>>()
                        .into(),
                );
            }
            v
        })
        .collect();
    serde_json::json!({"hosts": hosts, "total_ms": total_ms})
}

pub fn run(a: &HostsArgs) -> anyhow::Result<ExitCode> {
    let inv = a.inventory.load()?.context(
        "ferry hosts lists the inventory's hosts: give one with --inventory FILE (or \
         FERRY_INVENTORY, or /etc/ferry/inventory.toml); see examples/inventory.toml",
    )?;
    let hv: std::sync::Arc<dyn ferry_hypervisor::Hypervisor> =
        std::sync::Arc::new(ferry_hypervisor::libvirt::Libvirt::new());
    let t = std::time::Instant::now();
    let all = gather(&inv, &hv, std::time::Duration::from_secs(a.connect_timeout));
    let total_ms = t.elapsed().as_millis() as u64;
    let unreachable = all.iter().filter(|g| !g.report.reachable()).count();
    if a.json {
        outln!("{}", to_json(&inv, &all, total_ms));
    } else {
        for g in &all {
            let s = &g.spec;
            let Some(f) = &g.report.facts else {
                outln!(
                    "{}  {}  UNREACHABLE: {}",
                    s.name,
                    s.uri,
                    g.report.error.as_deref().unwrap_or("no answer")
                );
                continue;
            };
            outln!(
                "{}  {}  {}{}{}",
                s.name,
                s.uri,
                f.hostname,
                if s.state == ferry_core::inventory::HostState::Draining {
                    "  [draining]"
                } else {
                    ""
                },
                if s.labels.is_empty() {
                    String::new()
                } else {
                    format!("  labels: {}", s.labels.join(", "))
                }
            );
            outln!(
                "    uuid {}  libvirt {}  QEMU {}  {} {}",
                f.uuid.as_deref().unwrap_or("?"),
                version_text(f.libvirt_version),
                version_text(f.qemu_version),
                f.arch,
                f.cpu_model.as_deref().unwrap_or("")
            );
            let running: Vec<_> = g.report.guests.iter().filter(|x| x.active).collect();
            outln!(
                "    memory {} free of {} (reserve {}); {} running guest(s){}",
                human_bytes(f.memory_free),
                human_bytes(f.memory_total),
                human_bytes(s.reserve_memory),
                running.len(),
                if running.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        running
                            .iter()
                            .map(|x| format!("{} ({})", x.name, human_bytes(x.memory)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            for p in &g.report.pools {
                outln!(
                    "    pool {} ({}{}){}: {} free",
                    p.name,
                    p.kind.as_str(),
                    p.path
                        .as_deref()
                        .map(|x| format!(" {x}"))
                        .unwrap_or_default(),
                    if p.active { "" } else { " inactive" },
                    human_bytes(p.available)
                );
            }
            let seen = inv.stores_seen(&g.spec.name, &g.report.pools);
            if !seen.is_empty() {
                outln!("    shared stores seen: {}", seen.join(", "));
            }
            let migrations: Vec<_> = g.report.migrations().map(|m| m.name.as_str()).collect();
            if !migrations.is_empty() {
                outln!("    migrations running: {}", migrations.join(", "));
            }
            if !g.report.networks.is_empty() {
                outln!("    networks: {}", g.report.networks.join(", "));
            }
        }
        outln!(
            "{} host(s), {} unreachable; read in {} ms (concurrently)",
            all.len(),
            unreachable,
            total_ms
        );
    }
    Ok(if unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
