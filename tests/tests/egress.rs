//! Remote-write egress options with the real `fanout serve` and a verifying
//! sink: `delivery.http2` sends everything to a target over one HTTP/2
//! connection (prior knowledge for `http://`), and a target without it
//! keeps HTTP/1.1.

use std::time::Duration;

use fanout_tests::fanout::{free_port, Gateway};
use fanout_tests::rounds::{self, await_all, client, in_order, round, sink_at};

const TOKEN: &str = "egress-ingest-token";

async fn run(http2: bool) -> (u64, u64, u64) {
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("fanout-egress-conf");
    let registry = dir.path().join("registry.yaml");
    let export = format!(
        "endpoint: '{}', delivery: {{http2: {http2}, maxConcurrency: 8, maxSamplesPerSend: 100}}",
        rounds::endpoint(port)
    );
    std::fs::write(&registry, rounds::registry(TOKEN, &export)).unwrap();
    let sink = sink_at(port, "t", &[]).await;
    let gw = Gateway::start(
        &format!("egress-h2-{http2}"),
        &["--registry", registry.to_str().unwrap()],
    );
    let http = client();
    let rounds_sent: Vec<u32> = (0..30).collect();
    for &seq in &rounds_sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    await_all(
        &in_order("t", &rounds_sent),
        &sink,
        &gw,
        Duration::from_secs(30),
    )
    .await;
    let r = sink.report();
    (r.connections, r.requests, r.h2_requests)
}

/// `delivery.http2: true`: every request over HTTP/2, on one connection
/// multiplexing the target's lanes (up to 8 requests in flight), in order
/// per series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_target_gets_everything_over_one_connection() {
    let (connections, requests, h2) = run(true).await;
    println!("http2: {requests} requests over {connections} connection(s), {h2} over HTTP/2");
    // Batches of 100 samples, up to 500 for a lane that fell behind
    // (grown batches, docs/delivery.md): many requests either way.
    assert!(
        requests > 10,
        "batches of 100-500 samples: {requests} requests"
    );
    assert_eq!(h2, requests, "every request over HTTP/2");
    assert_eq!(connections, 1, "one connection");
}

/// Without it: HTTP/1.1, as Prometheus sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_http2_gets_http1() {
    let (connections, requests, h2) = run(false).await;
    println!("http1: {requests} requests over {connections} connection(s)");
    assert_eq!(h2, 0);
    assert!(
        requests > 10,
        "batches of 100-500 samples: {requests} requests"
    );
}

/// A target that answers 413 to bodies over 4 KiB (batches of up to 2,000
/// samples are ~10x that): every batch is split in halves until it fits;
/// every sample arrives, in order per series, none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_batches_until_they_fit() {
    use fanout_loadtest::sink::{Sink, SinkConfig};
    use fanout_loadtest::verify::Problem;
    use std::net::SocketAddr;
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("fanout-egress-413");
    let registry = dir.path().join("registry.yaml");
    let export = format!("endpoint: '{}'", rounds::endpoint(port));
    std::fs::write(&registry, rounds::registry(TOKEN, &export)).unwrap();
    let sink = Sink::start(SinkConfig {
        name: "t".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        max_body: 4 << 10,
        ..SinkConfig::default()
    })
    .await
    .expect("sink");
    let gw = Gateway::start("egress-413", &["--registry", registry.to_str().unwrap()]);
    let http = client();
    let sent: Vec<u32> = (0..20).collect();
    for &seq in &sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    // Everything arrives, in order; the refusals (413) are the point.
    let e = in_order("t", &sent);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let problems: Vec<_> = e
            .check(&[sink.report()])
            .into_iter()
            .filter(|p| !matches!(p, Problem::Refused { .. }))
            .collect();
        if problems.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline
                && !problems
                    .iter()
                    .any(|p| matches!(p, Problem::OutOfOrder { .. })),
            "{problems:?}\ntargets: {}\nlog:\n{}",
            gw.request("GET", "/api/v1/targets", None).1,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = rounds::target(&gw);
    let r = sink.report();
    println!(
        "413: {} requests, {:?} answers; target failures {}, dropped {}",
        r.requests, r.responses, t["failures"], t["dropped"]
    );
    assert!(
        r.responses.get(&413).copied().unwrap_or(0) > 0,
        "the sink refused some batches as too large: {:?}",
        r.responses
    );
    assert_eq!(t["dropped"]["rejected"], 0, "{t}");
}

/// Metric family metadata reaches 1.0 targets in requests of its own, once
/// per `--metadata-send-interval` (1 s here), not with every batch: only the
/// families that pass the catalog, and not to a target with
/// `sendMetadata: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reaches_v1_targets_once_per_interval() {
    use fanout_proto::v1;
    let (p_on, p_off) = (free_port(), free_port());
    let on = sink_at(p_on, "on", &[]).await;
    let off = sink_at(p_off, "off", &[]).await;
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("fanout-egress-metadata");
    let registry = dir.path().join("registry.yaml");
    let mut yaml = rounds::registry(TOKEN, "");
    yaml.push_str(&format!(
        "metricsExports:\n  - {{id: on, objectKey: on, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{batchSendDeadline: 50ms}}}}}}\n  - {{id: off, objectKey: off, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{}', delivery: {{batchSendDeadline: 50ms, sendMetadata: false}}}}}}\n",
        rounds::endpoint(p_on),
        rounds::endpoint(p_off)
    ));
    std::fs::write(&registry, yaml).unwrap();
    let gw = Gateway::start(
        "egress-metadata",
        &[
            "--registry",
            registry.to_str().unwrap(),
            "--metadata-send-interval",
            "1s",
        ],
    );
    let http = client();
    // What Prometheus sends once a minute: metadata alone.
    let meta = |name: &str| v1::MetricMetadata {
        r#type: 2,
        metric_family_name: name.into(),
        help: format!("{name} help"),
        unit: String::new(),
    };
    let req = v1::WriteRequest {
        timeseries: vec![],
        metadata: vec![meta("kube_pod_labels"), meta("go_goroutines")],
    };
    let body = bytes::Bytes::from(fanout_proto::snappy::compress(
        &prost::Message::encode_to_vec(&req),
    ));
    assert_eq!(rounds::write(&http, &gw.ingest, TOKEN, body).await, 204);
    let started = std::time::Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Vec<u32> = (0..seq).collect();
    await_all(&in_order("on", &sent), &on, &gw, Duration::from_secs(20)).await;
    let r = on.report();
    let families = r.metadata.get("kube_pod_labels").copied().unwrap_or(0);
    println!(
        "metadata: kube_pod_labels sent {families} times in 4.5 s, beside {} requests of series",
        r.requests
    );
    assert!(
        (2..=6).contains(&families),
        "once a second: {families}; {:?}",
        r.metadata
    );
    assert!(
        r.requests > families * 3,
        "not with every batch: {} requests",
        r.requests
    );
    assert!(
        !r.metadata.contains_key("go_goroutines"),
        "not in the catalog: {:?}",
        r.metadata
    );
    assert!(off.report().metadata.is_empty(), "sendMetadata: false");
}

/// A SIGV4 target without static keys signs with the shared credentials
/// file (`AWS_SHARED_CREDENTIALS_FILE`). The receiver answers 403 "security
/// token ... expired" to the old key: the batches are retried, not dropped,
/// and once the file holds the new key they are signed with it, without a
/// restart, and every sample arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_credentials_rotated_in_the_file_are_used_without_restart() {
    use fanout_loadtest::sink::{ExpectedAuth, Sink, SinkConfig};
    use std::net::SocketAddr;
    let port = free_port();
    let dir = fanout_tests::fanout::tempfile_dir::TempDir::new("fanout-egress-sigv4");
    let creds = dir.path().join("credentials");
    let write_creds = |key: &str| {
        std::fs::write(
            &creds,
            format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = secret-of-{key}\naws_session_token = session-of-{key}\n"),
        )
        .unwrap();
    };
    write_creds("AKIAOLDKEY");
    let sink = Sink::start(SinkConfig {
        name: "t".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        auth: Some(ExpectedAuth::Sigv4AccessKey("AKIANEWKEY2".into())),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let registry = dir.path().join("registry.yaml");
    let export = format!(
        "endpoint: '{}', authType: SIGV4, sigv4Region: us-east-1, delivery: {{batchSendDeadline: 50ms, maxBackoff: 200ms}}",
        rounds::endpoint(port)
    );
    std::fs::write(&registry, rounds::registry(TOKEN, &export)).unwrap();
    let gw = Gateway::start_with_env(
        "egress-sigv4",
        &["--registry", registry.to_str().unwrap()],
        &[("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())],
    );
    let http = client();
    let sent: Vec<u32> = (0..10).collect();
    for &seq in &sent {
        assert_eq!(
            rounds::write(&http, &gw.ingest, TOKEN, round(0, seq)).await,
            204
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.report().auth_failures < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt with the old key: {:?}",
            sink.report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = rounds::target(&gw);
    assert_eq!(t["dropped"]["rejected"], 0, "retried, not dropped: {t}");
    assert!(
        t["lastError"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{t}"
    );
    write_creds("AKIANEWKEY2");
    // Every sample once, in order; the refused attempts are the only other
    // thing the sink reports.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let problems: Vec<String> = in_order("t", &sent)
            .check(&[sink.report()])
            .into_iter()
            .filter(|p| !matches!(p, fanout_loadtest::verify::Problem::Refused { .. }))
            .map(|p| p.to_string())
            .collect();
        if problems.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{problems:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = rounds::target(&gw);
    assert_eq!(t["dropped"]["rejected"], 0, "{t}");
    let log = gw.log();
    assert!(log.contains("AWS credentials changed"), "{log}");
    assert!(!log.contains("secret-of-"), "a secret in the log:\n{log}");
    println!(
        "sigv4: {} attempts refused with the old key, then every sample delivered with the new one",
        sink.report().auth_failures
    );
}
