//! The senders: the work split and the pacing (see "Work split" and "Rate
//! and bounds" in the [`super`] module doc). Each connection runs one
//! [`Worker`] (several stream tasks on an HTTP/2 or HTTP/3 connection);
//! request `b` is cluster `b % N`'s positions `[k * R, (k + 1) * R)`,
//! `k = b / N`, sent not before `start + b * R / rate`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::body::RequestBuilder;
use super::{auth_header, lock, GeneratorConfig, Stats};
use crate::client::{Conn, Target};
use crate::identity::now_ms;
use crate::scenario::Scenario;

/// One connection's (or stream's) sender: takes request numbers from the
/// shared counter, paces them and records the outcome.
pub(super) struct Worker {
    pub(super) target: Target,
    pub(super) headers: HeaderMap,
    pub(super) stats: Arc<Stats>,
    pub(super) next: Arc<AtomicU64>,
    pub(super) config: GeneratorConfig,
    pub(super) start: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) clusters: u64,
    pub(super) spr: u64,
    pub(super) total: u64,
    pub(super) max_pos: u64,
    pub(super) offset: u64,
    pub(super) scenario: Arc<Scenario>,
    pub(super) turns: Arc<Turns>,
}

/// Whose turn it is per cluster: the rounds (`k = b / N`) of its requests
/// done so far. A cluster's request `k` is sent only once request `k - 1`
/// is done (answered, failed or given up), like a Prometheus shard.
pub(super) struct Turns {
    done: Vec<AtomicU64>,
    changed: tokio::sync::Notify,
}

impl Turns {
    pub(super) fn new(clusters: usize) -> Turns {
        Turns {
            done: (0..clusters.max(1)).map(|_| AtomicU64::new(0)).collect(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Request `k` of `cluster` is done: the next may go.
    fn finish(&self, cluster: u32, k: u64) {
        if let Some(d) = self.done.get(cluster as usize) {
            d.fetch_max(k + 1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }

    fn ready(&self, cluster: u32, k: u64) -> bool {
        self.done
            .get(cluster as usize)
            .is_none_or(|d| d.load(Ordering::Acquire) >= k)
    }
}

/// Marks a cluster's request done when dropped, whichever way its sender
/// returns.
struct Turn<'a> {
    turns: &'a Turns,
    cluster: u32,
    k: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.finish(self.cluster, self.k);
    }
}

impl Worker {
    pub(super) async fn run_connection(self, builder: RequestBuilder, streams: usize) {
        let me = Arc::new(self);
        let mut conn: Option<Conn> = None;
        let mut builders = vec![builder];
        while builders.len() < streams {
            let b = builders[0].fork();
            builders.push(b);
        }
        // One shared connection; each stream task reconnects only its own copy
        // after an error (HTTP/2 and HTTP/3 connections are clonable handles).
        // Connecting fails for at most one request timeout in a row; then this
        // connection gives up, so a run against a dead URL ends by itself
        // even when it is bounded by samples only.
        let mut failing_since: Option<Instant> = None;
        loop {
            if me.finished() {
                return;
            }
            if failing_since.is_some_and(|t| t.elapsed() >= me.config.timeout) {
                return;
            }
            if conn.is_none() {
                match tokio::time::timeout(me.config.timeout, Conn::connect(&me.target)).await {
                    Ok(Ok(c)) => {
                        conn = Some(c);
                        failing_since = None;
                    }
                    Ok(Err(e)) => {
                        me.note_no_answer(e.to_string());
                        failing_since.get_or_insert_with(Instant::now);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        me.note_no_answer("connect: timed out".into());
                        failing_since.get_or_insert_with(Instant::now);
                        continue;
                    }
                }
            }
            let Some(c) = conn.clone() else { continue };
            let mut tasks = Vec::new();
            for b in builders.drain(..) {
                let me = me.clone();
                let c = c.clone();
                tasks.push(tokio::spawn(async move { me.stream_loop(c, b).await }));
            }
            for t in tasks {
                if let Ok(b) = t.await {
                    builders.push(b);
                }
            }
            // Every stream stopped: either the run is over or the connection broke.
            conn = None;
            if builders.is_empty() {
                return;
            }
        }
    }

    /// Whether `at` is past the run's end: its deadline, or an interrupt.
    pub(super) fn over(&self, at: Instant) -> bool {
        self.deadline.is_some_and(|d| at >= d)
            || self
                .config
                .interrupt
                .as_ref()
                .is_some_and(|i| i.load(Ordering::Relaxed))
    }

    fn finished(&self) -> bool {
        if self.over(Instant::now()) {
            return true;
        }
        let b = self.next.load(Ordering::Relaxed);
        b.saturating_mul(self.spr) >= self.total
    }

    /// Notes why a request got no answer (or why sending stopped).
    pub(super) fn note_no_answer(&self, e: String) {
        *lock(&self.stats.last_transport_error) = Some(e);
    }

    /// Notes an answer other than 2xx: its status and the start of its body.
    fn note_answer(&self, status: http::StatusCode, body: &[u8]) {
        let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        *lock(&self.stats.last_answer) = Some(format!("{status}: {}", body.trim()));
    }

    /// Sends requests on `conn` until the run ends or the connection fails.
    async fn stream_loop(&self, mut conn: Conn, mut builder: RequestBuilder) -> RequestBuilder {
        loop {
            if self.over(Instant::now()) {
                return builder;
            }
            let b = self.next.fetch_add(1, Ordering::Relaxed);
            let first = b.saturating_mul(self.spr);
            if first >= self.total {
                return builder;
            }
            let n = self.spr.min(self.total - first);
            let cluster = (b % self.clusters) as u32;
            let k = b / self.clusters;
            let _turn = Turn {
                turns: &self.turns,
                cluster,
                k,
            };
            // The cluster's previous request first (bounded: its sender
            // returns by the run's end or its request timeout).
            while !self.turns.ready(cluster, k) {
                if self.over(Instant::now()) {
                    return builder;
                }
                let changed = self.turns.changed.notified();
                if self.turns.ready(cluster, k) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
            let start = self.offset + k * self.spr;
            let end = (start + n).min(self.max_pos);
            if start >= end {
                self.note_no_answer("sequence space exhausted (2^21 rounds per series)".into());
                return builder;
            }
            if let Some(rate) = self.config.rate {
                let at = self.start + Duration::from_secs_f64(first as f64 / rate);
                if self.over(at) {
                    return builder;
                }
                tokio::time::sleep_until(at.into()).await;
            }
            let body = builder.body(self.config.protocol, cluster, start, end, now_ms());
            let mut headers = self.headers.clone();
            if let Some(a) = auth_header(self.config.auth, &self.scenario, cluster) {
                headers.insert(http::header::AUTHORIZATION, a);
            }
            let res = self.send(&mut conn, &headers, &body).await;
            let s = &self.stats;
            let samples = end - start;
            match res {
                Ok(Ok(reply)) => {
                    *lock(&s.codes).entry(reply.status.as_u16()).or_default() += 1;
                    if reply.status.is_success() {
                        s.samples_ok.fetch_add(samples, Ordering::Relaxed);
                        lock(&s.acked)[cluster as usize].push((start, end));
                    } else {
                        s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                        self.note_answer(reply.status, &reply.body);
                    }
                }
                Ok(Err(e)) => {
                    s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_no_answer(e.to_string());
                    return builder;
                }
                Err(_) => {
                    s.samples_failed.fetch_add(samples, Ordering::Relaxed);
                    s.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.note_no_answer(format!(
                        "request timed out after {:?}",
                        self.config.timeout
                    ));
                    return builder;
                }
            }
        }
    }
}
