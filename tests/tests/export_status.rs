//! Export status per Deployment (issue 15) with the real `fanout serve` and
//! a verifying sink on 127.0.0.1.
//!
//! `each_deployment_sees_its_own_truth_of_a_shared_export`: Deployments d1
//! and d2 share a Workspace export; d2's link overrides its token with one
//! the endpoint refuses (401), d1 keeps the good one. Each Deployment's
//! `GET /api/v1/deployments/{id}/metrics-exports` shows its own state,
//! counts and last error (d1 `delivering`, d2 `failing` with the 401),
//! and `GET /api/v1/metrics-exports/{id}/status`
//! lists both; no token appears in either.
//!
//! `a_fleet_answers_for_every_gateway` (PostgreSQL, run by `.ci/run`): the
//! same registry on two gateways sharing one store; d1's data goes through
//! gateway A only and d2's through B only. Each gateway's answer for each
//! Deployment is the fleet's: d1 delivering with A's counts, d2 failing with
//! the 401 from B, and `gateways` names both reporters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_loadtest::sink::{ExpectedAuth, Sink, SinkConfig};
use fanout_tests::fanout::{free_port, tempfile_dir::TempDir, Gateway};
use fanout_tests::rounds::{self, admin_json, client};

const TOKEN: &str = "export-status-ingest";
const GOOD: &str = "good-token-of-the-workspace";
const BAD: &str = "stale-token-of-d2";

fn registry(port: u16) -> String {
    let endpoint = rounds::endpoint(port);
    format!(
        "clusters:
  - {{id: cl-a, organizationId: o, cloudProvider: aws, cloudRegion: r, ingestToken: {TOKEN}}}
workspaces:
  - {{id: ws-1, organizationId: o}}
deployments:
  - {{id: d1, workspaceId: ws-1, clusterId: cl-a, namespace: ns-1, type: HOSTED}}
  - {{id: d2, workspaceId: ws-1, clusterId: cl-a, namespace: ns-2, type: HOSTED}}
metricsExports:
  - id: shared
    objectKey: shared
    scope: WORKSPACE
    scopeEntityId: ws-1
    links:
      - {{scope: DEPLOYMENT, scopeEntityId: d1}}
      - {{scope: DEPLOYMENT, scopeEntityId: d2, overrides: {{metricsExport: {{basicToken: {BAD}}}}}}}
    metricsExport:
      endpoint: '{endpoint}'
      authType: AUTH_TOKEN
      basicToken: {GOOD}
      delivery: {{batchSendDeadline: 50ms, maxBackoff: 200ms}}
"
    )
}

/// A round of `ns` (whose Deployment it is attributed to).
fn round_of(ns: &str, seq: u32) -> bytes::Bytes {
    rounds::round_in(0, ns, seq, rounds::SERIES)
}

/// A sink that accepts only the Workspace's token.
async fn sink(port: u16) -> fanout_loadtest::sink::SinkHandle {
    Sink::start(SinkConfig {
        name: "t".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        auth: Some(ExpectedAuth::Bearer(GOOD.into())),
        ..SinkConfig::default()
    })
    .await
    .expect("sink starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (FANOUT_TEST_POSTGRES_URL); run by .ci/run"]
async fn a_fleet_answers_for_every_gateway() {
    let url = std::env::var("FANOUT_TEST_POSTGRES_URL").expect(
        "FANOUT_TEST_POSTGRES_URL: a PostgreSQL database for this test (.ci/run starts one)",
    );
    let port = free_port();
    let _sink = sink(port).await;
    let flags = ["--store", url.as_str(), "--status-report-interval", "200ms"];
    let a = Gateway::start("export-status-a", &flags);
    let b = Gateway::start("export-status-b", &flags);
    let (status, body) = a.request(
        "PUT",
        "/api/v1/registry",
        Some(("application/yaml", &registry(port))),
    );
    assert_eq!(status, 200, "{body}");
    // B follows the registry (LISTEN/NOTIFY).
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.request("GET", "/api/v1/deployments/d2", None).0 != 200 {
        assert!(Instant::now() < deadline, "B never saw the registry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = client();
    for seq in 0..3 {
        assert_eq!(
            rounds::write(&http, &a.ingest, TOKEN, round_of("ns-1", seq)).await,
            204
        );
        assert_eq!(
            rounds::write(&http, &b.ingest, TOKEN, round_of("ns-2", seq)).await,
            204
        );
    }
    let n = 3 * u64::from(rounds::SERIES);
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (d1, d2) = loop {
            let d1 = admin_json(gw, "/api/v1/deployments/d1/metrics-exports");
            let d2 = admin_json(gw, "/api/v1/deployments/d2/metrics-exports");
            let (s1, s2) = (&d1["items"][0]["status"], &d2["items"][0]["status"]);
            let both = |s: &serde_json::Value| s["gateways"].as_array().map_or(0, Vec::len) == 2;
            if (s1["samplesDelivered"] == n
                && s2["samplesDropped"]["rejected"] == n
                && both(s1)
                && both(s2))
                || Instant::now() > deadline
            {
                break (d1, d2);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (s1, s2) = (&d1["items"][0]["status"], &d2["items"][0]["status"]);
        assert_eq!(s1["state"], "delivering", "{d1}");
        assert_eq!(s1["samplesDelivered"], n, "{d1}");
        assert_eq!(s2["state"], "failing", "{d2}");
        assert_eq!(s2["samplesDropped"]["rejected"], n, "{d2}");
        assert_eq!(s2["lastError"]["status"], 401, "{d2}");
        let mut names: Vec<&str> = s1["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["gateway"].as_str())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 2, "both gateways reported: {d1}");
        for text in [d1.to_string(), d2.to_string()] {
            assert!(
                !text.contains(GOOD) && !text.contains(BAD),
                "a token in {text}"
            );
        }
    }
    let all = admin_json(&b, "/api/v1/metrics-exports/shared/status");
    assert_eq!(all["items"][0]["status"]["samplesDelivered"], n, "{all}");
    eprintln!(
        "fleet: d1 delivering ({n} samples via A), d2 failing (401 via B), through either gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_deployment_sees_its_own_truth_of_a_shared_export() {
    let port = free_port();
    let _sink = sink(port).await;
    let dir = TempDir::new("export-status-conf");
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(port)).unwrap();
    let gw = Gateway::start("export-status", &["--registry", path.to_str().unwrap()]);

    // Before any data: both waiting.
    for d in ["d1", "d2"] {
        let v = admin_json(&gw, &format!("/api/v1/deployments/{d}/metrics-exports"));
        assert_eq!(v["items"][0]["status"]["state"], "waiting", "{d}: {v}");
    }
    let http = client();
    for seq in 0..5 {
        for ns in ["ns-1", "ns-2"] {
            assert_eq!(
                rounds::write(&http, &gw.ingest, TOKEN, round_of(ns, seq)).await,
                204
            );
        }
    }
    let per_round = u64::from(rounds::SERIES);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (d1, d2) = loop {
        let d1 = admin_json(&gw, "/api/v1/deployments/d1/metrics-exports");
        let d2 = admin_json(&gw, "/api/v1/deployments/d2/metrics-exports");
        let done = d1["items"][0]["status"]["samplesDelivered"] == 5 * per_round
            && d2["items"][0]["status"]["samplesDropped"]["rejected"] == 5 * per_round;
        if done || Instant::now() > deadline {
            break (d1, d2);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (s1, s2) = (&d1["items"][0]["status"], &d2["items"][0]["status"]);
    assert_eq!(s1["state"], "delivering", "{d1}");
    assert_eq!(s1["samplesDelivered"], 5 * per_round, "{d1}");
    assert_eq!(s1["samplesDelivered1m"], 5 * per_round, "{d1}");
    assert!(
        s1["lastSuccessAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{d1}"
    );
    assert!(s1.get("lastError").is_none(), "{d1}");
    assert_eq!(s2["state"], "failing", "{d2}");
    assert_eq!(s2["samplesDelivered"], 0, "{d2}");
    assert_eq!(s2["samplesDropped1m"]["rejected"], 5 * per_round, "{d2}");
    assert_eq!(s2["lastError"]["status"], 401, "{d2}");
    assert!(s2.get("lastSuccessAt").is_none(), "{d2}");
    assert_ne!(
        d1["items"][0]["targetId"], d2["items"][0]["targetId"],
        "the override makes a target of its own"
    );

    let all = admin_json(&gw, "/api/v1/metrics-exports/shared/status");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{all}");
    for (item, want) in items.iter().zip([("d1", "delivering"), ("d2", "failing")]) {
        assert_eq!(item["deploymentId"], want.0, "{all}");
        assert_eq!(item["status"]["state"], want.1, "{all}");
    }
    assert_eq!(items[1]["status"]["lastError"]["status"], 401, "{all}");
    for text in [d1.to_string(), d2.to_string(), all.to_string()] {
        assert!(
            !text.contains(GOOD) && !text.contains(BAD),
            "a token in {text}"
        );
    }
    assert_eq!(
        gw.request("GET", "/api/v1/metrics-exports/nope/status", None)
            .0,
        404
    );
    eprintln!(
        "d1: {} | d2: {} / {}",
        s1["state"], s2["lastError"]["status"], s2["lastError"]["message"]
    );
}
