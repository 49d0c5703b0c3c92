//! `ferry evacuate` end to end in the lab: three real libvirtd hosts, three live TCG guests on
//! h1 with local disks of different sizes (and one shut off), links shaped.
//! Needs root and the lab's packages: `make test` (or `cargo test --features lab`).

mod common;

use std::time::Duration;

use common::*;

const GUESTS: [&str; 3] = ["lab-guest", "lab-guest2", "lab-guest3"];
/// h1's link is shaped at 200 Mbit/s: 23 MiB/s of it for the migrations.
const RATE: &str = "200";
const LINK_MIB: &str = "23";

fn inventory() -> String {
    let mut s = String::new();
    for (h, uri) in [("h1", H1), ("h2", H2), ("h3", H3)] {
        s.push_str(&format!("[[host]]\nname = \"{h}\"\nuri = \"{uri}\"\n"));
    }
    let path = "/var/lib/ferry-lab/evacuate.toml".to_string();
    std::fs::write(&path, s).unwrap();
    path
}

fn evacuate_args(inv: &str) -> Vec<&str> {
    vec![
        "evacuate",
        "h1",
        "--inventory",
        inv,
        "--journal",
        JOURNAL,
        "--unsafe",
        "--link-bandwidth",
        LINK_MIB,
        "--json",
    ]
}

fn uri(host: &str) -> &'static str {
    match host {
        "h1" => H1,
        "h2" => H2,
        _ => H3,
    }
}

/// Every running guest runs on its target and only there, verified; h1 runs nothing and keeps
/// only its shut-off guest (moved cold with `offline`) and that guest's disk (its source copy,
/// after a cold move); each target's store holds the copies of its own guests and nothing else.
fn assert_emptied(result: &serde_json::Value, offline: bool) {
    assert_eq!(result["outcome"], "emptied", "{result}");
    assert_eq!(result["still_running"], serde_json::json!([]));
    let guests = result["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 3 + offline as usize, "{result}");
    let mut on: Vec<(String, String)> = vec![];
    for g in guests {
        assert_eq!(g["outcome"], "migrated", "{g}");
        let (name, target) = (g["guest"].as_str().unwrap(), g["target"].as_str().unwrap());
        if name != "lab-idle" {
            let out = lab(&["verify-guest", target, name]);
            assert!(out.0, "verify-guest {target} {name}:\n{}{}", out.1, out.2);
        }
        on.push((name.into(), target.into()));
    }
    let (ok, list, _) = virsh(H1, &["list", "--all", "--name"]);
    assert!(ok);
    let defined: Vec<&str> = list.split_whitespace().collect();
    if offline {
        assert!(defined.is_empty(), "{defined:?}");
    } else {
        assert_eq!(defined, ["lab-idle"]);
    }
    assert_eq!(store("h1"), ["lab-idle-vdb.img"]);
    for host in ["h2", "h3"] {
        let mut want: Vec<String> = on
            .iter()
            .filter(|(_, t)| t == host)
            .map(|(g, _)| format!("{g}-vdb.img"))
            .collect();
        want.sort();
        assert_eq!(store(host), want, "{host}'s store");
        let (_, running, _) = virsh(uri(host), &["list", "--name"]);
        assert_eq!(
            running.split_whitespace().count(),
            want.iter().filter(|f| !f.starts_with("lab-idle")).count(),
            "{host} runs only its guests: {running}"
        );
    }
    let (code, out, err) = ferry(&["recover", "--dry-run", "--journal", JOURNAL]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to recover"), "{out}");
}

#[test]
fn evacuate_empties_h1_onto_h2_and_h3_and_every_guest_is_intact() {
    let the_lab = Lab::up(&["--hosts", "3", "--guests", "3", "--rate", RATE]);
    let inv = inventory();
    // The dry run: every running guest placed, the shut-off one listed, nothing moved.
    let mut dry = evacuate_args(&inv);
    dry.push("--dry-run");
    let (code, out, err) = ferry(&dry);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let plan = &plan["plan"];
    assert_eq!(plan["shut_off"], serde_json::json!(["lab-idle"]), "{plan}");
    assert_eq!(plan["moves"].as_array().unwrap().len(), 3, "{plan}");
    let targets: Vec<u64> = plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["to"].as_u64().unwrap())
        .collect();
    assert!(
        targets.contains(&1) && targets.contains(&2),
        "both h2 and h3 take guests: {plan}"
    );
    // The largest copy goes first: its predicted start is the earliest.
    let moves = plan["moves"].as_array().unwrap();
    let starts: Vec<f64> = plan["predicted"]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_f64().unwrap())
        .collect();
    let first = (0..moves.len())
        .min_by(|&a, &b| starts[a].total_cmp(&starts[b]))
        .unwrap();
    assert_eq!(moves[first]["guest"], "lab-guest3", "{plan}");
    assert!(store("h2").is_empty() && store("h3").is_empty());

    // The real run, with --offline: the shut-off guest moves cold.
    let mut real = evacuate_args(&inv);
    real.push("--offline");
    let (code, out, err) = ferry(&real);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = result(&out);
    eprintln!(
        "evacuated in {} ms (predicted {:.0} s, bound {:.0} s)",
        r["makespan_ms"], r["predicted_s"], r["bound_s"]
    );
    assert_emptied(&r, true);
    for g in r["guests"].as_array().unwrap() {
        assert_eq!(g["attempts"], 1, "{g}");
    }
    // lab-idle: defined and shut off on its target, its sources rewritten, its vdb a
    // byte-for-byte copy made through libvirt's storage streams.
    let idle = r["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["guest"] == "lab-idle")
        .unwrap();
    let to = idle["target"].as_str().unwrap();
    assert_eq!(state_of(uri(to), "lab-idle"), "shut off");
    let (_, xml, _) = virsh(uri(to), &["dumpxml", "--inactive", "lab-idle"]);
    let shared = if to == "h2" {
        "/mnt/nfs_second_mount/idle.img"
    } else {
        "/mnt/nfs_third_mount/idle.img"
    };
    assert!(
        xml.contains(shared) && xml.contains("/srv/ferry-store/lab-idle-vdb.img"),
        "{xml}"
    );
    let want = std::fs::read_to_string("/var/lib/ferry-lab/idle-vdb.sha256").unwrap();
    let (_, got, _) = run(std::process::Command::new("sh").args([
        "-c",
        &format!("sha256sum < /var/lib/ferry-lab/{to}/store/lab-idle-vdb.img | cut -d' ' -f1"),
    ]));
    assert_eq!(got.trim(), want.trim(), "lab-idle's vdb on {to}");
    // Each migration's bandwidth (lab-idle's cold copy too) was its share of the links: every
    // link is LINK_MIB, split equally between the moves on its busier end (1 to 4 of them).
    let link: u64 = LINK_MIB.parse().unwrap();
    let caps: Vec<u64> = out
        .lines()
        .filter(|l| l.contains("\"event\":\"started\""))
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["bandwidth_mib"]
                .as_u64()
                .unwrap_or_else(|| panic!("no bandwidth set: {l}"))
        })
        .collect();
    assert_eq!(caps.len(), GUESTS.len() + 1, "{out}");
    for cap in &caps {
        assert!(
            (1..=4).any(|k| *cap == link / k),
            "{cap} MiB/s is no share of h1's {link} MiB/s: {caps:?}"
        );
    }
    // The journal: the evacuation ended, with one run per guest.
    let (code, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert_eq!(code, 0);
    for g in GUESTS {
        assert!(hist.contains(g), "{hist}");
    }
    assert!(
        hist.lines()
            .any(|l| l.starts_with("evacuation #1 of h1: emptied")),
        "{hist}"
    );
    let (code, again, err) = ferry(&evacuate_args(&inv));
    assert_eq!(code, 0, "an emptied host: exit 0\n{again}\n{err}");
    let again = result(&again);
    assert_eq!(again["outcome"], "emptied", "nothing left to move: {again}");
    drop(the_lab);
    assert_lab_gone();
}

#[test]
fn a_target_qemu_killed_mid_copy_sends_that_guest_to_the_other_host() {
    let the_lab = Lab::up(&["--hosts", "3", "--guests", "3", "--rate", RATE]);
    let inv = inventory();
    let mut run = Running::spawn(&evacuate_args(&inv));
    // The first migration (the largest copy, lab-guest3) is copying its disk: kill its QEMU on
    // the target.
    run.wait_for_output("\"event\":\"started\"", Duration::from_secs(60));
    let started = run.line_with("\"event\":\"started\"");
    let v: serde_json::Value = serde_json::from_str(&started).unwrap();
    let (victim, first) = (
        v["guest"].as_str().unwrap().to_string(),
        v["to"].as_str().unwrap().to_string(),
    );
    assert_eq!(victim, "lab-guest3", "{started}");
    let guest = format!("\"guest\":\"{victim}\"");
    run.wait_for_line("its storage copy", Duration::from_secs(90), |l| {
        l.contains(&guest) && l.contains(&phase("storage_copy"))
    });
    let (ok, _, e) = lab(&[
        "shell",
        &first,
        "sh",
        "-c",
        &format!("kill -9 $(cat /run/libvirt/qemu/{victim}.pid)"),
    ]);
    assert!(ok, "{e}");
    let (code, out, err) = run.wait(Duration::from_secs(600));
    assert_eq!(code, 0, "{out}\n{err}");
    let r = result(&out);
    assert_emptied(&r, false);
    for g in r["guests"].as_array().unwrap() {
        if g["guest"] == victim.as_str() {
            // Failed on the first target, rolled back, then migrated to the other one.
            assert_eq!(g["attempts"], 2, "{g}");
            assert_ne!(g["target"], first.as_str(), "{g}");
            assert_eq!(g["runs"].as_array().unwrap().len(), 2, "{g}");
        } else {
            assert_eq!(g["attempts"], 1, "the others are not affected: {g}");
        }
    }
    drop(the_lab);
    assert_lab_gone();
}

fn sigint(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT {pid}");
}

/// Start `ferry evacuate h1` and return once its first migration copies its disk: the guest.
fn evacuation_copying(inv: &str) -> (Running, String) {
    let mut run = Running::spawn(&evacuate_args(inv));
    run.wait_for_output("\"event\":\"started\"", Duration::from_secs(60));
    let v: serde_json::Value =
        serde_json::from_str(&run.line_with("\"event\":\"started\"")).unwrap();
    let guest = v["guest"].as_str().unwrap().to_string();
    let tag = format!("\"guest\":\"{guest}\"");
    run.wait_for_line("its storage copy", Duration::from_secs(90), |l| {
        l.contains(&tag) && l.contains(&phase("storage_copy"))
    });
    (run, guest)
}

fn outcome_of<'a>(r: &'a serde_json::Value, guest: &str) -> &'a serde_json::Value {
    r["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["guest"] == guest)
        .unwrap_or_else(|| panic!("{guest} not in {r}"))
}

/// Ctrl-C once: the running migration finishes, no other starts; a second evacuation, Ctrl-C
/// twice: its running migration is aborted and rolled back. Every guest runs on one host,
/// intact, and nothing is left to recover.
#[test]
fn ctrl_c_once_lets_the_running_migration_finish_twice_aborts_it() {
    let the_lab = Lab::up(&["--hosts", "3", "--guests", "3", "--rate", RATE]);
    let inv = inventory();

    let (mut run, first) = evacuation_copying(&inv);
    sigint(run.pid);
    run.wait_for_output("\"event\":\"stopping\"", Duration::from_secs(10));
    let (code, out, err) = run.wait(Duration::from_secs(300));
    assert_eq!(code, 1, "h1 is not empty: exit 1\n{out}\n{err}");
    let r = result(&out);
    assert_eq!(r["outcome"], "incomplete", "{r}");
    let done = outcome_of(&r, &first);
    assert_eq!(
        done["outcome"], "migrated",
        "the running one finished: {done}"
    );
    let target = done["target"].as_str().unwrap();
    let v = lab(&["verify-guest", target, &first]);
    assert!(v.0, "verify-guest {target} {first}:\n{}{}", v.1, v.2);
    assert_eq!(
        out.matches("\"event\":\"started\"").count(),
        1,
        "nothing started after Ctrl-C: {out}"
    );
    let mut left: Vec<&str> = GUESTS.iter().copied().filter(|g| *g != first).collect();
    for g in &left {
        assert_eq!(outcome_of(&r, g)["outcome"], "not_started", "{r}");
        let v = lab(&["verify-guest", "h1", g]);
        assert!(v.0, "verify-guest h1 {g}:\n{}{}", v.1, v.2);
    }
    left.sort();
    let mut still: Vec<&str> = r["still_running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    still.sort();
    assert_eq!(still, left, "{r}");

    // Again, for the two left: Ctrl-C twice aborts the running migration.
    let (mut run, second) = evacuation_copying(&inv);
    let second_target = {
        let v: serde_json::Value =
            serde_json::from_str(&run.line_with("\"event\":\"started\"")).unwrap();
        v["to"].as_str().unwrap().to_string()
    };
    sigint(run.pid);
    run.wait_for_output("\"event\":\"stopping\"", Duration::from_secs(10));
    sigint(run.pid);
    let (code, out, err) = run.wait(Duration::from_secs(300));
    assert_eq!(code, 1, "{out}\n{err}");
    let r = result(&out);
    let aborted = outcome_of(&r, &second);
    assert_eq!(aborted["outcome"], "stayed_on_source", "{aborted}");
    assert_eq!(aborted["attempts"], 1, "a stop is not retried: {aborted}");
    assert_eq!(
        out.matches("\"event\":\"started\"").count(),
        1,
        "nothing else started: {out}"
    );
    for g in &left {
        let v = lab(&["verify-guest", "h1", g]);
        assert!(v.0, "verify-guest h1 {g}:\n{}{}", v.1, v.2);
    }
    // The aborted copy's volume is gone from its target; the finished one's stays.
    assert!(
        !store(&second_target).contains(&format!("{second}-vdb.img")),
        "{second_target}: {:?}",
        store(&second_target)
    );
    assert!(store(target).contains(&format!("{first}-vdb.img")));
    let (code, out, err) = ferry(&["recover", "--dry-run", "--journal", JOURNAL]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to recover"), "{out}");
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(
        hist.lines()
            .filter(|l| l.starts_with("evacuation #") && l.contains("incomplete"))
            .count()
            == 2,
        "{hist}"
    );
    drop(the_lab);
    assert_lab_gone();
}

/// Ferry SIGKILLed mid-evacuation: libvirt cancels the job whose client went away; `ferry
/// recover` rolls that migration back and ends the evacuation in the journal.
#[test]
fn an_evacuation_whose_ferry_was_killed_is_ended_by_recover() {
    let the_lab = Lab::up(&["--hosts", "3", "--guests", "3", "--rate", RATE]);
    let inv = inventory();
    let (run, guest) = evacuation_copying(&inv);
    let target = {
        let v: serde_json::Value =
            serde_json::from_str(&run.line_with("\"event\":\"started\"")).unwrap();
        v["to"].as_str().unwrap().to_string()
    };
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &run.pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = run.wait(Duration::from_secs(30));
    wait_until(
        "the job on the target ends after its client is gone",
        Duration::from_secs(60),
        || state_of(uri(&target), &guest).is_empty(),
    );
    wait_until(
        "the job on h1 ends: its migration stream is gone",
        Duration::from_secs(120),
        || {
            let (ok, out, _) = virsh(H1, &["domjobinfo", &guest]);
            ok && out
                .lines()
                .any(|l| l.starts_with("Job type:") && l.trim_end().ends_with("None"))
        },
    );
    let vol = format!("{guest}-vdb.img");
    assert!(
        store(&target).contains(&vol),
        "Ferry had no chance to clean up"
    );
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(hist.contains("unfinished"), "{hist}");
    let (code, dry, err) = ferry(&["recover", "--dry-run", "--journal", JOURNAL]);
    assert_eq!(code, 0, "{err}");
    assert!(dry.contains("evacuation #1 of h1: cut short"), "{dry}");
    assert!(
        dry.contains(&format!("would delete /srv/ferry-store/{vol}")),
        "{dry}"
    );
    let (code, out, err) = ferry(&["recover", "--journal", JOURNAL]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ended in the journal"), "{out}");
    assert!(!store(&target).contains(&vol), "{:?}", store(&target));
    for g in GUESTS {
        let v = lab(&["verify-guest", "h1", g]);
        assert!(v.0, "verify-guest h1 {g}:\n{}{}", v.1, v.2);
    }
    let (_, out, _) = ferry(&["recover", "--journal", JOURNAL]);
    assert!(out.contains("nothing to recover"), "{out}");
    let (_, hist, _) = ferry(&["history", "--journal", JOURNAL]);
    assert!(
        hist.lines()
            .any(|l| l.starts_with("evacuation #1 of h1: interrupted")),
        "{hist}"
    );
    drop(the_lab);
    assert_lab_gone();
}
