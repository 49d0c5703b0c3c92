//! `ferry plan` as an operator runs it: files in, plan and XML files out, exit status.

use std::path::PathBuf;
use std::process::Command;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ferry-core/tests/data")
        .join(name)
}

fn ferry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A path of this test process in the temporary directory; whatever is written there is
/// removed when it is dropped: a run leaves nothing behind.
struct Tmp(PathBuf);

impl std::ops::Deref for Tmp {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for Tmp {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    Tmp(std::env::temp_dir().join(format!("ferry-plan-cli-{}-{name}", std::process::id())))
}

#[test]
fn seed_plan_writes_the_target_xml_and_a_runnable_virsh_line() {
    let (out_xml, out_p) = (tmp("t.xml"), tmp("tp.xml"));
    let src = data("seed-source.xml");
    let (code, stdout, stderr) = ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--inactive-xml",
        src.to_str().unwrap(),
        "--to",
        "qemu+ssh://192.168.1.2/system",
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/nvme1n5",
        "--out-xml",
        out_xml.to_str().unwrap(),
        "--out-persistent-xml",
        out_p.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let expected = std::fs::read_to_string(data("seed-target.xml")).unwrap();
    assert_eq!(std::fs::read_to_string(&out_xml).unwrap(), expected);
    assert_eq!(std::fs::read_to_string(&out_p).unwrap(), expected);
    let virsh = format!(
        "virsh migrate --live --persistent --undefinesource --copy-storage-all --abort-on-error \
         --migrate-disks vdb --xml {} --persistent-xml {} myGuest qemu+ssh://192.168.1.2/system",
        out_xml.display(),
        out_p.display()
    );
    assert!(stdout.contains(&virsh), "{stdout}");
    assert!(stdout.contains("migrate_disks: vdb"), "{stdout}");
}

#[test]
fn json_plan_is_one_object_with_decisions() {
    let src = data("seed-source.xml");
    let (code, stdout, stderr) = ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--to",
        "qemu+tcp://h/system",
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/nvme1n5",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["migrate_disks"], serde_json::json!(["vdb"]));
    assert_eq!(v["disks"][0]["decision"], "shared");
    assert_eq!(v["disks"][1]["decision"], "copy");
    assert_eq!(v["disks"][1]["dest_source"]["path"], "/dev/nvme1n5");
    assert!(v["virsh"].as_str().unwrap().contains("--migrate-disks vdb"));
    assert!(v["flag_names"]
        .as_array()
        .unwrap()
        .contains(&"NON_SHARED_DISK".into()));
}

#[test]
fn a_disk_without_a_rule_exits_1_naming_it() {
    let src = data("seed-source.xml");
    let out_xml = tmp("never.xml");
    let (code, stdout, stderr) = ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--to",
        "u",
        "--map",
        "/mnt/nfs=/x",
        "--out-xml",
        out_xml.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("disk vdb (block /dev/nvme2n2) has no storage rule"),
        "{stderr}"
    );
    assert!(
        !out_xml.exists(),
        "no file is written when there is no plan"
    );
}

#[test]
fn rules_file_means_the_same_as_flags() {
    let rules = tmp("rules.toml");
    std::fs::write(
        &rules,
        "[[map]]\nfrom = \"/mnt/nfs\"\nto = \"/mnt/nfs_second_mount\"\n[[copy]]\ndisk = \"vdb\"\nto = \"/dev/nvme1n5\"\n",
    )
    .unwrap();
    let src = data("seed-source.xml");
    let by_file = ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--to",
        "u",
        "--json",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let by_flags = ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--to",
        "u",
        "--json",
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/nvme1n5",
    ]);
    assert_eq!(by_file.0, 0, "{}", by_file.2);
    assert_eq!(by_file.1, by_flags.1);
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, _, stderr) = ferry(&["plan", "--domain-xml", "/nonexistent.xml", "--to", "u"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read the live domain XML /nonexistent.xml"),
        "{stderr}"
    );
}

#[test]
fn output_files_never_overwrite_an_input_and_are_written_whole_or_not_at_all() {
    let src = tmp("in.xml");
    std::fs::copy(data("seed-source.xml"), &src).unwrap();
    let before = std::fs::read_to_string(&src).unwrap();
    let plan = |extra: &[&str]| {
        let mut a = vec![
            "plan",
            "--domain-xml",
            src.to_str().unwrap(),
            "--inactive-xml",
            src.to_str().unwrap(),
            "--to",
            "qemu+ssh://h2/system",
            "--map",
            "/mnt/nfs=/mnt/nfs_second_mount",
            "--copy",
            "vdb=/dev/nvme1n5",
        ];
        a.extend_from_slice(extra);
        ferry(&a)
    };
    // The input, spelled another way.
    let same = format!(
        "{}/./{}",
        src.parent().unwrap().display(),
        src.file_name().unwrap().to_string_lossy()
    );
    let (code, _, err) = plan(&["--out-xml", &same]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Ferry does not overwrite what it reads"),
        "{err}"
    );
    let (code, _, err) = plan(&[
        "--out-xml",
        &tmp("o.xml").display().to_string(),
        "--out-persistent-xml",
        &tmp("o.xml").display().to_string(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("need a file each"), "{err}");
    assert_eq!(std::fs::read_to_string(&src).unwrap(), before);
    // The second file cannot be written (its directory does not exist): the first is not
    // written either, and no temporary file is left.
    let first = tmp("first.xml");
    std::fs::write(&first, "old").unwrap();
    let (code, _, err) = plan(&[
        "--out-xml",
        first.to_str().unwrap(),
        "--out-persistent-xml",
        "/nonexistent-dir/p.xml",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot write the destination persistent XML to /nonexistent-dir/p.xml"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&first).unwrap(), "old");
    // Only this case's temporary files: the other cases of this binary write theirs
    // into the same directory at the same time.
    let mine = format!(".{}.", first.file_name().unwrap().to_string_lossy());
    let left: Vec<_> = std::fs::read_dir(first.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&mine) && name.ends_with(".tmp")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_endless_input_is_refused_at_its_bound() {
    let (code, _, err) = ferry(&["plan", "--domain-xml", "/dev/zero", "--to", "u"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is larger than 64 MiB: Ferry reads no more"),
        "{err}"
    );
}

#[test]
fn history_of_a_missing_or_foreign_journal_creates_nothing() {
    let dir = tmp("nothing-here").with_file_name("no-such-dir");
    let j = dir.join("j.db");
    let (code, _, err) = ferry(&["history", "--journal", j.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read the journal"), "{err}");
    assert!(err.contains("no-such-dir/j.db"), "{err}");
    assert!(!dir.exists(), "ferry history created {}", dir.display());
}

#[test]
fn a_document_that_cannot_be_read_is_named() {
    let bad = tmp("bad.xml");
    std::fs::write(
        &bad,
        "<domain><name>g</name><devices><disk></devices></domain>",
    )
    .unwrap();
    let (code, _, err) = ferry(&["plan", "--domain-xml", bad.to_str().unwrap(), "--to", "u"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("in {}", bad.display())), "{err}");
    assert!(err.contains("line 1"), "{err}");
}
