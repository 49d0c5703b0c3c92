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

fn tmp(name: &str, text: &str) -> String {
    let d = std::env::temp_dir().join(format!("ferry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
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
