//! Ingest over real sockets: HTTP/1.1, h2c, h2 over TLS and HTTP/3; every
//! status of SPEC §2; the decompression bomb; a trickling client; drain.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_proto::scan::Summary;
use http::StatusCode;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::request::{negotiate, Protocol};
use super::testing::{
    v1_body, v2_body, H1Client, H2Client, H3Client, Reply, StaticAuth, CONTENT_TYPE_V2,
};
use super::*;
use crate::handoff::{Accepted, Delivery, DeliveryError};

const TOKEN: &str = "tok-a-s3cret";
const AUTH: (&str, &str) = ("authorization", "Bearer tok-a-s3cret");

#[derive(Default)]
struct Recording {
    batches: Mutex<Vec<(String, Summary, usize, u64)>>,
    responses: Mutex<Vec<(&'static str, u16)>>,
    overloaded: std::sync::atomic::AtomicBool,
    gate: Option<Arc<Semaphore>>,
}

impl Recording {
    fn gated(gate: Arc<Semaphore>) -> Self {
        Self {
            gate: Some(gate),
            ..Default::default()
        }
    }
    fn batches(&self) -> Vec<(String, Summary, usize, u64)> {
        self.batches.lock().unwrap().clone()
    }
    fn responses(&self) -> Vec<(&'static str, u16)> {
        self.responses.lock().unwrap().clone()
    }
}

impl Delivery for Recording {
    fn submit(
        &self,
        batch: Accepted,
    ) -> impl std::future::Future<Output = Result<(), DeliveryError>> + Send {
        let gate = self.gate.clone();
        let overloaded = self.overloaded.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if let Some(gate) = gate {
                let _ = gate.acquire().await;
            }
            if overloaded {
                return Err(DeliveryError::Overloaded("queues full".into()));
            }
            // The scanner's series must slice the delivered body.
            for s in &batch.series {
                assert!(s.range().end <= batch.body.len());
            }
            self.batches.lock().unwrap().push((
                batch.cluster.id.clone(),
                batch.summary,
                batch.series.len(),
                batch.permit.bytes(),
            ));
            Ok(())
        }
    }

    fn record_response(&self, transport: &'static str, status: u16) {
        self.responses.lock().unwrap().push((transport, status));
    }
}

struct Harness {
    server: IngestServer,
    delivery: Arc<Recording>,
    budget: MemoryBudget,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(config: IngestConfig, delivery: Recording) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(config, delivery, dir, None).await
    }

    async fn start_in(
        config: IngestConfig,
        delivery: Recording,
        dir: tempfile::TempDir,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Harness {
        let budget = MemoryBudget::new(config.memory_budget);
        let delivery = Arc::new(delivery);
        let auth = Arc::new(StaticAuth::default().with("c1", TOKEN));
        let (tls_cert, tls_key) = tls.unzip();
        let server = start(
            IngestOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir.path().to_owned(),
                tls_cert,
                tls_key,
                config,
            },
            auth,
            delivery.clone(),
            budget.clone(),
        )
        .await
        .unwrap();
        Harness {
            server,
            delivery,
            budget,
            _dir: dir,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    async fn h1(&self) -> H1Client {
        H1Client::connect(self.addr()).await.unwrap()
    }

    async fn h1_post(&self, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        within(self.h1().await.post("/api/v1/write", headers, body)).await
    }
}

async fn within<T>(f: impl std::future::Future<Output = Result<T, String>>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("request timed out")
        .expect("request failed")
}

fn small_config() -> IngestConfig {
    IngestConfig {
        memory_budget: 64 << 20,
        ..IngestConfig::default()
    }
}

#[test]
fn ingest_negotiates_content_type_and_encoding() {
    let h = |pairs: &[(&str, &str)]| {
        let mut m = http::HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    };
    assert_eq!(negotiate(&h(&[])).unwrap(), Protocol::V1);
    assert_eq!(
        negotiate(&h(&[("content-type", "application/x-protobuf")])).unwrap(),
        Protocol::V1
    );
    assert_eq!(
        negotiate(&h(&[(
            "content-type",
            "application/x-protobuf; proto=prometheus.WriteRequest"
        )]))
        .unwrap(),
        Protocol::V1
    );
    assert_eq!(
        negotiate(&h(&[
            ("content-type", CONTENT_TYPE_V2),
            ("content-encoding", "snappy")
        ]))
        .unwrap(),
        Protocol::V2
    );
    for bad in [
        vec![("content-type", "application/json")],
        vec![(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        )],
        vec![("content-encoding", "gzip")],
    ] {
        let r = negotiate(&h(&bad)).unwrap_err();
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
    }
}

#[tokio::test]
async fn ingest_http1_accepts_v1_and_hands_series_to_delivery() {
    let h = Harness::start(small_config(), Recording::default()).await;
    let r = h.h1_post(&[AUTH], v1_body(10, 5)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(
        r.headers.get(request::SAMPLES_WRITTEN).is_none(),
        "1.0 has no Written headers"
    );
    let batches = h.delivery.batches();
    assert_eq!(batches.len(), 1);
    let (cluster, summary, series, permit) = &batches[0];
    assert_eq!(cluster, "c1");
    assert_eq!((summary.series, summary.samples, *series), (10, 50, 10));
    assert!(*permit > 0, "the batch carries its memory permit");
    // Permit released once delivery dropped the batch.
    assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());

    // Alias path, keep-alive, and basic auth with the cluster id as user.
    let mut c = h.h1().await;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("c1:{TOKEN}")
        )
    );
    for path in ["/api/v1/push", "/api/v1/write"] {
        let r = within(c.post(path, &[("authorization", &basic)], v1_body(1, 1))).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}: {}", r.body);
    }
    assert_eq!(h.delivery.batches().len(), 3);
    assert_eq!(within(c.get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(within(c.get("/readyz")).await.status, StatusCode::OK);
    let r = within(c.post("/api/v1/write", &[], v1_body(1, 1))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Every answered write is counted by transport and status; probes are not.
    assert_eq!(
        h.delivery.responses(),
        [
            ("http1", 204),
            ("http1", 204),
            ("http1", 204),
            ("http1", 401)
        ]
    );
}

#[tokio::test]
async fn ingest_h2c_accepts_v2_with_written_headers() {
    let h = Harness::start(small_config(), Recording::default()).await;
    let mut c = within(H2Client::connect(h.addr())).await;
    let r = within(c.post(
        "/api/v1/write",
        &[AUTH, ("content-type", CONTENT_TYPE_V2)],
        v2_body(7, 3),
    ))
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let hdr = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_owned();
    assert_eq!(hdr(request::SAMPLES_WRITTEN), "21");
    assert_eq!(hdr(request::HISTOGRAMS_WRITTEN), "0");
    assert_eq!(hdr(request::EXEMPLARS_WRITTEN), "7");
    // 1.0 over the same HTTP/2 connection, several streams at once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            within(c.post("/api/v1/write", &[AUTH], v1_body(3, 2))).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::NO_CONTENT);
    }
    let batches = h.delivery.batches();
    assert_eq!(batches.len(), 9);
    assert_eq!(batches[0].1.series, 7);
    assert_eq!(h.delivery.responses(), vec![("h2", 204); 9]);
}

#[tokio::test]
async fn ingest_http3_pins_generated_cert_and_accepts_v1_and_v2() {
    let h = Harness::start(small_config(), Recording::default()).await;
    let pem = h
        .server
        .quic_cert_path()
        .expect("self-signed cert written")
        .to_owned();
    assert!(pem.ends_with(tls::QUIC_CERT_FILE));
    let mut c = within(H3Client::connect_pem(h.addr(), &pem)).await;
    let r = within(c.post("/api/v1/write", &[AUTH], v1_body(4, 4))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = within(c.post(
        "/api/v1/write",
        &[AUTH, ("content-type", CONTENT_TYPE_V2)],
        v2_body(2, 5),
    ))
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(r.headers.get(request::SAMPLES_WRITTEN).unwrap(), "10");
    let r = within(c.post("/api/v1/write", &[], v1_body(1, 1))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(within(c.get("/readyz")).await.status, StatusCode::OK);
    assert_eq!(h.delivery.batches().len(), 2);
    assert_eq!(
        h.delivery.responses(),
        [("h3", 204), ("h3", 204), ("h3", 401)]
    );

    // A restart reuses the pinned certificate.
    let first = std::fs::read(&pem).unwrap();
    let dir = h._dir;
    h.server.shutdown(Duration::from_secs(1)).await;
    let h2 = Harness::start_in(small_config(), Recording::default(), dir, None).await;
    assert_eq!(
        std::fs::read(h2.server.quic_cert_path().unwrap()).unwrap(),
        first
    );
}

#[tokio::test]
async fn ingest_h2_over_tls_by_alpn_and_plaintext_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("tls.pem");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let h = Harness::start_in(
        small_config(),
        Recording::default(),
        dir,
        Some((cert_path, key_path)),
    )
    .await;
    assert!(
        h.server.quic_cert_path().is_none(),
        "configured cert is used for QUIC"
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = v1_body(2, 2);
    let req = http::Request::post("https://localhost/api/v1/write")
        .header("authorization", AUTH.1)
        .header("content-encoding", "snappy")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // Plaintext HTTP/1.1 still works on the same port.
    assert_eq!(
        h.h1_post(&[AUTH], v1_body(1, 1)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.delivery.batches().len(), 2);
}

fn snappy_claiming(len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut v = len;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out.extend_from_slice(&[0x00, b'x']); // a one-byte literal
    out
}

#[tokio::test]
async fn ingest_refuses_every_bad_request_with_status_and_message() {
    let config = IngestConfig {
        max_compressed_body: 64 << 10,
        scan: fanout_proto::Limits {
            max_series: 5,
            ..fanout_proto::Limits::default()
        },
        ..small_config()
    };
    let h = Harness::start(config, Recording::default()).await;
    let ok = || v1_body(1, 1);
    let expect = |r: Reply, status: StatusCode, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert!(
            r.body.to_lowercase().contains(&needle.to_lowercase()),
            "{status}: {:?} lacks {needle:?}",
            r.body
        );
        assert!(!r.body.contains(TOKEN), "a token leaked: {}", r.body);
    };
    // 401: none, unknown, wrong cluster for basic.
    let r = h.h1_post(&[], ok()).await;
    assert!(r.headers.get("www-authenticate").is_some());
    expect(r, StatusCode::UNAUTHORIZED, "missing Authorization");
    expect(
        h.h1_post(&[("authorization", "Bearer nope-s3cret")], ok())
            .await,
        StatusCode::UNAUTHORIZED,
        "unknown cluster ingest token",
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("c2:{TOKEN}")
        )
    );
    expect(
        h.h1_post(&[("authorization", &basic)], ok()).await,
        StatusCode::UNAUTHORIZED,
        "unknown",
    );
    // 415: proto, media type, encoding.
    expect(
        h.h1_post(
            &[
                AUTH,
                ("content-type", "application/x-protobuf;proto=foo.Bar"),
            ],
            ok(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "foo.Bar",
    );
    expect(
        h.h1_post(&[AUTH, ("content-type", "application/json")], ok())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    // 413: compressed limit (declared and streamed).
    expect(
        h.h1_post(&[AUTH], vec![0u8; (64 << 10) + 1]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "max-compressed-body",
    );
    // 413: decompression bombs, refused from the header; nothing is taken
    // from the budget.
    for claim in [u64::from(u32::MAX), 4 << 30, 300 << 20] {
        let start = Instant::now();
        expect(
            h.h1_post(&[AUTH], snappy_claiming(claim)).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "max-decompressed-body",
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());
    }
    // 400: corrupt snappy.
    let mut corrupt = snappy_claiming(100);
    corrupt.truncate(corrupt.len() - 1);
    expect(
        h.h1_post(&[AUTH], corrupt).await,
        StatusCode::BAD_REQUEST,
        "snappy",
    );
    // 400: truncated protobuf, with where.
    let mut raw = prost::Message::encode_to_vec(&testing::v1_request(3, 2));
    raw.truncate(raw.len() - 3);
    expect(
        h.h1_post(&[AUTH], fanout_proto::snappy::compress(&raw))
            .await,
        StatusCode::BAD_REQUEST,
        "timeseries 2",
    );
    // 413: a scanner limit, named.
    expect(
        h.h1_post(&[AUTH], v1_body(6, 1)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "max_series",
    );
    // 404 and 405.
    let mut c = h.h1().await;
    expect(
        within(c.get("/nope")).await,
        StatusCode::NOT_FOUND,
        "/api/v1/write",
    );
    let r = within(c.get("/api/v1/write")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers.get("allow").unwrap(), "POST");
    assert!(
        h.delivery.batches().is_empty(),
        "nothing of a refused request is accepted"
    );
}

#[tokio::test]
async fn ingest_answers_429_when_budget_or_delivery_is_overloaded() {
    let config = IngestConfig {
        memory_budget: 1 << 20,
        admission_timeout: Duration::from_millis(100),
        ..small_config()
    };
    let h = Harness::start(config, Recording::default()).await;
    let held = h.budget.try_acquire(900 << 10).unwrap();
    let r = h.h1_post(&[AUTH], v1_body(2000, 1)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("memory budget"), "{}", r.body);
    assert_eq!(r.headers.get("retry-after").unwrap(), "2");
    drop(held);
    assert_eq!(
        h.h1_post(&[AUTH], v1_body(2000, 1)).await.status,
        StatusCode::NO_CONTENT
    );
    // Larger than the whole budget: can never fit.
    let r = h.h1_post(&[AUTH], v1_body(20_000, 1)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.body.contains("memory-budget"), "{}", r.body);

    h.delivery
        .overloaded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = h.h1_post(&[AUTH], v1_body(1, 1)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("overloaded"), "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());
}

#[tokio::test]
async fn ingest_slow_body_does_not_block_others_and_times_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = IngestConfig {
        body_read_timeout: Duration::from_secs(3),
        ..small_config()
    };
    let h = Harness::start(config, Recording::default()).await;
    let mut slow = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/write HTTP/1.1\r\nhost: x\r\n{}: {}\r\ncontent-encoding: snappy\r\ncontent-length: 1000\r\n\r\n",
            AUTH.0, AUTH.1
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..10 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // While the body trickles in, it holds nothing of the shared budget and
    // other clients are served at once.
    assert_eq!(h.server.drain_state().in_flight(), 1);
    assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());
    let start = Instant::now();
    let mut c = h.h1().await;
    for _ in 0..20 {
        let r = within(c.post("/api/v1/write", &[AUTH], v1_body(5, 5))).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let slow_reply = tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .unwrap()
        .unwrap();
    assert!(slow_reply.starts_with("HTTP/1.1 408"), "{slow_reply}");
    assert_eq!(h.delivery.batches().len(), 20);
}

#[tokio::test]
async fn ingest_drain_refuses_new_writes_and_finishes_in_flight_ones() {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start(small_config(), Recording::gated(gate.clone())).await;
    let addr = h.addr();
    let in_flight = tokio::spawn(async move {
        within(
            H1Client::connect(addr)
                .await
                .unwrap()
                .post("/api/v1/write", &[AUTH], v1_body(3, 3)),
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.server.drain_state().in_flight() == 0 {
        assert!(Instant::now() < deadline, "write never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.server.begin_drain();
    let mut c = h.h1().await;
    let r = within(c.get("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(within(c.get("/healthz")).await.status, StatusCode::OK);
    let r = within(c.post("/api/v1/write", &[AUTH], v1_body(1, 1))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("draining"), "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    // Over HTTP/3 as well.
    let mut c3 = within(H3Client::connect(addr, h.server.quic_certificate().clone())).await;
    let r = within(c3.post("/api/v1/write", &[AUTH], v1_body(1, 1))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    gate.add_permits(10);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(h.delivery.batches().len(), 1);
    tokio::time::timeout(
        Duration::from_secs(10),
        h.server.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("shutdown finishes");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// Sockets that never send a byte cannot keep real clients out: past
/// `max_connections` the oldest of them is closed to make room, and each is
/// closed after the header read timeout anyway (issue: silent connections;
/// with `--max-connections 50`, 60 silent sockets).
#[tokio::test]
async fn ingest_silent_connections_time_out_and_free_their_slots() {
    let timeout = Duration::from_secs(3);
    let config = IngestConfig {
        max_connections: 50,
        header_read_timeout: timeout,
        ..small_config()
    };
    let h = Harness::start(config, Recording::default()).await;
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(tokio::net::TcpStream::connect(h.addr()).await.unwrap());
    }
    // Every slot is held by a silent socket now; a real client is answered
    // within the first-byte timeout plus a second, and in fact at once: it
    // takes the slot of the oldest silent socket.
    let started = std::time::Instant::now();
    let mut answered = None;
    while started.elapsed() < timeout + Duration::from_secs(1) {
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_millis(500), H1Client::connect(h.addr())).await
        {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_millis(500),
                c.post("/api/v1/write", &[AUTH], v1_body(1, 1)),
            )
            .await
            {
                answered = Some((r.status, started.elapsed()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, after) = answered.expect("a real client got in");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        after < timeout,
        "answered after {after:?}: it waited for a timeout instead of taking a silent slot"
    );
    // The silent sockets were closed by the server.
    for mut s in silent {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            timeout + Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("closed, not hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}

/// A body of one remote-write version under the other's Content-Type is a
/// 400 naming the mismatch, not a 204 with nothing stored.
#[tokio::test]
async fn ingest_body_of_the_other_version_is_a_400() {
    let h = Harness::start(small_config(), Recording::default()).await;
    let cases = [
        (Some(CONTENT_TYPE_V2), v1_body(3, 2), "2.0", "1.0"),
        (None, v2_body(3, 2), "1.0", "2.0"),
    ];
    for (content_type, body, declared, found) in cases {
        let mut headers = vec![AUTH];
        headers.extend(content_type.map(|ct| ("content-type", ct)));
        let r = h.h1_post(&headers, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        let want = format!(
            "the Content-Type says remote-write {declared}, but the body holds a remote-write {found}"
        );
        assert!(r.body.contains(&want), "{}", r.body);
    }
    assert!(h.delivery.batches().is_empty());
}

/// Peak RSS of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// 1,000 bodies of 14 bytes whose snappy header claims 250 MiB: each is a
/// 400 naming the lie, refused before any memory is reserved or allocated
/// (the process's peak RSS does not move), and a real write still gets 204.
#[tokio::test]
async fn ingest_snappy_header_bombs_cost_nothing() {
    // The defaults: a 512 MiB budget and 256 MiB bodies admit the claim.
    let h = Harness::start(IngestConfig::default(), Recording::default()).await;
    let mut bomb = Vec::new();
    fanout_proto::snappy::write_header(250 << 20, &mut bomb);
    bomb.resize(14, 0);
    let before = peak_rss_kib();
    let mut c = within(H1Client::connect(h.addr())).await;
    for i in 0..1_000 {
        let r = within(c.post("/api/v1/write", &[AUTH], bomb.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "request {i}: {}", r.body);
        if i == 0 {
            assert!(
                r.body.contains("more than 14 compressed bytes can hold"),
                "{}",
                r.body
            );
        }
    }
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB");
    let r = h.h1_post(&[AUTH], v1_body(3, 2)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());
}

/// A 2.0 request of a few MiB whose series all name one 16 KiB symbol
/// would be 1.6 GB as 1.0: a 413 naming the limit, measured before the 1.0
/// body is made (peak RSS does not move), the budget untouched after, and
/// the next write still a 204.
#[tokio::test]
async fn ingest_v2_expansion_bomb_is_a_413_before_allocation() {
    use fanout_proto::v2;
    use prost::Message as _;
    let h = Harness::start(IngestConfig::default(), Recording::default()).await;
    let big = "x".repeat(16 << 10);
    let req = v2::Request {
        symbols: vec![
            String::new(),
            "__name__".into(),
            "m".into(),
            "big".into(),
            big,
        ],
        timeseries: (0..100_000)
            .map(|i| v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![v2::Sample {
                    value: 1.0,
                    timestamp: i,
                }],
                ..Default::default()
            })
            .collect(),
    };
    let body = fanout_proto::snappy::compress(&req.encode_to_vec());
    assert!(body.len() < 32 << 20);
    let before = peak_rss_kib();
    let r = h
        .h1_post(&[AUTH, ("content-type", CONTENT_TYPE_V2)], body)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(
        r.body
            .contains("more than 268435456 bytes as remote-write 1.0")
            && r.body.contains("max_decompressed_body"),
        "{}",
        r.body
    );
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 64 << 10, "peak RSS grew by {grown} KiB");
    assert_eq!(h.budget.available_bytes(), h.budget.total_bytes());
    let r = h
        .h1_post(&[AUTH, ("content-type", CONTENT_TYPE_V2)], v2_body(3, 2))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(h.delivery.batches().iter().all(|b| b.1.series == 3));
}
