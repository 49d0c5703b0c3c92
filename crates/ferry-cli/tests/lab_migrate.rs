//! `ferry migrate` end to end in the lab: real libvirtd, real QEMU guests.
//! Needs root and the lab's packages: `make test` (or `cargo test --features lab`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn seed_migration_copies_only_vdb_and_the_guest_cold_starts_on_the_target() {
    let lab = Lab::up(&[]);
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/ferry-lab/nvme1n5",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = result(&out);
    assert_eq!(r["outcome"], "migrated", "{r}");
    let s = &r["summary"];
    // vda holds 16 MiB of data: had it been copied, the disk bytes would show it.
    let disk = s["disk_bytes"].as_u64().unwrap();
    assert!(
        (64 * MIB..72 * MIB).contains(&disk),
        "disk bytes moved {disk}: vdb only is 64 MiB"
    );
    assert_eq!(s["copied_disks"], serde_json::json!(["vdb"]));
    assert!(s["downtime_ms"].as_u64().is_some(), "{s}");
    assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(out
        .lines()
        .any(|l| l.contains("\"event\":\"step\"") && l.contains("\"step\":\"preflight\"")));
    assert_eq!(domstate(H1), "");
    assert_eq!(domstate(H2), "running");
    let v = lab.verify_guest("h2");
    assert!(
        v.contains("vda is /mnt/nfs_second_mount/test_img.img, open in QEMU"),
        "{v}"
    );
    assert!(
        v.contains("ok vdb /dev/ferry-lab/nvme1n5: static region intact, write sequence unbroken"),
        "{v}"
    );
    // The persistent definition on h2 has the new paths: a cold start works.
    cold_start("h2", H2);
    lab.verify_guest("h2");
    let (code, hist, _) = ferry(&["history", "--journal", JOURNAL, "--last", "1"]);
    assert_eq!(code, 0);
    assert!(hist.contains("migrated"), "{hist}");
    drop(lab);
    assert_lab_gone();
}

#[test]
fn copy_to_a_file_ferry_creates_on_a_third_host_peer_to_peer_over_tls() {
    let lab = Lab::up(&["--hosts", "3"]);
    // TLS is really used: h2 with a certificate its QEMU rejects makes a --tls migration fail,
    // and the guest stays on h1.
    let pki = "/var/lib/ferry-lab/h2/pki";
    let (ok, _, e) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ferry-lab-h2",
        "-keyout",
        &format!("{pki}/server-key.pem"),
        "-out",
        &format!("{pki}/server-cert.pem"),
    ]));
    assert!(ok, "{e}");
    let (code, _, err) = migrate(&[
        "--tls",
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/srv/ferry-store/vdb.raw",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server-cert.pem"), "{err}");
    assert!(
        err.contains("the guest keeps running on the source"),
        "{err}"
    );
    assert!(store("h2").is_empty());
    assert_eq!(domstate(H1), "running");

    let (code, out, err) = ferry(&[
        "migrate",
        GUEST,
        "--from",
        H1,
        "--to",
        H3,
        "--unsafe",
        "--journal",
        JOURNAL,
        "--map",
        "/mnt/nfs=/mnt/nfs_third_mount",
        "--copy",
        "vdb=/srv/ferry-store/vdb.raw",
        "--bandwidth",
        "200",
        // Peer-to-peer, over TLS, with explicit streams for memory and disks.
        "--p2p",
        "--tls",
        "--migrate-uri",
        "tcp://10.77.0.3",
        "--disks-uri",
        "tcp://10.77.0.3:49200",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("created /srv/ferry-store/vdb.raw"), "{err}");
    assert!(
        out.contains("created on the target: /srv/ferry-store/vdb.raw"),
        "{out}"
    );
    assert_eq!(store("h3"), vec!["vdb.raw"]);
    assert_eq!(
        std::fs::metadata("/var/lib/ferry-lab/h3/store/vdb.raw")
            .unwrap()
            .len(),
        64 * MIB
    );
    assert_eq!(domstate(H1), "");
    assert_eq!(domstate(H2), "");
    let v = lab.verify_guest("h3");
    assert!(
        v.contains("vda is /mnt/nfs_third_mount/test_img.img"),
        "{v}"
    );
    assert!(v.contains("ok vdb /srv/ferry-store/vdb.raw"), "{v}");
    drop(lab);
    assert_lab_gone();
}

#[test]
fn refusals_create_nothing_and_leave_the_guest_running() {
    let lab = Lab::up(&[]);
    // vdb's storage in no pool: nothing tells shared from local (the "no rule" case below).
    let (ok, _, e) = virsh(H1, &["pool-destroy", "nvme-a"]);
    assert!(ok, "{e}");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--map",
                "/mnt/nfs=/mnt/nfs_second_mount",
                "--copy",
                "vdb=/dev/ferry-lab/nvme1n6",
            ],
            "the target is too small",
        ),
        (
            &[
                "--map",
                "/mnt/nfs=/mnt/nfs_missing",
                "--copy",
                "vdb=/srv/ferry-store/vdb.raw",
            ],
            "/mnt/nfs_missing/test_img.img: the shared disk's path does not exist there",
        ),
        (
            &[
                "--map",
                "/mnt/nfs=/mnt/nfs_second_mount",
                "--copy",
                "vdz=/srv/ferry-store/vdz.raw",
            ],
            "the guest has no disk with target dev vdz",
        ),
        (
            &["--map", "/mnt/nfs=/mnt/nfs_second_mount"],
            "disk vdb (block /dev/ferry-lab/nvme2n2) has no storage rule",
        ),
        (
            &[
                "--map",
                "/mnt/nfs=/mnt/nfs_second_mount",
                "--copy",
                "vdb=/srv/nowhere/vdb.raw",
            ],
            "its directory does not exist",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = migrate(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            store("h2").is_empty(),
            "{args:?}: h2's store has {:?}",
            store("h2")
        );
        assert_eq!(domstate(H2), "", "{args:?}");
        assert_eq!(domstate(H1), "running", "{args:?}");
    }
    // A guest with a passthrough device (USB, defined, not started: the lab has no such device).
    let pt = std::env::temp_dir().join(format!("ferry-pt-{}.xml", std::process::id()));
    std::fs::write(&pt, "<domain type='qemu'><name>lab-pt</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
        <devices><hostdev mode='subsystem' type='usb' managed='no'><source><vendor id='0x1d6b'/><product id='0x0002'/></source></hostdev></devices></domain>").unwrap();
    let (ok, _, e) = virsh(H1, &["define", pt.to_str().unwrap()]);
    assert!(ok, "{e}");
    let (code, _, err) = ferry(&[
        "migrate",
        "lab-pt",
        "--from",
        H1,
        "--to",
        H2,
        "--journal",
        JOURNAL,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not migratable: it has a passthrough device (<hostdev> USB vendor 0x1d6b product 0x0002)"), "{err}");
    assert_eq!(virsh(H2, &["list", "--all", "--name"]).1.trim(), "");
    lab.verify_guest("h1");
    drop(lab);
    assert_lab_gone();
}

/// Ctrl-C mid-copy: the guest stays on h1, and h2 keeps nothing of Ferry's. (Every other
/// fault is in the fault matrix, `lab_faults.rs`.)
#[test]
fn ctrl_c_aborts_and_rolls_back() {
    let lab = Lab::up(&["--rate", "60"]);
    let m = Running::start(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/srv/ferry-store/vdb.raw",
    ]);
    assert!(run(Command::new("kill").args(["-INT", &m.pid.to_string()])).0);
    let (code, out, err) = m.wait(Duration::from_secs(60));
    assert_eq!(code, 1, "{out}{err}");
    let msg = result(&out)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("cancelled by the operator"), "{msg}");
    assert!(
        msg.contains("the guest keeps running on the source"),
        "{msg}"
    );
    assert!(
        out.contains(
            "deleted /srv/ferry-store/vdb.raw on qemu+tcp://10.77.0.2/system (Ferry had created it)"
        ),
        "{out}"
    );
    assert!(store("h2").is_empty(), "h2 keeps {:?}", store("h2"));
    assert_eq!(domstate(H2), "");
    lab.verify_guest("h1");
    drop(lab);
    assert_lab_gone();
}

#[test]
fn a_larger_raw_block_device_is_used_through_a_storage_slice() {
    let lab = Lab::up(&[]);
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/ferry-lab/nvme1n7",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("copy into the first 67108864 bytes of block device /dev/ferry-lab/nvme1n7 (100663296 bytes) as a storage slice"),
        "{err}"
    );
    let v = lab.verify_guest("h2");
    assert!(
        v.contains("ok vdb /dev/ferry-lab/nvme1n7 (a storage slice of 67108864 bytes)"),
        "{v}"
    );
    let (_, xml, _) = virsh(H2, &["dumpxml", "--inactive", GUEST]);
    assert!(
        xml.contains("<slice type='storage' offset='0' size='67108864'/>"),
        "{xml}"
    );
    drop(lab);
    assert_lab_gone();
}

/// Progress stays live through the whole job: at least one sample a second in the storage
/// copy and in the memory passes (libvirt's own elapsed time gives each phase's span).
#[test]
fn progress_has_a_sample_every_second_in_every_phase() {
    let lab = Lab::up(&[]);
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/ferry-lab/nvme1n5",
        "--bandwidth",
        "8",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut phases: Vec<(String, Vec<u64>)> = vec![];
    for l in out.lines().filter(|l| l.contains("\"event\":\"job\"")) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let phase = match v["phase"].as_str().unwrap() {
            "memory" => "memory".to_string(),
            p => p.to_string(),
        };
        let at = v["elapsed_ms"].as_u64().unwrap();
        match phases.last_mut() {
            Some((p, times)) if *p == phase => times.push(at),
            _ => phases.push((phase, vec![at])),
        }
    }
    let summary: Vec<String> = phases
        .iter()
        .map(|(p, t)| {
            format!(
                "{p}: {} samples over {} ms",
                t.len(),
                t.last().unwrap() - t[0]
            )
        })
        .collect();
    eprintln!("progress: {summary:?}");
    let copy = phases
        .iter()
        .find(|(p, _)| p == "storage_copy")
        .unwrap_or_else(|| panic!("no storage copy samples: {summary:?}"));
    assert!(
        copy.1.last().unwrap() - copy.1[0] >= 3000,
        "the copy at 8 MiB/s should last seconds: {summary:?}"
    );
    for (p, t) in phases
        .iter()
        .filter(|(p, _)| p == "storage_copy" || p == "memory")
    {
        let span_s = (t.last().unwrap() - t[0]) / 1000;
        assert!(
            t.len() as u64 > span_s,
            "phase {p}: {} samples over {span_s} s: progress went dark ({summary:?})",
            t.len()
        );
        let gap = t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(
            gap <= 2500,
            "phase {p}: a gap of {gap} ms between samples ({summary:?})"
        );
    }
    lab.verify_guest("h2");
    drop(lab);
    assert_lab_gone();
}

#[test]
fn release_source_deletes_the_copy_ferry_made_and_keeps_what_it_cannot_give_back() {
    let lab = Lab::up(&[]);
    // h1 -> h2, vdb copied to a file Ferry creates in h2's store.
    let (code, out, err) = migrate(&[
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/srv/ferry-store/vdb.raw",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    lab.verify_guest("h2");
    // h1's vdb is a device node in a dir pool, and h1 has no hook: Ferry keeps it.
    let (code, out, _) = ferry(&["release", "1", "--journal", JOURNAL, "--dry-run"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("keep /dev/ferry-lab/nvme2n2 (disk vdb): a block device that no store of the source gives back"),
        "{out}"
    );
    // Back h2 -> h1 with --release-source: h2's copy goes, through libvirt, journaled.
    let (code, out, err) = ferry(&[
        "migrate",
        GUEST,
        "--from",
        H2,
        "--to",
        H1,
        "--unsafe",
        "--journal",
        JOURNAL,
        "--map",
        "/mnt/nfs_second_mount=/mnt/nfs",
        "--copy",
        "vdb=/dev/ferry-lab/nvme2n2",
        "--release-source",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("delete /srv/ferry-store/vdb.raw (disk vdb) through libvirt's storage API on qemu+tcp://10.77.0.2/system: done"),
        "{out}{err}"
    );
    assert!(store("h2").is_empty(), "h2 keeps {:?}", store("h2"));
    lab.verify_guest("h1");
    let (code, out, _) = ferry(&["release", "2", "--journal", JOURNAL]);
    assert_eq!(code, 1);
    assert!(out.contains("already released"), "{out}");
    // Run 1's guest no longer runs on its target: its source copy is the guest's disk again.
    let (code, out, _) = ferry(&["release", "1", "--journal", JOURNAL]);
    assert_eq!(code, 1);
    assert!(out.contains("does not run on the run's target"), "{out}");
    drop(lab);
    assert_lab_gone();
}

/// `--preseed` on a 256 MiB vdb holding 24 MiB of data, onto a target device full of garbage:
/// Ctrl-C during the bulk copy thaws the guest and leaves its definition as it was; then the
/// migration: zero chunks cross as holes, the live phase copies only what the guest wrote
/// since the freeze, every byte of vdb is right on the target (the zero regions too), and no
/// overlay is left on either host.
#[test]
fn preseed_sends_only_data_and_the_live_phase_only_what_the_guest_wrote() {
    let lab = Lab::up(&["--vdb-mb", "256", "--static-mb", "24"]);
    let (ok, _, e) = lab_shell("h2", "head -c 256M /dev/urandom >/dev/ferry-lab/nvme1n5");
    assert!(ok, "{e}");
    let inactive = || virsh(H1, &["dumpxml", "--inactive", GUEST]).1;
    let before = inactive();
    // Ctrl-C during the bulk copy (held at 2 MiB/s): the guest is thawed where it runs.
    let mut args = migrate_args(&PRESEED);
    args.extend(["--bandwidth", "2", "--json"]);
    let mut m = Running::spawn(&args);
    m.wait_for_output("\"event\":\"seed\"", Duration::from_secs(90));
    assert!(run(Command::new("kill").args(["-INT", &m.pid.to_string()])).0);
    let (code, out, err) = m.wait(Duration::from_secs(60));
    assert_eq!(code, 1, "{out}{err}");
    let r = result(&out);
    assert!(thawed(&r, "vdb"), "{r}");
    assert_eq!(
        inactive(),
        before,
        "the persistent definition after the thaw"
    );
    let (_, blk, _) = virsh(H1, &["domblklist", GUEST]);
    assert!(blk.contains("/dev/ferry-lab/nvme2n2"), "{blk}");
    assert!(store("h1").is_empty() && store("h2").is_empty());
    lab.verify_guest("h1");

    let mut args = PRESEED.to_vec();
    args.push("--json");
    let (code, out, err) = migrate(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = result(&out);
    let s = &r["summary"];
    let seeded = &s["seeded"][0];
    let (data, zeros) = (
        seeded["data"].as_u64().unwrap(),
        seeded["zeros"].as_u64().unwrap(),
    );
    // The static 24 MiB and the chunks the guest's write sequence touched: data; the rest of
    // the 256 MiB went as holes.
    assert!((24 * MIB..=32 * MIB).contains(&data), "data {data}: {s}");
    assert_eq!(data + zeros, 256 * MIB, "{s}");
    // The live phase copied the overlay only: what the guest wrote since the freeze.
    let live_disk = s["disk_bytes"].as_u64().unwrap();
    assert!(
        live_disk < 16 * MIB,
        "the live phase copied {live_disk} bytes: {s}"
    );
    assert!(seeded["verified_chunks"].as_u64().unwrap() > 0, "{s}");
    let v = lab.verify_guest("h2");
    assert!(
        v.contains("ok vdb /dev/ferry-lab/nvme1n5: static region intact, write sequence unbroken"),
        "{v}"
    );
    let (_, blk, _) = virsh(H2, &["domblklist", GUEST]);
    assert!(blk.contains("/dev/ferry-lab/nvme1n5"), "{blk}");
    assert!(!blk.contains(".qcow2"), "{blk}");
    assert!(store("h1").is_empty(), "h1 keeps {:?}", store("h1"));
    assert!(store("h2").is_empty(), "h2 keeps {:?}", store("h2"));
    // The persistent definition is the plan's: a cold start runs on the device alone.
    cold_start("h2", H2);
    lab.verify_guest("h2");
    drop(lab);
    assert_lab_gone();
}
