//! Generator → sink on 127.0.0.1, bounded in samples and time: every
//! acknowledged sample arrives exactly once with its Deployment's namespace,
//! over HTTP/1.1 and h2c, remote-write 1.0 and 2.0; injected failures are
//! counted as failures and their samples are not expected.

use std::time::Duration;

use fanout_loadtest::client::Transport;
use fanout_loadtest::generator::{self, GeneratorConfig, Protocol, RunSummary};
use fanout_loadtest::scenario::Scenario;
use fanout_loadtest::sink::{ExpectedAuth, Fault, Sink, SinkConfig, SinkHandle};
use fanout_loadtest::verify::Expectation;

fn scenario() -> Scenario {
    Scenario {
        clusters: 2,
        deployments: 2,
        dags: 3,
        tasks: 3,
        dag_files: 2,
        pools: 1,
        pods: 4,
        task_pods: 1,
        churn_rounds: 2,
        deployment_id_label: true,
        ..Scenario::default()
    }
}

fn config(url: String, transport: Transport, protocol: Protocol, samples: u64) -> GeneratorConfig {
    GeneratorConfig {
        url,
        scenario: scenario(),
        protocol,
        transport,
        connections: 2,
        streams: 2,
        samples_per_request: 500,
        total_samples: Some(samples),
        duration: Some(Duration::from_secs(5)),
        timeout: Duration::from_secs(5),
        ..GeneratorConfig::default()
    }
}

fn expectation(s: &Scenario, summary: &RunSummary, target: &str) -> Expectation {
    let mut e = Expectation::new();
    for sample in summary.acked_samples() {
        let dep = s.deployment_of(sample.id.series);
        e.expect(
            sample.id,
            [sample.seq],
            [target],
            [
                ("namespace", s.namespace(sample.id.cluster, dep)),
                ("deploymentId", s.deployment_id(sample.id.cluster, dep)),
            ],
        );
    }
    e
}

async fn sink(fault: Fault) -> SinkHandle {
    Sink::start(SinkConfig {
        name: "t".into(),
        fault,
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

async fn round_trip(transport: Transport, protocol: Protocol) {
    let sink = sink(Fault::default()).await;
    let samples = 12_345;
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        generator::run(config(sink.url(), transport, protocol, samples)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.samples_ok, samples, "{}", summary.table());
    assert_eq!(summary.responses.get(&204), Some(&summary.requests));
    assert!(summary.latency_ms.count == summary.requests && summary.latency_ms.max > 0.0);
    // The sink's records are sharded by series and its counts by request:
    // the merged report adds up to what was sent.
    let report = sink.report();
    assert_eq!(report.samples, samples);
    assert_eq!(report.requests, summary.requests);
    assert_eq!(report.responses.get(&204), Some(&summary.requests));
    assert!(report.series.len() > 16, "{} series", report.series.len());
    assert!(sink.stats().cpu_nanos > 0);
    let problems = expectation(&scenario(), &summary, "t").check(std::slice::from_ref(&report));
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );
    let v = if protocol == Protocol::V2 { "v2" } else { "v1" };
    assert_eq!(report.protocols.get(v), Some(&summary.requests));
}

#[tokio::test]
async fn http1_v1_every_sample_once() {
    round_trip(Transport::Http1, Protocol::V1).await;
}

#[tokio::test]
async fn h2c_v1_every_sample_once() {
    round_trip(Transport::Http2, Protocol::V1).await;
}

#[tokio::test]
async fn h2c_v2_every_sample_once() {
    round_trip(Transport::Http2, Protocol::V2).await;
}

#[tokio::test]
async fn rate_is_a_ceiling() {
    let sink = sink(Fault::default()).await;
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, 1_000_000);
    c.rate = Some(10_000.0);
    c.duration = Some(Duration::from_millis(1500));
    let summary = generator::run(c).await.unwrap();
    // 1.5 s at 10,000/s in requests of 500: at most 15,000 (+ one request).
    assert!(
        summary.samples_ok <= 15_500 && summary.samples_ok >= 5_000,
        "{}",
        summary.table()
    );
    assert!(summary.duration_secs < 3.0);
}

#[tokio::test]
async fn injected_failures_are_counted_and_not_expected() {
    // 503 for the first 300 ms, then every 5th request's connection is reset.
    let sink = sink(Fault {
        status: Some(503),
        status_for: Some(Duration::from_millis(300)),
        ..Fault::default()
    })
    .await;
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, 1_000_000);
    c.rate = Some(20_000.0);
    c.duration = Some(Duration::from_millis(1000));
    let first = generator::run(c.clone()).await.unwrap();
    assert!(
        first.responses.get(&503).copied().unwrap_or(0) > 0,
        "{}",
        first.table()
    );
    assert!(
        first.samples_ok > 0 && first.samples_failed > 0,
        "{}",
        first.table()
    );
    let problems = expectation(&scenario(), &first, "t").check(&[sink.report()]);
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );

    sink.reset();
    sink.set_fault(Fault {
        reset_every: 5,
        ..Fault::default()
    });
    let second = generator::run(c).await.unwrap();
    assert!(second.transport_errors > 0, "{}", second.table());
    let problems = expectation(&scenario(), &second, "t").check(&[sink.report()]);
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );
}

#[tokio::test]
async fn basic_auth_per_cluster() {
    let s = Scenario {
        clusters: 1,
        ..scenario()
    };
    let sink = Sink::start(SinkConfig {
        name: "t".into(),
        auth: Some(ExpectedAuth::Basic {
            user: s.cluster_id(0),
            password: s.cluster_token(0),
        }),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, 2_000);
    c.scenario = s;
    c.auth = fanout_loadtest::generator::AuthMode::Basic;
    let summary = generator::run(c).await.unwrap();
    assert_eq!(summary.samples_ok, 2_000, "{}", summary.table());
    assert_eq!(sink.report().auth_failures, 0);
}

#[tokio::test]
async fn http3_with_pinned_certificate() {
    let sink = Sink::start(SinkConfig {
        name: "t".into(),
        http3: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("fanout-load-h3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("sink.pem");
    std::fs::write(&pem, sink.cert_pem().unwrap()).unwrap();
    let url = format!("https://127.0.0.1:{}/api/v1/write", sink.addr.port());
    let mut c = config(url, Transport::Http3, Protocol::V1, 6_000);
    c.ca_cert = Some(pem);
    let summary = tokio::time::timeout(Duration::from_secs(10), generator::run(c))
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary.samples_ok, 6_000, "{}", summary.table());
    let problems = expectation(&scenario(), &summary, "t").check(&[sink.report()]);
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );
}

#[tokio::test]
async fn successive_runs_with_first_round_do_not_collide() {
    let sink = sink(Fault::default()).await;
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, 3_000);
    generator::run(c.clone()).await.unwrap();
    c.first_round = 10;
    generator::run(c).await.unwrap();
    let r = sink.report();
    assert_eq!(r.samples, 6_000);
    assert!(r.series.values().all(|s| s.duplicates == 0));
}

#[tokio::test]
async fn a_dead_target_ends_the_run_by_itself() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(
        format!("http://127.0.0.1:{port}/api/v1/write"),
        Transport::Http1,
        Protocol::V1,
        1_000,
    );
    c.duration = None;
    c.timeout = Duration::from_millis(500);
    let summary = tokio::time::timeout(Duration::from_secs(5), generator::run(c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.samples_ok, 0);
    assert!(
        summary
            .last_transport_error
            .as_deref()
            .unwrap_or("")
            .contains("connect"),
        "{}",
        summary.table()
    );
}

#[tokio::test]
async fn with_retry_connection_resets_are_sent_again_until_acknowledged() {
    // Every 3rd request's connection is reset: with retries every sample is
    // acknowledged in the end, and each arrives (at least) once.
    let sink = sink(Fault {
        reset_every: 3,
        ..Fault::default()
    })
    .await;
    let samples = 20_000;
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, samples);
    c.retry = true;
    c.duration = Some(Duration::from_secs(20));
    let summary = tokio::time::timeout(Duration::from_secs(30), generator::run(c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.samples_ok, samples, "{}", summary.table());
    assert_eq!(summary.samples_failed, 0, "{}", summary.table());
    assert!(
        summary.transport_errors > 0 && summary.retries > 0,
        "{}",
        summary.table()
    );
    let problems: Vec<_> = expectation(&scenario(), &summary, "t")
        .check(&[sink.report()])
        .into_iter()
        .filter(|p| !matches!(p, fanout_loadtest::verify::Problem::Duplicated { .. }))
        .collect();
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );
}

/// Interleaved Deployments and small Deployments: every request carries
/// series of several Deployments, and every acked sample still arrives once
/// with its own Deployment's labels (the identity is unchanged).
#[tokio::test]
async fn interleaved_small_deployments_round_trip() {
    let sink = sink(Fault::default()).await;
    let s = Scenario {
        deployments: 5,
        deployments_per_request: 5,
        series_limit: Some(10),
        task_pods: 0,
        ..scenario()
    };
    assert_eq!(s.series_per_cluster(), 50);
    let mut c = config(sink.url(), Transport::Http1, Protocol::V1, 5_000);
    c.scenario = s.clone();
    c.samples_per_request = 50;
    let summary = generator::run(c).await.unwrap();
    assert_eq!(summary.samples_ok, 5_000, "{}", summary.table());
    // One request = one round of a cluster = 10 series of each Deployment.
    let deployments: std::collections::BTreeSet<u32> =
        (0..50).map(|i| s.deployment_of(i)).collect();
    assert_eq!(deployments.len(), 5);
    let report = sink.report();
    assert_eq!(report.series.len(), 100);
    let problems = expectation(&s, &summary, "t").check(std::slice::from_ref(&report));
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(10)]
    );
}

/// A server on 127.0.0.1 that answers every request 401 with a body, then
/// closes the connection (as a gateway does after refusing a request
/// before reading its body); at most `limit` connections, then it stops.
async fn refusing_server(limit: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for _ in 0..limit {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_secs(10), listener.accept()).await
            else {
                return;
            };
            tokio::spawn(async move {
                // The whole request first (head, then Content-Length bytes),
                // so closing does not reset what the client sent.
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                    match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let body = "unknown cluster ingest token (or cluster id)\n";
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn answers_and_transport_errors_are_counted_apart() {
    // Every request answered 401 and its connection closed after the
    // answer: 401s only, no transport error, and the 401 is what is shown.
    let port = refusing_server(200).await;
    let mut c = config(
        format!("http://127.0.0.1:{port}/api/v1/write"),
        Transport::Http1,
        Protocol::V1,
        10_000,
    );
    c.connections = 1;
    c.streams = 1;
    let summary = tokio::time::timeout(Duration::from_secs(10), generator::run(c))
        .await
        .expect("the run ends")
        .unwrap();
    let table = summary.table();
    assert_eq!(summary.samples_ok, 0, "{table}");
    assert_eq!(summary.responses.get(&401), Some(&20), "{table}");
    assert_eq!(summary.requests, 20, "{table}");
    assert_eq!(summary.transport_errors, 0, "{table}");
    assert_eq!(summary.last_transport_error, None, "{table}");
    assert_eq!(
        summary.last_answer.as_deref(),
        Some("401 Unauthorized: unknown cluster ingest token (or cluster id)"),
        "{table}"
    );
    assert!(
        table.contains("last answer   401 Unauthorized: unknown cluster"),
        "{table}"
    );
}
