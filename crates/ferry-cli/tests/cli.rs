//! The command line's own surface: completions, the man page, and the errors an operator gets
//! before any host is contacted.

use std::process::Command;

fn ferry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_INVENTORY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A file of this test process in the temporary directory, removed (with a journal's side
/// files) when dropped: a run leaves nothing behind.
struct Tmp(String);

impl std::ops::Deref for Tmp {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for Tmp {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl std::fmt::Display for Tmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        for side in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{side}", self.0));
        }
    }
}

fn tmp(name: &str, text: &str) -> Tmp {
    let p = std::env::temp_dir().join(format!("ferry-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    Tmp(p.display().to_string())
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let (code, bash, _) = ferry(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(bash.contains("_ferry()"), "{bash}");
    for flag in ["--inventory", "--copy", "--map", "hosts"] {
        assert!(bash.contains(flag), "bash completion lacks {flag}");
    }
    let (code, zsh, _) = ferry(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef ferry"), "{zsh}");
    let (code, man, _) = ferry(&["man"]);
    assert_eq!(code, 0);
    assert!(man.starts_with(".ie") || man.contains(".TH ferry"), "{man}");
    assert!(
        man.contains("inventory"),
        "the man page explains the inventory"
    );
    let (code, _, err) = ferry(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn without_a_target_or_an_inventory_ferry_says_what_to_give() {
    if std::path::Path::new("/etc/ferry/inventory.toml").exists() {
        return; // this machine has a default inventory: the case cannot arise here
    }
    let (code, _, err) = ferry(&["migrate", "g", "--from", "test:///default"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no target: give --to"), "{err}");
    assert!(err.contains("--inventory FILE"), "{err}");
    let (code, _, err) = ferry(&["hosts"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--inventory FILE"), "{err}");
}

#[test]
fn a_bad_inventory_is_refused_with_the_file_and_the_key() {
    let typo = tmp(
        "typo.toml",
        "[[host]]\nname = \"h1\"\nuri = \"qemu:///system\"\nreserve_mem = \"1GiB\"\n",
    );
    let (code, _, err) = ferry(&["hosts", "--inventory", &typo]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("in the inventory {typo}")), "{err}");
    assert!(err.contains("reserve_mem"), "{err}");
    let (code, _, err) = ferry(&["hosts", "--inventory", "/nonexistent/inv.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the inventory /nonexistent/inv.toml"),
        "{err}"
    );
}

#[test]
fn plan_is_online_with_a_guest_or_offline_with_files_not_both() {
    let (code, _, err) = ferry(&["plan", "--domain-xml", "x.xml"]);
    assert_eq!(code, 2, "offline needs --to: {err}");
    assert!(err.contains("--to"), "{err}");
    let (code, _, err) = ferry(&["plan", "g", "--domain-xml", "x.xml", "--to", "u"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = ferry(&["plan", "g", "--to", "u"]);
    assert_eq!(code, 2, "online needs --from: {err}");
    assert!(err.contains("--from"), "{err}");
}

/// A libvirt URI on loopback whose listener accepts connections and never says a word (for the
/// rest of the test process).
fn silent_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut conns = vec![];
        for c in listener.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(conns);
    });
    format!("qemu+tcp://127.0.0.1:{port}/system")
}

/// Run ferry, killing it (and failing) if it has not ended after a minute: a hang fails the
/// test instead of blocking the suite.
fn ferry_bounded(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("ferry {args:?} did not end: it hangs on a silent host");
}

#[test]
fn a_host_that_accepts_and_never_answers_is_named_when_the_timeout_ends_the_run() {
    // A listener on loopback that accepts connections and never says a word.
    let uri = silent_host();
    let (code, _, err) = ferry_bounded(&[
        "migrate",
        "g",
        "--from",
        &uri,
        "--to",
        "test:///default",
        "--timeout",
        "3",
        "--dry-run",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timed out after 3 s (--timeout)"), "{err}");
    assert!(err.contains(&format!("no answer from {uri}")), "{err}");
    assert!(err.contains("nothing was created or moved"), "{err}");
    // Without --timeout: the connection deadline.
    let (code, _, err) = ferry_bounded(&[
        "migrate",
        "g",
        "--from",
        &uri,
        "--to",
        "test:///default",
        "--connect-timeout",
        "2",
        "--dry-run",
    ]);
    assert_eq!(code, Some(1), "{err}");
    // The deadline is met by whichever notices first: the reading of the hosts, or the
    // read-only step's stop; both name the host and the deadline.
    assert!(err.contains(&uri) && err.contains("no answer"), "{err}");
    assert!(err.contains("within 2 s"), "{err}");
    assert_eq!(
        err.matches(&uri).count(),
        2,
        "the host once, in the step's line too: {err}"
    );
    // ferry hosts: the silent host is reported as not answering; the others are still read.
    let inv = tmp(
        "silent.toml",
        &format!(
            "[[host]]\nname = \"silent\"\nuri = \"{uri}\"\n\
             [[host]]\nname = \"test\"\nuri = \"test:///default\"\n"
        ),
    );
    let (code, out, err) = ferry_bounded(&[
        "hosts",
        "--inventory",
        &inv,
        "--json",
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(code, Some(2), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["reachable"], false);
    let why = hosts[0]["report"]["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("cannot connect to {uri}: no answer within 2 s")),
        "{why}"
    );
    assert_eq!(hosts[1]["reachable"], true, "{}", hosts[1]);
}

#[test]
fn one_guest_one_migration_across_ferry_processes() {
    // The first migration waits on a silent host, holding the guest's lock.
    let uri = silent_host();
    let journal = tmp("lock.db", "");
    std::fs::remove_file(&journal).unwrap();
    let args = |timeout: &'static str| {
        vec![
            "migrate".to_string(),
            "g".into(),
            "--from".into(),
            uri.clone(),
            "--to".into(),
            "test:///default".into(),
            "--journal".into(),
            journal.to_string(),
            "--connect-timeout".into(),
            timeout.into(),
        ]
    };
    let mut first = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args("60"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until its run is in the journal.
    let mut seen = false;
    for _ in 0..300 {
        let (code, out, _) = ferry(&["history", "--journal", &journal]);
        if code == 0 && out.contains("unfinished") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "the first migration never began its run");
    let refs: Vec<String> = args("2");
    let second: Vec<&str> = refs.iter().map(String::as_str).collect();
    let (code, _, err) = ferry_bounded(&second);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("g is being migrated by run #1"), "{err}");
    assert!(err.contains(&format!("ferry pid {}", first.id())), "{err}");
    assert!(
        err.contains("refused before anything was created or moved"),
        "{err}"
    );
    // The first Ferry dies without giving the lock back: the next one takes it over, says so.
    first.kill().unwrap();
    first.wait().unwrap();
    let (code, _, err) = ferry_bounded(&second);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "took over the lock of run #1 (ferry pid {} is gone)",
            first.id()
        )),
        "{err}"
    );
    let (_, hist, herr) = ferry(&["history", "--journal", &journal]);
    assert!(hist.contains("refused"), "{hist}{herr}");
}

#[test]
fn ferry_abort_stops_a_migration_run_by_another_process() {
    let uri = silent_host();
    let journal = tmp("abort.db", "");
    std::fs::remove_file(&journal).unwrap();
    let (code, _, err) = ferry_bounded(&["abort", "g", "--journal", &journal]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no Ferry is migrating g"), "{err}");
    // The migration waits on a silent host, holding the guest's lock.
    let first = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["migrate", "g", "--from", &uri, "--to", "test:///default"])
        .args(["--journal", &journal, "--connect-timeout", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = false;
    for _ in 0..300 {
        let (_, out, _) = ferry(&["history", "--journal", &journal]);
        if out.contains("unfinished") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "the migration never began its run");
    let (code, out, err) = ferry_bounded(&["abort", "g", "--journal", &journal]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("asked the Ferry running run #1 (g "), "{err}");
    // The run ended in the journal, refused: the journal says what happened.
    assert!(
        out.contains(
            "run #1: refused: cancelled by the operator (Ctrl-C or ferry abort) in step target"
        ),
        "{out}"
    );
    let first = first.wait_with_output().unwrap();
    let ferr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{ferr}");
    assert!(ferr.contains("`ferry abort` (pid"), "{ferr}");
    assert!(
        ferr.contains("cancelled by the operator (Ctrl-C or ferry abort) in step target"),
        "{ferr}"
    );
    // It has ended: abort says so, and recover has nothing to do.
    let (code, _, err) = ferry_bounded(&["abort", "1", "--journal", &journal]);
    assert_eq!(code, Some(1));
    assert!(err.contains("run #1 has already ended: refused"), "{err}");
    let (code, out, err) = ferry_bounded(&["recover", "--dry-run", "--journal", &journal]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("nothing to recover"), "{out}");
    let (code, _, err) = ferry_bounded(&["abort", "7", "--journal", &journal]);
    assert_eq!(code, Some(1));
    assert!(err.contains("there is no run #7"), "{err}");
}

#[test]
fn simulate_compares_every_policy_against_the_bound() {
    let (code, out, err) = ferry(&[
        "simulate", "--hosts", "50", "--guests", "500", "--drain", "5", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["moves"], 50);
    let policies = v["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["serial", "fixed-4", "kubevirt", "all-at-once", "ferry"]
    );
    let ratio = |p: &serde_json::Value| p["bound_over_makespan"].as_f64().unwrap();
    let best = ratio(&policies[4]);
    for p in policies {
        assert!(ratio(p) <= 1.0 + 1e-9, "{p} beats the lower bound");
        assert!(best >= ratio(p), "{p} beats ferry's {best}");
    }
    let (code, _, err) = ferry(&["simulate", "--hosts", "5", "--drain", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("leaves no host"), "{err}");
}

/// `ferry recover` of a run whose hosts accept the connection and never answer: bounded by
/// --connect-timeout, each host named as not answering, nothing done.
#[test]
fn recover_of_a_run_on_a_silent_host_ends_within_its_connect_timeout() {
    let uri = silent_host();
    let journal = tmp("recover-silent.db", "");
    std::fs::remove_file(&journal).unwrap();
    {
        let j = ferry_journal::Journal::open(std::path::Path::new(&*journal)).unwrap();
        j.begin_run("g", &uri, &uri, "{}").unwrap();
    }
    let t = std::time::Instant::now();
    let (code, out, err) = ferry_bounded(&[
        "recover",
        "--dry-run",
        "--journal",
        &journal,
        "--connect-timeout",
        "2",
    ]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "it waited"
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("{uri} did not answer (no answer within 2 s)")),
        "{out}"
    );
    assert!(out.contains("nothing is done without both hosts"), "{out}");
}

/// The inventory's `[journal]` is the journal of every command that reads it (`migrate`, and
/// `history`, which takes the inventory from FERRY_INVENTORY); `--journal` overrides it.
#[test]
fn the_inventorys_journal_is_used_unless_journal_is_given() {
    let dir = std::env::temp_dir().join(format!("ferry-cli-{}-invjournal", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("fleet.db");
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[[host]]\nname = \"t\"\nuri = \"test:///default\"\n[journal]\nurl = \"{}\"\n",
            journal.display()
        ),
    )
    .unwrap();
    let with_inventory = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_INVENTORY", &inventory)
            .env_remove("FERRY_JOURNAL")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // Refused (the source is the only host), but journaled: in the inventory's journal.
    let (code, _, err) = with_inventory(&["migrate", "test", "--from", "t", "--to", "t"]);
    assert_eq!(code, 1, "{err}");
    assert!(journal.exists(), "{err}");
    let (code, out, err) = with_inventory(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs[0]["guest"], "test", "{out}");
    assert_eq!(runs[0]["outcome"], "refused", "{out}");
    // --journal wins over the inventory's.
    let other = dir.join("other.db");
    let other = other.display().to_string();
    let (code, _, err) = with_inventory(&["history", "--journal", &other]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot read the journal {other}")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
