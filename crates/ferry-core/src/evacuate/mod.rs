//! Evacuating a host: every guest off it, placed, then scheduled under link and host budgets.
//!
//! Pure code, in the flow's order:
//! - [`model`]: what one migration costs — the bytes it puts on which links, how long it takes
//!   at a bandwidth while its guest dirties memory, the parts that do not use the link;
//! - [`place`]: each guest's target from its ranking, every placement consuming the target's
//!   memory and local room for the next decision;
//! - [`schedule`]: which migrations run now, at what bandwidth — one decision function used
//!   both by `ferry evacuate` (with live figures) and by the simulator (with the model's);
//! - [`sim`]: the model driven over time (a fluid simulation), a fleet generator, the lower
//!   bound, and the comparison of policies.

pub mod model;
pub mod place;
pub mod schedule;
pub mod sim;

pub use model::{Link, Move, Overheads};
pub use place::{place, HostRoom, Placed, Wanted};
pub use schedule::{dispatch, shares, Budgets, Flight, FlightPhase, Policy};
pub use sim::{lower_bound, simulate, Contender, Drain, Fleet, SimResult, CONTENDERS};
