//! Raw command-line flags (clap derive), in virsh's vocabulary. They are turned into validated
//! values ([`ferry_core::Rules`], [`ferry_core::MigrationOptions`]) before anything runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use ferry_core::convergence::{Fallback, Policy};
use ferry_core::inventory::Inventory;
use ferry_core::limits;
use ferry_core::{CopyRule, MapRule, MigrationOptions, Rules};

/// Ferry live-migrates libvirt guests whose disks mix shared storage (NFS, iSCSI, Ceph: the
/// data stays, only its name on the target differs) and local storage (copied while the guest
/// runs).
///
/// Every disk needs a decision. Ferry reads both hosts' storage pools and decides itself where
/// it can: the same NFS export, iSCSI IQN or Ceph pool is shared; for directory pools, a canary
/// (an empty volume created on the target and looked for on the source) tells. Local disks are
/// copied into a local pool of the target. Flags override: shared storage seen under another
/// name, `--map SRC=DST`; local storage to copy, `--copy DEV[=DST]`. Network disks (rbd, iscsi,
/// gluster, nbd) and empty cdroms need no rule. Ferry refuses, before anything moves, a guest
/// whose disks it cannot place.
///
/// With an inventory of hosts (--inventory FILE, FERRY_INVENTORY, /etc/ferry/inventory.toml),
/// hosts are named by name (`--from kvm1 --to kvm2`), and without --to Ferry ranks every other
/// host and picks the best, saying why not the others.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// A Ferry daemon to run through (`ferry serve` on another machine, or this one).
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Run plan, migrate, evacuate, abort and history through the Ferry daemon at this URL
    /// (`ferry serve`): it reads the hosts and keeps the journal; the output is the same. The
    /// token comes from FERRY_TOKEN or --token-file (an operate token to act, a read token to
    /// look).
    #[arg(long, global = true, value_name = "URL", env = "FERRY_SERVER")]
    pub server: Option<String>,
    /// A file holding the daemon's token (its first line that is not a `#` comment).
    #[arg(long, global = true, value_name = "FILE", env = "FERRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The certificate authority (PEM) that signed the daemon's certificate, when no public
    /// authority did.
    #[arg(long, global = true, value_name = "FILE", env = "FERRY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a migration would do: online from the hosts (GUEST --from HOST), or offline
    /// from domain XML files.
    ///
    /// Online: Ferry reads both hosts (or, without --to, every inventory host), ranks the
    /// possible targets with the reasons each other host cannot take the guest, and derives
    /// each disk's rule from storage identity. Nothing is created except canaries (empty
    /// volumes, deleted at once). Exit status 1 when no host can take the guest.
    ///
    ///   ferry plan myGuest --from kvm1 --inventory hosts.toml
    ///
    /// Offline example (the seed: NFS mounted elsewhere on the target, a local NVMe namespace
    /// copied):
    ///
    ///   virsh dumpxml --migratable myGuest > live.xml
    ///   virsh dumpxml --inactive --migratable myGuest > inactive.xml
    ///   ferry plan --domain-xml live.xml --inactive-xml inactive.xml \
    ///       --to qemu+ssh://host2/system \
    ///       --map /mnt/nfs=/mnt/nfs_second_mount --copy vdb=/dev/nvme1n5 \
    ///       --out-xml target.xml --out-persistent-xml target-persistent.xml
    ///
    /// Prints each disk's decision and why, the migrate_disks list, the flags, the equivalent
    /// `virsh migrate` command and a diff of the XML. Exit status 0 with a plan; 1 with an error
    /// that names the disk and how to settle it.
    #[command(verbatim_doc_comment)]
    Plan(PlanArgs),

    /// Live-migrate a running guest: plan, check both hosts, create the copy targets, migrate
    /// (copying only the local disks), verify — or roll back.
    ///
    /// Example (the seed: NFS mounted elsewhere on the target, a local NVMe namespace copied):
    ///
    ///   ferry migrate myGuest --from qemu:///system --to qemu+ssh://host2/system \
    ///       --map /mnt/nfs=/mnt/nfs_second_mount --copy vdb=/dev/nvme1n5
    ///
    /// Before anything is created or moved, Ferry checks: the guest runs on the source and not
    /// on the target; every rewritten shared path exists on the target with the same size;
    /// every copy target is absent (Ferry creates it, exactly the disk's size, through
    /// libvirt's storage API) or has exactly the disk's size (a larger raw block device is used
    /// through a <slices> storage slice) and is not in use; there is room; nothing is passed
    /// through. Then it migrates with LIVE | PERSIST_DEST | UNDEFINE_SOURCE |
    /// ABORT_ON_ERROR (+ NON_SHARED_DISK when a disk is copied), an explicit migrate_disks list,
    /// and the rewritten live and persistent XML; shows progress; and verifies the guest on the
    /// target. On failure it asks both hosts where the guest runs and, if on the source,
    /// deletes what it created on the target — never anything else.
    ///
    /// Without --to, Ferry ranks every other inventory host (memory with reserve, CPU, arch and
    /// machine, versions, networks, shared stores seen, room for copies, draining) and picks
    /// the best; with --to, the same constraints are checked for that host. Without --map or
    /// --copy, each disk's rule comes from storage identity (pools, canaries).
    ///
    /// Ctrl-C aborts the migration: the guest keeps running on the source.
    ///
    /// Exit status: 0 migrated and verified; 1 not migrated (refused, or failed with the guest
    /// on the source and the target cleaned); 3 the guest is on the target but verification
    /// found a problem, or its place is uncertain (read the message).
    #[command(verbatim_doc_comment)]
    Migrate(MigrateArgs),

    /// Every inventory host: reachable or why not, versions, CPU, memory, guests, pools, shared
    /// stores, migrations running. Hosts are read concurrently. Exit status 0 when every host
    /// answered, 2 when some did not.
    Hosts(HostsArgs),

    /// List Ferry's latest runs from the journal.
    History(HistoryArgs),

    /// Finish every unfinished run in the journal (Ferry killed, a host lost during the
    /// rollback, a --p2p migration that went on without Ferry) from where the hosts say the
    /// guest is now.
    ///
    /// On the target: the run is completed (its disk sources checked, a leftover source
    /// definition undefined, journaled "migrated"). On the source: a job still running is
    /// aborted, and what the run created on the target is deleted — never a volume a domain
    /// uses, never one Ferry did not create. Anywhere else: nothing is touched, and you are told
    /// why. Idempotent; --dry-run prints exactly the steps the real run takes.
    #[command(alias = "cleanup")]
    Recover(RecoverArgs),

    /// Abort a running `ferry migrate` from another terminal: the Ferry running it aborts the
    /// job and rolls back, as after Ctrl-C (the guest stays on the source). Waits for the run
    /// to end and prints its outcome.
    ///
    /// Example: ferry abort lab-guest   (or the run's number from `ferry history`)
    Abort(AbortArgs),

    /// Delete the source's copy of every disk a migrated run copied (see migrate's
    /// --release-source): only when the guest runs on the run's target and no domain on the
    /// source uses it, through the store that would have made it there (libvirt's storage API
    /// for a file or an LV, the inventory's hook for a device). Journaled; never twice.
    Release(ReleaseArgs),

    /// Move every running guest off a host: each to its best target, scheduled under link and
    /// host budgets, retried once on the next-ranked host after a failure.
    ///
    /// Ferry reads every host, ranks the targets of each running guest (as `ferry migrate`
    /// does), and places them all at once: each placement consumes the target's free memory
    /// and local room, so no two guests are promised the same. The host is marked draining
    /// in the journal for the run: no other Ferry command picks it.
    ///
    /// The schedule: the longest migrations first; a link carries as many migrations as fill
    /// it and no more — the next one starts while the current one sends its last seconds, so
    /// its setup overlaps that transfer. With the links' bandwidth known (--link-bandwidth, or
    /// the inventory's link_bandwidth), each migration's bandwidth is set to its share of the
    /// link, and reset when the share changes. Every migration is the whole `ferry migrate`
    /// flow: its own checks, journal run, verification or rollback.
    ///
    ///   ferry evacuate kvm1 --inventory hosts.toml --dry-run
    ///   ferry evacuate kvm1 --link-bandwidth 1100 --max-out 2
    ///
    /// Ctrl-C once: no new migration starts, those running finish. Twice: those running are
    /// aborted and roll back (their guests stay on the host).
    ///
    /// Shut-off guests defined on the host are listed, not moved; with --offline they move
    /// cold.
    ///
    /// Exit status: 0 when no guest runs on the host any more; 1 otherwise (the table says
    /// which guest stayed and why); 3 when a guest's place is uncertain (`ferry recover`).
    #[command(verbatim_doc_comment)]
    Evacuate(EvacuateArgs),

    /// Simulate the evacuation of hosts in a generated fleet and compare scheduling policies
    /// with the model `ferry evacuate` schedules by: serial (one per drained host, as Nova),
    /// 4 workers per host in name order (Proxmox), 2 per host and 5 in the fleet (KubeVirt),
    /// all at once, and Ferry's. Each makespan is shown against the lower bound (the busiest
    /// link's bytes over its bandwidth, or the longest single migration), with the time Ferry
    /// took to place and schedule every guest.
    ///
    /// Example: ferry simulate --hosts 1000 --guests 10000 --drain 100
    Simulate(SimulateArgs),

    /// Run Ferry as a service: an HTTP API over the same flow (plans, migrations, aborts,
    /// runs, hosts), live events over Server-Sent Events, Prometheus metrics, and a page to
    /// watch and drive migrations from a browser.
    ///
    /// Every request needs a bearer token from --tokens (a file: `read TOKEN` or `operate
    /// TOKEN` a line, `#` comments; read tokens look, operate tokens also start and abort).
    /// Request bodies are JSON objects whose keys are `ferry migrate`'s long options:
    ///
    ///   ferry serve --tokens /etc/ferry/tokens --inventory /etc/ferry/inventory.toml
    ///   curl -H "Authorization: Bearer $T" -d '{"guest": "web1", "from": "kvm1"}' \
    ///       http://127.0.0.1:8470/v1/migrations
    ///   curl -N -H "Authorization: Bearer $T" http://127.0.0.1:8470/v1/events
    ///
    /// The page is at http://ADDR/ (paste a token, or open http://ADDR/#token=TOKEN); the API's
    /// OpenAPI document at /v1/openapi.json.
    ///
    /// With --tls-cert and --tls-key it serves HTTPS on any address; plain HTTP listens on
    /// loopback only, unless --insecure-listen says otherwise. SIGTERM (or Ctrl-C): no new work; the running migrations finish. A
    /// second SIGTERM aborts them (each rolls back, the guests stay on their sources).
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: ferry completions bash > /etc/bash_completion.d/ferry
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff).
    ///
    /// Example: ferry man > /usr/local/share/man/man1/ferry.1
    Man,
}

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// The host to empty: an inventory host's name (or a libvirt URI).
    pub host: String,
    /// The hosts the guests may go to (repeatable). Default: every other inventory host.
    #[arg(long, value_name = "HOST")]
    pub to: Vec<String>,
    /// Migrations out of one host at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = within(limits::CONCURRENCY))]
    pub max_out: u64,
    /// Migrations into one host at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = within(limits::CONCURRENCY))]
    pub max_in: u64,
    /// Every host's link for migrations, MiB/s each way (overrides the inventory's
    /// link_bandwidth): shared among the migrations running on it.
    #[arg(long, value_name = "MiB/s", value_parser = within(limits::LINK_MIB))]
    pub link_bandwidth: Option<u64>,
    /// ferry: Ferry's schedule; all-at-once: every migration started at once, within
    /// --max-out and --max-in (for comparison).
    #[arg(long, value_enum, default_value_t = Schedule::Ferry)]
    pub schedule: Schedule,
    /// Do not retry a failed migration on the next-ranked host.
    #[arg(long)]
    pub no_retry: bool,
    /// Move the shut-off guests too, cold: their local disks copied through libvirt's storage
    /// streams into volumes created at the exact size, their definition (sources rewritten)
    /// defined on the target, then undefined here.
    #[arg(long)]
    pub offline: bool,
    /// Show the placement and the predicted schedule; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON lines on stdout: one object per event, then one with the result.
    #[arg(long)]
    pub json: bool,
    /// A host not read within this many seconds is reported as not answering.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub migration: MigrationArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// How `ferry evacuate` orders and starts migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    Ferry,
    AllAtOnce,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Hosts in the fleet (512 GiB each).
    #[arg(long, default_value_t = 1000, value_parser = within(SIM_HOSTS))]
    pub hosts: u64,
    /// Guests, spread evenly (memory 2-32 GiB; 60 % with a local disk of 20-200 GiB).
    #[arg(long, default_value_t = 10000, value_parser = within(SIM_GUESTS))]
    pub guests: u64,
    /// How many hosts are drained at once (the first N).
    #[arg(long, default_value_t = 100, value_parser = within(SIM_DRAIN))]
    pub drain: u64,
    /// Every host's link, Gbit/s each way.
    #[arg(long, value_name = "GBIT/S", default_value_t = 10.0, value_parser = link_gbit)]
    pub link_gbit: f64,
    /// The fleet generator's seed (the same seed, the same fleet).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// The inventory of hosts.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The inventory of hosts (TOML: [[host]] name, uri, state, reserve_memory,
    /// migration_address, labels, link_bandwidth, [[host.local_store]] pool or hook;
    /// [[shared_store]] name,
    /// paths).
    /// Default: /etc/ferry/inventory.toml when it exists. See examples/inventory.toml.
    #[arg(long, value_name = "FILE", env = "FERRY_INVENTORY")]
    pub inventory: Option<PathBuf>,
}

/// Where the inventory is read from when none is given.
pub const DEFAULT_INVENTORY: &str = ferry_core::inventory::DEFAULT_PATH;

impl InventoryArgs {
    /// The inventory named by FERRY_INVENTORY (or the default), for a command that takes no
    /// --inventory.
    pub fn from_env() -> Self {
        Self {
            inventory: std::env::var_os("FERRY_INVENTORY").map(PathBuf::from),
        }
    }

    /// The inventory's `[journal]` url, if it names one (read alone: an inventory with no host
    /// yet still gives it).
    pub fn journal(&self) -> anyhow::Result<Option<String>> {
        let Some((path, text, _)) = self.text()? else {
            return Ok(None);
        };
        Ok(ferry_core::inventory::JournalSection::from_toml(&text)
            .with_context(|| format!("in the inventory {}", path.display()))?
            .map(|j| j.url))
    }

    /// The inventory, if one is given or the default exists.
    pub fn load(&self) -> anyhow::Result<Option<Inventory>> {
        let Some((path, text, default)) = self.text()? else {
            return Ok(None);
        };
        match Inventory::from_toml(&text) {
            // The default file with no host yet (the package's, every line commented): no
            // inventory. One given by name must have hosts.
            Err(ferry_core::inventory::InventoryError::Empty) if default => Ok(None),
            r => r
                .map(Some)
                .with_context(|| format!("in the inventory {}", path.display())),
        }
    }

    /// The inventory file's path and text, and whether it is the default one; `None` when none
    /// is given and the default does not exist.
    fn text(&self) -> anyhow::Result<Option<(PathBuf, String, bool)>> {
        let (path, default) = match &self.inventory {
            Some(p) => (p.clone(), false),
            None if std::path::Path::new(DEFAULT_INVENTORY).exists() => {
                (PathBuf::from(DEFAULT_INVENTORY), true)
            }
            None => return Ok(None),
        };
        let text = crate::input::read_text(
            &path,
            "inventory",
            crate::input::MAX_CONFIG,
            crate::input::Accept::File,
        )?;
        Ok(Some((path, text, default)))
    }
}

#[derive(Debug, Args)]
pub struct HostsArgs {
    #[arg(long)]
    pub json: bool,
    /// A host not read within this many seconds is reported as not answering.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub inventory: InventoryArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The guest's name.
    pub guest: String,
    /// The source host: a libvirt URI or an inventory host's name.
    #[arg(long, value_name = "HOST", default_value = "qemu:///system")]
    pub from: String,
    /// The target host: a libvirt URI or an inventory host's name. Without it, Ferry ranks
    /// every other inventory host and picks the best.
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub migration: MigrationArgs,
    /// Print the plan and the equivalent virsh command after the checks; create and move
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON lines on stdout: one object per event, then one with the result.
    #[arg(long)]
    pub json: bool,
    /// Abort the migration if it has not finished after this many seconds (counted from the
    /// start of the run). Before anything is created, Ferry stops at once, naming the host it
    /// waits on.
    #[arg(long, value_name = "SECONDS", value_parser = within(limits::RUN_TIMEOUT_S))]
    pub timeout: Option<u64>,
    /// Give up on a host whose libvirt connection does not open within this many seconds (a
    /// host that accepts TCP and never answers would otherwise block for good).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    /// After a verified migration, delete the source's copy of every disk Ferry copied, after
    /// AFTER seconds of grace (default 0; Ctrl-C in the grace keeps them) — only those, only
    /// when no domain on the source uses them, through the store that would have made them
    /// there. `ferry release RUN` does the same later.
    #[arg(long, value_name = "AFTER", num_args = 0..=1, default_missing_value = "0")]
    pub release_source: Option<u64>,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen, ADDRESS:PORT.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8470")]
    pub listen: std::net::SocketAddr,
    /// The tokens file: `read TOKEN` or `operate TOKEN` a line (at least 16 characters each),
    /// `#` comments.
    #[arg(long, value_name = "FILE", env = "FERRY_TOKENS")]
    pub tokens: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen with plain HTTP on an address other than loopback (the tokens then cross the
    /// network in clear: only behind a TLS proxy, or on a network you trust).
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_listen: bool,
    /// How long a host's libvirt connection may take to open.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Ferry's journal: every run, every volume it created, the guests' locks. A file (SQLite),
    /// or a PostgreSQL database every Ferry of a fleet shares
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DB; its password is never printed). Default: the
    /// inventory's [journal] url, else /var/lib/ferry/journal.db.
    #[arg(
        long = "journal",
        id = "journal",
        value_name = "FILE",
        env = "FERRY_JOURNAL"
    )]
    pub given: Option<PathBuf>,
    /// The journal in use: `given`, or the inventory's, or the default ([`JournalArgs::resolve`]).
    #[arg(skip)]
    pub journal: PathBuf,
    /// This Ferry's name in the journal (the machine's name by default): the instance that
    /// holds a guest's lock or a draining host, as other Ferry instances sharing the journal
    /// see it.
    #[arg(long, value_name = "NAME", env = "FERRY_INSTANCE")]
    pub instance: Option<String>,
    /// How long this Ferry's leases (the locks of the guests it migrates, the hosts it
    /// evacuates) hold unless renewed; they are renewed every third of it. Another Ferry takes
    /// over a lease that expired — its holder died, hangs, or lost the journal — and a Ferry
    /// that finds its lease taken stops touching that guest.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FERRY_LEASE",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(3..=3600)
    )]
    pub lease: u64,
}

/// The journal when neither --journal nor the inventory names one.
pub const DEFAULT_JOURNAL: &str = "/var/lib/ferry/journal.db";

impl JournalArgs {
    /// Settle the journal in use — --journal (or FERRY_JOURNAL), else the `[journal]` of the
    /// inventory `inventory` names (or the default inventory, when it exists), else
    /// [`DEFAULT_JOURNAL`] — and name this process's instance and lease term in it, before any
    /// lease is taken.
    pub fn resolve(&mut self, inventory: &InventoryArgs) -> anyhow::Result<()> {
        self.journal = match &self.given {
            Some(p) => p.clone(),
            None => inventory
                .journal()?
                .map_or_else(|| PathBuf::from(DEFAULT_JOURNAL), PathBuf::from),
        };
        ferry_migrate::lease::configure(
            self.instance.clone(),
            std::time::Duration::from_secs(self.lease),
        );
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many runs (and evacuations), newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub last: u32,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The run's number (`ferry history`).
    pub id: i64,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up on a host that has not answered within this many seconds (one that accepts
    /// TCP and never answers would otherwise block for good).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The run's number, or the name of the guest it migrates.
    #[arg(value_name = "ID|GUEST")]
    pub which: String,
    /// Wait at most this long for the run to end.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub wait: u64,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Only this run (its number in `ferry history`).
    pub id: Option<i64>,
    /// Say what would be done, do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per run: its guest, where it is, the steps, and which failed.
    #[arg(long)]
    pub json: bool,
    /// Give up on a host that has not answered within this many seconds (one that accepts
    /// TCP and never answers would otherwise block for good).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The guest's name, read from --from (online). Not with --domain-xml.
    #[arg(conflicts_with = "domain_xml", requires = "from")]
    pub guest: Option<String>,
    /// The source host (online): a libvirt URI or an inventory host's name.
    #[arg(long, value_name = "HOST")]
    pub from: Option<String>,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// The guest's live domain XML (`virsh dumpxml --migratable GUEST`), offline.
    #[arg(long, value_name = "LIVE.xml", required_unless_present = "guest")]
    pub domain_xml: Option<PathBuf>,
    /// The guest's persistent XML (`virsh dumpxml --inactive --migratable GUEST`). The same
    /// rules are applied to it; libvirt defines it on the target (--persistent-xml), so the
    /// guest still boots there after its next cold start.
    #[arg(long, value_name = "INACTIVE.xml")]
    pub inactive_xml: Option<PathBuf>,
    /// The target host: a libvirt URI (qemu+ssh://host2/system) or an inventory host's name.
    /// Offline, required; online, without it every other inventory host is ranked.
    #[arg(long, value_name = "HOST", required_unless_present = "guest")]
    pub to: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub migration: MigrationArgs,
    /// Write the destination live XML here (virsh's --xml).
    #[arg(long, value_name = "FILE")]
    pub out_xml: Option<PathBuf>,
    /// Write the destination persistent XML here (virsh's --persistent-xml); offline it needs
    /// --inactive-xml.
    #[arg(long, value_name = "FILE")]
    pub out_persistent_xml: Option<PathBuf>,
    /// Print the plan as one JSON object (disks with decisions, migrate_disks, flags, virsh).
    #[arg(long)]
    pub json: bool,
    /// Leave the XML diff out of the printed plan.
    #[arg(long)]
    pub no_diff: bool,
    /// Online: a host not read within this many seconds is reported as not answering.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = within(limits::CONNECT_TIMEOUT_S))]
    pub connect_timeout: u64,
}

/// Storage rules: how the target host sees each disk.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Shared storage the target sees under another name: SRC and DST are path prefixes matched
    /// on whole components (/mnt/nfs=/mnt/nfs_second_mount) or whole device paths
    /// (/dev/sdb2=/dev/sdb5). A matched disk is not copied; its <source> is rewritten.
    /// For <disk type='volume'>, POOL=POOL2 names storage pools. Repeatable.
    #[arg(long = "map", value_name = "SRC=DST")]
    pub map: Vec<MapRule>,
    /// Copy the disk whose <target dev> is DEV to DST on the target (a file, or a block device
    /// under /dev). Without =DST, Ferry places the copy in a local store of the target with room
    /// (GUEST-DISK.img in a pool, an LV, or a hook's volume); offline (--domain-xml) the path
    /// stays the same. Repeatable.
    #[arg(long = "copy", value_name = "DEV[=DST]")]
    pub copy: Vec<CopyRule>,
    /// A TOML file of rules with the same meaning: [[map]] from/to, [[copy]] disk/to.
    /// Flags add to it.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

/// How libvirt migrates.
#[derive(Debug, Args)]
pub struct MigrationArgs {
    /// Cap the whole migration at this many MiB/s (disk copy and memory). libvirt applies its
    /// figure to each disk mirror, so Ferry divides it among the copied disks.
    #[arg(long, value_name = "MiB/s", value_parser = within(limits::BANDWIDTH_MIB))]
    pub bandwidth: Option<u64>,
    /// Peer-to-peer: the source libvirtd talks to the target's (VIR_MIGRATE_PEER2PEER).
    #[arg(long)]
    pub p2p: bool,
    /// Encrypt the migration streams with TLS (VIR_MIGRATE_TLS).
    #[arg(long)]
    pub tls: bool,
    /// Skip libvirt's safety checks on disk caching and shared storage (VIR_MIGRATE_UNSAFE).
    /// Needed when the shared storage is not a filesystem libvirt recognises as shared.
    #[arg(long = "unsafe")]
    pub unsafe_: bool,
    /// Where the target's QEMU listens for the memory stream (virsh --migrateuri), e.g.
    /// tcp://10.0.0.2.
    #[arg(long, value_name = "URI")]
    pub migrate_uri: Option<String>,
    /// Where the target's NBD server listens for the disk copy (virsh --disks-uri), e.g.
    /// tcp://10.0.0.2:49153.
    #[arg(long, value_name = "URI")]
    pub disks_uri: Option<String>,
    /// The disk mirrors hold each guest write until the target has it
    /// (VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES): the copy of a guest that writes hard
    /// converges, at the cost of the guest's write latency during the copy.
    #[arg(long)]
    pub copy_storage_synchronous_writes: bool,
    /// Pre-seed the copied disks before the live phase, and refuse what cannot be: freeze each
    /// onto a qcow2 overlay in --preseed-store on the source, copy the frozen disk to the target
    /// outside the migration job (zero chunks cross as holes, then chunks read back and
    /// compared: --preseed-verify), then migrate only what the guest wrote since
    /// (VIR_MIGRATE_NON_SHARED_INC) and commit the overlay into the disk where the guest runs:
    /// the live phase no longer grows with the disk. A stopped pre-seed resumes at its last
    /// 64 MiB window when the same command runs again. Ferry relays the copy: run it on the
    /// source host (--from qemu:///system), or the relay's download carries the zeros too. For
    /// raw file or block-device disks of a running guest. By default (neither flag) Ferry
    /// pre-seeds when the copied disks hold 1 GiB or more and nothing refuses it, and copies
    /// inside the job otherwise, saying which.
    #[arg(long, conflicts_with = "no_preseed")]
    pub preseed: bool,
    /// Never pre-seed: every copied disk crosses inside the migration job.
    #[arg(long)]
    pub no_preseed: bool,
    /// Where pre-seeding keeps the overlays while the guest runs on them: a directory on both
    /// hosts (a storage pool's, or one Ferry makes a transient pool of), with room for a tenth
    /// of the copied disks [default: the inventory's [preseed] store, else
    /// /var/lib/libvirt/images].
    #[arg(long, value_name = "DIR", conflicts_with = "no_preseed")]
    pub preseed_store: Option<String>,
    /// Which pre-seeded chunks are read back from the target and compared with what was sent:
    /// all (the whole volume crosses the wire again), sample (the first, last and every 16th
    /// chunk), none [default: the inventory's [preseed] verify, else sample].
    #[arg(long, value_name = "WHICH", conflicts_with = "no_preseed",
          value_parser = clap::builder::PossibleValuesParser::new(["all", "sample", "none"])
              .try_map(|s| s.parse::<ferry_core::preseed::Verify>()))]
    pub preseed_verify: Option<ferry_core::preseed::Verify>,
    #[command(flatten)]
    pub convergence: ConvergenceArgs,
}

/// The convergence policy, per call (over the inventory's [convergence] section and the
/// defaults).
#[derive(Debug, Args)]
#[command(next_help_heading = "Convergence")]
pub struct ConvergenceArgs {
    /// The max downtime set when the job starts, in ms [default: 100]. It doubles after each
    /// memory pass that brings the remaining bytes to no new low, up to --max-downtime-cap.
    #[arg(long, value_name = "MS", value_parser = within(limits::DOWNTIME_MS))]
    pub max_downtime: Option<u64>,
    /// The cap of the downtime's escalation, in ms [default: 2000].
    #[arg(long, value_name = "MS", value_parser = within(limits::DOWNTIME_MS))]
    pub max_downtime_cap: Option<u64>,
    /// Let QEMU throttle the guest's vCPUs while memory does not converge
    /// (VIR_MIGRATE_AUTO_CONVERGE).
    #[arg(long)]
    pub auto_converge: bool,
    /// The completion timeout: seconds per GiB of RAM plus copied disk [default: 800, never
    /// less than 120 s in all].
    #[arg(long, value_name = "SECONDS", value_parser = within(limits::TIMEOUT_PER_GIB_S))]
    pub timeout_per_gib: Option<u64>,
    /// A stall: the remaining bytes of the storage copy, or of memory, reach no new low for
    /// this many seconds [default: 120].
    #[arg(long, value_name = "SECONDS", value_parser = within(limits::STALL_S))]
    pub stall_timeout: Option<u64>,
    /// What to do with a migration that times out or stalls [default: abort]: abort (the guest
    /// stays on the source), postcopy (the guest runs on the target at once and fetches the
    /// rest; a host or link failure then loses it; memory phase only, a stalled disk copy is
    /// aborted), pause (pause the guest and let the copy finish).
    #[arg(long, value_name = "ACTION",
          value_parser = clap::builder::PossibleValuesParser::new(Fallback::NAMES)
              .try_map(|s| s.parse::<Fallback>()))]
    pub fallback: Option<Fallback>,
}

impl ConvergenceArgs {
    /// `base` (the inventory's policy, or the defaults) with the flags given on top.
    pub fn policy(&self, base: &Policy) -> Policy {
        let mut p = base.clone();
        if let Some(v) = self.max_downtime {
            p.downtime_ms = v;
        }
        if let Some(v) = self.max_downtime_cap {
            p.downtime_max_ms = v;
        }
        p.auto_converge |= self.auto_converge;
        if let Some(v) = self.timeout_per_gib {
            p.timeout_per_gib_s = v;
        }
        if let Some(v) = self.stall_timeout {
            p.stall_s = v;
        }
        if let Some(v) = self.fallback {
            p.fallback = v;
        }
        p.downtime_max_ms = p.downtime_max_ms.max(p.downtime_ms);
        p
    }
}

impl StorageArgs {
    /// The rules file (if any) with the flags added on top.
    pub fn rules(&self) -> anyhow::Result<Rules> {
        let mut rules = match &self.rules {
            Some(p) => {
                let text = crate::input::read_text(
                    p,
                    "rules file",
                    crate::input::MAX_CONFIG,
                    crate::input::Accept::File,
                )?;
                Rules::from_toml(&text)
                    .with_context(|| format!("in the rules file {}", p.display()))?
            }
            None => Rules::default(),
        };
        rules.extend(Rules {
            map: self.map.clone(),
            copy: self.copy.clone(),
        })?;
        Ok(rules)
    }
}

impl MigrationArgs {
    /// The options: the flags over the inventory's convergence policy (or the defaults).
    pub fn options(&self, inv: Option<&Inventory>) -> MigrationOptions {
        let base = inv.map(|i| i.convergence.clone()).unwrap_or_default();
        MigrationOptions {
            sync_writes: self.copy_storage_synchronous_writes,
            policy: self.convergence.policy(&base),
            p2p: self.p2p,
            tls: self.tls,
            unsafe_: self.unsafe_,
            bandwidth_mib: self.bandwidth,
            migrate_uri: self.migrate_uri.clone(),
            disks_uri: self.disks_uri.clone(),
            preseed: self.preseed(inv),
        }
    }
}

impl MigrationArgs {
    /// Pre-seeding: the flags over the inventory's `[preseed]` (or the defaults).
    fn preseed(&self, inv: Option<&Inventory>) -> Option<ferry_core::preseed::Preseed> {
        use ferry_core::inventory::PreseedMode;
        let sec = inv.map(|i| i.preseed.clone()).unwrap_or_default();
        let mode = match (self.preseed, self.no_preseed) {
            (true, _) => PreseedMode::Always,
            (_, true) => PreseedMode::Never,
            _ => sec.mode,
        };
        (mode != PreseedMode::Never).then(|| ferry_core::preseed::Preseed {
            store: self.preseed_store.clone().unwrap_or(sec.store),
            verify: self.preseed_verify.unwrap_or(sec.verify),
            bandwidth_mib: self.bandwidth,
            auto_from: (mode == PreseedMode::Auto).then_some(sec.from.0),
        })
    }
}

/// A flag's value parser from the one table of bounds ([`limits`]): a flag and the inventory
/// refuse the same values.
fn within(b: limits::Bound) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(b.min..=b.max)
}

/// `ferry simulate`'s fleet: what fits this machine's memory (about 1.2 KiB a guest).
const SIM_HOSTS: limits::Bound = limits::Bound {
    what: "hosts",
    min: 2,
    max: 100_000,
};
const SIM_DRAIN: limits::Bound = limits::Bound {
    what: "drained hosts",
    min: 1,
    max: 100_000,
};
const SIM_GUESTS: limits::Bound = limits::Bound {
    what: "guests",
    min: 0,
    max: 1_000_000,
};

/// Why `--link-gbit` was refused.
#[derive(Debug, thiserror::Error)]
enum LinkGbitError {
    #[error("{0:?} is not a number")]
    NotANumber(String, #[source] std::num::ParseFloatError),
    #[error("a link is from 0.001 to 10000 Gbit/s, not {0}")]
    OutOfBounds(f64),
}

/// A link of 0.001 to 10,000 Gbit/s.
fn link_gbit(s: &str) -> Result<f64, LinkGbitError> {
    let v: f64 = s
        .parse()
        .map_err(|e| LinkGbitError::NotANumber(s.to_string(), e))?;
    if (0.001..=10_000.0).contains(&v) {
        Ok(v)
    } else {
        Err(LinkGbitError::OutOfBounds(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn map_and_copy_flags_are_validated_while_parsing() {
        let e = Cli::try_parse_from([
            "ferry",
            "plan",
            "--domain-xml",
            "x",
            "--to",
            "u",
            "--map",
            "nfs",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("SRC=DST"), "{e}");
        let ok = Cli::try_parse_from([
            "ferry",
            "plan",
            "--domain-xml",
            "x",
            "--to",
            "u",
            "--map",
            "/a=/b",
            "--copy",
            "vdb",
        ])
        .unwrap();
        let Command::Plan(p) = ok.command else {
            panic!("not plan")
        };
        assert_eq!(p.storage.rules().unwrap().copy[0].disk, "vdb");
    }

    #[test]
    fn convergence_flags_override_the_inventorys_policy() {
        let parse = |extra: &[&str]| {
            let mut a = vec!["ferry", "plan", "--domain-xml", "x", "--to", "u"];
            a.extend_from_slice(extra);
            Cli::try_parse_from(a)
        };
        let Command::Plan(p) = parse(&["--fallback", "pause", "--max-downtime", "50"])
            .unwrap()
            .command
        else {
            panic!("not plan")
        };
        let base = Policy {
            stall_s: 30,
            fallback: Fallback::Postcopy,
            ..Policy::default()
        };
        let got = p.migration.convergence.policy(&base);
        assert_eq!(got.fallback, Fallback::Pause);
        assert_eq!(got.downtime_ms, 50);
        assert_eq!(
            got.stall_s, 30,
            "what no flag names comes from the inventory"
        );
        let e = parse(&["--fallback", "pray"]).unwrap_err().to_string();
        assert!(e.contains("abort") && e.contains("postcopy"), "{e}");
        let Command::Plan(p) = parse(&["--max-downtime", "5000"]).unwrap().command else {
            panic!("not plan")
        };
        assert_eq!(
            p.migration
                .convergence
                .policy(&Policy::default())
                .downtime_max_ms,
            5000,
            "the cap is never below the start"
        );
    }

    #[test]
    fn bandwidth_zero_is_refused() {
        assert!(Cli::try_parse_from([
            "ferry",
            "plan",
            "--domain-xml",
            "x",
            "--to",
            "u",
            "--bandwidth",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn preseed_flags_override_the_inventorys_section() {
        use ferry_core::inventory::PreseedMode;
        use ferry_core::preseed::Verify;
        let options = |extra: &[&str], inv: Option<&Inventory>| {
            let mut a = vec!["ferry", "plan", "--domain-xml", "x", "--to", "u"];
            a.extend_from_slice(extra);
            let Command::Plan(p) = Cli::try_parse_from(a).unwrap().command else {
                panic!("not plan")
            };
            p.migration.options(inv).preseed
        };
        let mut inv =
            Inventory::from_toml("[[host]]\nname = \"a\"\nuri = \"qemu:///system\"\n").unwrap();
        // The defaults: auto from 1 GiB, the default store, a sample read back.
        let d = options(&[], None).unwrap();
        assert_eq!(d.auto_from, Some(ferry_core::preseed::AUTO_MIN_BYTES));
        assert_eq!(
            (d.store.as_str(), d.verify),
            ("/var/lib/libvirt/images", Verify::Sample)
        );
        inv.preseed.mode = PreseedMode::Never;
        assert_eq!(options(&[], Some(&inv)), None);
        let forced = options(&["--preseed"], Some(&inv)).unwrap();
        assert_eq!(forced.auto_from, None, "--preseed asks: never auto");
        inv.preseed.mode = PreseedMode::Always;
        inv.preseed.store = "/srv/s".into();
        inv.preseed.verify = Verify::All;
        let from_inv = options(&[], Some(&inv)).unwrap();
        assert_eq!(
            (from_inv.auto_from, from_inv.store.as_str(), from_inv.verify),
            (None, "/srv/s", Verify::All)
        );
        assert_eq!(options(&["--no-preseed"], Some(&inv)), None);
        let flags = options(
            &["--preseed-store", "/x", "--preseed-verify", "none"],
            Some(&inv),
        )
        .unwrap();
        assert_eq!((flags.store.as_str(), flags.verify), ("/x", Verify::None));
    }
}
