//! `GET /metrics`: the daemon's migrations in Prometheus' text format. Per running migration
//! (labels `run`, `guest`): bytes remaining and processed (disk and memory apart), transfer
//! and dirty rates, the phase, the max downtime in force; over the daemon's life: outcomes by
//! kind and a histogram of downtimes. A finished run's series are removed.

use std::sync::Mutex;

use ferry_core::convergence::{Phase, Progress};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Run {
    run: String,
    guest: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunKind {
    run: String,
    guest: String,
    /// `disk` or `memory`.
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunPhase {
    run: String,
    guest: String,
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Evac {
    evacuation: String,
    host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvacState {
    evacuation: String,
    host: String,
    /// `total`, `done` or `running`.
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

type F64 = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    remaining: Family<RunKind, Gauge>,
    processed: Family<RunKind, Gauge>,
    rate: Family<Run, Gauge>,
    dirty: Family<Run, Gauge>,
    phase: Family<RunPhase, Gauge>,
    max_downtime: Family<Run, F64>,
    running: Gauge,
    outcomes: Family<Outcome, Counter>,
    downtime: Histogram,
    evac_guests: Family<EvacState, Gauge>,
    evac_remaining: Family<Evac, Gauge>,
    evac_end: Family<Evac, F64>,
    /// Each run's phase label now (to remove it when the phase changes).
    phases: Mutex<std::collections::HashMap<i64, String>>,
}

/// A phase as a label value.
pub fn phase_label(p: &Phase) -> &'static str {
    match p {
        Phase::Setup => "setup",
        Phase::StorageCopy => "storage_copy",
        Phase::Memory { .. } => "memory",
        Phase::Switchover => "switchover",
        Phase::Postcopy => "postcopy",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            registry: Registry::default(),
            remaining: Family::default(),
            processed: Family::default(),
            rate: Family::default(),
            dirty: Family::default(),
            phase: Family::default(),
            max_downtime: Family::default(),
            running: Gauge::default(),
            outcomes: Family::default(),
            // 25 ms to ~13 s.
            downtime: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.025, 2.0, 10,
            )),
            evac_guests: Family::default(),
            evac_remaining: Family::default(),
            evac_end: Family::default(),
            phases: Mutex::default(),
        };
        registry.register_with_unit(
            "migration_remaining",
            "Bytes the running migration has left to send, by kind (disk, memory)",
            Unit::Bytes,
            m.remaining.clone(),
        );
        registry.register_with_unit(
            "migration_processed",
            "Bytes the running migration has sent, by kind (disk, memory)",
            Unit::Bytes,
            m.processed.clone(),
        );
        registry.register(
            "migration_transfer_rate_bytes_per_second",
            "The running phase's transfer rate",
            m.rate.clone(),
        );
        registry.register(
            "migration_dirty_rate_bytes_per_second",
            "How fast the guest dirties what is being sent (memory, or its copied disks)",
            m.dirty.clone(),
        );
        registry.register(
            "migration_phase",
            "1 for the phase the running migration is in (setup, storage_copy, memory, \
             switchover, postcopy)",
            m.phase.clone(),
        );
        registry.register_with_unit(
            "migration_max_downtime",
            "The max downtime the convergence policy has asked of the job",
            Unit::Seconds,
            m.max_downtime.clone(),
        );
        registry.register(
            "migrations_running",
            "Migrations this daemon is running",
            m.running.clone(),
        );
        registry.register(
            "migrations",
            "Migrations this daemon ended, by outcome",
            m.outcomes.clone(),
        );
        registry.register_with_unit(
            "migration_downtime",
            "The downtime of the migrations this daemon ended with the guest moved",
            Unit::Seconds,
            m.downtime.clone(),
        );
        registry.register(
            "evacuation_guests",
            "The running evacuation's guests, by state (total, done, running)",
            m.evac_guests.clone(),
        );
        registry.register_with_unit(
            "evacuation_remaining",
            "Bytes the running evacuation has left to move (memory and copied disks)",
            Unit::Bytes,
            m.evac_remaining.clone(),
        );
        registry.register(
            "evacuation_predicted_end_timestamp_seconds",
            "When the model predicts the running evacuation ends (Unix time)",
            m.evac_end.clone(),
        );
        Metrics { registry, ..m }
    }

    fn evac(id: i64, host: &str) -> Evac {
        Evac {
            evacuation: id.to_string(),
            host: host.to_string(),
        }
    }

    fn evac_state(id: i64, host: &str, state: &str) -> EvacState {
        EvacState {
            evacuation: id.to_string(),
            host: host.to_string(),
            state: state.to_string(),
        }
    }

    /// An evacuation's figures now: guests in all, done and running, bytes left, and when the
    /// model says it ends (Unix seconds).
    pub fn evacuation(&self, id: i64, host: &str, guests: [u64; 3], remaining: u64, end_s: f64) {
        for (state, n) in ["total", "done", "running"].iter().zip(guests) {
            self.evac_guests
                .get_or_create(&Self::evac_state(id, host, state))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.evac_remaining
            .get_or_create(&Self::evac(id, host))
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
        self.evac_end
            .get_or_create(&Self::evac(id, host))
            .set(end_s);
    }

    /// An evacuation ended: its series go.
    pub fn evacuation_ended(&self, id: i64, host: &str) {
        for state in ["total", "done", "running"] {
            self.evac_guests.remove(&Self::evac_state(id, host, state));
        }
        self.evac_remaining.remove(&Self::evac(id, host));
        self.evac_end.remove(&Self::evac(id, host));
    }

    fn labels(run: i64, guest: &str) -> Run {
        Run {
            run: run.to_string(),
            guest: guest.to_string(),
        }
    }

    fn kind(run: i64, guest: &str, kind: &str) -> RunKind {
        RunKind {
            run: run.to_string(),
            guest: guest.to_string(),
            kind: kind.to_string(),
        }
    }

    pub fn started(&self) {
        self.running.inc();
    }

    /// A sample of the running job.
    pub fn sample(&self, run: i64, guest: &str, p: &Progress) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (disk, mem) = (
            Self::kind(run, guest, "disk"),
            Self::kind(run, guest, "memory"),
        );
        self.remaining
            .get_or_create(&disk)
            .set(g(p.disk_total.saturating_sub(p.disk_processed)));
        self.remaining.get_or_create(&mem).set(g(p.mem_remaining));
        self.processed.get_or_create(&disk).set(g(p.disk_processed));
        self.processed.get_or_create(&mem).set(g(p.mem_processed));
        let l = Self::labels(run, guest);
        self.rate.get_or_create(&l).set(g(p.rate_bps));
        self.dirty.get_or_create(&l).set(g(p.dirty_rate_bps));
        if let Some(ms) = p.max_downtime_ms {
            self.max_downtime.get_or_create(&l).set(ms as f64 / 1000.0);
        }
        let now = phase_label(&p.phase).to_string();
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = phases.insert(run, now.clone()) {
            if old != now {
                self.phase.remove(&RunPhase {
                    run: run.to_string(),
                    guest: guest.to_string(),
                    phase: old,
                });
            }
        }
        self.phase
            .get_or_create(&RunPhase {
                run: run.to_string(),
                guest: guest.to_string(),
                phase: now,
            })
            .set(1);
    }

    /// A run ended (`outcome`: its kind); its series go.
    pub fn ended(&self, run: Option<i64>, guest: &str, outcome: &str, downtime_ms: Option<u64>) {
        self.running.dec();
        self.outcomes
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(ms) = downtime_ms {
            self.downtime.observe(ms as f64 / 1000.0);
        }
        let Some(run) = run else { return };
        for k in ["disk", "memory"] {
            self.remaining.remove(&Self::kind(run, guest, k));
            self.processed.remove(&Self::kind(run, guest, k));
        }
        let l = Self::labels(run, guest);
        self.rate.remove(&l);
        self.dirty.remove(&l);
        self.max_downtime.remove(&l);
        let old = self
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        if let Some(phase) = old {
            self.phase.remove(&RunPhase {
                run: run.to_string(),
                guest: guest.to_string(),
                phase,
            });
        }
    }

    /// Prometheus' text format (0.0.4), which every scraper and promtool read: the registry's
    /// OpenMetrics without its `# UNIT` and `# EOF` lines, a counter's HELP and TYPE under its
    /// samples' name (`…_total`).
    pub fn render(&self) -> String {
        let mut open = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut open, &self.registry);
        let lines: Vec<&str> = open.lines().collect();
        let mut out = String::with_capacity(open.len());
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("# UNIT ") || *line == "# EOF" {
                continue;
            }
            let counter = |name: &str| {
                lines[i..]
                    .iter()
                    .take(3)
                    .any(|l| *l == format!("# TYPE {name} counter"))
            };
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counter(name).then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(phase: Phase) -> Progress {
        Progress {
            phase,
            elapsed_ms: 1000,
            disk_processed: 300,
            disk_total: 1000,
            mem_processed: 50,
            mem_total: 500,
            mem_remaining: 450,
            rate_bps: 7000,
            dirty_rate_bps: 10,
            eta_s: None,
            forecast: None,
            max_downtime_ms: Some(150),
        }
    }

    #[test]
    fn a_running_migration_has_its_figures_and_an_ended_one_none() {
        let m = Metrics::new();
        m.started();
        m.sample(7, "g", &progress(Phase::StorageCopy));
        m.sample(7, "g", &progress(Phase::Memory { iteration: 1 }));
        let t = m.render();
        for line in [
            "ferry_migration_remaining_bytes{run=\"7\",guest=\"g\",kind=\"disk\"} 700",
            "ferry_migration_remaining_bytes{run=\"7\",guest=\"g\",kind=\"memory\"} 450",
            "ferry_migration_processed_bytes{run=\"7\",guest=\"g\",kind=\"disk\"} 300",
            "ferry_migration_transfer_rate_bytes_per_second{run=\"7\",guest=\"g\"} 7000",
            "ferry_migration_phase{run=\"7\",guest=\"g\",phase=\"memory\"} 1",
            "ferry_migration_max_downtime_seconds{run=\"7\",guest=\"g\"} 0.15",
            "ferry_migrations_running 1",
        ] {
            assert!(t.contains(line), "{line} not in\n{t}");
        }
        assert!(
            !t.contains("phase=\"storage_copy\""),
            "the old phase went:\n{t}"
        );
        m.ended(Some(7), "g", "migrated", Some(120));
        let t = m.render();
        assert!(!t.contains("run=\"7\""), "{t}");
        assert!(
            t.contains("ferry_migrations_total{outcome=\"migrated\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("ferry_migration_downtime_seconds_count 1"),
            "{t}"
        );
        assert!(t.contains("ferry_migrations_running 0"), "{t}");
        m.evacuation(3, "h1", [3, 3, 0], 0, 1.0);
        m.evacuation_ended(3, "h1");
        assert!(!m.render().contains("evacuation=\"3\""));
    }

    /// Prometheus' own linter agrees with the names, units, types and help of every series
    /// (promtool, from Debian's prometheus package: `lab/setup` installs it).
    #[test]
    fn promtool_finds_nothing_to_say_about_the_metrics() {
        use std::io::Write;
        let m = Metrics::new();
        m.started();
        m.sample(7, "g", &progress(Phase::StorageCopy));
        m.started();
        m.sample(8, "h", &progress(Phase::Memory { iteration: 2 }));
        m.ended(Some(8), "h", "migrated", Some(150));
        m.evacuation(3, "h1", [3, 1, 1], 1 << 30, 1.8e9);
        let text = m.render();
        assert!(
            text.contains("ferry_evacuation_guests{evacuation=\"3\",host=\"h1\",state=\"done\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_evacuation_remaining_bytes{evacuation=\"3\",host=\"h1\"} 1073741824"
            ),
            "{text}"
        );
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; lab/setup installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );
    }
}
