//! The daemon's decisions against the recording fake, through its router (no socket): routes
//! and document, auth, problems, a migration started, followed and aborted over the API.
//! (That it migrates real guests is proven in the lab.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ferry_hypervisor::fake::{Fake, FakeDomain, FakeHost, MigrateOutcome};
use ferry_hypervisor::{DiskSize, DomainState, PathInfo, PathKind};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

const SRC: &str = "qemu+tcp://h1/system";
const DST: &str = "qemu+tcp://h2/system";
const READ: &str = "read-token-0123456789";
const OPERATE: &str = "operate-token-0123456789";

const GUEST_XML: &str = "<domain type='qemu'>
  <name>g</name>
  <uuid>6f1e7a52-3c1d-4c8e-9a57-2f1e00f3c0de</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/mnt/nfs/test_img.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
";

fn fake() -> Arc<Fake> {
    let fake = Arc::new(Fake::new());
    let img = PathInfo {
        kind: PathKind::File,
        capacity: 32 << 20,
        allocation: 32 << 20,
        format: Some("qcow2".into()),
    };
    let size = DiskSize {
        capacity: 32 << 20,
        allocation: 1 << 20,
        physical: 1 << 20,
    };
    fake.add_host(
        SRC,
        FakeHost {
            hostname: "h1".into(),
            uuid: "u1".into(),
            domains: HashMap::from([(
                "g".to_string(),
                FakeDomain {
                    state: DomainState::Running,
                    live_xml: GUEST_XML.into(),
                    inactive_xml: GUEST_XML.into(),
                    disks: HashMap::from([("vda".to_string(), size)]),
                },
            )]),
            paths: HashMap::from([("/mnt/nfs/test_img.img".to_string(), img.clone())]),
            dirs: HashMap::from([("/mnt/nfs".to_string(), 1 << 30)]),
            ..Default::default()
        },
    );
    fake.add_host(
        DST,
        FakeHost {
            hostname: "h2".into(),
            uuid: "u2".into(),
            paths: HashMap::from([("/mnt/nfs2/test_img.img".to_string(), img)]),
            dirs: HashMap::from([("/mnt/nfs2".to_string(), 1 << 30)]),
            ..Default::default()
        },
    );
    fake.same_storage(&[(SRC, "/mnt/nfs"), (DST, "/mnt/nfs2")]);
    fake
}

/// A daemon over the fake, with a journal of its own (removed when dropped).
struct Daemon {
    st: state::State,
    router: axum::Router,
    journal: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.journal);
    }
}

fn daemon(fake: &Arc<Fake>) -> Daemon {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let journal = std::env::temp_dir().join(format!(
        "ferry-serve-test-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    Journal::open(&journal).unwrap();
    let tokens = auth::Tokens::parse(&format!("read {READ}\noperate {OPERATE}\n")).unwrap();
    let st = shared(
        fake.clone(),
        None,
        journal.clone(),
        tokens,
        Duration::from_secs(5),
    );
    Daemon {
        router: routes::router(st.clone()),
        st,
        journal,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(
    d: &Daemon,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let r = d.router.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        headers,
        body,
    }
}

fn migrate_body() -> Value {
    json!({"guest": "g", "from": SRC, "to": DST, "map": ["/mnt/nfs=/mnt/nfs2"], "unsafe": true})
}

/// Start the fake guest's migration over the API: its run (and the answer).
async fn start(d: &Daemon) -> (i64, Answer) {
    let a = call(
        d,
        Method::POST,
        "/v1/migrations",
        Some(OPERATE),
        Some(migrate_body()),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);
    (a.body["run"].as_i64().unwrap(), a)
}

/// Read an event stream's text until `done` holds of it, or it ends (each frame within 5 s).
async fn read_until(body: &mut Body, text: &mut String, done: impl Fn(&str) -> bool) {
    while !done(text) {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s");
        match frame {
            Some(f) => {
                if let Ok(data) = f.unwrap().into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            None => return,
        }
    }
}

/// Wait (bounded) until the run's result is in.
async fn result_of(d: &Daemon, run: i64) -> Value {
    for _ in 0..200 {
        let a = call(
            d,
            Method::GET,
            &format!("/v1/migrations/{run}"),
            Some(READ),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        if !a.body["live"]["result"].is_null() {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run} did not end");
}

fn path_with_id(p: &str) -> String {
    p.replace("{id}", "1")
}

#[tokio::test]
async fn the_document_lists_every_route_the_router_serves_and_no_other() {
    let f = fake();
    let d = daemon(&f);
    let doc = call(&d, Method::GET, "/v1/openapi.json", Some(READ), None)
        .await
        .body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            listed += 1;
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if path == "/v1/events" {
                // A stream that does not end: its head only.
                let req = Request::builder()
                    .uri(path)
                    .header("authorization", format!("Bearer {READ}"))
                    .body(Body::empty())
                    .unwrap();
                let r = d.router.clone().oneshot(req).await.unwrap();
                assert_eq!(r.status(), 200);
                continue;
            }
            let body = op.get("requestBody").map(|_| json!({}));
            let a = call(&d, m.clone(), &path_with_id(path), Some(OPERATE), body).await;
            assert!(
                a.status != StatusCode::NOT_FOUND
                    || a.body["code"] != "not_found"
                    || path.contains("{id}"),
                "{method} {path}: {}",
                a.body
            );
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    assert_eq!(listed, routes::routes().len());
    // A route the table does not have is not served.
    let a = call(&d, Method::GET, "/v1/nothing", Some(READ), None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["code"], "not_found");
    // Evacuations: none in the journal; one not driven here cannot be stopped from here.
    let a = call(&d, Method::GET, "/v1/evacuations/1", Some(READ), None).await;
    assert_eq!(
        (a.status.as_u16(), a.body["code"].as_str()),
        (404, Some("not_found"))
    );
    let a = call(
        &d,
        Method::DELETE,
        "/v1/evacuations/1?force",
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.body["code"].as_str()),
        (409, Some("not_here"))
    );
    let a = call(
        &d,
        Method::POST,
        "/v1/evacuations",
        Some(OPERATE),
        Some(json!({"to": [DST]})),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        a.body["detail"].as_str().unwrap().contains("host"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn without_a_token_nothing_but_the_page_and_a_read_token_cannot_act() {
    let f = fake();
    let d = daemon(&f);
    for r in routes::routes() {
        let path = path_with_id(r.path);
        let body = r.body.map(|_| migrate_body());
        let anon = call(&d, r.method.clone(), &path, None, body.clone()).await;
        match r.scope {
            None => assert_eq!(anon.status, 200, "{} {}", r.method, r.path),
            Some(_) => {
                assert_eq!(anon.status, 401, "{} {}", r.method, r.path);
                assert_eq!(anon.body["code"], "unauthenticated");
                assert_eq!(anon.headers["www-authenticate"], "Bearer realm=\"ferry\"");
                let wrong = call(
                    &d,
                    r.method.clone(),
                    &path,
                    Some("not-a-token-0123456789"),
                    body.clone(),
                )
                .await;
                assert_eq!(wrong.status, 401, "{} {}", r.method, r.path);
            }
        }
        if r.scope == Some(auth::Scope::Operate) {
            let read = call(&d, r.method.clone(), &path, Some(READ), body).await;
            assert_eq!(read.status, 403, "{} {}", r.method, r.path);
            assert_eq!(read.body["code"], "forbidden");
        }
    }
    // Nothing was started by any of it.
    assert!(d.st.runs().is_empty());
}

#[tokio::test]
async fn bad_input_is_a_problem_document_with_the_key_named() {
    let f = fake();
    let d = daemon(&f);
    let mut body = migrate_body();
    body["destination"] = json!("h3");
    let a = call(
        &d,
        Method::POST,
        "/v1/migrations",
        Some(OPERATE),
        Some(body),
    )
    .await;
    assert_eq!(a.status, 422);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(a.body["code"], "bad_request");
    assert_eq!(a.body["key"], "destination");
    assert_eq!(a.body["status"], 422);
    let a = call(&d, Method::POST, "/v1/plans", Some(READ), Some(json!("g"))).await;
    assert_eq!(a.body["code"], "bad_request");
    let big = json!({"guest": "g".repeat(body::MAX_BODY)});
    let a = call(&d, Method::POST, "/v1/plans", Some(READ), Some(big)).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.body["code"], "bad_body");
    let a = call(&d, Method::GET, "/v1/runs?limit=0", Some(READ), None).await;
    assert_eq!(a.status, 422);
    let a = call(&d, Method::GET, "/v1/runs?page=2", Some(READ), None).await;
    assert_eq!(a.status, 422, "an unknown parameter is refused");
    assert!(d.st.runs().is_empty());
}

#[tokio::test]
async fn a_refused_migration_is_422_with_every_reason_and_nothing_moves() {
    let f = fake();
    let d = daemon(&f);
    // Without the map, the shared disk's path does not exist on h2.
    let body = json!({"guest": "g", "from": SRC, "to": DST, "unsafe": true, "no_preseed": true});
    let a = call(
        &d,
        Method::POST,
        "/v1/migrations",
        Some(OPERATE),
        Some(body),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        ["refused", "plan", "no_target"].contains(&a.body["code"].as_str().unwrap()),
        "{}",
        a.body
    );
    assert_eq!(a.body["exit"], 1);
    let run = a.body["run"].as_i64().expect("the refused run's id");
    let row = call(
        &d,
        Method::GET,
        &format!("/v1/migrations/{run}"),
        Some(READ),
        None,
    )
    .await;
    assert_eq!(row.body["run"]["outcome"], "refused");
    assert_eq!(f.host_snapshot(SRC).domains.len(), 1, "the guest stays");
    assert!(f.host_snapshot(DST).domains.is_empty());
}

#[tokio::test]
async fn a_migration_started_over_the_api_is_followed_to_its_end() {
    let f = fake();
    let d = daemon(&f);
    let (_, _, mut rx) = d.st.hub.subscribe(None);
    let (run, a) = start(&d).await;
    assert_eq!(a.headers["location"], format!("/v1/migrations/{run}"));
    let v = result_of(&d, run).await;
    assert_eq!(v["live"]["result"]["outcome"], "migrated");
    assert_eq!(v["run"]["outcome"], "migrated");
    assert!(f.host_snapshot(DST).domains.contains_key("g"));
    // The events: numbered without a gap, the run's first is `run`, its last `result`.
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"result"), "{kinds:?}");
    assert!(kinds.contains(&"step"));
    assert!(events.iter().all(|e| e.run == Some(run)));
    // The metrics counted it, and keep no series of the ended run.
    let m = call(&d, Method::GET, "/metrics", Some(READ), None).await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("ferry_migrations_total{outcome=\"migrated\"} 1"),
        "{text}"
    );
    assert!(!text.contains(&format!("run=\"{run}\"")), "{text}");
    // The history lists it.
    let h = call(&d, Method::GET, "/v1/runs?limit=1", Some(READ), None).await;
    assert_eq!(h.body["runs"][0]["id"], run);
    assert_eq!(h.body["next"], format!("/v1/runs?limit=1&before={run}"));
}

#[tokio::test]
async fn an_abort_over_the_api_rolls_back_and_the_guest_stays() {
    let f = fake();
    f.set_outcome(MigrateOutcome::RunUntilAborted);
    let d = daemon(&f);
    let (run, _) = start(&d).await;
    let ab = call(
        &d,
        Method::DELETE,
        &format!("/v1/migrations/{run}"),
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(ab.status, 202, "{}", ab.body);
    assert_eq!(ab.body["state"], "aborting");
    let v = result_of(&d, run).await;
    assert_eq!(v["live"]["result"]["outcome"], "error");
    assert_eq!(
        v["live"]["result"]["error"]["guest_location"], "source",
        "{v}"
    );
    assert_eq!(v["run"]["outcome"], "rolled_back", "{v}");
    assert!(f.host_snapshot(SRC).domains.contains_key("g"));
    // Aborting an ended run says so.
    let again = call(
        &d,
        Method::DELETE,
        &format!("/v1/migrations/{run}"),
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["code"], "ended");
    // Its source copies cannot be released: the guest did not move.
    let rel = call(
        &d,
        Method::POST,
        &format!("/v1/runs/{run}/release"),
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(
        (rel.status.as_u16(), rel.body["code"].as_str()),
        (409, Some("not_migrated")),
        "{}",
        rel.body
    );
    // Nothing is left to recover: the run ended and cleaned up.
    let rec = call(
        &d,
        Method::POST,
        "/v1/recover",
        Some(OPERATE),
        Some(json!({"dry_run": true})),
    )
    .await;
    assert_eq!(rec.status, 200, "{}", rec.body);
    assert_eq!(rec.body["recovered"], json!([]));
    let rec = call(
        &d,
        Method::POST,
        "/v1/recover",
        Some(OPERATE),
        Some(json!({"id": 999})),
    )
    .await;
    assert_eq!(rec.status, 404, "{}", rec.body);
    let none = call(
        &d,
        Method::DELETE,
        "/v1/migrations/999",
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(none.status, 404);
}

#[tokio::test]
async fn a_client_that_reconnects_with_its_last_id_misses_nothing() {
    let f = fake();
    let d = daemon(&f);
    let ids: Vec<u64> = (0..4)
        .map(|i| {
            d.st.hub
                .publish(Some(7), "note", json!({"event": "note", "message": i}))
        })
        .collect();
    let req = Request::builder()
        .uri("/v1/events?run=7")
        .header("authorization", format!("Bearer {READ}"))
        .header("last-event-id", ids[1].to_string())
        .body(Body::empty())
        .unwrap();
    let r = d.router.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let mut text = String::new();
    let third = format!("id: {}", ids[3]);
    read_until(&mut body, &mut text, |t| t.contains(&third)).await;
    // A live event, after the replayed ones; another run's is not sent.
    d.st.hub.publish(Some(8), "note", json!({"event": "note"}));
    let live = d.st.hub.publish(Some(7), "note", json!({"event": "note"}));
    let live_id = format!("id: {live}");
    read_until(&mut body, &mut text, |t| t.contains(&live_id)).await;
    // The run's result ends its stream.
    let end =
        d.st.hub
            .publish(Some(7), "result", json!({"event": "result"}));
    read_until(&mut body, &mut text, |_| false).await;
    let got: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(got, [ids[2], ids[3], live, end]);
    assert!(text.contains("event: note"));
}

/// HTTPS on loopback with a certificate made for the test (openssl): the API answers over
/// TLS, a client that connects and never speaks holds nobody up, plain HTTP gets nothing.
#[tokio::test]
async fn the_daemon_serves_https_with_the_given_certificate() {
    let dir = std::env::temp_dir().join(format!("ferry-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A server's own certificate, not an authority's (rustls refuses a CA's as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let acceptor = tls::acceptor(&cert, &key).unwrap();
    let f = fake();
    let d = daemon(&f);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = tls::listen(tcp, acceptor).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let router = d.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    // A client that opens a connection and says nothing.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = curl(vec![
        "--cacert".into(),
        cert.display().to_string(),
        "-H".into(),
        format!("Authorization: Bearer {READ}"),
        format!("https://127.0.0.1:{}/v1/runs", addr.port()),
    ])
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("\"runs\":[]"), "{text}");
    let plain = curl(vec![format!("http://127.0.0.1:{}/v1/runs", addr.port())])
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).ends_with("200"));
    // `ferry --server https://… --ca-cert FILE`: the CLI's client trusts the given authority,
    // and without it refuses the certificate.
    let url = format!("https://127.0.0.1:{}", addr.port());
    let (c, u) = (cert.clone(), url.clone());
    let v = tokio::task::spawn_blocking(move || {
        crate::remote::Server::new(&u, Some(READ.into()), Some(&c))
            .unwrap()
            .get("/v1/runs")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(v["runs"], json!([]));
    let refused = tokio::task::spawn_blocking(move || {
        crate::remote::Server::new(&url, Some(READ.into()), None)
            .unwrap()
            .get("/v1/runs")
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(refused, crate::remote::RemoteError::Transport { .. }),
        "{refused:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // The key and certificate must go together.
    let other = dir.join("missing.pem");
    assert!(tls::acceptor(&other, &key).is_err());
}

#[test]
fn at_start_the_daemon_names_the_unfinished_runs_no_ferry_drives() {
    let d = daemon(&fake());
    let j = Journal::open(&d.journal).unwrap();
    let left = j.begin_run("left", SRC, DST, "{}").unwrap();
    // An ended run: not named.
    let ended = j.begin_run("ended", SRC, DST, "{}").unwrap();
    j.finish(ended, ferry_journal::RunOutcome::Migrated, "done")
        .unwrap();
    // None left: nothing said.
    let quiet = daemon(&fake());
    unfinished(&quiet.st);
    assert!(quiet.st.hub.subscribe(Some(0)).1.is_empty());
    unfinished(&d.st);
    let (_, events, _) = d.st.hub.subscribe(Some(0));
    let said: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "daemon")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    let m = said[0]["message"].as_str().unwrap();
    assert!(m.contains(&format!("#{} (left)", left.0)), "{m}");
    assert!(!m.contains("ended"), "{m}");
}
