//! Limits of clusters and Deployments (issue 15) with the real `fanout
//! serve` and a verifying sink on 127.0.0.1:
//!
//! - `a_cluster_over_its_rate_gets_429_and_its_neighbour_does_not`: cluster
//!   `cl-a` has `limits.samplesPerSecond: 1000` and writes faster; it gets
//!   429 with `Retry-After` and a message naming the limit, retries after
//!   it as a sender does, and every round arrives once, in order. Cluster
//!   `cl-b`, writing at the same time, never gets anything but 204.
//! - `a_deployment_over_its_series_limit_keeps_its_series_and_drops_new_ones`:
//!   Deployment `d2` has `limits.series: 150` and sends 200 series per round;
//!   the first 150 arrive in every round, the other 50 never, the drops are
//!   counted `series_limit`, and the Deployment's exports API shows the
//!   limit, its 150 active series and the dropped samples.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_loadtest::identity::SeriesId;
use fanout_loadtest::verify::Expectation;
use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, admin_json, await_all, client, HttpClient};
use http_body_util::BodyExt;

const TOKEN_A: &str = "limits-token-a";
const TOKEN_B: &str = "limits-token-b";
const SERIES: u32 = 200;

/// Clusters `cl-a` (with `cluster_limits`) and `cl-b`, Deployments `d1` on
/// `cl-a` (namespace `ns-1`) and `d2` on `cl-b` (namespace `ns-2`, with
/// `d2_limits`), each exported to the sink on `port`.
fn registry(port: u16, cluster_limits: &str, d2_limits: &str) -> String {
    let endpoint = rounds::endpoint(port);
    let delivery = "delivery: {batchSendDeadline: 50ms, maxBackoff: 200ms}";
    format!(
        "clusters:
  - {{id: cl-a, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: {TOKEN_A}{cluster_limits}}}
  - {{id: cl-b, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: {TOKEN_B}}}
workspaces:
  - {{id: ws-1, organizationId: o}}
deployments:
  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED}}
  - {{id: d2, workspaceId: ws-1, clusterId: cl-b, namespace: ns-2, type: HOSTED{d2_limits}}}
metricsExports:
  - {{id: e1, objectKey: e1, scope: DEPLOYMENT, scopeEntityId: d1, metricsExport: {{endpoint: '{endpoint}', {delivery}}}}}
  - {{id: e2, objectKey: e2, scope: DEPLOYMENT, scopeEntityId: d2, metricsExport: {{endpoint: '{endpoint}', {delivery}}}}}
"
    )
}

/// One write: status, `Retry-After` and the body.
async fn write(
    http: &HttpClient,
    ingest: &str,
    token: &str,
    body: Bytes,
) -> (u16, Option<u64>, String) {
    let req = rounds::write_request(ingest, token, body, false);
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .expect("ingest answers within 10 s")
        .expect("ingest reachable");
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, after, String::from_utf8_lossy(&body).into_owned())
}

fn start(name: &str, yaml: &str) -> (Gateway, TempDir) {
    let dir = TempDir::new(&format!("{name}-conf"));
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, yaml).unwrap();
    (
        Gateway::start(name, &["--registry", path.to_str().unwrap()]),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_its_rate_gets_429_and_its_neighbour_does_not() {
    let port = free_port();
    let sink = rounds::sink_at(port, "t", &[]).await;
    let (gw, _conf) = start(
        "limits-rate",
        &registry(port, ", limits: {samplesPerSecond: 1000}", ""),
    );
    let http = client();
    let rounds_sent: Vec<u32> = (0..12).collect();
    let (mut refused, mut waited) = (0u32, Duration::ZERO);
    let started = Instant::now();
    for &seq in &rounds_sent {
        // cl-b, unlimited, beside it: never refused.
        let (b, _, body) = write(
            &http,
            &gw.ingest,
            TOKEN_B,
            rounds::round_in(1, "ns-2", seq, SERIES),
        )
        .await;
        assert_eq!(b, 204, "cl-b round {seq}: {body}");
        // cl-a resends a refused round after Retry-After, as senders do.
        loop {
            let (a, after, body) = write(
                &http,
                &gw.ingest,
                TOKEN_A,
                rounds::round_in(0, "ns-1", seq, SERIES),
            )
            .await;
            if a == 204 {
                break;
            }
            assert_eq!(a, 429, "cl-a round {seq}: {body}");
            assert!(
                body.contains("cl-a") && body.contains("limits.samplesPerSecond"),
                "{body}"
            );
            let after = after.expect("429 with Retry-After");
            assert!((1..=2).contains(&after), "Retry-After {after}");
            refused += 1;
            assert!(refused < 50, "refused without end");
            waited += Duration::from_secs(after);
            tokio::time::sleep(Duration::from_secs(after)).await;
        }
    }
    // 2,400 samples at 1,000/s with one second of burst: some waiting.
    assert!(refused >= 1, "cl-a was never refused");
    let mut e = Expectation::new();
    for cluster in [0, 1] {
        for i in 0..SERIES {
            e.expect(
                SeriesId { cluster, series: i },
                rounds_sent.iter().copied(),
                ["t"],
                Vec::<(String, String)>::new(),
            );
        }
    }
    e.require_order();
    await_all(&e, &sink, &gw, Duration::from_secs(30)).await;
    eprintln!(
        "cl-a: {refused} writes refused with 429, {:.1} s waited of {:.1} s; cl-b: none; every round delivered once, in order",
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_over_its_series_limit_keeps_its_series_and_drops_new_ones() {
    let port = free_port();
    let sink = rounds::sink_at(port, "t", &[]).await;
    let (gw, _conf) = start(
        "limits-series",
        &registry(port, "", ", limits: {series: 150}"),
    );
    let http = client();
    // Before any series: the limit, nothing active.
    let v = admin_json(&gw, "/api/v1/deployments/d2/metrics-exports");
    assert_eq!(v["limits"]["series"]["limit"], 150, "{v}");
    assert_eq!(v["limits"]["series"]["active"], 0, "{v}");
    let v1 = admin_json(&gw, "/api/v1/deployments/d1/metrics-exports");
    assert!(v1.get("limits").is_none(), "d1 has no limit: {v1}");

    let sent: Vec<u32> = (0..5).collect();
    for &seq in &sent {
        let (s, _, body) = write(
            &http,
            &gw.ingest,
            TOKEN_B,
            rounds::round_in(1, "ns-2", seq, SERIES),
        )
        .await;
        assert_eq!(s, 204, "{body}");
    }
    // The first 150 series of the first round in every round; the other
    // 50 never (the expectation fails on a series it does not expect).
    let mut e = Expectation::new();
    for i in 0..150 {
        e.expect(
            SeriesId {
                cluster: 1,
                series: i,
            },
            sent.iter().copied(),
            ["t"],
            Vec::<(String, String)>::new(),
        );
    }
    e.require_order();
    await_all(&e, &sink, &gw, Duration::from_secs(30)).await;
    let report = sink.report();
    assert!(
        report.series.keys().all(|id| id.series < 150),
        "a series beyond the limit arrived"
    );
    let dropped = 50 * sent.len() as u64;
    let v = admin_json(&gw, "/api/v1/deployments/d2/metrics-exports");
    let s = &v["limits"]["series"];
    assert_eq!(
        (&s["limit"], &s["active"], &s["droppedSamples"]),
        (&150.into(), &150.into(), &dropped.into()),
        "{v}"
    );
    let stats = admin_json(&gw, "/api/v1/stats");
    assert_eq!(stats["drops"]["series_limit"], dropped, "{stats}");
    eprintln!(
        "d2: 150 series of 200 delivered in each of {} rounds, {dropped} samples of new series dropped and shown",
        sent.len()
    );
}
