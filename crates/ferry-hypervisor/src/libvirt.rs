//! [`Hypervisor`] over libvirt, through the official bindings (the `virt` crate).
//!
//! Where the crate has no safe wrapper, or its wrapper is unsound for a case Ferry meets
//! (`job_stats` with no job running, `block_info` on failure, `Drop for Connect` on a dead
//! peer), a small `unsafe` helper calls `virt::sys` directly; each says why it is sound.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void, CStr, CString};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, Once};

use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::error::Error as VirtError;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use ferry_core::facts::PoolKind;

use crate::{
    split_path, CpuCompat, CpuQuery, DiskSize, DomainState, GuestFacts, HostFacts, HostId, HvError,
    Hypervisor, JobStats, MigrateRequest, PathInfo, PathKind, PathProbe, PoolFacts, VolumeReader,
    VolumeWriter,
};

/// The last job-completed statistics seen per domain name, filled by libvirt's event loop.
type CompletedJobs = Mutex<HashMap<String, JobStats>>;

struct HostConn {
    uri: String,
    /// Never dropped through `virt`'s `Drop`, which panics when the peer is gone: closed in
    /// [`HostConn::drop`] with the result ignored.
    conn: ManuallyDrop<Connect>,
    /// A second connection for what must answer while `conn` carries a long call (the
    /// migration): job statistics, the domain's state, abort, bandwidth. On the migration's own
    /// connection their answers came in bursts seconds apart: progress went dark during the
    /// disk copy. Opened on first use; `None` if it could not be opened (the main connection
    /// serves then).
    monitor: std::sync::OnceLock<Option<ManuallyDrop<Connect>>>,
    completed: Arc<CompletedJobs>,
    callback_id: Option<c_int>,
}

impl Drop for HostConn {
    fn drop(&mut self) {
        if let Some(id) = self.callback_id {
            // SAFETY: the connection pointer is valid (we hold its reference until the close
            // below) and `id` was returned by virConnectDomainEventRegisterAny on it.
            unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), id) };
        }
        // SAFETY: we own one reference to the connection (taken by Connect::open); this gives
        // it back exactly once. `conn` is ManuallyDrop, so virt's Drop never closes it again.
        unsafe { sys::virConnectClose(self.conn.as_ptr()) };
        if let Some(Some(m)) = self.monitor.get() {
            // SAFETY: as above, for the monitor connection we opened and own.
            unsafe { sys::virConnectClose(m.as_ptr()) };
        }
    }
}

/// libvirt hosts through the `virt` crate.
#[derive(Default)]
pub struct Libvirt {
    hosts: Mutex<Vec<Arc<HostConn>>>,
    /// URIs whose connection is being opened, since when.
    connecting: Mutex<Vec<(String, std::time::Instant)>>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uris: Vec<String> = self
            .hosts
            .lock()
            .map(|h| h.iter().map(|c| c.uri.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("Libvirt").field("hosts", &uris).finish()
    }
}

static EVENT_LOOP: Once = Once::new();

/// libvirt's default event loop, on a thread of its own: keepalive and domain events need it,
/// registered before any connection is opened.
fn start_event_loop() {
    EVENT_LOOP.call_once(|| {
        virt::error::clear_error_callback();
        if virt::event::event_register_default_impl().is_ok() {
            let _ = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                });
        }
    });
}

fn code_of(e: &VirtError) -> sys::virErrorNumber {
    use virt::enumutil::RawEnum;
    match e.code() {
        virt::enumutil::Enum::Known(k) => k.to_raw(),
        virt::enumutil::Enum::Unknown(c) => c,
    }
}

fn is_code(e: &VirtError, code: sys::virErrorNumber) -> bool {
    code_of(e) == code
}

/// A libvirt error on host `h`: the connection lost when it is, else libvirt's own.
fn err_on(h: &HostConn, what: impl Into<String>, e: VirtError) -> HvError {
    let code = code_of(&e) as i32;
    // SAFETY: the connection pointer is valid while `h` holds it.
    let alive = unsafe { sys::virConnectIsAlive(h.conn.as_ptr()) };
    if alive == 0 {
        return HvError::ConnectionLost {
            host: h.uri.clone(),
        };
    }
    HvError::Libvirt {
        host: h.uri.clone(),
        what: what.into(),
        message: e.message().to_string(),
        code,
    }
}

impl Libvirt {
    pub fn new() -> Self {
        start_event_loop();
        Self::default()
    }

    fn host(&self, h: HostId) -> Arc<HostConn> {
        // A HostId comes only from connect(), so the index exists.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())[h.0].clone()
    }

    fn err(&self, h: &HostConn, what: impl Into<String>, e: VirtError) -> HvError {
        err_on(h, what, e)
    }

    fn lookup(&self, h: &HostConn, name: &str) -> Result<Domain, HvError> {
        self.lookup_on(h, &h.conn, name)
    }

    /// The host's monitor connection (see [`HostConn::monitor`]).
    fn monitor<'h>(&self, h: &'h HostConn) -> &'h Connect {
        h.monitor
            .get_or_init(|| {
                Connect::open(Some(&h.uri)).ok().map(|c| {
                    let _ = c.set_keep_alive(5, 3);
                    ManuallyDrop::new(c)
                })
            })
            .as_deref()
            .unwrap_or(&h.conn)
    }

    fn lookup_on(&self, h: &HostConn, conn: &Connect, name: &str) -> Result<Domain, HvError> {
        conn.lookup_domain_by_name(name).map_err(|e| {
            if is_code(&e, sys::VIR_ERR_NO_DOMAIN) {
                HvError::NoDomain {
                    host: h.uri.clone(),
                    name: name.to_string(),
                }
            } else {
                self.err(h, format!("looking up domain {name}"), e)
            }
        })
    }

    /// The storage pool that covers `dir`: an existing one, or a transient `dir` pool Ferry
    /// creates (and destroys when the returned guard drops). `None` when `dir` does not exist.
    fn pool_for_dir(&self, h: &HostConn, dir: &str) -> Result<Option<PoolGuard>, HvError> {
        if let Ok(p) = h.conn.lookup_storage_pool_by_target_path(dir) {
            if p.is_active().unwrap_or(false) {
                p.refresh(0)
                    .map_err(|e| self.err(h, format!("refreshing the pool of {dir}"), e))?;
                return Ok(Some(PoolGuard {
                    pool: p,
                    transient: false,
                }));
            }
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "ferry-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let xml = format!(
            "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
            ferry_core::xml::escape_attr(dir, '\'')
        );
        match h.conn.create_storage_pool_xml(&xml, 0) {
            Ok(pool) => Ok(Some(PoolGuard {
                pool,
                transient: true,
            })),
            // libvirt 9.0 answers a directory it cannot open ("cannot open directory '/x': No
            // such file or directory", or "Not a directory") with VIR_ERR_SYSTEM_ERROR, the errno
            // in int1 (2, 20), which the bindings do not expose (measured in the lab with
            // libvirt-python's get_error_code()): no usable directory there.
            Err(e) if is_code(&e, sys::VIR_ERR_SYSTEM_ERROR) => Ok(None),
            Err(e) => Err(self.err(h, format!("opening directory {dir} as a storage pool"), e)),
        }
    }

    /// The volume at `path`: libvirt's lookup when a pool lists it, else through the pool of
    /// its directory (a transient one where none covers it, kept with the volume).
    fn volume_at(
        &self,
        h: &HostConn,
        path: &str,
        doing: &str,
    ) -> Result<(StorageVol, Option<PoolGuard>), HvError> {
        if let Ok(v) = h.conn.lookup_storage_vol_by_path(path) {
            return Ok((v, None));
        }
        let (pool, base) = self.pool_of(h, path, doing)?;
        let v = pool
            .pool
            .lookup_storage_vol_by_name(base)
            .map_err(|e| self.err(h, format!("finding volume {path}"), e))?;
        Ok((v, Some(pool)))
    }

    /// The pool of `path`'s directory (which must exist) and the volume name in it.
    fn pool_of<'p>(
        &self,
        h: &HostConn,
        path: &'p str,
        doing: &str,
    ) -> Result<(PoolGuard, &'p str), HvError> {
        let (dir, base) = split_path(path);
        let pool = self.pool_for_dir(h, dir)?.ok_or_else(|| HvError::Libvirt {
            host: h.uri.clone(),
            what: format!("{doing} {path}"),
            message: format!("directory {dir} does not exist"),
            code: 0,
        })?;
        Ok((pool, base))
    }

    fn vol_info(&self, h: &HostConn, vol: &StorageVol, path: &str) -> Result<PathInfo, HvError> {
        let info = vol
            .info()
            .map_err(|e| self.err(h, format!("reading volume {path}"), e))?;
        let format = vol.xml_desc(0).ok().and_then(|x| {
            let root = ferry_core::xml::parse(&x).ok()?;
            root.child("target")?
                .child("format")?
                .attr("type")
                .map(str::to_string)
        });
        Ok(PathInfo {
            kind: match info.kind {
                sys::VIR_STORAGE_VOL_FILE => PathKind::File,
                sys::VIR_STORAGE_VOL_BLOCK => PathKind::Block,
                sys::VIR_STORAGE_VOL_DIR => PathKind::Dir,
                _ => PathKind::Other,
            },
            capacity: info.capacity,
            allocation: info.allocation,
            format,
        })
    }
}

struct PoolGuard {
    pool: StoragePool,
    transient: bool,
}

impl PoolGuard {
    /// The kind of the host's own pool (`None` for a transient one Ferry opened).
    fn kind(&self) -> Option<PoolKind> {
        if self.transient {
            return None;
        }
        self.pool
            .xml_desc(0)
            .ok()
            .and_then(|x| ferry_core::facts::read_pool(&x))
            .map(|p| p.kind)
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if self.transient {
            // A transient dir pool: destroying it forgets the pool, never the files.
            let _ = self.pool.destroy();
        }
    }
}

/// Read the typed parameters of a job into [`JobStats`].
///
/// # Safety
/// `params` must point to `n` valid typed parameters (or be null with `n == 0`).
unsafe fn job_stats_from_params(params: sys::virTypedParameterPtr, n: c_int) -> JobStats {
    let ull = |name: &CStr| {
        let mut v: u64 = 0;
        // SAFETY: the caller guarantees params/n; `name` is NUL-terminated; `v` is writable.
        let r = unsafe { sys::virTypedParamsGetULLong(params, n, name.as_ptr(), &mut v) };
        (r == 1).then_some(v)
    };
    let mut success: c_int = 0;
    // SAFETY: as above; `success` is a writable int.
    let has_success = unsafe {
        sys::virTypedParamsGetBoolean(
            params,
            n,
            sys::VIR_DOMAIN_JOB_SUCCESS.as_ptr(),
            &mut success,
        )
    } == 1;
    let mut msg: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: as above; on success `msg` points into `params`, which outlive this read.
    let has_msg = unsafe {
        sys::virTypedParamsGetString(params, n, sys::VIR_DOMAIN_JOB_ERRMSG.as_ptr(), &mut msg)
    } == 1;
    JobStats {
        time_elapsed_ms: ull(sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
        time_remaining_ms: ull(sys::VIR_DOMAIN_JOB_TIME_REMAINING),
        downtime_ms: ull(sys::VIR_DOMAIN_JOB_DOWNTIME),
        setup_time_ms: ull(sys::VIR_DOMAIN_JOB_SETUP_TIME),
        data_total: ull(sys::VIR_DOMAIN_JOB_DATA_TOTAL),
        data_processed: ull(sys::VIR_DOMAIN_JOB_DATA_PROCESSED),
        data_remaining: ull(sys::VIR_DOMAIN_JOB_DATA_REMAINING),
        mem_total: ull(sys::VIR_DOMAIN_JOB_MEMORY_TOTAL),
        mem_processed: ull(sys::VIR_DOMAIN_JOB_MEMORY_PROCESSED),
        mem_remaining: ull(sys::VIR_DOMAIN_JOB_MEMORY_REMAINING),
        mem_bps: ull(sys::VIR_DOMAIN_JOB_MEMORY_BPS),
        mem_dirty_rate: ull(sys::VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE),
        mem_page_size: ull(sys::VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE),
        mem_iteration: ull(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
        disk_total: ull(sys::VIR_DOMAIN_JOB_DISK_TOTAL),
        disk_processed: ull(sys::VIR_DOMAIN_JOB_DISK_PROCESSED),
        disk_remaining: ull(sys::VIR_DOMAIN_JOB_DISK_REMAINING),
        disk_bps: ull(sys::VIR_DOMAIN_JOB_DISK_BPS),
        success: has_success.then_some(success != 0),
        error_message: (has_msg && !msg.is_null()).then(|| {
            // SAFETY: libvirt returned a NUL-terminated string inside `params`.
            let s = unsafe { CStr::from_ptr(msg) };
            s.to_string_lossy().into_owned()
        }),
    }
}

/// The job-completed event handler: stores the statistics under the domain's name.
unsafe extern "C" fn on_job_completed(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    params: sys::virTypedParameterPtr,
    nparams: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the `Arc<CompletedJobs>` pointer registered in connect(), kept alive
    // until libvirt calls `free_completed` after deregistration.
    let store = unsafe { &*(opaque as *const CompletedJobs) };
    // SAFETY: libvirt passes a valid domain for the duration of the callback; the name string
    // belongs to the domain object and is not freed by us.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            return;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    // SAFETY: libvirt passes `nparams` valid parameters, alive during the callback.
    let stats = unsafe { job_stats_from_params(params, nparams) };
    if let Ok(mut m) = store.lock() {
        m.insert(name, stats);
    }
}

unsafe extern "C" fn free_completed(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Arc::into_raw in connect(); libvirt calls this exactly once.
    drop(unsafe { Arc::from_raw(opaque as *const CompletedJobs) });
}

impl Hypervisor for Libvirt {
    fn connect(&self, uri: &str) -> Result<HostId, HvError> {
        start_event_loop();
        self.connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((uri.to_string(), std::time::Instant::now()));
        let opened = Connect::open(Some(uri));
        {
            let mut c = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = c.iter().position(|(u, _)| u == uri) {
                c.remove(i);
            }
        }
        let conn = opened.map_err(|e| HvError::Connect {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        let conn = ManuallyDrop::new(conn);
        // Keepalive: a dead peer is noticed in ~15 s instead of at TCP's timeout.
        let _ = conn.set_keep_alive(5, 3);
        let completed: Arc<CompletedJobs> = Arc::default();
        let opaque = Arc::into_raw(completed.clone()) as *mut c_void;
        // SAFETY: the job-completed callback has the signature libvirt documents for
        // VIR_DOMAIN_EVENT_ID_JOB_COMPLETED; libvirt's C API takes it cast to the generic
        // callback type (VIR_DOMAIN_EVENT_CALLBACK) and calls it with the right arguments.
        let cb: sys::virConnectDomainEventGenericCallback = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    sys::virTypedParameterPtr,
                    c_int,
                    *mut c_void,
                ),
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(on_job_completed)
        }
        .into();
        // SAFETY: valid connection; a null domain means "every domain"; `opaque` stays valid
        // until `free_completed`, which libvirt calls when the callback is deregistered.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED as c_int,
                cb,
                opaque,
                Some(free_completed),
            )
        };
        let callback_id = if id >= 0 {
            Some(id)
        } else {
            // Not registered: libvirt will not call free_completed, so release it here.
            // SAFETY: `opaque` came from Arc::into_raw above and was not handed over.
            unsafe { free_completed(opaque) };
            None
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.push(Arc::new(HostConn {
            uri: uri.to_string(),
            conn,
            monitor: std::sync::OnceLock::new(),
            completed,
            callback_id,
        }));
        Ok(HostId(hosts.len() - 1))
    }

    fn uri(&self, host: HostId) -> String {
        self.host(host).uri.clone()
    }

    fn waiting_on(&self) -> Vec<(String, std::time::Duration)> {
        self.connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(u, t)| (u.clone(), t.elapsed()))
            .collect()
    }

    fn host_facts(&self, host: HostId) -> Result<HostFacts, HvError> {
        let h = self.host(host);
        let hostname = h
            .conn
            .hostname()
            .map_err(|e| self.err(&h, "reading the hostname", e))?;
        let caps = h
            .conn
            .capabilities()
            .map_err(|e| self.err(&h, "reading the capabilities", e))?;
        let caps = ferry_core::facts::read_capabilities(&caps).unwrap_or_default();
        let node = h
            .conn
            .node_info()
            .map_err(|e| self.err(&h, "reading the node's memory", e))?;
        let memory_free = h
            .conn
            .free_memory()
            .map_err(|e| self.err(&h, "reading the node's free memory", e))?;
        Ok(HostFacts {
            hostname,
            uuid: caps.uuid,
            libvirt_version: h.conn.lib_version().unwrap_or(0) as u64,
            qemu_version: h.conn.hyp_version().unwrap_or(0) as u64,
            arch: caps.arch,
            cpu_model: caps.cpu_model,
            cpu_xml: caps.cpu_xml,
            memory_total: node.memory * 1024,
            memory_free,
            guest_types: caps.guest_types,
        })
    }

    fn domain_state(&self, host: HostId, name: &str) -> Result<Option<DomainState>, HvError> {
        let h = self.host(host);
        let dom = match self.lookup_on(&h, self.monitor(&h), name) {
            Ok(d) => d,
            Err(HvError::NoDomain { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (mut state, mut reason): (c_int, c_int) = (-1, -1);
        // SAFETY: `dom` is a valid domain; state and reason are writable ints.
        let r = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
        if r < 0 {
            let e = VirtError::last_error();
            if is_code(&e, sys::VIR_ERR_NO_DOMAIN) {
                return Ok(None);
            }
            return Err(self.err(&h, format!("reading the state of {name}"), e));
        }
        Ok(Some(match state as sys::virDomainState {
            sys::VIR_DOMAIN_RUNNING
                if reason == sys::VIR_DOMAIN_RUNNING_POSTCOPY_FAILED as c_int =>
            {
                DomainState::PostcopyFailed
            }
            sys::VIR_DOMAIN_PAUSED if reason == sys::VIR_DOMAIN_PAUSED_POSTCOPY_FAILED as c_int => {
                DomainState::PostcopyFailed
            }
            sys::VIR_DOMAIN_RUNNING => DomainState::Running,
            sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
            _ => DomainState::Other,
        }))
    }

    fn domain_xml(&self, host: HostId, name: &str, inactive: bool) -> Result<String, HvError> {
        let h = self.host(host);
        let dom = self.lookup(&h, name)?;
        let mut flags = sys::VIR_DOMAIN_XML_MIGRATABLE;
        if inactive {
            flags |= sys::VIR_DOMAIN_XML_INACTIVE;
        }
        dom.xml_desc(flags)
            .map_err(|e| self.err(&h, format!("reading the XML of {name}"), e))
    }

    fn list_domains(&self, host: HostId) -> Result<Vec<String>, HvError> {
        let h = self.host(host);
        let doms = h
            .conn
            .list_all_domains(0)
            .map_err(|e| self.err(&h, "listing domains", e))?;
        Ok(doms.iter().filter_map(|d| d.name().ok()).collect())
    }

    fn disk_size(&self, host: HostId, name: &str, target: &str) -> Result<DiskSize, HvError> {
        let h = self.host(host);
        let dom = self.lookup(&h, name)?;
        let disk = CString::new(target).map_err(|_| HvError::Libvirt {
            host: h.uri.clone(),
            what: "disk name".into(),
            message: format!("{target:?} contains a NUL byte"),
            code: 0,
        })?;
        let mut info = sys::virDomainBlockInfo {
            capacity: 0,
            allocation: 0,
            physical: 0,
        };
        // SAFETY: valid domain, NUL-terminated disk name, writable info struct. (virt's own
        // block_info reads the struct uninitialised when the call fails.)
        let r = unsafe { sys::virDomainGetBlockInfo(dom.as_ptr(), disk.as_ptr(), &mut info, 0) };
        if r < 0 {
            return Err(self.err(
                &h,
                format!("reading the size of disk {target} of {name}"),
                VirtError::last_error(),
            ));
        }
        Ok(DiskSize {
            capacity: info.capacity,
            allocation: info.allocation,
            physical: info.physical,
        })
    }

    fn probe_path(&self, host: HostId, path: &str) -> Result<PathProbe, HvError> {
        let h = self.host(host);
        let (dir, base) = split_path(path);
        let Some(pool) = self.pool_for_dir(&h, dir)? else {
            return Ok(PathProbe {
                info: None,
                parent_exists: false,
                parent_free: None,
                parent_pool: None,
            });
        };
        let parent_free = pool.pool.info().ok().map(|i| i.available);
        let info = match pool.pool.lookup_storage_vol_by_name(base) {
            Ok(vol) => {
                let mut info = self.vol_info(&h, &vol, path)?;
                // A `dir` pool reports a block device node as a "file" volume (libvirt 9.0);
                // its capacity is still the device's size. Under /dev it is a device.
                if info.kind == PathKind::File && path.starts_with("/dev/") {
                    info.kind = PathKind::Block;
                }
                Some(info)
            }
            Err(_) => None,
        };
        Ok(PathProbe {
            info,
            parent_exists: true,
            parent_free,
            parent_pool: pool.kind(),
        })
    }

    fn create_volume(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        format: &str,
    ) -> Result<(), HvError> {
        let h = self.host(host);
        let (pool, base) = self.pool_of(&h, path, "creating")?;
        let name = ferry_core::xml::escape_attr(base, '\'');
        let xml = if pool.kind() == Some(PoolKind::Logical) {
            // An LV: fully allocated, raw; LVM rounds its size up to the extent size (the plan
            // gives the guest a storage slice of the disk's exact size).
            format!(
                "<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>\
                 <allocation unit='bytes'>{capacity}</allocation></volume>"
            )
        } else {
            format!(
                "<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>\
                 <allocation unit='bytes'>0</allocation><target><format type='{}'/></target>\
                 </volume>",
                ferry_core::xml::escape_attr(format, '\'')
            )
        };
        StorageVol::create_xml(&pool.pool, &xml, 0)
            .map(|_| ())
            .map_err(|e| {
                self.err(
                    &h,
                    format!("creating volume {path} ({capacity} bytes, {format})"),
                    e,
                )
            })
    }

    fn delete_volume(&self, host: HostId, path: &str) -> Result<(), HvError> {
        let h = self.host(host);
        let (pool, base) = self.pool_of(&h, path, "deleting")?;
        let vol = pool
            .pool
            .lookup_storage_vol_by_name(base)
            .map_err(|e| self.err(&h, format!("finding volume {path}"), e))?;
        vol.delete(0)
            .map_err(|e| self.err(&h, format!("deleting volume {path}"), e))
    }

    fn migrate(
        &self,
        src: HostId,
        dst: HostId,
        name: &str,
        req: &MigrateRequest,
    ) -> Result<(), HvError> {
        let s = self.host(src);
        let d = self.host(dst);
        let dom = self.lookup(&s, name)?;
        let flags = req.flags.bits();
        let params = MigrateParameters {
            migrate_disks: req.migrate_disks.clone(),
            // None when resuming a failed post-copy: the target already has the guest.
            dest_xml: (!req.dest_xml.is_empty()).then(|| req.dest_xml.clone()),
            persist_xml: req.persist_xml.clone(),
            bandwidth: req.bandwidth_mib,
            uri: req.migrate_uri.clone(),
            disks_uri: req.disks_uri.clone(),
            ..Default::default()
        };
        let what = format!("migrating {name} to {}", d.uri);
        if req.flags.peer2peer {
            dom.migrate_to_uri3(Some(&req.dest_uri), params, flags)
                .map_err(|e| self.err(&s, what, e))
        } else {
            match dom.migrate3(&d.conn, params, flags) {
                Ok(_target_domain) => Ok(()),
                Err(e) => Err(self.err(&s, what, e)),
            }
        }
    }

    fn job_stats(&self, host: HostId, name: &str) -> Result<Option<JobStats>, HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        get_job_stats(self, &h, &dom, 0)
    }

    fn completed_job_stats(&self, host: HostId, name: &str) -> Result<Option<JobStats>, HvError> {
        let h = self.host(host);
        if let Some(s) = h.completed.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(Some(s));
        }
        let dom = match self.lookup(&h, name) {
            Ok(d) => d,
            Err(HvError::NoDomain { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        get_job_stats(self, &h, &dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
    }

    fn abort_job(&self, host: HostId, name: &str) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        // SAFETY: `dom` is a valid domain handle for the duration of the call.
        let r = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
        if r < 0 {
            return Err(self.err(
                &h,
                format!("aborting the job of {name}"),
                VirtError::last_error(),
            ));
        }
        Ok(())
    }

    fn set_max_speed(&self, host: HostId, name: &str, mib: u64) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        dom.migrate_set_max_speed(mib, 0)
            .map_err(|e| self.err(&h, format!("setting the bandwidth of {name}"), e))
    }

    fn set_max_downtime(&self, host: HostId, name: &str, ms: u64) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        dom.migrate_set_max_downtime(ms, 0)
            .map_err(|e| self.err(&h, format!("setting the max downtime of {name}"), e))
    }

    fn start_postcopy(&self, host: HostId, name: &str) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        // SAFETY: `dom` is a valid domain handle for the duration of the call; flags must be 0.
        let r = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
        if r < 0 {
            return Err(self.err(
                &h,
                format!("switching the migration of {name} to post-copy"),
                VirtError::last_error(),
            ));
        }
        Ok(())
    }

    fn suspend(&self, host: HostId, name: &str) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, self.monitor(&h), name)?;
        dom.suspend()
            .map_err(|e| self.err(&h, format!("pausing {name}"), e))
    }

    fn undefine(&self, host: HostId, name: &str) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup_on(&h, &h.conn, name)?;
        dom.undefine()
            .map_err(|e| self.err(&h, format!("undefining {name}"), e))
    }

    fn define(&self, host: HostId, xml: &str) -> Result<(), HvError> {
        let h = self.host(host);
        h.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(|e| self.err(&h, "defining the domain", e))
    }

    fn copy_volume(
        &self,
        src: HostId,
        src_path: &str,
        dst: HostId,
        dst_path: &str,
        bytes: u64,
    ) -> Result<(), HvError> {
        let (s, d) = (self.host(src), self.host(dst));
        let (from, _from_pool) = self.volume_at(&s, src_path, "reading")?;
        let (to, _to_pool) = self.volume_at(&d, dst_path, "writing")?;
        let down = virt::stream::Stream::new(&s.conn, 0)
            .map_err(|e| self.err(&s, "opening a stream", e))?;
        let up = virt::stream::Stream::new(&d.conn, 0)
            .map_err(|e| self.err(&d, "opening a stream", e))?;
        from.download(&down, 0, bytes, 0)
            .map_err(|e| self.err(&s, format!("reading {src_path}"), e))?;
        to.upload(&up, 0, bytes, 0)
            .map_err(|e| self.err(&d, format!("writing {dst_path}"), e))?;
        let mut buf = vec![0u8; 4 << 20];
        let mut moved = 0u64;
        loop {
            let n = down
                .recv(&mut buf)
                .map_err(|e| self.err(&s, format!("reading {src_path}"), e))?;
            if n <= 0 {
                break;
            }
            let chunk = &buf[..n as usize];
            let mut sent = 0usize;
            while sent < chunk.len() {
                let k = up
                    .send(&chunk[sent..])
                    .map_err(|e| self.err(&d, format!("writing {dst_path}"), e))?;
                sent += k.max(0) as usize;
            }
            moved += n as u64;
        }
        down.finish()
            .map_err(|e| self.err(&s, format!("reading {src_path}"), e))?;
        up.finish()
            .map_err(|e| self.err(&d, format!("writing {dst_path}"), e))?;
        if moved != bytes {
            return Err(HvError::Libvirt {
                host: d.uri.clone(),
                what: format!("copying {src_path} to {dst_path}"),
                message: format!("{moved} bytes arrived, {bytes} expected"),
                code: 0,
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
        let h = self.host(host);
        let (vol, pool) = self.volume_at(&h, path, "reading")?;
        let stream = virt::stream::Stream::new(&h.conn, 0)
            .map_err(|e| self.err(&h, "opening a stream", e))?;
        vol.download(&stream, offset, len, 0)
            .map_err(|e| self.err(&h, format!("reading {path}"), e))?;
        Ok(Box::new(VolStream {
            what: format!("reading {path}"),
            stream: Some(stream),
            h,
            _pool: pool,
        }))
    }

    fn write_volume(
        &self,
        host: HostId,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn VolumeWriter>, HvError> {
        let h = self.host(host);
        let (vol, pool) = self.volume_at(&h, path, "writing")?;
        let stream = virt::stream::Stream::new(&h.conn, 0)
            .map_err(|e| self.err(&h, "opening a stream", e))?;
        vol.upload(
            &stream,
            offset,
            len,
            sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM,
        )
        .map_err(|e| self.err(&h, format!("writing {path}"), e))?;
        Ok(Box::new(VolStream {
            what: format!("writing {path}"),
            stream: Some(stream),
            h,
            _pool: pool,
        }))
    }

    fn freeze_disks(
        &self,
        host: HostId,
        name: &str,
        overlays: &[(String, String)],
        keep: &[String],
    ) -> Result<(), HvError> {
        use ferry_core::xml::escape_attr;
        let h = self.host(host);
        let dom = self.lookup(&h, name)?;
        let mut xml = String::from("<domainsnapshot><disks>");
        for (disk, overlay) in overlays {
            xml.push_str(&format!(
                "<disk name='{}' snapshot='external' type='file'><driver type='qcow2'/>\
                 <source file='{}'/></disk>",
                escape_attr(disk, '\''),
                escape_attr(overlay, '\'')
            ));
        }
        for disk in keep {
            xml.push_str(&format!(
                "<disk name='{}' snapshot='no'/>",
                escape_attr(disk, '\'')
            ));
        }
        xml.push_str("</disks></domainsnapshot>");
        let flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
        dom.create_snapshot_xml(&xml, flags)
            .map(|_| ())
            .map_err(|e| self.err(&h, format!("freezing the disks of {name}"), e))
    }

    fn create_overlay(
        &self,
        host: HostId,
        path: &str,
        capacity: u64,
        backing: &str,
        backing_format: &str,
    ) -> Result<(), HvError> {
        use ferry_core::xml::escape_attr;
        let h = self.host(host);
        let (pool, base) = self.pool_of(&h, path, "creating")?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
             <target><format type='qcow2'/></target><backingStore><path>{}</path>\
             <format type='{}'/></backingStore></volume>",
            escape_attr(base, '\''),
            escape_attr(backing, '\''),
            escape_attr(backing_format, '\'')
        );
        StorageVol::create_xml(&pool.pool, &xml, 0)
            .map(|_| ())
            .map_err(|e| self.err(&h, format!("creating overlay {path} over {backing}"), e))
    }

    fn commit_active(
        &self,
        host: HostId,
        name: &str,
        disk: &str,
        within: std::time::Duration,
    ) -> Result<(), HvError> {
        let h = self.host(host);
        let dom = self.lookup(&h, name)?;
        let what = format!("committing the overlay of {name}'s {disk}");
        let cdisk = CString::new(disk).map_err(|_| HvError::Libvirt {
            host: h.uri.clone(),
            what: what.clone(),
            message: "the disk name has a NUL byte".into(),
            code: 0,
        })?;
        let last = |h: &HostConn| err_on(h, what.clone(), VirtError::last_error());
        // SAFETY: `dom` is valid for the call; `cdisk` is a NUL-terminated string that outlives
        // it; NULL base and top mean the active layer into its backing image.
        let r = unsafe {
            sys::virDomainBlockCommit(
                dom.as_ptr(),
                cdisk.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
                sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
            )
        };
        if r < 0 {
            return Err(last(&h));
        }
        // Ready when the job has copied everything (cur == end): then the pivot.
        let deadline = crate::wait::deadline_in(within);
        let ready =
            crate::wait::poll_until(deadline, std::time::Duration::from_millis(100), || {
                let mut info = sys::_virDomainBlockJobInfo {
                    type_: 0,
                    bandwidth: 0,
                    cur: 0,
                    end: 0,
                };
                // SAFETY: `dom` and `cdisk` are valid; `info` is writable for the call.
                let r = unsafe {
                    sys::virDomainGetBlockJobInfo(dom.as_ptr(), cdisk.as_ptr(), &mut info, 0)
                };
                (r == 1 && info.end > 0 && info.cur == info.end).then_some(())
            });
        if ready.is_none() {
            // SAFETY: as above; without PIVOT the job is cancelled and the guest stays on the
            // overlay.
            unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), cdisk.as_ptr(), 0) };
            return Err(HvError::Libvirt {
                host: h.uri.clone(),
                what,
                message: format!("the commit was not ready within {} s", within.as_secs()),
                code: 0,
            });
        }
        // SAFETY: as above.
        let r = unsafe {
            sys::virDomainBlockJobAbort(
                dom.as_ptr(),
                cdisk.as_ptr(),
                sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT,
            )
        };
        if r < 0 {
            return Err(last(&h));
        }
        Ok(())
    }

    fn guests(&self, host: HostId) -> Result<Vec<GuestFacts>, HvError> {
        let h = self.host(host);
        let doms = h
            .conn
            .list_all_domains(0)
            .map_err(|e| self.err(&h, "listing domains", e))?;
        let mut out = vec![];
        for d in &doms {
            // A domain that goes away while we look is simply not listed.
            let (Ok(name), Ok(info)) = (d.name(), d.info()) else {
                continue;
            };
            let active = d.is_active().unwrap_or(false);
            // job_info (virDomainGetJobInfo) is safe to call with no job running, unlike
            // virt's job_stats.
            let job = active
                && d.job_info()
                    .is_ok_and(|j| j.r#type != sys::VIR_DOMAIN_JOB_NONE as i32);
            out.push(GuestFacts {
                name,
                active,
                memory: info.memory * 1024,
                job,
            });
        }
        Ok(out)
    }

    fn pools(&self, host: HostId) -> Result<Vec<PoolFacts>, HvError> {
        let h = self.host(host);
        let pools = h
            .conn
            .list_all_storage_pools(0)
            .map_err(|e| self.err(&h, "listing storage pools", e))?;
        let mut out = vec![];
        for p in &pools {
            let Some(mut f) = p
                .xml_desc(0)
                .ok()
                .and_then(|x| ferry_core::facts::read_pool(&x))
            else {
                continue;
            };
            // Transient pools Ferry opened for a directory are not the host's storage.
            if f.name.starts_with("ferry-") {
                continue;
            }
            f.active = p.is_active().unwrap_or(false);
            if let Ok(i) = p.info() {
                f.capacity = i.capacity;
                f.available = i.available;
            }
            out.push(f);
        }
        Ok(out)
    }

    fn networks(&self, host: HostId) -> Result<Vec<String>, HvError> {
        let h = self.host(host);
        let nets = h
            .conn
            .list_all_networks(sys::VIR_CONNECT_LIST_NETWORKS_ACTIVE)
            .map_err(|e| self.err(&h, "listing networks", e))?;
        Ok(nets.iter().filter_map(|n| n.name().ok()).collect())
    }

    fn compare_cpu(&self, host: HostId, q: &CpuQuery) -> Result<CpuCompat, HvError> {
        let h = self.host(host);
        let bad = |what: &str| HvError::Libvirt {
            host: h.uri.clone(),
            what: "comparing the guest's CPU".into(),
            message: format!("{what} contains a NUL byte"),
            code: 0,
        };
        let cstr = |s: &Option<String>, what: &str| {
            s.as_deref()
                .map(|v| CString::new(v).map_err(|_| bad(what)))
                .transpose()
        };
        let xml = CString::new(q.cpu_xml.as_str()).map_err(|_| bad("the CPU XML"))?;
        let arch = cstr(&q.arch, "the arch")?;
        let machine = cstr(&q.machine, "the machine type")?;
        let virttype = cstr(&q.domain_type, "the domain type")?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: valid connection; every string is NUL-terminated and outlives the call, or
        // null where libvirt documents null as "the default"; flags 0. virt 0.5 does not wrap
        // virConnectCompareHypervisorCPU.
        let r = unsafe {
            sys::virConnectCompareHypervisorCPU(
                h.conn.as_ptr(),
                std::ptr::null(),
                ptr(&arch),
                ptr(&machine),
                ptr(&virttype),
                xml.as_ptr(),
                0,
            )
        };
        Ok(match r {
            sys::VIR_CPU_COMPARE_IDENTICAL => CpuCompat::Identical,
            sys::VIR_CPU_COMPARE_SUPERSET => CpuCompat::Superset,
            sys::VIR_CPU_COMPARE_INCOMPATIBLE => CpuCompat::Incompatible,
            _ => {
                // An error: read it on this thread before anything else (and drop it: the
                // comparison is then "not checked", not a refusal).
                let _ = VirtError::last_error();
                CpuCompat::NotChecked
            }
        })
    }

    fn canary_create(&self, host: HostId, dir: &str) -> Result<Option<String>, HvError> {
        let h = self.host(host);
        let Some(pool) = self.pool_for_dir(&h, dir)? else {
            return Ok(None);
        };
        let name = crate::canary_name();
        let xml = format!(
            "<volume><name>{name}</name><capacity unit='bytes'>0</capacity>\
             <target><format type='raw'/></target></volume>"
        );
        StorageVol::create_xml(&pool.pool, &xml, 0)
            .map_err(|e| self.err(&h, format!("creating canary volume {name} in {dir}"), e))?;
        Ok(Some(name))
    }

    fn canary_seen(&self, host: HostId, dir: &str, name: &str) -> Result<bool, HvError> {
        let h = self.host(host);
        let Some(pool) = self.pool_for_dir(&h, dir)? else {
            return Ok(false);
        };
        Ok(pool.pool.lookup_storage_vol_by_name(name).is_ok())
    }

    fn canary_delete(&self, host: HostId, dir: &str, name: &str) -> Result<(), HvError> {
        self.delete_volume(host, &format!("{}/{name}", dir.trim_end_matches('/')))
    }
}

/// `virDomainGetJobStats`, safe when no job runs (virt's wrapper is not: it builds a Vec from
/// the NULL array libvirt returns then).
fn get_job_stats(
    lv: &Libvirt,
    h: &HostConn,
    dom: &Domain,
    flags: c_uint,
) -> Result<Option<JobStats>, HvError> {
    let mut job_type: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: valid domain; libvirt allocates `params` (or leaves it NULL) and sets `n`.
    let r = unsafe {
        sys::virDomainGetJobStats(dom.as_ptr(), &mut job_type, &mut params, &mut n, flags)
    };
    if r < 0 {
        let e = VirtError::last_error();
        if is_code(&e, sys::VIR_ERR_NO_DOMAIN) || is_code(&e, sys::VIR_ERR_OPERATION_INVALID) {
            return Ok(None);
        }
        return Err(lv.err(h, "reading job statistics", e));
    }
    let stats = if params.is_null() || n == 0 || job_type == sys::VIR_DOMAIN_JOB_NONE as c_int {
        None
    } else {
        // SAFETY: libvirt returned `n` parameters at `params`.
        Some(unsafe { job_stats_from_params(params, n) })
    };
    if !params.is_null() {
        // SAFETY: `params` was allocated by libvirt for `n` parameters and is freed once.
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(stats)
}

/// A volume's storage stream, a download or an upload: aborted if dropped unfinished.
struct VolStream {
    what: String,
    stream: Option<virt::stream::Stream>,
    h: Arc<HostConn>,
    /// The transient pool the volume was found through, if any: it lives as long as the stream.
    _pool: Option<PoolGuard>,
}

impl VolStream {
    /// The open stream (`None` once finished).
    fn open(&self) -> Option<&virt::stream::Stream> {
        self.stream.as_ref()
    }

    fn fail(&self, e: VirtError) -> HvError {
        err_on(&self.h, self.what.clone(), e)
    }

    /// End the stream: libvirt says whether the other end has every byte.
    fn end(&mut self) -> Result<(), HvError> {
        match self.stream.take() {
            Some(s) => s.finish().map_err(|e| self.fail(e)),
            None => Ok(()),
        }
    }
}

impl Drop for VolStream {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.abort();
        }
    }
}

impl VolumeReader for VolStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, HvError> {
        let Some(s) = self.open() else {
            return Ok(0);
        };
        let n = s.recv(buf).map_err(|e| self.fail(e))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn finish(mut self: Box<Self>) -> Result<(), HvError> {
        self.end()
    }
}

impl VolumeWriter for VolStream {
    fn write(&mut self, mut data: &[u8]) -> Result<(), HvError> {
        let Some(s) = self.open() else {
            return Ok(());
        };
        while !data.is_empty() {
            let k = s.send(data).map_err(|e| self.fail(e))?;
            data = &data[usize::try_from(k).unwrap_or(0).min(data.len())..];
        }
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), HvError> {
        let Some(s) = self.open() else {
            return Ok(());
        };
        let len = i64::try_from(len).map_err(|_| HvError::Libvirt {
            host: self.h.uri.clone(),
            what: self.what.clone(),
            message: format!("a hole of {len} bytes is too long"),
            code: 0,
        })?;
        // SAFETY: the stream is valid while `s` holds it; a hole is only a length.
        let r = unsafe { sys::virStreamSendHole(s.as_ptr(), len, 0) };
        if r < 0 {
            return Err(self.fail(VirtError::last_error()));
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), HvError> {
        self.end()
    }
}

#[cfg(test)]
mod tests {
    //! Against libvirt's `test:///default` driver (in-process, no daemon): lookups, states and
    //! XML through the real bindings. Migration itself is proven in the lab.
    use super::*;

    #[test]
    fn reads_domains_states_and_facts_through_the_bindings() {
        let lv = Libvirt::new();
        let h = lv.connect("test:///default").unwrap();
        assert_eq!(lv.uri(h), "test:///default");
        let facts = lv.host_facts(h).unwrap();
        assert!(!facts.hostname.is_empty());
        assert!(facts.libvirt_version >= 9_000_000, "{facts:?}");
        assert_eq!(
            lv.domain_state(h, "test").unwrap(),
            Some(DomainState::Running)
        );
        assert_eq!(lv.domain_state(h, "no-such-guest").unwrap(), None);
        assert!(lv.list_domains(h).unwrap().contains(&"test".to_string()));
        let xml = lv.domain_xml(h, "test", false).unwrap();
        assert_eq!(ferry_core::domain::parse(&xml).unwrap().name, "test");
        assert!(matches!(
            lv.domain_xml(h, "no-such-guest", true),
            Err(HvError::NoDomain { .. })
        ));
    }

    #[test]
    fn the_flag_table_has_libvirts_values() {
        use ferry_core::plan::FLAG_TABLE;
        let want = [
            ("LIVE", sys::VIR_MIGRATE_LIVE),
            ("PEER2PEER", sys::VIR_MIGRATE_PEER2PEER),
            ("PERSIST_DEST", sys::VIR_MIGRATE_PERSIST_DEST),
            ("UNDEFINE_SOURCE", sys::VIR_MIGRATE_UNDEFINE_SOURCE),
            ("NON_SHARED_DISK", sys::VIR_MIGRATE_NON_SHARED_DISK),
            ("NON_SHARED_INC", sys::VIR_MIGRATE_NON_SHARED_INC),
            ("UNSAFE", sys::VIR_MIGRATE_UNSAFE),
            ("ABORT_ON_ERROR", sys::VIR_MIGRATE_ABORT_ON_ERROR),
            ("AUTO_CONVERGE", sys::VIR_MIGRATE_AUTO_CONVERGE),
            ("POSTCOPY", sys::VIR_MIGRATE_POSTCOPY),
            ("TLS", sys::VIR_MIGRATE_TLS),
            (
                "NON_SHARED_SYNCHRONOUS_WRITES",
                sys::VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES,
            ),
            ("POSTCOPY_RESUME", sys::VIR_MIGRATE_POSTCOPY_RESUME),
        ];
        assert_eq!(FLAG_TABLE.len(), want.len());
        for (d, (name, bit)) in FLAG_TABLE.iter().zip(want) {
            assert_eq!((d.name, d.bit), (name, bit));
        }
    }

    #[test]
    fn a_refused_connection_names_the_uri() {
        let lv = Libvirt::new();
        let e = lv
            .connect("qemu+unix:///system?socket=/nonexistent/sock")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot connect to qemu+unix:///system?socket=/nonexistent/sock"),
            "{e}"
        );
    }
}
