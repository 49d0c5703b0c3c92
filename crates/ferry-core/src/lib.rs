//! Ferry's pure core: no I/O, no libvirt.
//!
//! The flow it serves is **inventory → plan**: [`domain`] reads what a guest's domain XML says,
//! [`rules`] says how the target sees each disk, [`plan`] decides per disk and builds the
//! destination XML through the byte-exact [`rewrite`]; [`convergence`] reads a running job's
//! statistics (phase, rate, ETA) and holds the bandwidth policy.

pub mod convergence;
pub mod domain;
pub mod evacuate;
pub mod facts;
pub mod inventory;
pub mod limits;
pub mod placement;
pub mod plan;
pub mod preflight;
pub mod preseed;
pub mod release;
pub mod render;
pub mod rewrite;
pub mod rules;
pub mod storage;
pub mod xml;

pub use domain::{Disk, DiskSource, DiskType, Domain};
pub use plan::{plan, Decision, DiskPlan, MigrationOptions, Plan, PlanError};
pub use render::XmlFiles;
pub use rules::{CopyRule, MapRule, Origin, Rules};
