//! The lab, driven from tests: `lab up` on creation, `lab down` on drop (even when the test
//! fails), one lab at a time (a lock file shared by every test process).

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const GUEST: &str = "lab-guest";
pub const H1: &str = "qemu+tcp://10.77.0.1/system";
pub const H2: &str = "qemu+tcp://10.77.0.2/system";
pub const H3: &str = "qemu+tcp://10.77.0.3/system";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn lab_script() -> PathBuf {
    root().join("lab/lab")
}

/// Run a command; return its output (stdout + stderr as text) and whether it succeeded.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn lab(args: &[&str]) -> (bool, String, String) {
    run(Command::new(lab_script()).args(args))
}

/// virsh against a lab host, from the lab's client namespace (the only place that reaches the
/// lab's addresses: no packet for them can leave the machine).
pub fn virsh(uri: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(lab_script())
        .args(["client", "virsh", "-q", "-c", uri])
        .args(args))
}

/// The ferry binary, run in the lab's client namespace.
pub fn ferry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(lab_script())
        .arg("client")
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The state of the lab guest on `uri` ("running", "shut off", or "" when not defined there).
pub fn domstate(uri: &str) -> String {
    let (ok, out, _) = virsh(uri, &["domstate", GUEST]);
    if ok {
        out.trim().to_string()
    } else {
        String::new()
    }
}

/// The lab tests' lock: one lab at a time on this machine.
pub fn lab_lock() -> File {
    let lock = File::create("/run/ferry-lab-tests.lock").expect("lock file");
    lock.lock().expect("lab lock");
    lock
}

pub struct Lab {
    _lock: File,
    pub timings: Vec<(&'static str, Duration)>,
}

impl Lab {
    /// Bring the lab up with `args` (e.g. `["--hosts", "3"]`).
    pub fn up(args: &[&str]) -> Lab {
        let lock = lab_lock();
        // A lab left by a killed run: take it down first.
        let _ = lab(&["down"]);
        let t = Instant::now();
        let mut a = vec!["up"];
        a.extend_from_slice(args);
        let (ok, out, err) = lab(&a);
        let mut l = Lab {
            _lock: lock,
            timings: vec![],
        };
        assert!(ok, "lab up failed:\n{out}\n{err}");
        l.timings.push(("up", t.elapsed()));
        l
    }

    pub fn verify_guest(&self, host: &str) -> String {
        let (ok, out, err) = lab(&["verify-guest", host]);
        assert!(ok, "verify-guest {host} failed:\n{out}\n{err}");
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let t = Instant::now();
        let (ok, out, err) = lab(&["down"]);
        eprintln!("lab down ({:?}): {out}{err}", t.elapsed());
        if !ok && !std::thread::panicking() {
            panic!("lab down failed: {out}{err}");
        }
    }
}

/// Nothing of the lab is left in the root namespace.
pub fn assert_lab_gone() {
    assert!(
        !std::path::Path::new("/var/lib/ferry-lab").exists(),
        "lab files left"
    );
    assert!(
        !std::path::Path::new("/dev/ferry-lab").exists(),
        "/dev/ferry-lab left"
    );
    let (_, links, _) = run(Command::new("ip").args(["-o", "link"]));
    assert!(!links.contains("lab-h"), "lab link left: {links}");
    let (_, loops, _) = run(Command::new("losetup").args(["-l", "-n"]));
    assert!(
        !loops.contains("/var/lib/ferry-lab"),
        "loop devices left: {loops}"
    );
    let (_, ps, _) = run(Command::new("ps").args(["-eo", "stat=,args="]));
    let live: Vec<&str> = ps
        .lines()
        .filter(|l| !l.trim_start().starts_with('Z'))
        .filter(|l| l.contains("/var/lib/ferry-lab"))
        .collect();
    assert!(live.is_empty(), "lab processes left: {live:?}");
    let marked = lab_marked_processes();
    assert!(
        marked.is_empty(),
        "processes with the lab's mark left: {marked:?}"
    );
}

/// Live processes whose environment carries the lab's mark (whatever their command line).
pub fn lab_marked_processes() -> Vec<String> {
    let mark = b"FERRY_LAB_MARK=/var/lib/ferry-lab";
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == mark) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}
