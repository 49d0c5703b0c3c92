//! `ferry serve` against the lab: the daemon runs in the lab's client namespace, and so does
//! every HTTP client (curl): no packet leaves it. A migration started over the API is followed
//! over SSE to its outcome, through a disconnect and a reconnect with `Last-Event-ID` (no event
//! lost); a second start of the same guest is refused with the holder's run; a second run is
//! aborted over the API and rolls back; SIGTERM stops the daemon, and no token was ever in its
//! output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ADDR: &str = "127.0.0.1:8470";
const READ: &str = "lab-read-token-5f0c9d2e81";
const OPERATE: &str = "lab-operate-token-7b41aa09c3";
const TOKENS: &str = "/var/lib/ferry-lab/tokens";

/// `curl` in the lab's client namespace: status and body.
fn api(method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut c = Command::new(lab_script());
    c.args([
        "client",
        "curl",
        "-s",
        "--max-time",
        "120",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    c.arg(format!("http://{ADDR}{path}"));
    let (_, out, err) = run(&mut c);
    let (text, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    let code: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {out}{err}"));
    let v = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
    (code, v)
}

/// An SSE event as the test reads it.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// `curl -N /v1/events?run=R` in the background, its events parsed as they come.
struct Follow {
    child: Child,
    events: mpsc::Receiver<Sse>,
    seen: Vec<Sse>,
}

impl Follow {
    /// Follow every event (`run`: only that run's) after `last`.
    fn start(run: Option<i64>, last: Option<u64>) -> Follow {
        let mut c = Command::new(lab_script());
        c.args([
            "client",
            "curl",
            "-sN",
            "--max-time",
            "600",
            "-H",
            &format!("Authorization: Bearer {READ}"),
        ]);
        if let Some(l) = last {
            c.args(["-H", &format!("Last-Event-ID: {l}")]);
        }
        let mut child = c
            .arg(match run {
                Some(r) => format!("http://{ADDR}/v1/events?run={r}"),
                None => format!("http://{ADDR}/v1/events"),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(v) = l.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = l.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = l.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if l.is_empty() && !data.is_empty() {
                    let e = Sse {
                        id: id.take(),
                        kind: std::mem::take(&mut kind),
                        data: serde_json::from_str(&std::mem::take(&mut data)).unwrap_or_default(),
                    };
                    if tx.send(e).is_err() {
                        break;
                    }
                }
            }
        });
        Follow {
            child,
            events,
            seen: vec![],
        }
    }

    /// Read events until one satisfies `pred` (bounded).
    fn until(&mut self, what: &str, within: Duration, pred: impl Fn(&Sse) -> bool) -> Sse {
        let end = Instant::now() + within;
        loop {
            match self
                .events
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {within:?}; events: {:?}",
                    self.seen.iter().map(|e| &e.kind).collect::<Vec<_>>()
                ),
            }
        }
    }

    fn stop(mut self) -> Vec<Sse> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen
    }
}

/// The daemon: killed when dropped (a failed test leaves none behind).
struct Daemon(Option<Running>);

impl Daemon {
    fn stop(mut self) -> (i32, String, String) {
        let d = self.0.take().unwrap();
        assert!(common::run(Command::new("kill").args(["-TERM", &d.pid.to_string()])).0);
        d.wait(Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &d.pid.to_string()])
                .status();
            let _ = d.wait(Duration::from_secs(10));
        }
    }
}

fn migrate_body(from: &str, to: &str, map: &str, copy: &str) -> Value {
    json!({"guest": GUEST, "from": from, "to": to, "map": [map], "copy": [copy],
           "unsafe": true, "bandwidth": 8, "no_preseed": true})
}

#[test]
fn a_migration_over_the_api_is_followed_over_sse_and_an_abort_rolls_back() {
    let lab = Lab::up(&[]);
    std::fs::write(
        TOKENS,
        format!("# the lab's\nread {READ}\noperate {OPERATE}\n"),
    )
    .unwrap();
    let daemon = Daemon(Some(Running::spawn(&[
        "serve",
        "--listen",
        ADDR,
        "--tokens",
        TOKENS,
        "--journal",
        JOURNAL,
    ])));
    wait_until("the daemon answers", Duration::from_secs(20), || {
        api("GET", "/v1/runs", Some(READ), None).0 == 200
    });

    // No token, or a read token, starts nothing.
    let body = migrate_body(
        H1,
        H2,
        "/mnt/nfs=/mnt/nfs_second_mount",
        "vdb=/dev/ferry-lab/nvme1n5",
    );
    assert_eq!(api("POST", "/v1/migrations", None, Some(&body)).0, 401);
    let (code, p) = api("POST", "/v1/migrations", Some(READ), Some(&body));
    assert_eq!((code, p["code"].as_str()), (403, Some("forbidden")));

    // Started, and followed: a disconnect after a few samples, a reconnect with the last id.
    let (code, started) = api("POST", "/v1/migrations", Some(OPERATE), Some(&body));
    assert_eq!(code, 202, "{started}");
    let run = started["run"].as_i64().unwrap();
    assert_eq!(started["location"], format!("/v1/migrations/{run}"));
    // Every event of the daemon (the refused second start's too), to check that none is lost.
    let mut a = Follow::start(None, Some(0));
    let mut copy_samples = 0;
    a.until("3 storage copy samples", Duration::from_secs(120), |e| {
        e.kind == "job" && e.data["phase"] == "storage_copy"
    });
    copy_samples += 1;
    while copy_samples < 3 {
        a.until("a storage copy sample", Duration::from_secs(30), |e| {
            e.kind == "job"
        });
        copy_samples += 1;
    }
    // The same guest again, while it migrates: refused with the holder's run.
    let (code, busy) = api("POST", "/v1/migrations", Some(OPERATE), Some(&body));
    assert_eq!((code, busy["code"].as_str()), (409, Some("busy")), "{busy}");
    assert_eq!(busy["holder_run"], run);
    let first = a.stop();
    let last = first.iter().filter_map(|e| e.id).max().unwrap();
    let mut b = Follow::start(None, Some(last));
    let result = b.until("the result", Duration::from_secs(300), |e| {
        e.kind == "result" && e.data["run"] == run
    });
    let second = b.stop();
    assert_eq!(result.data["outcome"], "migrated", "{}", result.data);
    // No event lost, none twice: the ids of the run's events run on without a gap.
    let ids: Vec<u64> = first.iter().chain(&second).filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids: {ids:?}");
    let kinds: Vec<&str> = first
        .iter()
        .chain(&second)
        .filter(|e| e.data["run"] == run)
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds[0], "run", "the run's first event: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"result"), "{kinds:?}");
    assert!(!first.iter().chain(&second).any(|e| e.kind == "resync"));
    // A sample at least every 2.5 s of libvirt's clock, in the copy and in memory.
    for phase in ["storage_copy", "memory"] {
        let t: Vec<u64> = first
            .iter()
            .chain(&second)
            .filter(|e| e.kind == "job" && e.data["phase"] == phase && e.data["run"] == run)
            .map(|e| e.data["elapsed_ms"].as_u64().unwrap())
            .collect();
        assert!(!t.is_empty(), "no {phase} sample: {kinds:?}");
        let gap = t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(gap <= 2500, "{phase}: a gap of {gap} ms between samples");
    }
    let (_, row) = api("GET", &format!("/v1/migrations/{run}"), Some(READ), None);
    assert_eq!(row["run"]["outcome"], "migrated", "{row}");
    lab.verify_guest("h2");

    // Back to h1, into a file Ferry creates there, aborted over the API mid-copy.
    let back = migrate_body(
        H2,
        H1,
        "/mnt/nfs_second_mount=/mnt/nfs",
        "vdb=/srv/ferry-store/vdb.raw",
    );
    let (code, started) = api("POST", "/v1/migrations", Some(OPERATE), Some(&back));
    assert_eq!(code, 202, "{started}");
    let run2 = started["run"].as_i64().unwrap();
    let mut c = Follow::start(Some(run2), Some(0));
    c.until("a storage copy sample", Duration::from_secs(120), |e| {
        e.kind == "job" && e.data["phase"] == "storage_copy"
    });
    let (code, ab) = api(
        "DELETE",
        &format!("/v1/migrations/{run2}"),
        Some(OPERATE),
        None,
    );
    assert_eq!(code, 202, "{ab}");
    let result = c.until("the result", Duration::from_secs(120), |e| {
        e.kind == "result"
    });
    c.stop();
    assert_eq!(result.data["outcome"], "error", "{}", result.data);
    assert_eq!(
        result.data["error"]["guest_location"], "source",
        "{}",
        result.data
    );
    assert!(store("h1").is_empty(), "h1 keeps {:?}", store("h1"));
    assert_eq!(domstate(H1), "");
    lab.verify_guest("h2");
    let (_, row) = api("GET", &format!("/v1/migrations/{run2}"), Some(READ), None);
    assert_eq!(row["run"]["outcome"], "rolled_back", "{row}");

    // The metrics counted both.
    let (_, m) = api("GET", "/metrics", Some(READ), None);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("ferry_migrations_total{outcome=\"migrated\"} 1"),
        "{m}"
    );
    assert!(m.contains("ferry_migrations_running 0"), "{m}");

    // SIGTERM with nothing running: the daemon stops at once; no token in anything it said.
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("listening on http://127.0.0.1:8470/"), "{err}");
    for t in [READ, OPERATE] {
        assert!(
            !out.contains(t) && !err.contains(t),
            "a token in the daemon's output"
        );
    }
    drop(lab);
    assert_lab_gone();
}
