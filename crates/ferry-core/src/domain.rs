//! Inventory: what a libvirt domain XML says about a guest.
//!
//! Reads the documents libvirt gives with `dumpxml --migratable` (live) and
//! `dumpxml --inactive --migratable` (persistent). Only what Ferry decides on is modelled;
//! everything else stays in the text and is carried along untouched by the rewrite.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::xml::{self, Element, XmlError};

/// Why a document is not a domain Ferry can read.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the domain XML cannot be read")]
    Xml(#[source] XmlError),
    #[error("the document's root element is <{0}>, not <domain>: is this a libvirt domain XML (virsh dumpxml)?")]
    NotADomain(String),
}

/// A guest as its domain XML describes it.
#[derive(Debug, Clone, Serialize)]
pub struct Domain {
    pub name: String,
    pub uuid: Option<String>,
    /// `qemu` (TCG), `kvm`, ...
    pub domain_type: Option<String>,
    pub memory_kib: Option<u64>,
    pub vcpus: Option<u32>,
    pub cpu_mode: Option<String>,
    pub cpu_model: Option<String>,
    /// The `<cpu>` element as written, for the target's CPU comparison.
    pub cpu_xml: Option<String>,
    /// `<os><type arch>` and `<os><type machine>`.
    pub arch: Option<String>,
    pub machine: Option<String>,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    /// Devices that tie the guest to this host's hardware.
    pub passthrough: Vec<Passthrough>,
}

impl std::fmt::Display for DiskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `type` attribute of `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    File,
    Block,
    Dir,
    Network,
    Volume,
    Nvme,
    #[serde(untagged)]
    Other(String),
}

impl DiskType {
    fn from_attr(s: Option<&str>) -> Self {
        match s.unwrap_or("file") {
            "file" => Self::File,
            "block" => Self::Block,
            "dir" => Self::Dir,
            "network" => Self::Network,
            "volume" => Self::Volume,
            "nvme" => Self::Nvme,
            o => Self::Other(o.to_string()),
        }
    }

    /// The name libvirt uses.
    pub fn as_str(&self) -> &str {
        match self {
            Self::File => "file",
            Self::Block => "block",
            Self::Dir => "dir",
            Self::Network => "network",
            Self::Volume => "volume",
            Self::Nvme => "nvme",
            Self::Other(s) => s,
        }
    }

    /// The `<source>` attribute that holds the path for path-backed types.
    pub fn path_attr(&self) -> Option<&'static str> {
        match self {
            Self::File => Some("file"),
            Self::Block => Some("dev"),
            Self::Dir => Some("dir"),
            _ => None,
        }
    }
}

/// What backs a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DiskSource {
    /// A file, block device or directory path.
    Path { path: String },
    Volume {
        pool: String,
        volume: String,
        mode: Option<String>,
    },
    Network {
        protocol: String,
        name: Option<String>,
        hosts: Vec<String>,
    },
    Nvme {
        namespace: Option<String>,
        pci_address: Option<String>,
    },
}

impl std::fmt::Display for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path { path } => f.write_str(path),
            Self::Volume { pool, volume, .. } => write!(f, "volume {volume} in pool {pool}"),
            Self::Network {
                protocol,
                name,
                hosts,
            } => {
                write!(f, "{protocol}://")?;
                if let Some(h) = hosts.first() {
                    f.write_str(h)?;
                }
                write!(f, "/{}", name.as_deref().unwrap_or(""))
            }
            Self::Nvme {
                namespace,
                pci_address,
            } => write!(
                f,
                "NVMe {} namespace {}",
                pci_address.as_deref().unwrap_or("?"),
                namespace.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// One `<disk>` element.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub disk_type: DiskType,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    pub driver_name: Option<String>,
    /// The image format (`raw`, `qcow2`, ...).
    pub format: Option<String>,
    pub cache: Option<String>,
    pub io: Option<String>,
    pub source: Option<DiskSource>,
    /// `<slices><slice type='storage' offset size/>`: (offset, size) in bytes.
    pub storage_slice: Option<(u64, u64)>,
    /// Sources of the `<backingStore>` chain, top first.
    pub backing_chain: Vec<DiskSource>,
    /// `<target dev>`: the name virsh's `--migrate-disks` uses.
    pub target: String,
    pub bus: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
    pub transient: bool,
    pub serial: Option<String>,
    pub auth_secret_uuid: Option<String>,
    pub encryption_secret_uuid: Option<String>,
    #[serde(skip)]
    pub pos: DiskPos,
}

/// Where a disk's parts stand in the document, for the rewrite.
#[derive(Debug, Clone, Default)]
pub struct DiskPos {
    /// The whole `<disk>` element.
    pub element: Range<usize>,
    /// `<disk type=…>` (None when the attribute is absent: the type defaults to file).
    pub type_attr: Option<xml::Attr>,
    /// The end of `<disk`, where a missing `type` attribute can be inserted.
    pub disk_name_end: usize,
    /// The whole `<source>` element.
    pub source: Option<Range<usize>>,
    /// The start tag of `<source>` (the whole element when it is empty: `<source …/>`).
    pub source_start_tag: Option<Range<usize>>,
    /// The attributes of `<source>`.
    pub source_attrs: Vec<xml::Attr>,
    /// The `<source>` of each `<backingStore>` in the chain, top first.
    pub backing: Vec<BackingPos>,
    /// The quote character the document uses around attribute values here.
    pub quote: char,
}

/// Where a backing image's `<source>` stands.
#[derive(Debug, Clone)]
pub struct BackingPos {
    pub disk_type: DiskType,
    /// The whole `<source>` element.
    pub source: Range<usize>,
    pub source_attrs: Vec<xml::Attr>,
}

impl Disk {
    /// A cdrom or floppy (or any disk) with no media: nothing to move, nothing to rewrite.
    pub fn has_media(&self) -> bool {
        self.source.is_some()
    }

    /// The disk's source path, for path-backed disks.
    pub fn path(&self) -> Option<&str> {
        match &self.source {
            Some(DiskSource::Path { path }) => Some(path),
            _ => None,
        }
    }
}

/// One `<interface>`.
#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub iface_type: String,
    pub network: Option<String>,
    pub bridge: Option<String>,
    pub mac: Option<String>,
    pub model: Option<String>,
}

/// A device that passes host hardware through to the guest.
#[derive(Debug, Clone, Serialize)]
pub struct Passthrough {
    /// The element, e.g. `hostdev` or `interface type='hostdev'`.
    pub element: String,
    /// PCI, USB, mdev, scsi ...
    pub kind: String,
    /// A short description: the host address or device.
    pub what: String,
}

impl std::fmt::Display for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}> {} {}", self.element, self.kind, self.what)
    }
}

/// Read a domain XML document.
pub fn parse(doc: &str) -> Result<Domain, DomainError> {
    let root = xml::parse(doc).map_err(DomainError::Xml)?;
    if root.name != "domain" {
        return Err(DomainError::NotADomain(root.name));
    }
    // libvirt always writes <name>; a fragment without one is still read (name left empty).
    let name = root.child_text("name").unwrap_or("").to_string();
    let memory_kib = root.child("memory").and_then(|m| {
        let v: u64 = m.text.trim().parse().ok()?;
        Some(match m.attr("unit").unwrap_or("KiB") {
            "b" | "bytes" => v / 1024,
            "KB" => v * 1000 / 1024,
            "k" | "KiB" => v,
            "MB" => v * 1_000_000 / 1024,
            "M" | "MiB" => v * 1024,
            "GB" => v * 1_000_000_000 / 1024,
            "G" | "GiB" => v * 1024 * 1024,
            _ => v,
        })
    });
    let cpu = root.child("cpu");
    let os_type = root.child("os").and_then(|o| o.child("type"));
    let mut domain = Domain {
        name,
        uuid: root.child_text("uuid").map(str::to_string),
        domain_type: root.attr("type").map(str::to_string),
        memory_kib,
        vcpus: root.child_text("vcpu").and_then(|v| v.parse().ok()),
        cpu_mode: cpu.and_then(|c| c.attr("mode")).map(str::to_string),
        cpu_model: cpu.and_then(|c| c.child_text("model")).map(str::to_string),
        cpu_xml: cpu.map(|c| doc[c.span.clone()].to_string()),
        arch: os_type.and_then(|t| t.attr("arch")).map(str::to_string),
        machine: os_type.and_then(|t| t.attr("machine")).map(str::to_string),
        disks: Vec::new(),
        interfaces: Vec::new(),
        passthrough: Vec::new(),
    };
    // The document's quote style, guessed (once) for disks with no attribute to copy it from.
    let doc_quote = std::cell::OnceCell::new();
    // libvirt reads every <devices> block.
    for devices in root.children_named("devices") {
        for dev in &devices.children {
            match dev.name.as_str() {
                "disk" => domain.disks.push(read_disk(doc, dev, &doc_quote)),
                "interface" => {
                    let iface = read_interface(dev);
                    if iface.iface_type == "hostdev" || iface.iface_type == "vdpa" {
                        let what = describe_hostdev_source(dev);
                        domain.passthrough.push(Passthrough {
                            element: format!("interface type='{}'", iface.iface_type),
                            kind: "network function".into(),
                            what,
                        });
                    }
                    domain.interfaces.push(iface);
                }
                "hostdev" => domain.passthrough.push(Passthrough {
                    element: "hostdev".into(),
                    kind: dev
                        .attr("type")
                        .map(|t| match t {
                            "pci" => "PCI".to_string(),
                            "usb" => "USB".to_string(),
                            "mdev" => "mediated device (mdev)".to_string(),
                            "scsi" => "SCSI".to_string(),
                            o => o.to_string(),
                        })
                        .unwrap_or_else(|| "device".into()),
                    what: describe_hostdev_source(dev),
                }),
                _ => {}
            }
        }
    }
    Ok(domain)
}

fn describe_hostdev_source(dev: &Element) -> String {
    let Some(src) = dev.child("source") else {
        return String::new();
    };
    if let Some(addr) = src.child("address") {
        return render_address(addr);
    }
    let vendor = src.child("vendor").and_then(|v| v.attr("id"));
    let product = src.child("product").and_then(|v| v.attr("id"));
    match (vendor, product) {
        (Some(v), Some(p)) => format!("vendor {v} product {p}"),
        _ => src
            .child("adapter")
            .and_then(|a| a.attr("name"))
            .unwrap_or("")
            .to_string(),
    }
}

fn render_address(addr: &Element) -> String {
    if let (Some(b), Some(s), Some(f)) =
        (addr.attr("bus"), addr.attr("slot"), addr.attr("function"))
    {
        let d = addr.attr("domain").unwrap_or("0x0000");
        let h = |x: &str| x.trim_start_matches("0x").to_string();
        return format!("{}:{}:{}.{}", h(d), h(b), h(s), h(f));
    }
    if let Some(uuid) = addr.attr("uuid") {
        return uuid.to_string();
    }
    addr.attrs
        .iter()
        .map(|a| format!("{}={}", a.name, a.value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_source(disk_type: &DiskType, src: &Element) -> Option<DiskSource> {
    match disk_type {
        DiskType::File | DiskType::Block | DiskType::Dir => {
            let attr = disk_type.path_attr()?;
            src.attr(attr)
                .filter(|p| !p.is_empty())
                .map(|p| DiskSource::Path {
                    path: p.to_string(),
                })
        }
        DiskType::Volume => Some(DiskSource::Volume {
            pool: src.attr("pool")?.to_string(),
            volume: src.attr("volume")?.to_string(),
            mode: src.attr("mode").map(str::to_string),
        }),
        DiskType::Network => Some(DiskSource::Network {
            protocol: src.attr("protocol").unwrap_or("").to_string(),
            name: src.attr("name").map(str::to_string),
            hosts: src
                .children_named("host")
                .map(
                    |h| match (h.attr("name"), h.attr("port"), h.attr("socket")) {
                        (Some(n), Some(p), _) => format!("{n}:{p}"),
                        (Some(n), None, _) => n.to_string(),
                        (None, _, Some(s)) => format!("unix:{s}"),
                        _ => String::new(),
                    },
                )
                .collect(),
        }),
        DiskType::Nvme => Some(DiskSource::Nvme {
            namespace: src.attr("namespace").map(str::to_string),
            pci_address: src.child("address").map(render_address),
        }),
        DiskType::Other(_) => None,
    }
}

fn read_disk(doc: &str, el: &Element, doc_quote: &std::cell::OnceCell<char>) -> Disk {
    let disk_type = DiskType::from_attr(el.attr("type"));
    let driver = el.child("driver");
    let source_el = el.child("source");
    let source = source_el.and_then(|s| read_source(&disk_type, s));
    let target = el.child("target");
    let mut backing_chain = Vec::new();
    let mut backing_pos = Vec::new();
    let mut bs = el.child("backingStore");
    while let Some(b) = bs {
        let t = DiskType::from_attr(b.attr("type"));
        if let Some(src) = b.child("source") {
            if let Some(s) = read_source(&t, src) {
                backing_chain.push(s);
            }
            backing_pos.push(BackingPos {
                disk_type: t,
                source: src.span.clone(),
                source_attrs: src.attrs.clone(),
            });
        }
        bs = b.child("backingStore");
    }
    let storage_slice = source_el
        .and_then(|s| s.child("slices"))
        .and_then(|sl| {
            sl.children_named("slice")
                .find(|x| x.attr("type") == Some("storage"))
        })
        .and_then(|x| {
            Some((
                x.attr("offset")?.parse().ok()?,
                x.attr("size")?.parse().ok()?,
            ))
        });
    let secret_uuid = |e: Option<&Element>| {
        e.and_then(|e| e.child("secret"))
            .and_then(|s| s.attr("uuid").or(s.attr("usage")))
            .map(str::to_string)
    };
    let auth = el.child("auth").or(source_el.and_then(|s| s.child("auth")));
    let encryption = el
        .child("encryption")
        .or(source_el.and_then(|s| s.child("encryption")));
    let type_attr = el.attr_full("type");
    let source_attrs = source_el.map(|s| s.attrs.clone()).unwrap_or_default();
    let quote = type_attr
        .map(|a| a.quote)
        .or(el.attrs.first().map(|a| a.quote))
        .or(source_attrs.first().map(|a| a.quote))
        .unwrap_or_else(|| *doc_quote.get_or_init(|| guess_quote(doc)));
    Disk {
        device: el.attr("device").unwrap_or("disk").to_string(),
        driver_name: driver.and_then(|d| d.attr("name")).map(str::to_string),
        format: driver.and_then(|d| d.attr("type")).map(str::to_string),
        cache: driver.and_then(|d| d.attr("cache")).map(str::to_string),
        io: driver.and_then(|d| d.attr("io")).map(str::to_string),
        source,
        storage_slice,
        backing_chain,
        target: target.and_then(|t| t.attr("dev")).unwrap_or("").to_string(),
        bus: target.and_then(|t| t.attr("bus")).map(str::to_string),
        // libvirt makes every cdrom read-only, written or not.
        readonly: el.child("readonly").is_some() || el.attr("device") == Some("cdrom"),
        shareable: el.child("shareable").is_some(),
        transient: el.child("transient").is_some(),
        serial: el.child_text("serial").map(str::to_string),
        auth_secret_uuid: secret_uuid(auth),
        encryption_secret_uuid: secret_uuid(encryption),
        pos: DiskPos {
            element: el.span.clone(),
            type_attr: type_attr.cloned(),
            disk_name_end: el.span.start + "<disk".len(),
            source: source_el.map(|s| s.span.clone()),
            source_start_tag: source_el.map(|s| s.start_tag.clone()),
            backing: backing_pos,
            source_attrs,
            quote,
        },
        disk_type,
    }
}

/// The quote style a document mostly uses, for attributes Ferry has to write anew.
fn guess_quote(doc: &str) -> char {
    if doc.matches("='").count() >= doc.matches("=\"").count() {
        '\''
    } else {
        '"'
    }
}

fn read_interface(el: &Element) -> Interface {
    let src = el.child("source");
    Interface {
        iface_type: el.attr("type").unwrap_or("").to_string(),
        network: src.and_then(|s| s.attr("network")).map(str::to_string),
        bridge: src.and_then(|s| s.attr("bridge")).map(str::to_string),
        mac: el
            .child("mac")
            .and_then(|m| m.attr("address"))
            .map(str::to_string),
        model: el
            .child("model")
            .and_then(|m| m.attr("type"))
            .map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../tests/data/seed-source.xml");

    #[test]
    fn reads_the_seed_guest() {
        let d = parse(SEED).unwrap();
        assert_eq!(d.name, "myGuest");
        assert_eq!(d.domain_type.as_deref(), Some("kvm"));
        assert_eq!(d.memory_kib, Some(16 * 1024 * 1024));
        assert_eq!(d.vcpus, Some(2));
        assert_eq!(d.disks.len(), 2);
        let vda = &d.disks[0];
        assert_eq!(vda.target, "vda");
        assert_eq!(vda.disk_type, DiskType::File);
        assert_eq!(vda.format.as_deref(), Some("qcow2"));
        assert_eq!(vda.path(), Some("/mnt/nfs/test_img.img"));
        let vdb = &d.disks[1];
        assert_eq!(vdb.disk_type, DiskType::Block);
        assert_eq!(vdb.cache.as_deref(), Some("none"));
        assert_eq!(vdb.path(), Some("/dev/nvme2n2"));
        assert_eq!(d.interfaces[0].mac.as_deref(), Some("52:54:00:6b:3c:58"));
        assert!(d.passthrough.is_empty());
    }

    #[test]
    fn reads_network_volume_nvme_and_passthrough() {
        let doc = r#"<domain type='kvm'><name>g</name><devices>
          <disk type="network" device="disk"><source protocol="rbd" name="pool/img">
            <host name="mon1" port="6789"/></source><auth username="u"><secret type="ceph" uuid="abc"/></auth>
            <target dev="vda"/></disk>
          <disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vdb'/></disk>
          <disk type='nvme' device='disk'><source type='pci' managed='yes' namespace='1'>
            <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source><target dev='vdc'/></disk>
          <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>
          <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source></hostdev>
          <interface type='hostdev'><source><address type='pci' domain='0x0000' bus='0x07' slot='0x10' function='0x1'/></source></interface>
        </devices></domain>"#;
        let d = parse(doc).unwrap();
        assert_eq!(
            d.disks[0].source,
            Some(DiskSource::Network {
                protocol: "rbd".into(),
                name: Some("pool/img".into()),
                hosts: vec!["mon1:6789".into()]
            })
        );
        assert_eq!(d.disks[0].auth_secret_uuid.as_deref(), Some("abc"));
        assert_eq!(d.disks[0].pos.quote, '"');
        assert!(matches!(d.disks[1].source, Some(DiskSource::Volume { .. })));
        assert_eq!(
            d.disks[2].source,
            Some(DiskSource::Nvme {
                namespace: Some("1".into()),
                pci_address: Some("0000:01:00.0".into())
            })
        );
        assert!(!d.disks[3].has_media());
        assert!(d.disks[3].readonly);
        assert_eq!(d.passthrough.len(), 2);
        assert_eq!(d.passthrough[0].kind, "PCI");
        assert_eq!(d.passthrough[0].what, "0000:06:12.5");
    }

    #[test]
    fn refuses_what_is_not_a_domain() {
        assert!(matches!(parse("<pool/>"), Err(DomainError::NotADomain(_))));
        assert_eq!(parse("<domain/>").unwrap().name, "");
        assert!(matches!(parse("<domain>"), Err(DomainError::Xml(_))));
    }
}
