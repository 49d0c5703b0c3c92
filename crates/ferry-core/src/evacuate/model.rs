//! One migration's cost.
//!
//! A live migration with copied disks is, seen from the link: a setup that sends nothing (the
//! target's QEMU starts, the NBD server opens), the disk copy (every byte once, while the guest
//! keeps running), the memory pre-copy (memory once, plus whatever the guest dirties while it
//! is sent), then a switchover and Ferry's verification, which send almost nothing. The model
//! keeps exactly that shape: [`Overheads`] for the parts off the link, bytes and a dirty rate
//! for the parts on it.

use serde::Serialize;

/// A host's network link for migration streams, in bytes per second each way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Link {
    pub out_bps: f64,
    pub in_bps: f64,
}

impl Link {
    /// The same bandwidth both ways.
    pub fn symmetric(bps: f64) -> Self {
        Link {
            out_bps: bps,
            in_bps: bps,
        }
    }
}

/// The parts of a migration that do not use the link, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Overheads {
    /// Connections, the target's volumes and QEMU, the mirrors' start.
    pub setup_s: f64,
    /// Switchover (the guest paused), the target's verification, the source's clean-up.
    pub finish_s: f64,
}

impl Default for Overheads {
    /// Until a run measures them: a setup of 2 s and a finish of 1.5 s, what a KVM host with
    /// a few GiB of guest memory takes. The lab's small TCG guests need less (about 1 s and
    /// 0.5 s); `ferry evacuate` replaces the setup with the one it measures.
    fn default() -> Self {
        Overheads {
            setup_s: 2.0,
            finish_s: 1.5,
        }
    }
}

/// One guest to move: from which host to which, and what it costs.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Move {
    pub guest: String,
    /// Host indexes (into the caller's host list).
    pub from: usize,
    pub to: usize,
    /// The next-ranked targets, for a retry after a failure.
    pub fallback: Vec<usize>,
    /// Guest memory and the bytes of its copied disks.
    pub memory: u64,
    pub disk: u64,
    /// How fast the guest dirties memory, bytes per second (0 when unknown).
    pub dirty_bps: f64,
    /// A shut-off guest moved cold: only its disks cross the link (`memory` is what it will
    /// need on the target, never sent).
    pub cold: bool,
}

/// Below this share of its bandwidth a migration is assumed to make progress anyway (QEMU's
/// auto-converge throttles the guest; Ferry's policy raises the downtime): it keeps the model
/// finite for a guest that dirties faster than its link.
pub const MIN_NET_SHARE: f64 = 0.05;

impl Move {
    /// The bytes the link carries at least: the disks and the memory, once each (a cold move:
    /// its disks only).
    pub fn bytes(&self) -> u64 {
        self.sent_memory() + self.disk
    }

    /// The memory a migration sends: none for a cold move.
    pub fn sent_memory(&self) -> u64 {
        if self.cold {
            0
        } else {
            self.memory
        }
    }

    /// The rate at which the memory still to send shrinks at bandwidth `bps`.
    pub fn net_memory_bps(&self, bps: f64) -> f64 {
        (bps - self.dirty_bps).max(bps * MIN_NET_SHARE)
    }

    /// Seconds on the link at bandwidth `bps`: the disk copy, then the memory pre-copy.
    pub fn transfer_s(&self, bps: f64) -> f64 {
        if bps <= 0.0 {
            return f64::INFINITY;
        }
        self.disk as f64 / bps + self.sent_memory() as f64 / self.net_memory_bps(bps)
    }

    /// Bytes on the wire at bandwidth `bps`: the memory is sent again as fast as it is dirtied.
    pub fn wire_bytes(&self, bps: f64) -> f64 {
        self.disk as f64 + self.sent_memory() as f64 * bps / self.net_memory_bps(bps)
    }

    /// The whole migration at bandwidth `bps`, overheads included.
    pub fn duration_s(&self, bps: f64, ov: &Overheads) -> f64 {
        ov.setup_s + self.transfer_s(bps) + ov.finish_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mv(memory: u64, disk: u64, dirty: f64) -> Move {
        Move {
            guest: "g".into(),
            from: 0,
            to: 1,
            fallback: vec![],
            memory,
            disk,
            dirty_bps: dirty,
            cold: false,
        }
    }

    #[test]
    fn a_quiet_guest_sends_each_byte_once() {
        let m = mv(256 * MIB, 64 * MIB, 0.0);
        let bps = 32.0 * MIB as f64;
        assert_eq!(m.transfer_s(bps), 10.0);
        assert_eq!(m.wire_bytes(bps), (320 * MIB) as f64);
        assert_eq!(m.duration_s(bps, &Overheads::default()), 13.5);
    }

    #[test]
    fn dirtying_costs_resent_memory_and_time() {
        // Dirtying half the bandwidth: memory drains at half the rate, so it is sent twice.
        let bps = 32.0 * MIB as f64;
        let m = mv(256 * MIB, 0, 16.0 * MIB as f64);
        assert_eq!(m.transfer_s(bps), 16.0);
        assert_eq!(m.wire_bytes(bps), (512 * MIB) as f64);
        // Less bandwidth hurts more than in proportion: that is why sharing a link is costly.
        assert!(m.transfer_s(bps / 2.0) > 10.0 * m.transfer_s(bps));
    }

    #[test]
    fn a_cold_move_sends_its_disks_only() {
        let mut m = mv(256 * MIB, 64 * MIB, 16.0 * MIB as f64);
        m.cold = true;
        let bps = 32.0 * MIB as f64;
        assert_eq!(m.bytes(), 64 * MIB);
        assert_eq!(m.transfer_s(bps), 2.0);
        assert_eq!(m.wire_bytes(bps), (64 * MIB) as f64);
    }

    #[test]
    fn a_guest_faster_than_its_link_still_ends_in_the_model() {
        let m = mv(256 * MIB, 0, 64.0 * MIB as f64);
        let bps = 32.0 * MIB as f64;
        assert_eq!(m.net_memory_bps(bps), bps * MIN_NET_SHARE);
        assert!(m.transfer_s(bps).is_finite());
        assert_eq!(m.transfer_s(0.0), f64::INFINITY);
    }
}
