//! Errors over HTTP: RFC 9457 `application/problem+json`, with the stable codes the CLI's JSON
//! has (`code`), and every fact a script needs next to them (the refusal's problems, each
//! host's reasons, the holder's run).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_migrate::MigrateError;
use serde_json::{json, Map, Value};

/// A problem document.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// The stable code (`refused`, `no_target`, `busy`, `bad_request`, …).
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// More members: facts by name.
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: String,
    ) -> Self {
        Problem {
            status,
            code,
            title,
            detail,
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), v.into());
        self
    }

    pub fn bad_request(detail: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
            "The request cannot be carried out as given",
            detail,
        )
    }

    /// The CLI's refusal of its input (an inventory, a host, a rule), its causes on one line.
    pub fn of_input(e: &anyhow::Error) -> Self {
        Self::bad_request(ferry_migrate::error_chain(e.as_ref()))
    }

    pub fn not_found(detail: String) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such resource",
            detail,
        )
    }

    pub fn internal(detail: String) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The daemon failed to answer",
            detail,
        )
    }

    pub fn journal(e: &ferry_journal::JournalError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "journal",
            "The journal cannot be read or written",
            ferry_migrate::error_chain(e),
        )
    }

    /// The document.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("urn:ferry:problem:{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Some(o) = v.as_object_mut() {
            o.extend(self.extra.clone());
        }
        v
    }

    /// A migration that did not happen (or happened badly), before the daemon answered.
    pub fn of_migration(e: &MigrateError) -> Self {
        let detail = ferry_migrate::error_chain(e);
        let report = serde_json::to_value(e.report()).unwrap_or(Value::Null);
        let p = match e {
            MigrateError::Refused { problems } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                "Refused before anything was created or moved",
                detail,
            )
            .with(
                "problems",
                serde_json::to_value(problems).unwrap_or_default(),
            ),
            MigrateError::NoTarget { ranking, .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_target",
                "No host can take the guest",
                detail,
            )
            .with(
                "hosts",
                serde_json::to_value(&ranking.hosts).unwrap_or_default(),
            ),
            MigrateError::Busy(ferry_journal::JournalError::Locked { holder, .. }) => Self::new(
                StatusCode::CONFLICT,
                "busy",
                "The guest is already being migrated",
                detail,
            )
            .with("holder_run", holder.run.0),
            MigrateError::Busy(_) => Self::new(
                StatusCode::CONFLICT,
                "busy",
                "The guest is already being migrated",
                detail,
            ),
            MigrateError::Plan { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "plan",
                "No plan can be made for the guest",
                detail,
            ),
            MigrateError::Stopped { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "stopped",
                "Stopped while reading the hosts; nothing was created or moved",
                detail,
            ),
            MigrateError::Host(_) | MigrateError::StepThread { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "host",
                "A host could not be read",
                detail,
            ),
            MigrateError::Journal(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal",
                "The journal cannot be read or written",
                detail,
            ),
            MigrateError::Failed { .. } | MigrateError::VerifyFailed { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                "The migration failed",
                detail,
            ),
            MigrateError::LeaseLost { .. } => Self::new(
                StatusCode::CONFLICT,
                "lease_lost",
                "Another Ferry took the guest over",
                detail,
            ),
        };
        p.with("exit", e.exit_status()).with("error", report)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body().to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}
