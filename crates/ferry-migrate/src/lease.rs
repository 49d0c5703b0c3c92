//! Leases: a guest's lock and a draining host are held by this Ferry instance for as long as
//! it renews them. A keeper thread (one per process, on a journal connection of its own)
//! renews every lease the process holds a few times per lease term; a Ferry that dies, hangs
//! or loses the journal stops renewing, and another instance takes its leases over once they
//! expire ([`ferry_journal::standing`] is the one rule). The keeper also notices when a lease
//! this process took was taken over — its Ferry was stopped longer than the lease — and the
//! flow then stops touching that guest ([`lost`]): the taker decides from what the hosts say.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ferry_hypervisor::wait;
use ferry_journal::{Holder, Journal, JournalError, Owner, RunId, Standing};

/// How long a lease holds unless renewed, by default (`--lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The shortest lease: renewals must fit in it (a journal write takes milliseconds; a
/// PostgreSQL restart, seconds).
pub const MIN_LEASE: Duration = Duration::from_secs(3);

/// The instance's name and lease term, as the front end set them ([`configure`]).
static IDENTITY: OnceLock<(Option<String>, Duration)> = OnceLock::new();

/// Name this process's Ferry instance (`None`: the machine's name) and its lease term; once,
/// before any lease is taken. A second call changes nothing.
pub fn configure(instance: Option<String>, lease: Duration) {
    let _ = IDENTITY.set((instance.filter(|i| !i.is_empty()), lease.max(MIN_LEASE)));
}

/// This process as a holder of leases.
pub fn me() -> Owner {
    let (instance, lease) = IDENTITY.get().cloned().unwrap_or((None, DEFAULT_LEASE));
    let machine = crate::this_machine();
    Owner {
        instance: instance.unwrap_or_else(|| machine.clone()),
        machine,
        pid: std::process::id(),
        lease,
    }
}

/// Where `holder` stands now, judged from this process (the journal's clock; this machine's
/// processes).
pub fn stands(journal: &Journal, holder: &Holder) -> Result<Standing, JournalError> {
    Ok(holder.standing(
        journal.now_ms()?,
        &crate::this_machine(),
        crate::ferry_alive,
    ))
}

/// Whether a live Ferry (on any machine) holds the lock of `run`'s guest for that run.
pub fn drives(journal: &Journal, run: &ferry_journal::RunRow) -> Result<bool, JournalError> {
    Ok(match journal.holder(&run.guest)? {
        Some(h) if h.run == run.id => stands(journal, &h)? == Standing::Live,
        _ => false,
    })
}

/// How many migrations to or from each host (by URI) the live runs of every Ferry instance
/// sharing the journal are making, `except` this run.
pub fn migrations_by_host(
    journal: &Journal,
    except: Option<RunId>,
) -> Result<std::collections::BTreeMap<String, usize>, JournalError> {
    let (now, me) = (journal.now_ms()?, crate::this_machine());
    let mut by_host = std::collections::BTreeMap::new();
    for (run, holder) in journal.held_runs()? {
        if Some(run.id) == except || holder.standing(now, &me, crate::ferry_alive) != Standing::Live
        {
            continue;
        }
        for uri in [run.source, run.target] {
            *by_host.entry(uri).or_insert(0) += 1;
        }
    }
    Ok(by_host)
}

/// A lock this process took, watched by the keeper.
#[derive(Debug)]
struct Held {
    /// The journal it is in ([`Journal::identity`]).
    journal: String,
    run: RunId,
    guest: String,
    token: i64,
    /// Set once it is ours no longer.
    lost: Option<Lost>,
}

/// A lock this process lost: who holds it now (nobody, when it was given back by someone
/// else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub by: Option<Holder>,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.by {
            Some(h) => write!(f, "run #{} ({})", h.run, h.who()),
            None => f.write_str("nobody (the lock was given back by another Ferry)"),
        }
    }
}

static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    // A panic while holding the list leaves it as it was: still the truth.
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watch the lock `token` on `guest` in `journal` (taken for `run`) until [`forget`].
pub(crate) fn watch(journal: &Journal, run: RunId, guest: &str, token: i64) {
    held().push(Held {
        journal: journal.identity(),
        run,
        guest: guest.to_string(),
        token,
        lost: None,
    });
}

/// Stop watching the lock `token`.
pub(crate) fn forget(token: i64) {
    held().retain(|h| h.token != token);
}

/// Who took the lock of `journal`'s `run` from this process, if another Ferry did (fencing:
/// from then on, this process leaves the guest alone).
pub fn lost(journal: &Journal, run: RunId) -> Option<Lost> {
    let id = journal.identity();
    held()
        .iter()
        .find(|h| h.run == run && h.journal == id && h.lost.is_some())
        .and_then(|h| h.lost.clone())
}

/// One round of the keeper: renew this process's leases in `journal`, then look whether each
/// lock watched there is still ours.
pub fn renew_once(journal: &Journal, me: &Owner) -> Result<(), JournalError> {
    journal.renew(me)?;
    let id = journal.identity();
    let watched: Vec<(String, i64)> = held()
        .iter()
        .filter(|h| h.lost.is_none() && h.journal == id)
        .map(|h| (h.guest.clone(), h.token))
        .collect();
    for (guest, token) in watched {
        if !journal.holds(&guest, token)? {
            // Taken over (or given back by a `ferry release` of a dead run): ours no longer.
            let by = journal.holder(&guest)?;
            if let Some(h) = held().iter_mut().find(|h| h.token == token) {
                h.lost = Some(Lost { by });
            }
        }
    }
    Ok(())
}

/// Start the keeper for the journal `journal` was opened from, once per process: a Ferry
/// process works with one journal (a journal in memory has no other connection, and nobody to
/// share it with: no keeper).
pub fn keep(journal: &Journal) {
    static STARTED: OnceLock<()> = OnceLock::new();
    let Some(path) = journal.location().map(|p| p.to_path_buf()) else {
        return;
    };
    if STARTED.set(()).is_err() {
        return;
    }
    let me = me();
    let every = (me.lease / 3).max(Duration::from_millis(200));
    let _ = std::thread::Builder::new()
        .name("lease-keeper".into())
        .spawn(move || {
            let mut journal: Option<Journal> = None;
            // Forever: the process's end ends it. A journal that cannot be reached is tried
            // again next round (its connection is made again by the journal itself).
            wait::poll_until::<()>(wait::deadline_in(Duration::MAX), every, || {
                if journal.is_none() {
                    journal = Journal::open_existing(&path).ok();
                }
                if let Some(j) = &journal {
                    let _ = renew_once(j, &me);
                }
                None
            });
        });
}
