//! The Debian package (`make deb`, which `make test` runs first) installed with dpkg on this
//! machine: its ferry is the built one, its man page, completions, systemd unit and conffile are
//! where Debian looks for them, and its ferry reads the lab's hosts and plans a migration there
//! with the package's /etc/ferry/inventory.toml in place (no host in it: no inventory). Purged
//! at the end, even when the test fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The newest package `make deb` left in target/.
fn package() -> PathBuf {
    let dir = root().join("target");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ferry_") && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().unwrap_or_else(|| {
        panic!(
            "no ferry_*.deb in {}: run `make deb` (make test does)",
            dir.display()
        )
    })
}

/// Purges the package when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ferry"]).output();
    }
}

fn installed_ferry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(lab_script())
        .args(["client", "/usr/bin/ferry"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_package_installs_and_its_ferry_reads_the_lab() {
    let deb = package();
    // Nothing of an operator's may be replaced (or purged) here.
    assert!(
        !std::path::Path::new("/etc/ferry/inventory.toml").exists()
            || run(Command::new("dpkg").args(["-s", "ferry"])).0,
        "/etc/ferry/inventory.toml is not the package's: not installing over it"
    );
    let (ok, out, err) = run(Command::new("dpkg").args([
        "-i",
        "--force-confdef",
        "--force-confold",
        deb.to_str().unwrap(),
    ]));
    let _installed = Installed;
    assert!(ok, "dpkg -i {}: {out}{err}", deb.display());

    let (ok, version, _) = run(Command::new("/usr/bin/ferry").arg("--version"));
    assert!(ok);
    assert_eq!(
        version.trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );
    // The man page is the binary's own, where man looks.
    let (ok, page, _) = run(Command::new("zcat").arg("/usr/share/man/man1/ferry.1.gz"));
    assert!(ok);
    let (_, own, _) = run(Command::new("/usr/bin/ferry").arg("man"));
    assert_eq!(page, own);
    assert!(
        page.contains(".TH ferry 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    let (ok, bash, _) =
        run(Command::new("cat").arg("/usr/share/bash-completion/completions/ferry"));
    assert!(ok && bash.contains("_ferry()"), "bash completion");
    for f in [
        "/usr/share/zsh/vendor-completions/_ferry",
        "/usr/share/fish/vendor_completions.d/ferry.fish",
        "/usr/share/doc/ferry/copyright",
        "/usr/share/doc/ferry/examples/inventory.toml",
    ] {
        assert!(std::path::Path::new(f).is_file(), "{f}");
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/ferry-serve.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ferry serve"), "{unit}");
    let (_, conffiles, _) =
        run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "ferry"]));
    assert!(
        conffiles.contains("/etc/ferry/inventory.toml"),
        "{conffiles}"
    );
    let (_, depends, _) = run(Command::new("dpkg-query").args(["-W", "-f=${Depends}", "ferry"]));
    assert!(depends.contains("libvirt0"), "{depends}");

    // Against the lab: its hosts, and a migration's dry run with the package's inventory (no
    // host in it) in place.
    let lab = Lab::up(&[]);
    let inv = "/var/lib/ferry-lab/deb-inventory.toml";
    std::fs::write(
        inv,
        format!(
            "[[host]]\nname = \"h1\"\nuri = \"{H1}\"\n\n[[host]]\nname = \"h2\"\nuri = \"{H2}\"\n"
        ),
    )
    .unwrap();
    let (code, out, err) = installed_ferry(&["hosts", "--inventory", inv, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{v}");
    assert!(hosts.iter().all(|h| h["reachable"] == true), "{v}");
    let (code, out, err) =
        installed_ferry(&seed_args("migrate", &["--unsafe", "--dry-run", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(result(&out)["outcome"], "dry_run", "{out}");
    drop(lab);
    assert_lab_gone();
}
