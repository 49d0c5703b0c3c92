//! Identify the target: gather every host's facts (concurrently), probe storage identity with
//! canaries, then let the core decide — the rules for each disk ([`ferry_core::storage`]) and
//! the ranking of hosts ([`ferry_core::placement`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::domain::{self, Domain};
use ferry_core::facts::{Canary, CpuCompat, HostReport};
use ferry_core::inventory::{HostEntry, HostState, Inventory, Store};
use ferry_core::placement::{self, Candidate, GuestNeeds, Ranking};
use ferry_core::storage::{self, Derived, DiskBytes, StorageFacts};
use ferry_core::{MigrationOptions, PlanError, Rules};
use ferry_hypervisor::{CpuQuery, HostId, HvError, Hypervisor};
use serde::Serialize;

use crate::MigrateError;

/// A host as the operator named it: from the inventory, or a bare URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HostSpec {
    pub name: String,
    pub uri: String,
    pub state: HostState,
    pub reserve_memory: u64,
    pub migration_address: Option<String>,
    pub labels: Vec<String>,
    /// The inventory's local stores of this host (pools, hooks), in order.
    #[serde(skip)]
    pub local_stores: Vec<Store>,
    /// Migrations to or from this host that Ferry instances sharing the journal are running
    /// (live leases), as the journal says: they weigh on its rank like the jobs libvirt shows.
    #[serde(skip)]
    pub journal_migrations: usize,
}

impl HostSpec {
    /// A host known only by its URI.
    pub fn uri(uri: &str) -> Self {
        HostSpec {
            name: uri.to_string(),
            uri: uri.to_string(),
            state: HostState::Active,
            reserve_memory: 0,
            migration_address: None,
            labels: vec![],
            local_stores: vec![],
            journal_migrations: 0,
        }
    }

    pub fn from_entry(e: &HostEntry) -> Self {
        HostSpec {
            name: e.name.clone(),
            uri: e.uri.clone(),
            state: e.state,
            reserve_memory: e.reserve_memory.0,
            migration_address: e.migration_address.clone(),
            labels: e.labels.clone(),
            local_stores: e.local_stores.iter().map(|s| s.store()).collect(),
            journal_migrations: 0,
        }
    }

    /// The migration options for streams to this host: its inventory migration address
    /// (`tcp://ADDR`) for the memory and disk streams the operator did not direct.
    pub fn stream_options(&self, mut o: MigrationOptions) -> MigrationOptions {
        if let Some(addr) = &self.migration_address {
            let uri = format!("tcp://{addr}");
            o.migrate_uri.get_or_insert_with(|| uri.clone());
            o.disks_uri.get_or_insert(uri);
        }
        o
    }

    /// The inventory's host named (or with the URI) `name_or_uri`, or a bare URI.
    pub fn resolve(inv: Option<&Inventory>, name_or_uri: &str) -> Self {
        inv.and_then(|i| i.resolve(name_or_uri))
            .map(Self::from_entry)
            .unwrap_or_else(|| Self::uri(name_or_uri))
    }
}

/// A host, connected or not, and what it said.
#[derive(Debug, Clone, Serialize)]
pub struct Gathered {
    pub spec: HostSpec,
    #[serde(skip)]
    pub id: Option<HostId>,
    pub report: HostReport,
    /// Why the host could not be read, as the boundary said it (`report.error` is its text).
    #[serde(skip)]
    pub failure: Option<HvError>,
    /// How long this host took to answer.
    pub took_ms: u64,
}

impl Gathered {
    /// The host's failure as an error to return (a host with no id was not read).
    pub fn unread(&self) -> HvError {
        self.failure.clone().unwrap_or_else(|| HvError::Connect {
            uri: self.spec.uri.clone(),
            message: self.report.error.clone().unwrap_or_default(),
        })
    }
}

/// How long a host may take to be connected and read before it counts as not answering.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Connect to every host at once and read its facts: the whole takes about as long as the
/// slowest host, not the sum. A host that cannot be read is reported with its error, not
/// dropped; one that has not answered within `deadline` (it accepts TCP and never speaks, say)
/// is reported as not answering, and its thread is left behind: libvirt's call cannot be
/// interrupted.
pub fn gather(hv: &Arc<dyn Hypervisor>, specs: &[HostSpec], deadline: Duration) -> Vec<Gathered> {
    use ferry_hypervisor::wait::{self, NoAnswer};
    // Every host's read starts at once; each is then waited for until the same deadline.
    let pending: Vec<_> = specs
        .iter()
        .map(|spec| {
            let (hv, spec) = (hv.clone(), spec.clone());
            wait::spawn(&format!("facts {}", spec.name), move || {
                gather_one(hv.as_ref(), &spec)
            })
        })
        .collect();
    let end = wait::deadline_in(deadline);
    pending
        .iter()
        .zip(specs)
        .map(|(p, spec)| match p.wait(end) {
            Ok(g) => g,
            Err(NoAnswer::Late) => unanswered(
                spec,
                format!(
                    "no answer within {} s (it may accept connections and never answer)",
                    deadline.as_secs()
                ),
            ),
            Err(NoAnswer::Failed(why)) => unanswered(spec, format!("its read failed: {why}")),
            Err(NoAnswer::Stopped(never)) => match never {},
        })
        .collect()
}

fn unanswered(spec: &HostSpec, why: String) -> Gathered {
    let e = HvError::Connect {
        uri: spec.uri.clone(),
        message: why,
    };
    Gathered {
        spec: spec.clone(),
        id: None,
        report: HostReport {
            error: Some(e.to_string()),
            ..Default::default()
        },
        failure: Some(e),
        took_ms: 0,
    }
}

fn gather_one(hv: &dyn Hypervisor, spec: &HostSpec) -> Gathered {
    let t = Instant::now();
    let read = || -> Result<(HostId, HostReport), HvError> {
        let id = hv.connect(&spec.uri)?;
        Ok((
            id,
            HostReport {
                facts: Some(hv.host_facts(id)?),
                error: None,
                guests: hv.guests(id)?,
                pools: hv.pools(id)?,
                networks: hv.networks(id)?,
            },
        ))
    };
    let (id, report, failure) = match read() {
        Ok((id, r)) => (Some(id), r, None),
        Err(e) => (
            None,
            HostReport {
                error: Some(e.to_string()),
                ..Default::default()
            },
            Some(e),
        ),
    };
    Gathered {
        spec: spec.clone(),
        id,
        report,
        failure,
        took_ms: t.elapsed().as_millis() as u64,
    }
}

/// What to choose a target for.
#[derive(Debug, Clone)]
pub struct SelectRequest {
    pub guest: String,
    pub source: HostSpec,
    /// Every host that may be the target (with an explicit `--to`, just that one).
    pub candidates: Vec<HostSpec>,
    /// The operator's rules: they override whatever identity says.
    pub rules: Rules,
    pub inventory: Option<Arc<Inventory>>,
    /// How long each host may take to be read ([`ANSWER_DEADLINE`] by default).
    pub answer_deadline: Duration,
    /// The operator named the target (`--to`): its constraints are checked, nothing ranked.
    pub explicit: bool,
}

/// Why no selection can be asked for.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "no target: give --to (a libvirt URI or a host name), or an inventory of hosts for Ferry \
         to choose from (--inventory FILE, FERRY_INVENTORY or {}; see examples/inventory.toml)",
        ferry_core::inventory::DEFAULT_PATH
    )]
    NoTarget,
    #[error("the inventory lists no host other than the source {0}")]
    OnlySource(String),
}

impl SelectRequest {
    /// The selection for `guest` on `from`: the `to` host alone (checked against the same
    /// constraints), or every other inventory host.
    pub fn new(
        inventory: Option<Arc<Inventory>>,
        guest: &str,
        from: &str,
        to: Option<&str>,
        rules: Rules,
        answer_deadline: Duration,
    ) -> Result<Self, RequestError> {
        let inv = inventory.as_deref();
        let source = HostSpec::resolve(inv, from);
        let candidates = match (to, inv) {
            (Some(t), _) => vec![HostSpec::resolve(inv, t)],
            (None, Some(inv)) => inv
                .hosts
                .iter()
                .filter(|h| h.name != source.name && h.uri != source.uri)
                .map(HostSpec::from_entry)
                .collect(),
            (None, None) => return Err(RequestError::NoTarget),
        };
        if candidates.is_empty() {
            return Err(RequestError::OnlySource(source.name));
        }
        Ok(SelectRequest {
            guest: guest.to_string(),
            source,
            candidates,
            rules,
            inventory,
            answer_deadline,
            explicit: to.is_some(),
        })
    }
}

/// The outcome: every host's verdict, and for the chosen one the rules to migrate with.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub ranking: Ranking,
    /// The chosen host and the rules (operator's + derived) for it.
    #[serde(skip)]
    pub chosen: Option<(HostSpec, Derived)>,
    /// Canaries created and looked for (all deleted again).
    pub canaries: Vec<Canary>,
    /// Milliseconds gathering every host's facts took, and the slowest single host.
    pub gather_ms: u64,
    pub slowest_host_ms: u64,
    pub warnings: Vec<String>,
    /// The guest's live and persistent migratable XML, as read from the source.
    #[serde(skip)]
    pub live_xml: String,
    #[serde(skip)]
    pub inactive_xml: Option<String>,
}

/// Gather, probe, decide.
pub fn select(
    hv_arc: &Arc<dyn Hypervisor>,
    req: &SelectRequest,
) -> Result<Selection, MigrateError> {
    let t = Instant::now();
    let mut specs = vec![req.source.clone()];
    specs.extend(req.candidates.iter().cloned());
    let all = gather(hv_arc, &specs, req.answer_deadline);
    let gather_ms = t.elapsed().as_millis() as u64;
    select_among(hv_arc.as_ref(), req, &all, gather_ms)
}

/// Probe and decide with facts already gathered: `all` is the source's, then each of
/// `req.candidates`' (as [`gather`] returns them for that list), read in `gather_ms`. An
/// evacuation gathers once for all its guests.
pub fn select_among(
    hv: &dyn Hypervisor,
    req: &SelectRequest,
    all: &[Gathered],
    gather_ms: u64,
) -> Result<Selection, MigrateError> {
    let slowest_host_ms = all.iter().map(|g| g.took_ms).max().unwrap_or(0);
    let Some((src, cands)) = all.split_first() else {
        return Err(MigrateError::Host(HvError::Connect {
            uri: req.source.uri.clone(),
            message: "no host was read".into(),
        }));
    };
    let Some(src_id) = src.id else {
        return Err(MigrateError::Host(src.unread()));
    };
    if hv.domain_state(src_id, &req.guest)?.is_none() {
        return Err(MigrateError::Host(HvError::NoDomain {
            host: src.spec.uri.clone(),
            name: req.guest.clone(),
        }));
    }
    let live = hv.domain_xml(src_id, &req.guest, false)?;
    let dom = domain::parse(&live).map_err(|source| MigrateError::Plan {
        guest: req.guest.clone(),
        source: Box::new(PlanError::Domain {
            which: "live",
            source,
        }),
    })?;
    if let Some(p) = dom.passthrough.first() {
        return Err(MigrateError::Plan {
            guest: req.guest.clone(),
            source: Box::new(PlanError::Passthrough {
                device: p.to_string(),
            }),
        });
    }
    if let Some(c) = req
        .rules
        .copy
        .iter()
        .find(|c| !dom.disks.iter().any(|d| d.target == c.disk))
    {
        return Err(MigrateError::Plan {
            guest: req.guest.clone(),
            source: Box::new(PlanError::CopyUnknownDisk {
                disk: c.disk.clone(),
                known: dom
                    .disks
                    .iter()
                    .map(|d| d.target.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        });
    }
    let disk_bytes = disk_bytes(hv, src_id, &req.guest, &dom);

    // Canaries on every reachable candidate; which source pools some host shares.
    let mut canaries: BTreeMap<usize, Vec<Canary>> = BTreeMap::new();
    let mut warnings = vec![];
    for (i, c) in cands.iter().enumerate() {
        let Some(dst_id) = c.id else { continue };
        let mut rules = req.rules.clone();
        if let Some(inv) = req.inventory.as_deref() {
            rules
                .map
                .extend(inv.store_maps(&src.spec.name, &c.spec.name));
        }
        let pairs = storage::canary_pairs(&dom, &rules, &src.report.pools, &c.report.pools);
        canaries.insert(i, probe(hv, src_id, dst_id, &pairs, &mut warnings));
    }
    let shared_elsewhere: BTreeSet<String> = src
        .report
        .pools
        .iter()
        .filter(|p| {
            canaries
                .values()
                .flatten()
                .any(|k| k.seen && Some(&k.src_dir) == p.path.as_ref())
        })
        .map(|p| p.name.clone())
        .collect();

    let guest = GuestNeeds::of(&dom);
    let cpu_query = cpu_query(
        &dom,
        src.report.facts.as_ref().and_then(|f| f.cpu_xml.clone()),
    );
    let mut derived: Vec<Derived> = vec![];
    let mut cpus = vec![];
    for (i, c) in cands.iter().enumerate() {
        let probes = canaries.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        let inv_maps = req
            .inventory
            .as_deref()
            .map(|inv| inv.store_maps(&src.spec.name, &c.spec.name))
            .unwrap_or_default();
        let mut d = storage::derive(
            &dom,
            &req.rules,
            &inv_maps,
            &StorageFacts {
                source_name: &src.spec.name,
                target_name: &c.spec.name,
                source_pools: &src.report.pools,
                target_pools: &c.report.pools,
                canaries: probes,
                shared_elsewhere: &shared_elsewhere,
                local_stores: &c.spec.local_stores,
            },
            &disk_bytes,
        );
        d.problems
            .extend(storage::check_rules(&dom, &d.rules, probes));
        derived.push(d);
        cpus.push(match (c.id, &cpu_query) {
            (Some(id), Some(q)) => hv.compare_cpu(id, q).unwrap_or(CpuCompat::NotChecked),
            _ => CpuCompat::NotChecked,
        });
    }
    let candidates: Vec<Candidate> = cands
        .iter()
        .zip(&derived)
        .zip(&cpus)
        .map(|((c, d), cpu)| Candidate {
            name: &c.spec.name,
            uri: &c.spec.uri,
            state: c.spec.state,
            reserve_memory: c.spec.reserve_memory,
            report: &c.report,
            cpu: *cpu,
            storage: &d.problems,
            copy_bytes: d.copy_bytes,
            journal_migrations: c.spec.journal_migrations,
        })
        .collect();
    let ranking = placement::rank(&guest, &src.report, &candidates);
    let chosen = ranking.target.as_ref().and_then(|t| {
        cands
            .iter()
            .position(|c| &c.spec.name == t)
            .map(|i| (cands[i].spec.clone(), derived[i].clone()))
    });
    Ok(Selection {
        ranking,
        chosen,
        canaries: canaries.into_values().flatten().collect(),
        gather_ms,
        slowest_host_ms,
        warnings,
        inactive_xml: hv.domain_xml(src_id, &req.guest, true).ok(),
        live_xml: live,
    })
}

/// Bytes a copy of each disk needs: a block device's whole size, a file's allocation.
fn disk_bytes(hv: &dyn Hypervisor, src: HostId, guest: &str, dom: &Domain) -> DiskBytes {
    dom.disks
        .iter()
        .filter(|d| d.path().is_some())
        .filter_map(|d| {
            let s = hv.disk_size(src, guest, &d.target).ok()?;
            let bytes = s.copy_bytes(d.disk_type == ferry_core::DiskType::Block);
            // An empty file still needs a place: count it as one byte.
            Some((d.target.clone(), bytes.max(s.capacity.min(1))))
        })
        .collect()
}

/// The CPU the target must provide: the guest's `<cpu>`, or for host-passthrough and
/// host-model guests the source host's CPU.
fn cpu_query(dom: &Domain, source_cpu: Option<String>) -> Option<CpuQuery> {
    let xml = match dom.cpu_mode.as_deref() {
        Some("host-passthrough") | Some("host-model") | Some("maximum") => source_cpu?,
        _ => dom.cpu_xml.clone()?,
    };
    Some(CpuQuery {
        cpu_xml: xml,
        arch: dom.arch.clone(),
        machine: dom.machine.clone(),
        domain_type: dom.domain_type.clone(),
    })
}

/// Run the canaries: one per target directory, looked for in each source directory paired
/// with it, then deleted — whatever happened in between.
fn probe(
    hv: &dyn Hypervisor,
    src: HostId,
    dst: HostId,
    pairs: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Vec<Canary> {
    let mut out = vec![];
    let dst_dirs: BTreeSet<&str> = pairs.iter().map(|(_, d)| d.as_str()).collect();
    for dd in dst_dirs {
        let Ok(Some(name)) = hv.canary_create(dst, dd) else {
            continue;
        };
        for (sd, _) in pairs.iter().filter(|(_, d)| d == dd) {
            if let Ok(seen) = hv.canary_seen(src, sd, &name) {
                out.push(Canary {
                    src_dir: sd.clone(),
                    dst_dir: dd.to_string(),
                    name: name.clone(),
                    seen,
                });
            }
        }
        // A canary left behind is an empty file: worth a warning, not a failure.
        if let Err(e) = hv.canary_delete(dst, dd, &name) {
            warnings.push(format!("could not delete canary {dd}/{name}: {e}"));
        }
    }
    out
}
