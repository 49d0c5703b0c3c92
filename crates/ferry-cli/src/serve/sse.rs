//! One client's event stream: the buffered events it missed, then the live ones, in id order,
//! never one twice; a client that fell behind the broadcast is refilled from the buffer. The
//! stream of one run (`?run=ID`) ends after its result; every stream ends when the daemon shuts
//! down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::Event as Sse;
use futures_util::stream::{self, Stream};
use tokio::sync::{broadcast, watch};

use super::hub::Stored;
use super::state::State;

struct Feed {
    st: State,
    run: Option<i64>,
    evacuation: Option<i64>,
    last: Option<u64>,
    pending: VecDeque<Arc<Stored>>,
    rx: broadcast::Receiver<Arc<Stored>>,
    ended: watch::Receiver<bool>,
    /// The buffer no longer held the first event the client missed: say so once.
    gap: Option<u64>,
    /// The followed run's result was sent: the stream ends.
    done: bool,
}

impl Feed {
    fn wanted(&self, s: &Stored) -> bool {
        self.last.is_none_or(|l| s.id > l)
            && self.run.is_none_or(|r| s.run == Some(r))
            && self.evacuation.is_none_or(|e| s.evacuation == Some(e))
    }
}

/// Which events a client follows: all, one run's, or one evacuation's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub run: Option<i64>,
    pub evacuation: Option<i64>,
}

/// The events after `last` that `filter` selects: subscribed at once (nothing published from
/// now on is missed), then streamed.
pub fn stream(
    st: State,
    filter: Filter,
    last: Option<u64>,
) -> impl Stream<Item = Result<Sse, Infallible>> {
    let (complete, kept, rx) = st.hub.subscribe(last);
    let ended = st.ended.subscribe();
    let feed = Feed {
        st,
        run: filter.run,
        evacuation: filter.evacuation,
        last,
        pending: kept.into(),
        rx,
        ended,
        gap: (!complete).then_some(last.unwrap_or(0)),
        done: false,
    };
    stream::unfold(feed, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if let Some(after) = f.gap.take() {
                let e = Sse::default().event("resync").data(
                    serde_json::json!({
                        "event": "resync",
                        "after": after,
                        "message": "events after this id are no longer buffered: read the runs \
                                    (GET /v1/runs, GET /v1/migrations/{id}) for their state"
                    })
                    .to_string(),
                );
                return Some((Ok(e), f));
            }
            while let Some(s) = f.pending.pop_front() {
                if f.wanted(&s) {
                    f.last = Some(s.id);
                    // A stream of one run ends with its result, of one evacuation with its.
                    f.done = (f.run.is_some() && s.kind == "result")
                        || (f.evacuation.is_some() && s.kind == "evacuation_result");
                    return Some((super::api::sse_event(&s), f));
                }
            }
            if *f.ended.borrow() {
                // Every run's last event was published before the daemon said it ended: take
                // what the broadcast still holds, then end.
                let mut more = false;
                while let Ok(s) = f.rx.try_recv() {
                    f.pending.push_back(s);
                    more = true;
                }
                if !more {
                    return None;
                }
                continue;
            }
            tokio::select! {
                r = f.rx.recv() => match r {
                    Ok(s) => f.pending.push_back(s),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (complete, kept) = f.st.hub.since(f.last);
                        if !complete {
                            f.gap = Some(f.last.unwrap_or(0));
                        }
                        f.pending = kept.into();
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = f.ended.changed() => {}
            }
        }
    })
}
