//! Careless and hostile input, one row per class: the input, and the refusal (or the output)
//! Ferry must give. Nothing here may destroy data, hang, or crash.

use ferry_core::{plan, MigrationOptions, Plan, PlanError, Rules};

const SEED: &str = include_str!("data/seed-source.xml");

fn rules(map: &[&str], copy: &[&str]) -> Result<Rules, String> {
    let mut r = Rules::default();
    r.extend(Rules {
        map: map
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{e}"))?,
        copy: copy
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{e}"))?,
    })
    .map_err(|e| format!("{e}"))?;
    Ok(r)
}

/// The whole error chain, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(" / ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn try_plan(xml: &str, map: &[&str], copy: &[&str]) -> Result<Plan, String> {
    let r = rules(map, copy)?;
    plan(
        xml,
        Some(xml),
        "qemu+ssh://h2/system",
        &r,
        &MigrationOptions::default(),
    )
    .map_err(|e: PlanError| chain(&e))
}

/// A domain with these `<devices>` children.
fn domain(devices: &str) -> String {
    format!("<domain type='kvm'><name>g</name><devices>{devices}</devices></domain>")
}

fn refused(xml: &str, map: &[&str], copy: &[&str], want: &str) {
    match try_plan(xml, map, copy) {
        Ok(p) => panic!(
            "accepted, wanted a refusal containing {want:?}:\n{}",
            p.dest_xml
        ),
        Err(e) => assert!(e.contains(want), "wanted {want:?} in: {e}"),
    }
}

#[test]
fn data_safety_refusals() {
    let nfs = ["/mnt/nfs=/mnt/nfs2"];
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        // Two disks copied onto one destination, however the path is spelled.
        (
            "two copies, one device",
            &[],
            &["vda=/dev/nvme1n5", "vdb=/dev//nvme1n5"],
            "two copies would write one device",
        ),
        // A copy onto the mapped shared disk's target path would mirror vdb over vda's image.
        (
            "copy onto a shared disk",
            &nfs,
            &["vdb=/mnt/nfs2/./x/../test_img.img"],
            "the copy would overwrite the shared disk",
        ),
    ];
    for (what, map, copy, want) in cases {
        match try_plan(SEED, map, copy) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(e.contains(want), "{what}: wanted {want:?} in: {e}"),
        }
    }
    // Two disks with one <target dev>: libvirt refuses the domain; Ferry does not plan it.
    let dup = domain(
        "<disk type='file'><source file='/a/1.img'/><target dev='vdb'/></disk>\
         <disk type='file'><source file='/a/2.img'/><target dev='vdb'/></disk>",
    );
    refused(
        &dup,
        &[],
        &["vdb=/b/x.img"],
        "two disks have <target dev='vdb'>",
    );
}

#[test]
fn rule_mistakes_are_errors_with_where_and_what() {
    let typo = "[[copy]]\ndisk = \"vdb\"\ntoo = \"/dev/nvme1n5\"\n";
    let e = chain(&Rules::from_toml(typo).unwrap_err());
    assert!(e.contains("unknown field `too`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    let map_typo = "[[map]]\nfrom = \"/mnt/nfs\"\nt0 = \"/mnt/b\"\n";
    let e = chain(&Rules::from_toml(map_typo).unwrap_err());
    assert!(e.contains("unknown field `t0`"), "{e}");
    let e = rules(&["/mnt/nfs=/a", "/mnt/nfs/=/b"], &[]).unwrap_err();
    assert!(
        e.contains("/mnt/nfs/ is given twice, to /a and to /b"),
        "{e}"
    );
    // The same map twice with the same destination is harmless.
    rules(&["/mnt/nfs=/a", "/mnt/nfs=/a"], &[]).unwrap();
    let e = rules(&["mnt/nfs=mnt/nfs2"], &[]).unwrap_err();
    assert!(e.contains("a relative path is not a pool name"), "{e}");
    // A pool map is still a pool map.
    rules(&["default=fast"], &[]).unwrap();
    let e = rules(&[], &["vdb=/dev/a\nb"]).unwrap_err();
    assert!(e.contains("control character"), "{e}");
}

#[test]
fn what_is_written_reads_back_the_same_in_libvirt() {
    // A path with escaped newline and tab: written escaped, not raw (libxml2 would read raw
    // ones as spaces).
    let xml = domain(
        "<disk type='file'><source file='/mnt/nfs/a&#10;b&#9;c.img'/><target dev='vda'/></disk>",
    );
    let p = try_plan(&xml, &["/mnt/nfs=/mnt/b"], &[]).unwrap();
    assert!(
        p.dest_xml
            .contains("<source file='/mnt/b/a&#10;b&#9;c.img'/>"),
        "{}",
        p.dest_xml
    );
    // Raw whitespace in an attribute value reads as a space, as libvirt reads it.
    let raw =
        domain("<disk type='file'><source file='/mnt/nfs/a\nb.img'/><target dev='vda'/></disk>");
    let p = try_plan(&raw, &["/mnt/nfs=/mnt/b"], &[]).unwrap();
    assert!(
        p.dest_xml.contains("<source file='/mnt/b/a b.img'/>"),
        "{}",
        p.dest_xml
    );
    // Characters XML does not allow: refused, raw or as references.
    for bad in ["&#0;", "&#1;", "&#x1F;", "\u{1}"] {
        let xml = domain(&format!(
            "<disk type='file'><source file='/mnt/nfs/a{bad}.img'/><target dev='vda'/></disk>"
        ));
        refused(&xml, &["/mnt/nfs=/mnt/b"], &[], "not allow");
    }
    // A block disk whose <source> also carries file=: the copy to a file would write file= twice.
    let stray =
        domain("<disk type='block'><source dev='/dev/sdb' file='/x'/><target dev='vdb'/></disk>");
    refused(
        &stray,
        &[],
        &["vdb=/srv/vdb.img"],
        "would give it file= twice",
    );
    // Duplicate attributes in the input.
    let twice = domain("<disk type='file'><source file='/a' file='/b'/><target dev='vda'/></disk>");
    refused(&twice, &[], &["vda=/c"], "attribute file is given twice");
}

#[test]
fn the_reader_sees_what_libvirt_sees() {
    // A disk in a second <devices> block is a disk: it needs a rule like any other.
    let xml = "<domain type='kvm'><name>g</name><devices>\
        <disk type='file'><source file='/a/1.img'/><target dev='vda'/></disk></devices>\
        <devices><disk type='file'><source file='/b/2.img'/><target dev='vdb'/></disk></devices>\
        </domain>";
    refused(
        xml,
        &["/a=/a2"],
        &[],
        "disk vdb (file /b/2.img) has no storage rule",
    );
    // A cdrom is read-only whether or not it says so: it cannot be named for copy.
    let cd = domain(
        "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/></disk>",
    );
    refused(&cd, &[], &["hdc=/srv/x.iso"], "read-only");
}

#[test]
fn documents_that_would_blow_up_are_refused_at_once() {
    let laughs = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
        <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]>\
        <domain><name>&lol1;</name></domain>";
    refused(laughs, &[], &[], "a DOCTYPE is not accepted");
    let deep = format!(
        "<domain><name>g</name>{}{}</domain>",
        "<x>".repeat(10_500),
        "</x>".repeat(10_500)
    );
    refused(&deep, &[], &[], "nest more than 256 deep");
}

#[test]
fn the_printed_virsh_line_runs_nothing_but_virsh() {
    let xml = domain(
        "<disk type='file'><source file='/a/1.img'/><target dev='vdb;touch${IFS}x;'/></disk>",
    );
    let p = try_plan(&xml, &[], &["vdb;touch${IFS}x;=/b/1.img"]).unwrap();
    let files = ferry_core::XmlFiles::for_plan(&p, Some("t x.xml".into()), None);
    let line = p.virsh_command(&files, Some("qemu:///system"));
    assert!(
        line.contains("--migrate-disks 'vdb;touch${IFS}x;'"),
        "{line}"
    );
    assert!(line.contains("--xml 't x.xml'"), "{line}");
    // What a POSIX shell makes of it: exactly the arguments, nothing run.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -- {}; for a in \"$@\"; do printf '%s\\n' \"$a\"; done",
            line.replacen("virsh ", "", 1)
        ))
        .output()
        .unwrap();
    let args = String::from_utf8(out.stdout).unwrap();
    assert!(args.lines().any(|l| l == "vdb;touch${IFS}x;"), "{args}");
    assert!(args.lines().any(|l| l == "t x.xml"), "{args}");
}
