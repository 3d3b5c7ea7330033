//! The types at the edges of a [`DiskQueue`](super::DiskQueue): its sizes,
//! what is appended and read back, what opening found, and its gauges.

use bytes::Bytes;

use super::DiskQueue;

/// Sizes of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskQueueConfig {
    /// A segment is closed and a new one started once it would exceed this.
    pub segment_bytes: u64,
    /// Queued (unacked) record bytes above which the oldest are dropped.
    pub budget_bytes: u64,
}

impl Default for DiskQueueConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            budget_bytes: 1 << 30,
        }
    }
}

impl DiskQueueConfig {
    /// The segment size used: at most a quarter of the budget (so deleting
    /// whole segments keeps disk use near the budget), at least 64 KiB.
    pub fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.min(self.budget_bytes / 4).max(64 << 10)
    }
}

/// One batch as the spill stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The final compressed request body, replayed as is.
    pub body: Bytes,
    /// Samples in the batch (for accounting on drop).
    pub samples: u32,
    /// Unix milliseconds when the data was first enqueued.
    pub enqueued_ms: u64,
    /// Opaque value for delivery (e.g. a protocol or stream id).
    pub tag: u64,
}

/// A record read back from the queue, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// Queue sequence number; pass it to [`DiskQueue::ack_through`].
    pub seq: u64,
    /// The record.
    pub record: Record,
}

/// What [`DiskQueue::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence number given to the appended record.
    pub seq: u64,
    /// Records dropped, oldest first, to stay within the budget (`disk_full`).
    pub dropped_records: u64,
    /// Bytes of those records, as counted against the budget.
    pub dropped_bytes: u64,
    /// Samples of those records.
    pub dropped_samples: u64,
    /// Highest seq dropped, if any: records at or below it that delivery
    /// still holds in flight are no longer on disk.
    pub dropped_through: Option<u64>,
}

/// What [`DiskQueue::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacked records recovered.
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Bytes cut from segment tails (torn or unreadable).
    pub truncated_bytes: u64,
    /// Records lost to corruption: each retired frame, plus one for each
    /// cut tail (a cut tail holds at least one record, possibly more).
    pub corrupt_records_dropped: u64,
    /// The last segment ended in a record cut short (a torn write).
    pub torn_tail: bool,
    /// The ledger was damaged: everything on disk is replayed (duplicates
    /// rather than loss).
    pub ledger_reset: bool,
}

/// What [`DiskQueue::reopen`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reopened {
    /// What recovery of the directory found and repaired.
    pub recovery: Recovery,
    /// True when the queue had never opened before (its first open failed,
    /// or it never made its directory): the recovered records are unknown
    /// to delivery, and its manifest is still to be written.
    pub first_open: bool,
    /// Unacked records not yet handed out by [`DiskQueue::read`] that were no
    /// longer on disk (cut or retired by recovery): lost in the failure.
    pub lost_records: u64,
    /// Samples of those records.
    pub lost_samples: u64,
}

/// A queue directory recovered by [`DiskQueue::recover`], to hand to
/// [`DiskQueue::adopt`].
#[derive(Debug)]
pub struct Recovered {
    pub(super) queue: DiskQueue,
    pub(super) recovery: Recovery,
}

/// When to try [`DiskQueue::reopen`] again: 1 s after the queue is found
/// broken, then doubling up to 30 s while reopening fails. A queue that
/// breaks again within 30 s of a successful reopen (a disk still full: the
/// recovery only reads, the next ledger write fails again) goes on doubling
/// instead of starting over, so a persistent fault costs one recovery scan
/// per 30 s. Plain state driven by `now`, so it is tested without sleeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReopenBackoff {
    /// The next attempt, while the queue is broken.
    next_at: Option<std::time::Instant>,
    /// Delay before the attempt after the next one fails.
    delay: std::time::Duration,
    /// Last successful reopen.
    reopened_at: Option<std::time::Instant>,
}

impl ReopenBackoff {
    /// First delay after the queue is found broken.
    pub const FIRST: std::time::Duration = std::time::Duration::from_secs(1);
    /// Longest delay between attempts.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(30);

    /// The queue is (still) broken at `now`: true when an attempt is due.
    /// The first call after it broke only schedules the first attempt.
    pub fn due(&mut self, now: std::time::Instant) -> bool {
        match self.next_at {
            None => {
                let recent = self
                    .reopened_at
                    .is_some_and(|t| now.saturating_duration_since(t) < Self::MAX);
                let d = if recent {
                    self.delay.clamp(Self::FIRST, Self::MAX)
                } else {
                    Self::FIRST
                };
                self.next_at = Some(now + d);
                self.delay = (d * 2).min(Self::MAX);
                false
            }
            Some(t) => now >= t,
        }
    }

    /// An attempt at `now` failed: the next one waits twice as long (capped).
    pub fn failed(&mut self, now: std::time::Instant) {
        let d = self.delay.clamp(Self::FIRST, Self::MAX);
        self.next_at = Some(now + d);
        self.delay = (d * 2).min(Self::MAX);
    }

    /// The queue was reopened at `now`.
    pub fn reopened(&mut self, now: std::time::Instant) {
        self.next_at = None;
        self.reopened_at = Some(now);
    }

    /// The next attempt, if one is scheduled.
    pub fn next_at(&self) -> Option<std::time::Instant> {
        self.next_at
    }
}

/// Gauges and counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Unacked records (including those read and in flight).
    pub records: u64,
    /// Their bytes on disk, as counted against the budget.
    pub bytes: u64,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Enqueue time of the oldest unacked record, unix ms.
    pub oldest_enqueued_ms: Option<u64>,
    /// Records dropped for the budget since open (`disk_full`).
    pub dropped_records: u64,
    /// Records found corrupt while reading since open.
    pub corrupt_records: u64,
    /// The last append failed for lack of space (ENOSPC or a quota); an
    /// append that succeeds, or a sync round that deletes segments, clears it.
    pub space_short: bool,
}
