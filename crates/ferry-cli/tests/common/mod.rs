//! The lab, driven from tests: `lab up` on creation, `lab down` on drop (even when the test
//! fails), one lab at a time (a lock file shared by every test process).

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const GUEST: &str = "lab-guest";
pub const H1: &str = "qemu+tcp://10.77.0.1/system";
pub const H2: &str = "qemu+tcp://10.77.0.2/system";
pub const H3: &str = "qemu+tcp://10.77.0.3/system";
pub const MIB: u64 = 1 << 20;
/// Inside the lab's directory: `lab down` removes it with everything else.
pub const JOURNAL: &str = "/var/lib/ferry-lab/journal.db";

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
/// lab's addresses: no packet for them can leave the machine). Under `LC_ALL=C`: its words are
/// the ones the tests read.
pub fn virsh(uri: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(lab_script())
        .env("LC_ALL", "C")
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

/// The state of `guest` on `uri` ("running", "shut off", or "" when not defined there); an
/// error when the host does not answer (then nothing can be said of the guest there).
pub fn try_state_of(uri: &str, guest: &str) -> Result<String, VirshFailed> {
    let failed = |what: &str, stderr: String| VirshFailed {
        uri: uri.to_string(),
        what: what.to_string(),
        stderr,
    };
    let listed = || -> Result<bool, VirshFailed> {
        let (ok, names, e) = virsh(uri, &["list", "--all", "--name"]);
        if ok {
            Ok(names.lines().any(|n| n.trim() == guest))
        } else {
            Err(failed("list --all", e))
        }
    };
    if !listed()? {
        return Ok(String::new());
    }
    let (ok, out, e) = virsh(uri, &["domstate", guest]);
    if ok {
        return Ok(out.trim().to_string());
    }
    // Undefined between the two questions (a migration ending): absent now, if the host says
    // so; any other failure is an error.
    if !listed()? {
        return Ok(String::new());
    }
    Err(failed(&format!("domstate {guest}"), e))
}

/// A virsh call that failed: the host did not answer, or refused the question.
#[derive(Debug)]
pub struct VirshFailed {
    pub uri: String,
    pub what: String,
    pub stderr: String,
}

impl std::fmt::Display for VirshFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: virsh {}: {}",
            self.uri,
            self.what,
            self.stderr.trim()
        )
    }
}

impl std::error::Error for VirshFailed {}

/// [`try_state_of`] `guest`, where the host must answer.
pub fn state_of(uri: &str, guest: &str) -> String {
    try_state_of(uri, guest).unwrap_or_else(|e| panic!("{e}"))
}

/// The lab guest's state on `uri`, where the host must answer.
pub fn domstate(uri: &str) -> String {
    state_of(uri, GUEST)
}

/// Cold-start the lab guest on `host` (`h2`, at `uri`) from its persistent definition, and wait
/// until the new boot beats on its serial console.
pub fn cold_start(host: &str, uri: &str) {
    let log = format!("/var/lib/ferry-lab/{host}/log/qemu/{GUEST}-serial.log");
    let read = || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let boots = read().matches("FERRY-BOOT").count();
    let (ok, _, e) = virsh(uri, &["destroy", GUEST]);
    assert!(ok, "destroy on {host}: {e}");
    let (ok, _, e) = virsh(uri, &["start", GUEST]);
    assert!(
        ok,
        "cold start on {host} from the persistent definition: {e}"
    );
    wait_until(
        "the cold-started guest beats",
        Duration::from_secs(120),
        || {
            let text = read();
            text.matches("FERRY-BOOT").count() > boots
                && text
                    .rsplit("FERRY-BOOT")
                    .next()
                    .is_some_and(|since| since.contains("FERRY-HB "))
        },
    );
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

/// `ferry CMD lab-guest` from h1 to h2 with the seed's rules (the NFS mount's other name, vdb
/// copied onto h2's namespace) and `extra`.
pub fn seed_args<'a>(cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        cmd,
        GUEST,
        "--from",
        H1,
        "--to",
        H2,
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/ferry-lab/nvme1n5",
    ];
    a.extend_from_slice(extra);
    a
}

/// `ferry migrate lab-guest` from h1 to h2 with the lab's flags and `extra`.
pub fn migrate_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "migrate",
        GUEST,
        "--from",
        H1,
        "--to",
        H2,
        "--unsafe",
        "--journal",
        JOURNAL,
    ];
    a.extend_from_slice(extra);
    a
}

pub fn migrate(extra: &[&str]) -> (i32, String, String) {
    ferry(&migrate_args(extra))
}

/// The JSON result line of `ferry migrate --json`.
pub fn result(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"result\""))
        .unwrap_or_else(|| panic!("no result line in {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// `--preseed` of lab-guest's vdb onto h2's device, the overlays in the hosts' stores.
pub const PRESEED: [&str; 7] = [
    "--map",
    "/mnt/nfs=/mnt/nfs_second_mount",
    "--copy",
    "vdb=/dev/ferry-lab/nvme1n5",
    "--preseed",
    "--preseed-store",
    "/srv/ferry-store",
];

/// Whether a `--json` result's cleanup committed disk `disk`'s overlay back on the source.
pub fn thawed(res: &serde_json::Value, disk: &str) -> bool {
    res["error"]["cleanup"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["cleanup"] == "thawed" && c["disk"] == disk)
    })
}

/// `sh -c CMD` inside a lab host's namespaces.
pub fn lab_shell(host: &str, cmd: &str) -> (bool, String, String) {
    lab(&["shell", host, "sh", "-c", cmd])
}

/// The files in a lab host's /srv/ferry-store (where Ferry creates copy targets).
pub fn store(host: &str) -> Vec<String> {
    let dir = format!("/var/lib/ferry-lab/{host}/store");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Poll `cond` every 200 ms until it holds; panic with `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `ferry migrate --json` running in the background (in the lab's client namespace); its
/// output is read as it comes, so a test can wait for a phase.
pub struct Running {
    child: Child,
    /// The ferry process itself (the child is the `lab client` wrapper).
    pub pid: u32,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// The phase event `ferry migrate --json` prints for `phase` ("storage_copy", "memory", ...).
pub fn phase(phase: &str) -> String {
    format!("\"phase\":\"{phase}\"")
}

impl Running {
    /// Start `ferry migrate --json` from h1 to h2 with `extra`; return once the storage copy
    /// is under way.
    pub fn start(extra: &[&str]) -> Running {
        let mut args = migrate_args(extra);
        args.push("--json");
        let mut r = Running::spawn(&args);
        r.wait_for_output(&phase("storage_copy"), Duration::from_secs(90));
        r
    }

    /// Start `ferry ARGS` in the lab's client namespace; return once it runs.
    pub fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(lab_script())
            .args(["client", env!("CARGO_BIN_EXE_ferry")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut r = Running {
            pid: 0,
            child,
            lines,
            stdout: vec![],
            stderr: Some(stderr),
        };
        let parent = r.child.id().to_string();
        let mut pids = vec![];
        wait_until("ferry started", Duration::from_secs(10), || {
            let (_, out, _) = run(Command::new("pgrep").args(["-x", "ferry", "-P", &parent]));
            pids = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
            !pids.is_empty()
        });
        assert_eq!(pids.len(), 1, "one ferry process expected: {pids:?}");
        r.pid = pids[0];
        r
    }

    /// Wait until ferry prints a line containing `needle`.
    pub fn wait_for_output(&mut self, needle: &str, within: Duration) {
        self.wait_for_line(needle, within, |l| l.contains(needle));
    }

    /// Wait until ferry prints a line that `pred` accepts (`what` names it in the panic).
    pub fn wait_for_line(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) {
        let needle = what;
        let end = Instant::now() + within;
        while !self.stdout.iter().any(|l| pred(l)) {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(l) => self.stdout.push(l),
                Err(_) => panic!(
                    "ferry printed no {needle} within {within:?}:\n{}",
                    self.stdout.join("\n")
                ),
            }
        }
    }

    /// The first line printed so far that contains `needle`.
    pub fn line_with(&self, needle: &str) -> String {
        self.stdout
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no line with {needle}:\n{}", self.stdout.join("\n")))
    }

    /// Wait (bounded) for ferry to end: its exit code (-1: killed), stdout and stderr.
    pub fn wait(mut self, within: Duration) -> (i32, String, String) {
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > within {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                panic!("ferry did not end within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let status = self.child.wait().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        self.stdout.extend(self.lines.iter());
        let said = self
            .stdout
            .iter()
            .rev()
            .find(|l| l.contains("\"event\":\"result\""))
            .map_or("no result line", |l| l.as_str());
        eprintln!("ferry (pid {}) ended, {status}: {said}", self.pid);
        (status.code().unwrap_or(-1), self.stdout.join("\n"), err)
    }
}
