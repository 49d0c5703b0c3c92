//! The daemon's live events: every event of every run it drives, numbered, kept in a bounded
//! replay buffer and broadcast to the SSE clients. A client that reconnects with the last id
//! it saw gets everything after it from the buffer; ids grow across restarts (they start at the
//! daemon's start time in microseconds), so an id from a previous daemon is never mistaken for
//! a newer one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// One event as the clients get it.
#[derive(Debug)]
pub struct Stored {
    pub id: u64,
    /// The journal's run it belongs to (none: the daemon's own, or an evacuation's).
    pub run: Option<i64>,
    /// The evacuation it belongs to.
    pub evacuation: Option<i64>,
    /// The SSE event name: the event's kind (`step`, `job`, `seed`, `note`, `target`, `run`,
    /// `result`, `daemon`).
    pub kind: String,
    /// The event as JSON, with its `id` and `run`.
    pub data: String,
}

/// The members the hub adds to every event (its envelope): a client that shows an event as the
/// flow reported it takes them off.
pub const ENVELOPE: &[&str] = &["id", "run", "time_ms", "evacuation"];

/// How many events the replay buffer keeps: at one sample a second per run, over an hour of
/// a migration, or minutes of an evacuation of dozens.
pub const REPLAY: usize = 8192;

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Stored>>,
}

#[derive(Debug)]
struct Inner {
    /// The first id this hub gave: while the buffer still holds it, it holds everything.
    first: u64,
    next: u64,
    ring: VecDeque<Arc<Stored>>,
}

impl Hub {
    /// A hub whose first id is `first`.
    pub fn new(first: u64) -> Hub {
        let (tx, _) = broadcast::channel(1024);
        Hub {
            inner: Mutex::new(Inner {
                first: first.max(1),
                next: first.max(1),
                ring: VecDeque::with_capacity(REPLAY),
            }),
            tx,
        }
    }

    /// Number, keep and send an event (`value` is a JSON object; `id` and `run` are added).
    pub fn publish(&self, run: Option<i64>, kind: &str, value: serde_json::Value) -> u64 {
        self.publish_in(None, run, kind, value)
    }

    /// [`Hub::publish`] for an event of an evacuation (`evacuation` is added too).
    pub fn publish_in(
        &self,
        evacuation: Option<i64>,
        run: Option<i64>,
        kind: &str,
        mut value: serde_json::Value,
    ) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = inner.next;
        inner.next += 1;
        if let Some(o) = value.as_object_mut() {
            o.insert("id".into(), id.into());
            o.insert("run".into(), run.into());
            // When the daemon had it (Unix ms): a client's lag is its clock minus this.
            o.insert("time_ms".into(), now_ms().into());
            if evacuation.is_some() {
                o.insert("evacuation".into(), evacuation.into());
            }
        }
        let stored = Arc::new(Stored {
            id,
            run,
            evacuation,
            kind: kind.to_string(),
            data: value.to_string(),
        });
        if inner.ring.len() == REPLAY {
            inner.ring.pop_front();
        }
        inner.ring.push_back(stored.clone());
        // Sent under the lock: a subscriber that read the buffer under it misses nothing.
        let _ = self.tx.send(stored);
        id
    }

    /// Subscribe, and the buffered events after `after`: together, every event after it (the
    /// first item says whether the buffer still held the one right after `after`).
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (bool, Vec<Arc<Stored>>, broadcast::Receiver<Arc<Stored>>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let (complete, kept) = Self::after(&inner, after);
        (complete, kept, rx)
    }

    /// The buffered events after `after` (for a subscriber that fell behind the broadcast).
    pub fn since(&self, after: Option<u64>) -> (bool, Vec<Arc<Stored>>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Self::after(&inner, after)
    }

    fn after(inner: &Inner, after: Option<u64>) -> (bool, Vec<Arc<Stored>>) {
        let Some(after) = after else {
            return (true, vec![]);
        };
        let oldest = inner.ring.front().map_or(inner.next, |s| s.id);
        let complete = oldest == inner.first || after + 1 >= oldest;
        let kept = inner
            .ring
            .iter()
            .filter(|s| s.id > after)
            .cloned()
            .collect();
        (complete, kept)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_client_gets_every_event_after_its_last_id() {
        let hub = Hub::new(100);
        for i in 0..5 {
            hub.publish(Some(1), "note", serde_json::json!({ "i": i }));
        }
        let (complete, kept, _rx) = hub.subscribe(Some(101));
        assert!(complete);
        assert_eq!(
            kept.iter().map(|s| s.id).collect::<Vec<_>>(),
            [102, 103, 104]
        );
        let v: serde_json::Value = serde_json::from_str(&kept[0].data).unwrap();
        assert_eq!(v["id"], 102);
        assert_eq!(v["run"], 1);
        assert_eq!(v["i"], 2);
    }

    #[test]
    fn events_sent_after_subscribing_arrive_on_the_receiver() {
        let hub = Hub::new(1);
        let (_, kept, mut rx) = hub.subscribe(Some(0));
        assert!(kept.is_empty());
        hub.publish(None, "daemon", serde_json::json!({}));
        assert_eq!(rx.try_recv().unwrap().id, 1);
    }

    #[test]
    fn the_buffer_is_bounded_and_says_when_it_no_longer_holds_the_next_event() {
        let hub = Hub::new(1);
        for _ in 0..REPLAY + 10 {
            hub.publish(None, "note", serde_json::json!({}));
        }
        let (complete, kept) = hub.since(Some(5));
        assert!(!complete);
        assert_eq!(kept.len(), REPLAY);
        assert_eq!(kept[0].id, 11);
        let (complete, kept) = hub.since(Some(10));
        assert!(complete);
        assert_eq!(kept.len(), REPLAY);
        // An id from before this hub (a previous daemon's, or 0): complete while nothing was
        // dropped.
        let young = Hub::new(1000);
        young.publish(None, "note", serde_json::json!({}));
        assert!(young.since(Some(0)).0);
        assert!(!hub.since(Some(0)).0);
        // No id given: only what comes next.
        assert!(hub.since(None).1.is_empty());
    }
}
