//! Accounting per (Deployment, target): what each Deployment's series did
//! at each target, for the Deployment's export status.
//!
//! # Design
//! A label variant of the routing plan belongs to one Deployment (its
//! stamped labels name it), so every chunk does too: the plan gives each
//! variant its Deployment's [`Owners`] index, a small number stable for the
//! life of the process, and the chunk carries it. A target counts, under
//! the lock it already holds, per owner: samples accepted (pushed), sent
//! (a batch's chunks, when the batch is delivered), dropped `queue_full` and
//! `rejected`, and moved to the disk spill. That is a map update per chunk
//! and per delivered batch's chunk, nothing per sample.
//!
//! The disk spill keeps records, not their owner: samples read back from
//! disk are counted for the target (its own counters) but not per
//! Deployment; a Deployment's `spilled` says how much of its data went
//! there. The last minute's figures are kept in six 10-second buckets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// The owner of data whose Deployment is not known (read back from disk).
pub const UNKNOWN: u32 = u32::MAX;

/// Deployment ids and their small, stable numbers.
#[derive(Debug, Default)]
pub struct Owners {
    ids: Mutex<HashMap<String, u32, foldhash::fast::RandomState>>,
}

impl Owners {
    /// The number of Deployment `id` (given once, kept for the process).
    pub fn intern(&self, id: &str) -> u32 {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&n) = ids.get(id) {
            return n;
        }
        let n = ids.len() as u32;
        ids.insert(id.to_owned(), n);
        n
    }

    /// The number of Deployment `id`, if it has one.
    pub fn find(&self, id: &str) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }
}

/// Why a Deployment's samples were dropped at a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The target's memory queue was full and it has no spill room.
    QueueFull,
    /// The target refused them (non-retryable status).
    Rejected,
}

/// A count over the last minute, in six 10-second buckets.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// (10-second period since the epoch, count).
    buckets: [(u64, u64); 6],
}

impl Window {
    fn add(&mut self, wall: SystemTime, n: u64) {
        let period = period(wall);
        let b = &mut self.buckets[(period % 6) as usize];
        if b.0 != period {
            *b = (period, 0);
        }
        b.1 += n;
    }

    fn sum(&self, wall: SystemTime) -> u64 {
        let now = period(wall);
        self.buckets
            .iter()
            .filter(|(p, _)| *p + 6 > now && *p <= now)
            .map(|(_, n)| n)
            .sum()
    }
}

fn period(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 10)
}

/// One Deployment's counts at one target.
#[derive(Debug, Default, Clone)]
struct Counts {
    accepted: u64,
    sent: u64,
    queue_full: u64,
    rejected: u64,
    spilled: u64,
    last_sent: Option<SystemTime>,
    sent_1m: Window,
    queue_full_1m: Window,
    rejected_1m: Window,
}

/// What a target reports of one Deployment's samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairStatus {
    /// Samples queued for the target.
    pub accepted: u64,
    /// Samples delivered (from memory).
    pub sent: u64,
    /// Dropped: queue full.
    pub queue_full: u64,
    /// Dropped: refused by the target.
    pub rejected: u64,
    /// Moved to the disk spill.
    pub spilled: u64,
    /// When a batch with its samples was last delivered.
    pub last_sent: Option<SystemTime>,
    /// Delivered in the last minute.
    pub sent_1m: u64,
    /// Dropped `queue_full` in the last minute.
    pub queue_full_1m: u64,
    /// Dropped `rejected` in the last minute.
    pub rejected_1m: u64,
}

/// A target's counts per owner.
#[derive(Debug, Default)]
pub struct Accounts {
    by_owner: HashMap<u32, Counts, foldhash::fast::RandomState>,
}

impl Accounts {
    fn of(&mut self, owner: u32) -> &mut Counts {
        self.by_owner.entry(owner).or_default()
    }

    /// `samples` of `owner` were queued.
    pub fn accepted(&mut self, owner: u32, samples: u32) {
        self.of(owner).accepted += u64::from(samples);
    }

    /// `samples` of `owner` went to the disk spill.
    pub fn spilled(&mut self, owner: u32, samples: u32) {
        self.of(owner).spilled += u64::from(samples);
    }

    /// `samples` of `owner` were delivered at `wall`.
    pub fn sent(&mut self, owner: u32, samples: u32, wall: SystemTime) {
        let c = self.of(owner);
        c.sent += u64::from(samples);
        c.sent_1m.add(wall, u64::from(samples));
        c.last_sent = Some(wall);
    }

    /// `samples` of `owner` were dropped for `reason` at `wall`.
    pub fn dropped(&mut self, owner: u32, samples: u32, reason: DropReason, wall: SystemTime) {
        let c = self.of(owner);
        let n = u64::from(samples);
        match reason {
            DropReason::QueueFull => {
                c.queue_full += n;
                c.queue_full_1m.add(wall, n);
            }
            DropReason::Rejected => {
                c.rejected += n;
                c.rejected_1m.add(wall, n);
            }
        }
    }

    /// What `owner`'s samples did here, as of `wall`.
    pub fn status(&self, owner: u32, wall: SystemTime) -> Option<PairStatus> {
        let c = self.by_owner.get(&owner)?;
        Some(PairStatus {
            accepted: c.accepted,
            sent: c.sent,
            queue_full: c.queue_full,
            rejected: c.rejected,
            spilled: c.spilled,
            last_sent: c.last_sent,
            sent_1m: c.sent_1m.sum(wall),
            queue_full_1m: c.queue_full_1m.sum(wall),
            rejected_1m: c.rejected_1m.sum(wall),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deliver_accounting_counts_per_owner_and_forgets_after_a_minute() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = Accounts::default();
        a.accepted(1, 10);
        a.accepted(2, 5);
        a.sent(1, 7, t0);
        a.dropped(1, 3, DropReason::Rejected, t0 + Duration::from_secs(15));
        let s = a.status(1, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(
            (s.accepted, s.sent, s.rejected, s.sent_1m, s.rejected_1m),
            (10, 7, 3, 7, 3)
        );
        assert_eq!(s.last_sent, Some(t0));
        // A minute later the window is empty; the totals stay.
        let s = a.status(1, t0 + Duration::from_secs(80)).unwrap();
        assert_eq!((s.sent, s.sent_1m, s.rejected_1m), (7, 0, 0));
        assert_eq!(a.status(2, t0).unwrap().sent, 0);
        assert!(a.status(3, t0).is_none());
    }

    #[test]
    fn deliver_accounting_owners_are_stable() {
        let o = Owners::default();
        let (a, b) = (o.intern("d1"), o.intern("d2"));
        assert_ne!(a, b);
        assert_eq!(o.intern("d1"), a);
        assert_eq!(o.find("d2"), Some(b));
        assert_eq!(o.find("d1"), Some(a));
        assert_eq!(o.find("d3"), None);
    }
}
