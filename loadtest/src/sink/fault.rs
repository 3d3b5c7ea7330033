//! Failure injection: what a [`Fault`] does to one request.
//!
//! A fault is set when the sink starts or at any time with
//! [`super::SinkHandle::set_fault`]; a status period (`status_for`) runs
//! from that moment. For request number `n` (1, 2, ... in arrival order)
//! [`Fault::verdict`] says:
//! - how long to wait before answering: `delay` plus a jitter uniform in
//!   `0..=jitter`, drawn from `n` (a fixed mix, no shared random state, so
//!   concurrent requests never contend and a run is repeatable);
//! - the status to answer instead of recording (an outage), while its
//!   period lasts;
//! - whether to reset the connection (every `reset_every`-th request);
//! - whether to record the request and then answer 503 as if the answer
//!   were lost (every `lose_answer_every`-th request).
//!
//! Pure: the caller passes the time elapsed since the fault was set.

use std::time::Duration;

/// Injected failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Answer every request with this status instead of recording it
    /// (a 429 or 503 with `Retry-After: 1` unless `no_retry_after`).
    pub status: Option<u16>,
    /// Injected 429 and 503 answers carry no `Retry-After`.
    pub no_retry_after: bool,
    /// How long `status` applies from when the fault is set (`None`: until changed).
    pub status_for: Option<Duration>,
    /// Delay before every answer.
    pub delay: Duration,
    /// Extra delay before every answer, uniform in `0..=jitter` (a slow
    /// endpoint's spread).
    pub jitter: Duration,
    /// Reset the connection of every n-th request (0: never).
    pub reset_every: u64,
    /// Record every n-th accepted request, then answer it 503 as if the
    /// answer had been lost on the way back (0: never): the sender retries
    /// and its samples arrive twice (duplicates, never out of order).
    pub lose_answer_every: u64,
}

/// What the fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Wait this long before answering.
    pub(super) wait: Duration,
    /// Answer this status instead of recording.
    pub(super) status: Option<u16>,
    /// With `Retry-After: 1` (a 429 or 503).
    pub(super) retry_after: bool,
    /// Reset the connection instead of answering.
    pub(super) reset: bool,
    /// Record, then answer 503 (a lost answer).
    pub(super) lose_answer: bool,
}

impl Fault {
    /// The verdict for request `n`, `since` after the fault was set.
    pub(super) fn verdict(&self, n: u64, since: Duration) -> Verdict {
        let every = |k: u64| k > 0 && n % k == 0;
        Verdict {
            wait: self.delay + jitter(n, self.jitter),
            status: self
                .status
                .filter(|_| self.status_for.is_none_or(|d| since < d)),
            retry_after: !self.no_retry_after,
            reset: every(self.reset_every),
            lose_answer: every(self.lose_answer_every),
        }
    }
}

/// A duration uniform in `0..=max`, drawn from `n` (splitmix64).
fn jitter(n: u64, max: Duration) -> Duration {
    let span = max.as_nanos().min(u128::from(u64::MAX - 1)) as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Duration::from_nanos(z % (span + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound_and_spreads() {
        let max = Duration::from_millis(50);
        let waits: Vec<Duration> = (1..=2000).map(|n| jitter(n, max)).collect();
        assert!(waits.iter().all(|w| *w <= max));
        let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
        assert!(
            (Duration::from_millis(20)..Duration::from_millis(30)).contains(&mean),
            "{mean:?}"
        );
        let low = waits
            .iter()
            .filter(|w| **w < Duration::from_millis(5))
            .count();
        assert!((100..300).contains(&low), "{low} of 2000 below a tenth");
        assert_eq!(jitter(7, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn verdict_applies_delay_status_period_and_every_nth() {
        let f = Fault {
            status: Some(503),
            status_for: Some(Duration::from_secs(30)),
            delay: Duration::from_millis(300),
            jitter: Duration::from_millis(50),
            reset_every: 3,
            lose_answer_every: 4,
            no_retry_after: false,
        };
        let v = f.verdict(12, Duration::from_secs(29));
        assert_eq!(v.status, Some(503));
        assert!(v.retry_after);
        let bare = Fault {
            no_retry_after: true,
            ..f.clone()
        };
        assert!(!bare.verdict(12, Duration::from_secs(29)).retry_after);
        assert!(v.reset && v.lose_answer);
        assert!((Duration::from_millis(300)..=Duration::from_millis(350)).contains(&v.wait));
        let v = f.verdict(13, Duration::from_secs(30));
        assert_eq!(v.status, None, "the outage is over after status_for");
        assert!(!v.reset && !v.lose_answer);
        let always = Fault {
            status: Some(500),
            ..Fault::default()
        };
        assert_eq!(
            always.verdict(1, Duration::from_secs(3600)).status,
            Some(500)
        );
        assert_eq!(
            Fault::default().verdict(5, Duration::ZERO).wait,
            Duration::ZERO
        );
    }
}
