//! Facts: what the hosts say, as plain data.
//!
//! The hypervisor boundary gathers these (versions, CPU, memory, guests, pools, networks, canary
//! probes); the core's pure functions ([`crate::storage`], [`crate::placement`]) decide from
//! them. Nothing here does I/O.

use serde::Serialize;

/// The state of a domain on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    /// A post-copy migration of it failed: the target runs it but lacks pages the source
    /// still holds (paused there). Each side alone is incomplete; neither may be destroyed.
    PostcopyFailed,
    /// Blocked, shutting down, crashed, suspended to memory, or unknown.
    Other,
}

impl DomainState {
    /// Running or paused: a QEMU process exists for it.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::PostcopyFailed)
    }
}

/// What the target's hypervisor is asked about the guest's CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuQuery {
    /// A `<cpu>` element: the guest's, or for host-passthrough the source host's.
    pub cpu_xml: String,
    pub arch: Option<String>,
    pub machine: Option<String>,
    pub domain_type: Option<String>,
}

/// What a path is on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    File,
    Block,
    Dir,
    Other,
}

/// A path on a host, as libvirt's storage API sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathInfo {
    pub kind: PathKind,
    /// The virtual size (a qcow2's guest-visible size; a block device's size).
    pub capacity: u64,
    /// Bytes allocated on the storage.
    pub allocation: u64,
    /// The image format libvirt detected (`raw`, `qcow2`, ...).
    pub format: Option<String>,
}

/// A path probed on a host: what is there, and what its directory offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathProbe {
    pub info: Option<PathInfo>,
    pub parent_exists: bool,
    /// Free bytes where the parent directory lives.
    pub parent_free: Option<u64>,
    /// The kind of the host's storage pool whose directory the parent is (`None`: no pool of
    /// the host's own; Ferry reads such a directory through a transient one).
    pub parent_pool: Option<PoolKind>,
}

/// A disk's size as the running guest's QEMU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskSize {
    pub capacity: u64,
    pub allocation: u64,
    pub physical: u64,
}

impl DiskSize {
    /// Bytes a copy of the disk moves: a block device's whole size, a file's allocation.
    pub fn copy_bytes(&self, block: bool) -> u64 {
        if block {
            self.capacity
        } else {
            self.allocation
        }
    }
}

/// A libvirt or QEMU version number (major × 1,000,000 + minor × 1,000 + micro) as text.
pub fn version_text(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

/// What preflight needs to know about one migration, gathered from both hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationFacts {
    pub guest: String,
    pub source_uri: String,
    pub target_uri: String,
    /// The guest's state on the source, and on the target (`None`: not there).
    pub source_state: Option<DomainState>,
    pub target_state: Option<DomainState>,
    pub source_uuid: Option<String>,
    pub target_uuid: Option<String>,
    /// The guest's disk sizes on the source, by target dev.
    pub disk_sizes: std::collections::BTreeMap<String, DiskSize>,
    /// What each planned target path is on the target.
    pub probes: std::collections::BTreeMap<String, PathProbe>,
    /// Paths other domains on the target use (live or defined), with the domain's name.
    pub in_use: Vec<(String, String)>,
    /// Disks whose volume a hook makes only when the migration runs (a dry run): there is no
    /// path to ask the target about yet.
    pub hooked: std::collections::BTreeSet<String>,
    /// A cold move: the guest must be shut off (its definition and disks move, no QEMU runs).
    pub cold: bool,
}

/// What a host is and has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub hostname: String,
    /// The host UUID libvirt reports (libvirt refuses to migrate between equal ones).
    pub uuid: Option<String>,
    /// libvirt's version as major * 1_000_000 + minor * 1000 + micro.
    pub libvirt_version: u64,
    /// The hypervisor's (QEMU's) version, in the same encoding.
    pub qemu_version: u64,
    /// The host CPU's architecture (`x86_64`).
    pub arch: String,
    /// The host CPU model libvirt names (`Skylake-Client-IBRS`, ...).
    pub cpu_model: Option<String>,
    /// The capabilities' host `<cpu>` element (what a host-passthrough guest gets).
    #[serde(skip)]
    pub cpu_xml: Option<String>,
    pub memory_total: u64,
    pub memory_free: u64,
    /// Guest types the host runs: (arch, domain type, machine types with their aliases).
    pub guest_types: Vec<GuestType>,
}

/// One (arch, domain type) pair a host's capabilities offer, with its machine types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestType {
    pub arch: String,
    /// `qemu` (TCG) or `kvm`.
    pub domain_type: String,
    /// Machine types and their aliases (`pc`, `pc-i440fx-7.2`, `q35`, ...).
    pub machines: Vec<String>,
}

/// A guest on a host, as the host lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFacts {
    pub name: String,
    /// Running or paused: a QEMU process holds its memory.
    pub active: bool,
    /// Its memory in bytes.
    pub memory: u64,
    /// A job (a migration, in or out) runs for it.
    pub job: bool,
}

/// The kind of a storage pool (`<pool type>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Dir,
    Fs,
    Netfs,
    Logical,
    Disk,
    Iscsi,
    IscsiDirect,
    Rbd,
    Gluster,
    #[serde(untagged)]
    Other(String),
}

impl PoolKind {
    pub fn from_type(t: &str) -> Self {
        match t {
            "dir" => Self::Dir,
            "fs" => Self::Fs,
            "netfs" => Self::Netfs,
            "logical" => Self::Logical,
            "disk" => Self::Disk,
            "iscsi" => Self::Iscsi,
            "iscsi-direct" => Self::IscsiDirect,
            "rbd" => Self::Rbd,
            "gluster" => Self::Gluster,
            o => Self::Other(o.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Dir => "dir",
            Self::Fs => "fs",
            Self::Netfs => "netfs",
            Self::Logical => "logical",
            Self::Disk => "disk",
            Self::Iscsi => "iscsi",
            Self::IscsiDirect => "iscsi-direct",
            Self::Rbd => "rbd",
            Self::Gluster => "gluster",
            Self::Other(o) => o,
        }
    }
}

/// What a pool's definition says about the storage behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PoolSource {
    /// NFS (or another network filesystem): the server and the export.
    Netfs {
        host: String,
        dir: String,
    },
    /// An iSCSI target by its IQN (and portal host).
    Iscsi {
        host: String,
        iqn: String,
    },
    /// A Ceph pool on a cluster (its monitors).
    Rbd {
        pool: String,
        hosts: Vec<String>,
    },
    /// Storage only this host has: a volume group, a partitioned disk.
    Local {
        device: Option<String>,
    },
    /// A directory or a mounted filesystem: its XML says nothing about sharing (a canary
    /// decides).
    Directory,
    Unknown,
}

/// A storage pool on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolFacts {
    pub name: String,
    pub kind: PoolKind,
    /// `<target><path>`: the directory (or /dev/VG) its volumes live under.
    pub path: Option<String>,
    pub source: PoolSource,
    pub active: bool,
    pub capacity: u64,
    pub available: u64,
}

impl PoolFacts {
    /// Whether `path` lies under this pool's target path (whole components).
    pub fn holds(&self, path: &str) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| crate::rules::under(path, p).is_some())
    }

    /// Whether Ferry can create a volume of any size in this pool through libvirt's storage API.
    pub fn creates_volumes(&self) -> bool {
        matches!(
            self.kind,
            PoolKind::Dir | PoolKind::Fs | PoolKind::Netfs | PoolKind::Logical
        )
    }
}

/// Everything a host said, or why it said nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    pub facts: Option<HostFacts>,
    /// Why the host could not be read (connection refused, ...).
    pub error: Option<String>,
    pub guests: Vec<GuestFacts>,
    pub pools: Vec<PoolFacts>,
    /// Active virtual networks.
    pub networks: Vec<String>,
}

impl HostReport {
    pub fn reachable(&self) -> bool {
        self.facts.is_some()
    }

    /// Guests with a job running: migrations in or out.
    pub fn migrations(&self) -> impl Iterator<Item = &GuestFacts> {
        self.guests.iter().filter(|g| g.job)
    }

    /// The memory of incoming migrations: domains with a job that are not running yet hold
    /// memory they have not touched, which the host's free figure does not show.
    pub fn incoming_memory(&self) -> u64 {
        self.guests
            .iter()
            .filter(|g| g.job && !g.active)
            .map(|g| g.memory)
            .sum()
    }
}

/// How the target host's hypervisor judged the guest's CPU
/// (`virConnectCompareHypervisorCPU`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuCompat {
    Identical,
    Superset,
    Incompatible,
    /// The guest lets QEMU pick a CPU the target offers anyway (no `<cpu>`, or a model the
    /// target's QEMU emulates), or the comparison is not available.
    NotChecked,
}

impl CpuCompat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identical => "identical",
            Self::Superset => "compatible",
            Self::Incompatible => "incompatible",
            Self::NotChecked => "not checked",
        }
    }
}

/// A canary probe between two directories: a uniquely named empty volume created in `dst_dir`
/// on the target, then looked for in `src_dir` on the source after a refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canary {
    pub src_dir: String,
    pub dst_dir: String,
    pub name: String,
    /// The canary appeared on the source: the two directories are one storage.
    pub seen: bool,
}

/// What a host's capabilities XML (`virsh capabilities`) says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub uuid: Option<String>,
    pub arch: String,
    pub cpu_model: Option<String>,
    pub cpu_xml: Option<String>,
    pub guest_types: Vec<GuestType>,
}

/// Read a capabilities document. `None` when it is not one.
pub fn read_capabilities(doc: &str) -> Option<Capabilities> {
    let root = crate::xml::parse(doc).ok()?;
    let host = root.child("host")?;
    let cpu = host.child("cpu");
    let mut caps = Capabilities {
        uuid: host.child_text("uuid").map(str::to_string),
        arch: cpu
            .and_then(|c| c.child_text("arch"))
            .unwrap_or_default()
            .to_string(),
        cpu_model: cpu.and_then(|c| c.child_text("model")).map(str::to_string),
        cpu_xml: cpu.map(|c| doc[c.span.clone()].to_string()),
        guest_types: vec![],
    };
    for g in root.children_named("guest") {
        let Some(arch) = g.child("arch") else {
            continue;
        };
        let Some(name) = arch.attr("name") else {
            continue;
        };
        let machines = |e: &crate::xml::Element| -> Vec<String> {
            e.children_named("machine")
                .flat_map(|m| {
                    std::iter::once(m.text.trim().to_string())
                        .chain(m.attr("canonical").map(str::to_string))
                })
                .collect()
        };
        let common = machines(arch);
        for d in arch.children_named("domain") {
            let Some(t) = d.attr("type") else { continue };
            let mut ms = common.clone();
            ms.extend(machines(d));
            ms.sort();
            ms.dedup();
            caps.guest_types.push(GuestType {
                arch: name.to_string(),
                domain_type: t.to_string(),
                machines: ms,
            });
        }
    }
    Some(caps)
}

/// Read a storage pool's XML (`virsh pool-dumpxml`) into its name, kind, target path and
/// source. Capacity and state come from elsewhere (left 0 / inactive).
pub fn read_pool(doc: &str) -> Option<PoolFacts> {
    let root = crate::xml::parse(doc).ok()?;
    if root.name != "pool" {
        return None;
    }
    let kind = PoolKind::from_type(root.attr("type").unwrap_or(""));
    let src = root.child("source");
    let src_host = || {
        src.and_then(|s| s.child("host"))
            .and_then(|h| h.attr("name"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let source = match kind {
        PoolKind::Netfs => PoolSource::Netfs {
            host: src_host(),
            dir: src
                .and_then(|s| s.child("dir"))
                .and_then(|d| d.attr("path"))
                .unwrap_or_default()
                .to_string(),
        },
        PoolKind::Iscsi | PoolKind::IscsiDirect => PoolSource::Iscsi {
            host: src_host(),
            iqn: src
                .and_then(|s| s.child("device"))
                .and_then(|d| d.attr("path"))
                .unwrap_or_default()
                .to_string(),
        },
        PoolKind::Rbd => PoolSource::Rbd {
            pool: src
                .and_then(|s| s.child_text("name"))
                .unwrap_or_default()
                .to_string(),
            hosts: src
                .map(|s| {
                    s.children_named("host")
                        .filter_map(|h| h.attr("name"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        },
        PoolKind::Logical | PoolKind::Disk => PoolSource::Local {
            device: src
                .and_then(|s| s.child("device"))
                .and_then(|d| d.attr("path"))
                .map(str::to_string),
        },
        PoolKind::Dir | PoolKind::Fs => PoolSource::Directory,
        _ => PoolSource::Unknown,
    };
    Some(PoolFacts {
        name: root.child_text("name").unwrap_or_default().to_string(),
        kind,
        path: root
            .child("target")
            .and_then(|t| t.child_text("path"))
            .map(|p| p.trim().to_string()),
        source,
        active: false,
        capacity: 0,
        available: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_give_arch_cpu_and_machines_with_aliases() {
        let caps = "<capabilities><host><uuid>6c61622d-0001</uuid><cpu><arch>x86_64</arch>\
            <model>Skylake</model><vendor>Intel</vendor></cpu></host>\
            <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>\
            <machine maxCpus='255'>pc-i440fx-7.2</machine>\
            <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>\
            <domain type='qemu'/><domain type='kvm'><machine>pc-q35-7.2</machine></domain>\
            </arch></guest></capabilities>";
        let c = read_capabilities(caps).unwrap();
        assert_eq!(c.uuid.as_deref(), Some("6c61622d-0001"));
        assert_eq!(c.arch, "x86_64");
        assert_eq!(c.cpu_model.as_deref(), Some("Skylake"));
        assert!(c.cpu_xml.unwrap().starts_with("<cpu><arch>"));
        assert_eq!(c.guest_types.len(), 2);
        assert_eq!(c.guest_types[0].domain_type, "qemu");
        assert_eq!(c.guest_types[0].machines, vec!["pc", "pc-i440fx-7.2"]);
        assert!(c.guest_types[1]
            .machines
            .contains(&"pc-q35-7.2".to_string()));
        assert!(read_capabilities("<domain/>").is_none());
    }

    #[test]
    fn pools_say_what_storage_they_are() {
        let nfs = read_pool(
            "<pool type='netfs'><name>vm</name><source><host name='filer'/>\
             <dir path='/export/vm'/><format type='nfs'/></source>\
             <target><path>/mnt/nfs</path></target></pool>",
        )
        .unwrap();
        assert_eq!(nfs.kind, PoolKind::Netfs);
        assert_eq!(nfs.path.as_deref(), Some("/mnt/nfs"));
        assert_eq!(
            nfs.source,
            PoolSource::Netfs {
                host: "filer".into(),
                dir: "/export/vm".into()
            }
        );
        let iscsi = read_pool(
            "<pool type='iscsi'><name>san</name><source><host name='10.0.0.9'/>\
             <device path='iqn.2013-06.com.example:lun1'/></source>\
             <target><path>/dev/disk/by-path</path></target></pool>",
        )
        .unwrap();
        assert!(
            matches!(iscsi.source, PoolSource::Iscsi { ref iqn, .. } if iqn == "iqn.2013-06.com.example:lun1")
        );
        let rbd = read_pool(
            "<pool type='rbd'><name>ceph</name><source><name>rbd</name>\
             <host name='mon1' port='6789'/><host name='mon2'/></source></pool>",
        )
        .unwrap();
        assert_eq!(
            rbd.source,
            PoolSource::Rbd {
                pool: "rbd".into(),
                hosts: vec!["mon1".into(), "mon2".into()]
            }
        );
        let lvm = read_pool(
            "<pool type='logical'><name>vg0</name><source><device path='/dev/nvme0n1p3'/>\
             </source><target><path>/dev/vg0</path></target></pool>",
        )
        .unwrap();
        assert!(matches!(lvm.source, PoolSource::Local { .. }));
        let dir =
            read_pool("<pool type='dir'><name>d</name><target><path>/srv/x</path></target></pool>")
                .unwrap();
        assert_eq!(dir.source, PoolSource::Directory);
        assert!(dir.holds("/srv/x/a.img") && !dir.holds("/srv/xy/a.img"));
    }
}
