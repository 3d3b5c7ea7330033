//! Retry, backoff and adaptive concurrency: plain state machines that take
//! `now` as an argument (no clocks, sockets or sleeps), so they are tested
//! deterministically.
//!
//! - [`classify`] maps a send result to done / retry / drop (SPEC §5: 2xx
//!   done; 5xx, 429, timeouts and connection errors retried; other 4xx dropped).
//! - [`Backoff`]: exponential from 30 ms, doubling up to `maxBackoff`, plus up
//!   to 25 % jitter (never above `maxBackoff`), and at least `Retry-After`
//!   (capped at [`MAX_RETRY_AFTER`]) when the endpoint sent one.
//! - [`Concurrency`]: how many requests a target may have in flight, between
//!   1 and `maxConcurrency`; the queue also uses it, rounded down to a power
//!   of two, as its number of lane groups (docs/delivery.md "Lanes follow
//!   load"). It follows the load by Little's law ([`Concurrency::on_load`]:
//!   arriving samples per second × average latency ÷ samples per request,
//!   plus a quarter): it rises to that at once and falls by halves, at most
//!   once per [`SHRINK_EVERY`]. A backlog that one request per group cannot
//!   carry doubles it while the latency stays within twice its moving
//!   average, at most once per observed latency; an error or 429 halves it,
//!   at most once per latency so a burst of failures of requests sent
//!   together counts once.

use std::time::{Duration, Instant};

/// First retry delay.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(30);
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Least time between two load-driven decreases of the concurrency limit
/// (and after any change before one).
pub const SHRINK_EVERY: Duration = Duration::from_secs(1);

/// How one send attempt ended, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// An HTTP response.
    Status {
        /// Status code.
        status: u16,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
        /// Start of the body (at most 256 bytes, lossy UTF-8).
        body: String,
    },
    /// The target's `timeout` passed: what it was waiting for (`no
    /// response within 30s`, `response body not complete within 30s`).
    Timeout(String),
    /// Connecting failed (refused, DNS, TLS handshake, or their timeouts:
    /// `connect timeout after 10s`, `tls handshake timeout after 10s`).
    Connect(String),
    /// The connection broke after connecting.
    Io(String),
}

/// What to do with a batch after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// Try again later.
    Retry {
        /// Key of the failure counter (`"503"`, `"timeout"`, `"connect"`).
        kind: String,
        /// Status, when there was a response.
        status: Option<u16>,
        /// Server's `Retry-After`.
        retry_after: Option<Duration>,
        /// Status line and body start, or the error.
        message: String,
    },
    /// 413: too large as a whole; smaller batches may go (the queue splits
    /// the batch when it can, else drops it like [`Verdict::Drop`]).
    TooLarge {
        /// Status line and body start.
        message: String,
    },
    /// Never deliverable: drop and record.
    Drop {
        /// Status.
        status: u16,
        /// Status line and body start.
        message: String,
    },
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Classifies an attempt's result (SPEC §5).
pub fn classify(result: &SendResult) -> Verdict {
    match result {
        SendResult::Status { status, .. } if (200..300).contains(status) => Verdict::Done,
        SendResult::Status {
            status,
            retry_after,
            body,
        } => {
            let message = format!("{status} {}: {}", reason(*status), body.trim());
            if *status == 413 {
                Verdict::TooLarge { message }
            } else if *status >= 500
                || *status == 429
                || *status == 408
                // Expired or rotated AWS credentials: the next attempt
                // signs with credentials read again (sigv4.rs), so the
                // batch waits instead of being dropped.
                || (*status == 403 && super::sigv4::names_expired_token(body))
            {
                Verdict::Retry {
                    kind: status.to_string(),
                    status: Some(*status),
                    retry_after: *retry_after,
                    message,
                }
            } else {
                Verdict::Drop {
                    status: *status,
                    message,
                }
            }
        }
        SendResult::Timeout(what) => Verdict::Retry {
            kind: "timeout".into(),
            status: None,
            retry_after: None,
            message: what.clone(),
        },
        // A name that does not resolve is its own kind: it is the
        // endpoint's configuration (or DNS), not the endpoint.
        SendResult::Connect(e) if e.contains("dns error") => Verdict::Retry {
            kind: "dns".into(),
            status: None,
            retry_after: None,
            message: format!("dns: {e}"),
        },
        SendResult::Connect(e) => Verdict::Retry {
            kind: "connect".into(),
            status: None,
            retry_after: None,
            message: format!("connect: {e}"),
        },
        SendResult::Io(e) => Verdict::Retry {
            kind: "io".into(),
            status: None,
            retry_after: None,
            message: format!("connection: {e}"),
        },
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    max: Duration,
}

impl Backoff {
    /// Backoff up to `max` (at least the first delay).
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            max: max.max(FIRST_BACKOFF),
        }
    }

    /// Delay before retry number `retry` (1 = first retry); `jitter` in `[0, 1)`.
    pub fn delay(&self, retry: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let shift = retry.saturating_sub(1).min(20);
        let base = FIRST_BACKOFF.saturating_mul(1 << shift).min(self.max);
        let jittered = base
            .saturating_add(base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25))
            .min(self.max.max(base));
        match retry_after {
            Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// Adaptive concurrency limit (see the module docs).
#[derive(Debug, Clone)]
pub struct Concurrency {
    limit: u32,
    max: u32,
    avg_latency: Option<Duration>,
    last_change: Option<Instant>,
}

impl Concurrency {
    /// Starts at 1, never above `max` (at least 1).
    pub fn new(max: u32) -> Concurrency {
        Concurrency {
            limit: 1,
            max: max.max(1),
            avg_latency: None,
            last_change: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The moving average latency.
    pub fn average_latency(&self) -> Option<Duration> {
        self.avg_latency
    }

    fn settle_interval(&self) -> Duration {
        self.avg_latency
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(20))
    }

    fn may_change(&self, now: Instant) -> bool {
        self.last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= self.settle_interval())
    }

    /// A successful request took `latency`; `backlog` tells whether more is
    /// waiting than one request per lane group carries.
    pub fn on_success(&mut self, latency: Duration, backlog: bool, now: Instant) {
        let avg = match self.avg_latency {
            None => latency,
            Some(a) => a.mul_f64(0.8) + latency.mul_f64(0.2),
        };
        let steady = self.avg_latency.is_none_or(|a| latency <= a * 2);
        self.avg_latency = Some(avg);
        if backlog && steady && self.limit < self.max && self.may_change(now) {
            self.limit = (self.limit * 2).min(self.max);
            self.last_change = Some(now);
        }
    }

    /// A request failed with a retryable error or 429.
    pub fn on_error(&mut self, now: Instant) {
        if self.limit > 1 && self.may_change(now) {
            self.limit = (self.limit / 2).max(1);
            self.last_change = Some(now);
        }
    }

    /// Samples arrive at `samples_per_sec` and go out `max_samples` per
    /// request: the limit rises at once to what carries that with the
    /// average latency (Little's law, plus a quarter, as a power of two),
    /// and halves towards it at most once per [`SHRINK_EVERY`] while no
    /// `backlog` waits.
    pub fn on_load(&mut self, samples_per_sec: f64, max_samples: u32, backlog: bool, now: Instant) {
        let latency = self
            .avg_latency
            .unwrap_or(Duration::from_millis(20))
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let needed = samples_per_sec * latency / f64::from(max_samples.max(1)) * 1.25;
        let want = (needed.ceil().clamp(1.0, 64.0) as u32)
            .next_power_of_two()
            .min(self.max);
        if want > self.limit {
            if self.may_change(now) {
                self.limit = want;
                self.last_change = Some(now);
            }
            return;
        }
        let calm = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= SHRINK_EVERY);
        if want < self.limit && calm && !backlog {
            self.limit = (self.limit / 2).max(1);
            self.last_change = Some(now);
        }
    }

    /// Changes the maximum (config change); the limit follows it down.
    pub fn set_max(&mut self, max: u32) {
        self.max = max.max(1);
        self.limit = self.limit.min(self.max);
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_policy_classifies_per_spec() {
        let st = |status| SendResult::Status {
            status,
            retry_after: None,
            body: "oops".into(),
        };
        assert_eq!(classify(&st(204)), Verdict::Done);
        assert_eq!(classify(&st(200)), Verdict::Done);
        for s in [500, 502, 503, 429, 408] {
            assert!(matches!(classify(&st(s)), Verdict::Retry { .. }), "{s}");
        }
        match classify(&st(413)) {
            Verdict::TooLarge { message } => assert!(message.contains("oops"), "{message}"),
            v => panic!("413: {v:?}"),
        }
        for s in [400, 401, 403, 404] {
            match classify(&st(s)) {
                Verdict::Drop { status, message } => {
                    assert_eq!(status, s);
                    assert!(message.contains("oops"), "{message}");
                }
                v => panic!("{s}: {v:?}"),
            }
        }
        // An expired AWS token is retried (after the credentials are read
        // again), not dropped.
        let expired = SendResult::Status {
            status: 403,
            retry_after: None,
            body: r#"{"message":"The security token included in the request is expired"}"#.into(),
        };
        assert!(matches!(classify(&expired), Verdict::Retry { kind, .. } if kind == "403"));
        assert!(
            matches!(classify(&SendResult::Timeout("no response within 30s".into())), Verdict::Retry { kind, message, .. } if kind == "timeout" && message == "no response within 30s")
        );
        assert!(
            matches!(classify(&SendResult::Connect("refused".into())), Verdict::Retry { kind, .. } if kind == "connect")
        );
        // hyper-util's resolver error, as the chain reads.
        let dns = "client error (Connect): dns error: failed to lookup address information: Name or service not known";
        assert!(
            matches!(classify(&SendResult::Connect(dns.into())), Verdict::Retry { kind, message, .. } if kind == "dns" && message.starts_with("dns: "))
        );
    }

    #[test]
    fn deliver_policy_backoff_doubles_from_30ms_with_jitter_up_to_max() {
        let b = Backoff::new(Duration::from_secs(5));
        assert_eq!(b.delay(1, 0.0, None), Duration::from_millis(30));
        assert_eq!(b.delay(2, 0.0, None), Duration::from_millis(60));
        assert_eq!(b.delay(3, 0.0, None), Duration::from_millis(120));
        let j = b.delay(1, 0.99, None);
        assert!(
            j > Duration::from_millis(30) && j <= Duration::from_millis(38),
            "{j:?}"
        );
        assert_eq!(b.delay(30, 0.5, None), Duration::from_secs(5));
        assert_eq!(b.delay(100, 0.99, None), Duration::from_secs(5));
        // Retry-After wins when longer, and is capped.
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(9999))),
            MAX_RETRY_AFTER
        );
        assert_eq!(
            b.delay(8, 0.0, Some(Duration::from_millis(1))),
            Duration::from_millis(3840)
        );
    }

    #[test]
    fn deliver_policy_concurrency_grows_on_steady_latency_and_backlog_and_halves_on_errors() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Concurrency::new(8);
        assert_eq!(c.limit(), 1);
        // No backlog: no growth.
        c.on_success(ms(10), false, t0);
        assert_eq!(c.limit(), 1);
        let mut now = t0;
        for _ in 0..20 {
            now += ms(25);
            c.on_success(ms(10), true, now);
        }
        assert_eq!(c.limit(), 8, "capped at max");
        // Latency spike: no growth even with backlog.
        let mut c2 = Concurrency::new(8);
        c2.on_success(ms(10), true, t0);
        c2.on_success(ms(100), true, t0 + ms(200));
        assert_eq!(c2.limit(), 2);
        // Errors halve, at most once per settle interval.
        c.on_error(now + ms(100));
        assert_eq!(c.limit(), 4);
        c.on_error(now + ms(101));
        assert_eq!(c.limit(), 4);
        c.on_error(now + ms(200));
        assert_eq!(c.limit(), 2);
        c.on_error(now + ms(300));
        c.on_error(now + ms(400));
        assert_eq!(c.limit(), 1, "never below 1");
        c.set_max(0);
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn deliver_policy_concurrency_shrinks_when_a_quarter_carries_the_load() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Concurrency::new(16);
        let mut now = t0;
        for _ in 0..20 {
            now += ms(25);
            c.on_success(ms(20), true, now);
        }
        assert_eq!(c.limit(), 16);
        // 300k samples/s at 20 ms and 2,000 per request needs 3 requests in
        // flight (3.75 with the margin): 4.
        c.on_load(300_000.0, 2000, false, now + ms(500));
        assert_eq!(c.limit(), 16, "not within a second of the last change");
        c.on_load(300_000.0, 2000, false, now + ms(1000));
        assert_eq!(c.limit(), 8);
        c.on_load(300_000.0, 2000, false, now + ms(3000));
        assert_eq!(c.limit(), 4);
        c.on_load(300_000.0, 2000, false, now + ms(4000));
        assert_eq!(c.limit(), 4);
        // Moderate load: back to one, halving once a second.
        c.on_load(30_000.0, 2000, false, now + ms(5000));
        c.on_load(30_000.0, 2000, false, now + ms(6000));
        assert_eq!(c.limit(), 1);
        // A rising load raises it at once.
        c.on_load(600_000.0, 2000, false, now + ms(6100));
        assert_eq!(c.limit(), 8);
    }

    #[test]
    fn deliver_policy_retry_after_seconds_and_date() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
