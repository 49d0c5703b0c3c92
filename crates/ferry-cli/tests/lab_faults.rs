//! The fault matrix (issue 9): each case injects one fault into a real migration in the lab
//! (real libvirtd, real TCG guests) and then checks what every fault must leave true — the guest
//! runs on exactly one host, vdb's write sequence and static pattern are intact there, nothing
//! Ferry created is left on a host the guest does not use, and the journal tells the truth (the
//! outcome matches where the guest is, and `ferry recover` finds nothing left to do) — and prints
//! one row per case.
//!
//! `make faults` runs it (and `make test`, as one of the lab tests). A custom harness: the cases
//! run one after the other (one lab at a time), each bounded in time; a case that fails shows as
//! FAIL in the table and the run exits 1. `cargo test -p ferry-cli --features lab --test
//! lab_faults -- 7 11` runs only the cases whose number is given.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One row of the table.
struct Row {
    case: String,
    injected: String,
    guest: String,
    vdb: String,
    left: String,
    journal: String,
    time: Duration,
    failed: Option<String>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// The fault `case` has played out (`since`: when it was injected): check the invariants
    /// every fault must keep, and add the case's row.
    fn settled(&mut self, case: &'static str, injected: &str, lab: &Lab, since: Instant) {
        let time = since.elapsed();
        let (guest, vdb) = where_the_guest_runs(lab);
        let left = what_is_left(&guest);
        let journal = what_the_journal_says(&guest);
        eprintln!("case {case}: guest on {guest}; {vdb}; {left}; journal {journal}");
        self.rows.push(Row {
            case: case.to_string(),
            injected: injected.to_string(),
            guest,
            vdb,
            left,
            journal,
            time,
            failed: None,
        });
    }
}

/// The guest runs on exactly one host and is defined nowhere else; `lab verify-guest` passes
/// there (heartbeat, vda open, vdb's static pattern and unbroken write sequence).
fn where_the_guest_runs(lab: &Lab) -> (String, String) {
    let states: Vec<(&str, String)> = [("h1", H1), ("h2", H2)]
        .iter()
        .map(|(n, u)| (*n, domstate(u)))
        .collect();
    let on: Vec<&str> = states
        .iter()
        .filter(|(_, s)| s == "running")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        on.len(),
        1,
        "the guest must run on exactly one host: {states:?}"
    );
    for (n, s) in &states {
        if *n != on[0] {
            assert_eq!(s, "", "{GUEST} is still defined on {n}");
        }
    }
    let v = lab.verify_guest(on[0]);
    let vdb = v
        .lines()
        .find(|l| l.starts_with("ok vdb"))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or_else(|| panic!("no vdb verdict in {v}"))
        .replace(
            "static region intact, write sequence unbroken through record ",
            "intact, unbroken through record ",
        );
    (on[0].to_string(), vdb)
}

/// Ferry's copy targets live in each host's /srv/ferry-store: on a host the guest does not run
/// on, nothing may be left; on the guest's host, only what the guest uses. No other domain.
fn what_is_left(guest_on: &str) -> String {
    let mut left = vec![];
    for (n, uri) in [("h1", H1), ("h2", H2)] {
        let files = store(n);
        let (ok, doms, e) = virsh(uri, &["list", "--all", "--name"]);
        assert!(ok, "{n}: {e}");
        let doms: Vec<&str> = doms
            .lines()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect();
        if n == guest_on {
            let (_, xml, _) = virsh(uri, &["dumpxml", GUEST]);
            for f in &files {
                assert!(
                    xml.contains(&format!("/srv/ferry-store/{f}'")),
                    "{n} keeps {f}, which the guest does not use"
                );
            }
            assert_eq!(doms, vec![GUEST], "{n}'s domains");
        } else {
            assert!(
                files.is_empty(),
                "{n} keeps {files:?} although the guest does not run there"
            );
            assert!(doms.is_empty(), "{n} keeps the domain(s) {doms:?}");
        }
        left.push(if files.is_empty() {
            format!("{n}: nothing")
        } else {
            format!("{n}: {} (the guest's disk)", files.join(" "))
        });
    }
    left.join(", ")
}

/// Every run ended; the last run that was not refused ended as the guest's place says
/// (migrated: on h2; rolled back: on h1); `ferry recover` has nothing to do.
fn what_the_journal_says(guest_on: &str) -> String {
    if !std::path::Path::new(JOURNAL).exists() {
        assert_eq!(guest_on, "h1", "no run, yet the guest moved");
        return "no run".to_string();
    }
    let (code, out, err) = ferry(&["history", "--journal", JOURNAL, "--json"]);
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut runs: Vec<&serde_json::Value> = runs.as_array().unwrap().iter().collect();
    runs.sort_by_key(|r| r["id"].as_i64());
    let mut said = vec![];
    let mut decisive = None;
    for r in &runs {
        let outcome = r["outcome"]
            .as_str()
            .unwrap_or_else(|| panic!("run #{} never ended in the journal: {r}", r["id"]));
        let recovered = r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("recovered"));
        said.push(format!(
            "#{} {outcome}{}",
            r["id"],
            if recovered { " (recovered)" } else { "" }
        ));
        if outcome != "refused" {
            decisive = Some(outcome);
        }
    }
    match (guest_on, decisive) {
        ("h2", Some("migrated")) | ("h1", None | Some("rolled_back")) => {}
        _ => panic!("the journal says {said:?} but the guest runs on {guest_on}"),
    }
    let (code, out, err) = ferry(&["recover", "--journal", JOURNAL, "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("nothing to recover"),
        "recover would still act: {out}"
    );
    said.join(", ")
}

/// The lab's slow migration: vdb copied into a file Ferry creates in h2's store.
const COPY_TO_A_FILE: [&str; 4] = [
    "--map",
    "/mnt/nfs=/mnt/nfs_second_mount",
    "--copy",
    "vdb=/srv/ferry-store/vdb.raw",
];

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = COPY_TO_A_FILE.to_vec();
    a.extend_from_slice(extra);
    a
}

fn kill(signal: &str, pid: u32) {
    assert!(run(Command::new("kill").args([signal, &pid.to_string()])).0);
}

/// `ferry recover` (not a dry run): its output.
fn recover() -> String {
    let (code, out, err) = ferry(&["recover", "--journal", JOURNAL]);
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// The target's libvirtd answers again and holds no domain.
fn wait_h2_answers_and_holds_no_guest() {
    wait_until(
        "h2 answers and holds no guest",
        Duration::from_secs(90),
        || virsh(H2, &["version"]).0 && domstate(H2).is_empty(),
    );
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// 1, 2, 13a-d: what cannot work is refused before anything moves.
fn refused_before_anything_moves(r: &mut Report) {
    let the_lab = Lab::up(&[]);
    let t = Instant::now();
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/ferry-lab/nvme1n6",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the target is too small"), "{err}");
    r.settled(
        "1",
        "target disk too small (vdb 64 MiB onto 32 MiB)",
        &the_lab,
        t,
    );

    let t = Instant::now();
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_missing",
        "--copy",
        "vdb=/srv/ferry-store/vdb.raw",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("/mnt/nfs_missing/test_img.img: the shared disk's path does not exist there"),
        "{err}"
    );
    r.settled(
        "2",
        "target path missing (vda mapped to /mnt/nfs_missing)",
        &the_lab,
        t,
    );

    let t = Instant::now();
    let bad_inventory = "/var/lib/ferry-lab/bad-inventory.toml";
    std::fs::write(bad_inventory, "[[host]]\nname = \"h1\"\nuri = \n").unwrap();
    let (code, _, err) = migrate(&["--inventory", bad_inventory]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(bad_inventory) && err.contains("line 3"),
        "the inventory's error names neither the file nor the line: {err}"
    );
    r.settled(
        "13a",
        "malformed inventory (named with its file and line)",
        &the_lab,
        t,
    );
    let t = Instant::now();
    let bad_rules = "/var/lib/ferry-lab/bad-rules.toml";
    std::fs::write(bad_rules, "[[map]]\nfrom = \"/mnt/nfs\"\nto = 5\n").unwrap();
    let (code, _, err) = migrate(&["--rules", bad_rules]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(bad_rules) && err.contains("line 3"),
        "the rules' error names neither the file nor the line: {err}"
    );
    r.settled(
        "13b",
        "malformed rules file (named with its file and line)",
        &the_lab,
        t,
    );
    let t = Instant::now();
    let bad_xml = "/var/lib/ferry-lab/bad-domain.xml";
    std::fs::write(
        bad_xml,
        "<domain type='qemu'><name>x</name>\n<devices><disk type='file'>\n<source file='/a'/>\n</devices></domain>\n",
    )
    .unwrap();
    let (code, _, err) = ferry(&["plan", "--domain-xml", bad_xml, "--to", H2]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(bad_xml) && err.contains("line 4"),
        "the XML's error names neither the file nor the line: {err}"
    );
    r.settled(
        "13c",
        "malformed domain XML (named with its file and line)",
        &the_lab,
        t,
    );
    let t = Instant::now();
    let (code, _, err) = migrate(&["--bandwidth", "fast"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'fast' for '--bandwidth <MiB/s>'"),
        "{err}"
    );
    r.settled("13d", "malformed flag (--bandwidth fast)", &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 3, 4: the link to the target cut in a phase; the job fails, the guest stays, what Ferry
/// created on the unreachable target is deleted by `ferry recover` once the link is back.
fn link_cut(r: &mut Report, case: &'static str, in_phase: &str, injected: &str) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let mut m = Running::start(&args(&[]));
    m.wait_for_output(&phase(in_phase), Duration::from_secs(120));
    let t = Instant::now();
    let (ok, _, e) = lab(&["link", "h2", "down"]);
    assert!(ok, "{e}");
    // Bounded: the lab sets tcp_retries2=5, so the job fails within ~20 s of the cut.
    let (code, out, err) = m.wait(Duration::from_secs(180));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("the guest keeps running on the source"),
        "{out}"
    );
    assert!(
        out.contains("could NOT delete /srv/ferry-store/vdb.raw"),
        "{out}"
    );
    assert!(out.contains("ferry recover"), "{out}");
    assert_eq!(domstate(H1), "running");
    let (ok, _, e) = lab(&["link", "h2", "up"]);
    assert!(ok, "{e}");
    wait_h2_answers_and_holds_no_guest();
    assert_eq!(store("h2"), vec!["vdb.raw"]);
    let out = recover();
    assert!(
        out.contains("delete /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system: done"),
        "{out}"
    );
    r.settled(case, injected, &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 5: the target's libvirtd SIGKILLed mid-copy (its QEMU lives on); restarted, it reaps the
/// half-migrated QEMU; `ferry recover` deletes what Ferry created.
fn target_libvirtd_killed(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&args(&[]));
    let t = Instant::now();
    let (ok, _, e) = lab(&["libvirtd", "h2", "kill"]);
    assert!(ok, "{e}");
    let (code, out, err) = m.wait(Duration::from_secs(240));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("the guest keeps running on the source"),
        "{out}"
    );
    // The target did not answer: Ferry could not delete what it had created there, and says
    // who will.
    assert!(
        out.contains("could NOT delete /srv/ferry-store/vdb.raw"),
        "{out}"
    );
    assert!(out.contains("ferry recover"), "{out}");
    assert_eq!(domstate(H1), "running");
    let (ok, _, e) = lab(&["libvirtd", "h2", "start"]);
    assert!(ok, "{e}");
    wait_h2_answers_and_holds_no_guest();
    assert_eq!(store("h2"), vec!["vdb.raw"], "left for recover");
    let out = recover();
    assert!(
        out.contains("delete /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system: done"),
        "{out}"
    );
    assert!(store("h2").is_empty(), "{out}");
    r.settled(
        "5",
        "target's libvirtd SIGKILLed mid-copy; restarted; ferry recover",
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

/// 6: the target's QEMU SIGKILLed mid-copy: Ferry rolls back at once.
fn target_qemu_killed(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&args(&[]));
    let t = Instant::now();
    let (ok, _, e) = lab(&[
        "shell",
        "h2",
        "sh",
        "-c",
        "kill -9 $(cat /run/libvirt/qemu/lab-guest.pid)",
    ]);
    assert!(ok, "{e}");
    let (code, out, err) = m.wait(Duration::from_secs(120));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("migration of lab-guest failed"), "{out}");
    assert!(
        out.contains(
            "deleted /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system (Ferry had created it)"
        ),
        "{out}"
    );
    r.settled("6", "target's QEMU SIGKILLed mid-copy", &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 7a: Ferry SIGKILLed mid-copy: libvirt cancels a job whose client went away; `ferry recover`
/// says first what it will do (the dry run lists exactly the real run's steps), then does it.
fn ferry_killed_during_the_copy(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&args(&[]));
    let t = Instant::now();
    kill("-KILL", m.pid);
    let _ = m.wait(Duration::from_secs(30));
    wait_until(
        "the job on h2 ends after its client is gone",
        Duration::from_secs(60),
        || domstate(H2).is_empty(),
    );
    assert_eq!(
        store("h2"),
        vec!["vdb.raw"],
        "Ferry had no chance to clean up"
    );
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(hist.contains("unfinished"), "{hist}");
    let (code, dry, err) = ferry(&["recover", "--journal", JOURNAL, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        dry.contains("would delete /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system"),
        "{dry}"
    );
    assert!(dry.contains("would journal: rolled_back"), "{dry}");
    assert_eq!(store("h2"), vec!["vdb.raw"], "a dry run deletes nothing");
    let out = recover();
    // The real run took the steps the dry run announced, in the same order.
    let steps = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("  "))
            .map(|l| {
                l.trim()
                    .trim_start_matches("would ")
                    .trim_end_matches(": done")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(steps(&dry), steps(&out));
    let out = recover();
    assert!(out.contains("nothing to recover"), "{out}");
    r.settled(
        "7a",
        "Ferry SIGKILLed during the storage copy; ferry recover",
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

/// 7b, 8: Ferry SIGKILLed during a peer-to-peer migration: the source's libvirtd goes on
/// without it and the guest lands on the target; `ferry recover` completes the run there.
fn ferry_killed_p2p(r: &mut Report, case: &'static str, in_phase: &str, injected: &str) {
    let the_lab = Lab::up(&["--rate", "60"]);
    // Nobody escalates the max downtime once Ferry is gone: start it where the job can end
    // by itself.
    let mut m = Running::start(&args(&["--p2p", "--max-downtime", "2000"]));
    m.wait_for_output(&phase(in_phase), Duration::from_secs(120));
    let t = Instant::now();
    kill("-KILL", m.pid);
    let _ = m.wait(Duration::from_secs(30));
    wait_until(
        "the p2p job ends with the guest on h2",
        Duration::from_secs(180),
        || domstate(H1).is_empty() && domstate(H2) == "running",
    );
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(
        hist.contains("unfinished"),
        "the journal cannot know yet: {hist}"
    );
    let out = recover();
    assert!(out.contains("the guest runs on the target"), "{out}");
    assert!(
        out.contains("keep /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system"),
        "{out}"
    );
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(
        hist.contains("migrated: recovered: lab-guest runs on qemu+tcp://10.77.0.2/system, its 2 disk source(s) as planned"),
        "{hist}"
    );
    r.settled(case, injected, &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 9: a second `ferry migrate` of the guest while the first runs: refused with the first
/// run's id; the first completes.
fn two_migrations_of_one_guest(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&args(&[]));
    let t = Instant::now();
    let (code, out, err) = migrate(&args(&[]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("lab-guest is being migrated by run #1 (instance "),
        "{err}"
    );
    let (code, out, err) = m.wait(Duration::from_secs(300));
    assert_eq!(code, 0, "the first migration: {out}{err}");
    assert_eq!(result(&out)["outcome"], "migrated");
    r.settled(
        "9",
        "a second ferry migrate of the guest while the first runs",
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

/// 10: `ferry abort` from another terminal: the running Ferry rolls back as after Ctrl-C.
fn ferry_abort_from_another_terminal(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&args(&[]));
    let t = Instant::now();
    let (code, out, err) = ferry(&["abort", GUEST, "--journal", JOURNAL]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("asked the Ferry running run #1"), "{err}");
    assert!(out.contains("run #1: rolled_back"), "{out}");
    let (code, out, err) = m.wait(Duration::from_secs(60));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("`ferry abort` (pid"), "{err}");
    assert!(
        out.contains(
            "deleted /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system (Ferry had created it)"
        ),
        "{out}"
    );
    r.settled("10", "ferry abort from another terminal", &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 11: a guest dirtying memory faster than the shaped link (5 MB/s against 64 MiB rewritten
/// as fast as it can): aborted by the policy by default, landed by post-copy when allowed.
fn dirtying_guest(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "40", "--dirty-mb", "64", "--dirty-rate", "24"]);
    let policy = args(&[
        "--stall-timeout",
        "10",
        "--max-downtime-cap",
        "200",
        "--json",
    ]);
    let t = Instant::now();
    let (code, out, err) = migrate(&policy);
    assert_eq!(code, 1, "{out}{err}");
    let res = result(&out);
    let msg = res["message"].as_str().unwrap_or_default();
    assert!(msg.contains("memory does not converge"), "{msg}");
    assert!(
        msg.contains("the guest keeps running on the source"),
        "{msg}"
    );
    let forecasts: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e.get("forecast").cloned())
        .collect();
    assert!(
        forecasts.iter().any(|f| f["state"] == "will_not_converge"),
        "the forecast never said so: {forecasts:?}"
    );
    r.settled(
        "11a",
        "guest dirtying RAM faster than a 40 Mbit/s link (default policy)",
        &the_lab,
        t,
    );

    let t = Instant::now();
    let mut with_postcopy = policy.clone();
    with_postcopy.extend_from_slice(&["--fallback", "postcopy"]);
    let (code, out, err) = migrate(&with_postcopy);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("switching to post-copy"), "{out}");
    assert!(out.contains(&phase("postcopy")), "{out}");
    assert_eq!(result(&out)["outcome"], "migrated");
    r.settled("11b", "the same with --fallback postcopy", &the_lab, t);
    drop(the_lab);
    assert_lab_gone();
}

/// 12: a guest writing vdb hard (1 MiB records with no pause, about 18 MiB/s under TCG)
/// over a 60 Mbit/s link: the disk mirror cannot catch up and the policy stops it with the hint;
/// with synchronous writes of the mirror the guest's writes wait for the target, and it lands.
fn hard_writing_guest(r: &mut Report) {
    let the_lab = Lab::up(&[
        "--rate",
        "60",
        "--write-kib",
        "1024",
        "--write-delay-us",
        "0",
        "--dirty-mb",
        "8",
        "--dirty-rate",
        "1",
    ]);
    let t = Instant::now();
    let (code, out, err) = migrate(&args(&["--stall-timeout", "20", "--json"]));
    assert_eq!(code, 1, "{out}{err}");
    let msg = result(&out)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("the storage mirror does not converge")
            && msg.contains("try --copy-storage-synchronous-writes"),
        "{msg}"
    );
    assert!(
        out.contains("\"stream\":\"disk\""),
        "the forecast never said the disk copy would not converge: {out}"
    );
    r.settled(
        "12a",
        "guest writing vdb at ~18 MiB/s over a 60 Mbit/s link (stall timeout 20 s)",
        &the_lab,
        t,
    );
    let t = Instant::now();
    let (code, out, err) = migrate(&args(&["--copy-storage-synchronous-writes", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(result(&out)["outcome"], "migrated");
    r.settled(
        "12b",
        "the same with --copy-storage-synchronous-writes",
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

// ---------------------------------------------------------------------------------------------

type Case = fn(&mut Report);

/// `--preseed` onto h2's device, through a link held to 20 MiB/s of data.
fn preseed_capped() -> Vec<&'static str> {
    let mut a = PRESEED.to_vec();
    a.extend(["--bandwidth", "20"]);
    a
}

/// A `--json` progress line of the bulk copy: bytes of the disk done.
fn seed_done(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == "seed").then(|| v["done"].as_u64()).flatten()
}

/// 14b, 14a on one lab (vdb 256 MiB, 200 MiB of it data): the target's libvirtd killed during
/// the bulk copy (the guest is thawed on the source, nothing is left on the target); then Ferry
/// SIGKILLed during the bulk copy, and the same command again resumes it.
fn preseed_faults_in_the_bulk_copy(r: &mut Report) {
    let the_lab = Lab::up(&["--vdb-mb", "256", "--static-mb", "200"]);
    let mut args = migrate_args(&preseed_capped());
    args.push("--json");
    let mut m = Running::spawn(&args);
    m.wait_for_output("\"event\":\"seed\"", Duration::from_secs(90));
    let t = Instant::now();
    let (ok, _, e) = lab(&["libvirtd", "h2", "kill"]);
    assert!(ok, "{e}");
    let (code, out, err) = m.wait(Duration::from_secs(120));
    assert_eq!(code, 1, "{out}{err}");
    let res = common::result(&out);
    assert_eq!(res["error"]["guest_location"], "source", "{res}");
    assert!(thawed(&res, "vdb"), "{res}");
    let (_, blk, _) = virsh(H1, &["domblklist", GUEST]);
    assert!(
        blk.contains("/dev/ferry-lab/nvme2n2"),
        "the guest is on its own disk: {blk}"
    );
    let (ok, _, e) = lab(&["libvirtd", "h2", "start"]);
    assert!(ok, "{e}");
    wait_h2_answers_and_holds_no_guest();
    r.settled(
        "14b",
        "--preseed: target's libvirtd SIGKILLed during the bulk copy",
        &the_lab,
        t,
    );

    let mut m = Running::spawn(&args);
    // Past the second journaled window (64 MiB each).
    m.wait_for_line("a seed line past 128 MiB", Duration::from_secs(120), |l| {
        seed_done(l).is_some_and(|d| d >= 128 * MIB)
    });
    let t = Instant::now();
    kill("-KILL", m.pid);
    let (_, out, _) = m.wait(Duration::from_secs(30));
    let done_at_kill = out.lines().filter_map(seed_done).max().unwrap();
    let (_, blk, _) = virsh(H1, &["domblklist", GUEST]);
    assert!(
        blk.contains("/srv/ferry-store/ferry-lab-guest-vdb-run"),
        "frozen: {blk}"
    );
    // The same command again (without the cap): it takes the freeze over and resumes.
    let mut again = migrate_args(&PRESEED);
    again.push("--json");
    let (code, out, err) = ferry(&again);
    assert_eq!(code, 0, "{out}{err}");
    let seeded = &common::result(&out)["summary"]["seeded"][0];
    let sent = seeded["data"].as_u64().unwrap() + seeded["zeros"].as_u64().unwrap();
    let resumed_at = 256 * MIB - sent;
    assert!(
        resumed_at + 64 * MIB >= done_at_kill && resumed_at <= done_at_kill,
        "resumed at {resumed_at}, killed at {done_at_kill}: more than one window re-sent"
    );
    r.settled(
        "14a",
        &format!(
            "--preseed: Ferry SIGKILLed in the bulk copy at {} MiB; the same command resumed at {} MiB",
            done_at_kill / MIB,
            resumed_at / MIB
        ),
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

/// 14c: the link to the target cut during the live phase of a pre-seeded migration: rolled
/// back, the overlay committed back on the source; the target's overlay, unreachable then, is
/// deleted by `ferry recover` once the link is back.
fn preseed_link_cut_in_the_live_phase(r: &mut Report) {
    let the_lab = Lab::up(&["--rate", "60"]);
    let mut args = migrate_args(&PRESEED);
    args.push("--json");
    let mut m = Running::spawn(&args);
    m.wait_for_output(&phase("memory"), Duration::from_secs(120));
    let t = Instant::now();
    let (ok, _, e) = lab(&["link", "h2", "down"]);
    assert!(ok, "{e}");
    let (code, out, err) = m.wait(Duration::from_secs(180));
    assert_eq!(code, 1, "{out}{err}");
    let res = common::result(&out);
    assert_eq!(res["error"]["guest_location"], "source", "{res}");
    assert!(thawed(&res, "vdb"), "{res}");
    let (ok, _, e) = lab(&["link", "h2", "up"]);
    assert!(ok, "{e}");
    wait_h2_answers_and_holds_no_guest();
    let out = recover();
    assert!(
        out.contains("delete /srv/ferry-store/ferry-lab-guest-vdb-run1.qcow2"),
        "{out}"
    );
    r.settled(
        "14c",
        "--preseed: link to the target cut in the live phase; back; ferry recover",
        &the_lab,
        t,
    );

    // 14d: Ferry SIGKILLed in the live phase of a peer-to-peer pre-seeded migration: the
    // source's libvirtd finishes it alone, and the guest runs on the target on its overlay,
    // never committed. `ferry recover` commits it there and deletes both overlays.
    let mut args = migrate_args(&PRESEED);
    args.extend(["--p2p", "--max-downtime", "2000", "--json"]);
    let mut m = Running::spawn(&args);
    m.wait_for_output(&phase("memory"), Duration::from_secs(120));
    let t = Instant::now();
    kill("-KILL", m.pid);
    let _ = m.wait(Duration::from_secs(30));
    wait_until(
        "the p2p job ends with the guest on h2",
        Duration::from_secs(180),
        || domstate(H1).is_empty() && domstate(H2) == "running",
    );
    let (_, blk, _) = virsh(H2, &["domblklist", GUEST]);
    assert!(
        blk.contains("/srv/ferry-store/ferry-lab-guest-vdb-run2.qcow2"),
        "on its overlay: {blk}"
    );
    let (code, dry, err) = ferry(&["recover", "--journal", JOURNAL, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        dry.contains("would commit /srv/ferry-store/ferry-lab-guest-vdb-run2.qcow2 into disk vdb on qemu+tcp://10.77.0.2/system"),
        "{dry}"
    );
    let out = recover();
    assert!(out.contains("journal: migrated"), "{out}");
    let (_, blk, _) = virsh(H2, &["domblklist", GUEST]);
    assert!(blk.contains("/dev/ferry-lab/nvme1n5"), "{blk}");
    let (_, persistent, _) = virsh(H2, &["dumpxml", "--inactive", GUEST]);
    assert!(!persistent.contains(".qcow2"), "{persistent}");
    r.settled(
        "14d",
        "--preseed --p2p: Ferry SIGKILLed in the live phase (never committed); ferry recover",
        &the_lab,
        t,
    );
    drop(the_lab);
    assert_lab_gone();
}

const CASES: &[(&[&str], Case)] = &[
    (
        &["1", "2", "13a", "13b", "13c", "13d"],
        refused_before_anything_moves,
    ),
    (&["3"], |r| {
        link_cut(
            r,
            "3",
            "storage_copy",
            "link to the target cut during the storage copy; back; ferry recover",
        )
    }),
    (&["4"], |r| {
        link_cut(
            r,
            "4",
            "memory",
            "link to the target cut in the memory phase; back; ferry recover",
        )
    }),
    (&["5"], target_libvirtd_killed),
    (&["6"], target_qemu_killed),
    (&["7a"], ferry_killed_during_the_copy),
    (&["7b"], |r| {
        ferry_killed_p2p(
            r,
            "7b",
            "storage_copy",
            "Ferry SIGKILLed during the storage copy, --p2p; ferry recover",
        )
    }),
    (&["8"], |r| {
        ferry_killed_p2p(
            r,
            "8",
            "memory",
            "Ferry SIGKILLed in the memory phase, --p2p; ferry recover",
        )
    }),
    (&["9"], two_migrations_of_one_guest),
    (&["10"], ferry_abort_from_another_terminal),
    (&["11a", "11b"], dirtying_guest),
    (&["12a", "12b"], hard_writing_guest),
    (&["14a", "14b"], preseed_faults_in_the_bulk_copy),
    (&["14c", "14d"], preseed_link_cut_in_the_live_phase),
];

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

/// Where the last panic happened (the table says "line N: ..." for a failed case).
static PANICKED_AT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut at) = PANICKED_AT.lock() {
            *at = info.location().map(|l| l.line());
        }
        default_hook(info);
    }));
    // libtest's flags (`--test-threads=1` from `make test`) mean nothing here.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut report = Report::default();
    let started = Instant::now();
    for (ids, case) in CASES {
        if !only.is_empty()
            && !ids.iter().any(|id| {
                only.iter().any(|o| {
                    id.strip_prefix(o.as_str())
                        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase()))
                })
            })
        {
            continue;
        }
        let before = report.rows.len();
        let t = Instant::now();
        eprintln!("fault case {}: starting", ids.join(", "));
        let outcome = catch_unwind(AssertUnwindSafe(|| case(&mut report)));
        if let Err(p) = outcome {
            let msg = panic_message(&*p);
            let first: String = msg
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            let line = PANICKED_AT.lock().ok().and_then(|at| *at).unwrap_or(0);
            let why = format!("lab_faults.rs line {line}: {first}");
            // The rows already settled passed their checks: the failure belongs to the cases
            // that have no row yet, or, when every case has one, to the case's teardown.
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !report.rows[before..].iter().any(|r| r.case == **id))
                .map(|id| id.to_string())
                .collect();
            let failed = if missing.is_empty() {
                vec![format!("{} (teardown)", ids.join(", "))]
            } else {
                missing
            };
            for case in failed {
                report.rows.push(Row {
                    case,
                    injected: String::new(),
                    guest: String::new(),
                    vdb: String::new(),
                    left: String::new(),
                    journal: String::new(),
                    time: t.elapsed(),
                    failed: Some(why.clone()),
                });
            }
        }
        eprintln!(
            "fault case {}: {} in {:.0?}",
            ids.join(", "),
            if report.rows[before..].iter().any(|r| r.failed.is_some()) {
                "FAILED"
            } else {
                "ok"
            },
            t.elapsed()
        );
    }
    if report.rows.is_empty() {
        eprintln!(
            "lab_faults: no case matches {only:?} (cases: {})",
            CASES
                .iter()
                .flat_map(|(ids, _)| ids.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        );
        std::process::exit(1);
    }
    println!(
        "\nThe fault matrix ({:.0?} in all; time: from the fault to the row's check)\n",
        started.elapsed()
    );
    println!("| case | injected | guest runs on | vdb (sequence, static pattern) | left on each host | journal | time | result |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &report.rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
            r.case,
            r.injected,
            r.guest,
            r.vdb,
            r.left,
            r.journal,
            r.time.as_secs_f64(),
            r.failed
                .as_deref()
                .map(|w| format!("FAIL: {w}"))
                .unwrap_or_else(|| "ok".to_string())
        );
    }
    if report.rows.iter().any(|r| r.failed.is_some()) {
        std::process::exit(1);
    }
}
