//! One way to wait. A call that can hang on a silent peer runs on a thread of its own
//! ([`spawn`]) and is waited for until a deadline, or until the caller's own reason to stop
//! ([`Pending::wait_while`]); a condition is polled with [`poll_until`]. libvirt's calls cannot
//! be interrupted: a call not answered in time is left behind on its thread (it ends when its
//! connection does), and the caller goes on knowing it was not answered.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Poll `condition` every `every` until it gives a value or `deadline` passes (it is asked
/// once more at the deadline). `None`: the deadline passed without one.
pub fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = condition() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// `now + d`, or a far deadline when `d` is too large to add (an operator's huge timeout).
pub fn deadline_in(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Why a call's answer was not had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer<W> {
    /// The deadline passed first; the call goes on, unanswered, on its thread.
    #[error("no answer in time")]
    Late,
    /// The caller's reason to stop came first.
    #[error("stopped waiting")]
    Stopped(W),
    /// The call's thread could not be started, or it panicked.
    #[error("the call's thread failed: {0}")]
    Failed(String),
}

/// A call running on a thread of its own.
#[derive(Debug)]
pub struct Pending<T> {
    rx: mpsc::Receiver<T>,
    /// Why the thread could not be started.
    failed: Option<String>,
}

/// Start `f` on a thread of its own, named `name`.
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
    let (tx, rx) = mpsc::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        });
    Pending {
        rx,
        failed: started.err().map(|e| e.to_string()),
    }
}

impl<T> Pending<T> {
    /// The answer, if it came by `deadline`.
    pub fn wait(&self, deadline: Instant) -> Result<T, NoAnswer<std::convert::Infallible>> {
        self.wait_while(deadline, Duration::MAX, || None)
    }

    /// The answer, if it came by `deadline` and before `stop` (asked every `every`) gave a
    /// reason to stop waiting.
    pub fn wait_while<W>(
        &self,
        deadline: Instant,
        every: Duration,
        mut stop: impl FnMut() -> Option<W>,
    ) -> Result<T, NoAnswer<W>> {
        if let Some(e) = &self.failed {
            return Err(NoAnswer::Failed(e.clone()));
        }
        loop {
            let now = Instant::now();
            let next = deadline.min(now.checked_add(every).unwrap_or(deadline));
            match self.rx.recv_timeout(next.saturating_duration_since(now)) {
                Ok(v) => return Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(NoAnswer::Failed(
                        "it ended without an answer (a panic)".into(),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(w) = stop() {
                return Err(NoAnswer::Stopped(w));
            }
            if Instant::now() >= deadline {
                return Err(NoAnswer::Late);
            }
        }
    }
}

/// Run `f` on a thread of its own and wait for its answer until `deadline`.
pub fn bounded<T: Send + 'static>(
    name: &str,
    deadline: Instant,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NoAnswer<std::convert::Infallible>> {
    spawn(name, f).wait(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn poll_until_returns_the_first_value_or_none_at_the_deadline() {
        let n = AtomicU32::new(0);
        let got = poll_until(deadline_in(Duration::from_secs(5)), Duration::ZERO, || {
            (n.fetch_add(1, Ordering::SeqCst) == 3).then_some("ready")
        });
        assert_eq!((got, n.load(Ordering::SeqCst)), (Some("ready"), 4));
        let asked = AtomicU32::new(0);
        let none: Option<()> = poll_until(Instant::now(), Duration::from_secs(60), || {
            asked.fetch_add(1, Ordering::SeqCst);
            None
        });
        assert_eq!((none, asked.load(Ordering::SeqCst)), (None, 1));
    }

    #[test]
    fn a_call_that_never_answers_is_late_and_one_that_answers_is_had() {
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hung = bounded(
            "hung",
            Instant::now() + Duration::from_millis(30),
            move || {
                let _ = hold_rx.recv();
            },
        );
        assert_eq!(hung, Err(NoAnswer::Late));
        drop(hold_tx);
        assert_eq!(
            bounded("quick", deadline_in(Duration::from_secs(5)), || 7),
            Ok(7)
        );
        let panicked = bounded("panics", deadline_in(Duration::from_secs(5)), || {
            if true {
                panic!("boom")
            }
        });
        assert!(matches!(panicked, Err(NoAnswer::Failed(_))), "{panicked:?}");
    }

    #[test]
    fn the_callers_reason_stops_the_wait_before_the_deadline() {
        let asked = Arc::new(AtomicU32::new(0));
        let (_hold, hold_rx) = mpsc::channel::<()>();
        let p = spawn("hung", move || {
            let _ = hold_rx.recv();
        });
        let a = asked.clone();
        let r = p.wait_while(
            deadline_in(Duration::from_secs(60)),
            Duration::from_millis(1),
            move || (a.fetch_add(1, Ordering::SeqCst) == 2).then_some("cancelled"),
        );
        assert_eq!(r, Err(NoAnswer::Stopped("cancelled")));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_huge_duration_gives_a_far_deadline_not_a_panic() {
        // Far enough never to come: fifty years and more.
        let fifty_years = Duration::from_secs(50 * 365 * 24 * 3600);
        assert!(deadline_in(Duration::MAX) > Instant::now() + fifty_years);
    }
}
