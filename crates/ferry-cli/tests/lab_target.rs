//! Target selection and storage identity end to end in the lab: real libvirtd hosts whose
//! storage is described by libvirt pools named differently on each host.
//! Needs root and the lab's packages: `make test` (or `cargo test --features lab`).

mod common;

use std::path::Path;

use common::*;

/// Inside the lab's directory: `lab down` removes it with everything else.
const DIR: &str = "/var/lib/ferry-lab";
const JOURNAL: &str = "/var/lib/ferry-lab/journal.db";

fn inventory(name: &str, extra: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (h, uri) in [("h1", H1), ("h2", H2), ("h3", H3)] {
        s.push_str(&format!("[[host]]\nname = \"{h}\"\nuri = \"{uri}\"\n"));
        for (host, line) in extra {
            if *host == h {
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    let path = format!("{DIR}/{name}");
    std::fs::write(&path, s).unwrap();
    path
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn verdict<'a>(v: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .unwrap_or_else(|| panic!("no verdict for {host}: {v}"))
}

fn codes(v: &serde_json::Value) -> Vec<String> {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

/// Files in a directory of the lab (a host's store, the shared directory).
fn files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `ferry migrate lab-guest --from h1 --to h2` with an inventory, the lab's journal and `extra`.
fn migrate_h1_to_h2(inv: &str, extra: &[&str]) -> (i32, String, String) {
    let mut a = vec![
        "migrate",
        GUEST,
        "--from",
        "h1",
        "--to",
        "h2",
        "--inventory",
        inv,
        "--unsafe",
        "--journal",
        JOURNAL,
    ];
    a.extend_from_slice(extra);
    ferry(&a)
}

/// `ferry plan lab-guest --from h1 --json` with an inventory: the plan, which must be made.
fn plan_from_h1(inv: &str) -> serde_json::Value {
    let (code, out, err) = ferry(&[
        "plan",
        GUEST,
        "--from",
        "h1",
        "--inventory",
        inv,
        "--unsafe",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    json(&out)
}

fn no_canary_left() {
    for d in ["shared", "h1/store", "h2/store", "h3/store"] {
        let left: Vec<String> = files(&format!("{DIR}/{d}"))
            .into_iter()
            .filter(|f| f.starts_with("ferry-canary"))
            .collect();
        assert!(left.is_empty(), "canaries left in {d}: {left:?}");
    }
}

#[test]
fn three_hosts_ranked_by_storage_identity_draining_skipped_zero_config_migration_verified() {
    let the_lab = Lab::up(&["--hosts", "3"]);

    // ferry hosts: every host read, an unreachable one reported with its reason.
    let inv = inventory("hosts.toml", &[]);
    std::fs::write(
        &inv,
        std::fs::read_to_string(&inv).unwrap()
            + "[[host]]\nname = \"h9\"\nuri = \"qemu+tcp://127.0.0.1:1/system\"\n",
    )
    .unwrap();
    let (code, out, err) = ferry(&["hosts", "--inventory", &inv, "--json"]);
    assert_eq!(code, 2, "one host is unreachable: {out}{err}");
    let h = json(&out);
    let host = |n: &str| verdict(&h, n).clone();
    assert_eq!(host("h1")["reachable"], true);
    assert_eq!(host("h1")["report"]["facts"]["hostname"], "ferry-lab-h1");
    assert!(
        host("h1")["report"]["facts"]["qemu_version"]
            .as_u64()
            .unwrap()
            >= 7_000_000
    );
    let guests = host("h1")["report"]["guests"].to_string();
    assert!(guests.contains("lab-guest"), "{guests}");
    let pools = host("h2")["report"]["pools"].to_string();
    assert!(
        pools.contains("shared-b") && pools.contains("store-b"),
        "{pools}"
    );
    assert_eq!(host("h9")["reachable"], false);
    assert!(
        host("h9")["report"]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{}",
        host("h9")
    );
    let took: Vec<u64> = h["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["took_ms"].as_u64().unwrap())
        .collect();
    eprintln!(
        "ferry hosts: 4 hosts read in {} ms; per host {:?} ms (sum {} ms)",
        h["total_ms"],
        took,
        took.iter().sum::<u64>()
    );

    // h3 does not see the shared store: h2 is picked, h3's reason names the disk and the pool.
    let inv = inventory("inv.toml", &[]);
    assert!(virsh(H3, &["pool-destroy", "shared-c"]).0);
    let (ok, _, e) = lab(&["shell", "h3", "umount", "/mnt/nfs_third_mount"]);
    assert!(ok, "{e}");
    let p = plan_from_h1(&inv);
    assert_eq!(p["target"], "h2", "{p}");
    let h3 = verdict(&p, "h3");
    assert_eq!(h3["eligible"], false);
    assert_eq!(codes(h3), vec!["shared_store"], "{h3}");
    let why = h3["reasons"][0]["message"].as_str().unwrap();
    assert!(
        why.contains("disk vda") && why.contains("pool shared-a on h1"),
        "{why}"
    );
    // Each disk's decision says where it came from.
    let disks = p["disks"].as_array().unwrap();
    assert_eq!(disks[0]["origin"]["from"], "canary", "{}", disks[0]);
    assert_eq!(disks[1]["origin"]["from"], "local_store", "{}", disks[1]);
    assert_eq!(p["migrate_disks"], serde_json::json!(["vdb"]));
    // The same in words.
    let (code, text, err) = ferry(&[
        "plan",
        GUEST,
        "--from",
        "h1",
        "--inventory",
        &inv,
        "--no-diff",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("target: h2"), "{text}");
    assert!(text.contains("[shared_store] disk vda"), "{text}");
    no_canary_left();

    // h3 sees the share again; h2 drains: h3 is picked, and the migration there needs no --to,
    // --map or --copy.
    let (ok, _, e) = lab(&[
        "shell",
        "h3",
        "mount",
        "--bind",
        "/var/lib/ferry-lab/shared",
        "/mnt/nfs_third_mount",
    ]);
    assert!(ok, "{e}");
    assert!(virsh(H3, &["pool-start", "shared-c"]).0);
    let inv = inventory(
        "drain.toml",
        &[
            ("h2", "state = \"draining\""),
            ("h3", "migration_address = \"10.77.0.3\""),
        ],
    );
    let p = plan_from_h1(&inv);
    assert_eq!(p["target"], "h3", "{p}");
    assert_eq!(codes(verdict(&p, "h2")), vec!["draining"]);
    assert_eq!(p["options"]["migrate_uri"], "tcp://10.77.0.3", "{p}");
    let (code, out, err) = ferry(&[
        "migrate",
        GUEST,
        "--from",
        "h1",
        "--inventory",
        &inv,
        "--unsafe",
        "--journal",
        JOURNAL,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let result = out
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"result\""))
        .map(json)
        .unwrap();
    assert_eq!(result["outcome"], "migrated", "{result}");
    assert_eq!(result["summary"]["to"], H3);
    assert!(
        out.lines().any(|l| l.contains("\"event\":\"target\"")),
        "the ranking is an event: {out}"
    );
    assert_eq!(domstate(H1), "");
    let v = the_lab.verify_guest("h3");
    assert!(
        v.contains("vda is /mnt/nfs_third_mount/test_img.img, open in QEMU"),
        "{v}"
    );
    assert!(
        v.contains("ok vdb /srv/ferry-store/lab-guest-vdb.img"),
        "{v}"
    );
    // Created by Ferry in h3's local pool at the disk's exact size.
    let copy = Path::new(DIR).join("h3/store/lab-guest-vdb.img");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 64 << 20);
    no_canary_left();
    drop(the_lab);
    assert_lab_gone();
}

#[test]
fn identity_refuses_a_copy_onto_the_source_disk_a_map_onto_another_file_and_a_full_host() {
    let lab = Lab::up(&[]);
    let inv = inventory("inv.toml", &[]);
    let migrate = |extra: &[&str]| migrate_h1_to_h2(&inv, extra);
    let untouched = |what: &str| {
        assert_eq!(domstate(H1), "running", "{what}");
        assert_eq!(domstate(H2), "", "{what}");
        assert!(files(&format!("{DIR}/h2/store")).is_empty(), "{what}");
        assert_eq!(
            files(&format!("{DIR}/shared")),
            vec!["test_img.img"],
            "{what}"
        );
    };

    // vda's image is shared: "copying" it onto h2's view of the same file would destroy it.
    let (code, out, err) = migrate(&["--copy", "vda=/mnt/nfs_second_mount/test_img.img"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("[copy_onto_source]"), "{err}");
    assert!(err.contains("mirror disk vda onto itself"), "{err}");
    assert!(err.contains("appeared in /mnt/nfs on the source"), "{err}");
    untouched("copy onto source");

    // A same-sized copy of the image in h2's local store is another file, not the shared disk.
    let decoy = format!("{DIR}/h2/store/test_img.img");
    std::fs::copy(format!("{DIR}/shared/test_img.img"), &decoy).unwrap();
    let (code, out, err) = migrate(&["--map", "/mnt/nfs=/srv/ferry-store"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("[map_not_same_storage]"), "{err}");
    assert!(
        err.contains("did not appear in /mnt/nfs on the source"),
        "{err}"
    );
    std::fs::remove_file(&decoy).unwrap();
    untouched("map onto another file");

    // h2's reserve leaves too little memory: the numbers are shown, with --to and without.
    let inv = inventory("full.toml", &[("h2", "reserve_memory = \"1000GiB\"")]);
    let (code, out, err) = migrate_h1_to_h2(&inv, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("h2 [memory]"), "{err}");
    assert!(
        err.contains("the guest's 256.0 MiB + reserve 1000.0 GiB"),
        "{err}"
    );
    untouched("reserve");
    let (code, out, err) = ferry(&["plan", GUEST, "--from", "h1", "--inventory", &inv, "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let p = json(&out);
    assert_eq!(p["target"], serde_json::Value::Null);
    assert_eq!(codes(verdict(&p, "h2")), vec!["memory"]);
    // The inventory's h3 is not up in this two-host lab.
    assert_eq!(codes(verdict(&p, "h3")), vec!["unreachable"]);
    no_canary_left();
    lab.verify_guest("h1");
    drop(lab);
    assert_lab_gone();
}

#[test]
fn a_hook_hands_out_an_nvme_namespace_takes_it_back_after_a_failure_and_the_copy_lands_on_it() {
    let the_lab = Lab::up(&[]);
    let hook = root().join("lab/nvme-hook");
    let store = format!(
        "[[host.local_store]]\nhook = [\"{}\"]\nname = \"lab-nvme\"\ntimeout = 30",
        hook.canonicalize().unwrap().display()
    );
    let inv = inventory("hook.toml", &[("h2", &store)]);
    let ns = "/dev/ferry-lab/ns-lab-guest-vdb";
    let on_h2 = |args: &[&str]| {
        let mut a = vec!["shell", "h2"];
        a.extend_from_slice(args);
        lab(&a)
    };
    let migrate = |extra: &[&str]| migrate_h1_to_h2(&inv, extra);

    // A migration that fails (aborted by --timeout mid-copy): the namespace goes back.
    let (code, out, err) = migrate(&["--bandwidth", "1", "--timeout", "8"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("hook lab-nvme created /dev/ferry-lab/ns-lab-guest-vdb (67108864 bytes)"),
        "{err}"
    );
    assert!(err.contains(&format!("deleted {ns}")), "{err}");
    assert!(
        !on_h2(&["test", "-e", ns]).0,
        "the namespace is still there"
    );
    assert!(!Path::new(&format!("{DIR}/h2/ns-lab-guest-vdb.img")).exists());
    let (_, loops, _) = run(std::process::Command::new("losetup").args(["-l", "-n"]));
    assert!(!loops.contains("ns-lab-guest-vdb"), "{loops}");
    assert_eq!(domstate(H1), "running");
    assert_eq!(domstate(H2), "");

    // No --map, no --copy: vda shared by canary, vdb copied onto a namespace the hook makes.
    let (code, out, err) = migrate(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("hook lab-nvme created"), "{err}");
    let (ok, size, e) = on_h2(&["blockdev", "--getsize64", ns]);
    assert!(ok, "{e}");
    assert_eq!(
        size.trim(),
        (64u64 << 20).to_string(),
        "exactly the disk's size"
    );
    let v = the_lab.verify_guest("h2");
    assert!(
        v.contains("vda is /mnt/nfs_second_mount/test_img.img"),
        "{v}"
    );
    assert!(
        v.contains(&format!("ok vdb {ns}: static region intact")),
        "{v}"
    );
    drop(the_lab);
    assert_lab_gone();
}
