//! What the operator asked of an evacuation, checked before anything is read: the hosts it may
//! empty onto, each link's bandwidth, and the evacuation's start in the journal (one at a time
//! per host).

use super::*;

/// Why an evacuation cannot be asked for as given.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "no target: give --to HOST (repeatable), or an inventory of hosts (--inventory FILE, \
         FERRY_INVENTORY or {})",
        ferry_core::inventory::DEFAULT_PATH
    )]
    NoTarget,
    #[error("the inventory lists no host other than {0}")]
    OnlySource(String),
    #[error("--to {0} is the host being evacuated: its guests must go elsewhere")]
    ToIsSource(String),
    #[error(
        "--to {0} is neither a host of the inventory nor a libvirt URI (hosts: {1}); nothing was \
         read"
    )]
    UnknownHost(String, String),
    #[error("{0} is already being evacuated (see `ferry history`)")]
    AlreadyEvacuating(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The hosts the guests of `host` may go to: those named (`--to`), each a host of the
/// inventory or a libvirt URI and none the host itself; or every other inventory host.
pub fn targets(
    inv: Option<&Inventory>,
    host: &HostSpec,
    to: &[String],
) -> Result<Vec<HostSpec>, AskError> {
    let candidates: Vec<HostSpec> = if to.is_empty() {
        let inv = inv.ok_or(AskError::NoTarget)?;
        inv.hosts
            .iter()
            .filter(|h| h.name != host.name && h.uri != host.uri)
            .map(HostSpec::from_entry)
            .collect()
    } else {
        let mut out = vec![];
        for t in to {
            let known = inv.and_then(|i| i.resolve(t)).is_some();
            if !known && !t.contains(':') {
                let names = inv
                    .map(|i| {
                        i.hosts
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "no inventory".into());
                return Err(AskError::UnknownHost(t.clone(), names));
            }
            let spec = HostSpec::resolve(inv, t);
            if spec.name == host.name || spec.uri == host.uri {
                return Err(AskError::ToIsSource(t.clone()));
            }
            if !out.iter().any(|o: &HostSpec| o.uri == spec.uri) {
                out.push(spec);
            }
        }
        out
    };
    if candidates.is_empty() {
        return Err(AskError::OnlySource(host.name.clone()));
    }
    Ok(candidates)
}

/// Each host's link in MiB/s, by name: the operator's figure for all, else the inventory's
/// `link_bandwidth`; a host with neither is not listed (its bandwidth is not known).
pub fn link_bandwidths<'h>(
    inv: Option<&Inventory>,
    hosts: impl IntoIterator<Item = &'h HostSpec>,
    all: Option<u64>,
) -> Vec<(String, u64)> {
    hosts
        .into_iter()
        .filter_map(|h| {
            let from_inv = inv
                .and_then(|i| i.host(&h.name))
                .and_then(|e| e.link_bandwidth);
            all.or(from_inv).map(|m| (h.name.clone(), m))
        })
        .collect()
}

/// Begin the evacuation of `host` in the journal (it is draining from now on), unless another
/// Ferry is evacuating it (`alive` says whether a Ferry process of this machine lives, as
/// [`crate::ferry_alive`]): its id.
pub fn begin(
    journal: &Journal,
    host: &HostSpec,
    alive: impl Fn(u32) -> bool,
) -> Result<i64, AskError> {
    let draining = draining(journal, alive)?;
    if let Some((n, _)) = draining
        .iter()
        .find(|(n, u)| *n == host.name || *u == host.uri)
    {
        return Err(AskError::AlreadyEvacuating(n.clone()));
    }
    let id = journal.begin_evacuation(&host.name, &host.uri, &crate::lease::me())?;
    crate::lease::keep(journal);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        Inventory::from_toml(
            r#"
            [[host]]
            name = "h1"
            uri = "qemu+tcp://h1/system"
            [[host]]
            name = "h2"
            uri = "qemu+tcp://h2/system"
            link_bandwidth = 100
            [[host]]
            name = "h3"
            uri = "qemu+tcp://h3/system"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_targets_are_the_named_hosts_never_the_source_nor_an_unknown_name() {
        let inv = inv();
        let h1 = HostSpec::resolve(Some(&inv), "h1");
        let names = |v: Vec<HostSpec>| v.into_iter().map(|h| h.name).collect::<Vec<_>>();
        assert_eq!(names(targets(Some(&inv), &h1, &[]).unwrap()), ["h2", "h3"]);
        assert_eq!(
            names(targets(Some(&inv), &h1, &["h3".into(), "h3".into()]).unwrap()),
            ["h3"]
        );
        assert!(matches!(
            targets(Some(&inv), &h1, &["h1".into()]),
            Err(AskError::ToIsSource(_))
        ));
        assert!(matches!(
            targets(Some(&inv), &h1, &["qemu+tcp://h1/system".into()]),
            Err(AskError::ToIsSource(_))
        ));
        assert!(matches!(
            targets(Some(&inv), &h1, &["nosuchhost".into()]),
            Err(AskError::UnknownHost(n, _)) if n == "nosuchhost"
        ));
        // A URI needs no inventory.
        assert_eq!(
            targets(None, &h1, &["qemu+tcp://h9/system".into()])
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(targets(None, &h1, &[]), Err(AskError::NoTarget)));
        // The source given by its URI alone (not resolved to its inventory name): it is still
        // the source, never one of its own targets, by name or by URI.
        let by_uri = HostSpec::uri("qemu+tcp://h1/system");
        assert_eq!(
            names(targets(Some(&inv), &by_uri, &[]).unwrap()),
            ["h2", "h3"]
        );
        assert!(matches!(
            targets(Some(&inv), &by_uri, &["h1".into()]),
            Err(AskError::ToIsSource(_))
        ));
    }

    #[test]
    fn a_link_is_known_from_the_flag_or_the_inventory() {
        let inv = inv();
        let hosts: Vec<HostSpec> = ["h1", "h2", "h3"]
            .iter()
            .map(|n| HostSpec::resolve(Some(&inv), n))
            .collect();
        assert_eq!(
            link_bandwidths(Some(&inv), &hosts, None),
            vec![("h2".to_string(), 100)]
        );
        assert_eq!(link_bandwidths(Some(&inv), &hosts, Some(50)).len(), 3);
    }

    #[test]
    fn a_host_is_evacuated_by_one_ferry_at_a_time() {
        let j = Journal::in_memory().unwrap();
        let h1 = HostSpec::uri("qemu+tcp://h1/system");
        let alive = |_| true;
        begin(&j, &h1, alive).unwrap();
        assert!(matches!(
            begin(&j, &h1, alive),
            Err(AskError::AlreadyEvacuating(_))
        ));
        begin(&j, &HostSpec::uri("qemu+tcp://h2/system"), alive).unwrap();
        // The same host under its inventory name: one host, one evacuation.
        let named = HostSpec {
            name: "h1".into(),
            ..h1.clone()
        };
        assert!(matches!(
            begin(&j, &named, alive),
            Err(AskError::AlreadyEvacuating(_))
        ));
        // Its Ferry gone (on this machine): the host may be evacuated again.
        begin(&j, &h1, |_| false).unwrap();
    }
}
