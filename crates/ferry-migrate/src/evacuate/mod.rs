//! `ferry evacuate`: every running guest off a host.
//!
//! Facts first, decided once: [`plan`] reads every host and ranks the targets of each guest
//! ([`crate::target::select`]), then the core places them all
//! ([`ferry_core::evacuate::place`]: no two guests promised the same memory or room) and
//! predicts the schedule with the model. [`execute`] then runs the migrations — each one the
//! whole `ferry migrate` flow, with its own lock, journal run, checks and rollback — starting
//! them when the core's [`dispatch`] says so, fed with the live figures of those in flight, and
//! sharing each link among them by setting each migration's bandwidth.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::evacuate::schedule::{live_transfer_left, order, share_on_start};
use ferry_core::evacuate::{
    dispatch, lower_bound, place, shares, simulate, Budgets, Flight, FlightPhase, HostRoom, Link,
    Move, Overheads, Policy, SimResult, Wanted,
};
use ferry_core::inventory::{HostState, Inventory, Store};
use ferry_core::placement::Ranking;
use ferry_core::{MigrationOptions, Rules};
use ferry_hypervisor::Hypervisor;
use ferry_journal::{Journal, JournalError};
use serde::Serialize;

use crate::target::{self, HostSpec, SelectRequest};
use crate::{Ask, Event, MigrateError, Outcome, Reporter, Step, Summary};

mod ask;
mod journal;
mod plan;
mod run;
mod verdict;

pub use ask::{begin, link_bandwidths, targets, AskError};
pub use journal::{draining, end_interrupted, interrupted, mark_draining};
pub use plan::plan;
pub use run::{execute, ABORT_ALL, GO, NO_NEW};
pub use verdict::{conclude, decide_verdict, EvacuationResult, Verdict};

const MIB: f64 = (1u64 << 20) as f64;

/// A link whose bandwidth nobody gave is modelled at 10 Gbit/s, and no migration is capped.
pub const DEFAULT_LINK_BPS: f64 = 10e9 / 8.0;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct EvacuateAsk {
    pub host: HostSpec,
    /// The hosts the guests may go to (`--to`, or every other inventory host).
    pub candidates: Vec<HostSpec>,
    pub inventory: Option<Arc<Inventory>>,
    /// The transport and policy every migration uses (its bandwidth is set per migration).
    pub options: MigrationOptions,
    pub policy: Policy,
    pub budgets: Budgets,
    /// Every host's link in MiB/s, by host name (`--link-bandwidth` for all, or the
    /// inventory's); a host not listed is not known.
    pub link_mib: Vec<(String, u64)>,
    pub answer_deadline: Duration,
    pub abort_grace: Duration,
    /// Retry a migration that failed with the guest still on the source once, on the
    /// next-ranked host.
    pub retry: bool,
    /// Move the shut-off guests too, cold ([`crate::cold`]); otherwise they are listed.
    pub offline: bool,
}

/// The evacuation decided: where each guest goes, and the schedule the model predicts.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EvacPlan {
    /// The source first, then the candidates.
    pub hosts: Vec<HostSpec>,
    pub links: Vec<Link>,
    /// Whether every link's bandwidth is known (then each migration's bandwidth is capped at
    /// its share).
    pub bandwidth_known: bool,
    pub moves: Vec<Move>,
    /// Running guests no host can take, and why.
    pub unplaced: Vec<(String, String)>,
    /// Guests defined on the host but not running, not moved (without `offline`).
    pub shut_off: Vec<String>,
    pub rankings: Vec<(String, Ranking)>,
    /// The model's prediction of this schedule, and the bound no schedule beats.
    pub predicted: SimResult,
    pub bound_s: f64,
    /// Seconds Ferry took to read the hosts and decide.
    pub planning_ms: u64,
}

impl EvacPlan {
    /// Every running guest has a place: carried out, the plan empties the host.
    pub fn empties_the_host(&self) -> bool {
        self.unplaced.is_empty()
    }
}

/// How one guest's evacuation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestOutcome {
    /// Migrated and verified on its target.
    Migrated,
    /// Failed; the guest runs on the source still (its target cleaned).
    StayedOnSource,
    /// Failed, and the guest is not (only) on the source: read the message; `ferry recover`.
    Uncertain,
    /// Never started: Ctrl-C, or no host could take it.
    NotStarted,
}

/// One guest's line in the final table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GuestResult {
    pub guest: String,
    /// The last target tried.
    pub target: Option<String>,
    pub outcome: GuestOutcome,
    pub attempts: u32,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub message: Option<String>,
    /// The journal's runs, one per attempt.
    pub runs: Vec<ferry_journal::RunId>,
}

/// What the evacuation reports while it runs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EvacEvent {
    /// A migration starts (again, for a retry), at this bandwidth cap.
    Started {
        guest: String,
        to: String,
        attempt: u32,
        bandwidth_mib: Option<u64>,
    },
    /// One of a migration's own events.
    Migration { guest: String, inner: Event },
    /// A migration's bandwidth changed: the link's share moved.
    Bandwidth { guest: String, mib: u64 },
    /// A migration ended.
    Ended(GuestResult),
    /// Ctrl-C or a stop: what happens now.
    Stopping { message: String },
}

/// What the evacuation's live view is told.
pub trait EvacReporter {
    fn report(&mut self, e: EvacEvent);
}

impl EvacReporter for Vec<EvacEvent> {
    fn report(&mut self, e: EvacEvent) {
        self.push(e);
    }
}
