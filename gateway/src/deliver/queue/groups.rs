//! Lane groups: the lanes of a group as a bit mask, and the load meter
//! whose rate the adaptive limit (the group count) follows.
//!
//! [`Concurrency::on_load`]: crate::deliver::policy::Concurrency::on_load

use std::time::{Duration, Instant};

/// Samples per second arriving at a target (pushed or read back from
/// disk), over windows of at least [`LoadMeter::WINDOW`] (for
/// [`Concurrency::on_load`]).
#[derive(Debug, Default)]
pub(super) struct LoadMeter {
    since: Option<Instant>,
    samples: u64,
    rate: f64,
}

impl LoadMeter {
    const WINDOW: Duration = Duration::from_millis(250);

    /// Adds `samples` at `now`; returns the rate when a window closed.
    pub(super) fn add(&mut self, samples: u32, now: Instant) -> Option<f64> {
        self.samples += u64::from(samples);
        let since = *self.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed < Self::WINDOW {
            return None;
        }
        let rate = self.samples as f64 / elapsed.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            rate
        } else {
            self.rate * 0.5 + rate * 0.5
        };
        self.since = Some(now);
        self.samples = 0;
        Some(self.rate)
    }
}

/// The lanes of group `g` out of `groups` (a power of two) among `n` lanes,
/// as a bit mask.
pub(super) fn group_mask(g: usize, groups: usize, n: usize) -> u64 {
    (g..n).step_by(groups).fold(0u64, |m, l| m | (1u64 << l))
}

/// Lane indexes of a mask, lowest first.
pub(super) fn mask_lanes(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            l
        })
    })
}
