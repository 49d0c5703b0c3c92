//! The lab itself, proven with plain libvirt (no Ferry migration code): up, live-migrate the
//! guest from h1 to h2 with `virsh migrate` (vdb copied, vda shared at another path), verify it
//! on h2, cold-start it there from its persistent definition, down with nothing left.
//! Needs root and the lab's packages: `make test` (or `cargo test --features lab`).

mod common;

use std::time::Instant;

use common::*;

#[test]
fn lab_up_virsh_migrate_verify_down() {
    let mut lab = Lab::up(&[]);
    lab.verify_guest("h1");
    assert_eq!(domstate(H1), "running");
    assert_eq!(domstate(H2), "");

    // The operator's manual procedure: dump the XML, rewrite the sources (ferry plan does the
    // edit, byte-exactly), migrate with virsh.
    let dir = std::env::temp_dir().join(format!("ferry-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (live, inactive) = (dir.join("live.xml"), dir.join("inactive.xml"));
    let (ok, x, e) = virsh(H1, &["dumpxml", "--migratable", GUEST]);
    assert!(ok, "{e}");
    std::fs::write(&live, x).unwrap();
    let (ok, x, e) = virsh(H1, &["dumpxml", "--inactive", "--migratable", GUEST]);
    assert!(ok, "{e}");
    std::fs::write(&inactive, x).unwrap();
    let (t, tp) = (dir.join("t.xml"), dir.join("tp.xml"));
    let (ok, out, err) = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args([
            "plan",
            "--domain-xml",
            live.to_str().unwrap(),
            "--inactive-xml",
            inactive.to_str().unwrap(),
            "--to",
            H2,
            "--map",
            "/mnt/nfs=/mnt/nfs_second_mount",
            "--copy",
            "vdb=/dev/ferry-lab/nvme1n5",
            "--unsafe",
            "--out-xml",
            t.to_str().unwrap(),
            "--out-persistent-xml",
            tp.to_str().unwrap(),
            "--no-diff",
        ]),
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("migrate_disks: vdb\n"), "{out}");

    let vda = "/var/lib/ferry-lab/shared/test_img.img";
    let inode_before = std::fs::metadata(vda)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let t0 = Instant::now();
    let (ok, out, err) = virsh(
        H1,
        &[
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            "--abort-on-error",
            "--copy-storage-all",
            "--unsafe",
            "--migrate-disks",
            "vdb",
            "--xml",
            t.to_str().unwrap(),
            "--persistent-xml",
            tp.to_str().unwrap(),
            GUEST,
            H2,
        ],
    );
    assert!(ok, "virsh migrate failed: {out}{err}");
    lab.timings.push(("migrate", t0.elapsed()));
    assert_eq!(
        domstate(H1),
        "",
        "the source keeps no definition (undefinesource)"
    );
    assert_eq!(domstate(H2), "running");

    let t0 = Instant::now();
    let v = lab.verify_guest("h2");
    lab.timings.push(("verify", t0.elapsed()));
    assert!(
        v.contains("vda is /mnt/nfs_second_mount/test_img.img"),
        "{v}"
    );
    assert!(v.contains("ok vdb /dev/ferry-lab/nvme1n5"), "{v}");
    // vda was not copied: same file, and its qcow2 is intact (a mirror onto itself would not be).
    let inode_after = std::fs::metadata(vda)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(inode_before, inode_after);
    let (ok, out, err) = run(std::process::Command::new("qemu-img").args(["check", "-U", vda]));
    assert!(ok, "qemu-img check: {out}{err}");

    // The persistent definition on h2 has the new paths: it cold-starts.
    cold_start("h2", H2);
    lab.verify_guest("h2");

    let _ = std::fs::remove_dir_all(&dir);
    let timings = std::mem::take(&mut lab.timings);
    let t0 = Instant::now();
    drop(lab);
    assert_lab_gone();
    eprintln!("timings: {timings:?}, down {:?}", t0.elapsed());
}

/// `lab up` killed once h1's libvirtd runs, its anchors killed and its pid records gone (the
/// worst an interrupted CI run leaves): `lab down` still removes everything.
#[test]
fn lab_down_removes_what_an_interrupted_up_left() {
    let _lock = lab_lock();
    let _ = lab(&["down"]);
    let mut up = std::process::Command::new(lab_script())
        .args(["up", "--no-guest"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !lab_marked_processes()
        .iter()
        .any(|p| p.contains("libvirtd"))
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "h1's libvirtd never started"
        );
        assert!(
            up.try_wait().unwrap().is_none(),
            "lab up ended before libvirtd ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    up.kill().unwrap();
    up.wait().unwrap();
    for h in ["h1", "h2"] {
        let dir = format!("/var/lib/ferry-lab/{h}");
        if let Ok(pid) = std::fs::read_to_string(format!("{dir}/anchor.pid")) {
            let _ = run(std::process::Command::new("kill").args(["-9", pid.trim()]));
        }
        let _ = std::fs::remove_file(format!("{dir}/daemon.pids"));
        let _ = std::fs::remove_file(format!("{dir}/anchor.pid"));
    }
    assert!(
        lab_marked_processes()
            .iter()
            .any(|p| p.contains("libvirtd")),
        "the test must leave a libvirtd behind for lab down to find"
    );
    let (ok, out, err) = lab(&["down"]);
    assert!(ok, "{out}{err}");
    assert_lab_gone();
}
