//! The boundary between Ferry and the hypervisor hosts.
//!
//! [`Hypervisor`] is everything Ferry asks of a libvirt host. [`libvirt::Libvirt`] implements it
//! over the official bindings (the `virt` crate); [`fake::Fake`] records calls and answers from
//! a script, for unit tests of the migration flow (never as proof that migration works: that is
//! the lab's job).

pub mod fake;
pub mod libvirt;
/// The one way to wait (its own crate, so that the journal waits the same way).
pub use ferry_wait as wait;

/// A path's directory and last component (`/a/b` → `/a`, `b`; `/b` → `/`, `b`).
pub fn split_path(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", base)) => ("/", base),
        Some((dir, base)) => (dir, base),
        None => (".", path),
    }
}

/// A connected host, as handed out by [`Hypervisor::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(pub usize);

/// Why a call to a host failed. Every message names the host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("{host}: {what}: {message}")]
    Libvirt {
        host: String,
        what: String,
        message: String,
        /// libvirt's error code (`virErrorNumber`), 0 when not from libvirt.
        code: i32,
    },
    #[error("{host}: domain {name} not found")]
    NoDomain { host: String, name: String },
    #[error("{host}: the connection is lost")]
    ConnectionLost { host: String },
}

pub use ferry_core::facts::{
    CpuCompat, CpuQuery, DiskSize, DomainState, GuestFacts, HostFacts, PathInfo, PathKind,
    PathProbe, PoolFacts,
};

pub use ferry_core::convergence::JobStats;

/// libvirt migration flags (`virDomainMigrateFlags`), by name.
pub use ferry_core::plan::Flags as MigrateFlags;

/// One migration call.
#[derive(Debug, Clone, Default)]
pub struct MigrateRequest {
    pub flags: MigrateFlags,
    /// The target's libvirt URI (used by peer-to-peer migration).
    pub dest_uri: String,
    /// Target dev names of the disks to copy; always explicit.
    pub migrate_disks: Vec<String>,
    pub dest_xml: String,
    pub persist_xml: Option<String>,
    /// libvirt's bandwidth figure in MiB/s (applied per stream).
    pub bandwidth_mib: Option<u64>,
    pub migrate_uri: Option<String>,
    pub disks_uri: Option<String>,
}

/// Everything Ferry needs from the hosts.
///
/// All methods take `&self` and may be called from several threads at once (one runs the
/// blocking [`Hypervisor::migrate`], another polls [`Hypervisor::job_stats`], a third may call
/// [`Hypervisor::abort_job`]).
pub trait Hypervisor: Send + Sync {
    /// Open a connection to a libvirt URI (qemu+tcp, qemu+ssh, qemu+tls, qemu:///system), with
    /// keepalive.
    fn connect(&self, uri: &str) -> Result<HostId, HvError>;
    /// The URI a host was connected with.
    fn uri(&self, host: HostId) -> String;
    fn host_facts(&self, host: HostId) -> Result<HostFacts, HvError>;
    /// The domain's state, or `None` when the host has no such domain (neither running nor
    /// defined).
    fn domain_state(&self, host: HostId, name: &str) -> Result<Option<DomainState>, HvError>;
    /// The domain's migratable XML: live, or the persistent definition with `inactive`.
    fn domain_xml(&self, host: HostId, name: &str, inactive: bool) -> Result<String, HvError>;
    /// Names of every domain on the host, running or defined.
    fn list_domains(&self, host: HostId) -> Result<Vec<String>, HvError>;
    /// A running domain's disk size (by target dev).
    fn disk_size(&self, host: HostId, name: &str, target: &str) -> Result<DiskSize, HvError>;
    /// What a path is on the host.
    fn probe_path(&self, host: HostId, path: &str) -> Result<PathProbe, HvError>;
    /// Create a volume (a file) of exactly `capacity` bytes in `format` at `path`.
    fn create_volume(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        format: &str,
    ) -> Result<(), HvError>;
    /// Delete the volume at `path`.
    fn delete_volume(&self, host: HostId, path: &str) -> Result<(), HvError>;
    /// Migrate `name` from `src` to `dst`; blocks until libvirt says the job is over.
    fn migrate(
        &self,
        src: HostId,
        dst: HostId,
        name: &str,
        req: &MigrateRequest,
    ) -> Result<(), HvError>;
    /// The running job's statistics, `None` when no job runs.
    fn job_stats(&self, host: HostId, name: &str) -> Result<Option<JobStats>, HvError>;
    /// The statistics of the last completed job: from the source's job-completed event when it
    /// came, otherwise as the host still has them.
    fn completed_job_stats(&self, host: HostId, name: &str) -> Result<Option<JobStats>, HvError>;
    /// Abort the domain's running job.
    fn abort_job(&self, host: HostId, name: &str) -> Result<(), HvError>;
    /// Change the bandwidth of the running migration (MiB/s).
    fn set_max_speed(&self, host: HostId, name: &str, mib: u64) -> Result<(), HvError>;
    /// Change the running migration's max downtime (ms).
    fn set_max_downtime(&self, host: HostId, name: &str, ms: u64) -> Result<(), HvError>;
    /// Switch the running migration to post-copy (it must have been started with POSTCOPY).
    fn start_postcopy(&self, host: HostId, name: &str) -> Result<(), HvError>;
    /// Pause the domain (`virDomainSuspend`).
    fn suspend(&self, host: HostId, name: &str) -> Result<(), HvError>;
    /// Remove the domain's persistent definition (`virDomainUndefine`).
    fn undefine(&self, host: HostId, name: &str) -> Result<(), HvError>;
    /// Define a domain from its XML (`virDomainDefineXML`): persistent, not started.
    fn define(&self, host: HostId, xml: &str) -> Result<(), HvError>;
    /// Copy the first `bytes` of the volume at `src_path` on `src` into the volume at
    /// `dst_path` on `dst`, through libvirt's storage streams (download there, upload here).
    fn copy_volume(
        &self,
        src: HostId,
        src_path: &str,
        dst: HostId,
        dst_path: &str,
        bytes: u64,
    ) -> Result<(), HvError>;

    /// Read `len` bytes of the volume at `path` from `offset` on, through a storage stream
    /// (`virStorageVolDownload`).
    fn read_volume(
        &self,
        host: HostId,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn VolumeReader>, HvError>;
    /// Write `len` bytes of the volume at `path` from `offset` on, through a sparse storage
    /// stream (`virStorageVolUpload` with `SPARSE_STREAM`): data, and runs of zeros sent as
    /// holes (libvirt writes zeros for a hole on a block device, punches one in a file).
    fn write_volume(
        &self,
        host: HostId,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn VolumeWriter>, HvError>;
    /// Freeze disks of a running domain: an external disk-only snapshot without metadata,
    /// each disk of `overlays` (target dev, overlay path) onto a new qcow2 overlay that libvirt
    /// creates; every disk of `keep` is left as it is. The guest's writes go to the overlays.
    fn freeze_disks(
        &self,
        host: HostId,
        name: &str,
        overlays: &[(String, String)],
        keep: &[String],
    ) -> Result<(), HvError>;
    /// Create a qcow2 overlay at `path` of `capacity` bytes whose backing image is `backing`
    /// (in format `backing_format`), through the storage API.
    fn create_overlay(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        backing: &str,
        backing_format: &str,
    ) -> Result<(), HvError>;
    /// Commit the active overlay of `disk` into its backing image and pivot the guest onto it
    /// (`virDomainBlockCommit` with `ACTIVE`, then `virDomainBlockJobAbort` with `PIVOT`); waits
    /// at most `within` for the commit to be ready.
    fn commit_active(
        &self,
        host: HostId,
        name: &str,
        disk: &str,
        within: std::time::Duration,
    ) -> Result<(), HvError>;

    /// Every domain on the host with its memory and whether a job runs for it.
    fn guests(&self, host: HostId) -> Result<Vec<GuestFacts>, HvError>;
    /// Every storage pool on the host, with what its definition says about its storage.
    fn pools(&self, host: HostId) -> Result<Vec<PoolFacts>, HvError>;
    /// The names of the host's active virtual networks.
    fn networks(&self, host: HostId) -> Result<Vec<String>, HvError>;
    /// Whether the host's hypervisor can give a guest this CPU
    /// (`virConnectCompareHypervisorCPU`).
    fn compare_cpu(&self, host: HostId, q: &CpuQuery) -> Result<CpuCompat, HvError>;
    /// Create a uniquely named empty volume (a canary) in directory `dir` through the storage
    /// API; `None` when the directory does not exist there.
    fn canary_create(&self, host: HostId, dir: &str) -> Result<Option<String>, HvError>;
    /// Whether the volume `name` is in directory `dir` (after refreshing its pool).
    fn canary_seen(&self, host: HostId, dir: &str, name: &str) -> Result<bool, HvError>;
    /// Delete a canary created by [`Hypervisor::canary_create`].
    fn canary_delete(&self, host: HostId, dir: &str, name: &str) -> Result<(), HvError>;

    /// The hosts a call is waiting on right now (connections being opened), with how long it
    /// has waited: to name a host that does not answer.
    fn waiting_on(&self) -> Vec<(String, std::time::Duration)> {
        Vec::new()
    }
}

/// A volume read through a storage stream.
pub trait VolumeReader: Send {
    /// Fill `buf` (or part of it) with the next bytes; `Ok(0)` at the end of the range.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, HvError>;
    /// End the stream (it must have been read to its end).
    fn finish(self: Box<Self>) -> Result<(), HvError>;
}

/// A volume written through a sparse storage stream.
pub trait VolumeWriter: Send {
    /// The next bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), HvError>;
    /// The next `len` bytes read as zeros afterwards; only the length crosses the wire.
    fn zeros(&mut self, len: u64) -> Result<(), HvError>;
    /// End the stream: every byte of the range was given.
    fn finish(self: Box<Self>) -> Result<(), HvError>;
}

/// A canary's name: unique per process, call and time.
pub fn canary_name() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "ferry-canary-{}-{}-{t}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
