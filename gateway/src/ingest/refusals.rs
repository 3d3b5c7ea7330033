//! Refused clusters in the log: a write refused for who sent it (no or a
//! bad ingest token, an unknown cluster id, a cluster over its
//! `limits.samplesPerSecond`) is logged at WARN with the cluster id when
//! known, the remote address and the reason, so the person who runs the
//! gateway can answer "why is my cluster refused?". A cluster that retries
//! every few seconds must not flood the log: one line per (cluster, reason)
//! per [`RefusalLog::EVERY`], the next one counting the refusals since.
//!
//! The token is never logged: only the id a sender claimed (the basic-auth
//! user) or `unknown token`. A claimed id is the sender's input, so it is
//! cut to [`MAX_CLAIMED`] characters and logged quoted (`Debug`).
//!
//! Bounded: at most [`MAX_KEYS`] (cluster, reason) pairs are remembered;
//! past that, pairs last logged more than [`RefusalLog::EVERY`] ago are
//! forgotten, and if none is, the new pair is counted under
//! `other clusters`. Plain code that takes `now` as an argument.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pairs remembered at most.
pub const MAX_KEYS: usize = 1024;
/// Characters of a claimed cluster id kept in the log.
pub const MAX_CLAIMED: usize = 64;

/// Who was refused and why: set on a [`Rejection`](super::request::Rejection)
/// that refuses the sender rather than its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The cluster: authenticated (over its limit), claimed (basic-auth
    /// user of an unknown token), or `None` (no usable credentials).
    pub cluster: Option<String>,
    /// Why, in a few words (`unknown token`, `over its samples/s limit`).
    pub reason: &'static str,
}

impl Refused {
    /// The cluster as logged: its id, or `unknown token` / `no credentials`.
    fn who(&self) -> String {
        match &self.cluster {
            Some(id) => id.chars().take(MAX_CLAIMED).collect(),
            None if self.reason == NO_CREDENTIALS => NO_CREDENTIALS.to_owned(),
            None => "unknown token".to_owned(),
        }
    }
}

/// The reason of a request without usable credentials.
pub const NO_CREDENTIALS: &str = "no credentials";

struct Entry {
    logged: Instant,
    since: u64,
}

/// When each (cluster, reason) was last logged, and its refusals since.
#[derive(Default)]
pub struct RefusalLog {
    seen: Mutex<HashMap<(String, &'static str), Entry>>,
}

impl RefusalLog {
    /// One line per (cluster, reason) at most this often.
    pub const EVERY: Duration = Duration::from_secs(60);

    /// Counts a refusal of `refused` at `now`; returns `Some(n)` when it is
    /// to be logged now, `n` being the refusals of the same pair since its
    /// last line that were not logged.
    pub fn note(&self, refused: &Refused, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (refused.who(), refused.reason);
        if !seen.contains_key(&key) && seen.len() >= MAX_KEYS {
            seen.retain(|_, e| now.saturating_duration_since(e.logged) < Self::EVERY);
            if seen.len() >= MAX_KEYS {
                key = ("other clusters".to_owned(), refused.reason);
            }
        }
        match seen.get_mut(&key) {
            Some(e) if now.saturating_duration_since(e.logged) < Self::EVERY => {
                e.since += 1;
                None
            }
            Some(e) => {
                let since = e.since;
                *e = Entry {
                    logged: now,
                    since: 0,
                };
                Some(since)
            }
            None => {
                seen.insert(
                    key,
                    Entry {
                        logged: now,
                        since: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// [`Self::note`], and the WARN line when it says so.
    pub fn log(
        &self,
        refused: &Refused,
        remote: Option<SocketAddr>,
        status: u16,
        message: &str,
        now: Instant,
    ) {
        let Some(since) = self.note(refused, now) else {
            return;
        };
        let remote = remote.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        tracing::warn!(
            cluster = ?refused.who(),
            remote = %remote,
            status,
            reason = %message,
            refused_since_last_line = since,
            "ingest: cluster refused (logged once a minute per cluster and reason)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cluster: Option<&str>, reason: &'static str) -> Refused {
        Refused {
            cluster: cluster.map(str::to_owned),
            reason,
        }
    }

    #[test]
    fn ingest_refusals_once_a_minute_per_cluster_and_reason_with_a_count() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let a = refused(Some("cl-a"), "unknown token");
        assert_eq!(log.note(&a, t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.note(&a, t0 + Duration::from_secs(i)), None);
        }
        // Another reason or another cluster has a line of its own.
        assert_eq!(
            log.note(&refused(Some("cl-a"), "over its limit"), t0),
            Some(0)
        );
        assert_eq!(log.note(&refused(None, "unknown token"), t0), Some(0));
        // A minute on: one line counting the five not logged.
        assert_eq!(log.note(&a, t0 + RefusalLog::EVERY), Some(5));
        assert_eq!(log.note(&a, t0 + RefusalLog::EVERY), None);
    }

    #[test]
    fn ingest_refusals_remember_a_bounded_number_of_clusters() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let names: Vec<String> = (0..MAX_KEYS + 10).map(|i| format!("c{i}")).collect();
        for n in &names {
            let r = Refused {
                cluster: Some(n.clone()),
                reason: "r",
            };
            log.note(&r, t0);
        }
        let seen = log.seen.lock().unwrap();
        assert_eq!(seen.len(), MAX_KEYS + 1, "the rest share one key");
        assert!(seen.contains_key(&("other clusters".to_owned(), "r")));
        drop(seen);
        // A minute on, the old pairs make room again.
        let r = refused(Some("late"), "r");
        assert_eq!(log.note(&r, t0 + RefusalLog::EVERY), Some(0));
        assert_eq!(log.seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn ingest_refusals_cut_a_claimed_id() {
        let long = "x".repeat(10_000);
        let r = refused(Some(&long), "unknown token");
        assert_eq!(r.who().len(), MAX_CLAIMED);
        assert_eq!(refused(None, "unknown token").who(), "unknown token");
        assert_eq!(refused(None, NO_CREDENTIALS).who(), NO_CREDENTIALS);
    }
}
