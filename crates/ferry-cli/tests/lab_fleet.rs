//! Several Ferry instances on one PostgreSQL journal, in the lab (real libvirtd hosts, real TCG
//! guests, a real PostgreSQL 15): instance A runs in this machine's namespace; instance B runs
//! as another machine (its own UTS namespace, hostname `fleet-b`), so it cannot see A's
//! processes and judges A only by A's leases in the journal. One lab for every case; they run
//! in order, each leaving the guests where the next expects them.
//! Needs root and the lab's packages: `make test` (or `cargo test --features lab`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ferry_journal::{Journal, RunId, RunOutcome};
use serde_json::Value;

/// A's lease: short, so that its expiry is waited for in seconds; long enough that B's first
/// look after A died comes before it expires (A renews every third of it).
const LEASE: &str = "12";

/// `lab-guest`, h1 → h2, its vdb copied into h2's store.
const TO_H2: [&str; 9] = [
    "migrate",
    GUEST,
    "--from",
    H1,
    "--to",
    H2,
    "--map",
    "/mnt/nfs=/mnt/nfs_second_mount",
    "--copy",
];

/// `lab-guest`, h2 → h1, its vdb copied into h1's store.
const TO_H1: [&str; 10] = [
    "migrate",
    GUEST,
    "--from",
    H2,
    "--to",
    H1,
    "--map",
    "/mnt/nfs_second_mount=/mnt/nfs",
    "--copy",
    "vdb=/srv/ferry-store/vdb.raw",
];

/// `ferry ARGS` as instance B, on another machine.
fn on_b(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(lab_script())
        .args([
            "client",
            "unshare",
            "--uts",
            "sh",
            "-c",
            "hostname fleet-b && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_ferry"),
        ])
        .args(args)
        .args(["--instance", "B"])
        .output()
        .expect("run ferry as instance B");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The run a `--json` Ferry announced.
fn run_of(r: &Running) -> i64 {
    let line = r.line_with("{\"event\":\"run\"");
    serde_json::from_str::<Value>(&line).unwrap()["run"]
        .as_i64()
        .unwrap()
}

fn kill(signal: &str, pid: u32) {
    assert!(run(Command::new("kill").args([signal, &pid.to_string()])).0);
}

/// The guest runs on `on` and is defined on the lab's other host no more.
fn runs_only_on(on: &str) -> bool {
    let other = if on == H1 { H2 } else { H1 };
    domstate(on) == "running" && domstate(other).is_empty()
}

#[test]
fn two_instances_share_one_postgresql_journal_by_leases() {
    let the_lab = Lab::up(&["--guests", "2", "--rate", "60"]);
    let pg = ferry_journal::testing::Postgres::start()
        .unwrap()
        .expect("PostgreSQL 15 is installed (lab/setup installs postgresql-15)");
    let url = pg.database("fleet").unwrap();
    let j = || Journal::open(Path::new(&url)).unwrap();
    let journal = url.as_str();

    // 1. A migrates with --p2p; B's migration of the same guest is refused with A's run.
    let mut a_args = TO_H2.to_vec();
    a_args.extend([
        "vdb=/srv/ferry-store/vdb.raw",
        "--unsafe",
        "--p2p",
        "--max-downtime",
        "2000",
        "--json",
        "--journal",
        journal,
        "--instance",
        "A",
        "--lease",
        LEASE,
    ]);
    let mut a = Running::spawn(&a_args);
    a.wait_for_output(&phase("storage_copy"), Duration::from_secs(120));
    let run = run_of(&a);
    let mut b_args = TO_H2.to_vec();
    b_args.extend([
        "vdb=/srv/ferry-store/vdb.raw",
        "--unsafe",
        "--journal",
        journal,
    ]);
    let (code, out, err) = on_b(&b_args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "lab-guest is being migrated by run #{run} (instance A, ferry pid {}",
            a.pid
        )),
        "{err}"
    );

    // A's keeper renews its lease: more than a term after the lock, it still holds.
    let since_ms = j().holder(GUEST).unwrap().expect("A's lock").since * 1000;
    let term_ms: i64 = LEASE.parse::<i64>().unwrap() * 1000;
    wait_until("a lease term passes", Duration::from_secs(60), || {
        j().now_ms().unwrap() > since_ms + term_ms + 3000
    });
    let h = j().holder(GUEST).unwrap().expect("A still migrates");
    assert!(
        h.expires_ms.unwrap() > j().now_ms().unwrap(),
        "A renewed its lease: {h:?}"
    );

    // 2. A is SIGKILLed mid-migration. Its lease still holds: B's recover leaves the run alone.
    kill("-KILL", a.pid);
    let killed = Instant::now();
    let _ = a.wait(Duration::from_secs(30));
    let (code, out, err) = on_b(&["recover", "--journal", journal]);
    assert_eq!(code, 1, "the run is left, not recovered: {out}{err}");
    assert!(
        out.contains(&format!(
            "run #{run} still holds lab-guest's lock (instance A, ferry pid"
        )),
        "{out}{err}"
    );
    // The source's libvirtd finishes the peer-to-peer job without Ferry; A's lease expires.
    wait_until(
        "the p2p job ends with the guest on h2",
        Duration::from_secs(180),
        || runs_only_on(H2),
    );
    wait_until("A's lease expires", Duration::from_secs(60), || {
        let j = j();
        let h = j
            .holder(GUEST)
            .unwrap()
            .expect("A's lock is still in the journal");
        h.expires_ms.unwrap() < j.now_ms().unwrap()
    });
    eprintln!("A's lease expired {:?} after the kill", killed.elapsed());
    // 3. B's recover takes the expired lease over and finishes the run: migrated, verified.
    let (code, out, err) = on_b(&["recover", "--journal", journal]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "  take over the lock of run #{run} from instance A, ferry pid"
        )),
        "{out}"
    );
    assert!(out.contains("the guest runs on the target"), "{out}");
    assert_eq!(j().outcome(RunId(run)).unwrap(), Some(RunOutcome::Migrated));
    assert_eq!(j().holder(GUEST).unwrap(), None, "B gave the lock back");
    the_lab.verify_guest("h2");

    // 4. A evacuates h1 (lab-guest2 moves to h2); meanwhile B refuses h1 as a target.
    let inventory = "/var/lib/ferry-lab/fleet.toml";
    std::fs::write(
        inventory,
        format!(
            "[[host]]\nname = \"h1\"\nuri = \"{H1}\"\n[[host]]\nname = \"h2\"\nuri = \"{H2}\"\n"
        ),
    )
    .unwrap();
    let mut evac = Running::spawn(&[
        "evacuate",
        "h1",
        "--inventory",
        inventory,
        "--journal",
        journal,
        "--instance",
        "A",
        "--lease",
        LEASE,
        "--unsafe",
        "--link-bandwidth",
        "7",
        "--json",
    ]);
    evac.wait_for_line("lab-guest2's storage copy", Duration::from_secs(120), |l| {
        l.contains("\"guest\":\"lab-guest2\"") && l.contains(&phase("storage_copy"))
    });
    let mut back = TO_H1.to_vec();
    back.extend(["--unsafe", "--json", "--journal", journal]);
    let (code, out, err) = on_b(&back);
    assert_ne!(code, 0, "{out}{err}");
    let res = result(&out);
    let codes: Vec<&str> = res["error"]["hosts"][0]["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("{res}"))
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert_eq!(codes, ["draining"], "{res}");
    assert_eq!(
        domstate(H2),
        "running",
        "the refused migration moved nothing"
    );
    let (code, out, err) = evac.wait(Duration::from_secs(300));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(result(&out)["outcome"], "emptied", "{out}");

    // 5. PostgreSQL stopped mid-migration and kept down until the guest runs on the target:
    //    the flow's journal writes wait for it, and the run ends `migrated` once it is back.
    back.extend(["--instance", "A"]);
    let mut c = Running::spawn(&back);
    c.wait_for_output(&phase("memory"), Duration::from_secs(180));
    let run = run_of(&c);
    pg.stop().unwrap();
    let down = Instant::now();
    wait_until("the guest runs on h1", Duration::from_secs(120), || {
        runs_only_on(H1)
    });
    pg.start_again().unwrap();
    eprintln!("PostgreSQL was down for {:?}", down.elapsed());
    let (code, out, err) = c.wait(Duration::from_secs(120));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(result(&out)["outcome"], "migrated", "{out}");
    assert_eq!(
        j().outcome(RunId(run)).unwrap(),
        Some(RunOutcome::Migrated),
        "the journal says so"
    );
    the_lab.verify_guest("h1");
    drop(the_lab);
    assert_lab_gone();
}
