//! `ferry serve`: the same flow as the CLI, as an HTTP service (tokio + axum). One process
//! drives many migrations, each on a thread of its own as the CLI drives one; the journal and
//! its guest locks are the CLI's, so a CLI and a daemon on one journal coordinate.
//!
//! - [`routes`]: the one table of routes (the router, the auth layer's scopes, the OpenAPI
//!   document);
//! - [`api`]: the handlers; [`body`]: request bodies read by the CLI's parser;
//! - [`state`]: the runs the daemon drives; [`hub`] and [`sse`]: their events, numbered and
//!   replayable; [`metrics`]: Prometheus;
//! - [`auth`]: bearer tokens; [`problem`]: RFC 9457 errors with Ferry's stable codes.

mod api;
mod auth;
pub(crate) mod body;
mod evac;
pub(crate) mod hub;
mod metrics;
mod problem;
mod routes;
mod sse;
mod state;
mod tls;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_journal::{Journal, RunId};

use crate::args::ServeArgs;

/// The page, built into the binary.
pub const PAGE: &str = include_str!("page.html");

/// The daemon's state, for a hypervisor, an inventory, a journal and tokens.
fn shared(
    hv: Arc<dyn ferry_hypervisor::Hypervisor>,
    inventory: Option<Arc<ferry_core::inventory::Inventory>>,
    journal: std::path::PathBuf,
    tokens: auth::Tokens,
    connect_timeout: Duration,
) -> state::State {
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    Arc::new(state::Shared {
        hv,
        inventory,
        journal,
        tokens,
        hub: hub::Hub::new(first),
        metrics: metrics::Metrics::new(),
        runs: Mutex::default(),
        evacs: Mutex::default(),
        closing: AtomicBool::new(false),
        ended: tokio::sync::watch::channel(false).0,
        // Preflight reads every host within the connect timeout; then a little more.
        answer_within: connect_timeout * 2 + Duration::from_secs(30),
        connect_timeout,
    })
}

pub fn run(a: &ServeArgs) -> anyhow::Result<ExitCode> {
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    if tls.is_none() && !a.listen.ip().is_loopback() && !a.insecure_listen {
        bail!(
            "{} is not a loopback address: plain HTTP would carry the tokens in clear. Give \
             --tls-cert and --tls-key, listen on 127.0.0.1 behind a TLS proxy, or say \
             --insecure-listen",
            a.listen
        );
    }
    let tokens = auth::Tokens::load(&a.tokens)?;
    let inventory = a.inventory.load()?.map(Arc::new);
    Journal::open(&a.journal.journal).with_context(|| {
        "the daemon records every run and volume there: give another path with --journal"
    })?;
    let st = shared(
        Arc::new(ferry_hypervisor::libvirt::Libvirt::new()),
        inventory,
        a.journal.journal.clone(),
        tokens,
        Duration::from_secs(a.connect_timeout),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the daemon's runtime")?;
    rt.block_on(async move {
        let tcp = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        match tls {
            Some(acceptor) => {
                let l = tls::listen(tcp, acceptor).context("cannot listen")?;
                serve(st, l, "https").await
            }
            None => serve(st, tcp, "http").await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn serve<L>(st: state::State, listener: L, scheme: &str) -> anyhow::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let addr = listener
        .local_addr()
        .context("the listener has no address")?;
    st.say(format!(
        "listening on {scheme}://{addr}/ (the page), API under /v1 (GET /v1/openapi.json), \
         metrics at /metrics"
    ));
    // The journal is read off the runtime's threads (PostgreSQL's client blocks).
    let st2 = st.clone();
    let _ = tokio::task::spawn_blocking(move || unfinished(&st2)).await;
    tokio::spawn(watch_aborts(st.clone()));
    axum::serve(listener, routes::router(st.clone()))
        .with_graceful_shutdown(shutdown(st.clone()))
        .await
        .context("the daemon's listener failed")?;
    st.say("stopped".into());
    Ok(())
}

/// Say which runs a previous Ferry left unfinished: `ferry recover` finishes them.
fn unfinished(st: &state::State) {
    let Ok(j) = Journal::open(&st.journal) else {
        return;
    };
    let runs = j.runs_to_recover(None).unwrap_or_default();
    let open: Vec<String> = runs
        .iter()
        .filter(|r| r.outcome.is_none())
        .filter(|r| !ferry_migrate::lease::drives(&j, r).unwrap_or(false))
        .map(|r| format!("#{} ({})", r.id, r.guest))
        .collect();
    if !open.is_empty() {
        st.say(format!(
            "the journal has unfinished runs no Ferry drives: {}; `ferry recover` finishes them",
            open.join(", ")
        ));
    }
}

/// `ferry abort` from another process, for a run this daemon drives: the journal's request
/// sets the run's cancel, as Ctrl-C does for the CLI.
async fn watch_aborts(st: state::State) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let running = st.running();
        if running.is_empty() {
            continue;
        }
        let st2 = st.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let Ok(j) = Journal::open_existing(&st2.journal) else {
                return vec![];
            };
            running
                .into_iter()
                .filter_map(|r| j.abort_requested(RunId(r)).ok().flatten().map(|by| (r, by)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (run, (pid, host)) in asked {
            let cancel = st.runs().get(&run).map(|l| l.cancel.clone());
            if let Some(c) = cancel {
                if !c.swap(true, Ordering::SeqCst) {
                    st.hub.publish(
                        Some(run),
                        "note",
                        serde_json::json!({"event": "note", "message": format!(
                            "`ferry abort` (pid {pid} on {host}): aborting the migration (the \
                             guest stays on the source)")}),
                    );
                }
            }
        }
    }
}

/// SIGTERM or SIGINT once: no new work, the running migrations finish; twice: they abort.
/// Resolves when none runs any more.
async fn shutdown(st: state::State) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signals the daemon runs until killed.
        return std::future::pending().await;
    };
    let mut asked = 0;
    let mut ended = st.ended.subscribe();
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = ended.changed() => {
                if *ended.borrow() { return; }
                continue;
            }
        }
        asked += 1;
        st.closing.store(true, Ordering::SeqCst);
        let busy = st.busy();
        if busy == 0 {
            let _ = st.ended.send(true);
            return;
        }
        if asked == 1 {
            st.stop_evacuations(ferry_migrate::evacuate::NO_NEW);
            st.say(format!(
                "shutting down: no new work; {busy} migration(s) and evacuation(s) running \
                 finish (signal again to abort them)"
            ));
        } else {
            st.say(format!(
                "aborting {busy} running migration(s) and evacuation(s): each rolls back, the \
                 guests stay on their sources"
            ));
            st.abort_all();
            st.stop_evacuations(ferry_migrate::evacuate::ABORT_ALL);
        }
    }
}

#[cfg(test)]
mod tests;
