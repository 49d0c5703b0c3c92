//! Storage rules: how the target host sees each disk.
//!
//! `--map SRC=DST` says "shared storage, seen on the target under another name" and
//! `--copy DEV[=DST]` says "local storage, copy it". A rules file in TOML says the same:
//!
//! ```toml
//! [[map]]
//! from = "/mnt/nfs"
//! to = "/mnt/nfs_second_mount"
//!
//! [[copy]]
//! disk = "vdb"
//! to = "/dev/nvme1n5"   # optional: without it the path stays the same
//! ```

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a rule could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("--map {0:?} is not SRC=DST (e.g. --map /mnt/nfs=/mnt/nfs_second_mount)")]
    MapSyntax(String),
    #[error("--map {0:?}: both sides must be absolute paths (or, for volume disks, pool names)")]
    MapMixed(String),
    #[error("--copy {0:?} is not DEV[=DST] (e.g. --copy vdb or --copy vdb=/dev/nvme1n5)")]
    CopySyntax(String),
    #[error("--copy {0:?}: the destination must be an absolute path")]
    CopyRelative(String),
    #[error(
        "the rules file is not valid TOML for Ferry's rules ([[map]] from/to, [[copy]] disk/to)"
    )]
    Toml(#[source] toml::de::Error),
    #[error("--copy {0} is given twice")]
    CopyTwice(String),
    #[error("--map {from} is given twice, to {a} and to {b}: keep one")]
    MapTwice { from: String, a: String, b: String },
    #[error(
        "--map {0:?}: a relative path is not a pool name (pool names have no '/'); write the \
         absolute path"
    )]
    MapRelative(String),
    #[error("{0:?} holds a control character: no disk path or pool has one")]
    ControlChar(String),
}

/// Where a rule came from: the operator, or a fact Ferry established. The plan shows it for
/// every disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Origin {
    /// `--map`/`--copy` or a rules file.
    #[default]
    Flag,
    /// The disk's own kind decides: a network disk, a drive without media.
    DiskKind,
    /// A `[[shared_store]]` of the inventory.
    Inventory { store: String },
    /// Both hosts' pool definitions name the same storage (NFS export, iSCSI IQN, Ceph pool).
    PoolIdentity { evidence: String },
    /// A canary volume created on the target appeared on the source.
    Canary { evidence: String },
    /// A local disk (its pool is storage only the source has), copied into a local store of
    /// the target.
    LocalStore { evidence: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::DiskKind => f.write_str("the disk's kind"),
            Origin::Inventory { store } => write!(f, "inventory: shared store {store}"),
            Origin::PoolIdentity { evidence } => write!(f, "pool identity: {evidence}"),
            Origin::Canary { evidence } => write!(f, "canary: {evidence}"),
            Origin::LocalStore { evidence } => write!(f, "local storage: {evidence}"),
        }
    }
}

/// `p` with `//`, `.` and `..` resolved lexically and no trailing `/` (`/a//b/../c/` → `/a/c`),
/// to compare paths as the filesystem would (symbolic links aside).
pub fn normalise_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if p.starts_with('/') {
        format!("/{}", parts.join("/"))
    } else {
        parts.join("/")
    }
}

/// `path`'s remainder below `prefix` when `prefix` is `path` or one of its directories, on
/// whole components (`/mnt/nfs` holds `/mnt/nfs/a` but not `/mnt/nfs2/a`); "" when equal.
pub fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = normalise(prefix);
    if path == prefix {
        return Some("");
    }
    let rest = path.strip_prefix(prefix)?;
    if prefix == "/" {
        return Some(rest);
    }
    rest.strip_prefix('/')
}

/// Shared storage the target sees under another name.
///
/// For absolute paths the prefix matches whole path components: `/mnt/nfs` matches
/// `/mnt/nfs/a.img` and `/mnt/nfs` but not `/mnt/nfs2/a.img`. A rule whose sides are not
/// absolute paths maps a storage pool name (for `<disk type='volume'>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRule {
    pub from: String,
    pub to: String,
    #[serde(skip_deserializing, skip_serializing_if = "is_flag")]
    pub origin: Origin,
}

fn is_flag(o: &Origin) -> bool {
    *o == Origin::Flag
}

/// A local disk to copy, named by its `<target dev>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRule {
    pub disk: String,
    /// Where the copy goes on the target; `None` keeps the source path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Set by Ferry when the target is a larger raw block device: the disk uses a storage
    /// slice of exactly this many bytes at its start.
    #[serde(skip)]
    pub slice: Option<u64>,
    #[serde(skip_deserializing, skip_serializing_if = "is_flag")]
    pub origin: Origin,
}

/// Every rule for one migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub map: Vec<MapRule>,
    #[serde(default)]
    pub copy: Vec<CopyRule>,
}

fn normalise(p: &str) -> &str {
    if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    }
}

impl MapRule {
    /// Whether this rule maps a pool name rather than a path prefix.
    pub fn is_pool(&self) -> bool {
        !self.from.starts_with('/')
    }

    /// The rewritten path, if `path` lies under this rule's `from`.
    pub fn apply(&self, path: &str) -> Option<String> {
        let rest = under(path, &self.from)?;
        let to = normalise(&self.to);
        if rest.is_empty() {
            return Some(to.to_string());
        }
        Some(format!("{}/{rest}", to.trim_end_matches('/')))
    }

    /// How many bytes of `path` the rule matches (for longest-match-wins), if it matches.
    pub fn match_len(&self, path: &str) -> Option<usize> {
        self.apply(path).map(|_| normalise(&self.from).len())
    }
}

impl FromStr for MapRule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let (from, to) = s
            .split_once('=')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or_else(|| RuleError::MapSyntax(s.to_string()))?;
        if from.starts_with('/') != to.starts_with('/') {
            return Err(RuleError::MapMixed(s.to_string()));
        }
        if !from.starts_with('/') && (from.contains('/') || to.contains('/')) {
            return Err(RuleError::MapRelative(s.to_string()));
        }
        if s.chars().any(char::is_control) {
            return Err(RuleError::ControlChar(s.to_string()));
        }
        Ok(Self {
            from: from.to_string(),
            to: to.to_string(),
            origin: Origin::Flag,
        })
    }
}

impl FromStr for CopyRule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let (disk, to) = match s.split_once('=') {
            Some((d, t)) => (d, Some(t)),
            None => (s, None),
        };
        if disk.is_empty() || disk.contains('/') || to.is_some_and(str::is_empty) {
            return Err(RuleError::CopySyntax(s.to_string()));
        }
        if to.is_some_and(|t| !t.starts_with('/')) {
            return Err(RuleError::CopyRelative(s.to_string()));
        }
        if s.chars().any(char::is_control) {
            return Err(RuleError::ControlChar(s.to_string()));
        }
        Ok(Self {
            disk: disk.to_string(),
            to: to.map(str::to_string),
            slice: None,
            origin: Origin::Flag,
        })
    }
}

impl Rules {
    /// Read a rules file's text.
    pub fn from_toml(text: &str) -> Result<Self, RuleError> {
        let rules: Rules = toml::from_str(text).map_err(RuleError::Toml)?;
        for m in &rules.map {
            format!("{}={}", m.from, m.to).parse::<MapRule>()?;
        }
        for c in &rules.copy {
            match &c.to {
                Some(t) => format!("{}={t}", c.disk),
                None => c.disk.clone(),
            }
            .parse::<CopyRule>()?;
        }
        rules.check()?;
        Ok(rules)
    }

    /// Add the rules of `other` (flags on top of a file).
    pub fn extend(&mut self, other: Rules) -> Result<(), RuleError> {
        self.map.extend(other.map);
        self.copy.extend(other.copy);
        self.check()
    }

    fn check(&self) -> Result<(), RuleError> {
        let mut disks = std::collections::HashSet::new();
        for c in &self.copy {
            if !disks.insert(c.disk.as_str()) {
                return Err(RuleError::CopyTwice(c.disk.clone()));
            }
        }
        let mut froms: std::collections::HashMap<String, &MapRule> = Default::default();
        for m in &self.map {
            match froms.get(&normalise_path(&m.from)) {
                Some(o) if o.to != m.to => {
                    return Err(RuleError::MapTwice {
                        from: m.from.clone(),
                        a: o.to.clone(),
                        b: m.to.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    froms.insert(normalise_path(&m.from), m);
                }
            }
        }
        Ok(())
    }

    /// The map rule that matches `path` best (the longest `from`).
    pub fn map_for_path(&self, path: &str) -> Option<&MapRule> {
        self.map
            .iter()
            .filter_map(|r| r.match_len(path).map(|n| (n, r)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, r)| r)
    }

    /// The map rule for a storage pool name.
    pub fn map_for_pool(&self, pool: &str) -> Option<&MapRule> {
        self.map.iter().find(|r| r.from == pool)
    }

    /// The copy rules by disk, for looking many up.
    pub fn copy_index(&self) -> std::collections::HashMap<&str, &CopyRule> {
        self.copy.iter().map(|c| (c.disk.as_str(), c)).collect()
    }

    /// The copy rule for the disk whose target is `dev`.
    pub fn copy_for(&self, dev: &str) -> Option<&CopyRule> {
        self.copy.iter().find(|c| c.disk == dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> MapRule {
        s.parse().unwrap()
    }

    #[test]
    fn map_matches_whole_components_only() {
        let r = map("/mnt/nfs=/mnt/nfs_second_mount");
        assert_eq!(
            r.apply("/mnt/nfs/test_img.img").as_deref(),
            Some("/mnt/nfs_second_mount/test_img.img")
        );
        assert_eq!(
            r.apply("/mnt/nfs").as_deref(),
            Some("/mnt/nfs_second_mount")
        );
        assert_eq!(r.apply("/mnt/nfs2/a.img"), None);
        assert_eq!(r.apply("/mnt/nf"), None);
        let trailing = map("/mnt/nfs/=/srv/");
        assert_eq!(trailing.apply("/mnt/nfs/a").as_deref(), Some("/srv/a"));
    }

    #[test]
    fn map_of_whole_device_paths() {
        let r = map("/dev/sdb2=/dev/sdb5");
        assert_eq!(r.apply("/dev/sdb2").as_deref(), Some("/dev/sdb5"));
        assert_eq!(r.apply("/dev/sdb20"), None);
    }

    #[test]
    fn longest_map_wins() {
        let rules = Rules {
            map: vec![map("/mnt=/a"), map("/mnt/nfs=/b")],
            copy: vec![],
        };
        assert_eq!(rules.map_for_path("/mnt/nfs/x").unwrap().to, "/b");
        assert_eq!(rules.map_for_path("/mnt/other").unwrap().to, "/a");
    }

    #[test]
    fn flag_syntax_errors_say_how_to_write_it() {
        let e = "nfs".parse::<MapRule>().unwrap_err().to_string();
        assert!(e.contains("SRC=DST"), "{e}");
        assert!("/a=pool".parse::<MapRule>().is_err());
        assert!("vdb=relative".parse::<CopyRule>().is_err());
        assert!("vdb=".parse::<CopyRule>().is_err());
        let c: CopyRule = "vdb=/dev/nvme1n5".parse().unwrap();
        assert_eq!(c.to.as_deref(), Some("/dev/nvme1n5"));
        assert_eq!("vdb".parse::<CopyRule>().unwrap().to, None);
    }

    #[test]
    fn toml_file_means_the_same_as_flags() {
        let file = Rules::from_toml(
            "[[map]]\nfrom = \"/mnt/nfs\"\nto = \"/mnt/nfs_second_mount\"\n\
             [[copy]]\ndisk = \"vdb\"\nto = \"/dev/nvme1n5\"\n[[copy]]\ndisk = \"vdc\"\n",
        )
        .unwrap();
        let flags = Rules {
            map: vec![map("/mnt/nfs=/mnt/nfs_second_mount")],
            copy: vec!["vdb=/dev/nvme1n5".parse().unwrap(), "vdc".parse().unwrap()],
        };
        assert_eq!(file, flags);
        assert!(Rules::from_toml("[[copy]]\ndisk=\"vdb\"\nto=\"rel\"").is_err());
        assert!(Rules::from_toml("[[mapp]]\nfrom=\"/a\"\nto=\"/b\"").is_err());
        assert!(Rules::from_toml("[[copy]]\ndisk=\"vdb\"\n[[copy]]\ndisk=\"vdb\"").is_err());
    }
}
