//! Careless input, round two (issue 18): the release binary's surfaces fed what a careless
//! operator gives — outputs onto devices and links, read-only commands on missing or foreign
//! journals, huge numbers, endless files, closed pipes — each answered with a clear error (or
//! the right quiet end), never a replaced device, a created file, a panic or a hang.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A directory of this test's own, removed when dropped (pass or fail).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ferry-careless-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run ferry with `args`, its stdin empty, bounded in time: (exit code, stdout, stderr). A run
/// past `within` is killed and fails the test (a hang is a defect).
fn ferry_within(args: &[&str], within: Duration) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if t.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry {args:?} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ferry(args: &[&str]) -> (i32, String, String) {
    ferry_within(args, Duration::from_secs(30))
}

fn seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ferry-core/tests/data/seed-source.xml")
}

fn expected_xml() -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ferry-core/tests/data/seed-target.xml"),
    )
    .unwrap()
}

/// `ferry plan` of the seed, its destination XML written to `out`.
fn plan_to(out: &Path) -> (i32, String, String) {
    let src = seed();
    ferry(&[
        "plan",
        "--domain-xml",
        src.to_str().unwrap(),
        "--to",
        "qemu+ssh://h2/system",
        "--map",
        "/mnt/nfs=/mnt/nfs_second_mount",
        "--copy",
        "vdb=/dev/nvme1n5",
        "--out-xml",
        out.to_str().unwrap(),
    ])
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

#[test]
fn an_output_onto_a_device_is_written_through_and_the_device_stays() {
    // A null device of the test's own (as root, as CI runs): a regression replaces it, not the
    // machine's /dev/null.
    let s = Scratch::new("dev");
    let null = s.path("null");
    let made = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success();
    if !made {
        eprintln!("skipped: mknod needs root");
        return;
    }
    let (code, _, err) = plan_to(&null);
    assert_eq!(code, 0, "{err}");
    let t = std::fs::symlink_metadata(&null).unwrap().file_type();
    assert!(t.is_char_device(), "the device node was replaced");
    assert_eq!(
        std::fs::read_dir(&s.0).unwrap().count(),
        1,
        "nothing else written"
    );
}

#[test]
fn an_output_onto_a_fifo_reaches_its_reader_and_the_fifo_stays() {
    let s = Scratch::new("fifo");
    let fifo = s.path("out.fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let (code, _, err) = plan_to(&fifo);
    assert_eq!(code, 0, "{err}");
    assert_eq!(reader.join().unwrap(), expected_xml());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn an_output_onto_a_link_writes_the_file_it_points_to_and_keeps_the_link() {
    let s = Scratch::new("link");
    let (file, link) = (s.path("real.xml"), s.path("link.xml"));
    std::fs::write(&file, "old").unwrap();
    std::os::unix::fs::symlink("real.xml", &link).unwrap();
    let (code, _, err) = plan_to(&link);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected_xml());
    // A dangling link: the file it names is created, the link stays.
    let (dangling, missing) = (s.path("dangling.xml"), s.path("made.xml"));
    std::os::unix::fs::symlink("made.xml", &dangling).unwrap();
    let (code, _, err) = plan_to(&dangling);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&missing).unwrap(), expected_xml());
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn an_output_onto_a_directory_is_refused_and_the_directory_untouched() {
    let s = Scratch::new("dir");
    let dir = s.path("d");
    std::fs::create_dir(&dir).unwrap();
    let (code, _, err) = plan_to(&dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert!(std::fs::metadata(&dir).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(&s.0).unwrap().count(),
        1,
        "no temporary file left"
    );
}

/// Ferry with stdout sent to `out`: (exit code, stderr).
fn ferry_to(args: &[&str], out: std::fs::File) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_full_disk_is_an_error_that_says_so_never_a_panic() {
    for args in [
        &["completions", "bash"][..],
        &["man"][..],
        &[
            "simulate", "--hosts", "20", "--guests", "100", "--drain", "2",
        ][..],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let (code, err) = ferry_to(args, full);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("cannot write to standard output: No space left on device"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_closed_pipe_ends_ferry_quietly() {
    use std::io::Read;
    // A plan of 3,000 empty drives: far more than a pipe holds, so writes go on after the
    // reader is gone.
    let s = Scratch::new("pipe");
    let many = s.path("many.xml");
    let disks: String = (0..3000)
        .map(|i| {
            format!("<disk type='file' device='cdrom'><target dev='sd{i}' bus='scsi'/></disk>")
        })
        .collect();
    std::fs::write(
        &many,
        format!("<domain type='qemu'><name>g</name><devices>{disks}</devices></domain>"),
    )
    .unwrap();
    let many = many.to_str().unwrap();
    let args = ["plan", "--domain-xml", many, "--to", "qemu:///x"];
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The read end is closed here (dropped): every later write fails with EPIPE.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.is_empty(),
            "{args:?}: a closed pipe is not an error: {err}"
        );
        assert_eq!(out.status.code(), Some(141), "{args:?}");
    }
}

#[test]
fn an_inventory_or_rules_file_that_never_ends_is_refused_at_once() {
    let s = Scratch::new("endless");
    let fifo = s.path("inv.fifo");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let src = seed();
    let src = src.to_str().unwrap();
    for (args, what) in [
        (vec!["hosts", "--inventory", fifo], "the inventory"),
        (vec!["hosts", "--inventory", "/dev/zero"], "the inventory"),
        (
            vec!["plan", "--domain-xml", src, "--to", "u", "--rules", fifo],
            "the rules file",
        ),
        (
            vec![
                "plan",
                "--domain-xml",
                src,
                "--to",
                "u",
                "--rules",
                "/dev/zero",
            ],
            "the rules file",
        ),
    ] {
        let (code, _, err) = ferry_within(&args, Duration::from_secs(10));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(what) && err.contains("give a regular file"),
            "{args:?}: {err}"
        );
    }
}

/// A file with SQLite's header and one table of someone else's.
fn foreign_sqlite(p: &Path) {
    // The smallest valid database: sqlite3 is not needed, ferry's own journal opener is not
    // used; a 0-byte file is one too (SQLite's empty database).
    std::fs::write(p, b"").unwrap();
}

#[test]
fn read_only_commands_create_no_journal_and_touch_no_foreign_file() {
    let s = Scratch::new("readonly");
    let missing = s.path("sub/j.db");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["recover", "--dry-run", "--journal", m],
        vec!["release", "1", "--dry-run", "--journal", m],
        vec!["release", "1", "--journal", m],
        vec!["abort", "g", "--journal", m],
        vec!["abort", "7", "--journal", m],
        vec!["history", "--journal", m],
    ] {
        let (code, _, err) = ferry(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("sub/j.db"),
            "{args:?}: the path is named: {err}"
        );
        assert!(
            !s.path("sub").exists(),
            "{args:?} created {}",
            s.path("sub").display()
        );
    }
    let empty = s.path("empty.db");
    foreign_sqlite(&empty);
    let e = empty.to_str().unwrap();
    for args in [
        vec!["recover", "--dry-run", "--journal", e],
        vec!["release", "1", "--dry-run", "--journal", e],
        vec!["abort", "g", "--journal", e],
        vec!["history", "--journal", e],
    ] {
        let (code, _, err) = ferry(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("it is not Ferry's journal"), "{args:?}: {err}");
        assert_eq!(
            std::fs::metadata(&empty).unwrap().len(),
            0,
            "{args:?} wrote into a file that is not its journal"
        );
    }
}

/// A journal with one ended run, as Ferry writes it.
fn journal_with_a_run(p: &Path) {
    let j = ferry_journal::Journal::open(p).unwrap();
    let r = j.begin_run("g", "qemu:///a", "qemu:///b", "{}").unwrap();
    j.finish(r, ferry_journal::RunOutcome::RolledBack, "x")
        .unwrap();
}

#[test]
fn messages_say_what_happened() {
    let s = Scratch::new("messages");
    let (code, _, err) = ferry(&["history", "--journal", s.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("it is a directory"), "{err}");
    let j = s.path("j.db");
    journal_with_a_run(&j);
    let j = j.to_str().unwrap();
    // --last 0 is no question: refused, not answered "no runs".
    let (code, _, err) = ferry(&["history", "--journal", j, "--last", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--last"), "{err}");
    let (code, out, _) = ferry(&["history", "--journal", j, "--last", "1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("#1 "), "{out}");
    // A run that does not exist: recover and release say the same.
    for args in [
        vec!["recover", "99", "--journal", j],
        vec!["recover", "99", "--dry-run", "--journal", j],
        vec!["release", "99", "--journal", j],
    ] {
        let (code, _, err) = ferry(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("there is no run #99"), "{args:?}: {err}");
    }
}

#[test]
fn huge_numbers_are_refused_with_their_bound_never_a_panic() {
    let src = seed();
    let src = src.to_str().unwrap();
    let huge = "9223372036854775807";
    for args in [
        vec![
            "hosts",
            "--inventory",
            "/nonexistent.toml",
            "--connect-timeout",
            huge,
        ],
        vec![
            "plan",
            "--domain-xml",
            src,
            "--to",
            "u",
            "--connect-timeout",
            huge,
        ],
        vec![
            "evacuate",
            "h1",
            "--to",
            "qemu:///x",
            "--connect-timeout",
            huge,
        ],
        vec![
            "migrate",
            "g",
            "--from",
            "qemu:///a",
            "--to",
            "qemu:///b",
            "--bandwidth",
            huge,
        ],
        vec![
            "migrate",
            "g",
            "--from",
            "qemu:///a",
            "--to",
            "qemu:///b",
            "--timeout",
            huge,
        ],
        vec!["simulate", "--guests", "10000000"],
        vec!["simulate", "--link-gbit", "0"],
    ] {
        let (code, _, err) = ferry(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("is not in") || err.contains("from 0.001"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_very_slow_link_is_simulated_to_its_end() {
    let (code, out, err) = ferry_within(
        &[
            "simulate",
            "--hosts",
            "2",
            "--guests",
            "20",
            "--drain",
            "1",
            "--link-gbit",
            "0.001",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ferry"), "{out}");
}

#[test]
fn journal_text_is_inert_on_a_terminal_and_exact_in_json() {
    let s = Scratch::new("inert");
    let p = s.path("j.db");
    let evil = "g\n#9   forged -> x  migrated: ok\u{1b}[2J";
    {
        let j = ferry_journal::Journal::open(&p).unwrap();
        let r = j.begin_run(evil, "qemu:///a", "qemu:///b", "{}").unwrap();
        j.finish(r, ferry_journal::RunOutcome::Refused, "bad\u{7}")
            .unwrap();
    }
    let j = p.to_str().unwrap();
    let (code, out, err) = ferry(&["history", "--journal", j]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        1,
        "a guest's name forged a line: {out}"
    );
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
    assert!(out.contains("g\\n#9"), "{out}");
    let (code, out, _) = ferry(&["history", "--journal", j, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["guest"], evil);
}

#[test]
fn a_damaged_journal_is_named_with_what_is_wrong() {
    let s = Scratch::new("damaged");
    let p = s.path("j.db");
    {
        let j = ferry_journal::Journal::open(&p).unwrap();
        for i in 0..400 {
            let r = j
                .begin_run(
                    &format!("guest-{i}"),
                    "qemu:///a",
                    "qemu:///b",
                    &"x".repeat(200),
                )
                .unwrap();
            j.finish(r, ferry_journal::RunOutcome::Migrated, "verified")
                .unwrap();
        }
    }
    // Garbage over the pages after the schema's: the runs can no longer be read.
    let mut bytes = std::fs::read(&p).unwrap();
    let len = bytes.len();
    assert!(len > 16 * 4096, "{len}");
    for b in &mut bytes[8 * 4096..len - 4096] {
        *b = 0xa5;
    }
    std::fs::write(&p, &bytes).unwrap();
    let (code, _, err) = ferry(&["history", "--journal", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(p.to_str().unwrap()),
        "the path is named: {err}"
    );
    assert!(err.contains("malformed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A PostgreSQL journal that cannot be reached, or a URL that cannot be read, is refused
/// before any host is read (no step is announced), within the connect bound, and the password
/// is never printed.
#[test]
fn an_unreachable_or_bad_postgresql_journal_is_refused_before_any_host_without_the_password() {
    for (journal, why) in [
        // Nothing listens on port 1 of the loopback: refused at once.
        ("postgres://ferry:s3cret@127.0.0.1:1/ferry", "refused"),
        (
            "postgres://ferry:s3cret@127.0.0.1:notaport/ferry",
            "invalid",
        ),
    ] {
        for cmd in [
            vec![
                "migrate",
                "test",
                "--from",
                "test:///default",
                "--to",
                "test:///default",
            ],
            vec!["history"],
            vec!["recover", "--dry-run"],
        ] {
            let mut args = cmd.clone();
            args.extend(["--journal", journal]);
            let (code, out, err) = ferry_within(&args, Duration::from_secs(20));
            assert_eq!(code, 1, "{cmd:?} {journal}: {out}{err}");
            assert!(!format!("{out}{err}").contains("s3cret"), "{out}{err}");
            assert!(err.contains("ferry:***@127.0.0.1"), "{cmd:?}: {err}");
            assert!(err.to_lowercase().contains(why), "{cmd:?} {journal}: {err}");
            // Nothing of the flow began: no step was announced.
            assert!(!err.contains("==>") && !out.contains("==>"), "{out}{err}");
        }
    }
}
