//! Target selection: which host can take the guest, which is best, and why not the others.
//!
//! A pure function of the guest's needs and each host's facts. Every hard constraint that
//! fails gives a [`Reason`] with a stable [`Code`] and the numbers; eligible hosts are ordered
//! by a soft score (higher is better):
//!
//! - **time**: minus the seconds the migration would take at a nominal 1 GiB/s (memory plus the
//!   bytes of copied disks) — fewer bytes to move wins;
//! - **headroom**: plus 100 × the share of the host's memory still free after placement;
//! - **CPU**: plus 10 when the host's CPU is identical to what the guest asks, not merely
//!   compatible;
//! - **load**: minus 15 for each migration already running to or from the host: the jobs
//!   libvirt shows there, or the runs of every Ferry instance sharing the journal (which also
//!   counts runs still preparing, before their job starts), whichever is more.
//!
//! Ties go to the inventory's order.

use serde::Serialize;

use crate::domain::Domain;
use crate::facts::{version_text, CpuCompat, HostReport};
use crate::inventory::HostState;
use crate::storage::StorageProblem;

/// Why a host cannot be the target. The codes are stable: scripts may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Unreachable,
    IsSource,
    Draining,
    Arch,
    DomainType,
    Machine,
    Cpu,
    Memory,
    SharedStore,
    LocalRoom,
    StorageUnknown,
    MapNotSameStorage,
    CopyOntoSource,
    Network,
    LibvirtVersion,
    QemuVersion,
    Passthrough,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unreachable => "unreachable",
            Code::IsSource => "is_source",
            Code::Draining => "draining",
            Code::Arch => "arch",
            Code::DomainType => "domain_type",
            Code::Machine => "machine",
            Code::Cpu => "cpu",
            Code::Memory => "memory",
            Code::SharedStore => "shared_store",
            Code::LocalRoom => "local_room",
            Code::StorageUnknown => "storage_unknown",
            Code::MapNotSameStorage => "map_not_same_storage",
            Code::CopyOntoSource => "copy_onto_source",
            Code::Network => "network",
            Code::LibvirtVersion => "libvirt_version",
            Code::QemuVersion => "qemu_version",
            Code::Passthrough => "passthrough",
        }
    }
}

/// One failed constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reason {
    pub code: Code,
    pub message: String,
}

impl From<&StorageProblem> for Reason {
    fn from(p: &StorageProblem) -> Self {
        Reason {
            code: p.code,
            message: p.message.clone(),
        }
    }
}

/// What the guest needs from a target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestNeeds {
    pub name: String,
    pub memory: u64,
    pub arch: Option<String>,
    pub machine: Option<String>,
    pub domain_type: Option<String>,
    /// Virtual networks its interfaces use.
    pub networks: Vec<String>,
    pub passthrough: Vec<String>,
}

impl GuestNeeds {
    pub fn of(dom: &Domain) -> Self {
        GuestNeeds {
            name: dom.name.clone(),
            memory: dom.memory_kib.unwrap_or(0) * 1024,
            arch: dom.arch.clone(),
            machine: dom.machine.clone(),
            domain_type: dom.domain_type.clone(),
            networks: dom
                .interfaces
                .iter()
                .filter(|i| i.iface_type == "network")
                .filter_map(|i| i.network.clone())
                .collect(),
            passthrough: dom.passthrough.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// A host that may take the guest, with everything gathered about it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub uri: &'a str,
    pub state: HostState,
    pub reserve_memory: u64,
    pub report: &'a HostReport,
    pub cpu: CpuCompat,
    /// The storage problems for this target, and the bytes of disks to copy there.
    pub storage: &'a [StorageProblem],
    pub copy_bytes: u64,
    /// Migrations to or from the host that the journal's live runs say are under way.
    pub journal_migrations: usize,
}

/// The verdict on one host.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verdict {
    pub name: String,
    pub uri: String,
    pub eligible: bool,
    /// Higher is better; only meaningful for eligible hosts.
    pub score: i64,
    /// What the host's hypervisor said of the guest's CPU.
    pub cpu: CpuCompat,
    pub reasons: Vec<Reason>,
}

/// Every host's verdict, the best eligible first, then the ineligible ones.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ranking {
    pub target: Option<String>,
    pub hosts: Vec<Verdict>,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Judge one host against the guest's needs. `source` is the host the guest runs on.
pub fn judge(guest: &GuestNeeds, source: &HostReport, c: &Candidate) -> Verdict {
    let mut reasons = vec![];
    let mut why = |code: Code, message: String| reasons.push(Reason { code, message });
    let verdict = |reasons: Vec<Reason>, score: i64| Verdict {
        name: c.name.to_string(),
        uri: c.uri.to_string(),
        eligible: reasons.is_empty(),
        score,
        cpu: c.cpu,
        reasons,
    };
    let Some(f) = &c.report.facts else {
        why(
            Code::Unreachable,
            format!(
                "{} cannot be reached: {}",
                c.uri,
                c.report.error.as_deref().unwrap_or("no answer")
            ),
        );
        return verdict(reasons, 0);
    };
    let src = source.facts.as_ref();
    if let Some(s) = src {
        let same_uuid = s.uuid.is_some() && s.uuid == f.uuid;
        if same_uuid || s.hostname == f.hostname {
            why(
                Code::IsSource,
                format!(
                    "it is the source host ({})",
                    if same_uuid {
                        format!("same host UUID {}", f.uuid.as_deref().unwrap_or(""))
                    } else {
                        format!("same hostname {}", f.hostname)
                    }
                ),
            );
            return verdict(reasons, 0);
        }
    }
    if c.state == HostState::Draining {
        why(
            Code::Draining,
            "it is draining (inventory state): no guest is moved there".into(),
        );
    }
    for p in &guest.passthrough {
        why(
            Code::Passthrough,
            format!("the guest has a passthrough device ({p}): it cannot move live"),
        );
    }
    let arch = guest.arch.as_deref().unwrap_or(&f.arch);
    let types: Vec<_> = f.guest_types.iter().filter(|t| t.arch == arch).collect();
    if types.is_empty() {
        why(
            Code::Arch,
            format!("it runs no {arch} guests (host arch {})", f.arch),
        );
    } else {
        let dt = guest.domain_type.as_deref().unwrap_or("kvm");
        match types.iter().find(|t| t.domain_type == dt) {
            None => why(
                Code::DomainType,
                format!(
                    "it offers no <domain type='{dt}'> for {arch} (it has: {})",
                    types
                        .iter()
                        .map(|t| t.domain_type.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(t) => {
                if let Some(m) = &guest.machine {
                    if !t.machines.iter().any(|x| x == m) {
                        why(
                            Code::Machine,
                            format!("its QEMU has no machine type {m} for {arch} ({dt})"),
                        );
                    }
                }
            }
        }
    }
    if c.cpu == CpuCompat::Incompatible {
        why(
            Code::Cpu,
            format!(
                "its hypervisor cannot provide the guest's CPU (host CPU {})",
                f.cpu_model.as_deref().unwrap_or("unknown")
            ),
        );
    }
    let incoming = c.report.incoming_memory();
    // Operator and host figures, summed without overflow: a sum past u64 needs more than any
    // host has.
    let need = guest
        .memory
        .saturating_add(c.reserve_memory)
        .saturating_add(incoming);
    if f.memory_free < need {
        why(
            Code::Memory,
            format!(
                "{} free, needs {} = the guest's {} + reserve {} + incoming migrations {}",
                hb(f.memory_free),
                hb(need),
                hb(guest.memory),
                hb(c.reserve_memory),
                hb(incoming)
            ),
        );
    }
    for n in &guest.networks {
        if !c.report.networks.contains(n) {
            why(
                Code::Network,
                format!("the guest's network {n} is not active there"),
            );
        }
    }
    if let Some(s) = src {
        if f.libvirt_version < s.libvirt_version {
            why(
                Code::LibvirtVersion,
                format!(
                    "libvirt {} is older than the source's {}",
                    version_text(f.libvirt_version),
                    version_text(s.libvirt_version)
                ),
            );
        }
        if f.qemu_version < s.qemu_version {
            why(
                Code::QemuVersion,
                format!(
                    "QEMU {} is older than the source's {}",
                    version_text(f.qemu_version),
                    version_text(s.qemu_version)
                ),
            );
        }
    }
    for p in c.storage {
        why(p.code, p.message.clone());
    }
    let secs = (guest.memory + c.copy_bytes) as f64 / GIB;
    let total = f.memory_total.max(1) as f64;
    let headroom = f.memory_free.saturating_sub(need) as f64 / total;
    let score = -secs
        + 100.0 * headroom
        + if c.cpu == CpuCompat::Identical {
            10.0
        } else {
            0.0
        }
        - 15.0 * c.report.migrations().count().max(c.journal_migrations) as f64;
    verdict(reasons, score.round() as i64)
}

/// Judge every candidate and pick the best eligible one.
pub fn rank(guest: &GuestNeeds, source: &HostReport, candidates: &[Candidate]) -> Ranking {
    let mut hosts: Vec<Verdict> = candidates.iter().map(|c| judge(guest, source, c)).collect();
    // Stable: ties keep the inventory's order.
    hosts.sort_by_key(|v| (!v.eligible, -v.score));
    Ranking {
        target: hosts.first().filter(|v| v.eligible).map(|v| v.name.clone()),
        hosts,
    }
}

fn hb(b: u64) -> String {
    crate::render::human_bytes(b)
}

impl Ranking {
    /// For a person: the chosen host, then every other host with its reasons.
    pub fn render(&self) -> String {
        let mut s = match &self.target {
            Some(t) => format!("target: {t}\n"),
            None => "target: none — no host can take the guest\n".to_string(),
        };
        for v in &self.hosts {
            if v.eligible {
                s.push_str(&format!(
                    "  {:<12} eligible, score {} (CPU {})\n",
                    v.name,
                    v.score,
                    v.cpu.as_str()
                ));
            } else {
                s.push_str(&format!("  {:<12} not eligible:\n", v.name));
                for r in &v.reasons {
                    s.push_str(&format!("      [{}] {}\n", r.code.as_str(), r.message));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{GuestFacts, GuestType, HostFacts};

    const GIB: u64 = 1 << 30;

    fn report(name: &str, free: u64) -> HostReport {
        HostReport {
            facts: Some(HostFacts {
                hostname: name.into(),
                uuid: Some(format!("uuid-{name}")),
                libvirt_version: 9_000_000,
                qemu_version: 7_002_000,
                arch: "x86_64".into(),
                cpu_model: Some("qemu64".into()),
                cpu_xml: None,
                memory_total: 16 * GIB,
                memory_free: free,
                guest_types: vec![GuestType {
                    arch: "x86_64".into(),
                    domain_type: "qemu".into(),
                    machines: vec!["pc".into(), "pc-i440fx-7.2".into()],
                }],
            }),
            networks: vec!["default".into()],
            ..Default::default()
        }
    }

    fn guest() -> GuestNeeds {
        GuestNeeds {
            name: "g".into(),
            memory: GIB,
            arch: Some("x86_64".into()),
            machine: Some("pc-i440fx-7.2".into()),
            domain_type: Some("qemu".into()),
            networks: vec!["default".into()],
            passthrough: vec![],
        }
    }

    fn cand<'a>(name: &'a str, r: &'a HostReport) -> Candidate<'a> {
        Candidate {
            name,
            uri: name,
            state: HostState::Active,
            reserve_memory: 0,
            report: r,
            cpu: CpuCompat::Identical,
            storage: &[],
            copy_bytes: 0,
            journal_migrations: 0,
        }
    }

    fn codes(v: &Verdict) -> Vec<Code> {
        v.reasons.iter().map(|r| r.code).collect()
    }

    #[test]
    fn every_hard_constraint_has_its_code() {
        let src = report("h1", 8 * GIB);
        let g = guest();
        let ok = report("h2", 8 * GIB);
        assert!(judge(&g, &src, &cand("h2", &ok)).eligible);

        let down = HostReport {
            error: Some("connection refused".into()),
            ..Default::default()
        };
        let v = judge(&g, &src, &cand("h9", &down));
        assert_eq!(codes(&v), vec![Code::Unreachable]);
        assert!(v.reasons[0].message.contains("connection refused"));

        assert_eq!(
            codes(&judge(&g, &src, &cand("h1", &src))),
            vec![Code::IsSource]
        );
        let mut same_uuid = report("other-name", 8 * GIB);
        same_uuid.facts.as_mut().unwrap().uuid = Some("uuid-h1".into());
        assert_eq!(
            codes(&judge(&g, &src, &cand("x", &same_uuid))),
            vec![Code::IsSource]
        );

        let mut c = cand("h2", &ok);
        c.state = HostState::Draining;
        assert_eq!(codes(&judge(&g, &src, &c)), vec![Code::Draining]);

        let mut c = cand("h2", &ok);
        c.cpu = CpuCompat::Incompatible;
        assert_eq!(codes(&judge(&g, &src, &c)), vec![Code::Cpu]);

        let mut g2 = guest();
        g2.arch = Some("aarch64".into());
        assert_eq!(codes(&judge(&g2, &src, &cand("h2", &ok))), vec![Code::Arch]);
        let mut g2 = guest();
        g2.domain_type = Some("kvm".into());
        assert_eq!(
            codes(&judge(&g2, &src, &cand("h2", &ok))),
            vec![Code::DomainType]
        );
        let mut g2 = guest();
        g2.machine = Some("pc-q35-9.0".into());
        assert_eq!(
            codes(&judge(&g2, &src, &cand("h2", &ok))),
            vec![Code::Machine]
        );
        let mut g2 = guest();
        g2.networks = vec!["prod".into()];
        assert_eq!(
            codes(&judge(&g2, &src, &cand("h2", &ok))),
            vec![Code::Network]
        );
        let mut g2 = guest();
        g2.passthrough = vec!["<hostdev> pci 0000:01:00.0".into()];
        assert_eq!(
            codes(&judge(&g2, &src, &cand("h2", &ok))),
            vec![Code::Passthrough]
        );

        let mut old = report("h2", 8 * GIB);
        old.facts.as_mut().unwrap().libvirt_version = 8_000_000;
        old.facts.as_mut().unwrap().qemu_version = 6_000_000;
        assert_eq!(
            codes(&judge(&g, &src, &cand("h2", &old))),
            vec![Code::LibvirtVersion, Code::QemuVersion]
        );

        let problems = [StorageProblem {
            code: Code::SharedStore,
            disk: "vda".into(),
            message: "disk vda: not seen".into(),
        }];
        let mut c = cand("h2", &ok);
        c.storage = &problems;
        assert_eq!(codes(&judge(&g, &src, &c)), vec![Code::SharedStore]);
    }

    #[test]
    fn memory_counts_the_reserve_and_incoming_migrations_with_the_numbers() {
        let src = report("h1", 8 * GIB);
        let mut r = report("h2", 3 * GIB);
        let mut c = cand("h2", &r);
        c.reserve_memory = 2 * GIB;
        assert!(judge(&guest(), &src, &c).eligible, "1 + 2 GiB fit in 3 GiB");
        c.reserve_memory = 2 * GIB + 1;
        let v = judge(&guest(), &src, &c);
        assert_eq!(codes(&v), vec![Code::Memory]);
        // A reserve that would overflow the sum is refused, not wrapped into a small need.
        let mut huge = c;
        huge.reserve_memory = u64::MAX;
        assert_eq!(codes(&judge(&guest(), &src, &huge)), vec![Code::Memory]);
        assert!(
            v.reasons[0].message.contains("3.0 GiB free"),
            "{}",
            v.reasons[0].message
        );
        // A guest migrating in (paused, with a job) will take its memory.
        r.guests.push(GuestFacts {
            name: "incoming".into(),
            active: false,
            memory: 512 << 20,
            job: true,
        });
        let mut c = cand("h2", &r);
        c.reserve_memory = 2 * GIB;
        let v = judge(&guest(), &src, &c);
        assert_eq!(codes(&v), vec![Code::Memory]);
        assert!(
            v.reasons[0]
                .message
                .contains("incoming migrations 512.0 MiB"),
            "{}",
            v.reasons[0].message
        );
    }

    #[test]
    fn the_best_eligible_host_wins_and_the_others_keep_their_reasons() {
        let src = report("h1", 8 * GIB);
        let (a, b, full) = (
            report("h2", 4 * GIB),
            report("h3", 12 * GIB),
            report("h4", GIB / 2),
        );
        let busy = {
            let mut r = report("h5", 12 * GIB);
            r.guests.push(GuestFacts {
                name: "x".into(),
                active: true,
                memory: GIB,
                job: true,
            });
            r
        };
        let cands = [
            cand("h2", &a),
            cand("h3", &b),
            cand("h4", &full),
            cand("h5", &busy),
        ];
        let r = rank(&guest(), &src, &cands);
        assert_eq!(
            r.target.as_deref(),
            Some("h3"),
            "more headroom, no migration running"
        );
        assert_eq!(r.hosts[1].name, "h5");
        assert_eq!(r.hosts.last().unwrap().name, "h4");
        assert!(!r.hosts.last().unwrap().eligible);
        let text = r.render();
        assert!(text.contains("[memory]"), "{text}");
        // Copying more bytes costs score.
        let mut far = cand("h3", &b);
        far.copy_bytes = 100 * GIB;
        let r = rank(&guest(), &src, &[cand("h2", &a), far]);
        assert_eq!(r.target.as_deref(), Some("h2"));
        // Nobody eligible: no target, every reason kept.
        let r = rank(&guest(), &src, &[cand("h4", &full)]);
        assert_eq!(r.target, None);
        assert_eq!(r.hosts[0].reasons[0].code, Code::Memory);
    }

    /// Other Ferry instances' migrations (from the journal) weigh like libvirt's jobs, and
    /// one migration both show is counted once.
    #[test]
    fn the_journals_migrations_weigh_on_the_rank_counted_once() {
        let src = report("h1", 8 * GIB);
        let (a, b) = (report("h2", 12 * GIB), report("h3", 12 * GIB));
        let score = |c: Candidate| rank(&guest(), &src, &[c]).hosts[0].score;
        let idle = score(cand("h2", &a));
        let mut two = cand("h2", &a);
        two.journal_migrations = 2;
        assert_eq!(score(two), idle - 30);
        // Otherwise equal: the host the fleet is not migrating to wins.
        let mut busy = cand("h2", &a);
        busy.journal_migrations = 1;
        let r = rank(&guest(), &src, &[busy, cand("h3", &b)]);
        assert_eq!(r.target.as_deref(), Some("h3"));
        // A job libvirt shows that is also a journal's run: one migration, not two.
        let mut with_job = report("h2", 12 * GIB);
        with_job.guests.push(GuestFacts {
            name: "x".into(),
            active: false,
            memory: 0,
            job: true,
        });
        let mut both = cand("h2", &with_job);
        both.journal_migrations = 1;
        assert_eq!(score(both), idle - 15);
    }
}
