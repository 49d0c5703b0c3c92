//! A recording fake of [`Hypervisor`] for unit tests of the migration flow.
//!
//! Hosts, domains and paths are set up in memory; every call is recorded; the migration's
//! outcome is scripted. It proves the flow's decisions (what is checked, created, deleted,
//! reported), never that a migration works.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{
    CpuCompat, CpuQuery, DiskSize, DomainState, GuestFacts, HostFacts, HostId, HvError, Hypervisor,
    JobStats, MigrateFlags, MigrateRequest, PathInfo, PathKind, PathProbe, PoolFacts, VolumeReader,
    VolumeWriter,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Connect(String),
    CreateVolume {
        host: String,
        path: String,
        capacity: u64,
        format: String,
    },
    DeleteVolume {
        host: String,
        path: String,
    },
    Migrate {
        src: String,
        dst: String,
        name: String,
        migrate_disks: Vec<String>,
        bandwidth: Option<u64>,
        flags: MigrateFlags,
    },
    AbortJob {
        host: String,
        name: String,
    },
    SetMaxSpeed {
        host: String,
        name: String,
        mib: u64,
    },
    SetMaxDowntime {
        host: String,
        name: String,
        ms: u64,
    },
    StartPostcopy {
        host: String,
        name: String,
    },
    Suspend {
        host: String,
        name: String,
    },
    Undefine {
        host: String,
        name: String,
    },
    Define {
        host: String,
        name: String,
    },
    CopyVolume {
        src: String,
        from: String,
        dst: String,
        to: String,
        bytes: u64,
    },
    CanaryCreate {
        host: String,
        dir: String,
    },
    CanaryDelete {
        host: String,
        dir: String,
    },
    /// A storage stream written: how many bytes arrived as data and as holes.
    WriteVolume {
        host: String,
        path: String,
        offset: u64,
        data: u64,
        zeros: u64,
    },
    ReadVolume {
        host: String,
        path: String,
        offset: u64,
        len: u64,
    },
    Freeze {
        host: String,
        name: String,
        overlays: Vec<(String, String)>,
        keep: Vec<String>,
    },
    CreateOverlay {
        host: String,
        path: String,
        backing: String,
    },
    CommitActive {
        host: String,
        name: String,
        disk: String,
    },
}

/// A domain on a fake host.
#[derive(Debug, Clone)]
pub struct FakeDomain {
    pub state: DomainState,
    pub live_xml: String,
    pub inactive_xml: String,
    /// Disk sizes by target dev.
    pub disks: HashMap<String, DiskSize>,
}

/// A fake host.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    pub hostname: String,
    pub uuid: String,
    pub domains: HashMap<String, FakeDomain>,
    pub paths: HashMap<String, PathInfo>,
    /// Directories that exist, with their free bytes.
    pub dirs: HashMap<String, u64>,
    pub pools: Vec<PoolFacts>,
    pub networks: Vec<String>,
    /// Free memory (default 8 GiB of 16).
    pub memory_free: Option<u64>,
    /// The answer to a CPU comparison (default identical).
    pub cpu: Option<CpuCompat>,
    /// The bytes of volumes, by path, for storage streams (a path in `paths` without an entry
    /// here reads as zeros).
    pub contents: HashMap<String, Vec<u8>>,
}

/// How the scripted migration ends.
#[derive(Debug, Clone, Default)]
pub enum MigrateOutcome {
    /// The guest moves: it runs on the target with the request's XML; the source forgets it.
    #[default]
    Success,
    /// libvirt reports this error; the guest stays on the source.
    FailOnSource(String),
    /// libvirt reports this error, yet the guest ends up running on the target.
    FailButMoved(String),
    /// The job runs until it is aborted, then fails with the guest on the source.
    RunUntilAborted,
    /// The call does not return for 5 s, abort or not (a cut link), then fails.
    HangEvenAfterAbort,
    /// libvirt says it worked and the guest runs on the target — but still on the source too.
    SuccessButSourceStays,
    /// The post-copy fails after the switch: the guest runs on the target and is paused on
    /// the source, both "post-copy failed"; a resume (`POSTCOPY_RESUME`) completes it when
    /// `resumable`, fails otherwise.
    PostcopyFails { resumable: bool },
}

#[derive(Debug, Default)]
struct State {
    uris: Vec<String>,
    hosts: HashMap<String, FakeHost>,
    calls: Vec<Call>,
    outcome: MigrateOutcome,
    /// Job statistics handed out, one per job_stats call, while the migration "runs".
    job_script: Vec<JobStats>,
    completed: Option<JobStats>,
    fail_connect: Vec<String>,
    /// Migrations to these hosts fail with the guest on the source, whatever `outcome` says.
    fail_to: Vec<String>,
    /// Definitions on these hosts take effect, but the reply is lost (an error).
    define_reply_lost: Vec<String>,
    /// Calls that fail before taking effect: volume creations at these paths, definitions
    /// and undefinitions on these hosts.
    fail_create: Vec<String>,
    /// Connections to these hosts take this long to open (a host that accepts and is silent).
    slow_connect: Vec<(String, std::time::Duration)>,
    /// Connections being opened, since when.
    connecting: Vec<(String, std::time::Instant)>,
    fail_define: Vec<String>,
    fail_undefine: Vec<String>,
    /// A write stream to this path fails when it would write past this byte of the volume.
    fail_write_after: Vec<(String, u64)>,
    /// Data written to these paths arrives with its first byte flipped (a bad disk, a bug).
    corrupt: Vec<String>,
    /// Commits of overlays fail on these hosts.
    fail_commit: Vec<String>,
    aborted: bool,
    /// The job was switched to post-copy or its guest paused: it completes.
    switched: bool,
    /// Groups of (host URI, directory) that are one storage.
    same_storage: Vec<Vec<(String, String)>>,
    /// Canaries that exist, by the storage they are on.
    canaries: Vec<(Vec<(String, String)>, String)>,
}

/// A new empty file volume on a fake host, as libvirt's storage API makes one: refused when
/// `injected` or when the path is taken.
fn new_file(
    h: &mut FakeHost,
    uri: &str,
    path: &str,
    capacity: u64,
    format: &str,
    injected: bool,
) -> Result<(), HvError> {
    let refuse = |message: &str| {
        Err(HvError::Libvirt {
            host: uri.into(),
            what: "creating".into(),
            message: message.into(),
            code: 0,
        })
    };
    if injected {
        return refuse("injected failure");
    }
    if h.paths.contains_key(path) {
        return refuse("exists");
    }
    h.paths.insert(
        path.to_string(),
        PathInfo {
            kind: PathKind::File,
            capacity,
            allocation: 0,
            format: Some(format.to_string()),
        },
    );
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake hypervisor.
#[derive(Debug, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_host(&self, uri: &str, host: FakeHost) {
        self.lock().hosts.insert(uri.to_string(), host);
    }

    pub fn set_outcome(&self, o: MigrateOutcome) {
        self.lock().outcome = o;
    }

    pub fn set_job_script(&self, stats: Vec<JobStats>, completed: Option<JobStats>) {
        let mut s = self.lock();
        s.job_script = stats;
        s.completed = completed;
    }

    /// Declare directories on several hosts to be one storage (what a canary finds).
    pub fn same_storage(&self, places: &[(&str, &str)]) {
        self.lock().same_storage.push(
            places
                .iter()
                .map(|(u, d)| (u.to_string(), d.to_string()))
                .collect(),
        );
    }

    /// The host stops answering: every call on an open connection to it fails.
    pub fn lose_host(&self, uri: &str) {
        self.lock().hosts.remove(uri);
    }

    /// Every migration to `uri` fails, the guest staying on the source.
    pub fn fail_migrations_to(&self, uri: &str) {
        self.lock().fail_to.push(uri.to_string());
    }

    /// Every definition on `uri` takes effect, and then the call fails (its reply lost).
    pub fn lose_define_replies(&self, uri: &str) {
        self.lock().define_reply_lost.push(uri.to_string());
    }

    /// Opening a connection to `uri` takes `wait` (and says so through `waiting_on`).
    pub fn slow_connect(&self, uri: &str, wait: std::time::Duration) {
        self.lock().slow_connect.push((uri.to_string(), wait));
    }

    /// Creating a volume at `path` fails (on any host), creating nothing.
    pub fn fail_creating(&self, path: &str) {
        self.lock().fail_create.push(path.to_string());
    }

    /// Defining a domain on `uri` fails, defining nothing.
    pub fn fail_defines_on(&self, uri: &str) {
        self.lock().fail_define.push(uri.to_string());
    }

    /// Undefining a domain on `uri` fails, leaving it defined.
    pub fn fail_undefines_on(&self, uri: &str) {
        self.lock().fail_undefine.push(uri.to_string());
    }

    /// A write stream to `path` fails when it would write past byte `bytes` of the volume (a
    /// link cut during a bulk copy).
    pub fn fail_writing_after(&self, path: &str, bytes: u64) {
        self.lock().fail_write_after.push((path.to_string(), bytes));
    }

    /// Writes to `path` work again.
    pub fn heal_writing(&self, path: &str) {
        self.lock().fail_write_after.retain(|(p, _)| p != path);
    }

    /// Data written to `path` through a stream arrives with its first byte flipped.
    pub fn corrupt_writes_to(&self, path: &str) {
        self.lock().corrupt.push(path.to_string());
    }

    /// Every overlay commit on `uri` fails, the guest staying on its overlay.
    pub fn fail_commits_on(&self, uri: &str) {
        self.lock().fail_commit.push(uri.to_string());
    }

    /// Let commits on `uri` work again.
    pub fn heal_commits_on(&self, uri: &str) {
        self.lock().fail_commit.retain(|u| u != uri);
    }

    pub fn fail_connect(&self, uri: &str) {
        self.lock().fail_connect.push(uri.to_string());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn host_snapshot(&self, uri: &str) -> FakeHost {
        self.lock().hosts.get(uri).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn with_host<T>(
        &self,
        h: HostId,
        f: impl FnOnce(&mut FakeHost, &str, &mut Vec<Call>) -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        let mut s = self.lock();
        let uri = s.uris[h.0].clone();
        let State { hosts, calls, .. } = &mut *s;
        let host = hosts
            .get_mut(&uri)
            .ok_or(HvError::ConnectionLost { host: uri.clone() })?;
        f(host, &uri, calls)
    }
}

/// The storage a directory of a host is: its group of same-storage places, or itself.
fn storage_of(s: &State, host: HostId, dir: &str) -> Vec<(String, String)> {
    let me = (s.uris[host.0].clone(), dir.to_string());
    s.same_storage
        .iter()
        .find(|g| g.contains(&me))
        .cloned()
        .unwrap_or_else(|| vec![me])
}

fn no_domain(uri: &str, name: &str) -> HvError {
    HvError::NoDomain {
        host: uri.to_string(),
        name: name.to_string(),
    }
}

impl Hypervisor for Fake {
    fn connect(&self, uri: &str) -> Result<HostId, HvError> {
        let slow = self
            .lock()
            .slow_connect
            .iter()
            .find(|(u, _)| u == uri)
            .map(|(_, w)| *w);
        if let Some(wait) = slow {
            self.lock()
                .connecting
                .push((uri.to_string(), std::time::Instant::now()));
            std::thread::sleep(wait);
            self.lock().connecting.retain(|(u, _)| u != uri);
        }
        let mut s = self.lock();
        s.calls.push(Call::Connect(uri.to_string()));
        if s.fail_connect.iter().any(|u| u == uri) || !s.hosts.contains_key(uri) {
            return Err(HvError::Connect {
                uri: uri.to_string(),
                message: "Connection refused".into(),
            });
        }
        s.uris.push(uri.to_string());
        Ok(HostId(s.uris.len() - 1))
    }

    fn uri(&self, host: HostId) -> String {
        self.lock().uris[host.0].clone()
    }

    fn waiting_on(&self) -> Vec<(String, std::time::Duration)> {
        self.lock()
            .connecting
            .iter()
            .map(|(u, t)| (u.clone(), t.elapsed()))
            .collect()
    }

    fn host_facts(&self, host: HostId) -> Result<HostFacts, HvError> {
        self.with_host(host, |h, _, _| {
            Ok(HostFacts {
                hostname: h.hostname.clone(),
                uuid: Some(h.uuid.clone()),
                libvirt_version: 9_000_000,
                qemu_version: 7_002_000,
                arch: "x86_64".into(),
                cpu_model: Some("qemu64".into()),
                cpu_xml: None,
                memory_total: 16 << 30,
                memory_free: h.memory_free.unwrap_or(8 << 30),
                guest_types: ["qemu", "kvm"]
                    .iter()
                    .map(|t| ferry_core::facts::GuestType {
                        arch: "x86_64".into(),
                        domain_type: t.to_string(),
                        machines: vec!["pc".into(), "pc-i440fx-7.2".into()],
                    })
                    .collect(),
            })
        })
    }

    fn domain_state(&self, host: HostId, name: &str) -> Result<Option<DomainState>, HvError> {
        self.with_host(host, |h, _, _| Ok(h.domains.get(name).map(|d| d.state)))
    }

    fn domain_xml(&self, host: HostId, name: &str, inactive: bool) -> Result<String, HvError> {
        self.with_host(host, |h, uri, _| {
            let d = h.domains.get(name).ok_or_else(|| no_domain(uri, name))?;
            Ok(if inactive {
                d.inactive_xml.clone()
            } else {
                d.live_xml.clone()
            })
        })
    }

    fn list_domains(&self, host: HostId) -> Result<Vec<String>, HvError> {
        self.with_host(host, |h, _, _| {
            let mut v: Vec<String> = h.domains.keys().cloned().collect();
            v.sort();
            Ok(v)
        })
    }

    fn disk_size(&self, host: HostId, name: &str, target: &str) -> Result<DiskSize, HvError> {
        self.with_host(host, |h, uri, _| {
            let d = h.domains.get(name).ok_or_else(|| no_domain(uri, name))?;
            d.disks
                .get(target)
                .copied()
                .ok_or_else(|| HvError::Libvirt {
                    host: uri.to_string(),
                    what: format!("reading the size of disk {target}"),
                    message: "invalid argument".into(),
                    code: 8,
                })
        })
    }

    fn probe_path(&self, host: HostId, path: &str) -> Result<PathProbe, HvError> {
        self.with_host(host, |h, _, _| {
            let (dir, _) = crate::split_path(path);
            Ok(PathProbe {
                info: h.paths.get(path).cloned(),
                parent_exists: h.dirs.contains_key(dir),
                parent_free: h.dirs.get(dir).copied(),
                parent_pool: h
                    .pools
                    .iter()
                    .find(|p| p.path.as_deref() == Some(dir))
                    .map(|p| p.kind.clone()),
            })
        })
    }

    fn create_volume(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        format: &str,
    ) -> Result<(), HvError> {
        let injected = self.lock().fail_create.iter().any(|p| p == path);
        self.with_host(host, |h, uri, calls| {
            calls.push(Call::CreateVolume {
                host: uri.to_string(),
                path: path.to_string(),
                capacity,
                format: format.to_string(),
            });
            new_file(h, uri, path, capacity, format, injected)
        })
    }

    fn delete_volume(&self, host: HostId, path: &str) -> Result<(), HvError> {
        self.with_host(host, |h, uri, calls| {
            calls.push(Call::DeleteVolume {
                host: uri.to_string(),
                path: path.to_string(),
            });
            h.paths
                .remove(path)
                .map(|_| ())
                .ok_or_else(|| HvError::Libvirt {
                    host: uri.to_string(),
                    what: format!("deleting volume {path}"),
                    message: "no such volume".into(),
                    code: 0,
                })
        })
    }

    fn migrate(
        &self,
        src: HostId,
        dst: HostId,
        name: &str,
        req: &MigrateRequest,
    ) -> Result<(), HvError> {
        if matches!(self.lock().outcome, MigrateOutcome::HangEvenAfterAbort) {
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        if matches!(self.lock().outcome, MigrateOutcome::RunUntilAborted) {
            // Bounded: a test that never aborts fails here instead of hanging.
            for _ in 0..1000 {
                if self.lock().aborted || self.lock().switched {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let mut s = self.lock();
        let (su, du) = (s.uris[src.0].clone(), s.uris[dst.0].clone());
        s.calls.push(Call::Migrate {
            src: su.clone(),
            dst: du.clone(),
            name: name.to_string(),
            migrate_disks: req.migrate_disks.clone(),
            bandwidth: req.bandwidth_mib,
            flags: req.flags,
        });
        let outcome = if s.fail_to.contains(&du) {
            MigrateOutcome::FailOnSource(format!("the target {du} failed (scripted)"))
        } else {
            s.outcome.clone()
        };
        let failed_here = |s: &State, uri: &str| {
            s.hosts
                .get(uri)
                .and_then(|h| h.domains.get(name))
                .is_some_and(|d| d.state == DomainState::PostcopyFailed)
        };
        if req.flags.postcopy_resume {
            let err = |m: &str| HvError::Libvirt {
                host: su.clone(),
                what: format!("resuming the migration of {name}"),
                message: m.to_string(),
                code: 1,
            };
            if !failed_here(&s, &su) || !failed_here(&s, &du) {
                return Err(err("no failed post-copy migration to resume"));
            }
            if !matches!(outcome, MigrateOutcome::PostcopyFails { resumable: true }) {
                return Err(err("Unable to write to socket: Connection refused"));
            }
            s.hosts.get_mut(&su).map(|h| h.domains.remove(name));
            if let Some(d) = s.hosts.get_mut(&du).and_then(|h| h.domains.get_mut(name)) {
                d.state = DomainState::Running;
            }
            return Ok(());
        }
        let moved = |s: &mut State| {
            let mut d = s.hosts.get_mut(&su).and_then(|h| h.domains.remove(name));
            if let Some(d) = d.as_mut() {
                d.live_xml = req.dest_xml.clone();
                if let Some(p) = &req.persist_xml {
                    d.inactive_xml = p.clone();
                }
                d.state = DomainState::Running;
            }
            if let (Some(d), Some(h)) = (d, s.hosts.get_mut(&du)) {
                h.domains.insert(name.to_string(), d);
            }
        };
        match outcome {
            MigrateOutcome::Success => {
                moved(&mut s);
                Ok(())
            }
            MigrateOutcome::SuccessButSourceStays => {
                let kept = s.hosts.get(&su).and_then(|h| h.domains.get(name)).cloned();
                moved(&mut s);
                if let (Some(d), Some(h)) = (kept, s.hosts.get_mut(&su)) {
                    h.domains.insert(name.to_string(), d);
                }
                Ok(())
            }
            MigrateOutcome::PostcopyFails { .. } => {
                let kept = s.hosts.get(&su).and_then(|h| h.domains.get(name)).cloned();
                moved(&mut s);
                if let (Some(mut d), Some(h)) = (kept, s.hosts.get_mut(&su)) {
                    d.state = DomainState::PostcopyFailed;
                    h.domains.insert(name.to_string(), d);
                }
                if let Some(d) = s.hosts.get_mut(&du).and_then(|h| h.domains.get_mut(name)) {
                    d.state = DomainState::PostcopyFailed;
                }
                Err(HvError::Libvirt {
                    host: su,
                    what: format!("migrating {name}"),
                    message: "job 'migration out' failed in post-copy phase".into(),
                    code: 1,
                })
            }
            MigrateOutcome::FailOnSource(m) => Err(HvError::Libvirt {
                host: su,
                what: format!("migrating {name}"),
                message: m,
                code: 1,
            }),
            MigrateOutcome::HangEvenAfterAbort => Err(HvError::Libvirt {
                host: su,
                what: format!("migrating {name}"),
                message: "Unable to read from socket: Connection timed out".into(),
                code: 1,
            }),
            // Switched to post-copy, or the guest paused: the job completes.
            MigrateOutcome::RunUntilAborted if s.switched && !s.aborted => {
                moved(&mut s);
                Ok(())
            }
            MigrateOutcome::RunUntilAborted => Err(HvError::Libvirt {
                host: su,
                what: format!("migrating {name}"),
                message: if s.aborted {
                    "operation aborted: migration job: canceled by client".into()
                } else {
                    "never aborted".into()
                },
                code: 1,
            }),
            MigrateOutcome::FailButMoved(m) => {
                moved(&mut s);
                Err(HvError::Libvirt {
                    host: su,
                    what: format!("migrating {name}"),
                    message: m,
                    code: 1,
                })
            }
        }
    }

    fn job_stats(&self, _host: HostId, _name: &str) -> Result<Option<JobStats>, HvError> {
        let mut s = self.lock();
        if s.job_script.is_empty() {
            Ok(None)
        } else {
            Ok(Some(s.job_script.remove(0)))
        }
    }

    fn completed_job_stats(&self, _host: HostId, _name: &str) -> Result<Option<JobStats>, HvError> {
        Ok(self.lock().completed.clone())
    }

    fn abort_job(&self, host: HostId, name: &str) -> Result<(), HvError> {
        self.lock().aborted = true;
        self.with_host(host, |_, uri, calls| {
            calls.push(Call::AbortJob {
                host: uri.to_string(),
                name: name.to_string(),
            });
            Ok(())
        })
    }

    fn set_max_speed(&self, host: HostId, name: &str, mib: u64) -> Result<(), HvError> {
        self.with_host(host, |_, uri, calls| {
            calls.push(Call::SetMaxSpeed {
                host: uri.to_string(),
                name: name.to_string(),
                mib,
            });
            Ok(())
        })
    }

    fn set_max_downtime(&self, host: HostId, name: &str, ms: u64) -> Result<(), HvError> {
        self.with_host(host, |_, uri, calls| {
            calls.push(Call::SetMaxDowntime {
                host: uri.to_string(),
                name: name.to_string(),
                ms,
            });
            Ok(())
        })
    }

    fn start_postcopy(&self, host: HostId, name: &str) -> Result<(), HvError> {
        self.lock().switched = true;
        self.with_host(host, |_, uri, calls| {
            calls.push(Call::StartPostcopy {
                host: uri.to_string(),
                name: name.to_string(),
            });
            Ok(())
        })
    }

    fn suspend(&self, host: HostId, name: &str) -> Result<(), HvError> {
        self.lock().switched = true;
        self.with_host(host, |_, uri, calls| {
            calls.push(Call::Suspend {
                host: uri.to_string(),
                name: name.to_string(),
            });
            Ok(())
        })
    }

    fn undefine(&self, host: HostId, name: &str) -> Result<(), HvError> {
        let mut s = self.lock();
        let uri = s.uris[host.0].clone();
        s.calls.push(Call::Undefine {
            host: uri.clone(),
            name: name.to_string(),
        });
        if s.fail_undefine.contains(&uri) {
            return Err(HvError::Libvirt {
                host: uri,
                what: "undefining the domain".into(),
                message: "injected failure".into(),
                code: 0,
            });
        }
        if let Some(h) = s.hosts.get_mut(&uri) {
            if h.domains.get(name).is_some_and(|d| !d.state.is_active()) {
                h.domains.remove(name);
            }
        }
        Ok(())
    }

    fn define(&self, host: HostId, xml: &str) -> Result<(), HvError> {
        let mut s = self.lock();
        let uri = s.uris[host.0].clone();
        let name = ferry_core::domain::parse(xml)
            .map(|d| d.name)
            .map_err(|e| HvError::Libvirt {
                host: uri.clone(),
                what: "defining the domain".into(),
                message: e.to_string(),
                code: 0,
            })?;
        s.calls.push(Call::Define {
            host: uri.clone(),
            name: name.clone(),
        });
        if s.fail_define.contains(&uri) {
            return Err(HvError::Libvirt {
                host: uri,
                what: "defining the domain".into(),
                message: "injected failure".into(),
                code: 0,
            });
        }
        if let Some(h) = s.hosts.get_mut(&uri) {
            match h.domains.get_mut(&name) {
                // As libvirt: a running domain's new definition is for its next start.
                Some(d) if d.state != DomainState::ShutOff => d.inactive_xml = xml.to_string(),
                _ => {
                    h.domains.insert(
                        name,
                        FakeDomain {
                            state: DomainState::ShutOff,
                            live_xml: xml.to_string(),
                            inactive_xml: xml.to_string(),
                            disks: HashMap::new(),
                        },
                    );
                }
            }
        }
        if s.define_reply_lost.contains(&uri) {
            return Err(HvError::Libvirt {
                host: uri,
                what: "defining the domain".into(),
                message: "the connection is lost (scripted, after the definition)".into(),
                code: 1,
            });
        }
        Ok(())
    }

    fn read_volume(
        &self,
        host: HostId,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn VolumeReader>, HvError> {
        let bytes = self.with_host(host, |h, uri, calls| {
            calls.push(Call::ReadVolume {
                host: uri.to_string(),
                path: path.to_string(),
                offset,
                len,
            });
            let info = h.paths.get(path).ok_or_else(|| HvError::Libvirt {
                host: uri.to_string(),
                what: format!("finding volume {path}"),
                message: "no such volume".into(),
                code: 0,
            })?;
            let mut all = h.contents.get(path).cloned().unwrap_or_default();
            all.resize(usize::try_from(info.capacity).unwrap_or(0), 0);
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
            let end = usize::try_from(offset.saturating_add(len))
                .unwrap_or(usize::MAX)
                .min(all.len());
            Ok(all[start..end].to_vec())
        })?;
        Ok(Box::new(FakeReader { bytes, at: 0 }))
    }

    fn write_volume(
        &self,
        host: HostId,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn VolumeWriter>, HvError> {
        let uri = self.with_host(host, |h, uri, _| {
            if h.paths.contains_key(path) {
                Ok(uri.to_string())
            } else {
                Err(HvError::Libvirt {
                    host: uri.to_string(),
                    what: format!("finding volume {path}"),
                    message: "no such volume".into(),
                    code: 0,
                })
            }
        })?;
        let (fail_after, corrupt) = {
            let s = self.lock();
            (
                s.fail_write_after
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, n)| *n),
                s.corrupt.iter().any(|p| p == path),
            )
        };
        Ok(Box::new(FakeWriter {
            state: self.state.clone(),
            uri,
            path: path.to_string(),
            offset,
            end: offset.saturating_add(len),
            at: offset,
            data: 0,
            zeros: 0,
            fail_after,
            corrupt,
        }))
    }

    fn freeze_disks(
        &self,
        host: HostId,
        name: &str,
        overlays: &[(String, String)],
        keep: &[String],
    ) -> Result<(), HvError> {
        self.with_host(host, |h, uri, calls| {
            calls.push(Call::Freeze {
                host: uri.to_string(),
                name: name.to_string(),
                overlays: overlays.to_vec(),
                keep: keep.to_vec(),
            });
            let Some(d) = h.domains.get_mut(name) else {
                return Err(HvError::NoDomain {
                    host: uri.to_string(),
                    name: name.to_string(),
                });
            };
            // As libvirt's snapshot: each disk runs on its overlay, live and persistent.
            for (disk, o) in overlays {
                let stage =
                    |x: &str| ferry_core::preseed::stage(x, disk, o).unwrap_or(x.to_string());
                d.live_xml = stage(&d.live_xml);
                d.inactive_xml = stage(&d.inactive_xml);
            }
            for (_, o) in overlays {
                h.paths.insert(
                    o.clone(),
                    PathInfo {
                        kind: PathKind::File,
                        capacity: 0,
                        allocation: 0,
                        format: Some("qcow2".into()),
                    },
                );
            }
            Ok(())
        })
    }

    fn create_overlay(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        backing: &str,
        _backing_format: &str,
    ) -> Result<(), HvError> {
        let injected = self.lock().fail_create.iter().any(|p| p == path);
        self.with_host(host, |h, uri, calls| {
            calls.push(Call::CreateOverlay {
                host: uri.to_string(),
                path: path.to_string(),
                backing: backing.to_string(),
            });
            new_file(h, uri, path, capacity, "qcow2", injected)
        })
    }

    fn commit_active(
        &self,
        host: HostId,
        name: &str,
        disk: &str,
        _within: std::time::Duration,
    ) -> Result<(), HvError> {
        let failing = {
            let s = self.lock();
            s.uris
                .get(host.0)
                .is_some_and(|u| s.fail_commit.contains(u))
        };
        self.with_host(host, |h, uri, calls| {
            calls.push(Call::CommitActive {
                host: uri.to_string(),
                name: name.to_string(),
                disk: disk.to_string(),
            });
            if failing {
                return Err(HvError::Libvirt {
                    host: uri.to_string(),
                    what: format!("committing the overlay of {name}'s {disk}"),
                    message: "injected failure".into(),
                    code: 0,
                });
            }
            let Some(d) = h.domains.get_mut(name) else {
                return Err(HvError::NoDomain {
                    host: uri.to_string(),
                    name: name.to_string(),
                });
            };
            // As libvirt's pivot: the disk is its backing image again, live and persistent.
            let pivot = |x: &str| ferry_core::preseed::thawed(x, disk).unwrap_or(x.to_string());
            d.live_xml = pivot(&d.live_xml);
            d.inactive_xml = pivot(&d.inactive_xml);
            Ok(())
        })
    }

    fn copy_volume(
        &self,
        src: HostId,
        src_path: &str,
        dst: HostId,
        dst_path: &str,
        bytes: u64,
    ) -> Result<(), HvError> {
        let mut s = self.lock();
        let (su, du) = (s.uris[src.0].clone(), s.uris[dst.0].clone());
        s.calls.push(Call::CopyVolume {
            src: su,
            from: src_path.to_string(),
            dst: du.clone(),
            to: dst_path.to_string(),
            bytes,
        });
        if s.fail_to.contains(&du) {
            return Err(HvError::Libvirt {
                host: du,
                what: format!("writing {dst_path}"),
                message: "the target failed (scripted)".into(),
                code: 1,
            });
        }
        Ok(())
    }

    fn guests(&self, host: HostId) -> Result<Vec<GuestFacts>, HvError> {
        self.with_host(host, |h, _, _| {
            let mut v: Vec<GuestFacts> = h
                .domains
                .iter()
                .map(|(name, d)| GuestFacts {
                    name: name.clone(),
                    active: d.state.is_active(),
                    memory: ferry_core::domain::parse(&d.live_xml)
                        .ok()
                        .and_then(|x| x.memory_kib)
                        .unwrap_or(0)
                        * 1024,
                    job: false,
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        })
    }

    fn pools(&self, host: HostId) -> Result<Vec<PoolFacts>, HvError> {
        self.with_host(host, |h, _, _| Ok(h.pools.clone()))
    }

    fn networks(&self, host: HostId) -> Result<Vec<String>, HvError> {
        self.with_host(host, |h, _, _| Ok(h.networks.clone()))
    }

    fn compare_cpu(&self, host: HostId, _q: &CpuQuery) -> Result<CpuCompat, HvError> {
        self.with_host(host, |h, _, _| Ok(h.cpu.unwrap_or(CpuCompat::Identical)))
    }

    fn canary_create(&self, host: HostId, dir: &str) -> Result<Option<String>, HvError> {
        let exists = self.with_host(host, |h, uri, calls| {
            calls.push(Call::CanaryCreate {
                host: uri.into(),
                dir: dir.into(),
            });
            Ok(h.dirs.contains_key(dir))
        })?;
        if !exists {
            return Ok(None);
        }
        let name = crate::canary_name();
        let mut s = self.lock();
        let place = storage_of(&s, host, dir);
        s.canaries.push((place, name.clone()));
        Ok(Some(name))
    }

    fn canary_seen(&self, host: HostId, dir: &str, name: &str) -> Result<bool, HvError> {
        let s = self.lock();
        let place = storage_of(&s, host, dir);
        Ok(s.canaries.iter().any(|(p, n)| *p == place && n == name))
    }

    fn canary_delete(&self, host: HostId, dir: &str, name: &str) -> Result<(), HvError> {
        let mut s = self.lock();
        let uri = s.uris[host.0].clone();
        s.calls.push(Call::CanaryDelete {
            host: uri,
            dir: dir.into(),
        });
        let place = storage_of(&s, host, dir);
        s.canaries.retain(|(p, n)| !(*p == place && n == name));
        Ok(())
    }
}

/// A fake download: the bytes of the range, as they were when it was opened.
struct FakeReader {
    bytes: Vec<u8>,
    at: usize,
}

impl VolumeReader for FakeReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, HvError> {
        let n = buf.len().min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    fn finish(self: Box<Self>) -> Result<(), HvError> {
        Ok(())
    }
}

/// A fake upload: writes go into the host's `contents` as they come; the call is recorded
/// when the stream ends, finished or not.
struct FakeWriter {
    state: Arc<Mutex<State>>,
    uri: String,
    path: String,
    offset: u64,
    end: u64,
    at: u64,
    data: u64,
    zeros: u64,
    fail_after: Option<u64>,
    corrupt: bool,
}

impl FakeWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<(), HvError> {
        let len = bytes.len() as u64;
        if let Some(limit) = self.fail_after {
            if self.at + len > limit {
                return Err(HvError::ConnectionLost {
                    host: self.uri.clone(),
                });
            }
        }
        if self.at + len > self.end {
            return Err(HvError::Libvirt {
                host: self.uri.clone(),
                what: format!("writing {}", self.path),
                message: "past the end of the stream's range".into(),
                code: 0,
            });
        }
        let mut s = lock(&self.state);
        let Some(h) = s.hosts.get_mut(&self.uri) else {
            return Err(HvError::ConnectionLost {
                host: self.uri.clone(),
            });
        };
        let v = h.contents.entry(self.path.clone()).or_default();
        let (a, b) = (self.at as usize, (self.at + len) as usize);
        if v.len() < b {
            v.resize(b, 0);
        }
        v[a..b].copy_from_slice(bytes);
        self.at += len;
        Ok(())
    }
}

impl VolumeWriter for FakeWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), HvError> {
        if self.corrupt && !data.is_empty() {
            let mut bad = data.to_vec();
            bad[0] ^= 1;
            self.put(&bad)?;
        } else {
            self.put(data)?;
        }
        self.data += data.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), HvError> {
        self.put(&vec![0; usize::try_from(len).unwrap_or(0)])?;
        self.zeros += len;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), HvError> {
        if self.at != self.end {
            return Err(HvError::Libvirt {
                host: self.uri.clone(),
                what: format!("writing {}", self.path),
                message: format!("the stream ended at {} of {}", self.at, self.end),
                code: 0,
            });
        }
        Ok(())
    }
}

impl Drop for FakeWriter {
    fn drop(&mut self) {
        let call = Call::WriteVolume {
            host: self.uri.clone(),
            path: self.path.clone(),
            offset: self.offset,
            data: self.data,
            zeros: self.zeros,
        };
        lock(&self.state).calls.push(call);
    }
}
