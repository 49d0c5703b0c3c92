//! The inventory: which hosts Ferry may use, and what it cannot learn from libvirt.
//!
//! A TOML file (`--inventory FILE`, `FERRY_INVENTORY`, or `/etc/ferry/inventory.toml`). The
//! minimal form lists hosts by name and libvirt URI; everything else is optional:
//!
//! ```toml
//! [[host]]
//! name = "h1"
//! uri = "qemu+ssh://h1.example/system"
//! state = "active"              # or "draining": never chosen as a target
//! reserve_memory = "2GiB"       # kept free for the host itself
//! migration_address = "10.0.0.1" # the migration and disk streams go there
//! labels = ["rack-a"]
//!
//! [[host.local_store]]          # where copies of local disks may be created on this host
//! pool = "nvme-lvm"             # a libvirt pool (dir, fs, logical)
//!
//! [[shared_store]]              # storage every listed host sees, each under its own path
//! name = "nfs"
//! paths = { h1 = "/mnt/nfs", h2 = "/mnt/nfs_second_mount" }
//! ```
//!
//! Shared and local stores are only needed where libvirt's storage pools do not already say it:
//! Ferry reads every host's pools and decides shared or local from them (see
//! [`crate::storage`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rules::{MapRule, Origin};

/// Where the inventory is read from when none is given.
pub const DEFAULT_PATH: &str = "/etc/ferry/inventory.toml";

/// Why an inventory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("the inventory is not valid TOML for Ferry's inventory")]
    Toml(#[source] toml::de::Error),
    #[error("[journal] url is empty: give a postgres:// URL or an SQLite file's path")]
    EmptyJournal,
    #[error("host {0:?} is listed twice in the inventory")]
    DuplicateName(String),
    #[error("the inventory lists {uri} twice (hosts {a} and {b})")]
    DuplicateUri { uri: String, a: String, b: String },
    #[error("host {0:?}: a host name is letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("shared store {store:?} names host {host:?}, which is not in the inventory")]
    UnknownHost { store: String, host: String },
    #[error("shared store {store:?}: path {path:?} of host {host} must be absolute")]
    RelativePath {
        store: String,
        host: String,
        path: String,
    },
    #[error("the inventory has no [[host]]: list each host with name and uri")]
    Empty,
    #[error(
        "host {0}: each [[host.local_store]] has either pool = \"POOL\" or hook = [\"COMMAND\", \
         ...], not both or neither"
    )]
    StoreKind(String),
    #[error("host {host}: {source}")]
    HostValue {
        host: String,
        #[source]
        source: crate::limits::OutOfBounds,
    },
    #[error("[convergence]: {0}")]
    Convergence(#[source] crate::limits::OutOfBounds),
    #[error("shared store {0:?} is listed twice in the inventory")]
    DuplicateStore(String),
    #[error("shared store {0:?} has no paths: give paths = {{ HOST = \"/path\", … }}")]
    EmptyStore(String),
    #[error(
        "host {host}: migration_address {address:?} is not an address (an IP address or a host \
         name, without scheme or port)"
    )]
    BadAddress { host: String, address: String },
}

/// An IP address or a DNS host name: what `tcp://ADDR` may carry.
fn is_address(a: &str) -> bool {
    if a.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !a.is_empty()
        && a.len() <= 253
        && a.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A byte count, written as a number or with a unit: `2147483648`, `"2GiB"`, `"512 MiB"`,
/// `"1.5G"` (K, M, G, T are powers of 1024, as in libvirt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 512MiB, 1073741824)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB, GiB or TiB)")),
        };
        let bytes = n * mult as f64;
        // Not saturated into a number nobody meant: refused with the bound.
        if !bytes.is_finite() || bytes > crate::limits::RESERVE_MEMORY.max as f64 {
            return Err(format!(
                "{s:?} is more than {} bytes (1 PiB)",
                crate::limits::RESERVE_MEMORY.max
            ));
        }
        Ok(Bytes(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            Negative(i64),
            Float(f64),
            S(String),
            Other(toml::Value),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::Negative(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a size: a size is not negative"
            ))),
            Raw::Float(f) => Err(serde::de::Error::custom(format!(
                "{f} is not a whole number of bytes (write it with a unit: \"1.5GiB\")"
            ))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Other(v) => Err(serde::de::Error::custom(format!(
                "{v} is not a size (e.g. 2GiB, 512MiB, 1073741824)"
            ))),
        }
    }
}

/// Whether Ferry may move guests to a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    #[default]
    Active,
    /// Being emptied: never chosen as a target.
    Draining,
}

/// A place on a host where Ferry creates the copies of local disks: a libvirt pool, or a hook
/// command for what libvirt cannot create (NVMe namespaces, SAN LUNs).
///
/// A hook is run where Ferry runs, with one JSON request on stdin and, for `create`, one JSON
/// answer on stdout:
/// `{"action":"create","host":NAME,"guest":G,"disk":D,"bytes":N}` → `{"path":"/dev/…"}` (a
/// block device of exactly N bytes, or larger: the guest then gets a storage slice), and
/// `{"action":"delete","host":NAME,"path":P}` to give it back. A non-zero exit is a failure,
/// reported with the hook's stderr; a hook that outlives `timeout` seconds is killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalStore {
    /// A libvirt storage pool on that host (dir, fs or logical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// A hook: the command and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Vec<String>>,
    /// The hook's name in plans and messages (default: its command's file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds a hook call may take.
    #[serde(default = "default_hook_timeout")]
    pub timeout: u64,
}

fn default_hook_timeout() -> u64 {
    60
}

/// A hook that creates and deletes volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub name: String,
    pub command: Vec<String>,
    pub timeout_s: u64,
}

/// What a [`LocalStore`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    Pool(String),
    Hook(Hook),
}

impl LocalStore {
    /// The store's kind (the inventory's check makes sure exactly one is given).
    pub fn store(&self) -> Store {
        match (&self.pool, &self.hook) {
            (Some(p), _) => Store::Pool(p.clone()),
            (None, Some(cmd)) => Store::Hook(Hook {
                name: self.name.clone().unwrap_or_else(|| {
                    std::path::Path::new(cmd.first().map(String::as_str).unwrap_or("hook"))
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "hook".into())
                }),
                command: cmd.clone(),
                timeout_s: self.timeout,
            }),
            (None, None) => Store::Pool(String::new()),
        }
    }
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub uri: String,
    #[serde(default)]
    pub state: HostState,
    #[serde(default)]
    pub reserve_memory: Bytes,
    /// An address of this host for the migration streams (`--migrate-uri tcp://ADDR`,
    /// `--disks-uri tcp://ADDR`) when it is the target.
    #[serde(default)]
    pub migration_address: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    /// The bandwidth of this host's link for migrations, MiB/s each way: `ferry evacuate`
    /// shares it among the migrations running on it.
    #[serde(default)]
    pub link_bandwidth: Option<u64>,
    #[serde(default, rename = "local_store")]
    pub local_stores: Vec<LocalStore>,
}

/// Storage several hosts see, each under its own path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStore {
    pub name: String,
    /// Host name → the path (a directory prefix, or a device path) it sees the store under.
    pub paths: BTreeMap<String, String>,
}

/// The hosts Ferry may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostEntry>,
    #[serde(default, rename = "shared_store")]
    pub shared_stores: Vec<SharedStore>,
    /// The convergence policy for every migration (per-call flags override it).
    #[serde(default)]
    pub convergence: crate::convergence::Policy,
    /// Pre-seeding for every migration (`--preseed`, `--no-preseed`, `--preseed-store` and
    /// `--preseed-verify` override it).
    #[serde(default)]
    pub preseed: PreseedSection,
    /// Where every Ferry reading this inventory keeps its journal (`--journal` overrides it).
    #[serde(default)]
    pub journal: Option<JournalSection>,
}

/// The inventory's `[journal]`: the journal every Ferry of the fleet shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    /// A PostgreSQL URL (`postgres://USER@HOST/DB`), or an SQLite file's path.
    pub url: String,
}

impl JournalSection {
    /// The `[journal]` of an inventory's text, read alone: an inventory that names no host
    /// yet (the package's default, with only `[journal]` filled in) still gives it.
    pub fn from_toml(text: &str) -> Result<Option<Self>, InventoryError> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            journal: Option<JournalSection>,
        }
        let only: Only = toml::from_str(text).map_err(InventoryError::Toml)?;
        match only.journal {
            Some(j) if j.url.trim().is_empty() => Err(InventoryError::EmptyJournal),
            j => Ok(j),
        }
    }
}

/// When Ferry pre-seeds the copied disks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreseedMode {
    /// From `from` bytes of copied disks on, when nothing refuses it.
    #[default]
    Auto,
    /// Always; what cannot be pre-seeded is refused (`--preseed`).
    Always,
    /// Never (`--no-preseed`).
    Never,
}

/// The inventory's `[preseed]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreseedSection {
    pub mode: PreseedMode,
    /// The directory, on every host, that holds the overlays.
    pub store: String,
    pub verify: crate::preseed::Verify,
    /// With `mode = "auto"`: pre-seed from this many bytes of copied disks on.
    pub from: Bytes,
}

impl Default for PreseedSection {
    fn default() -> Self {
        PreseedSection {
            mode: PreseedMode::Auto,
            store: crate::preseed::DEFAULT_STORE.to_string(),
            verify: crate::preseed::Verify::Sample,
            from: Bytes(crate::preseed::AUTO_MIN_BYTES),
        }
    }
}

impl Inventory {
    /// Read an inventory's text and check it.
    pub fn from_toml(text: &str) -> Result<Self, InventoryError> {
        let inv: Inventory = toml::from_str(text).map_err(InventoryError::Toml)?;
        inv.check()?;
        Ok(inv)
    }

    fn check(&self) -> Result<(), InventoryError> {
        if self.hosts.is_empty() {
            return Err(InventoryError::Empty);
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.url.trim().is_empty())
        {
            return Err(InventoryError::EmptyJournal);
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.name.is_empty()
                || !h
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(InventoryError::BadName(h.name.clone()));
            }
            if let Some(o) = self.hosts[..i].iter().find(|o| o.name == h.name) {
                return Err(InventoryError::DuplicateName(o.name.clone()));
            }
            if h.local_stores.iter().any(|l| {
                l.pool.is_some() == l.hook.is_some()
                    || l.hook
                        .as_ref()
                        .is_some_and(|c| c.first().is_none_or(|cmd| cmd.trim().is_empty()))
            }) {
                return Err(InventoryError::StoreKind(h.name.clone()));
            }
            let bad = |source| InventoryError::HostValue {
                host: h.name.clone(),
                source,
            };
            for l in h.local_stores.iter().filter(|l| l.hook.is_some()) {
                crate::limits::HOOK_TIMEOUT_S
                    .check(l.timeout)
                    .map_err(bad)?;
            }
            if let Some(m) = h.link_bandwidth {
                crate::limits::LINK_MIB.check(m).map_err(bad)?;
            }
            crate::limits::RESERVE_MEMORY
                .check(h.reserve_memory.0)
                .map_err(bad)?;
            if let Some(a) = h.migration_address.as_deref().filter(|a| !is_address(a)) {
                return Err(InventoryError::BadAddress {
                    host: h.name.clone(),
                    address: a.to_string(),
                });
            }
            if let Some(o) = self.hosts[..i].iter().find(|o| o.uri == h.uri) {
                return Err(InventoryError::DuplicateUri {
                    uri: h.uri.clone(),
                    a: o.name.clone(),
                    b: h.name.clone(),
                });
            }
        }
        self.convergence
            .check()
            .map_err(InventoryError::Convergence)?;
        for (i, s) in self.shared_stores.iter().enumerate() {
            if self.shared_stores[..i].iter().any(|o| o.name == s.name) {
                return Err(InventoryError::DuplicateStore(s.name.clone()));
            }
            if s.paths.is_empty() {
                return Err(InventoryError::EmptyStore(s.name.clone()));
            }
            for (host, path) in &s.paths {
                if self.host(host).is_none() {
                    return Err(InventoryError::UnknownHost {
                        store: s.name.clone(),
                        host: host.clone(),
                    });
                }
                if !path.starts_with('/') {
                    return Err(InventoryError::RelativePath {
                        store: s.name.clone(),
                        host: host.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The host with this name.
    pub fn host(&self, name: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The host named `name_or_uri`, or listed with that URI.
    pub fn resolve(&self, name_or_uri: &str) -> Option<&HostEntry> {
        self.host(name_or_uri)
            .or_else(|| self.hosts.iter().find(|h| h.uri == name_or_uri))
    }

    /// The shared stores host `name` sees: one of its active pools holds the store's path there.
    pub fn stores_seen(&self, name: &str, pools: &[crate::facts::PoolFacts]) -> Vec<String> {
        self.shared_stores
            .iter()
            .filter(|s| {
                s.paths
                    .get(name)
                    .is_some_and(|p| crate::storage::pool_holding(pools, p).is_some())
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// The map rules the shared stores give for a migration from host `from` to host `to`
    /// (names): each store both hosts list maps the source's path to the target's.
    pub fn store_maps(&self, from: &str, to: &str) -> Vec<MapRule> {
        self.shared_stores
            .iter()
            .filter_map(|s| {
                let (a, b) = (s.paths.get(from)?, s.paths.get(to)?);
                Some(MapRule {
                    from: a.clone(),
                    to: b.clone(),
                    origin: Origin::Inventory {
                        store: s.name.clone(),
                    },
                })
            })
            .collect()
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::render::human_bytes(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_and_without_units() {
        assert_eq!("2GiB".parse::<Bytes>().unwrap(), Bytes(2 << 30));
        assert_eq!("512 MiB".parse::<Bytes>().unwrap(), Bytes(512 << 20));
        assert_eq!("1.5G".parse::<Bytes>().unwrap(), Bytes(3 << 29));
        assert_eq!("4096".parse::<Bytes>().unwrap(), Bytes(4096));
        assert!("2 parsecs".parse::<Bytes>().is_err());
        assert!("GiB".parse::<Bytes>().is_err());
    }

    #[test]
    fn the_journal_section_is_read_with_or_without_hosts() {
        let url = "postgres://ferry@db.example/ferry";
        let alone = format!("[journal]\nurl = \"{url}\"\n");
        assert_eq!(
            JournalSection::from_toml(&alone).unwrap().map(|j| j.url),
            Some(url.to_string())
        );
        // With hosts, the whole inventory has it too.
        let full = format!("[[host]]\nname = \"h1\"\nuri = \"qemu:///system\"\n{alone}");
        assert_eq!(
            Inventory::from_toml(&full).unwrap().journal.map(|j| j.url),
            Some(url.to_string())
        );
        assert_eq!(
            JournalSection::from_toml("[[host]]\nname = \"h1\"\n").unwrap(),
            None
        );
        for bad in ["[journal]\nurl = \" \"\n", "[journal]\npath = \"/x\"\n"] {
            assert!(JournalSection::from_toml(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Inventory::from_toml(
                "[[host]]\nname = \"h1\"\nuri = \"qemu:///system\"\n[journal]\nurl = \"\"\n"
            ),
            Err(InventoryError::EmptyJournal)
        ));
    }

    #[test]
    fn the_minimal_inventory_is_a_list_of_hosts() {
        let inv = Inventory::from_toml(
            "[[host]]\nname = \"h1\"\nuri = \"qemu:///system\"\n\
             [[host]]\nname = \"h2\"\nuri = \"qemu+ssh://h2/system\"\n",
        )
        .unwrap();
        assert_eq!(inv.hosts.len(), 2);
        assert_eq!(inv.hosts[1].state, HostState::Active);
        assert_eq!(inv.hosts[1].reserve_memory, Bytes(0));
        assert_eq!(inv.resolve("h2").unwrap().uri, "qemu+ssh://h2/system");
        assert_eq!(inv.resolve("qemu+ssh://h2/system").unwrap().name, "h2");
        assert!(inv.resolve("h3").is_none());
    }

    #[test]
    fn mistakes_are_errors_that_say_what_is_wrong() {
        let dup = "[[host]]\nname = \"a\"\nuri = \"u1\"\n[[host]]\nname = \"a\"\nuri = \"u2\"\n";
        assert!(matches!(
            Inventory::from_toml(dup),
            Err(InventoryError::DuplicateName(_))
        ));
        let dup_uri = "[[host]]\nname = \"a\"\nuri = \"u\"\n[[host]]\nname = \"b\"\nuri = \"u\"\n";
        assert!(matches!(
            Inventory::from_toml(dup_uri),
            Err(InventoryError::DuplicateUri { .. })
        ));
        // A typo in a key is not silently ignored.
        let typo = "[[host]]\nname = \"a\"\nuri = \"u\"\nreserve_mem = \"1GiB\"\n";
        let e = Inventory::from_toml(typo).unwrap_err();
        assert!(format!("{:?}", e).contains("reserve_mem"), "{e:?}");
        let store = "[[host]]\nname = \"a\"\nuri = \"u\"\n[[shared_store]]\nname = \"s\"\n\
                     paths = { a = \"/x\", b = \"/y\" }\n";
        assert!(matches!(
            Inventory::from_toml(store),
            Err(InventoryError::UnknownHost { .. })
        ));
        assert!(matches!(
            Inventory::from_toml(""),
            Err(InventoryError::Empty)
        ));
        assert!(matches!(
            Inventory::from_toml("[[host]]\nname = \"a b\"\nuri = \"u\"\n"),
            Err(InventoryError::BadName(_))
        ));
    }

    #[test]
    fn shared_stores_give_maps_between_the_two_hosts_only() {
        let inv = Inventory::from_toml(
            "[[host]]\nname = \"h1\"\nuri = \"u1\"\n[[host]]\nname = \"h2\"\nuri = \"u2\"\n\
             [[host]]\nname = \"h3\"\nuri = \"u3\"\n\
             [[shared_store]]\nname = \"nfs\"\npaths = { h1 = \"/mnt/nfs\", h2 = \"/mnt/b\" }\n",
        )
        .unwrap();
        let m = inv.store_maps("h1", "h2");
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].from.as_str(), m[0].to.as_str()),
            ("/mnt/nfs", "/mnt/b")
        );
        assert!(inv.store_maps("h1", "h3").is_empty());
    }

    #[test]
    fn a_preseed_section_sets_the_mode_store_and_threshold_and_typos_are_refused() {
        let base = "[[host]]\nname = \"a\"\nuri = \"qemu:///system\"\n";
        let inv = Inventory::from_toml(base).unwrap();
        assert_eq!(inv.preseed, PreseedSection::default());
        let inv = Inventory::from_toml(&format!(
            "{base}[preseed]\nmode = \"always\"\nstore = \"/srv/ferry\"\nverify = \"all\"\nfrom = \"4GiB\"\n"
        ))
        .unwrap();
        assert_eq!(inv.preseed.mode, PreseedMode::Always);
        assert_eq!(inv.preseed.store, "/srv/ferry");
        assert_eq!(inv.preseed.verify, crate::preseed::Verify::All);
        assert_eq!(inv.preseed.from, Bytes(4 << 30));
        for bad in ["mode = \"sometimes\"", "verify = \"most\"", "stor = \"/x\""] {
            assert!(
                Inventory::from_toml(&format!("{base}[preseed]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_convergence_section_overrides_the_defaults_and_typos_are_refused() {
        let base = "[[host]]\nname = \"a\"\nuri = \"qemu:///system\"\n";
        let inv = Inventory::from_toml(&format!(
            "{base}[convergence]\nfallback = \"postcopy\"\nstall_s = 30\n"
        ))
        .unwrap();
        assert_eq!(
            inv.convergence.fallback,
            crate::convergence::Fallback::Postcopy
        );
        assert_eq!(inv.convergence.stall_s, 30);
        assert_eq!(inv.convergence.downtime_ms, 100);
        assert!(Inventory::from_toml(&format!("{base}[convergence]\nstall = 30\n")).is_err());
        assert!(
            Inventory::from_toml(&format!("{base}[convergence]\nfallback = \"pray\"\n")).is_err()
        );
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../examples/inventory.toml");
        let inv = Inventory::from_toml(text).unwrap();
        assert!(inv.hosts.len() >= 3);
        assert!(inv.hosts.iter().any(|h| h.state == HostState::Draining));
        assert!(inv.hosts.iter().any(|h| h.reserve_memory.0 > 0));
        assert!(!inv.shared_stores.is_empty());
        assert!(inv.hosts.iter().any(|h| !h.local_stores.is_empty()));
        // The documented [convergence] and [preseed] sections are the defaults, spelled out.
        assert_eq!(inv.convergence, crate::convergence::Policy::default());
        assert_eq!(inv.preseed, PreseedSection::default());
        let hook = inv
            .hosts
            .iter()
            .flat_map(|h| &h.local_stores)
            .find_map(|l| match l.store() {
                Store::Hook(h) => Some(h),
                Store::Pool(_) => None,
            })
            .expect("the example shows a hook");
        assert_eq!(hook.name, "nvme-namespaces");
        assert_eq!(hook.timeout_s, 30);
    }

    #[test]
    fn a_local_store_is_a_pool_or_a_hook() {
        let h = "[[host]]\nname = \"a\"\nuri = \"u\"\n[[host.local_store]]\n";
        let inv =
            Inventory::from_toml(&format!("{h}hook = [\"/usr/lib/x/mk-ns\", \"-v\"]\n")).unwrap();
        let Store::Hook(hook) = inv.hosts[0].local_stores[0].store() else {
            panic!("not a hook")
        };
        assert_eq!((hook.name.as_str(), hook.timeout_s), ("mk-ns", 60));
        for bad in ["", "pool = \"p\"\nhook = [\"x\"]\n", "hook = []\n"] {
            assert!(
                matches!(
                    Inventory::from_toml(&format!("{h}{bad}")),
                    Err(InventoryError::StoreKind(_))
                ),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod careless {
    use super::*;

    const HOST: &str = "[[host]]\nname = \"h1\"\nuri = \"qemu:///system\"\n";

    fn err(extra_host: &str, rest: &str) -> String {
        Inventory::from_toml(&format!("{HOST}{extra_host}{rest}"))
            .map(|_| String::new())
            .unwrap_or_else(|e| {
                let mut s = e.to_string();
                let mut c = std::error::Error::source(&e);
                while let Some(x) = c {
                    s.push_str(&format!(": {x}"));
                    c = x.source();
                }
                s
            })
    }

    #[test]
    fn what_a_flag_refuses_the_inventory_refuses_too() {
        assert!(
            err("link_bandwidth = 0\n", "").contains("a link's bandwidth (MiB/s) must be from 1")
        );
        assert!(err("", "[convergence]\nstall_s = 0\n")
            .contains("the stall timeout (seconds) must be from 1"));
        assert!(err("", "[convergence]\ndowntime_ms = 0\n")
            .contains("a max downtime (ms) must be from 1"));
        assert!(err(
            "",
            "[convergence]\ndowntime_ms = 500\ndowntime_max_ms = 100\n"
        )
        .contains("not below downtime_ms"));
        assert!(err(
            "[[host.local_store]]\nhook = [\"/bin/h\"]\ntimeout = 0\n",
            ""
        )
        .contains("a hook's timeout (seconds) must be from 1"));
        assert!(err("[[host.local_store]]\nhook = [\"\"]\n", "").contains("either pool"));
        assert!(err("[[host.local_store]]\nhook = []\n", "").contains("either pool"));
        // The same settings within their bounds pass.
        assert_eq!(
            err("link_bandwidth = 1\n", "[convergence]\nstall_s = 1\n"),
            ""
        );
    }

    #[test]
    fn shared_stores_need_a_name_of_their_own_and_paths() {
        let store = |name: &str, paths: &str| {
            format!("[[shared_store]]\nname = \"{name}\"\npaths = {{ {paths} }}\n")
        };
        let two = format!(
            "{}{}",
            store("nfs", "h1 = \"/mnt\""),
            store("nfs", "h1 = \"/srv\"")
        );
        assert!(err("", &two).contains("shared store \"nfs\" is listed twice"));
        assert!(err("", &store("nfs", "")).contains("has no paths"));
    }

    #[test]
    fn a_migration_address_is_an_address() {
        for good in ["10.0.0.1", "fe80::1", "kvm2.example.org", "kvm-2"] {
            assert_eq!(
                err(&format!("migration_address = \"{good}\"\n"), ""),
                "",
                "{good}"
            );
        }
        for bad in ["tcp://10.0.0.1", "10.0.0.1:49152", "", "a b", "-x.org"] {
            assert!(
                err(&format!("migration_address = \"{bad}\"\n"), "").contains("is not an address"),
                "{bad}"
            );
        }
    }

    #[test]
    fn reserve_memory_is_a_size_never_saturated_or_negative() {
        assert!(err("reserve_memory = \"99999999999TiB\"\n", "").contains("is more than"));
        assert!(err("reserve_memory = -1\n", "").contains("a size is not negative"));
        assert!(err("reserve_memory = 1.5\n", "").contains("not a whole number of bytes"));
        assert!(err("reserve_memory = 2251799813685248\n", "")
            .contains("reserve_memory (bytes) must be"));
        assert_eq!(err("reserve_memory = \"2GiB\"\n", ""), "");
    }
}
