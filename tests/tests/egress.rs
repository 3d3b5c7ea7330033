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
    assert!(requests > 30, "batches of 100 samples: {requests} requests");
    assert_eq!(h2, requests, "every request over HTTP/2");
    assert_eq!(connections, 1, "one connection");
}

/// Without it: HTTP/1.1, as Prometheus sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_http2_gets_http1() {
    let (connections, requests, h2) = run(false).await;
    println!("http1: {requests} requests over {connections} connection(s)");
    assert_eq!(h2, 0);
    assert!(requests > 30);
}
