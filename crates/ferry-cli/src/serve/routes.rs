//! The API's one table of routes: the router and the OpenAPI document are both made from it,
//! so they cannot disagree; each route's scope is the one the auth layer enforces.

use axum::extract::{MatchedPath, Request, State as Axum};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use serde_json::{json, Map, Value};

use super::auth::{self, Denied, Scope};
use super::problem::Problem;
use super::state::State;
use super::{api, body};
use crate::args::MigrateArgs;

/// A request body's kind.
#[derive(Debug, Clone, Copy)]
pub enum BodyKind {
    /// `ferry migrate`'s options.
    Migrate,
    /// `ferry evacuate`'s.
    Evacuate,
    /// `ferry recover`'s.
    Recover,
    /// `ferry release`'s.
    Release,
}

#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// In axum's syntax (`/v1/migrations/{id}`), which is OpenAPI's.
    pub path: &'static str,
    /// `None`: public (the page's static assets only).
    pub scope: Option<Scope>,
    pub summary: &'static str,
    pub body: Option<BodyKind>,
    /// Status codes and what each means.
    pub answers: &'static [(u16, &'static str)],
    pub handler: fn() -> MethodRouter<State>,
}

const AUTH: &[(u16, &str)] = &[
    (401, "no token, or an unknown one"),
    (403, "a read token on a route that acts"),
];

/// Every route.
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        Route {
            method: M::GET,
            path: "/",
            scope: None,
            summary: "The page: hosts, running migrations with live bars, history, actions",
            body: None,
            answers: &[(200, "the page (HTML)")],
            handler: || get(api::get_page),
        },
        Route {
            method: M::GET,
            path: "/v1/openapi.json",
            scope: Some(Scope::Read),
            summary: "This document",
            body: None,
            answers: &[(200, "the OpenAPI 3.1 document")],
            handler: || get(api::get_openapi),
        },
        Route {
            method: M::POST,
            path: "/v1/plans",
            scope: Some(Scope::Read),
            summary: "The online dry run of a migration: each disk's decision with its origin \
                      and evidence, each host's verdict with its codes, the virsh line. Creates \
                      nothing but canaries (deleted at once).",
            body: Some(BodyKind::Migrate),
            answers: &[
                (200, "the plan"),
                (422, "refused: bad input, no plan, or no host can take the guest (every reason, with its code)"),
                (502, "a host could not be read"),
                (504, "a host did not answer within connect-timeout"),
            ],
            handler: || post(api::post_plan),
        },
        Route {
            method: M::POST,
            path: "/v1/migrations",
            scope: Some(Scope::Operate),
            summary: "Start a live migration (`ferry migrate`). Answers once the checks passed \
                      and the flow acts on the hosts; follow it on /v1/events?run=ID.",
            body: Some(BodyKind::Migrate),
            answers: &[
                (202, "started: the run's id, and its Location"),
                (409, "the guest is already being migrated (holder_run: the holder's run)"),
                (422, "refused before anything was created or moved (every reason, with its code)"),
                (503, "the daemon is shutting down, or the journal cannot be written"),
            ],
            handler: || post(api::post_migration),
        },
        Route {
            method: M::GET,
            path: "/v1/migrations/{id}",
            scope: Some(Scope::Read),
            summary: "A run: the journal's row (phase, outcome) and, while this daemon runs it, \
                      its step, last sample, pre-seed figures and result",
            body: None,
            answers: &[(200, "the run"), (404, "no such run")],
            handler: || get(api::get_migration),
        },
        Route {
            method: M::DELETE,
            path: "/v1/migrations/{id}",
            scope: Some(Scope::Operate),
            summary: "Abort a running migration, as Ctrl-C (`ferry abort`): the guest stays on \
                      the source, what the run created is deleted. The id is the run's number or \
                      the name of the guest it migrates. Works for a run another Ferry drives (through \
                      the journal).",
            body: None,
            answers: &[
                (202, "the abort is asked; the run's events say how it ended"),
                (404, "no such run"),
                (409, "the run has already ended, or no Ferry runs it any more (recover it)"),
            ],
            handler: || delete(api::delete_migration),
        },
        Route {
            method: M::POST,
            path: "/v1/evacuations",
            scope: Some(Scope::Operate),
            summary: "`ferry evacuate`: move every running guest off a host, each to its best \
                      target, on the model's schedule; answers once planned and begun (the \
                      host is then draining). `dry-run`: the plan only (read scope is not \
                      enough: it is the same route).",
            body: Some(BodyKind::Evacuate),
            answers: &[
                (200, "dry-run: where each guest goes, and when"),
                (202, "begun: the evacuation's id and its Location; follow /v1/events?evacuation=ID"),
                (409, "the host is already being evacuated"),
                (422, "bad input, or no plan can be made"),
            ],
            handler: || post(api::post_evacuation),
        },
        Route {
            method: M::GET,
            path: "/v1/evacuations",
            scope: Some(Scope::Read),
            summary: "The journal's evacuations, newest first (?limit=1..500), each with its \
                      guests' runs",
            body: None,
            answers: &[(200, "the evacuations")],
            handler: || get(api::get_evacuations),
        },
        Route {
            method: M::GET,
            path: "/v1/evacuations/{id}",
            scope: Some(Scope::Read),
            summary: "An evacuation: the journal's row and runs, and (while this daemon drives \
                      it) the plan with each move's predicted span, each guest's target, start, \
                      end and result, the verdict",
            body: None,
            answers: &[(200, "the evacuation"), (404, "no such evacuation")],
            handler: || get(api::get_evacuation),
        },
        Route {
            method: M::DELETE,
            path: "/v1/evacuations/{id}",
            scope: Some(Scope::Operate),
            summary: "Stop an evacuation, as Ctrl-C once: no new migration starts, those running \
                      finish; `?force`: as twice, those running abort and roll back",
            body: None,
            answers: &[
                (202, "stopping (or aborting)"),
                (409, "it has ended, or another Ferry runs it"),
            ],
            handler: || delete(api::delete_evacuation),
        },
        Route {
            method: M::POST,
            path: "/v1/recover",
            scope: Some(Scope::Operate),
            summary: "`ferry recover`: finish every unfinished run (or `id`'s) from where the hosts \
                      say its guest is; a run a live Ferry drives (this daemon's too) is left \
                      alone. `dry-run`: the steps, nothing done.",
            body: Some(BodyKind::Recover),
            answers: &[
                (200, "each run recovered: where its guest is, the steps, which failed"),
                (404, "no such run"),
            ],
            handler: || post(api::post_recover),
        },
        Route {
            method: M::POST,
            path: "/v1/runs/{id}/release",
            scope: Some(Scope::Operate),
            summary: "`ferry release`: delete the source's copy of each disk a migrated, verified \
                      run copied (never one a domain uses); `dry-run`: what would go",
            body: Some(BodyKind::Release),
            answers: &[
                (200, "each copied disk: released, kept (and why), or the error"),
                (404, "no such run"),
                (409, "the run is unfinished, did not migrate, or was not verified"),
            ],
            handler: || post(api::post_release),
        },
        Route {
            method: M::GET,
            path: "/v1/runs",
            scope: Some(Scope::Read),
            summary: "The journal's runs, newest first (?limit=1..500, ?before=ID for the next page)",
            body: None,
            answers: &[(200, "a page of runs, and the next page's address")],
            handler: || get(api::get_runs),
        },
        Route {
            method: M::GET,
            path: "/v1/hosts",
            scope: Some(Scope::Read),
            summary: "Every inventory host, read concurrently (`ferry hosts --json`)",
            body: None,
            answers: &[(200, "the hosts"), (422, "the daemon has no inventory")],
            handler: || get(api::get_hosts),
        },
        Route {
            method: M::GET,
            path: "/v1/events",
            scope: Some(Scope::Read),
            summary: "Server-Sent Events: every step, sample, pre-seed figure, note and result \
                      of the runs and evacuations this daemon drives, each with an id (?run=ID: \
                      one run's, ending after its result; ?evacuation=ID: one evacuation's and \
                      its migrations', ending after its verdict); Last-Event-ID replays what a \
                      reconnecting client missed",
            body: None,
            answers: &[(200, "text/event-stream")],
            handler: || get(api::get_events),
        },
        Route {
            method: M::GET,
            path: "/metrics",
            scope: Some(Scope::Read),
            summary: "Prometheus metrics (text format)",
            body: None,
            answers: &[(200, "the metrics")],
            handler: || get(api::get_metrics),
        },
    ]
}

/// The router: every route of the table, behind the auth layer, bodies bounded.
pub fn router(state: State) -> Router {
    let mut r: Router<State> = Router::new();
    for route in routes() {
        r = r.route(route.path, (route.handler)());
    }
    r.fallback(|| async {
        Problem::not_found("no such route: GET /v1/openapi.json lists them".into())
    })
    .layer(middleware::from_fn_with_state(state.clone(), authorize))
    .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY))
    .with_state(state)
}

/// The scope a request's route needs (`None`: public). An unknown route needs a read token:
/// what exists is not told to anonymous callers.
fn needs(method: &Method, path: Option<&str>) -> Option<Scope> {
    let Some(path) = path else {
        return Some(Scope::Read);
    };
    let table = routes();
    let on_path: Vec<&Route> = table.iter().filter(|r| r.path == path).collect();
    match on_path.iter().find(|r| r.method == method) {
        Some(r) => r.scope,
        // A method the path does not have: the strictest of the path's.
        None => on_path
            .iter()
            .filter_map(|r| r.scope)
            .max()
            .or(Some(Scope::Read)),
    }
}

async fn authorize(Axum(st): Axum<State>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(scope) = needs(req.method(), path.as_deref()) else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match auth::check(&st.tokens, header, scope) {
        Ok(_) => next.run(req).await,
        Err(Denied::Unauthenticated) => {
            let mut r = Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "A bearer token is needed",
                "send `Authorization: Bearer TOKEN` with a token of the daemon's tokens file"
                    .into(),
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
            r
        }
        Err(Denied::Forbidden { has, needs }) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The token does not allow this",
            format!(
                "this needs an `{}` token; the one given is `{}`",
                needs.as_str(),
                has.as_str()
            ),
        )
        .into_response(),
    }
}

fn body_schema(kind: BodyKind) -> Value {
    match kind {
        BodyKind::Migrate => body::schema::<MigrateArgs>(&body::MIGRATE),
        BodyKind::Evacuate => body::schema::<crate::args::EvacuateArgs>(&body::EVACUATE),
        BodyKind::Recover => body::schema::<crate::args::RecoverArgs>(&body::RECOVER),
        BodyKind::Release => body::schema::<crate::args::ReleaseArgs>(&body::RELEASE),
    }
}

/// The OpenAPI 3.1 document, from the table.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for r in routes() {
        let mut answers = Map::new();
        let all = r
            .answers
            .iter()
            .chain(if r.scope.is_some() { AUTH } else { &[] });
        for (code, what) in all {
            let content = if *code >= 400 {
                json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}})
            } else {
                json!({"application/json": {}})
            };
            answers.insert(
                code.to_string(),
                json!({"description": what, "content": content}),
            );
        }
        let mut o = Map::new();
        o.insert("summary".into(), r.summary.into());
        o.insert(
            "operationId".into(),
            format!(
                "{}{}",
                r.method.as_str().to_lowercase(),
                r.path.replace(['/', '{', '}', '.'], "_")
            )
            .into(),
        );
        o.insert("responses".into(), answers.into());
        match r.scope {
            Some(s) => {
                o.insert("security".into(), json!([{"bearer": []}]));
                o.insert("x-ferry-scope".into(), s.as_str().into());
            }
            None => {
                o.insert("security".into(), json!([]));
            }
        }
        if let Some(kind) = r.body {
            o.insert(
                "requestBody".into(),
                json!({"required": matches!(kind, BodyKind::Migrate), "content": {"application/json": {"schema": body_schema(kind)}}}),
            );
        }
        if r.path.contains("{id}") {
            // An abort names a run by its number or by its guest, as `ferry abort` does.
            let (schema, what) = match (&r.method, r.path) {
                (&Method::DELETE, "/v1/migrations/{id}") => (
                    json!({"type": "string"}),
                    "the journal's run id, or the name of the guest it migrates",
                ),
                (_, p) if p.starts_with("/v1/evacuations") => {
                    (json!({"type": "integer"}), "the journal's evacuation id")
                }
                _ => (json!({"type": "integer"}), "the journal's run id"),
            };
            o.insert(
                "parameters".into(),
                json!([{"name": "id", "in": "path", "required": true, "schema": schema, "description": what}]),
            );
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        if let Some(e) = entry.as_object_mut() {
            e.insert(r.method.as_str().to_lowercase(), Value::Object(o));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live migration of libvirt guests whose disks mix shared and local storage. \
                            Request bodies are JSON objects whose keys are the CLI's long options.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {
                "type": "object",
                "description": "RFC 9457; `code` is the stable code (the CLI's JSON has the same)",
                "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"},
                    "code": {"type": "string"},
                },
                "required": ["type", "title", "status", "detail", "code"],
            }},
        },
    })
}
