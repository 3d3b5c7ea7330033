//! What a [`TargetCore`] shows: its state, queued bytes and samples, age of
//! the oldest data, in-flight requests, limit, counters, last error and
//! latency (read by the stats, the API and `/metrics`).

use std::time::{Duration, Instant};

use super::{Counters, LastError, TargetCore, FAILING_AFTER};

impl TargetCore {
    /// Nothing queued and nothing in flight or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.batches.is_empty()
            && self.lanes.iter().all(|l| {
                l.queue.is_empty() && l.disk.is_empty() && l.disk_through <= self.read_through
            })
    }

    /// Nothing in memory (queued, reloaded or in a batch); disk records may
    /// remain.
    pub fn memory_empty(&self) -> bool {
        self.batches.is_empty()
            && self
                .lanes
                .iter()
                .all(|l| l.queue.is_empty() && l.disk.is_empty())
    }

    /// Bytes and samples of disk records read back into memory.
    pub fn reloaded(&self) -> (u64, u64) {
        (self.reload_bytes, self.reload_samples)
    }

    /// Samples queued or in a batch not yet delivered.
    pub fn pending_samples(&self) -> u64 {
        self.queue_samples
            + self.reload_samples
            + self
                .batches
                .iter()
                .map(|b| u64::from(b.samples))
                .sum::<u64>()
    }

    /// `healthy`, `retrying`, `failing` or `paused`.
    pub fn state(&self, now: Instant) -> &'static str {
        if self.paused {
            "paused"
        } else {
            match self.failing_since {
                None => "healthy",
                Some(t) if now.saturating_duration_since(t) > FAILING_AFTER => "failing",
                Some(_) => "retrying",
            }
        }
    }

    /// Queued bytes (memory).
    pub fn queue_bytes(&self) -> u64 {
        self.queue_bytes
    }

    /// Queued samples (memory, not yet in a batch).
    pub fn queue_samples(&self) -> u64 {
        self.queue_samples
    }

    /// Age of the oldest data not yet delivered.
    pub fn oldest_queued(&self, now: Instant) -> Duration {
        self.lanes
            .iter()
            .flat_map(|l| {
                l.queue
                    .front()
                    .map(|c| c.enqueued)
                    .into_iter()
                    .chain(l.disk.front().map(|(_, c)| c.enqueued))
            })
            .chain(self.batches.iter().map(|b| b.oldest))
            .min()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The adaptive concurrency limit.
    pub fn concurrency(&self) -> u32 {
        self.concurrency.limit()
    }

    /// Cumulative counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts samples of a delivered batch that the receiver said it did
    /// not write (a 2.0 partial write) as `rejected`.
    pub fn count_unwritten(&mut self, samples: u64) {
        self.counters.dropped_rejected += samples;
    }

    /// The last error.
    pub fn last_error(&self) -> Option<&LastError> {
        self.last_error.as_ref()
    }

    /// Send latency histogram (microseconds); `None` before the first
    /// answer.
    pub fn latency_us(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        self.latency_us.as_deref()
    }
}
