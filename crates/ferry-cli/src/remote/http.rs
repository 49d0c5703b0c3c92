//! The daemon's API from the command line: JSON requests with the operator's token, its
//! problem documents as errors, and its event stream read line by line. Every call is bounded:
//! a connection that does not open, a request that is not answered and a stream that stays
//! silent past the daemon's keep-alives end with an error that names the server.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// How long a connection to the daemon may take to open.
const CONNECT: Duration = Duration::from_secs(10);
/// How long the daemon may take to answer a request (a plan reads every host: it may take
/// the hosts' connection timeout, 30 s by default, and more).
const ANSWER: Duration = Duration::from_secs(300);
/// How long an event stream may stay silent: the daemon sends a keep-alive every 15 s.
const SILENCE: Duration = Duration::from_secs(45);

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The daemon answered with a problem document (or another error status).
    #[error("{detail}")]
    Problem {
        status: u16,
        /// The problem's stable code (`refused`, `busy`, `not_found`, …).
        code: String,
        detail: String,
        /// The whole document: its facts by name.
        doc: Value,
    },
    #[error("cannot reach the daemon at {server}")]
    Transport {
        server: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("the daemon at {server} answered {what} that is not the API's")]
    Protocol {
        server: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the event stream from {server} broke")]
    Stream {
        server: String,
        #[source]
        source: std::io::Error,
    },
}

impl RemoteError {
    /// The problem document's member `key`.
    pub fn member(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Problem { doc, .. } => doc.get(key).filter(|v| !v.is_null()),
            _ => None,
        }
    }
}

/// A daemon: its base URL, the token, one agent (its connections are reused).
#[derive(Debug, Clone)]
pub struct Server {
    base: String,
    token: Option<String>,
    /// Requests: each read may wait for the daemon's answer.
    agent: ureq::Agent,
    /// Event streams: a read waits no longer than the daemon's keep-alives.
    stream: ureq::Agent,
}

/// One event of the daemon's stream.
#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    /// The event's name (`step`, `job`, `result`, …).
    pub kind: String,
    pub data: Value,
}

impl Server {
    /// A client of the daemon at `url` (`http://HOST:PORT` or `https://…`), with `token` and,
    /// for a certificate no public authority signed, the authority's certificate `ca`.
    pub fn new(url: &str, token: Option<String>, ca: Option<&Path>) -> anyhow::Result<Server> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "--server {url}: give the daemon's URL, http://HOST:PORT or https://HOST:PORT"
            );
        }
        let tls = ca.map(tls_with).transpose()?.map(Arc::new);
        let agent = |read: Duration| {
            let b = ureq::AgentBuilder::new()
                .timeout_connect(CONNECT)
                .timeout_write(ANSWER)
                .timeout_read(read)
                .redirects(0)
                .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
            match &tls {
                Some(t) => b.tls_config(t.clone()).build(),
                None => b.build(),
            }
        };
        Ok(Server {
            base,
            token,
            agent: agent(ANSWER),
            stream: agent(SILENCE),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        let mut r = agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn answer(&self, r: Result<ureq::Response, ureq::Error>) -> Result<Value, RemoteError> {
        match r {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| self.protocol("a body", e))?;
                serde_json::from_str(&text).map_err(|e| self.protocol("a body", e.into()))
            }
            Err(ureq::Error::Status(status, resp)) => Err(self.problem(status, resp)),
            Err(ureq::Error::Transport(t)) => Err(RemoteError::Transport {
                server: self.base.clone(),
                source: Box::new(t),
            }),
        }
    }

    fn protocol(&self, what: &'static str, source: std::io::Error) -> RemoteError {
        RemoteError::Protocol {
            server: self.base.clone(),
            what,
            source,
        }
    }

    fn problem(&self, status: u16, resp: ureq::Response) -> RemoteError {
        let doc: Value = resp
            .into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let code = doc["code"].as_str().unwrap_or("http").to_string();
        let detail = match doc["detail"].as_str() {
            Some(d) => d.to_string(),
            None if status == 401 => format!(
                "the daemon at {} wants a token: give it in FERRY_TOKEN or a file with \
                 --token-file",
                self.base
            ),
            None => format!("the daemon at {} answered HTTP {status}", self.base),
        };
        RemoteError::Problem {
            status,
            code,
            detail,
            doc,
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, RemoteError> {
        self.answer(self.request(&self.agent, "GET", path).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        self.answer(
            self.request(&self.agent, "POST", path)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )
    }

    pub fn delete(&self, path: &str) -> Result<Value, RemoteError> {
        self.answer(self.request(&self.agent, "DELETE", path).call())
    }

    /// The event stream at `path` from the event after `after`: `each` is called for every
    /// event until it says stop (`false`) or the daemon ends the stream.
    pub fn events(
        &self,
        path: &str,
        after: u64,
        mut each: impl FnMut(SseEvent) -> bool,
    ) -> Result<(), RemoteError> {
        let r = self
            .request(&self.stream, "GET", path)
            .set("Accept", "text/event-stream")
            .set("Last-Event-ID", &after.to_string())
            .call();
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(status, resp)) => return Err(self.problem(status, resp)),
            Err(ureq::Error::Transport(t)) => {
                return Err(RemoteError::Transport {
                    server: self.base.clone(),
                    source: Box::new(t),
                })
            }
        };
        read_events(resp.into_reader(), &mut each).map_err(|source| RemoteError::Stream {
            server: self.base.clone(),
            source,
        })
    }
}

/// Read Server-Sent Events from `r` (the fields Ferry's daemon sends: `id`, `event`, `data`;
/// comments are its keep-alives).
fn read_events(r: impl Read, each: &mut impl FnMut(SseEvent) -> bool) -> std::io::Result<()> {
    let mut lines = BufReader::new(r);
    let (mut id, mut kind, mut data) = (None, String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if l.is_empty() {
            if !data.is_empty() {
                let value = serde_json::from_str(&data)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let e = SseEvent {
                    id,
                    kind: std::mem::take(&mut kind),
                    data: value,
                };
                if !each(e) {
                    return Ok(());
                }
            }
            (id, data) = (None, String::new());
            kind.clear();
            continue;
        }
        let (field, value) = l.split_once(':').unwrap_or((l, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => kind = value.to_string(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
}

/// TLS that trusts the authority in the PEM file `ca` (a daemon's own certificate authority).
fn tls_with(ca: &Path) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the certificate authority {}", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", ca.display());
    }
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("{} is not a usable certificate", ca.display()))?;
    }
    // The same provider the daemon's TLS uses.
    #[allow(deprecated, reason = "ring's provider, as the daemon's")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_with_their_id_and_name_and_keep_alives_skipped() {
        let text = ": keep-alive\n\nid: 7\nevent: step\ndata: {\"a\":1}\n\n\
                    id: 8\nevent: result\ndata: {\"b\":\ndata: 2}\n\n";
        let mut got = vec![];
        read_events(text.as_bytes(), &mut |e| {
            got.push((e.id, e.kind, e.data));
            true
        })
        .unwrap();
        assert_eq!(
            got,
            [
                (Some(7), "step".to_string(), serde_json::json!({"a": 1})),
                (Some(8), "result".to_string(), serde_json::json!({"b": 2})),
            ]
        );
    }

    #[test]
    fn the_reader_stops_when_told() {
        let text = "id: 1\nevent: a\ndata: {}\n\nid: 2\nevent: b\ndata: {}\n\n";
        let mut n = 0;
        read_events(text.as_bytes(), &mut |_| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_server_url_without_a_scheme_is_refused() {
        let e = Server::new("127.0.0.1:8470", None, None).unwrap_err();
        assert!(e.to_string().contains("--server 127.0.0.1:8470"), "{e}");
    }
}
