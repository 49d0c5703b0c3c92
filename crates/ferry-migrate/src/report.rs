//! How a run ended, as every front end reports it: one `Serialize` type per result, so the CLI's
//! JSON lines and a daemon's answers are the same document.

use serde::Serialize;

use crate::{GuestLocation, MigrateError, Summary};

/// A run's last JSON line: `{"event": "result", "outcome": …}`.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunResult<'a> {
    Migrated {
        summary: &'a Summary,
    },
    Error {
        /// The process's exit status for this error ([`MigrateError::exit_status`]).
        exit: u8,
        /// The error and its causes, on one line.
        message: String,
        error: ErrorReport<'a>,
    },
}

/// The line a reporter prints: the result, tagged as an event.
#[derive(Debug, Serialize)]
pub struct ResultEvent<'a, T: Serialize> {
    pub event: &'static str,
    #[serde(flatten)]
    pub result: &'a T,
}

impl<'a, T: Serialize> ResultEvent<'a, T> {
    pub fn new(result: &'a T) -> Self {
        ResultEvent {
            event: "result",
            result,
        }
    }
}

/// What went wrong, by kind, with its facts.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorReport<'a> {
    Refused {
        problems: &'a [crate::Problem],
    },
    Failed {
        cause: String,
        guest_location: GuestLocation,
        cleanup: &'a [crate::rollback::Cleanup],
    },
    VerifyFailed {
        problems: &'a [crate::verify::VerifyProblem],
        summary: &'a Summary,
    },
    Plan {
        message: String,
    },
    Host {
        message: String,
    },
    Journal {
        message: String,
    },
    Busy {
        message: String,
    },
    /// Another Ferry took the run's guest over; this one stopped touching it.
    LeaseLost {
        run: ferry_journal::RunId,
        /// Who holds the guest's lock now.
        holder: Option<&'a ferry_journal::Holder>,
    },
    Stopped {
        step: crate::Step,
        reason: crate::StopReason,
        waiting_on: &'a [String],
    },
    StepThread {
        step: crate::Step,
        message: &'a str,
    },
    NoTarget {
        hosts: &'a [ferry_core::placement::Verdict],
    },
}

impl MigrateError {
    /// The guest may be on the target (or its place is unknown): it did not simply stay.
    pub fn guest_may_have_moved(&self) -> bool {
        match self {
            Self::VerifyFailed { .. } => true,
            Self::Failed { location, .. } => !location.on_source(),
            _ => false,
        }
    }

    /// The exit status for this error: 3 when the guest may have moved, else 1.
    pub fn exit_status(&self) -> u8 {
        if self.guest_may_have_moved() {
            3
        } else {
            1
        }
    }

    /// The error's facts, by kind.
    pub fn report(&self) -> ErrorReport<'_> {
        match self {
            Self::Refused { problems } => ErrorReport::Refused { problems },
            Self::Failed {
                cause,
                location,
                cleanup,
                ..
            } => ErrorReport::Failed {
                cause: crate::error_chain(cause.as_ref()),
                guest_location: *location,
                cleanup,
            },
            Self::VerifyFailed { problems, summary } => {
                ErrorReport::VerifyFailed { problems, summary }
            }
            Self::Plan { source, .. } => ErrorReport::Plan {
                message: crate::error_chain(source.as_ref()),
            },
            Self::Host(h) => ErrorReport::Host {
                message: h.to_string(),
            },
            Self::Journal(j) => ErrorReport::Journal {
                message: crate::error_chain(j),
            },
            Self::Busy(b) => ErrorReport::Busy {
                message: b.to_string(),
            },
            Self::LeaseLost { run, lost, .. } => ErrorReport::LeaseLost {
                run: *run,
                holder: lost.by.as_ref(),
            },
            Self::Stopped {
                step,
                reason,
                waiting_on,
            } => ErrorReport::Stopped {
                step: *step,
                reason: *reason,
                waiting_on,
            },
            Self::StepThread { step, why } => ErrorReport::StepThread {
                step: *step,
                message: why,
            },
            Self::NoTarget { ranking, .. } => ErrorReport::NoTarget {
                hosts: &ranking.hosts,
            },
        }
    }

    /// The whole result line for this error.
    pub fn result(&self) -> RunResult<'_> {
        RunResult::Error {
            exit: self.exit_status(),
            message: crate::error_chain(self),
            error: self.report(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cause, Step, StopReason};

    fn failed(location: GuestLocation) -> MigrateError {
        MigrateError::Failed {
            guest: "g".into(),
            cause: Box::new(Cause::NoPath { disk: "vdb".into() }),
            location,
            cleanup: vec![],
        }
    }

    #[test]
    fn only_a_guest_that_may_have_moved_exits_3() {
        use GuestLocation::*;
        for (loc, exit) in [
            (Source, 1),
            (SourceShutOff, 1),
            (Target, 3),
            (Both, 3),
            (Neither, 3),
            (Unknown, 3),
            (PostcopySplit, 3),
        ] {
            assert_eq!(failed(loc).exit_status(), exit, "{loc:?}");
        }
        let verify = MigrateError::VerifyFailed {
            problems: vec![],
            summary: Box::default(),
        };
        assert_eq!(verify.exit_status(), 3);
        let stopped = MigrateError::Stopped {
            step: Step::Target,
            reason: StopReason::Cancelled,
            waiting_on: vec![],
        };
        assert_eq!(stopped.exit_status(), 1);
    }

    #[test]
    fn the_result_line_carries_the_kind_and_its_facts() {
        let e = MigrateError::Stopped {
            step: Step::Inventory,
            reason: StopReason::NoAnswer { within_s: 30 },
            waiting_on: vec!["qemu+tcp://h2/system".into()],
        };
        let v = serde_json::to_value(ResultEvent::new(&e.result())).unwrap();
        assert_eq!(v["event"], "result");
        assert_eq!(v["outcome"], "error");
        assert_eq!(v["exit"], 1);
        assert_eq!(v["error"]["kind"], "stopped");
        assert_eq!(v["error"]["step"], "inventory");
        assert_eq!(v["error"]["reason"]["reason"], "no_answer");
        assert_eq!(v["error"]["reason"]["within_s"], 30);
        assert_eq!(v["error"]["waiting_on"][0], "qemu+tcp://h2/system");
        let f = failed(GuestLocation::Source);
        let v = serde_json::to_value(ResultEvent::new(&f.result())).unwrap();
        assert_eq!(v["error"]["kind"], "failed");
        assert_eq!(v["error"]["guest_location"], "source");
        assert_eq!(v["error"]["cause"], "disk vdb has no path to copy");
    }
}
