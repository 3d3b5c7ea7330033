//! One request, after its body was read: failure injection
//! ([`super::fault`]), auth and header checks, content negotiation,
//! decompression, decoding ([`super::decode`]) and recording
//! ([`super::record`]), and the honest answer.
//!
//! Answers: 204 for a request decoded and recorded (2.0 with the
//! `X-Prometheus-Remote-Write-*-Written` headers), 400 with the reason for a
//! malformed one (nothing of it is recorded), 401 for wrong auth (403 for a
//! SigV4 key other than the expected, as AMP answers an expired session),
//! 400 for a missing or wrong required header, 415 for an unknown encoding
//! or proto, 413 for a body over the limit. An injected status or reset
//! records nothing.
//!
//! Only the checking, decompressing, decoding and recording is timed with
//! the thread's CPU clock ([`super::SinkStats::cpu_nanos`]): it never
//! awaits, so the clock measures just that work.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use super::decode::{decode_v1, decode_v2};
use super::record::{record_samples, Arrival, Inner, SinkReport, SHARDS};
use super::{ExpectedAuth, State, V1Only};
use crate::generator::lock;
use crate::identity::now_ms;

/// An answer.
pub(super) type Reply = Response<Full<Bytes>>;

/// An injected connection reset: returning an error makes hyper drop the connection.
#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
pub(super) struct InjectedReset;

/// CPU time used by the calling thread so far, nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Answers one request whose body was read (or failed to be read, with why).
pub(super) async fn process(
    st: &State,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
) -> Result<Reply, InjectedReset> {
    let n = st.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let verdict = {
        let (f, since) = &*lock(&st.fault);
        f.verdict(n, since.elapsed())
    };
    if !verdict.wait.is_zero() {
        tokio::time::sleep(verdict.wait).await;
    }
    if method == http::Method::GET {
        let ok = path == "/healthz" || path == "/readyz" || path == "/-/healthy";
        return Ok(reply(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            },
            "",
        ));
    }
    let bytes = body.as_ref().map_or(0, |b| b.len() as u64);
    st.bytes.fetch_add(bytes, Ordering::Relaxed);
    if verdict.reset {
        st.refused.fetch_add(1, Ordering::Relaxed);
        let mut inner = lock(st.shard(n));
        inner.report.requests += 1;
        inner.report.bytes += bytes;
        inner.report.injected += 1;
        return Err(InjectedReset);
    }
    // `receive` never awaits, so the thread's CPU clock measures just it.
    let cpu0 = thread_cpu_nanos();
    let injected = verdict.status.map(|s| (s, verdict.retry_after));
    let received = receive(st, n, headers, body, injected);
    st.cpu_nanos
        .fetch_add(thread_cpu_nanos().saturating_sub(cpu0), Ordering::Relaxed);
    let resp = match received {
        Ok(r) if verdict.lose_answer && r.status().is_success() => {
            st.refused.fetch_add(1, Ordering::Relaxed);
            lock(st.shard(n)).report.injected += 1;
            reply(StatusCode::SERVICE_UNAVAILABLE, "injected: answer lost")
        }
        Ok(r) => r,
        Err(r) => {
            st.refused.fetch_add(1, Ordering::Relaxed);
            r
        }
    };
    let mut inner = lock(st.shard(n));
    inner.report.requests += 1;
    inner.report.bytes += bytes;
    *inner
        .report
        .responses
        .entry(resp.status().as_u16())
        .or_default() += 1;
    Ok(resp)
}

fn reply(status: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}

fn refuse(st: &State, n: u64, status: StatusCode, kind: fn(&mut SinkReport), msg: String) -> Reply {
    let mut inner = lock(st.shard(n));
    kind(&mut inner.report);
    inner.report.last_error = Some(msg.clone());
    inner.last_error_at = n;
    reply(status, &msg)
}

impl State {
    /// The shard that takes request `n`'s own counts.
    fn shard(&self, n: u64) -> &Mutex<Inner> {
        &self.shards[n as usize % SHARDS]
    }
}

fn check_auth(expected: &ExpectedAuth, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(got) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match expected {
        ExpectedAuth::Bearer(t) => got.strip_prefix("Bearer ").is_some_and(|g| g == t),
        ExpectedAuth::Basic { user, password } => got
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|d| d == format!("{user}:{password}").as_bytes()),
        ExpectedAuth::Sigv4AccessKey(key) => sigv4_access_key(headers) == Some(key.as_str()),
    }
}

/// The access key id a SigV4 `Authorization` header was signed with.
fn sigv4_access_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")?
        .split('/')
        .next()
}

// The error is the refusal reply itself, built once per refused request:
// boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn receive(
    st: &State,
    n: u64,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
    injected: Option<(u16, bool)>,
) -> Result<Reply, Reply> {
    let cfg = &st.config;
    if let Some(a) = &cfg.auth {
        if let ExpectedAuth::Sigv4AccessKey(key) = a {
            if sigv4_access_key(headers).is_some_and(|k| k != key) {
                lock(st.shard(n)).report.auth_failures += 1;
                return Err(reply(
                    StatusCode::FORBIDDEN,
                    r#"{"message":"The security token included in the request is expired"}"#,
                ));
            }
        }
        if !check_auth(a, headers) {
            return Err(refuse(
                st,
                n,
                StatusCode::UNAUTHORIZED,
                |r| r.auth_failures += 1,
                "missing or wrong Authorization".into(),
            ));
        }
    }
    for (k, v) in &cfg.headers {
        let got = headers
            .get(k.as_str())
            .map(|g| String::from_utf8_lossy(g.as_bytes()).into_owned());
        if got.as_deref() != Some(v.as_str()) {
            return Err(refuse(
                st,
                n,
                StatusCode::BAD_REQUEST,
                |r| r.header_mismatches += 1,
                format!("header {k}: expected {v:?}, got {got:?}"),
            ));
        }
    }
    if let Some((code, retry_after)) = injected {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        lock(st.shard(n)).report.injected += 1;
        let mut r = reply(status, "injected failure");
        if (code == 429 || code == 503) && retry_after {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        return Err(r);
    }
    let bad = |status, msg: String| refuse(st, n, status, |r| r.bad_requests += 1, msg);
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != "snappy") {
        return Err(bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding {:?}: only snappy",
                encoding.unwrap_or_default()
            ),
        ));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let declared_v2 = content_type.contains("io.prometheus.write.v2.Request");
    let mut v2 = declared_v2;
    match cfg.v1_only {
        V1Only::Refuse if v2 => {
            lock(st.shard(n)).report.v2_refused += 1;
            return Err(reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "remote-write 2.0 is not supported here",
            ));
        }
        V1Only::Misread if v2 => {
            lock(st.shard(n)).report.v2_refused += 1;
            v2 = false;
        }
        _ => {}
    }
    if content_type.contains("proto=")
        && !declared_v2
        && !content_type.contains("proto=prometheus.WriteRequest")
    {
        return Err(bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: unknown proto"),
        ));
    }
    let body = match body {
        Ok(b) => b,
        Err(msg) => {
            let status = if msg.contains("length limit") {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(bad(status, format!("reading body: {msg}")));
        }
    };
    let raw =
        fanout_proto::snappy::decompress(&body, cfg.max_body.saturating_mul(8)).map_err(|e| {
            bad(
                if e.is_limit() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                e.to_string(),
            )
        })?;
    let now = now_ms();
    // The decoded request borrows from the body or from prost's decoded
    // message in these slots; labels are owned only when new to a record.
    let (mut slot_v1, mut slot_v2) = (None, None);
    let decoded = if v2 {
        decode_v2(raw, &mut slot_v2, cfg.keep_v2_series)
    } else {
        decode_v1(&raw, &mut slot_v1)
    };
    let mut d = decoded.map_err(|e| bad(StatusCode::BAD_REQUEST, e))?;
    let samples = d.got.len() as u64;
    {
        let mut inner = lock(st.shard(n));
        let Inner {
            report, latency, ..
        } = &mut *inner;
        *report
            .protocols
            .entry(if v2 { "v2" } else { "v1" }.to_owned())
            .or_default() += 1;
        report.samples += samples;
        report.histograms += d.histograms;
        for family in &d.metadata {
            *report.metadata.entry((*family).to_owned()).or_default() += 1;
        }
        for g in d.got.iter().filter(|g| g.id.is_none()) {
            report.unidentified += 1;
            latency.saturating_record((now - g.ts).max(0) as u64);
        }
    }
    if !d.kept.is_empty() {
        // Kept in shard 0 only: their arrival order matters.
        let mut inner = lock(&st.shards[0]);
        for (labels, one) in std::mem::take(&mut d.kept) {
            let all = inner.report.v2_series.entry(labels).or_default();
            all.samples.extend(one.samples);
            all.histograms.extend(one.histograms);
            all.exemplars.extend(one.exemplars);
            all.metadata.extend(one.metadata);
            all.created_timestamps.extend(one.created_timestamps);
        }
    }
    let arrivals: Vec<Arrival> = d
        .got
        .iter()
        .filter_map(|g| {
            g.id.map(|id| Arrival {
                id,
                ts: g.ts,
                set: g.set,
            })
        })
        .collect();
    record_samples(&st.shards, &arrivals, now, |s| d.hash(s), |s| d.labels(s));
    st.samples.fetch_add(samples, Ordering::Relaxed);
    let mut r = reply(StatusCode::NO_CONTENT, "");
    if v2 {
        let h = r.headers_mut();
        h.insert("x-prometheus-remote-write-samples-written", samples.into());
        h.insert(
            "x-prometheus-remote-write-histograms-written",
            d.histograms.into(),
        );
        h.insert(
            "x-prometheus-remote-write-exemplars-written",
            d.exemplars.into(),
        );
    }
    Ok(r)
}
