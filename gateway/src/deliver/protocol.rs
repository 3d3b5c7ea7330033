//! The remote-write version a target is sent, and the fallback from 2.0.
//!
//! Batches are built as 1.0 (once per group, shared by its targets). A
//! target with `protocol: V2` gets each attempt rewritten as a 2.0 request
//! ([`fanout_proto::v2write`]: symbols table, samples and histograms copied
//! as bytes, exemplars, metadata of the families Fanout has seen) with
//! `Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request`
//! and `X-Prometheus-Remote-Write-Version: 2.0.0`.
//!
//! A 2.0 receiver answers 2xx with `X-Prometheus-Remote-Write-Samples-Written`.
//! A target that answers 415, or 2xx without that header (a 1.0 receiver
//! that skipped the 2.0 fields it does not know and stored nothing, as
//! Prometheus 2.x does), *falls back*: the same batch is sent again at once
//! as 1.0, in the same attempt, so nothing is lost and the batch keeps its
//! place in its lane; the target then gets 1.0 for [`RETRY_V2_AFTER`] (or
//! until its config changes), and says so in `/api/v1/targets`
//! (`protocol: "V1 (fallback: <reason>)"`), in the console and in the log.
//! A written count lower than what was sent is a partial write: the
//! difference is counted as `rejected`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_proto::v2write::{self, MetadataLookup, Written};

use super::http::HttpSender;
use super::policy::SendResult;
use crate::registry::model::Protocol;
use crate::registry::Target;

/// How long a target that fell back gets 1.0 before 2.0 is tried again.
pub const RETRY_V2_AFTER: Duration = Duration::from_secs(600);

/// Largest 1.0 batch rewritten as 2.0 (decompressed); a larger one goes as 1.0.
const MAX_V1_BODY: usize = 256 << 20;

/// A `protocol: V2` target's fallback, if it is in one.
#[derive(Debug, Default)]
pub struct WireState {
    fallback: Mutex<Option<Fallback>>,
}

#[derive(Debug, Clone)]
struct Fallback {
    reason: String,
    until: Instant,
}

impl WireState {
    /// Whether an attempt now goes as 2.0: the target is configured so and
    /// not in a fallback (one that ended is cleared, and logged with
    /// `name()`, the target's [`Target::name`]).
    pub fn sends_v2(
        &self,
        configured: Protocol,
        target_id: &str,
        name: impl FnOnce() -> String,
        now: Instant,
    ) -> bool {
        if configured != Protocol::V2 {
            return false;
        }
        let Ok(mut f) = self.fallback.lock() else {
            return true;
        };
        match &*f {
            Some(fb) if now < fb.until => false,
            Some(_) => {
                *f = None;
                tracing::info!(
                    exports = %name(),
                    target_id,
                    "delivery: trying remote-write 2.0 again after the fallback to 1.0"
                );
                true
            }
            None => true,
        }
    }

    /// Falls back to 1.0 for [`RETRY_V2_AFTER`], because of `reason`.
    pub fn fall_back(&self, reason: String, exports: &str, target_id: &str, now: Instant) {
        tracing::warn!(exports, target_id, reason = %reason, retry_in_secs = RETRY_V2_AFTER.as_secs(),
            "delivery: protocol V2 target does not speak remote-write 2.0; falling back to 1.0 (this batch is sent again as 1.0)");
        if let Ok(mut f) = self.fallback.lock() {
            *f = Some(Fallback {
                reason,
                until: now + RETRY_V2_AFTER,
            });
        }
    }

    /// In a fallback now (without ending one that is over).
    pub fn in_fallback(&self, now: Instant) -> bool {
        self.fallback
            .lock()
            .is_ok_and(|f| f.as_ref().is_some_and(|fb| now < fb.until))
    }

    /// Forgets a fallback (the target's config changed).
    pub fn reset(&self) {
        if let Ok(mut f) = self.fallback.lock() {
            *f = None;
        }
    }

    /// `V1`, `V2`, or `V1 (fallback: <reason>)`.
    pub fn describe(&self, configured: Protocol) -> String {
        match configured {
            Protocol::V1 => "V1".into(),
            Protocol::V2 => match self.fallback.lock().ok().and_then(|f| f.clone()) {
                Some(fb) => format!("V1 (fallback: {})", fb.reason),
                None => "V2".into(),
            },
        }
    }
}

/// The outcome of one attempt, with the samples a 2.0 receiver said it did
/// not write (a partial write).
pub struct Sent {
    /// The attempt's result.
    pub result: SendResult,
    /// Samples (float and histogram) sent but not written.
    pub unwritten: u64,
}

/// One attempt of `body` (a snappy 1.0 batch) to `target`, as 2.0 when it
/// should be (with the fallback above), else as 1.0.
pub async fn send(
    http: &HttpSender,
    target: &Target,
    wire: &WireState,
    metadata: &(dyn MetadataLookup + Sync),
    body: Bytes,
    attempt: u32,
) -> Sent {
    let id = target.id.0.as_str();
    if wire.sends_v2(
        target.config.delivery.protocol,
        id,
        || target.name(),
        Instant::now(),
    ) {
        match to_v2(&body, metadata) {
            Ok((v2, written)) => {
                let (result, header) = http.send_as(target, v2, attempt, true).await;
                match (&result, header) {
                    (
                        SendResult::Status {
                            status: 415, body, ..
                        },
                        _,
                    ) => {
                        let reason = if body.is_empty() {
                            "415 Unsupported Media Type".to_owned()
                        } else {
                            format!("415 {body}")
                        };
                        wire.fall_back(reason, &target.name(), id, Instant::now());
                    }
                    (SendResult::Status { status, .. }, None) if (200..300).contains(status) => {
                        wire.fall_back(
                            format!("{status} without X-Prometheus-Remote-Write-Samples-Written"),
                            &target.name(),
                            id,
                            Instant::now(),
                        );
                    }
                    (SendResult::Status { status, .. }, Some(n)) if (200..300).contains(status) => {
                        let unwritten = (written.samples + written.histograms).saturating_sub(n);
                        if unwritten > 0 {
                            tracing::warn!(exports = %target.name(), target_id = id, sent = written.samples + written.histograms, written = n,
                                "delivery: partial write: the 2.0 receiver wrote fewer samples than it was sent; the rest count as rejected");
                        }
                        return Sent { result, unwritten };
                    }
                    _ => {
                        return Sent {
                            result,
                            unwritten: 0,
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(exports = %target.name(), target_id = id, error = %e, "delivery: cannot rewrite a batch as remote-write 2.0; it goes as 1.0");
            }
        }
    }
    Sent {
        result: http.send_as(target, body, attempt, false).await.0,
        unwritten: 0,
    }
}

/// Rewrites a snappy 1.0 batch as a snappy 2.0 request.
fn to_v2(body: &[u8], metadata: &dyn MetadataLookup) -> Result<(Bytes, Written), String> {
    let raw = fanout_proto::snappy::decompress(body, MAX_V1_BODY).map_err(|e| e.to_string())?;
    let mut v2 = Vec::new();
    let written = v2write::from_v1(&raw, metadata, &mut v2).map_err(|e| e.to_string())?;
    Ok((Bytes::from(fanout_proto::snappy::compress(&v2)), written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_lasts_its_time_then_v2_is_tried_again() {
        let w = WireState::default();
        let t0 = Instant::now();
        assert!(!w.sends_v2(Protocol::V1, "t", String::new, t0));
        assert!(w.sends_v2(Protocol::V2, "t", String::new, t0));
        assert_eq!(w.describe(Protocol::V2), "V2");
        w.fall_back("415 Unsupported Media Type".into(), "e", "t", t0);
        assert!(!w.sends_v2(
            Protocol::V2,
            "t",
            String::new,
            t0 + Duration::from_secs(599)
        ));
        assert_eq!(
            w.describe(Protocol::V2),
            "V1 (fallback: 415 Unsupported Media Type)"
        );
        assert!(w.sends_v2(Protocol::V2, "t", String::new, t0 + RETRY_V2_AFTER));
        assert_eq!(w.describe(Protocol::V2), "V2");
        w.fall_back("x".into(), "e", "t", t0);
        w.reset();
        assert!(w.sends_v2(Protocol::V2, "t", String::new, t0));
    }
}
