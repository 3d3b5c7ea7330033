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
