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

/// Kill a `lab client CMD` child and CMD (its child: the wrapper does not exec it).
fn kill_tree(child: &mut Child) {
    let _ = Command::new("pkill")
        .args(["-KILL", "-P", &child.id().to_string()])
        .status();
    let _ = child.kill();
    let _ = child.wait();
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
    /// Follow the events `query` selects (`""`: every one; `run=N`, `evacuation=N`) after
    /// `last`.
    fn start(query: &str, last: Option<u64>) -> Follow {
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
            .arg(format!("http://{ADDR}/v1/events?{query}"))
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
        kill_tree(&mut self.child);
        self.seen
    }
}

/// The daemon: killed when dropped (a failed test leaves none behind).
struct Daemon(Option<Running>);

impl Daemon {
    /// SIGTERM, without waiting.
    fn term(&self) {
        let d = self.0.as_ref().unwrap();
        assert!(common::run(Command::new("kill").args(["-TERM", &d.pid.to_string()])).0);
    }

    /// SIGTERM, and wait for the daemon to end: its exit code and output.
    fn stop(mut self) -> (i32, String, String) {
        self.term();
        self.0.take().unwrap().wait(Duration::from_secs(60))
    }

    /// Wait for the daemon to end (after signals sent).
    fn wait(self) -> (i32, String, String) {
        self.wait_within(Duration::from_secs(120))
    }

    fn wait_within(mut self, within: Duration) -> (i32, String, String) {
        self.0.take().unwrap().wait(within)
    }

    fn proc(&mut self) -> &mut Running {
        self.0.as_mut().unwrap()
    }
}

/// `ferry --server` with the lab's operate token, in the client namespace (a process killed
/// if the test fails).
const TOKEN_FILE: &str = "/var/lib/ferry-lab/operate-token";

fn through(args: &[&str]) -> Vec<String> {
    std::fs::write(
        TOKEN_FILE,
        format!("# the lab's operate token\n{OPERATE}\n"),
    )
    .unwrap();
    let mut v: Vec<String> = [
        "--server",
        &format!("http://{ADDR}"),
        "--token-file",
        TOKEN_FILE,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

fn ferry_through(args: &[&str]) -> (i32, String, String) {
    let a = through(args);
    ferry(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

fn spawn_through(args: &[&str]) -> Daemon {
    let a = through(args);
    Daemon(Some(Running::spawn(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    )))
}

/// An event as `ferry migrate --json` prints it: the daemon's envelope taken off.
fn as_printed(e: &Sse) -> Value {
    let mut v = e.data.clone();
    let o = v.as_object_mut().unwrap();
    for k in ["id", "time_ms", "guest"] {
        o.remove(k);
    }
    if e.kind != "run" {
        o.remove("run");
    }
    v
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

/// Headless Chromium driven over WebDriver (chromedriver), both in the lab's client
/// namespace; every WebDriver call is a curl there. Killed when dropped.
struct Browser {
    driver: Child,
    session: String,
}

const DRIVER: &str = "127.0.0.1:9515";
const PROFILE: &str = "/var/lib/ferry-lab/chromium";

fn wd(method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut c = Command::new(lab_script());
    c.args(["client", "curl", "-s", "--max-time", "60", "-X", method]);
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    let (_, out, err) = run(c.arg(format!("http://{DRIVER}{path}")));
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("webdriver {path}: {out}{err}"));
    assert!(
        v["value"]["error"].is_null(),
        "webdriver {method} {path}: {}",
        v["value"]
    );
    v["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        let driver = Command::new(lab_script())
            .args([
                "client",
                "chromedriver",
                "--port=9515",
                "--allowed-ips=127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("chromedriver answers", Duration::from_secs(20), || {
            let (_, out, _) = run(Command::new(lab_script()).args([
                "client",
                "curl",
                "-s",
                "--max-time",
                "2",
                &format!("http://{DRIVER}/status"),
            ]));
            out.contains("\"ready\":true")
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={PROFILE}"),
            ]}
        }}});
        let mut b = Browser {
            driver,
            session: String::new(),
        };
        b.session = wd("POST", "/session", Some(&caps))["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        wd(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({"url": url})));
    }

    /// A script's value (the page's DOM, read as the operator sees it).
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// A real click (WebDriver's, at the element's place on the page).
    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(&json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({"text": text})),
        );
    }

    /// A screenshot, kept as an artifact (target/artifacts/NAME.png); not compared.
    fn screenshot(&self, name: &str) {
        use base64_decode as b64;
        let v = self.call("GET", "/screenshot", None);
        let png = b64(v.as_str().unwrap());
        let dir = root().join("target/artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Poll the page until `script` returns something `pred` accepts; every value seen.
    fn watch(
        &self,
        what: &str,
        within: Duration,
        script: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + within;
        let mut seen = vec![];
        loop {
            let v = self.js(script);
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
            assert!(
                Instant::now() < end,
                "the page showed no {what} within {within:?}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| {
                wd("DELETE", &format!("/session/{}", self.session), None)
            });
        }
        kill_tree(&mut self.driver);
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", PROFILE])
            .status();
    }
}

/// Standard base64 (a screenshot), without a dependency for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().take_while(|&&c| c != b'=').count();
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..n.max(1)]);
    }
    out
}

/// The card of run `run` on the page, as the DOM says.
fn card_js(run: i64) -> String {
    format!(
        "const c = document.querySelector('.run[data-run=\"{run}\"]'); \
         if (!c) return null; \
         return {{phase: c.dataset.phase || null, done: Number(c.dataset.done || 0), \
                  width: c.querySelector('.bar > div').style.width, \
                  outcome: c.dataset.outcome || null, step: c.dataset.step || null, \
                  text: c.innerText}};"
    )
}

fn migrate_body(from: &str, to: &str, map: &str, copy: &str) -> Value {
    json!({"guest": GUEST, "from": from, "to": to, "map": [map], "copy": [copy],
           "unsafe": true, "bandwidth": 8, "no_preseed": true})
}

#[test]
fn a_migration_over_the_api_is_followed_over_sse_and_an_abort_rolls_back() {
    let lab = Lab::up(&[]);
    // The daemon's journal is a PostgreSQL database: a CLI on the same database coordinates
    // with it.
    let pg = ferry_journal::testing::Postgres::start()
        .unwrap()
        .expect("PostgreSQL 15 is installed (lab/setup installs postgresql-15)");
    let journal = pg.database("lab").unwrap();
    let daemon = daemon(&journal, &["--instance", "ferry-serve"]);

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

    // `ferry --server … plan` is the plan standalone `ferry plan` makes.
    let plan_args = seed_args("plan", &["--json"]);
    let (code, remote, err) = ferry_through(&plan_args);
    assert_eq!(code, 0, "{remote}{err}");
    let (code, here, err) = ferry(&plan_args);
    assert_eq!(code, 0, "{here}{err}");
    let (remote, here): (Value, Value) = (
        serde_json::from_str(&remote).unwrap(),
        serde_json::from_str(&here).unwrap(),
    );
    // The same decisions; the daemon's is the migration's dry run, which has also measured
    // the bytes to copy and settled pre-seeding, so those two may differ.
    let decisions = |p: &Value| -> Vec<Value> {
        p["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                json!([
                    d["target"],
                    d["decision"],
                    d["source"],
                    d["dest_source"],
                    d["reason"],
                    d["origin"]
                ])
            })
            .collect()
    };
    assert_eq!(decisions(&remote), decisions(&here), "{remote} vs {here}");
    for k in [
        "migrate_disks",
        "flag_names",
        "virsh",
        "diff",
        "persist_diff",
        "target",
    ] {
        assert_eq!(remote[k], here[k], "{k}: {remote} vs {here}");
    }

    // Started through `ferry --server … migrate --json` and followed over SSE meanwhile: a
    // disconnect after a few samples, a reconnect with the last id.
    let mut cli = spawn_through(&seed_args(
        "migrate",
        &["--json", "--unsafe", "--bandwidth", "8", "--no-preseed"],
    ));
    cli.proc()
        .wait_for_output("{\"event\":\"run\"", Duration::from_secs(120));
    let line = cli.proc().line_with("{\"event\":\"run\"");
    let run = serde_json::from_str::<Value>(&line).unwrap()["run"]
        .as_i64()
        .unwrap();
    // Every event of the daemon (the refused second start's too), to check that none is lost.
    let mut a = Follow::start("", Some(0));
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
    // And from a standalone CLI on the same PostgreSQL journal (another instance name):
    // refused with the daemon's run, held by the daemon's instance.
    let (code, out, err) = ferry(&seed_args(
        "migrate",
        &[
            "--unsafe",
            "--journal",
            &journal,
            "--json",
            "--instance",
            "cli",
        ],
    ));
    assert_eq!(code, 1, "{out}{err}");
    let refused = result(&out);
    assert_eq!(refused["error"]["kind"], "busy", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("by run #{run} (instance ferry-serve, ferry pid ")),
        "{refused}"
    );
    let first = a.stop();
    let last = first.iter().filter_map(|e| e.id).max().unwrap();
    let mut b = Follow::start("", Some(last));
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
    // The CLI printed exactly the run's events, as standalone prints them, and its result.
    let (code, out, err) = cli.wait_within(Duration::from_secs(60));
    assert_eq!(code, 0, "{out}{err}");
    let printed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<Value> = first
        .iter()
        .chain(&second)
        .filter(|e| e.data["run"] == run)
        .map(as_printed)
        .collect();
    assert_eq!(printed.len(), events.len(), "{out}");
    assert_eq!(printed, events);
    assert_eq!(printed.last().unwrap()["summary"]["run"], run);

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
    assert_eq!(started["location"], format!("/v1/migrations/{run2}"));
    let mut c = Follow::start(&format!("run={run2}"), Some(0));
    c.until("a storage copy sample", Duration::from_secs(120), |e| {
        e.kind == "job" && e.data["phase"] == "storage_copy"
    });
    // `ferry --server … abort GUEST`: the daemon finds the guest's run; the CLI waits for
    // its end and says it, as standalone `ferry abort` does.
    let (code, out, err) = ferry_through(&["abort", GUEST]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.starts_with(&format!("asked the Ferry running run #{run2} ({GUEST} ")),
        "{err}"
    );
    assert!(
        out.starts_with(&format!("run #{run2}: rolled_back: ")),
        "{out}"
    );
    ends_rolled_back(c);
    assert!(store("h1").is_empty(), "h1 keeps {:?}", store("h1"));
    assert_eq!(domstate(H1), "");
    lab.verify_guest("h2");
    let (_, row) = api("GET", &format!("/v1/migrations/{run2}"), Some(READ), None);
    assert_eq!(row["run"]["outcome"], "rolled_back", "{row}");

    // `ferry --server … history` is standalone `ferry history` on the daemon's journal.
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["history", "--last", "10"];
        args.extend_from_slice(extra);
        let (code, remote, err) = ferry_through(&args);
        assert_eq!(code, 0, "{remote}{err}");
        args.extend_from_slice(&["--journal", &journal]);
        let (code, here, err) = ferry(&args);
        assert_eq!(code, 0, "{here}{err}");
        assert_eq!(remote, here);
        assert!(remote.contains(&format!("{run2}")), "{remote}");
    }

    // The metrics counted both.
    let (_, m) = api("GET", "/metrics", Some(READ), None);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("ferry_migrations_total{outcome=\"migrated\"} 1")
            && m.contains("ferry_migrations_total{outcome=\"failed\"} 1"),
        "{m}"
    );
    assert!(m.contains("ferry_migrations_running 0"), "{m}");

    // SIGTERM with nothing running: the daemon stops at once; no token in anything it said.
    // The page, in a real browser: a migration started from its form and watched through
    // the copy and memory phases; one started over the API and aborted with its button.
    let browser = Browser::start();
    browser.open(&format!("http://{ADDR}/#token={OPERATE}"));
    browser.watch(
        "the history",
        Duration::from_secs(20),
        "return document.querySelectorAll('#history tr').length",
        |v| v.as_u64() >= Some(2),
    );
    // The token left the address bar.
    assert_eq!(browser.js("return location.hash"), "");
    browser.type_into("#m-guest", GUEST);
    browser.type_into("#m-from", H2);
    browser.type_into("#m-to", H1);
    browser.type_into(
        "#m-more",
        &json!({"map": ["/mnt/nfs_second_mount=/mnt/nfs"], "copy": ["vdb=/srv/ferry-store/vdb.raw"],
                "unsafe": true, "bandwidth": 8, "no_preseed": true}).to_string(),
    );
    browser.click("#start");
    let started = browser.watch(
        "the started run",
        Duration::from_secs(60),
        "const p = document.querySelector('#preview-out p'); return p ? p.innerText : null",
        |v| {
            v.as_str()
                .is_some_and(|t| t.starts_with("started: run #") || t.starts_with("["))
        },
    );
    let text = started.last().unwrap().as_str().unwrap().to_string();
    let run3: i64 = text
        .strip_prefix("started: run #")
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    let shot = std::cell::Cell::new(false);
    let seen = browser.watch(
        "the migration's end",
        Duration::from_secs(300),
        &card_js(run3),
        |v| {
            if !shot.get() && v["phase"] == "storage_copy" && v["done"].as_u64() > Some(0) {
                browser.screenshot("serve-copy");
                shot.set(true);
            }
            !v["outcome"].is_null()
        },
    );
    browser.screenshot("serve-migrated");
    let last = seen.last().unwrap();
    assert_eq!(last["outcome"], "migrated", "{last}");
    assert_eq!(last["width"], "100%");
    // The bar advanced through the copy (more bytes each time it changed), then memory.
    let copy: Vec<u64> = seen
        .iter()
        .filter(|v| v["phase"] == "storage_copy")
        .map(|v| v["done"].as_u64().unwrap())
        .collect();
    let mut distinct = copy.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 3,
        "the copy's bar moved {} times: {copy:?}",
        distinct.len()
    );
    assert!(copy.windows(2).all(|w| w[1] >= w[0]), "{copy:?}");
    let first_memory = seen.iter().position(|v| v["phase"] == "memory");
    let last_copy = seen.iter().rposition(|v| v["phase"] == "storage_copy");
    assert!(
        matches!((last_copy, first_memory), (Some(c), Some(m)) if c < m),
        "copy then memory: {seen:?}"
    );
    assert!(shot.get(), "a screenshot mid-copy");
    lab.verify_guest("h1");

    // Started over the API, aborted with the page's button: the guest stays on h1.
    let (code, started) = api("POST", "/v1/migrations", Some(OPERATE), Some(&body));
    assert_eq!(code, 202, "{started}");
    let run4 = started["run"].as_i64().unwrap();
    browser.watch(
        "the copy of the API's run",
        Duration::from_secs(120),
        &card_js(run4),
        |v| v["phase"] == "storage_copy",
    );
    browser.click(&format!(".run[data-run=\"{run4}\"] button.danger"));
    let seen = browser.watch(
        "the aborted run's end",
        Duration::from_secs(120),
        &card_js(run4),
        |v| !v["outcome"].is_null(),
    );
    browser.screenshot("serve-aborted");
    let last = seen.last().unwrap();
    assert_ne!(last["outcome"], "migrated", "{last}");
    let (_, row) = api("GET", &format!("/v1/migrations/{run4}"), Some(READ), None);
    assert_eq!(row["run"]["outcome"], "rolled_back", "{row}");
    assert!(
        row["live"]["result"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled"),
        "{row}"
    );
    lab.verify_guest("h1");
    assert_eq!(domstate(H2), "");
    drop(browser);

    // SIGTERM with a migration running: no new work, the migration goes on; a second SIGTERM
    // aborts it (it rolls back, the guest stays on h1), then the daemon exits 0.
    let (code, started) = api("POST", "/v1/migrations", Some(OPERATE), Some(&body));
    assert_eq!(code, 202, "{started}");
    let run5 = started["run"].as_i64().unwrap();
    let mut e = Follow::start(&format!("run={run5}"), Some(0));
    e.until("a storage copy sample", Duration::from_secs(120), |e| {
        e.kind == "job" && e.data["phase"] == "storage_copy"
    });
    daemon.term();
    wait_until("no new work", Duration::from_secs(20), || {
        api("POST", "/v1/migrations", Some(OPERATE), Some(&body))
            .1
            .get("code")
            .is_some_and(|c| c == "shutting_down")
    });
    e.until(
        "another sample after the first SIGTERM",
        Duration::from_secs(30),
        |e| e.kind == "job",
    );
    daemon.term();
    ends_rolled_back(e);
    let (code, out, err) = daemon.wait();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("shutting down: no new work; 1 migration(s)"),
        "{err}"
    );
    assert!(err.contains("aborting 1 running migration(s)"), "{err}");
    lab.verify_guest("h1");
    assert_eq!(domstate(H2), "");
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

/// Follow `f` to its run's result: an error, with the guest on the source (rolled back).
fn ends_rolled_back(mut f: Follow) {
    let result = f.until("the result", Duration::from_secs(120), |e| {
        e.kind == "result"
    });
    f.stop();
    assert_eq!(result.data["outcome"], "error", "{}", result.data);
    assert_eq!(
        result.data["error"]["guest_location"], "source",
        "{}",
        result.data
    );
}

/// The daemon with the lab's tokens (written into the lab's directory) and `extra` flags;
/// returns once it answers.
fn daemon(journal: &str, extra: &[&str]) -> Daemon {
    // Another daemon left on the address would answer for this one.
    assert_eq!(
        api("GET", "/v1/runs", None, None).0,
        0,
        "something already listens on {ADDR}"
    );
    std::fs::write(
        TOKENS,
        format!("# the lab's\nread {READ}\noperate {OPERATE}\n"),
    )
    .unwrap();
    let mut args = vec![
        "serve",
        "--listen",
        ADDR,
        "--tokens",
        TOKENS,
        "--journal",
        journal,
    ];
    args.extend_from_slice(extra);
    let d = Daemon(Some(Running::spawn(&args)));
    wait_until("the daemon answers", Duration::from_secs(20), || {
        api("GET", "/v1/runs", Some(READ), None).0 == 200
    });
    d
}

/// The lab's three guests off h1 over the API: begun (h1 is then draining: a second
/// evacuation of it is refused), followed over SSE to the verdict, each guest's span recorded.
#[test]
fn an_evacuation_over_the_api_empties_h1_and_is_followed_to_its_verdict() {
    let lab = Lab::up(&["--hosts", "3", "--guests", "3", "--rate", "200"]);
    let mut inv = String::new();
    for (h, uri) in [("h1", H1), ("h2", H2), ("h3", H3)] {
        inv.push_str(&format!("[[host]]\nname = \"{h}\"\nuri = \"{uri}\"\n"));
    }
    let inv_path = "/var/lib/ferry-lab/serve-inventory.toml";
    std::fs::write(inv_path, inv).unwrap();
    let daemon = daemon(JOURNAL, &["--inventory", inv_path]);
    // The page is open before the evacuation starts: it draws the timeline from the events.
    let browser = Browser::start();
    browser.open(&format!("http://{ADDR}/#token={OPERATE}"));
    browser.watch("the page", Duration::from_secs(20), "return document.getElementById('app').hidden === false && document.getElementById('stream').innerText === 'live'", |v| v == &json!(true));
    let body = json!({"host": "h1", "unsafe": true, "link-bandwidth": 23});
    // The plan first, through `ferry --server … evacuate --dry-run --json`: where each guest
    // goes, nothing moved.
    let (code, out, err) = ferry_through(&["evacuate", "h1", "--unsafe", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["event"], "plan");
    assert_eq!(
        lines[0]["plan"]["moves"].as_array().map(Vec::len),
        Some(3),
        "{out}"
    );
    assert_eq!(lines[1], json!({"event": "result", "outcome": "dry_run"}));
    // Begun through `ferry --server … evacuate`: the live view and the final table come from
    // the daemon's events.
    let cli = spawn_through(&["evacuate", "h1", "--unsafe", "--link-bandwidth", "23"]);
    let mut id = 0;
    wait_until("the evacuation begun", Duration::from_secs(120), || {
        let (_, v) = api("GET", "/v1/evacuations?limit=1", Some(READ), None);
        match v["evacuations"][0]["evacuation"]["id"].as_i64() {
            Some(i) if v["evacuations"][0]["evacuation"]["outcome"].is_null() => {
                id = i;
                true
            }
            _ => false,
        }
    });
    let (code, again) = api("POST", "/v1/evacuations", Some(OPERATE), Some(&body));
    assert_eq!(
        (code, again["code"].as_str()),
        (409, Some("busy")),
        "{again}"
    );
    // While it runs, the metrics have its figures.
    let total =
        format!("ferry_evacuation_guests{{evacuation=\"{id}\",host=\"h1\",state=\"total\"}} 3");
    wait_until("the evacuation's metrics", Duration::from_secs(30), || {
        api("GET", "/metrics", Some(READ), None)
            .1
            .as_str()
            .is_some_and(|m| m.contains(&total))
    });
    let mut f = Follow::start(&format!("evacuation={id}"), Some(0));
    let verdict = f.until("the verdict", Duration::from_secs(600), |e| {
        e.kind == "evacuation_result"
    });
    let events = f.stop();
    assert_eq!(verdict.data["outcome"], "emptied", "{}", verdict.data);
    assert_eq!(verdict.data["still_running"], json!([]));
    let guests = verdict.data["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 3);
    assert!(
        guests.iter().all(|g| g["outcome"] == "migrated"),
        "{guests:?}"
    );
    // Each guest's migration was seen: its start, its samples (with its run), its end.
    for g in guests {
        let name = &g["guest"];
        assert!(events
            .iter()
            .any(|e| e.kind == "started" && &e.data["guest"] == name));
        assert!(events
            .iter()
            .any(|e| e.kind == "job" && &e.data["guest"] == name && e.data["run"].is_i64()));
        assert!(events
            .iter()
            .any(|e| e.kind == "ended" && &e.data["guest"] == name));
    }
    assert_eq!(events[0].kind, "evacuation", "the plan comes first");
    let (_, ev) = api("GET", &format!("/v1/evacuations/{id}"), Some(READ), None);
    assert_eq!(ev["evacuation"]["outcome"], "emptied", "{ev}");
    for (name, g) in ev["live"]["guests"].as_object().unwrap() {
        let (s, e) = (g["started_ms"].as_u64(), g["ended_ms"].as_u64());
        assert!(matches!((s, e), (Some(s), Some(e)) if s < e), "{name}: {g}");
        assert!(
            ["h2", "h3"].contains(&g["to"].as_str().unwrap()),
            "{name}: {g}"
        );
    }
    let runs: Vec<&Value> = ev["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["run"])
        .collect();
    for g in guests {
        for r in g["runs"].as_array().unwrap() {
            assert!(
                runs.contains(&r),
                "run {r} of {} in the journal's: {ev}",
                g["guest"]
            );
        }
    }
    // Each guest went at the first attempt (a retry would say why in its notes).
    for g in guests {
        let notes: Vec<&Value> = events
            .iter()
            .filter(|e| e.data["guest"] == g["guest"] && e.kind == "note")
            .map(|e| &e.data["message"])
            .collect();
        assert_eq!(g["attempts"], 1, "{g}: {notes:?}");
    }
    // The timeline: one lane per target, one bar per guest in its target's lane, each ended
    // migrated; the plan's bars beside them; the evacuation's verdict.
    let js = format!(
        "const ev = document.querySelector('.evac[data-evacuation=\"{id}\"]'); if (!ev) return null; \
         return {{outcome: ev.dataset.outcome || null, \
                  bars: [...ev.querySelectorAll('.lane')].flatMap(l => [...l.querySelectorAll('.actual')].map(b => \
                      [l.dataset.host, b.dataset.guest, b.dataset.outcome || null, b.style.width])), \
                  planned: ev.querySelectorAll('.planned').length, \
                  plot: ev.querySelector('polyline').getAttribute('points').split(' ').length}};"
    );
    let seen = browser.watch(
        "the timeline's verdict",
        Duration::from_secs(30),
        &js,
        |v| v["outcome"] == "emptied",
    );
    browser.js("document.getElementById('timeline').scrollIntoView(); return null");
    browser.screenshot("serve-evacuation");
    let t = seen.last().unwrap();
    assert_eq!(t["planned"], 3, "{t}");
    assert!(
        t["plot"].as_u64() > Some(3),
        "the bandwidth plot has points: {t}"
    );
    let bars = t["bars"].as_array().unwrap();
    let attempts: u64 = guests.iter().map(|g| g["attempts"].as_u64().unwrap()).sum();
    assert_eq!(bars.len() as u64, attempts, "a bar per attempt: {t}");
    for g in guests {
        let (name, target) = (g["guest"].as_str().unwrap(), g["target"].as_str().unwrap());
        let bar = bars
            .iter()
            .find(|b| b[1] == name && b[2] == "migrated")
            .unwrap_or_else(|| panic!("no bar for {name}: {t}"));
        assert!(
            target.ends_with(&format!(
                "{}/system",
                bar[0].as_str().unwrap().replace('h', "10.77.0.")
            )) || bar[0] == target,
            "{name}'s bar is in lane {} but it went to {target}",
            bar[0]
        );
        assert_eq!(bar[2], "migrated", "{t}");
    }
    drop(browser);
    let (_, m) = api("GET", "/metrics", Some(READ), None);
    assert!(
        !m.as_str().unwrap_or("").contains("ferry_evacuation_guests"),
        "an ended evacuation's series go: {m}"
    );
    let (_, listed, _) = virsh(H1, &["list", "--name"]);
    assert_eq!(listed.trim(), "", "h1 runs nothing");
    // The CLI's final table: each guest, its target, migrated; then the verdict on h1.
    let (code, out, err) = cli.wait_within(Duration::from_secs(60));
    assert_eq!(code, 0, "{out}{err}");
    for g in guests {
        let row = format!(
            "| {} | {} | migrated | {} |",
            g["guest"].as_str().unwrap(),
            g["target"].as_str().unwrap(),
            g["attempts"]
        );
        assert!(out.contains(&row), "{row} in:\n{out}");
    }
    let verdict_line = out.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert!(
        verdict_line.starts_with("h1: ") && verdict_line.contains("(predicted "),
        "{out}"
    );
    assert!(err.contains("==> "), "the live view's lines: {err}");
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{out}{err}");
    drop(lab);
    assert_lab_gone();
}
