//! Sending one request again, like Prometheus (see "Retries" in the
//! [`super`] module doc): which answers are retried, how long to wait, and
//! a new connection when the old one is gone. Only with
//! [`super::GeneratorConfig::retry`]; the run's deadline bounds it all.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;

use super::lock;
use super::worker::Worker;
use crate::client::{ClientError, Conn, Reply};

/// The outcome of a request's last attempt: an answer, a transport error,
/// or a timeout.
pub(super) type Attempt = Result<Result<Reply, ClientError>, tokio::time::error::Elapsed>;

/// Times in a row a request may find its connection closed before it went
/// out (each time on a new one) before that counts as a transport error.
const MAX_UNSENT: u32 = 3;

/// First retry backoff (Prometheus' `min_backoff`).
pub(super) const RETRY_MIN_BACKOFF: Duration = Duration::from_millis(30);
/// Longest wait before a retry (Prometheus' `max_backoff`).
const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long to wait before retrying: `Retry-After` (whole seconds) if the
/// answer has one, else `backoff`; at most [`RETRY_MAX_BACKOFF`].
fn retry_wait(headers: &HeaderMap, backoff: Duration) -> Duration {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(backoff, Duration::from_secs)
        .min(RETRY_MAX_BACKOFF)
}

impl Worker {
    /// Replaces `conn` with a new connection (one try, within the request
    /// timeout); false, noting why, when that fails.
    async fn reconnect(&self, conn: &mut Conn) -> bool {
        match tokio::time::timeout(self.config.timeout, Conn::connect(&self.target)).await {
            Ok(Ok(c)) => {
                *conn = c;
                true
            }
            Ok(Err(e)) => {
                self.note_no_answer(e.to_string());
                false
            }
            Err(_) => {
                self.note_no_answer("connect: timed out".into());
                false
            }
        }
    }

    /// Sends `body` on `conn`, again after a 429, a 503 or no answer when
    /// retrying, until it is answered otherwise or the deadline would pass;
    /// counts every attempt. `conn` is replaced when it broke.
    pub(super) async fn send(&self, conn: &mut Conn, headers: &HeaderMap, body: &Bytes) -> Attempt {
        let bytes = body.len() as u64;
        let s = &self.stats;
        let mut backoff = RETRY_MIN_BACKOFF;
        let mut unsent = 0;
        loop {
            let t0 = Instant::now();
            let res = tokio::time::timeout(
                self.config.timeout,
                conn.post(&self.target, headers, body.clone()),
            )
            .await;
            // Closed before it went out (after an early answer to the one
            // before): not an attempt; it goes on a new connection.
            if matches!(res, Ok(Err(ClientError::Closed(_)))) && unsent < MAX_UNSENT {
                unsent += 1;
                if self.reconnect(conn).await {
                    continue;
                }
            }
            let micros = t0.elapsed().as_micros() as u64;
            s.requests.fetch_add(1, Ordering::Relaxed);
            s.bytes.fetch_add(bytes, Ordering::Relaxed);
            lock(&s.latency).saturating_record(micros.max(1));
            lock(&s.interval).saturating_record(micros.max(1));
            if !self.config.retry {
                return res;
            }
            let wait = match &res {
                Ok(Ok(reply)) if matches!(reply.status.as_u16(), 429 | 503) => {
                    retry_wait(&reply.headers, backoff)
                }
                Ok(Ok(_)) => break res,
                // No answer (a gateway restarting, a reset, a timeout).
                _ => backoff,
            };
            if self.over(Instant::now() + wait) {
                return res;
            }
            match &res {
                Ok(Ok(reply)) => {
                    *lock(&s.codes).entry(reply.status.as_u16()).or_default() += 1;
                }
                Ok(Err(e)) => {
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_no_answer(format!("{e} (sent again)"));
                }
                Err(_) => {
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_no_answer(format!(
                        "request timed out after {:?} (sent again)",
                        self.config.timeout
                    ));
                }
            }
            s.retries.fetch_add(1, Ordering::Relaxed);
            backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
            tokio::time::sleep(wait).await;
            if res.as_ref().is_ok_and(|r| r.is_ok()) {
                continue;
            }
            // The connection is gone: a new one, until the deadline.
            loop {
                match tokio::time::timeout(self.config.timeout, Conn::connect(&self.target)).await {
                    Ok(Ok(c)) => {
                        *conn = c;
                        break;
                    }
                    Ok(Err(e)) => self.note_no_answer(format!("{e} (reconnecting)")),
                    Err(_) => self.note_no_answer("connect: timed out (reconnecting)".into()),
                }
                if self.over(Instant::now() + backoff) {
                    return res;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_waits_for_retry_after_else_backoff_capped() {
        let mut h = HeaderMap::new();
        let b = Duration::from_millis(30);
        assert_eq!(retry_wait(&h, b), b);
        assert_eq!(retry_wait(&h, Duration::from_secs(9)), RETRY_MAX_BACKOFF);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_wait(&h, b), Duration::from_secs(2));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_wait(&h, b), RETRY_MAX_BACKOFF);
        // An HTTP date is not parsed: the backoff applies.
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_wait(&h, b), b);
    }
}
