//! The API's handlers: each reads its input with the CLI's parser, asks the library, and
//! answers JSON (or a problem document). Nothing is decided here that the CLI decides
//! elsewhere.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as Axum};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{Html, IntoResponse, Response};
use ferry_core::XmlFiles;
use ferry_journal::RunId;
use ferry_migrate::{Event, Outcome};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body;
use super::problem::Problem;
use super::state::{self, Started, State};
use crate::args::MigrateArgs;

type Answer = Result<Response, Problem>;

/// Run blocking work (libvirt, the journal) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(format!("a worker failed: {e}")))?
}

/// The body as JSON, within the bound.
fn json_body(b: Result<Bytes, BytesRejection>) -> Result<Value, Problem> {
    let bytes = b.map_err(|e| {
        Problem::new(
            e.status(),
            "bad_body",
            "The body cannot be read",
            format!("{e} (at most {} KiB)", body::MAX_BODY >> 10),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // No body: no options.
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))
}

/// `202 Accepted` with the new resource's `Location` (also in the body, as `location`).
fn accepted(location: String, mut body: Value) -> Response {
    if let Some(o) = body.as_object_mut() {
        o.insert("location".into(), location.clone().into());
    }
    let mut r = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn ok(v: Value) -> Answer {
    Ok(axum::Json(v).into_response())
}

/// `POST /v1/plans`: the online dry run.
pub async fn post_plan(Axum(st): Axum<State>, b: Result<Bytes, BytesRejection>) -> Answer {
    let mut a: MigrateArgs = body::parse(&body::MIGRATE, &json_body(b)?)?;
    a.dry_run = true;
    let v = blocking(move || {
        let ask = crate::migrate_cmd::ask(&a, st.inventory.clone(), std::time::Instant::now())
            .map_err(|e| Problem::of_input(&e))?;
        let journal = ferry_journal::Journal::in_memory().map_err(|e| Problem::journal(&e))?;
        let mut events: Vec<Event> = vec![];
        let never = std::sync::atomic::AtomicBool::new(false);
        let source_uri = ask.select.source.uri.clone();
        match ferry_migrate::migrate(&st.hv, &journal, &ask, &mut events, &never) {
            Ok(Outcome::DryRun { plan, checks }) => {
                let files = XmlFiles::for_plan(&plan, None, None);
                let mut v = plan.to_json(&files, Some(&source_uri));
                let ranking = events.iter().find_map(|e| match e {
                    Event::Target(r) => Some(r),
                    _ => None,
                });
                if let Some(o) = v.as_object_mut() {
                    o.insert("outcome".into(), "dry_run".into());
                    o.insert("checks".into(), checks.into());
                    o.insert(
                        "hosts".into(),
                        ranking
                            .and_then(|r| serde_json::to_value(&r.hosts).ok())
                            .unwrap_or_default(),
                    );
                    o.insert(
                        "target".into(),
                        ranking.and_then(|r| r.target.clone()).into(),
                    );
                    o.insert("source_uri".into(), source_uri.into());
                    // The documents the migration would give libvirt (`--out-xml`).
                    o.insert("dest_xml".into(), plan.dest_xml.clone().into());
                    o.insert("persist_xml".into(), plan.persist_xml.clone().into());
                }
                Ok(v)
            }
            Ok(Outcome::Migrated(_)) => Err(Problem::internal("a dry run migrated".into())),
            Err(e) => Err(Problem::of_migration(&e)),
        }
    })
    .await?;
    ok(v)
}

/// `POST /v1/migrations`: start a migration; `202` once it passed its checks.
pub async fn post_migration(Axum(st): Axum<State>, b: Result<Bytes, BytesRejection>) -> Answer {
    let a: MigrateArgs = body::parse(&body::MIGRATE, &json_body(b)?)?;
    let guest = a.guest.clone();
    let rx = state::start(&st, a)?;
    let accepted = |run: i64, state: &str| -> Answer {
        Ok(accepted(
            format!("/v1/migrations/{run}"),
            json!({"run": run, "guest": guest, "state": state}),
        ))
    };
    match tokio::time::timeout(st.answer_within, rx).await {
        Ok(Ok(Started::Running { run })) => accepted(run, "running"),
        Ok(Ok(Started::Ended {
            run: Some(run),
            result: Ok(_),
        })) => accepted(run, "ended"),
        Ok(Ok(Started::Ended { result: Err(p), .. })) => Err(p),
        Ok(Ok(Started::Ended { run: None, .. })) | Ok(Err(_)) => {
            Err(Problem::internal("the run ended without a word".into()))
        }
        // Still checking the hosts: the run exists; its events say the rest.
        Err(_) => match st
            .runs()
            .values()
            .rev()
            .find(|l| l.guest == guest && l.result.is_none())
        {
            Some(l) => accepted(l.run, "checking"),
            None => Err(Problem::internal(
                "the run has not taken the guest's lock yet".into(),
            )),
        },
    }
}

/// `GET /v1/migrations/{id}`: the journal's run, and what this daemon sees of it live.
pub async fn get_migration(Axum(st): Axum<State>, Path(id): Path<i64>) -> Answer {
    let st2 = st.clone();
    let row = blocking(move || {
        st2.journal()?
            .run_row(RunId(id))
            .map_err(|e| Problem::journal(&e))
    })
    .await?
    .ok_or_else(|| Problem::not_found(format!("there is no run #{id} in the journal")))?;
    let live = st.runs().get(&id).cloned();
    ok(json!({"run": row, "live": live}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// At most this many runs (1..=500, default 50).
    limit: Option<u32>,
    /// Runs older than this id (the previous page's last).
    before: Option<i64>,
}

/// `GET /v1/runs`: the journal's runs, newest first, a page at a time.
pub async fn get_runs(
    Axum(st): Axum<State>,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit {limit}: from 1 to 500"
        )));
    }
    let before = q.before;
    let rows = blocking(move || {
        st.journal()?
            .runs_before(before.map(RunId), limit)
            .map_err(|e| Problem::journal(&e))
    })
    .await?;
    let next = (rows.len() == limit as usize)
        .then(|| {
            rows.last()
                .map(|r| format!("/v1/runs?limit={limit}&before={}", r.id))
        })
        .flatten();
    ok(json!({"runs": rows, "next": next}))
}

/// `GET /v1/hosts`: `ferry hosts --json`.
pub async fn get_hosts(Axum(st): Axum<State>) -> Answer {
    let v = blocking(move || {
        let inv = st.inventory.clone().ok_or_else(|| {
            Problem::bad_request(
                "the daemon has no inventory: start it with --inventory FILE".into(),
            )
        })?;
        let t = std::time::Instant::now();
        let all = crate::hosts_cmd::gather(&inv, &st.hv, st.connect_timeout);
        Ok(crate::hosts_cmd::to_json(
            &inv,
            &all,
            t.elapsed().as_millis() as u64,
        ))
    })
    .await?;
    ok(v)
}

/// `DELETE /v1/migrations/{id}`: abort, as Ctrl-C (the guest stays on the source). The id is a
/// run's number or the name of the guest it migrates, as `ferry abort` reads it.
pub async fn delete_migration(Axum(st): Axum<State>, Path(which): Path<String>) -> Answer {
    use ferry_migrate::abort::Which;
    let which = Which::parse(&which);
    let mine = {
        let runs = st.runs();
        let live = match &which {
            Which::Run(id) => runs.get(&id.0),
            // The guest's unfinished run, or its last one.
            Which::Guest(g) => runs
                .values()
                .rev()
                .find(|l| &l.guest == g && l.result.is_none())
                .or_else(|| runs.values().rev().find(|l| &l.guest == g)),
        };
        live.map(|l| (l.run, l.cancel.clone(), l.result.is_some()))
    };
    match mine {
        Some((id, _, true)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "ended",
            "The run has already ended",
            format!("run #{id} has already ended"),
        )
        .with("run", id)),
        Some((id, cancel, false)) => {
            if !cancel.swap(true, Ordering::SeqCst) {
                st.hub.publish(
                    Some(id),
                    "note",
                    json!({"event": "note", "message": "abort asked over the API: aborting the migration (the guest stays on the source)"}),
                );
            }
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"run": id, "state": "aborting"})),
            )
                .into_response())
        }
        // Another Ferry (a CLI, another daemon) runs it: ask through the journal.
        None => {
            let row = blocking(move || {
                let j = st.journal()?;
                ferry_migrate::abort::request(&j, &which).map_err(abort_problem)
            })
            .await?;
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"run": row.id, "state": "abort_requested"})),
            )
                .into_response())
        }
    }
}

fn abort_problem(e: ferry_migrate::abort::AbortError) -> Problem {
    use ferry_migrate::abort::AbortError as A;
    let detail = ferry_migrate::error_chain(&e);
    match e {
        A::NoRun(r) => Problem::not_found(detail).with("run", r.0),
        A::NotMigrating(_) => Problem::not_found(detail),
        A::Ended { run, outcome } => Problem::new(
            StatusCode::CONFLICT,
            "ended",
            "The run has already ended",
            detail,
        )
        .with("run", run.0)
        .with("outcome", outcome.to_string()),
        A::Orphaned { run, .. } => Problem::new(
            StatusCode::CONFLICT,
            "orphaned",
            "No Ferry runs it any more: POST /v1/recover finishes it",
            detail,
        )
        .with("run", run.0),
        A::Journal(j) => Problem::journal(&j),
    }
}

/// `POST /v1/evacuations`: start `ferry evacuate` (`202` once planned and begun), or with
/// `dry-run` answer its plan.
pub async fn post_evacuation(Axum(st): Axum<State>, b: Result<Bytes, BytesRejection>) -> Answer {
    let a: crate::args::EvacuateArgs = body::parse(&body::EVACUATE, &json_body(b)?)?;
    if a.dry_run {
        let v = blocking(move || super::evac::dry_run(&st, &a)).await?;
        return ok(v);
    }
    let rx = super::evac::start(&st, a)?;
    match tokio::time::timeout(st.answer_within, rx).await {
        Ok(Ok(Ok(id))) => Ok(accepted(
            format!("/v1/evacuations/{id}"),
            json!({"evacuation": id, "state": "running"}),
        )),
        Ok(Ok(Err(p))) => Err(p),
        Ok(Err(_)) => Err(Problem::internal(
            "the evacuation ended without a word".into(),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "stopped",
            "The hosts were not read in time",
            "the evacuation was not planned within the daemon's wait; it may still start: GET \
             /v1/runs and the events say"
                .into(),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latest {
    /// At most this many (1..=500, default 20).
    limit: Option<u32>,
}

/// `GET /v1/evacuations`: the journal's evacuations, newest first, each with its runs (what
/// `ferry history` lists under the runs).
pub async fn get_evacuations(
    Axum(st): Axum<State>,
    q: Result<Query<Latest>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit {limit}: from 1 to 500"
        )));
    }
    let all = blocking(move || {
        let j = st.journal()?;
        let rows = j.evacuations().map_err(|e| Problem::journal(&e))?;
        rows.into_iter()
            .take(limit as usize)
            .map(|row| {
                let runs = j
                    .evacuation_runs(row.id)
                    .map_err(|e| Problem::journal(&e))?;
                let runs: Vec<Value> = runs
                    .into_iter()
                    .map(|(g, r)| json!({"guest": g, "run": r}))
                    .collect();
                Ok(json!({"evacuation": row, "runs": runs}))
            })
            .collect::<Result<Vec<Value>, Problem>>()
    })
    .await?;
    ok(json!({ "evacuations": all }))
}

/// `GET /v1/evacuations/{id}`: the journal's evacuation and its runs, and live (this daemon's):
/// the plan, each guest's target, times and result, the verdict.
pub async fn get_evacuation(Axum(st): Axum<State>, Path(id): Path<i64>) -> Answer {
    let st2 = st.clone();
    let (row, runs) = blocking(move || {
        let j = st2.journal()?;
        let row = j
            .evacuations()
            .map_err(|e| Problem::journal(&e))?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| {
                Problem::not_found(format!("there is no evacuation #{id} in the journal"))
            })?;
        let runs = j.evacuation_runs(id).map_err(|e| Problem::journal(&e))?;
        Ok((row, runs))
    })
    .await?;
    let live = st.evacs().get(&id).cloned();
    let runs: Vec<Value> = runs
        .into_iter()
        .map(|(g, r)| json!({"guest": g, "run": r}))
        .collect();
    ok(json!({"evacuation": row, "runs": runs, "live": live}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Force {
    /// Abort the running migrations too (Ctrl-C twice), not only start no new one.
    force: Option<String>,
}

/// `DELETE /v1/evacuations/{id}`: Ctrl-C once (no new migration; those running finish);
/// `?force`: twice (those running abort and roll back).
pub async fn delete_evacuation(
    Axum(st): Axum<State>,
    Path(id): Path<i64>,
    q: Result<Query<Force>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let force = q
        .force
        .is_some_and(|f| !matches!(f.as_str(), "false" | "0"));
    let mine = st
        .evacs()
        .get(&id)
        .map(|e| (e.stop.clone(), e.result.is_some()));
    match mine {
        Some((_, true)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "ended",
            "The evacuation has already ended",
            format!("evacuation #{id} has already ended"),
        )),
        Some((stop, false)) => {
            let level = if force {
                ferry_migrate::evacuate::ABORT_ALL
            } else {
                ferry_migrate::evacuate::NO_NEW
            };
            stop.fetch_max(level, Ordering::SeqCst);
            let state = if force { "aborting" } else { "stopping" };
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"evacuation": id, "state": state})),
            )
                .into_response())
        }
        None => Err(Problem::new(
            StatusCode::CONFLICT,
            "not_here",
            "Another Ferry runs this evacuation",
            format!(
                "evacuation #{id} is not run by this daemon: stop it where it runs (Ctrl-C), or \
                 abort its migrations one by one (DELETE /v1/migrations/{{id}})"
            ),
        )),
    }
}

/// `POST /v1/recover`: `ferry recover` (a run the daemon drives is live: not touched).
pub async fn post_recover(Axum(st): Axum<State>, b: Result<Bytes, BytesRejection>) -> Answer {
    let a: crate::args::RecoverArgs = body::parse(&body::RECOVER, &json_body(b)?)?;
    let v = blocking(move || {
        let j = st.journal()?;
        let only = a.id.map(RunId);
        let done = ferry_migrate::recover::run(
            &st.hv,
            &j,
            only,
            a.dry_run,
            Duration::from_secs(a.connect_timeout),
        )
        .map_err(|e| match e {
            ferry_journal::JournalError::NoRun(n) => {
                Problem::not_found(format!("there is no run #{n} in the journal"))
            }
            e => Problem::journal(&e),
        })?;
        let cut = ferry_migrate::recover::end_cut_evacuations(&j, only, a.dry_run)
            .map_err(|e| Problem::journal(&e))?;
        Ok(json!({"dry_run": a.dry_run, "recovered": done, "evacuations_ended": cut}))
    })
    .await?;
    ok(v)
}

/// `POST /v1/runs/{id}/release`: `ferry release` of a migrated run's source copies.
pub async fn post_release(
    Axum(st): Axum<State>,
    Path(id): Path<i64>,
    b: Result<Bytes, BytesRejection>,
) -> Answer {
    let a: crate::args::ReleaseArgs =
        body::parse_with(&body::RELEASE, &json_body(b)?, &[("id", id.into())])?;
    let v = blocking(move || {
        let j = st.journal()?;
        let row = j
            .run_row(RunId(id))
            .map_err(|e| Problem::journal(&e))?
            .ok_or_else(|| Problem::not_found(format!("there is no run #{id} in the journal")))?;
        let hook = ferry_migrate::release::source_hook(st.inventory.as_deref(), &row.source);
        let done = ferry_migrate::release::run(
            &st.hv,
            &j,
            RunId(id),
            hook.as_ref(),
            a.dry_run,
            Duration::from_secs(a.connect_timeout),
        )
        .map_err(release_problem)?;
        let released: Vec<Value> = done
            .iter()
            .map(|(r, err)| json!({"release": r, "error": err}))
            .collect();
        Ok(json!({"run": id, "source": row.source, "dry_run": a.dry_run, "released": released}))
    })
    .await?;
    ok(v)
}

fn release_problem(e: ferry_migrate::release::ReleaseError) -> Problem {
    use ferry_migrate::release::ReleaseError as R;
    let detail = ferry_migrate::error_chain(&e);
    let conflict = |code| {
        Problem::new(
            StatusCode::CONFLICT,
            code,
            "The run's copies cannot be released",
            detail.clone(),
        )
    };
    match e {
        R::NoRun(_) => Problem::not_found(detail),
        R::Unfinished { .. } => conflict("unfinished"),
        R::NotMigrated { .. } => conflict("not_migrated"),
        R::Unverified { .. } => conflict("unverified"),
        R::NoPlan(_) => conflict("no_plan"),
        R::NoAnswer { .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "stopped",
            "A host did not answer; nothing was released",
            detail,
        ),
        _ => Problem::new(
            StatusCode::BAD_GATEWAY,
            "host",
            "The release failed",
            detail,
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only this run's events.
    run: Option<i64>,
    /// Only this evacuation's events (its migrations' too).
    evacuation: Option<i64>,
}

/// `GET /v1/events`: Server-Sent Events, each with its id; `Last-Event-ID` replays what a
/// reconnecting client missed.
pub async fn get_events(
    Axum(st): Axum<State>,
    headers: HeaderMap,
    q: Result<Query<EventFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let last = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) => Some(s.trim().parse::<u64>().map_err(|_| {
            Problem::bad_request(format!("Last-Event-ID `{s}` is not an event id"))
        })?),
        Some(Err(_)) => return Err(Problem::bad_request("Last-Event-ID is not text".into())),
    };
    let filter = super::sse::Filter {
        run: q.run,
        evacuation: q.evacuation,
    };
    let stream = super::sse::stream(st.clone(), filter, last);
    let mut r = axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// One SSE event.
pub fn sse_event(s: &super::hub::Stored) -> Result<Sse, Infallible> {
    Ok(Sse::default()
        .id(s.id.to_string())
        .event(s.kind.clone())
        .data(s.data.clone()))
}

/// `GET /metrics`.
pub async fn get_metrics(Axum(st): Axum<State>) -> Response {
    let mut r = st.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /v1/openapi.json`.
pub async fn get_openapi() -> Response {
    axum::Json(super::routes::openapi()).into_response()
}

/// `GET /`: the page (no data in it: it asks the API with the operator's token).
pub async fn get_page() -> Response {
    let mut r = Html(super::PAGE).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:",
        ),
    );
    r
}
